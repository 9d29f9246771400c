/* kb_dispatch: the two phases of a cycle that act on the clock and on credit rather than on a
 * message: timers (retry promotion, deadlines, dead workers and lapsed leases, restart grace,
 * garbage collection) and dispatch (round robin over workers with credit). Both run inside the
 * cycle's transaction (kb_outbox.c); a Dispatch leaves only once it committed. */
#include "kb_internal.h"

#include <stdlib.h>
#include <string.h>

#define KB_GC_INTERVAL_MS 3600000u
#define KB_EXPIRE_BATCH 256

/* ---- Timers ----------------------------------------------------------------------------------- */

static bool kb_has_lease(kb_broker *b, const char *job_id, uint32_t attempt)
{
    for (size_t i = 0; i < b->n_workers; i++)
        for (size_t k = 0; k < b->workers[i]->n_leases; k++)
            if (b->workers[i]->leases[k].attempt == attempt &&
                strcmp(b->workers[i]->leases[k].job_id, job_id) == 0)
                return true;
    return false;
}

static ks_status kb_timers_in_txn(kb_broker *b, uint64_t now)
{
    ks_status st;
    int n = 0;
    kb_job *jobs = NULL;
    size_t njobs = 0;
    if ((st = kb_store_promote(b->store, now, &n)) != KS_OK)
        return st;
    /* Deadlines of jobs that are not running (§9). */
    if ((st = kb_store_past_deadline(b->store, now, KB_EXPIRE_BATCH, &jobs, &njobs)) != KS_OK)
        return st;
    for (size_t i = 0; i < njobs && st == KS_OK; i++)
        st = kb_finish_made(b, &jobs[i], KOSMOS__V1__JOB_STATE__JOB_STATE_EXPIRED,
                            KOSMOS__V1__STATUS__STATUS_EXPIRED, "deadline passed before it ran");
    for (size_t i = 0; i < njobs; i++)
        kb_job_fini(&jobs[i]);
    free(jobs);
    if (st != KS_OK)
        return st;
    kb_workers_timers(b, now);
    if (kb_store_fault(b->store) != KB_FAULT_NONE)
        return KS_ERR_IO;
    /* After the restart grace: RUNNING jobs nobody claimed go back to QUEUED, no crash (§8.7);
     * after a rolled-back transaction: RUNNING jobs without a lease in memory lapse. */
    bool grace_over = b->grace_until && now >= b->grace_until;
    if (grace_over || (b->need_sweep && now >= b->grace_until)) {
        if ((st = kb_store_running(b->store, &jobs, &njobs)) != KS_OK)
            return st;
        for (size_t i = 0; i < njobs && st == KS_OK; i++) {
            if (kb_has_lease(b, jobs[i].id, jobs[i].attempt))
                continue;
            bool orphan = false;
            for (size_t k = 0; k < b->n_orphans; k++)
                if (strcmp(b->orphans[k].job_id, jobs[i].id) == 0)
                    orphan = true;
            st = kb_lapse(b, jobs[i].id, jobs[i].attempt, !orphan,
                          orphan ? "not claimed after a broker restart" : "lease lost");
        }
        for (size_t i = 0; i < njobs; i++)
            kb_job_fini(&jobs[i]);
        free(jobs);
        if (st != KS_OK)
            return st;
        if (grace_over) {
            free(b->orphans);
            b->orphans = NULL;
            b->n_orphans = 0;
            b->grace_until = 0;
        }
        b->need_sweep = false;
    }
    if (now >= b->next_gc) {
        b->next_gc = now + KB_GC_INTERVAL_MS;
        if (now > b->p.retention_ms &&
            (st = kb_store_gc(b->store, now - b->p.retention_ms, &n)) != KS_OK)
            return st;
        if (n)
            kb_logf(b, KS_LOG_INFO, "gc", "\"jobs_deleted\":%d", n);
    }
    return KS_OK;
}

void kb_timers(kb_broker *b)
{
    uint64_t now = kb_now(b);
    ks_status st;
    if (kb_txn_need(b) && (st = kb_timers_in_txn(b, now)) != KS_OK)
        kb_txn_end(b, st);
}

/* ---- Dispatch ----------------------------------------------------------------------------- */

typedef struct kb_img_hint {
    kb_broker *b;
    size_t len;
} kb_img_hint;

/* Runs on ZeroMQ's I/O thread when the image frame is sent or dropped. */
static void kb_free_image(void *data, void *hint)
{
    kb_img_hint *h = hint;
    atomic_fetch_sub(&h->b->mem_zmq, h->len);
    free(data);
    free(h);
}

