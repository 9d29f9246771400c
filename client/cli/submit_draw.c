/* submit_draw: see submit_draw.h. */
#include "submit_draw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "submit_set.h"

#ifdef KOSMOS_HAVE_DRAW
#include "draw.h"
#include "image_decode.h"
#include "ks_file.h"
#endif

#define NAME_STEM_MAX 120

bool submit_draw_available(void)
{
#ifdef KOSMOS_HAVE_DRAW
    return true;
#else
    return false;
#endif
}

void submit_draw_name(const char *path, const char *prompt, char *name, size_t cap)
{
    const char *p = path;
    for (;;) { /* drop leading "/", "./" and "../" */
        if (p[0] == '/')
            p++;
        else if (p[0] == '.' && p[1] == '/')
            p += 2;
        else if (p[0] == '.' && p[1] == '.' && p[2] == '/')
            p += 3;
        else
            break;
    }
    char stem[NAME_STEM_MAX + 1];
    size_t n = 0;
    for (; *p && n < NAME_STEM_MAX; p++) {
        unsigned char ch = (unsigned char)*p;
        bool safe = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_';
        stem[n++] = safe ? (char)ch : '_';
    }
    stem[n] = '\0';
    if (n == 0) /* no empty or hidden names */
        memcpy(stem, "x", 2);
    else if (stem[0] == '.')
        stem[0] = '_';
    snprintf(name, cap, "%s.%08x.png", stem, (unsigned)(submit_set_hash(path, prompt) >> 32));
}

ks_status submit_draw(const char *dir, const char *path, const char *prompt,
                      const kosmos_result_t *r, size_t i)
{
#ifdef KOSMOS_HAVE_DRAW
    char name[NAME_STEM_MAX + 32];
    submit_draw_name(path, prompt, name, sizeof name);
    char *out = ks_path_join(dir, name);
    char *bytes = NULL;
    size_t len = 0;
    ki_image *img = NULL;
    ki_box *boxes = NULL;
    ks_status st;
    if (!out) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = ks_file_read(path, (size_t)1 << 30, &bytes, &len)) ||
        (st = ki_image_decode(bytes, len, NULL, &img)))
        goto done;
    size_t count = 0, entities = kosmos_result_entity_count(r, i);
    for (size_t j = 0; j < entities; j++)
        count += kosmos_result_entity(r, i, j)->box_count;
    boxes = calloc(count ? count : 1, sizeof *boxes);
    if (!boxes) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory drawing %zu boxes", count);
        goto done;
    }
    size_t at = 0;
    for (size_t j = 0; j < entities; j++) {
        const kosmos_entity_t *e = kosmos_result_entity(r, i, j);
        for (size_t b = 0; b < e->box_count; b++)
            boxes[at++] = (ki_box){.label = e->phrase,
                                   .entity = (int)j,
                                   .x1 = e->boxes[b].x1,
                                   .y1 = e->boxes[b].y1,
                                   .x2 = e->boxes[b].x2,
                                   .y2 = e->boxes[b].y2};
    }
    st = ki_draw_boxes_file(img, boxes, count, NULL, out);
done:
    if (st)
        ks_error_prefix("--draw %s", path);
    free(boxes);
    ki_image_destroy(&img);
    free(bytes);
    free(out);
    return st;
#else
    (void)dir, (void)path, (void)prompt, (void)r, (void)i;
    return ks_fail(KS_ERR_UNSUPPORTED, "--draw: this build has no image library (libvips)");
#endif
}
