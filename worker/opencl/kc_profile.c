/* kc_profile: see kc_profile.h. Rows are keyed by (scope, name, is_wait) pointer equality first
 * and string equality second, in a small array: a forward pass has a few dozen distinct rows,
 * and the pointers are string literals, so the first comparison almost always decides. */
#include "kc_profile.h"

#include <stdlib.h>
#include <string.h>

typedef struct pending_event {
    size_t row;
    cl_event event;
} pending_event;

struct kc_profile {
    const char *scope;
    kc_profile_row *rows;
    size_t n_rows, cap_rows;
    kc_profile_counter *counters;
    size_t n_counters, cap_counters;
    pending_event *events;
    size_t n_events, cap_events;
    bool any_event;
    bool failed; /* an allocation failed: counts are incomplete */
};

ks_status kc_profile_new(kc_profile **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? KS_OK : ks_fail(KS_ERR_NOMEM, "out of memory for a profile");
}

static void release_events(kc_profile *p)
{
    for (size_t i = 0; i < p->n_events; i++)
        clReleaseEvent(p->events[i].event);
    p->n_events = 0;
}

void kc_profile_destroy(kc_profile **pp)
{
    if (!pp || !*pp)
        return;
    kc_profile *p = *pp;
    release_events(p);
    free(p->rows);
    free(p->counters);
    free(p->events);
    free(p);
    *pp = NULL;
}

void kc_profile_scope(kc_profile *p, const char *scope) { p->scope = scope; }

const char *kc_profile_current_scope(const kc_profile *p) { return p->scope; }

static bool same(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

static const char *scope_name(const kc_profile *p) { return p->scope ? p->scope : "other"; }

/* The row for (current scope, name, is_wait), added when new; SIZE_MAX when out of memory. */
static size_t row_for(kc_profile *p, const char *name, bool is_wait)
{
    const char *scope = scope_name(p);
    for (size_t i = p->n_rows; i-- > 0;) {
        kc_profile_row *r = &p->rows[i];
        if (r->is_wait == is_wait && same(r->name, name) && same(r->scope, scope))
            return i;
    }
    if (p->n_rows == p->cap_rows) {
        size_t cap = p->cap_rows ? 2 * p->cap_rows : 32;
        kc_profile_row *grown = realloc(p->rows, cap * sizeof *grown);
        if (!grown) {
            p->failed = true;
            return SIZE_MAX;
        }
        p->rows = grown;
        p->cap_rows = cap;
    }
    p->rows[p->n_rows] = (kc_profile_row){.scope = scope, .name = name, .is_wait = is_wait};
    return p->n_rows++;
}

void kc_profile_launch(kc_profile *p, const char *name, cl_event event, const kc_cost *cost)
{
    size_t i = row_for(p, name, false);
    if (i == SIZE_MAX) {
        if (event)
            clReleaseEvent(event);
        return;
    }
    kc_profile_row *r = &p->rows[i];
    r->calls++;
    if (cost) {
        r->bytes += cost->bytes;
        r->flops += cost->flops;
    }
    if (!event)
        return;
    if (p->n_events == p->cap_events) {
        size_t cap = p->cap_events ? 2 * p->cap_events : 256;
        pending_event *grown = realloc(p->events, cap * sizeof *grown);
        if (!grown) {
            p->failed = true;
            clReleaseEvent(event);
            return;
        }
        p->events = grown;
        p->cap_events = cap;
    }
    p->events[p->n_events++] = (pending_event){i, event};
    p->any_event = true;
}

void kc_profile_wait(kc_profile *p, const char *what, bool device_busy)
{
    size_t i = row_for(p, what, true);
    if (i == SIZE_MAX)
        return;
    p->rows[i].calls++;
    p->rows[i].busy_waits += device_busy;
}

void kc_profile_count(kc_profile *p, const char *counter)
{
    for (size_t i = 0; i < p->n_counters; i++)
        if (same(p->counters[i].name, counter)) {
            p->counters[i].value++;
            return;
        }
    if (p->n_counters == p->cap_counters) {
        size_t cap = p->cap_counters ? 2 * p->cap_counters : 8;
        kc_profile_counter *grown = realloc(p->counters, cap * sizeof *grown);
        if (!grown) {
            p->failed = true;
            return;
        }
        p->counters = grown;
        p->cap_counters = cap;
    }
    p->counters[p->n_counters++] = (kc_profile_counter){counter, 1};
}

ks_status kc_profile_summarize(kc_profile *p, kc_profile_summary *out)
{
    for (size_t i = 0; i < p->n_events; i++) {
        cl_ulong start = 0, end = 0;
        cl_int a = clGetEventProfilingInfo(p->events[i].event, CL_PROFILING_COMMAND_START,
                                           sizeof start, &start, NULL);
        cl_int b = clGetEventProfilingInfo(p->events[i].event, CL_PROFILING_COMMAND_END, sizeof end,
                                           &end, NULL);
        if (a == CL_SUCCESS && b == CL_SUCCESS && end >= start)
            p->rows[p->events[i].row].device_ms += (double)(end - start) * 1e-6;
    }
    release_events(p);
    *out = (kc_profile_summary){.rows = p->rows,
                                .n_rows = p->n_rows,
                                .counters = p->counters,
                                .n_counters = p->n_counters,
                                .timed = p->any_event};
    if (p->failed)
        return ks_fail(KS_ERR_NOMEM, "out of memory while profiling: the counts are incomplete");
    return KS_OK;
}

void kc_profile_reset(kc_profile *p)
{
    release_events(p);
    p->n_rows = 0;
    p->n_counters = 0;
    p->any_event = false;
    p->failed = false;
}

uint64_t kc_profile_counter_value(const kc_profile *p, const char *name)
{
    for (size_t i = 0; i < p->n_counters; i++)
        if (same(p->counters[i].name, name))
            return p->counters[i].value;
    return 0;
}

uint64_t kc_profile_launches(const kc_profile *p, const char *scope)
{
    uint64_t n = 0;
    for (size_t i = 0; i < p->n_rows; i++)
        if (!p->rows[i].is_wait && (!scope || same(p->rows[i].scope, scope)))
            n += p->rows[i].calls;
    return n;
}

uint64_t kc_profile_waits(const kc_profile *p, const char *scope, uint64_t *busy)
{
    uint64_t n = 0, b = 0;
    for (size_t i = 0; i < p->n_rows; i++)
        if (p->rows[i].is_wait && (!scope || same(p->rows[i].scope, scope))) {
            n += p->rows[i].calls;
            b += p->rows[i].busy_waits;
        }
    if (busy)
        *busy = b;
    return n;
}