/* Builds the Dispatch for a freshly leased job into the outbox. */
static ks_status kb_dispatch_one(kb_broker *b, kb_worker *w, const kb_job *job, uint32_t attempt,
                                 uint64_t lease_expires)
{
    ks_status st;
    void *blob = NULL, *image = NULL;
    size_t blob_len = 0, image_len = 0;
    Kosmos__V1__Job *pj = NULL;
    kb_img_hint *hint = NULL;
    if ((st = kb_store_load_job(b->store, job->id, &blob, &blob_len, &image, &image_len)) != KS_OK)
        goto cleanup;
    pj = kosmos__v1__job__unpack(NULL, blob_len, blob);
    if (!pj) {
        st = ks_fail(KS_ERR_FORMAT, "stored job %s does not decode", job->id);
        goto cleanup;
    }
    if (image) {
        pj->image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE;
        pj->image_attached_size = image_len;
    }
    Kosmos__V1__GenerationParams gen = KOSMOS__V1__GENERATION_PARAMS__INIT;
    Kosmos__V1__GenerationParams *saved_gen = pj->generation;
    if (!pj->generation)
        pj->generation = &gen;
    bool set_max = !pj->generation->has_max_new_tokens;
    if (set_max) {
        pj->generation->has_max_new_tokens = true;
        pj->generation->max_new_tokens = b->p.default_max_new_tokens;
    }
    Kosmos__V1__Dispatch d = KOSMOS__V1__DISPATCH__INIT;
    Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
    d.job_id = (char *)job->id;
    d.has_attempt = true;
    d.attempt = attempt;
    d.job = pj;
    d.has_lease_expires_unix_ms = true;
    d.lease_expires_unix_ms = lease_expires;
    env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH;
    env.dispatch = &d;
    kb_out *o = kb_out_push(b, true, w->rid, w->rid_len, &env.base);
    if (set_max)
        pj->generation->has_max_new_tokens = false;
    pj->generation = saved_gen;
    if (!o) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory building a dispatch");
        goto cleanup;
    }
    o->post = KB_POST_ADD_LEASE;
    snprintf(o->lease.job_id, sizeof o->lease.job_id, "%s", job->id);
    o->lease.attempt = attempt;
    o->lease.expires = lease_expires;
    o->lease.deadline = job->deadline;
    if (image) {
        hint = malloc(sizeof *hint);
        if (!hint) {
            st = ks_fail(KS_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        hint->b = b;
        hint->len = image_len;
        if ((st = kp_frame_wrap(&o->image, image, image_len, kb_free_image, hint)) != KS_OK)
            goto cleanup;
        atomic_fetch_add(&b->mem_zmq, image_len);
        o->has_image = true;
        image = NULL;
        hint = NULL;
    }
    w->credit--;
    b->stats.dispatches++;
    kb_logf(b, KS_LOG_DEBUG, "dispatch", "\"job\":\"%s\",\"attempt\":%u", job->id, attempt);
cleanup:
    if (pj)
        kosmos__v1__job__free_unpacked(pj, NULL);
    free(blob);
    free(image);
    free(hint);
    return st;
}

static bool kb_opt_str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool kb_class_empty(const kb_dispatch_class *c, size_t n, const kb_worker *w)
{
    for (size_t i = 0; i < n; i++)
        if (c[i].memory == w->memory && kb_opt_str_eq(c[i].model_id, w->kind_id) &&
            kb_opt_str_eq(c[i].model_hash, w->kind_hash))
            return true;
    return false;
}

static ks_status kb_dispatch_in_txn(kb_broker *b, uint64_t now)
{
    ks_status st = KS_OK;
    uint32_t sent = 0;
    bool progress = true;
    if (b->empty_epoch != kb_store_queue_epoch(b->store)) {
        b->n_empty = 0;
        b->empty_epoch = kb_store_queue_epoch(b->store);
    }
    /* Round robin: one job per worker per pass, so that credit spreads the load. */
    while (progress && sent < b->p.batch_max) {
        progress = false;
        for (size_t i = 0; i < b->n_workers && sent < b->p.batch_max; i++) {
            kb_worker *w = b->workers[i];
            if (w->credit == 0 || w->gone)
                continue;
            if (atomic_load(&b->mem_zmq) >= b->p.max_inflight_bytes)
                return KS_OK; /* images still queued for slow workers: wait */
            if (kb_class_empty(b->empty, b->n_empty, w))
                continue;
            kb_job job;
            bool found = false;
            if ((st = kb_store_pick(b->store, w->model_id, w->model_hash, w->memory, &found,
                                    &job)) != KS_OK)
                return st;
            if (!found) {
                if (b->n_empty < KB_DISPATCH_CLASSES)
                    b->empty[b->n_empty++] = (kb_dispatch_class){w->kind_id, w->kind_hash,
                                                                 w->memory};
                continue;
            }
            progress = true;
            if (job.deadline && job.deadline <= now) {
                st = kb_finish_made(b, &job, KOSMOS__V1__JOB_STATE__JOB_STATE_EXPIRED,
                                    KOSMOS__V1__STATUS__STATUS_EXPIRED,
                                    "deadline passed before it ran");
                kb_job_fini(&job);
                if (st != KS_OK)
                    return st;
                continue;
            }
            uint32_t attempt = 0;
            uint64_t expires = now + b->p.max_job_ms;
            st = kb_store_lease(b->store, &job, w->name, expires, &attempt);
            if (st == KS_OK)
                st = kb_dispatch_one(b, w, &job, attempt, expires);
            kb_job_fini(&job);
            if (st != KS_OK)
                return st;
            sent++;
        }
    }
    return st;
}

void kb_dispatch(kb_broker *b)
{
    bool any = false;
    for (size_t i = 0; i < b->n_workers; i++)
        any = any || b->workers[i]->credit > 0;
    if (!any)
        return;
    ks_status st;
    if (kb_txn_need(b) && (st = kb_dispatch_in_txn(b, kb_now(b))) != KS_OK)
        kb_txn_end(b, st);
}
