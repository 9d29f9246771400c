/* cli_help: see cli_help.h. */
#include "cli_help.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "image_formats.h"

#define WIDTH 88 /* as the hand-written help texts */

/* Prints one word of a list from column *col, first on a new line indented by `indent` when
 * it would end past WIDTH. */
static void put_word(const char *word, size_t len, bool first, size_t indent, size_t *col)
{
    if (!first && *col + 1 + len > WIDTH) {
        printf("\n%*s", (int)indent, "");
        *col = indent;
    } else if (!first) {
        putchar(' ');
        (*col)++;
    }
    fwrite(word, 1, len, stdout);
    *col += len;
}

/* The accepted formats' extensions (".jpg") or titles ("JPEG," with a comma but the last). */
static void put_list(bool titles, size_t *col)
{
    size_t n, indent = *col, words = 0;
    const ki_format *list = ki_format_list(&n);
    for (size_t i = 0; i < n; i++) {
        if (list[i].decoder == KI_DECODER_NONE) {
            continue;
        }
        bool last = true;
        for (size_t j = i + 1; j < n; j++) {
            last = last && list[j].decoder == KI_DECODER_NONE;
        }
        char word[64];
        if (titles) {
            int len = snprintf(word, sizeof word, "%s%s", list[i].title, last ? "" : ",");
            put_word(word, (size_t)len, words++ == 0, indent, col);
            continue;
        }
        for (const char *p = list[i].extensions; *p;) {
            size_t w = strcspn(p, " ");
            int len = snprintf(word, sizeof word, ".%.*s", (int)w, p);
            put_word(word, (size_t)len, words++ == 0, indent, col);
            p += w;
            p += *p == ' ';
        }
    }
}

void cli_help_print(const char *text)
{
    size_t col = 0;
    for (const char *p = text; *p; p++) {
        if (strncmp(p, "{image-extensions}", 18) == 0 || strncmp(p, "{image-formats}", 15) == 0) {
            bool titles = p[7] == 'f';
            put_list(titles, &col);
            p += titles ? 14 : 17;
            continue;
        }
        putchar(*p);
        col = *p == '\n' ? 0 : col + 1;
    }
}
