/* submit_progress: `kosmos submit`'s progress on stderr. On a terminal a bar redrawn 5 times a
 * second: done/total, rate, ETA and errors; in a pipe or file a plain line every 5 seconds.
 * While the inputs are still being counted the total shows as "done/>=n". Then one summary
 * line. Counters are thread-safe; the drawing runs on its own thread. */
#ifndef KOSMOS_SUBMIT_PROGRESS_H
#define KOSMOS_SUBMIT_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "ks_error.h"

typedef struct submit_progress submit_progress;

/* The counters; submit_progress_add adds a delta of each. */
typedef struct submit_counts {
    uint64_t seen;       /* items read from the inputs */
    uint64_t skipped;    /* --resume: already ok in OUT.jsonl */
    uint64_t submitted;  /* accepted by the broker (duplicates included) */
    uint64_t duplicates; /* the broker already had the job: nothing computed again */
    uint64_t ok, failed; /* lines written */
} submit_counts;

/* Starts drawing on `out` (borrowed) unless `quiet`, into *p (caller owns). KS_ERR_NOMEM; *p is
 * then NULL. A drawing thread that cannot start is no failure: the progress is then silent. */
ks_status submit_progress_new(FILE *out, bool quiet, submit_progress **p);
/* Stops drawing and frees. */
void submit_progress_destroy(submit_progress **p);

void submit_progress_add(submit_progress *p, const submit_counts *delta);
/* The number of items counted so far; `final` once the count is complete. */
void submit_progress_total(submit_progress *p, uint64_t total, bool final);

/* Stops the drawing thread, clears the bar and prints the summary line, with `extra`
 * (may be NULL) appended. */
void submit_progress_finish(submit_progress *p, const char *extra);

#endif
