/* kc_profile: what a context's queue did, for `kosmos bench --profile` and for tests that count
 * launches. Every kernel launch and every call that makes the host wait for the device goes
 * through kc_context (kc_context_launch, kc_context_read, kc_context_wait, ...), which reports
 * it here under the current scope (a label the engine sets: "text layer", "decode step", ...).
 *
 * Counting is always on and costs a table lookup per launch: tests assert on the counts (how
 * many launches a decode step makes per layer, how many waits it has), never on times. Device
 * times are recorded only when the context was opened with profiling (an event per launch,
 * resolved in kc_profile_summarize).
 *
 * Scope and name strings are borrowed and must outlive the profile (string literals). */
#ifndef KC_PROFILE_H
#define KC_PROFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kc_cl.h"
#include "ks_error.h"

/* What one launch moves and computes, for achieved GB/s and TFLOP/s (0 = not known). */
typedef struct kc_cost {
    double bytes;
    double flops;
} kc_cost;

typedef struct kc_profile kc_profile;

ks_status kc_profile_new(kc_profile **out);
/* Releases the recorded events too. Accepts NULL; sets *p = NULL. */
void kc_profile_destroy(kc_profile **p);

/* The scope that later launches and waits are counted under (NULL = "other"). */
void kc_profile_scope(kc_profile *p, const char *scope);
const char *kc_profile_current_scope(const kc_profile *p);

/* A launch of kernel `name`; `event` (may be NULL) is taken over and timed at the summary. */
void kc_profile_launch(kc_profile *p, const char *name, cl_event event, const kc_cost *cost);

/* A call that blocked the host until the device got there ("clFinish", "read ids", ...).
 * `device_busy`: the queue still held work enqueued after what was waited for (a later step):
 * the device did not starve while the host waited. */
void kc_profile_wait(kc_profile *p, const char *what, bool device_busy);

/* Adds one to a named counter ("decode steps"): the report divides by it. */
void kc_profile_count(kc_profile *p, const char *counter);

/* One row of the summary: a kernel (or a wait) within a scope. */
typedef struct kc_profile_row {
    const char *scope;
    const char *name;
    bool is_wait; /* a blocking call, not a launch */
    uint64_t calls;
    uint64_t busy_waits; /* waits with later work queued (is_wait rows) */
    double device_ms;    /* summed device time (launches; 0 without profiling) */
    double bytes, flops; /* summed costs */
} kc_profile_row;

typedef struct kc_profile_counter {
    const char *name;
    uint64_t value;
} kc_profile_counter;

/* Everything since the last reset, rows in first-seen order. Borrowed until the next call on p.
 * Resolving the events needs them finished: the caller finishes the queue first. */
typedef struct kc_profile_summary {
    const kc_profile_row *rows;
    size_t n_rows;
    const kc_profile_counter *counters;
    size_t n_counters;
    bool timed; /* device times were recorded */
} kc_profile_summary;

ks_status kc_profile_summarize(kc_profile *p, kc_profile_summary *out);

/* Forgets everything recorded (events released); the scope stays. */
void kc_profile_reset(kc_profile *p);

/* The value of counter `name` (0 if never counted), and the launches and waits recorded in
 * `scope` (NULL: every scope), without resolving events: for tests. */
uint64_t kc_profile_counter_value(const kc_profile *p, const char *name);
uint64_t kc_profile_launches(const kc_profile *p, const char *scope);
uint64_t kc_profile_waits(const kc_profile *p, const char *scope, uint64_t *busy);

#endif
