/* kb_clients: the client endpoint (docs/protocol.md §4, §5, §7). One batch of requests per poll
 * cycle runs in one transaction (group commit); replies wait in the outbox for the commit. */
#include "kb_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kb_job.h"
#include "ks_hash.h"

#define KB_VIOLATION_LOGS_PER_SECOND 10

static uint64_t kb_violation_second, kb_violation_logged;

static void kb_violation(kb_broker *b, const char *endpoint, const void *rid, size_t rid_len,
                         const char *identity, const char *what)
{
    uint64_t sec = kb_now(b) / 1000;
    b->stats.violations++;
    if (sec != kb_violation_second) {
        kb_violation_second = sec;
        kb_violation_logged = 0;
    }
    if (kb_violation_logged++ >= KB_VIOLATION_LOGS_PER_SECOND)
        return; /* rate-limited; counted in stats either way */
    char hex[2 * 16 + 1] = "", esc[300], id[300];
    for (size_t i = 0; i < rid_len && i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", ((const unsigned char *)rid)[i]);
    kb_logf(b, KS_LOG_WARN, "protocol_violation",
            "\"endpoint\":\"%s\",\"peer\":\"%s\",\"identity\":%s,"
            "\"what\":%s",
            endpoint, hex, ks_log_str(id, sizeof id, identity), ks_log_str(esc, sizeof esc, what));
}

static void kb_reply_init(kb_broker *b, Kosmos__V1__ClientReply *r, uint64_t request_id)
{
    kosmos__v1__client_reply__init(r);
    r->has_request_id = true;
    r->request_id = request_id;
    r->has_broker_instance = true;
    r->broker_instance = b->instance;
}

/* Sends a reply without a database change of its own behind it (still after the disk has
 * every earlier commit: kb_send_client). */
static void kb_reply_now(kb_broker *b, const void *rid, size_t rid_len, Kosmos__V1__ClientReply *r)
{
    kb_send_client(b, rid, rid_len, &r->base, r->request_id, false);
}

/* Queues a reply behind the current transaction. */
static ks_status kb_reply_later(kb_broker *b, const void *rid, size_t rid_len,
                                Kosmos__V1__ClientReply *r, bool is_submit)
{
    kb_out *o = kb_out_push(b, false, rid, rid_len, &r->base);
    if (!o)
        return ks_fail(KS_ERR_NOMEM, "out of memory queuing a reply");
    o->request_id = r->request_id ? r->request_id : 1;
    o->is_submit = is_submit;
    return KS_OK;
}

static void kb_error_now(kb_broker *b, const void *rid, size_t rid_len, uint64_t request_id,
                         int code, const char *message)
{
    Kosmos__V1__ClientReply r;
    Kosmos__V1__ErrorReply e = KOSMOS__V1__ERROR_REPLY__INIT;
    kb_reply_init(b, &r, request_id);
    e.has_code = true;
    e.code = code;
    e.message = (char *)message;
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR;
    r.error = &e;
    kb_reply_now(b, rid, rid_len, &r);
}

/* ---- fetch ------------------------------------------------------------------------------ */

/* Fills a FetchReply for `job`; *result (caller frees with __free_unpacked) when stored. */
static ks_status kb_fill_fetch(kb_broker *b, const kb_job *job, Kosmos__V1__FetchReply *f,
                               Kosmos__V1__Result **result)
{
    ks_status st = KS_OK;
    *result = NULL;
    kosmos__v1__fetch_reply__init(f);
    f->job_id = (char *)job->id;
    f->has_state = true;
    f->state = job->state;
    f->has_attempt = true;
    f->attempt = job->attempt;
    f->has_submitted_unix_ms = true;
    f->submitted_unix_ms = job->submitted;
    if (job->state == KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED) {
        uint64_t pos = 0;
        if ((st = kb_store_queue_position(b->store, job, &pos)) != KS_OK)
            return st;
        f->has_queue_position = true;
        f->queue_position = pos;
    }
    if (job->state == KOSMOS__V1__JOB_STATE__JOB_STATE_RETRY_WAIT) {
        f->has_next_attempt_unix_ms = true;
        f->next_attempt_unix_ms = job->retry_after;
    }
    if (kb_state_terminal(job->state) && job->state != KOSMOS__V1__JOB_STATE__JOB_STATE_ACKED) {
        void *blob = NULL;
        size_t len = 0;
        if ((st = kb_store_load_result(b->store, job->id, &blob, &len)) != KS_OK)
            return st;
        if (blob) {
            *result = kosmos__v1__result__unpack(NULL, len, blob);
            f->result = *result;
        }
        free(blob);
    }
    return KS_OK;
}

ks_status kb_fetch_reply(kb_broker *b, const char *job_id, const char *client, uint64_t request_id,
                         const void *rid, size_t rid_len, bool *sent)
{
    kb_job job;
    bool found = false;
    Kosmos__V1__Result *res = NULL;
    ks_status st = kb_store_get(b->store, job_id, &found, &job);
    *sent = false;
    if (st != KS_OK)
        return st;
    if (!found || strcmp(job.client, client) != 0) {
        kb_error_now(b, rid, rid_len, request_id, KOSMOS__V1__ERROR_CODE__ERROR_CODE_NOT_FOUND,
                     "no such job");
        *sent = true;
        goto cleanup;
    }
    Kosmos__V1__ClientReply r;
    Kosmos__V1__FetchReply f;
    if ((st = kb_fill_fetch(b, &job, &f, &res)) != KS_OK)
        goto cleanup;
    kb_reply_init(b, &r, request_id);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH;
    r.fetch = &f;
    kb_reply_now(b, rid, rid_len, &r);
    *sent = true;
cleanup:
    if (res)
        kosmos__v1__result__free_unpacked(res, NULL);
    if (found)
        kb_job_fini(&job);
    return st;
}

void kb_waiters_run(kb_broker *b)
{
    uint64_t now = kb_now(b);
    size_t answered = 0; /* at most a batch a cycle: docs/broker.md "Memory bound" */
    for (size_t i = 0; i < b->n_waiters && answered < b->p.batch_max;) {
        kb_waiter *w = &b->waiters[i];
        if (!w->wake && w->until > now) {
            i++;
            continue;
        }
        answered++;
        bool sent = false;
        if (kb_fetch_reply(b, w->job_id, w->client, w->request_id, w->rid, w->rid_len, &sent) !=
                KS_OK &&
            !sent) {
            kb_store_fatal(b);
            kb_error_now(b, w->rid, w->rid_len, w->request_id,
                         KOSMOS__V1__ERROR_CODE__ERROR_CODE_INTERNAL, "database read failed");
        }
        b->waiters[i] = b->waiters[--b->n_waiters];
    }
}

/* ---- Requests ------------------------------------------------------------------------- */

/* The job a fetch, ack or cancel names, if it is this client's. Otherwise answers the request
 * (INVALID_ARGUMENT without a job id, NOT_FOUND for none or another client's job: the two are
 * indistinguishable, §4) and leaves *found false; the caller then has nothing more to do. */
static ks_status kb_request_job(kb_broker *b, const void *rid, size_t rid_len, uint64_t request_id,
                                const char *client, const char *job_id, const char *verb,
                                bool *found, kb_job *job)
{
    *found = false;
    if (!job_id) {
        char message[64];
        snprintf(message, sizeof message, "%s needs job_id", verb);
        kb_error_now(b, rid, rid_len, request_id,
                     KOSMOS__V1__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT, message);
        return KS_OK;
    }
    ks_status st = kb_store_get(b->store, job_id, found, job);
    if (st == KS_OK && *found && strcmp(job->client, client) != 0) {
        kb_job_fini(job);
        *found = false;
    }
    if (st == KS_OK && !*found)
        kb_error_now(b, rid, rid_len, request_id, KOSMOS__V1__ERROR_CODE__ERROR_CODE_NOT_FOUND,
                     "no such job");
    return st;
}

/* ---- Admission (kb_internal.h: the counts, and why they may only overstate) ---------------- */

static void kb_admit_clear(kb_broker *b)
{
    for (size_t i = 0; b->admit && i < KB_ADMIT_SLOTS; i++) {
        free(b->admit[i].client);
        b->admit[i].client = NULL;
    }
    b->admit_used = 0;
}

void kb_admit_free(kb_broker *b)
{
    kb_admit_clear(b);
    free(b->admit);
    b->admit = NULL;
}

/* The slot holding `client`, or the free one it would take; NULL when out of memory. */
static kb_admit_slot *kb_admit_slot_for(kb_broker *b, const char *client)
{
    if (!b->admit && !(b->admit = calloc(KB_ADMIT_SLOTS, sizeof *b->admit)))
        return NULL;
    if (b->admit_used >= KB_ADMIT_SLOTS / 2)
        kb_admit_clear(b); /* many clients: start again; each recounts once */
    size_t i = (size_t)ks_fnv1a(KS_FNV1A_BASIS, client, strlen(client)) & (KB_ADMIT_SLOTS - 1);
    while (b->admit[i].client && strcmp(b->admit[i].client, client) != 0)
        i = (i + 1) & (KB_ADMIT_SLOTS - 1);
    return &b->admit[i];
}

/* Whether one more job of `client` fits --max-queued and --max-client-jobs. *depth: the queue
 * depth for a busy reply; *slot: what kb_admitted counts the job in. */
static ks_status kb_admit(kb_broker *b, const char *client, bool *fits, uint64_t *depth,
                          kb_admit_slot **slot)
{
    ks_status st;
    *fits = false;
    if (!b->admit_total_known ||
        (b->admit_total >= b->p.max_queued && b->admit_total_counted_in != b->batch_number)) {
        if ((st = kb_store_active(b->store, &b->admit_total)) != KS_OK)
            return st;
        b->admit_total_known = true;
        b->admit_total_counted_in = b->batch_number;
    }
    *depth = b->admit_total;
    if (b->admit_total >= b->p.max_queued)
        return KS_OK;
    kb_admit_slot *s = kb_admit_slot_for(b, client);
    if (!s)
        return ks_fail(KS_ERR_NOMEM, "out of memory counting a client's jobs");
    if (!s->client || (s->active >= b->p.max_client_jobs && s->counted_in != b->batch_number)) {
        uint64_t n;
        if ((st = kb_store_client_active(b->store, client, &n)) != KS_OK)
            return st;
        if (!s->client) {
            if (!(s->client = strdup(client)))
                return ks_fail(KS_ERR_NOMEM, "out of memory counting a client's jobs");
            b->admit_used++;
        }
        s->active = n;
        s->counted_in = b->batch_number;
    }
    *slot = s;
    *fits = s->active < b->p.max_client_jobs;
    return KS_OK;
}

static void kb_admitted(kb_broker *b, kb_admit_slot *slot)
{
    b->admit_total++;
    slot->active++;
}

static ks_status kb_submit(kb_broker *b, const kp_inbound *in, const char *client,
                           const Kosmos__V1__ClientRequest *req)
{
    ks_status st = KS_OK;
    size_t rid_len, image_len = 0;
    const void *rid = kp_inbound_routing_id(in, &rid_len);
    const void *image = kp_inbound_image(in, &image_len);
    const Kosmos__V1__Job *job = req->submit ? req->submit->job : NULL;
    Kosmos__V1__ClientReply r;
    Kosmos__V1__SubmitReply sr = KOSMOS__V1__SUBMIT_REPLY__INIT;
    Kosmos__V1__SubmitReply__Accepted acc = KOSMOS__V1__SUBMIT_REPLY__ACCEPTED__INIT;
    Kosmos__V1__SubmitReply__Busy busy = KOSMOS__V1__SUBMIT_REPLY__BUSY__INIT;
    Kosmos__V1__SubmitReply__Conflict conf = KOSMOS__V1__SUBMIT_REPLY__CONFLICT__INIT;
    Kosmos__V1__SubmitReply__Rejected rej = KOSMOS__V1__SUBMIT_REPLY__REJECTED__INIT;
    kb_job row, old;
    bool have_old = false;
    void *blob = NULL;
    size_t blob_len = 0;
    char reason[200] = "";
    char job_id[27];
    memset(&row, 0, sizeof row);
    kb_reply_init(b, &r, req->request_id);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT;
    r.submit = &sr;

    kb_job_limits lim = {b->p.max_image_bytes, 64, 4096};
    int code = kb_job_validate(job, &lim, kb_now(b), reason, sizeof reason);
    if (!code && job->requirements &&
        (job->requirements->model_id || job->requirements->model_hash) &&
        !kb_model_known(b, job->requirements->model_id, job->requirements->model_hash)) {
        code = KOSMOS__V1__REJECT_CODE__REJECT_CODE_NO_SUCH_MODEL;
        snprintf(reason, sizeof reason,
                 "no worker has offered this model since the broker started");
    }
    if (!code && job->image_case == KOSMOS__V1__JOB__IMAGE_IMAGE_URI &&
        !kb_job_uri_allowed(job->image_uri, b->p.image_roots, b->p.n_image_roots)) {
        code = KOSMOS__V1__REJECT_CODE__REJECT_CODE_IMAGE_URI_NOT_ALLOWED;
        snprintf(reason, sizeof reason, "image_uri is outside the allowed roots (--image-root)");
    }
    if (code) {
        rej.has_code = true;
        rej.code = code;
        rej.reason = reason;
        sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_REJECTED;
        sr.rejected = &rej;
        goto reply;
    }
    kb_job_fingerprint(job, image, image_len, row.fingerprint);
    if (job->idempotency_key) {
        if ((st = kb_store_find_key(b->store, client, job->idempotency_key, &have_old, &old)) !=
            KS_OK)
            goto cleanup;
        if (have_old) {
            if (memcmp(old.fingerprint, row.fingerprint, 32) == 0) {
                acc.job_id = old.id;
                acc.has_duplicate = true;
                acc.duplicate = true;
                sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED;
                sr.accepted = &acc;
            } else {
                conf.job_id = old.id;
                sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_CONFLICT;
                sr.conflict = &conf;
            }
            goto reply;
        }
    }
    bool fits;
    uint64_t depth;
    kb_admit_slot *slot = NULL;
    if ((st = kb_admit(b, client, &fits, &depth, &slot)) != KS_OK)
        goto cleanup;
    if (!fits) {
        busy.has_retry_after_ms = true;
        busy.retry_after_ms = 1000;
        busy.has_queue_depth = true;
        busy.queue_depth = depth;
        sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_BUSY;
        sr.busy = &busy;
        goto reply;
    }
    kb_new_job_id(b, job_id);
    snprintf(row.id, sizeof row.id, "%s", job_id);
    row.client = (char *)client;
    row.idem_key = job->idempotency_key;
    row.priority = job->has_priority ? job->priority : 0;
    row.deadline = job->has_deadline_unix_ms ? job->deadline_unix_ms : 0;
    if (job->requirements) {
        row.model_id = job->requirements->model_id;
        row.model_hash = job->requirements->model_hash;
        row.min_mem = job->requirements->has_min_device_memory_bytes
                          ? job->requirements->min_device_memory_bytes
                          : 0;
    }
    row.submitted = kb_now(b);
    row.n_prompts = (uint32_t)job->n_prompts;
    row.label = job->label;
    if ((st = kb_job_pack_stored(job, &blob, &blob_len)) != KS_OK)
        goto cleanup;
    const void *img = image;
    size_t img_len = image_len;
    if (job->image_case == KOSMOS__V1__JOB__IMAGE_IMAGE_DATA) {
        img = job->image_data.data;
        img_len = job->image_data.len;
    }
    if ((st = kb_store_insert(b->store, &row, blob, blob_len, img, img_len)) != KS_OK)
        goto cleanup;
    kb_admitted(b, slot);
    acc.job_id = row.id;
    acc.has_duplicate = true;
    acc.duplicate = false;
    sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED;
    sr.accepted = &acc;
reply:
    st = kb_reply_later(b, rid, rid_len, &r, true);
cleanup:
    if (have_old)
        kb_job_fini(&old);
    free(blob);
    return st;
}

static ks_status kb_fetch(kb_broker *b, const kp_inbound *in, const char *client,
                          const Kosmos__V1__ClientRequest *req)
{
    size_t rid_len;
    const void *rid = kp_inbound_routing_id(in, &rid_len);
    const Kosmos__V1__FetchRequest *fq = req->fetch;
    kb_job job;
    bool found = false;
    Kosmos__V1__Result *res = NULL;
    Kosmos__V1__ClientReply r;
    Kosmos__V1__FetchReply f;
    ks_status st = KS_OK;
    if ((st = kb_request_job(b, rid, rid_len, req->request_id, client, fq ? fq->job_id : NULL,
                             "fetch", &found, &job)) != KS_OK ||
        !found)
        return st;
    if (!kb_state_terminal(job.state) && fq->has_wait_ms && fq->wait_ms > 0 &&
        b->n_waiters < b->p.max_waiters) {
        kb_out *o = kb_out_push(b, false, rid, rid_len, NULL);
        if (!o) {
            st = ks_fail(KS_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        o->request_id = req->request_id;
        o->post = KB_POST_WAIT;
        memcpy(o->waiter.rid, rid, rid_len);
        o->waiter.rid_len = rid_len;
        o->waiter.request_id = req->request_id;
        snprintf(o->waiter.job_id, sizeof o->waiter.job_id, "%s", job.id);
        snprintf(o->waiter.client, sizeof o->waiter.client, "%s", client);
        uint32_t wait = fq->wait_ms < b->p.fetch_wait_cap_ms ? fq->wait_ms : b->p.fetch_wait_cap_ms;
        o->waiter.until = kb_now(b) + wait;
        goto cleanup;
    }
    if ((st = kb_fill_fetch(b, &job, &f, &res)) != KS_OK)
        goto cleanup;
    kb_reply_init(b, &r, req->request_id);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH;
    r.fetch = &f;
    st = kb_reply_later(b, rid, rid_len, &r, false);
cleanup:
    if (res)
        kosmos__v1__result__free_unpacked(res, NULL);
    kb_job_fini(&job);
    return st;
}

static ks_status kb_ack(kb_broker *b, const kp_inbound *in, const char *client,
                        const Kosmos__V1__ClientRequest *req)
{
    size_t rid_len;
    const void *rid = kp_inbound_routing_id(in, &rid_len);
    kb_job job;
    bool found = false;
    ks_status st;
    const char *id = req->ack ? req->ack->job_id : NULL;
    if ((st = kb_request_job(b, rid, rid_len, req->request_id, client, id, "ack", &found, &job)) !=
            KS_OK ||
        !found)
        return st;
    if (!kb_state_terminal(job.state)) {
        kb_error_now(b, rid, rid_len, req->request_id,
                     KOSMOS__V1__ERROR_CODE__ERROR_CODE_INVALID_STATE, "job is not terminal");
        goto cleanup;
    }
    if (job.state != KOSMOS__V1__JOB_STATE__JOB_STATE_ACKED &&
        (st = kb_store_ack(b->store, job.id)) != KS_OK)
        goto cleanup;
    Kosmos__V1__ClientReply r;
    Kosmos__V1__AckReply a = KOSMOS__V1__ACK_REPLY__INIT;
    kb_reply_init(b, &r, req->request_id);
    a.job_id = job.id;
    a.has_state = true;
    a.state = KOSMOS__V1__JOB_STATE__JOB_STATE_ACKED;
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_ACK;
    r.ack = &a;
    st = kb_reply_later(b, rid, rid_len, &r, false);
cleanup:
    kb_job_fini(&job);
    return st;
}

static ks_status kb_cancel(kb_broker *b, const kp_inbound *in, const char *client,
                           const Kosmos__V1__ClientRequest *req)
{
    size_t rid_len;
    const void *rid = kp_inbound_routing_id(in, &rid_len);
    kb_job job;
    bool found = false;
    ks_status st;
    void *blob = NULL;
    size_t len = 0;
    const char *id = req->cancel ? req->cancel->job_id : NULL;
    if ((st = kb_request_job(b, rid, rid_len, req->request_id, client, id, "cancel", &found,
                             &job)) != KS_OK ||
        !found)
        return st;
    Kosmos__V1__ClientReply r;
    Kosmos__V1__CancelReply c = KOSMOS__V1__CANCEL_REPLY__INIT;
    kb_reply_init(b, &r, req->request_id);
    c.job_id = job.id;
    c.has_cancelled = true;
    c.has_state = true;
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_CANCEL;
    r.cancel = &c;
    if (kb_state_terminal(job.state)) {
        c.cancelled = false;
        c.state = job.state;
        st = kb_reply_later(b, rid, rid_len, &r, false);
        goto cleanup;
    }
    if ((st = kb_make_result(&job, KOSMOS__V1__STATUS__STATUS_CANCELLED, "cancelled by the client",
                             &blob, &len)) != KS_OK ||
        (st = kb_store_finish(b->store, job.id, KOSMOS__V1__JOB_STATE__JOB_STATE_CANCELLED, blob,
                              len, job.attempt, kb_now(b))) != KS_OK)
        goto cleanup;
    kb_note_terminal(b, job.id);
    if (job.state == KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING && job.worker) {
        kb_worker *w = kb_worker_by_name(b, job.worker);
        Kosmos__V1__Cancel cm = KOSMOS__V1__CANCEL__INIT;
        Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
        cm.job_id = job.id;
        cm.has_attempt = true;
        cm.attempt = job.attempt;
        cm.has_reason = true;
        cm.reason = KOSMOS__V1__CANCEL__REASON__REASON_CLIENT;
        env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_CANCEL;
        env.cancel = &cm;
        kb_out *o = w ? kb_out_push(b, true, w->rid, w->rid_len, &env.base) : NULL;
        if (o) {
            o->post = KB_POST_DROP_LEASE;
            snprintf(o->lease.job_id, sizeof o->lease.job_id, "%s", job.id);
            o->lease.attempt = job.attempt;
        }
    }
    c.cancelled = true;
    c.state = KOSMOS__V1__JOB_STATE__JOB_STATE_CANCELLED;
    st = kb_reply_later(b, rid, rid_len, &r, false);
cleanup:
    free(blob);
    kb_job_fini(&job);
    return st;
}

static ks_status kb_status(kb_broker *b, const kp_inbound *in, const Kosmos__V1__ClientRequest *req)
{
    size_t rid_len;
    const void *rid = kp_inbound_routing_id(in, &rid_len);
    uint64_t counts[10], totals[6];
    ks_status st;
    Kosmos__V1__ClientReply r;
    Kosmos__V1__StatusReply s = KOSMOS__V1__STATUS_REPLY__INIT;
    Kosmos__V1__StateCount sc[10], *scp[10];
    if ((st = kb_store_counts(b->store, counts)) != KS_OK ||
        (st = kb_store_totals(b->store, totals)) != KS_OK)
        return st;
    s.broker_version = "kosmos-broker 0.1.0";
    s.has_broker_instance = true;
    s.broker_instance = b->instance;
    s.has_uptime_ms = true;
    s.uptime_ms = kb_now(b) - b->started;
    for (int i = 1; i < 10; i++) {
        if (!counts[i])
            continue;
        kosmos__v1__state_count__init(&sc[s.n_queue]);
        sc[s.n_queue].has_state = true;
        sc[s.n_queue].state = i;
        sc[s.n_queue].has_count = true;
        sc[s.n_queue].count = counts[i];
        scp[s.n_queue] = &sc[s.n_queue];
        s.n_queue++;
    }
    s.queue = scp;
    uint64_t *tot[6] = {&s.total_submitted, &s.total_done,    &s.total_failed,
                        &s.total_dead,      &s.total_expired, &s.total_cancelled};
    protobuf_c_boolean *has[6] = {&s.has_total_submitted, &s.has_total_done,
                                  &s.has_total_failed,    &s.has_total_dead,
                                  &s.has_total_expired,   &s.has_total_cancelled};
    for (int i = 0; i < 6; i++) {
        *tot[i] = totals[i];
        *has[i] = true;
    }
    uint64_t now_s = kb_now(b) / 1000, jobs = 0, tokens = 0;
    for (int i = 0; i < 60; i++)
        if (b->tput[i].second + 60 > now_s && b->tput[i].second <= now_s) {
            jobs += b->tput[i].jobs;
            tokens += b->tput[i].tokens;
        }
    s.has_jobs_per_second = s.has_tokens_per_second = true;
    s.jobs_per_second = (double)jobs / 60.0;
    s.tokens_per_second = (double)tokens / 60.0;
    kb_mem_recount(b);
    s.has_memory_bytes = s.has_memory_bound_bytes = true;
    s.memory_bytes = b->stats.memory_bytes;
    s.memory_bound_bytes = b->stats.memory_bound;
    bool workers = !(req->status && req->status->has_include_workers &&
                     !req->status->include_workers);
    if (workers)
        kb_status_fill_workers(b, &s);
    kb_reply_init(b, &r, req->request_id);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS;
    r.status = &s;
    st = kb_reply_later(b, rid, rid_len, &r, false);
    if (workers) {
        for (size_t i = 0; i < s.n_workers; i++) {
            free(s.workers[i]->device);
            free(s.workers[i]);
        }
        free(s.workers);
    }
    return st;
}

/* Handles one received message. Returns non-OK only for store failures (the batch rolls back). */
static ks_status kb_client_handle(kb_broker *b, kp_inbound *in)
{
    size_t rid_len;
    const void *rid = kp_inbound_routing_id(in, &rid_len);
    const Kosmos__V1__ClientRequest *req =
        (const Kosmos__V1__ClientRequest *)kp_inbound_envelope(in);
    uint64_t rq = kp_inbound_request_id(in);
    char client[KB_IDENTITY_MAX + 1];
    kp_verdict v = kp_inbound_verdict(in);
    char msg[256];
    switch (v) {
    case KP_VALID: break;
    case KP_NOT_OURS:
        kb_violation(b, "client", rid, rid_len, NULL, kp_inbound_reason(in));
        return KS_OK;
    case KP_BAD_VERSION:
        kb_violation(b, "client", rid, rid_len, NULL, kp_inbound_reason(in));
        snprintf(msg, sizeof msg, "broker %s", kp_inbound_reason(in));
        kb_error_now(b, rid, rid_len, 0, KOSMOS__V1__ERROR_CODE__ERROR_CODE_PROTOCOL_VERSION, msg);
        return KS_OK;
    case KP_TOO_LARGE:
        kb_violation(b, "client", rid, rid_len, NULL, kp_inbound_reason(in));
        kb_error_now(b, rid, rid_len, rq, KOSMOS__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE,
                     kp_inbound_reason(in));
        return KS_OK;
    case KP_MALFORMED:
        kb_violation(b, "client", rid, rid_len, NULL, kp_inbound_reason(in));
        kb_error_now(b, rid, rid_len, rq, KOSMOS__V1__ERROR_CODE__ERROR_CODE_MALFORMED,
                     kp_inbound_reason(in));
        return KS_OK;
    case KP_BAD_STRING:
        if (req && req->request_case == KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT) {
            Kosmos__V1__ClientReply r;
            Kosmos__V1__SubmitReply sr = KOSMOS__V1__SUBMIT_REPLY__INIT;
            Kosmos__V1__SubmitReply__Rejected rej = KOSMOS__V1__SUBMIT_REPLY__REJECTED__INIT;
            kb_reply_init(b, &r, rq);
            rej.has_code = true;
            rej.code = KOSMOS__V1__REJECT_CODE__REJECT_CODE_INVALID;
            rej.reason = (char *)kp_inbound_reason(in);
            sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_REJECTED;
            sr.rejected = &rej;
            r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT;
            r.submit = &sr;
            kb_reply_now(b, rid, rid_len, &r);
        } else {
            kb_error_now(b, rid, rid_len, rq, KOSMOS__V1__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT,
                         kp_inbound_reason(in));
        }
        return KS_OK;
    default: return KS_OK;
    }
    if (b->curve_state) {
        const char *uid = kp_inbound_user_id(in);
        if (!uid || !uid[0]) {
            kb_error_now(b, rid, rid_len, rq, KOSMOS__V1__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT,
                         "no CURVE identity");
            return KS_OK;
        }
        snprintf(client, sizeof client, "%s", uid);
    } else if (req->client_id && req->client_id[0]) {
        if (strlen(req->client_id) > KB_CLIENT_MAX) {
            kb_error_now(b, rid, rid_len, rq, KOSMOS__V1__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT,
                         "client_id over 128 bytes");
            return KS_OK;
        }
        snprintf(client, sizeof client, "%s", req->client_id);
    } else {
        snprintf(client, sizeof client, "anonymous");
    }
    if (rq == 0) {
        kb_error_now(b, rid, rid_len, 0, KOSMOS__V1__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT,
                     "request_id must be non-zero");
        return KS_OK;
    }
    switch (req->request_case) {
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT: return kb_submit(b, in, client, req);
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH: return kb_fetch(b, in, client, req);
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_ACK: return kb_ack(b, in, client, req);
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_CANCEL: return kb_cancel(b, in, client, req);
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS: return kb_status(b, in, req);
    default:
        kb_error_now(b, rid, rid_len, rq, KOSMOS__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_REQUEST,
                     "no request this broker knows");
        return KS_OK;
    }
}

void kb_clients_batch(kb_broker *b)
{
    kp_inbound **batch = b->batch;
    size_t n = kb_batch_read(b, b->client_sock, KP_CLIENT_REQUEST), done = 0;
    ks_status st = KS_OK;
    if (n == 0)
        return;
    b->batch_number++;
    size_t failed = n; /* first request the transaction did not answer */
    if (!kb_txn_need(b)) {
        failed = 0;
    } else {
        for (done = 0; done < n; done++) {
            if ((st = kb_client_handle(b, batch[done])) != KS_OK) {
                failed = done;
                break;
            }
        }
        if (st != KS_OK)
            kb_txn_end(b, st); /* answers what the outbox held */
    }
    /* Requests the failed transaction never reached get an error (busy for submits). */
    bool full = kb_store_fault(b->store) == KB_FAULT_FULL;
    for (size_t i = failed; i < n; i++) {
        size_t rl;
        const void *rid = kp_inbound_routing_id(batch[i], &rl);
        const Kosmos__V1__ClientRequest *req =
            (const Kosmos__V1__ClientRequest *)kp_inbound_envelope(batch[i]);
        if (kp_inbound_verdict(batch[i]) != KP_VALID || !req)
            continue;
        kb_send_client_error(b, rid, rl, req->request_id,
                             KOSMOS__V1__ERROR_CODE__ERROR_CODE_INTERNAL,
                             "database write failed; retry later",
                             full &&
                                 req->request_case == KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT);
    }
    kb_batch_release(b, n);
}
