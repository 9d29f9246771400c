/* coco: the --coco FILE of `kosmos submit`: a COCO detection file built from the "ok" result
 * lines (submit_output.h), in source-image pixels:
 *   {"info": {...}, "images": [{"id", "file_name", "width", "height"}],
 *    "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "area",
 *                     "iscrowd": 0}],
 *    "categories": [{"id", "name", "supercategory": "phrase"}]}
 * Categories are the grounded phrases, with ids 1..n in bytewise order of their names, so the
 * same set of phrases always gets the same ids. Images are the distinct paths, ids 1..n in the
 * order their first result came; annotation ids 1..n in that order too. A path is the exact
 * file name: one that is not UTF-8 is told apart by its bytes and its image also has
 * "file_name_bytes" (base64; "file_name" shows its invalid bytes as U+FFFD).
 * Lines are kept in a temporary file until coco_write, so memory holds only the phrases and a
 * 16-byte entry per image. Thread-safe (coco_add from several threads). */
#ifndef KOSMOS_COCO_H
#define KOSMOS_COCO_H

#include <jansson.h>

#include "ks_error.h"

typedef struct coco coco;

/* An empty file into *out (caller owns). KS_ERR_IO when the temporary file cannot be created,
 * KS_ERR_NOMEM; *out is then NULL. */
ks_status coco_new(coco **out);
void coco_destroy(coco **c);

/* Records an "ok" line (borrowed): path, width, height, entities and boxes_px. Lines without
 * a size are recorded with 0 x 0. KS_ERR_IO when the temporary file fails. */
ks_status coco_add(coco *c, const json_t *line);

/* Writes the COCO file to `path` (replacing it). KS_ERR_IO / KS_ERR_NOMEM. */
ks_status coco_write(coco *c, const char *path);

#endif
