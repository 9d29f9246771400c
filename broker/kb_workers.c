/* kb_workers: the worker endpoint (docs/protocol.md §8, §9): registration, credit, heartbeats
 * and leases, results fenced by attempt numbers. A batch of worker messages runs in one
 * transaction; ResultAcks wait in the outbox for its commit. */
#include "kb_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ks_sat.h"

#define KB_MAX_NAME 128

kb_worker *kb_worker_by_name(kb_broker *b, const char *name)
{
    for (size_t i = 0; i < b->n_workers; i++)
        if (strcmp(b->workers[i]->name, name) == 0)
            return b->workers[i];
    return NULL;
}

kb_worker *kb_worker_by_rid(kb_broker *b, const void *rid, size_t len)
{
    for (size_t i = 0; i < b->n_workers; i++)
        if (b->workers[i]->rid_len == len && memcmp(b->workers[i]->rid, rid, len) == 0)
            return b->workers[i];
    return NULL;
}

bool kb_worker_drop_lease(kb_worker *w, const char *job_id, uint32_t attempt)
{
    for (size_t i = 0; i < w->n_leases; i++)
        if (w->leases[i].attempt == attempt && strcmp(w->leases[i].job_id, job_id) == 0) {
            w->leases[i] = w->leases[--w->n_leases];
            return true;
        }
    return false;
}

ks_status kb_worker_add_lease(kb_broker *b, kb_worker *w, const kb_lease *l)
{
    if (w->n_leases == w->cap_leases) {
        size_t ncap = w->cap_leases ? w->cap_leases * 2 : 4;
        kb_lease *grown = realloc(w->leases, ncap * sizeof *grown);
        if (!grown)
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        w->leases = grown;
        w->cap_leases = ncap;
        b->mem_workers_stale = true;
    }
    w->leases[w->n_leases++] = *l;
    return KS_OK;
}

/* The entry for (id, hash). With `any`, a NULL id or hash matches every id or hash, as a job's
 * requirements match workers; without it, a NULL hash matches only a NULL (id is never NULL). */
static kb_model *kb_model_find(kb_broker *b, const char *id, const char *hash, bool any)
{
    for (size_t i = 0; i < b->n_models; i++) {
        const char *h = b->models[i].hash;
        if ((id ? strcmp(b->models[i].id, id) == 0 : any) &&
            (hash ? h && strcmp(h, hash) == 0 : any || !h))
            return &b->models[i];
    }
    return NULL;
}

bool kb_model_known(kb_broker *b, const char *id, const char *hash)
{
    return kb_model_find(b, id, hash, true) != NULL;
}

/* The table's entry for exactly (id, hash), added when absent; NULL when id is NULL or the
 * table is full. Entries live as long as the broker, so their strings may be shared. */
