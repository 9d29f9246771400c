/* submit_output: the JSON Lines of `kosmos submit`, one object per image and prompt, written as
 * each completes and flushed per line:
 *   {"path", ["path_bytes",] "prompt", "status": "ok"|"failed"|"expired"|"dead"|"cancelled",
 *    "text",
 *    "entities": [[phrase, [start, end], [[x1, y1, x2, y2], ...]], ...]   (as `kosmos run`),
 *    "boxes_px": [[[x1, y1, x2, y2], ...], ...]                            (as `kosmos run`),
 *    "timings": {load_ms, preprocess_ms, vision_ms, prefill_ms, decode_ms, new_tokens,
 *                prompt_tokens, device}, "worker", "job_id", "width", "height",
 *    "error" (only when status is not "ok")}
 * Spans are in code points, boxes normalized / in source pixels. "path" is for reading: a file
 * name that is not UTF-8 shows its invalid bytes as U+FFFD there, so two names can look alike;
 * such a line also has "path_bytes", the exact name in base64, and the line's path is that
 * (submit_output_line_path: what --resume and --coco go by). Not here: what to submit. */
#ifndef KOSMOS_SUBMIT_OUTPUT_H
#define KOSMOS_SUBMIT_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#include "kosmos/client.h"
#include "ks_error.h"

typedef struct submit_output submit_output;

/* A writer on `out` (closed by destroy when `owned`) into *o (caller owns). `newline_first`:
 * the file ends in a partial line (an earlier run was killed while writing), so a newline goes
 * before the first line. KS_ERR_NOMEM; *o is then NULL (and `out` still the caller's). */
ks_status submit_output_new(FILE *out, bool owned, bool newline_first, submit_output **o);
/* Flushes and closes (when owned); returns KS_ERR_IO if closing failed. */
ks_status submit_output_destroy(submit_output **o);

/* The line of prompt `i` of result `r` (borrowed) for the file `path` (its exact bytes). New
 * reference, NULL when out of memory. */
json_t *submit_output_result_line(const char *path, const char *prompt, const kosmos_result_t *r,
                                  size_t i);
/* A line for a job that produced no result (unreadable file, rejected, lost): status as
 * given ("failed", ...), empty text and entities, the message in "error". */
json_t *submit_output_error_line(const char *path, const char *prompt, const char *status,
                                 const char *job_id, const char *message);

/* `s` as a JSON string; bytes that are not UTF-8 (file names need not be) become U+FFFD.
 * New reference, NULL when out of memory. */
json_t *submit_output_string(const char *s);

/* The exact path a line names: "path_bytes" decoded when the line has it, else "path" (lines
 * written before path_bytes existed have only "path"). A new string the caller frees; NULL
 * when the line names none or out of memory. */
char *submit_output_line_path(const json_t *line);

/* Writes `line` compactly with a newline and flushes. Thread-safe (one line at a time).
 * KS_ERR_IO when the write failed (disk full, closed pipe). */
ks_status submit_output_write(submit_output *o, const json_t *line);

#endif
