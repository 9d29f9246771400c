/* cli_jsonl: see cli_jsonl.h. */
#include "cli_jsonl.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "ks_buf.h"

static void print_json_line(FILE *out, json_t *value)
{
    /* JSON_ENCODE_ANY: a result may be a bare string or array, not only an object. */
    char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) {
        fputs("{\"error\":\"out of memory encoding the result\"}\n", out);
    } else {
        fputs(text, out);
        fputc('\n', out);
        free(text);
    }
    fflush(out);
}

static void print_error_line(FILE *out, const char *message)
{
    json_t *error = json_pack("{s:s}", "error", message);
    print_json_line(out, error);
    json_decref(error);
}

static ks_status handle_line(const char *line, size_t len, cli_jsonl_handler handler, void *context,
                             json_t **result)
{
    json_error_t parse_error;
    json_t *input = json_loadb(line, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &parse_error);
    if (!input)
        return ks_fail(KS_ERR_INVALID, "invalid JSON at column %d: %s", parse_error.column,
                       parse_error.text);
    ks_status st = handler(input, result, context);
    json_decref(input);
    return st;
}

/* Reads one line (without its newline) into `line`, keeping at most CLI_JSONL_MAX_LINE + 1
 * bytes so that a huge line cannot exhaust memory; *too_long tells that bytes were dropped.
 * Returns false at end of input. */
static bool read_line(FILE *in, ks_buf *line, bool *too_long)
{
    char chunk[65536];
    bool any = false;
    ks_buf_clear(line);
    *too_long = false;
    while (fgets(chunk, sizeof chunk, in)) {
        any = true;
        size_t n = strlen(chunk);
        bool complete = n && chunk[n - 1] == '\n';
        if (!*too_long && line->len + n <= CLI_JSONL_MAX_LINE + 1) {
            if (ks_buf_append(line, chunk, n) != KS_OK)
                *too_long = true;
        } else {
            *too_long = true;
        }
        if (complete)
            break;
    }
    if (line->len && line->data[line->len - 1] == '\n')
        line->len--;
    if (line->len && line->data[line->len - 1] == '\r')
        line->len--;
    return any;
}

int cli_jsonl_run(FILE *in, FILE *out, cli_jsonl_handler handler, void *context)
{
    int exit_code = CLI_EXIT_OK;
    ks_buf line;
    ks_buf_init(&line);
    bool too_long;
    while (read_line(in, &line, &too_long)) {
        json_t *result = NULL;
        ks_error_clear();
        ks_status st = too_long ? ks_fail(KS_ERR_LIMIT, "input line exceeds the limit of %u bytes",
                                          CLI_JSONL_MAX_LINE)
                                : handle_line(line.data ? line.data : "", line.len, handler,
                                              context, &result);
        if (st == KS_OK && result) {
            print_json_line(out, result);
        } else {
            const char *message = ks_error_message();
            print_error_line(out, message[0] ? message : "failed");
            exit_code = CLI_EXIT_FAILED;
        }
        json_decref(result);
    }
    ks_buf_fini(&line);
    return exit_code;
}
