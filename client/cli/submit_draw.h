/* submit_draw: the --draw DIR pictures of `kosmos submit`: each image with its grounded boxes and
 * phrases (ki_draw_boxes_file, as `kosmos run --draw`), decoded again here from its path.
 * File names come from the input path, made safe and unique:
 *   "<path with '/' and unsafe bytes as '_', at most 120 bytes>.<8 hex of hash(path, prompt)>.png"
 * e.g. "../img/a b.jpg" -> "img_a_b.jpg.1f0c9a2e.png" (leading "./" and "../" dropped), so two
 * prompts on one image, or two paths that clean up alike, never overwrite each other. */
#ifndef KOSMOS_SUBMIT_DRAW_H
#define KOSMOS_SUBMIT_DRAW_H

#include <stdbool.h>
#include <stddef.h>

#include "kosmos/client.h"
#include "ks_error.h"

/* False when this build has no image library (--draw is then a usage error). */
bool submit_draw_available(void);

/* The file name (not the folder) for (path, prompt) into name[cap]. */
void submit_draw_name(const char *path, const char *prompt, char *name, size_t cap);

/* Draws prompt `i` of result `r` (borrowed) on the image at `path` into DIR/name. Errors:
 * KS_ERR_IO (unreadable or unwritable), KS_ERR_FORMAT (not decodable), KS_ERR_NOMEM,
 * KS_ERR_UNSUPPORTED (no image library in this build). */
ks_status submit_draw(const char *dir, const char *path, const char *prompt,
                      const kosmos_result_t *r, size_t i);

#endif
