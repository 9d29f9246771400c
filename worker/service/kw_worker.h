/* kw_worker: one kosmos-worker process (docs/protocol.md §8): an I/O thread (the caller's)
 * that owns the DEALER socket to the broker - registration, heartbeats every interval whatever
 * the device is doing, reconnects, credit, results kept until the broker acknowledges them -
 * and a compute thread that owns the engine and runs dispatched jobs in one continuous batch
 * (kw_batch). The two talk over an inproc:// PAIR pipe, so each ZeroMQ socket stays on one
 * thread. Not here: option parsing and signals (main.c). */
#ifndef KW_WORKER_H
#define KW_WORKER_H

#include <signal.h>
#include <stdint.h>

#include "kw_batch.h"

/* Test seams, injected like the broker's clock (kb_params): all NULL in kosmos-worker, set by
 * tests/support/kosmos-test-worker from its --test-* options to make a slow device, a poison
 * job and a long job. Each runs on the compute thread and may block it (heartbeats go on). */
typedef struct kw_test_seams {
    void (*before_join)(void *ctx);                   /* before ready jobs join the batch */
    void (*on_join)(void *ctx, const kw_job_in *job); /* as each job joins it */
    kw_batch_poll_fn *on_step;                        /* each step, each prompt held */
    void *ctx;
} kw_test_seams;

typedef struct kw_worker_params {
    const char *broker;     /* worker endpoint, tcp:// or ipc:// (required) */
    const char *name;       /* unique per process; NULL = "<host>/<device>" */
    const char *model_id;   /* NULL = kw_model_id(model_dir) */
    const char *model_hash; /* NULL = SHA-256 of the weights (kw_model_hash) */
    kw_engine_params engine;
    int max_batch;               /* jobs computed at once, 1..1024; default 4 */
    int prefill_tokens;          /* prompt tokens one step feeds at most (kw_batch_params);
                                  * default 512 */
    int prefetch;                /* jobs held beyond them, waiting to start, 0..1024; -1 (the
                                  * default) = a quarter of max_batch, 1..64 */
    uint32_t heartbeat_ms;       /* until Welcome says otherwise; default 1000 */
    uint32_t heartbeat_liveness; /* idem; default 3 */
    uint32_t reconnect_max_ms;   /* socket re-creation backoff cap; default 30000 */
    uint32_t stop_timeout_ms;    /* SIGTERM: longest wait for running work and acks; 120000 */
    uint32_t stop_grace_ms;      /* SIGTERM: running sequences finish within this (at most
                                  * stop_timeout_ms); then they stop at their next decode step
                                  * and their jobs are handed back; 60000 */
    const char *curve_secret;    /* this worker's secret certificate (CURVE on), or NULL */
    const char *curve_server;    /* the broker's public certificate; both or neither */
    kw_test_seams test;          /* all NULL (tests only) */
} kw_worker_params;

void kw_worker_params_default(kw_worker_params *p);

/* The credit the worker grants (Ready.batch_capacity): max_batch + prefetch. */
int kw_worker_capacity(const kw_worker_params *p);

/* Exit codes of kw_worker_run (and of kosmos-worker). */
enum {
    KW_EXIT_OK = 0,     /* stopped on request (SIGTERM/SIGINT) */
    KW_EXIT_CONFIG = 1, /* bad options, model or device could not be opened, the broker
                           * refused the worker for good (CODE_REJECTED, its CURVE key) */
    KW_EXIT_DEVICE = 3  /* the device failed while running; its jobs were reported/handed back */
};

/* Runs the worker until *stop becomes non-zero (a signal handler sets it; a second increment
 * stops at once without waiting for the running batch) or a fatal error. Returns a KW_EXIT_*
 * code; the message of a failure has been logged. */
int kw_worker_run(const kw_worker_params *p, volatile sig_atomic_t *stop);

#endif
