/* kb_broker: the kosmos-farm job broker core (docs/protocol.md, docs/broker.md). Two ROUTER
 * sockets (clients, workers), a SQLite store, credit-based dispatch with leases fenced by
 * attempt numbers. One loop thread: kb_broker_step runs one poll cycle (read a batch of client
 * requests and commit them in one transaction before any reply, read worker messages, run the
 * timers, dispatch), so tests drive it step by step with an injected clock. Beside it, one
 * thread makes the commits durable (kb_syncer.h); replies to clients wait for it.
 *
 * What it is not: a worker, or the engine; the CLI options live in main.c. Module prefix kb_. */
#ifndef KB_BROKER_H
#define KB_BROKER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ks_error.h"
#include "ks_log.h"

/* Unix time in milliseconds. The broker reads time only through this. */
typedef uint64_t (*kb_clock_fn)(void *ctx);
/* 64 random bits (retry jitter, job ids, instance). */
typedef uint64_t (*kb_rand_fn)(void *ctx);

typedef struct kb_params {
    const char *client_endpoint;     /* "tcp://0.0.0.0:5555" style; default tcp port 5555 */
    const char *worker_endpoint;     /* default tcp port 5556 */
    const char *db_path;             /* "kosmos-broker.db" */
    const char *db_vfs;              /* NULL = SQLite's default VFS (tests inject faults) */
    size_t max_message_bytes;        /* 8 MiB: frame 2 */
    size_t max_image_bytes;          /* 64 MiB: frame 3 and inline images */
    uint64_t max_queued;             /* 100000 non-terminal jobs, then busy */
    uint64_t max_client_jobs;        /* 10000 non-terminal jobs per client identity, then busy */
    uint32_t heartbeat_ms;           /* 1000 */
    uint32_t heartbeat_liveness;     /* 3 */
    uint32_t max_job_ms;             /* 600000 */
    uint32_t max_crashes;            /* 3: the 3rd crash makes the job DEAD */
    uint32_t max_attempts;           /* 5 */
    uint32_t backoff_base_ms;        /* 1000: base * 2^(n-1) */
    uint32_t backoff_cap_ms;         /* 60000 */
    uint32_t backoff_jitter_ms;      /* 1000: uniform [0, jitter) */
    uint32_t restart_grace_ms;       /* 0 = (heartbeat_liveness + 2) * heartbeat_ms */
    uint64_t retention_ms;           /* 7 days: job records, keys and unacked results */
    uint32_t fetch_wait_cap_ms;      /* 30000 */
    uint32_t max_waiters;            /* 10000 long polls held at once; more are answered now */
    uint32_t batch_max;              /* 256 messages per socket per cycle */
    size_t batch_max_bytes;          /* 256 MiB of received messages per cycle */
    uint32_t max_workers;            /* 1024 registrations */
    size_t max_inflight_bytes;       /* 1 GiB of dispatched images still queued in ZeroMQ */
    uint32_t default_max_new_tokens; /* 128, set on dispatch when the job leaves it unset */
    const char *const *image_roots;  /* allowed image_uri prefixes; none = image_uri refused */
    size_t n_image_roots;
    /* CURVE (all three or none): secret certificate file, client and worker key folders. */
    const char *curve_secret;
    const char *curve_clients;
    const char *curve_workers;
    kb_clock_fn clock; /* NULL = CLOCK_REALTIME */
    void *clock_ctx;
    kb_rand_fn rand; /* NULL = a xorshift seeded from /dev/urandom */
    void *rand_ctx;
    FILE *log;              /* NULL = stderr */
    ks_log_level log_level; /* KS_LOG_INFO */
    /* NULL = off. The Prometheus endpoint (kb_metrics.h) that kb_broker_step hands a snapshot
     * to (every 250 ms, job counts every second). Borrowed: outlives the broker. */
    struct kb_metrics *metrics;
} kb_params;

/* Counters for tests and metrics (since start). */
/* Durations of the store's disk work, counted in buckets with these upper bounds in
 * microseconds, then one for the rest (docs/operations.md "Monitoring"). */
#define KB_DURATION_BUCKETS 9
extern const uint32_t kb_duration_bucket_us[KB_DURATION_BUCKETS - 1];
typedef struct kb_durations {
    uint64_t buckets[KB_DURATION_BUCKETS]; /* per bucket, not cumulative */
    uint64_t us_total;                     /* all of them added up */
} kb_durations;
void kb_durations_add(kb_durations *d, uint64_t us);

typedef struct kb_stats {
    uint64_t violations; /* protocol-breaking messages, both endpoints */
    uint64_t dispatches;
    uint64_t results_stored;
    uint64_t results_stale;   /* fenced off: acknowledged STALE */
    uint64_t results_unknown; /* acknowledged UNKNOWN_JOB */
    uint64_t lease_lapses;    /* counted as crashes */
    uint64_t commits;
    kb_durations commit_durations; /* COMMITs that wrote: the WAL frames written to the kernel */
    kb_durations sync_durations;   /* the syncer's fdatasyncs of the WAL: the disk */
    uint64_t checkpoints;          /* the syncer's passive checkpoints */
    uint64_t commit_failures;      /* disk full and friends: rolled back, broker kept running */
    uint64_t send_failures;        /* ROUTER_MANDATORY: peer gone, or its queue full */
    size_t memory_bytes;           /* the broker's own buffers now */
    size_t memory_peak;
    size_t memory_bound; /* what docs/broker.md computes from the limits */
    uint32_t workers;
    uint32_t waiters;
} kb_stats;

typedef struct kb_broker kb_broker;

/* Fills the defaults listed above. */
void kb_params_init(kb_params *p);

/* Opens the store (recovering every queued and leased job), starts CURVE if asked (fail
 * closed), binds both endpoints. Caller owns *out. */
ks_status kb_broker_new(const kb_params *p, kb_broker **out);

/* Tells workers Disconnect{SHUTDOWN}, answers held long polls UNAVAILABLE, closes. */
void kb_broker_destroy(kb_broker **b);

/* One poll cycle, waiting at most timeout_ms (-1: until a message or the next timer) for input.
 * KS_ERR_IO means the store failed in a way that stops the broker (fail-stop: I/O or fsync
 * error, corruption); the caller exits non-zero and recovery runs at the next start. */
ks_status kb_broker_step(kb_broker *b, int timeout_ms);

/* Steps until *stop becomes non-zero (a signal handler sets it), then stops intake: the client
 * requests still queued are answered UNAVAILABLE. Returns as kb_broker_step. */
ks_status kb_broker_run(kb_broker *b, volatile sig_atomic_t *stop);

void kb_broker_stats(const kb_broker *b, kb_stats *out);

#endif
