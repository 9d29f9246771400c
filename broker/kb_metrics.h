/* kb_metrics: the broker's optional Prometheus endpoint (kosmos-broker --metrics HOST:PORT,
 * docs/operations.md "Monitoring"). An HTTP server on its own thread (libmicrohttpd) answers
 * GET /metrics in the text exposition format 0.0.4 from the last snapshot the broker published.
 *
 * Threads: the broker thread owns all broker state and never shares it; it copies a snapshot
 * into this module (kb_metrics_publish, under a mutex) at most every 250 ms, with the store's
 * job counts at most every second. The HTTP thread reads only that copy. So a scrape shows
 * counters at most ~250 ms old and job counts at most ~1 s old (older when counting the store
 * is slow, see kb_metrics_due), as long as the broker loop runs; the endpoint's own
 * kosmos_broker_snapshot_age_seconds tells when it does not.
 *
 * What it is not: a general HTTP server, or a place that reads the broker or the store. Built
 * without libmicrohttpd (KOSMOS_HAVE_METRICS unset), the rendering still works and
 * kb_metrics_new fails with KS_ERR_UNSUPPORTED. Module prefix kb_metrics_. */
#ifndef KB_METRICS_H
#define KB_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kb_broker.h"
#include "ks_error.h"

#define KB_METRICS_STATES 10 /* JobState 0..9 (proto/kosmos.proto) */
#define KB_METRICS_TOTALS 6  /* submitted, done, failed, dead, expired, cancelled (totals) */

typedef struct kb_metrics kb_metrics;

/* CLOCK_MONOTONIC in nanoseconds: the real clock for durations the metrics report (the
 * broker's injectable clock is for its timers, not for measuring the disk). */
uint64_t kb_mono_ns(void);

typedef struct kb_metrics_worker {
    const char *name; /* borrowed for the kb_metrics_publish call */
    uint32_t capacity, credit, running;
} kb_metrics_worker;

/* What the broker hands over. Pointers are borrowed for the kb_metrics_publish call only. */
typedef struct kb_metrics_snapshot {
    uint64_t uptime_ms;
    kb_stats stats;                     /* kb_broker_stats */
    bool has_jobs;                      /* jobs[] and totals[] are set; else the last stand */
    uint64_t jobs[KB_METRICS_STATES];   /* jobs per JobState (kb_store_counts) */
    uint64_t totals[KB_METRICS_TOTALS]; /* lifetime totals of the store (kb_store_totals) */
    const kb_metrics_worker *workers;
    size_t n_workers;
} kb_metrics_snapshot;

/* Whether this build has the HTTP server (libmicrohttpd). */
bool kb_metrics_available(void);

/* Parses "HOST:PORT": HOST an IPv4 address, a host name resolving to one, or "*" (= 0.0.0.0);
 * PORT 0..65535 (0 = any free port). Writes HOST (without "*" translation) into host[cap].
 * KS_ERR_INVALID with a message when malformed. */
ks_status kb_metrics_parse_address(const char *address, char *host, size_t cap, uint16_t *port);

/* Binds `address` (as kb_metrics_parse_address) and starts the server thread: at most 16
 * connections, 4 per client address, each closed 5 s after it was accepted whatever it does
 * (a thread of its own cuts it: libmicrohttpd's timeout counts idle time only). KS_ERR_INVALID
 * for a bad address, KS_ERR_IO when it
 * cannot listen (port taken), KS_ERR_UNSUPPORTED in a build without libmicrohttpd. Until the
 * first kb_metrics_publish, /metrics answers 503. Caller owns *out. */
ks_status kb_metrics_new(const char *address, kb_metrics **out);

/* Stops the server thread (waits for it), closes the socket, frees. Accepts NULL. */
void kb_metrics_destroy(kb_metrics **m);

/* The bound address, e.g. "127.0.0.1:43121" (the real port when 0 was asked). Borrowed. */
const char *kb_metrics_address(const kb_metrics *m);

/* Broker thread: true when a snapshot is due (250 ms since the last). *counts_due: the
 * snapshot should include the store's job counts (has_jobs): at most every second, and no more
 * often than keeps the time spent between this call and the publish under 1% of the wall clock
 * (a count that takes 100 ms waits 10 s). Monotonic clock, not the broker's. */
bool kb_metrics_due(kb_metrics *m, bool *counts_due);

/* Broker thread: copies *s (deep) as the snapshot the HTTP thread serves. Never fails
 * visibly: out of memory keeps the previous snapshot. */
void kb_metrics_publish(kb_metrics *m, const kb_metrics_snapshot *s);

/* The text exposition (format 0.0.4) of *s; age_s / jobs_age_s are reported as the snapshot
 * and job-count ages. *text (NUL-terminated, caller frees) and *len. KS_ERR_NOMEM only. */
ks_status kb_metrics_render(const kb_metrics_snapshot *s, double age_s, double jobs_age_s,
                            char **text, size_t *len);

#endif
