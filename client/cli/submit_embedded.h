/* submit_embedded: `kosmos submit --model DIR` without --broker: a broker (kb_broker) and one
 * worker (kw_worker) on threads of this process, talking over ipc:// sockets in a new temporary
 * folder (under $TMPDIR, else /tmp) that also holds the broker's SQLite database and log; the
 * folder is removed by submit_embedded_stop. The broker's state lives only as long as the run:
 * --resume then relies on OUT.jsonl alone. Not here: the submitting client. */
#ifndef KOSMOS_SUBMIT_EMBEDDED_H
#define KOSMOS_SUBMIT_EMBEDDED_H

#include <stdbool.h>
#include <stdint.h>

#include "ks_error.h"

typedef struct submit_embedded submit_embedded;

/* What the embedded farm did (from the broker's counters). */
typedef struct submit_embedded_stats {
    uint64_t dispatches;     /* jobs handed to the worker */
    uint64_t results_stored; /* results the worker computed and the broker stored */
} submit_embedded_stats;

/* False when this build has no broker or worker library. */
bool submit_embedded_available(void);

/* Starts the broker, then the worker with `model_dir` on `device` (NULL = its default), and
 * waits until the worker has registered, or failed to load (KS_ERR_INVALID / KS_ERR_IO with
 * the reason: see the worker's log lines on stderr). Caller owns *out. */
ks_status submit_embedded_start(const char *model_dir, const char *device, int max_batch,
                                submit_embedded **out);

/* The client endpoint ("ipc://..."). Borrowed until stop. */
const char *submit_embedded_endpoint(const submit_embedded *e);

/* True once the worker or the broker thread has ended on its own (a failure). */
bool submit_embedded_failed(const submit_embedded *e);

/* Stops the worker (it finishes its batch and hands the rest back) and then the broker, removes
 * the folder, fills *stats when not NULL, frees. `now`: for a run interrupted and about to exit:
 * a worker still running is not waited for; its threads are left to the process exit (the
 * folder is removed all the same). Accepts NULL. */
void submit_embedded_stop(submit_embedded **e, bool now, submit_embedded_stats *stats);

#endif
