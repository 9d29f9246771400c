/* kl_status: kosmos_broker_status_t, the broker's StatusReply copied into a plain struct with
 * its strings in one arena (protocol.md §5.6). */
#include <stdlib.h>

#include "kl_internal.h"

typedef struct kl_status {
    kosmos_broker_status_t pub; /* first: the pointer callers hold */
    kl_arena arena;
} kl_status;

kosmos_broker_status_t *kl_status_from_wire(const Kosmos__V1__StatusReply *s)
{
    kl_status *st = calloc(1, sizeof *st);
    if (!st)
        goto nomem;
    kosmos_broker_status_t *o = &st->pub;
    kl_arena *a = &st->arena;
    o->broker_version = kl_arena_strdup(a, s->broker_version);
    if (!o->broker_version)
        goto nomem;
    o->broker_instance = s->broker_instance;
    o->uptime_ms = s->uptime_ms;
    for (size_t i = 0; i < s->n_queue; i++) {
        const Kosmos__V1__StateCount *q = s->queue[i];
        if (q)
            o->queue[kl_state_from_wire(q->has_state ? (int)q->state : 0)] += q->count;
    }
    if (s->n_workers > 0) {
        kosmos_worker_info_t *w = kl_arena_alloc(a, s->n_workers * sizeof *w);
        if (!w)
            goto nomem;
        for (size_t i = 0; i < s->n_workers; i++) {
            static const Kosmos__V1__WorkerInfo empty_w = KOSMOS__V1__WORKER_INFO__INIT;
            static const Kosmos__V1__DeviceInfo empty_d = KOSMOS__V1__DEVICE_INFO__INIT;
            const Kosmos__V1__WorkerInfo *src = s->workers[i] ? s->workers[i] : &empty_w;
            const Kosmos__V1__DeviceInfo *d = src->device ? src->device : &empty_d;
            w[i].name = kl_arena_strdup(a, src->worker_name);
            w[i].model_id = kl_arena_strdup(a, src->model_id);
            w[i].model_hash = kl_arena_strdup(a, src->model_hash);
            w[i].device_vendor = kl_arena_strdup(a, d->vendor);
            w[i].device_name = kl_arena_strdup(a, d->name);
            w[i].device_platform = kl_arena_strdup(a, d->platform);
            w[i].device_driver = kl_arena_strdup(a, d->driver_version);
            if (!w[i].name || !w[i].model_id || !w[i].model_hash || !w[i].device_vendor ||
                !w[i].device_name || !w[i].device_platform || !w[i].device_driver)
                goto nomem;
            w[i].device_memory_bytes = d->memory_bytes;
            w[i].device_compute_units = d->compute_units;
            w[i].batch_capacity = src->batch_capacity;
            w[i].credit = src->credit;
            w[i].running = src->running;
            w[i].connected_unix_ms = src->connected_unix_ms;
            w[i].last_heartbeat_ms_ago = src->last_heartbeat_ms_ago;
            w[i].jobs_done = src->jobs_done;
        }
        o->workers = w;
        o->worker_count = s->n_workers;
    }
    o->total_submitted = s->total_submitted;
    o->total_done = s->total_done;
    o->total_failed = s->total_failed;
    o->total_dead = s->total_dead;
    o->total_expired = s->total_expired;
    o->total_cancelled = s->total_cancelled;
    o->jobs_per_second = s->jobs_per_second;
    o->tokens_per_second = s->tokens_per_second;
    o->memory_bytes = s->memory_bytes;
    o->memory_bound_bytes = s->memory_bound_bytes;
    return o;
nomem:
    if (st) {
        kl_arena_free(&st->arena);
        free(st);
    }
    kl_fail(KOSMOS_ERR_NOMEM, "out of memory copying the broker status");
    return NULL;
}

KOSMOS_API void kosmos_broker_status_destroy(kosmos_broker_status_t **status)
{
    if (!status || !*status)
        return;
    kl_status *st = (kl_status *)*status;
    kl_arena_free(&st->arena);
    free(st);
    *status = NULL;
}