static const kb_model *kb_model_intern(kb_broker *b, const char *id, const char *hash)
{
    if (!id)
        return NULL;
    const kb_model *found = kb_model_find(b, id, hash, false);
    if (found)
        return found;
    if (b->n_models >= 4u * b->p.max_workers)
        return NULL; /* bounded; a broker restart forgets them anyway */
    kb_model *grown = realloc(b->models, (b->n_models + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    b->models = grown;
    kb_model *m = &b->models[b->n_models];
    m->id = strdup(id);
    m->hash = hash ? strdup(hash) : NULL;
    if (!m->id || (hash && !m->hash)) {
        free(m->id);
        free(m->hash);
        return NULL;
    }
    b->n_models++;
    return m;
}

static void kb_worker_free(kb_worker *w)
{
    if (!w)
        return;
    free(w->name);
    free(w->model_id);
    free(w->model_hash);
    free(w->device_name);
    free(w->device_vendor);
    free(w->leases);
    free(w);
}

bool kb_lease_started(const kb_worker *w, const kb_lease *l)
{
    return l->started || !w->reports_start;
}

/* Lapses one lease of `w` (inside a transaction): a crash only when `crash` and the lease was
 * computing - a job the worker only held queued did nothing to it (§9). */
static void kb_lease_lapse(kb_broker *b, const kb_worker *w, const kb_lease *l, bool crash,
                           const char *why)
{
    char msg[200];
    if (crash && !kb_lease_started(w, l)) {
        snprintf(msg, sizeof msg, "%s; it had not started: no penalty", why);
        why = msg;
        crash = false;
    }
    kb_lapse(b, l->job_id, l->attempt, crash, why);
}

/* Removes a worker from the table. `why` NULL: no database work (shutdown); else its leases
 * lapse (inside a transaction), as crashes when `crash` and they had started. */
void kb_worker_forget(kb_broker *b, kb_worker *w, bool crash, const char *why)
{
    for (size_t i = 0; why && i < w->n_leases; i++)
        kb_lease_lapse(b, w, &w->leases[i], crash, why);
    for (size_t i = 0; i < b->n_workers; i++)
        if (b->workers[i] == w) {
            b->workers[i] = b->workers[--b->n_workers];
            break;
        }
    b->mem_workers_stale = true;
    if (why)
        kb_logf(b, KS_LOG_INFO, "worker_gone", "\"name\":\"%s\",\"why\":\"%s\"", w->name, why);
    b->n_empty = 0; /* it may have lent its strings to the dispatch classes */
    kb_worker_free(w);
}

void kb_send_worker_packed(kb_broker *b, kb_worker *w, zmq_msg_t *body, zmq_msg_t *image)
{
    if (kp_send_packed(b->worker_sock, w->rid, w->rid_len, body, image, ZMQ_DONTWAIT) != KS_OK) {
        b->stats.send_failures++;
        w->gone = true;
        /* The peer's connection is gone without a Disconnect: the process died (or dropped its
         * socket), as for missed heartbeats - a crash, or a poison job would never end DEAD.
         * A full queue (EAGAIN) is a slow worker: its leases go back without a crash. */
        w->gone_dead = w->gone_dead || errno == EHOSTUNREACH;
        kb_logf(b, KS_LOG_WARN, "worker_send_failed", "\"name\":\"%s\",\"error\":\"%s\"", w->name,
                zmq_strerror(errno));
        return;
    }
    w->last_sent = kb_now(b);
}

void kb_send_worker(kb_broker *b, kb_worker *w, const ProtobufCMessage *msg)
{
    zmq_msg_t body;
    if (kp_pack(msg, &body) != KS_OK) {
        zmq_msg_close(&body);
        return;
    }
    kb_send_worker_packed(b, w, &body, NULL);
}

static void kb_send_rid(kb_broker *b, const void *rid, size_t rid_len,
                        Kosmos__V1__BrokerToWorker *m)
{
    if (kp_send(b->worker_sock, rid, rid_len, &m->base, NULL, ZMQ_DONTWAIT) != KS_OK)
        b->stats.send_failures++;
}

static void kb_disconnect(kb_broker *b, const void *rid, size_t rid_len, int code, const char *msg)
{
    Kosmos__V1__Disconnect dc = KOSMOS__V1__DISCONNECT__INIT;
    Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
    dc.has_code = true;
    dc.code = code;
    dc.message = (char *)msg;
    env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT;
    env.disconnect = &dc;
    kb_send_rid(b, rid, rid_len, &env);
}

static void kb_send_cancel(kb_broker *b, kb_worker *w, const char *job_id, uint32_t attempt,
                           int reason)
{
    Kosmos__V1__Cancel c = KOSMOS__V1__CANCEL__INIT;
    Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
    c.job_id = (char *)job_id;
    c.has_attempt = true;
    c.attempt = attempt;
    c.has_reason = true;
    c.reason = reason;
    env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_CANCEL;
    env.cancel = &c;
    kb_send_worker(b, w, &env.base);
}

/* A heartbeat to the worker; with `confirm`, listing every lease the broker knows started
 * (the start confirmation the worker waits for, §8.4), which marks them confirmed. */
static void kb_send_heartbeat(kb_broker *b, kb_worker *w, bool confirm)
{
    Kosmos__V1__Heartbeat h = KOSMOS__V1__HEARTBEAT__INIT;
    Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
    Kosmos__V1__Lease *storage = NULL, **list = NULL;
    h.has_sent_unix_ms = true;
    h.sent_unix_ms = kb_now(b);
    if (confirm && w->n_leases) {
        storage = calloc(w->n_leases, sizeof *storage);
        list = calloc(w->n_leases, sizeof *list);
        for (size_t i = 0; storage && list && i < w->n_leases; i++) {
            kb_lease *l = &w->leases[i];
            if (!l->started)
                continue;
            kosmos__v1__lease__init(&storage[h.n_running]);
            storage[h.n_running].job_id = l->job_id;
            storage[h.n_running].has_attempt = storage[h.n_running].has_started = true;
            storage[h.n_running].attempt = l->attempt;
            storage[h.n_running].started = true;
            list[h.n_running] = &storage[h.n_running];
            h.n_running++;
            l->confirmed = true;
        }
        h.running = list;
    }
    env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_HEARTBEAT;
    env.heartbeat = &h;
    kb_send_worker(b, w, &env.base);
    free(list);
    free(storage);
}

static void kb_protocol_error(kb_broker *b, const void *rid, size_t rid_len, const char *what)
{
    char esc[300];
    b->stats.violations++;
    kb_logf(b, KS_LOG_WARN, "protocol_violation", "\"endpoint\":\"worker\",\"what\":%s",
            ks_log_str(esc, sizeof esc, what));
    kb_disconnect(b, rid, rid_len, KOSMOS__V1__DISCONNECT__CODE__CODE_PROTOCOL_ERROR, what);
    kb_worker *w = kb_worker_by_rid(b, rid, rid_len);
    if (w)
        kb_worker_forget(b, w, true, "protocol error");
}

/* Whether a refusal for now may be answered to `rid` (and notes that it is): once per
 * heartbeat interval per peer (kb_refused). */
static bool kb_refusal_due(kb_broker *b, const void *rid, size_t rid_len)
{
    uint64_t now = kb_now(b);
    kb_refused *slot = &b->refused[0];
    for (size_t i = 0; i < KB_REFUSED_SLOTS; i++) {
        kb_refused *r = &b->refused[i];
        if (r->rid_len == rid_len && memcmp(r->rid, rid, rid_len) == 0) {
            if (now < r->until)
                return false;
            slot = r;
            break;
        }
        if (r->until < slot->until)
            slot = r; /* the oldest, or a free one */
    }
    memcpy(slot->rid, rid, rid_len);
    slot->rid_len = rid_len;
    slot->until = now + b->p.heartbeat_ms;
    return true;
}

/* Whether a Ready may register; one that may not is answered here (REJECTED, or RETRY_LATER
 * while --max-workers is reached). */
static bool kb_ready_admitted(kb_broker *b, const void *rid, size_t rid_len,
                              const Kosmos__V1__Ready *r)
{
    const char *why = NULL;
    if (!r->has_protocol_version || r->protocol_version != 1)
        why = "protocol_version must be 1";
    else if (!r->worker_name || !r->worker_name[0] || strlen(r->worker_name) > KB_MAX_NAME)
        why = "worker_name must be 1..128 bytes";
    else if (!r->has_batch_capacity || r->batch_capacity < 1 || r->batch_capacity > KB_MAX_CAPACITY)
        why = "batch_capacity must be 1..2048";
    else if (!kb_worker_by_rid(b, rid, rid_len) && !kb_worker_by_name(b, r->worker_name) &&
             b->n_workers >= b->p.max_workers) {
        /* Full for now, not for good: a slot frees when a worker leaves (§8.1). */
        if (kb_refusal_due(b, rid, rid_len)) {
            Kosmos__V1__Disconnect dc = KOSMOS__V1__DISCONNECT__INIT;
            Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
            dc.has_code = dc.has_retry_after_ms = true;
            dc.code = KOSMOS__V1__DISCONNECT__CODE__CODE_RETRY_LATER;
            dc.message = "too many workers (--max-workers): retry later";
            dc.retry_after_ms = b->p.heartbeat_ms * b->p.heartbeat_liveness;
            env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT;
            env.disconnect = &dc;
            kb_send_rid(b, rid, rid_len, &env);
            kb_logf(b, KS_LOG_WARN, "worker_refused_for_now",
                    "\"why\":\"too many workers (--max-workers)\",\"workers\":%zu", b->n_workers);
        }
        return false;
    }
    if (why) {
        kb_disconnect(b, rid, rid_len, KOSMOS__V1__DISCONNECT__CODE__CODE_REJECTED, why);
        kb_logf(b, KS_LOG_WARN, "worker_rejected", "\"why\":\"%s\"", why);
        return false;
    }
    return true;
}

/* Adds the worker a Ready describes to the table, which owns *out. */
static ks_status kb_worker_register(kb_broker *b, const void *rid, size_t rid_len,
                                    const Kosmos__V1__Ready *r, kb_worker **out)
{
    kb_worker *w = calloc(1, sizeof *w);
    if (!w)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    if (b->n_workers == b->cap_workers) {
        size_t ncap = b->cap_workers ? b->cap_workers * 2 : 8;
        kb_worker **grown = realloc(b->workers, ncap * sizeof *grown);
        if (!grown) {
            free(w);
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        }
        b->workers = grown;
        b->cap_workers = ncap;
    }
    memcpy(w->rid, rid, rid_len);
    w->rid_len = rid_len;
    w->name = strdup(r->worker_name);
    w->instance = r->worker_instance;
    w->model_id = r->model_id && strlen(r->model_id) <= KB_MAX_NAME ? strdup(r->model_id) : NULL;
    w->model_hash = r->model_hash && strlen(r->model_hash) <= KB_MAX_NAME ? strdup(r->model_hash)
                                                                          : NULL;
    if (r->device) {
        w->memory = r->device->has_memory_bytes ? r->device->memory_bytes : 0;
        if (r->device->name && strlen(r->device->name) <= KB_MAX_NAME)
            w->device_name = strdup(r->device->name);
        if (r->device->vendor && strlen(r->device->vendor) <= KB_MAX_NAME)
            w->device_vendor = strdup(r->device->vendor);
    }
    w->capacity = r->batch_capacity;
    w->connected = w->last_seen = kb_now(b);
    if (!w->name) {
        kb_worker_free(w);
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    }
    b->workers[b->n_workers++] = w;
    b->mem_workers_stale = true;
    const kb_model *kind = kb_model_intern(b, w->model_id, w->model_hash);
    w->kind_id = kind ? kind->id : w->model_id;
    w->kind_hash = kind ? kind->hash : w->model_hash;
    *out = w;
    return KS_OK;
}

static void kb_send_welcome(kb_broker *b, kb_worker *w)
{
    Kosmos__V1__Welcome wel = KOSMOS__V1__WELCOME__INIT;
    Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
    wel.has_broker_instance = wel.has_heartbeat_interval_ms = wel.has_heartbeat_liveness = true;
    wel.has_max_job_ms = wel.has_confirms_start = wel.confirms_start = true;
    wel.broker_instance = b->instance;
    wel.heartbeat_interval_ms = b->p.heartbeat_ms;
    wel.heartbeat_liveness = b->p.heartbeat_liveness;
    wel.max_job_ms = b->p.max_job_ms;
    /* The roots image_uri was checked against, so that the worker reads beneath them (§2). */
    wel.image_roots = (char **)b->p.image_roots;
    wel.n_image_roots = b->p.n_image_roots;
    env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_WELCOME;
    env.welcome = &wel;
    kb_send_worker(b, w, &env.base);
}

/* Re-adopts the leases a registering worker lists that the store still has RUNNING at that
 * attempt (§8.7); the others are cancelled as stale. */
static ks_status kb_ready_adopt(kb_broker *b, kb_worker *w, const Kosmos__V1__Ready *r)
{
    ks_status st = KS_OK;
    for (size_t i = 0; i < r->n_running; i++) {
        const Kosmos__V1__Lease *l = r->running[i];
        if (!l || !l->job_id || !l->has_attempt)
            continue;
        kb_job job;
        bool found = false;
        if ((st = kb_store_get(b->store, l->job_id, &found, &job)) != KS_OK)
            return st;
        if (found && job.state == KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING &&
            job.attempt == l->attempt) {
            kb_lease lease;
            memset(&lease, 0, sizeof lease);
            snprintf(lease.job_id, sizeof lease.job_id, "%s", job.id);
            lease.attempt = job.attempt;
            lease.expires = job.lease_expires;
            lease.deadline = job.deadline;
            lease.seen = true;
            if (l->has_started && l->started) {
                /* The compute clock starts over at adoption: this broker never saw the start. */
                lease.started = true;
                lease.expires = ks_sat_add_u64(kb_now(b), b->p.max_job_ms);
            }
            kb_worker_add_lease(b, w, &lease);
            if (!job.worker || strcmp(job.worker, w->name) != 0)
                st = kb_store_set_worker(b->store, job.id, w->name);
            for (size_t k = 0; k < b->n_orphans; k++)
                if (strcmp(b->orphans[k].job_id, job.id) == 0)
                    b->orphans[k] = b->orphans[--b->n_orphans];
            kb_logf(b, KS_LOG_INFO, "lease_adopted",
                    "\"job\":\"%s\",\"attempt\":%u,\"worker\":\"%s\"", job.id, job.attempt,
                    w->name);
        } else {
            kb_send_cancel(b, w, l->job_id, l->attempt, KOSMOS__V1__CANCEL__REASON__REASON_STALE);
        }
        if (found)
            kb_job_fini(&job);
        if (st != KS_OK)
            return st;
    }
    return KS_OK;
}

static ks_status kb_ready(kb_broker *b, const void *rid, size_t rid_len, const Kosmos__V1__Ready *r)
{
    if (!kb_ready_admitted(b, rid, rid_len, r))
        return KS_OK;
    kb_worker *old = kb_worker_by_rid(b, rid, rid_len);
    if (!old)
        old = kb_worker_by_name(b, r->worker_name);
    if (old) {
        if (old->instance != r->worker_instance) {
            kb_worker_forget(b, old, true, "worker restarted (new instance)");
        } else {
            /* Same process, new connection: what it still runs is re-adopted below, the rest
             * lapses at the next sweep. */
            kb_worker_forget(b, old, false, NULL);
            b->need_sweep = true;
        }
        if (kb_store_fault(b->store) != KB_FAULT_NONE)
            return KS_ERR_IO;
    }
    kb_worker *w = NULL;
    ks_status st = kb_worker_register(b, rid, rid_len, r, &w);
    if (st != KS_OK)
        return st;
    kb_send_welcome(b, w);
    for (size_t i = 0; i < r->n_running; i++)
        w->reports_start = w->reports_start || (r->running[i] && r->running[i]->has_started);
    if ((st = kb_ready_adopt(b, w, r)) != KS_OK)
        return st;
    kb_logf(b, KS_LOG_INFO, "worker_ready", "\"name\":\"%s\",\"capacity\":%u,\"adopted\":%zu",
            w->name, w->capacity, w->n_leases);
    return KS_OK;
}

/* Renews the listed leases (a live worker extends every lease it lists, started or queued),
 * records starts - from then the compute cap runs - and confirms new ones at once (§8.4);
 * lapses the leases no longer listed. */
static void kb_heartbeat(kb_broker *b, kb_worker *w, const Kosmos__V1__Heartbeat *h)
{
    bool confirm = false;
    for (size_t i = 0; i < h->n_running; i++) {
        const Kosmos__V1__Lease *l = h->running[i];
        if (!l || !l->job_id)
            continue;
        w->reports_start = w->reports_start || l->has_started;
        bool ours = false;
        for (size_t k = 0; k < w->n_leases; k++) {
            kb_lease *lease = &w->leases[k];
            if (lease->attempt != l->attempt || strcmp(lease->job_id, l->job_id) != 0)
                continue;
            lease->seen = true;
            ours = true;
            if (l->has_started && l->started && !lease->started) {
                lease->started = true;
                lease->expires = ks_sat_add_u64(kb_now(b), b->p.max_job_ms);
                kb_logf(b, KS_LOG_DEBUG, "job_started", "\"job\":\"%s\",\"attempt\":%u",
                        lease->job_id, lease->attempt);
            }
            confirm = confirm || (lease->started && !lease->confirmed);
        }
        if (!ours)
            kb_send_cancel(b, w, l->job_id, l->attempt, KOSMOS__V1__CANCEL__REASON__REASON_STALE);
    }
    if (confirm)
        kb_send_heartbeat(b, w, true);
    for (size_t k = 0; k < w->n_leases;) {
        bool listed = false;
        for (size_t i = 0; i < h->n_running && !listed; i++)
            listed = h->running[i] && h->running[i]->job_id &&
                     h->running[i]->attempt == w->leases[k].attempt &&
                     strcmp(h->running[i]->job_id, w->leases[k].job_id) == 0;
        if (w->leases[k].seen && !listed) {
            kb_lease l = w->leases[k];
            w->leases[k] = w->leases[--w->n_leases];
            kb_lease_lapse(b, w, &l, true, "worker no longer lists it");
            continue;
        }
        k++;
    }
}

static ks_status kb_result_ack(kb_broker *b, kb_worker *w, const char *job_id, uint32_t attempt,
                               int disposition)
{
    Kosmos__V1__ResultAck a = KOSMOS__V1__RESULT_ACK__INIT;
    Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
    a.job_id = (char *)job_id;
    a.has_attempt = a.has_disposition = true;
    a.attempt = attempt;
    a.disposition = disposition;
    env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_RESULT_ACK;
    env.result_ack = &a;
    return kb_out_push(b, true, w->rid, w->rid_len, &env.base)
               ? KS_OK
               : ks_fail(KS_ERR_NOMEM, "out of memory");
}

static ks_status kb_result(kb_broker *b, kb_worker *w, Kosmos__V1__Result *res)
{
    ks_status st = KS_OK;
    kb_job job;
    bool found = false;
    void *blob = NULL;
    size_t len = 0;
    const char *id = res->job_id ? res->job_id : "";
    uint32_t attempt = res->has_attempt ? res->attempt : 0;
    if (!res->job_id || !res->has_attempt ||
        (st = kb_store_get(b->store, id, &found, &job)) != KS_OK || !found) {
        if (st != KS_OK)
            return st;
        b->stats.results_unknown++;
        return kb_result_ack(b, w, id, attempt,
                             KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_UNKNOWN_JOB);
    }
    kb_worker_drop_lease(w, job.id, attempt);
    if (kb_state_terminal(job.state) && job.result_attempt == attempt &&
        job.state != KOSMOS__V1__JOB_STATE__JOB_STATE_CANCELLED) {
        st = kb_result_ack(b, w, job.id, attempt,
                           KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
        goto cleanup;
    }
    if (job.state != KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING || job.attempt != attempt ||
        !job.worker || strcmp(job.worker, w->name) != 0) {
        b->stats.results_stale++;
        kb_logf(b, KS_LOG_INFO, "result_stale", "\"job\":\"%s\",\"attempt\":%u,\"current\":%u",
                job.id, attempt, job.attempt);
        st = kb_result_ack(b, w, job.id, attempt,
                           KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STALE);
        goto cleanup;
    }
    /* Echo what the broker knows; the rest is the worker's report. */
    bool retry_prompt = false;
    uint64_t tokens = 0;
    for (size_t i = 0; i < res->n_prompts; i++) {
        const Kosmos__V1__PromptResult *p = res->prompts[i];
        if (!p)
            continue;
        if (p->has_status && p->status == KOSMOS__V1__STATUS__STATUS_FAILED && p->retriable)
            retry_prompt = true;
        if (p->timings && p->timings->has_new_tokens)
            tokens += p->timings->new_tokens;
    }
    char *sent_label = res->label;
    res->label = job.label; /* borrowed from job for the pack only */
    len = kosmos__v1__result__get_packed_size(res);
    blob = malloc(len ? len : 1);
    if (blob)
        kosmos__v1__result__pack(res, blob);
    res->label = sent_label;
    if (!blob) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    int status = res->has_status ? (int)res->status : 0;
    int state;
    switch (status) {
    case KOSMOS__V1__STATUS__STATUS_OK:
        state = retry_prompt ? -1 : KOSMOS__V1__JOB_STATE__JOB_STATE_DONE;
        break;
    case KOSMOS__V1__STATUS__STATUS_FAILED:
        state = res->retriable ? -1 : KOSMOS__V1__JOB_STATE__JOB_STATE_FAILED;
        break;
    case KOSMOS__V1__STATUS__STATUS_EXPIRED:
        state = KOSMOS__V1__JOB_STATE__JOB_STATE_EXPIRED;
        break;
    case KOSMOS__V1__STATUS__STATUS_CANCELLED:
        state = KOSMOS__V1__JOB_STATE__JOB_STATE_CANCELLED;
        break;
    default:
        state = KOSMOS__V1__JOB_STATE__JOB_STATE_FAILED; /* not understood: final */
        break;
    }
    if (state < 0) {
        st = kb_retry_or_fail(b, &job, blob, len,
                              res->message ? res->message : "retriable failure");
    } else {
        st = kb_store_finish(b->store, job.id, state, blob, len, attempt, kb_now(b));
        if (st == KS_OK)
            kb_note_terminal(b, job.id);
    }
    if (st != KS_OK)
        goto cleanup;
    b->stats.results_stored++;
    w->jobs_done++;
    kb_throughput_add(b, state == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE ? 1 : 0, tokens);
    st = kb_result_ack(b, w, job.id, attempt,
                       KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
cleanup:
    free(blob);
    kb_job_fini(&job);
    return st;
}

static ks_status kb_worker_handle(kb_broker *b, kp_inbound *in)
{
    size_t rid_len;
    const void *rid = kp_inbound_routing_id(in, &rid_len);
    kp_verdict v = kp_inbound_verdict(in);
    if (v == KP_NOT_OURS) {
        b->stats.violations++;
        return KS_OK;
    }
    if (v == KP_BAD_VERSION) {
        b->stats.violations++;
        char msg[160];
        snprintf(msg, sizeof msg, "broker %s", kp_inbound_reason(in));
        kb_disconnect(b, rid, rid_len, KOSMOS__V1__DISCONNECT__CODE__CODE_REJECTED, msg);
        return KS_OK;
    }
    if (v != KP_VALID) {
        kb_protocol_error(b, rid, rid_len, kp_inbound_reason(in));
        return kb_store_fault(b->store) != KB_FAULT_NONE ? KS_ERR_IO : KS_OK;
    }
    Kosmos__V1__WorkerMessage *m = (Kosmos__V1__WorkerMessage *)kp_inbound_envelope(in);
    if (m->message_case == KOSMOS__V1__WORKER_MESSAGE__MESSAGE_READY && m->ready)
        return kb_ready(b, rid, rid_len, m->ready);
    kb_worker *w = kb_worker_by_rid(b, rid, rid_len);
    if (!w) {
        if (m->message_case != KOSMOS__V1__WORKER_MESSAGE__MESSAGE_DISCONNECT)
            kb_disconnect(b, rid, rid_len, KOSMOS__V1__DISCONNECT__CODE__CODE_NOT_REGISTERED,
                          "unknown worker: send Ready");
        return KS_OK;
    }
    w->last_seen = kb_now(b);
    switch (m->message_case) {
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE_CREDIT:
        if (m->credit && m->credit->has_slots) {
            uint64_t c = (uint64_t)w->credit + m->credit->slots;
            uint64_t limit = w->capacity > w->n_leases ? w->capacity - w->n_leases : 0;
            if (c > limit) {
                kb_logf(b, KS_LOG_WARN, "credit_over_capacity",
                        "\"name\":\"%s\",\"credit\":%llu,\"limit\":%llu", w->name,
                        (unsigned long long)c, (unsigned long long)limit);
                c = limit;
            }
            w->credit = (uint32_t)c;
        }
        return KS_OK;
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE_HEARTBEAT:
        if (m->heartbeat)
            kb_heartbeat(b, w, m->heartbeat);
        return kb_store_fault(b->store) != KB_FAULT_NONE ? KS_ERR_IO : KS_OK;
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE_RESULT:
        return m->result ? kb_result(b, w, m->result) : KS_OK;
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE_DISCONNECT:
        kb_worker_forget(b, w, false, "worker disconnected");
        return kb_store_fault(b->store) != KB_FAULT_NONE ? KS_ERR_IO : KS_OK;
    default:
        kb_logf(b, KS_LOG_DEBUG, "worker_message_unknown", "\"name\":\"%s\"", w->name);
        return KS_OK; /* a newer worker: ignored (§7) */
    }
}

void kb_workers_batch(kb_broker *b)
{
    size_t n = kb_batch_read(b, b->worker_sock, KP_WORKER_MESSAGE);
    ks_status st = KS_OK;
    if (n && kb_txn_need(b)) {
        for (size_t i = 0; i < n && st == KS_OK; i++)
            st = kb_worker_handle(b, b->batch[i]);
        if (st != KS_OK)
            kb_txn_end(b, st);
    }
    kb_batch_release(b, n);
}

void kb_workers_timers(kb_broker *b, uint64_t now)
{
    uint64_t dead_after = (uint64_t)b->p.heartbeat_liveness * b->p.heartbeat_ms;
    for (size_t i = 0; i < b->n_workers;) {
        kb_worker *w = b->workers[i];
        if (w->gone || w->last_seen + dead_after <= now) {
            kb_worker_forget(b, w, !w->gone || w->gone_dead,
                             !w->gone       ? "missed heartbeats"
                             : w->gone_dead ? "send failed (peer gone)"
                                            : "send failed (queue full)");
            continue; /* the slot now holds another worker */
        }
        for (size_t k = 0; k < w->n_leases;) {
            kb_lease *l = &w->leases[k];
            /* --max-job-seconds caps computing, not waiting in the worker's queue. */
            if (kb_lease_started(w, l) && l->expires <= now) {
                kb_lease copy = *l;
                kb_send_cancel(b, w, copy.job_id, copy.attempt,
                               KOSMOS__V1__CANCEL__REASON__REASON_LEASE_EXPIRED);
                w->leases[k] = w->leases[--w->n_leases];
                kb_lapse(b, copy.job_id, copy.attempt, true, "computed past --max-job-seconds");
                continue;
            }
            if (l->deadline && !l->cancel_sent &&
                ks_sat_add_u64(l->deadline, b->p.heartbeat_ms) <= now) {
                l->cancel_sent = true;
                kb_send_cancel(b, w, l->job_id, l->attempt,
                               KOSMOS__V1__CANCEL__REASON__REASON_DEADLINE);
            }
            k++;
        }
        if (now >= w->last_sent + b->p.heartbeat_ms)
            kb_send_heartbeat(b, w, false);
        i++;
    }
}

void kb_status_fill_workers(kb_broker *b, Kosmos__V1__StatusReply *r)
{
    uint64_t now = kb_now(b);
    r->workers = calloc(b->n_workers ? b->n_workers : 1, sizeof *r->workers);
    if (!r->workers)
        return;
    for (size_t i = 0; i < b->n_workers; i++) {
        kb_worker *w = b->workers[i];
        Kosmos__V1__WorkerInfo *wi = calloc(1, sizeof *wi);
        Kosmos__V1__DeviceInfo *d = calloc(1, sizeof *d);
        if (!wi || !d) {
            free(wi);
            free(d);
            break;
        }
        kosmos__v1__worker_info__init(wi);
        kosmos__v1__device_info__init(d);
        d->name = w->device_name;
        d->vendor = w->device_vendor;
        d->has_memory_bytes = true;
        d->memory_bytes = w->memory;
        wi->worker_name = w->name;
        wi->model_id = w->model_id;
        wi->model_hash = w->model_hash;
        wi->device = d;
        wi->has_batch_capacity = wi->has_credit = wi->has_running = true;
        wi->batch_capacity = w->capacity;
        wi->credit = w->credit;
        wi->running = (uint32_t)w->n_leases;
        wi->has_connected_unix_ms = wi->has_last_heartbeat_ms_ago = wi->has_jobs_done = true;
        wi->connected_unix_ms = w->connected;
        wi->last_heartbeat_ms_ago = (uint32_t)(now - w->last_seen);
        wi->jobs_done = w->jobs_done;
        r->workers[r->n_workers++] = wi;
    }
}
