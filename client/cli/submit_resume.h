/* submit_resume: what an earlier `kosmos submit -o OUT.jsonl` already wrote, for --resume: the
 * (path, prompt) pairs with an "ok" line (skipped) and, per pair, how many lines were not ok
 * (the round of its retry: submit_key.h). A pair's path is the exact file a line names
 * (submit_output_line_path: "path_bytes" when the name is not UTF-8), so names that differ
 * only in invalid bytes stay apart; files written before "path_bytes" existed are read by
 * their "path" (a name that was not UTF-8 then matches no file: it runs again, it is never
 * skipped wrongly). Lines that do not parse (a run killed while writing) are ignored. Memory:
 * two submit_set tables, 16 bytes per pair. */
#ifndef KOSMOS_SUBMIT_RESUME_H
#define KOSMOS_SUBMIT_RESUME_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "ks_error.h"
#include "submit_set.h"

typedef struct submit_resume {
    submit_set done;   /* pairs with an "ok" line */
    submit_set failed; /* pair -> lines not ok */
    size_t ok_lines, other_lines, bad_lines;
    bool partial_last_line; /* the file does not end with a newline */
} submit_resume;

void submit_resume_init(submit_resume *r);
void submit_resume_fini(submit_resume *r);

/* Reads `path` (a missing file reads as empty). `on_ok` (may be NULL) sees each "ok" line
 * (borrowed for the call). KS_ERR_IO when the file exists but cannot be read. */
ks_status submit_resume_load(submit_resume *r, const char *path,
                             void (*on_ok)(const json_t *line, void *ctx), void *ctx);

bool submit_resume_is_done(const submit_resume *r, const char *path, const char *prompt);
/* How many earlier lines of the pair were not ok: its retry round. */
unsigned submit_resume_round(const submit_resume *r, const char *path, const char *prompt);

#endif
