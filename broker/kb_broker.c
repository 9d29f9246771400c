/* kb_broker: see kb_broker.h. This file holds the life cycle, the poll cycle (kb_broker_step:
 * which phase runs when, in one transaction), memory accounting and the shared job transitions.
 * The phases live elsewhere: kb_clients.c and kb_workers.c handle the two endpoints,
 * kb_dispatch.c the timers and dispatch, kb_outbox.c the transaction and the outbox that holds
 * every message back until the change behind it committed. */
#include "kb_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kb_auth.h"
#include "kb_metrics.h"

void kb_params_init(kb_params *p)
{
    memset(p, 0, sizeof *p);
    p->client_endpoint = "tcp://*:5555";
    p->worker_endpoint = "tcp://*:5556";
    p->db_path = "kosmos-broker.db";
    p->max_message_bytes = KP_DEFAULT_MAX_MESSAGE_BYTES;
    p->max_image_bytes = KP_DEFAULT_MAX_IMAGE_BYTES;
    p->max_queued = 100000;
    p->max_client_jobs = 10000;
    p->heartbeat_ms = 1000;
    p->heartbeat_liveness = 3;
    p->max_job_ms = 600000;
    p->max_crashes = 3;
    p->max_attempts = 5;
    p->backoff_base_ms = 1000;
    p->backoff_cap_ms = 60000;
    p->backoff_jitter_ms = 1000;
    p->retention_ms = 7ull * 24 * 3600 * 1000;
    p->fetch_wait_cap_ms = 30000;
    p->max_waiters = 10000;
    p->batch_max = 256;
    p->batch_max_bytes = (size_t)256 << 20;
    p->max_workers = 1024;
    p->max_inflight_bytes = (size_t)1 << 30;
    p->default_max_new_tokens = 128;
    p->log_level = KS_LOG_INFO;
}

/* ---- Time, randomness, logs ----------------------------------------------------------------- */

uint64_t kb_now(kb_broker *b)
{
    if (b->p.clock)
        return b->p.clock(b->p.clock_ctx);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t kb_random(kb_broker *b)
{
    if (b->p.rand)
        return b->p.rand(b->p.rand_ctx);
    /* xorshift64*: jitter and ids need spread, not secrecy. */
    b->rng ^= b->rng >> 12;
    b->rng ^= b->rng << 25;
    b->rng ^= b->rng >> 27;
    return b->rng * 2685821657736338717ull;
}

void kb_logf(kb_broker *b, ks_log_level level, const char *event, const char *fields, ...)
{
    if (level < b->p.log_level)
        return;
    va_list ap;
    va_start(ap, fields);
    ks_logv(b->p.log, level, kb_now(b), event, fields, ap);
    va_end(ap);
}

/* Crockford base32 ULID: 48 bits of milliseconds, 80 random bits; 26 characters. */
void kb_new_job_id(kb_broker *b, char out[27])
{
    static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    uint64_t t = kb_now(b), r1 = kb_random(b), r2 = kb_random(b);
    for (int i = 9; i >= 0; i--, t >>= 5)
        out[i] = alphabet[t & 31];
    for (int i = 10; i < 26; i++) {
        uint64_t *r = i < 18 ? &r1 : &r2;
        out[i] = alphabet[*r & 31];
        *r >>= 5;
    }
    out[26] = '\0';
}

/* ---- Memory accounting ---------------------------------------------------------------------- */

void kb_mem_recount(kb_broker *b)
{
    size_t m = sizeof *b;
    m += b->cap_workers * sizeof *b->workers;
    /* Summed again only when a worker came, went or grew its lease array: this runs three
     * times a cycle, and with 1,000 workers the walk was 8% of the broker's time. */
    if (b->mem_workers_stale) {
        b->mem_workers = 0;
        for (size_t i = 0; i < b->n_workers; i++) {
            const kb_worker *w = b->workers[i];
            b->mem_workers += sizeof *w + w->cap_leases * sizeof *w->leases +
                              4 * (KB_CLIENT_MAX + 1) + 128;
        }
        b->mem_workers_stale = false;
    }
    m += b->mem_workers;
    m += b->cap_waiters * sizeof *b->waiters;
    m += b->cap_out * sizeof *b->out;
    for (size_t i = 0; i < b->n_out; i++)
        m += b->out[i].bytes;
    m += (b->cap_held - b->n_held) * sizeof *b->held + b->held_bytes;
    m += b->cap_woken * sizeof *b->woken;
    m += b->n_orphans * sizeof *b->orphans;
    m += b->n_models * (sizeof *b->models + 2 * (KB_CLIENT_MAX + 1));
    if (b->admit)
        m += KB_ADMIT_SLOTS * sizeof *b->admit + b->admit_used * (KB_IDENTITY_MAX + 1);
    b->mem_fixed = m;
    size_t total = m + b->mem_batch + atomic_load(&b->mem_zmq);
    b->stats.memory_bytes = total;
    if (total > b->stats.memory_peak)
        b->stats.memory_peak = total;
}

size_t kb_batch_read(kb_broker *b, void *sock, kp_kind kind)
{
    size_t n = 0;
    b->mem_batch = 0;
    while (n < b->p.batch_max && b->mem_batch < b->p.batch_max_bytes) {
        kp_inbound *in = NULL;
        if (kp_recv(sock, true, kind, &b->limits, ZMQ_DONTWAIT, &in) != KS_OK || !in)
            break;
        b->mem_batch += kp_inbound_bytes(in);
        b->batch[n++] = in;
    }
    kb_mem_recount(b);
    return n;
}

void kb_batch_release(kb_broker *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kp_inbound_destroy(&b->batch[i]);
    b->mem_batch = 0;
}

/* One cycle's outbox: a reply per request and a dispatch per message slot, each at most one
 * protobuf frame. A cycle's client replies (its requests', and at most batch_max waiters')
 * fit it too. */
static size_t kb_outbox_bound(const kb_params *p)
{
    return (size_t)p->batch_max * 2 * (p->max_message_bytes + sizeof(kb_out));
}

/* The bound docs/broker.md derives: one cycle's received messages (the byte cap is checked
 * before each read, so one message may overshoot it), one cycle's outbox, the client replies
 * held for the disk (a cycle reads only while they are under one outbox, so they stay under
 * two, and their array's spare slots under one more), dispatched images still queued in
 * ZeroMQ (checked before each dispatch, so one image may overshoot), and the tables. */
static size_t kb_mem_bound(const kb_params *p)
{
    size_t per_msg = p->max_message_bytes * 3 + p->max_image_bytes + 4096;
    size_t batch = p->batch_max_bytes + per_msg;
    size_t out = 4 * kb_outbox_bound(p);
    size_t inflight = p->max_inflight_bytes + p->max_image_bytes;
    size_t tables = (size_t)p->max_workers *
                        (sizeof(kb_worker) + KB_MAX_CAPACITY * sizeof(kb_lease) + 1024) +
                    (size_t)p->max_waiters * sizeof(kb_waiter) +
                    (size_t)p->max_workers * 4 * (sizeof(kb_model) + 260) + sizeof(kb_broker) +
                    KB_ADMIT_SLOTS * sizeof(kb_admit_slot) +
                    KB_ADMIT_SLOTS / 2 * (KB_IDENTITY_MAX + 1);
    return batch + out + inflight + tables;
}

/* ---- Disk durations (kb_stats) ------------------------------------------------------------- */

const uint32_t kb_duration_bucket_us[KB_DURATION_BUCKETS - 1] = {250,  500,  1000,  2000,
                                                                 4000, 8000, 16000, 32000};

void kb_durations_add(kb_durations *d, uint64_t us)
{
    size_t k = 0;
    while (k < KB_DURATION_BUCKETS - 1 && us > kb_duration_bucket_us[k])
        k++;
    d->buckets[k]++;
    d->us_total += us;
}

/* ---- Shared job transitions ----------------------------------------------------------------- */

ks_status kb_make_result(const kb_job *job, int status, const char *message, void **blob,
                         size_t *len)
{
    ks_status st = KS_OK;
    Kosmos__V1__Result r = KOSMOS__V1__RESULT__INIT;
    uint32_t n = job->n_prompts;
    Kosmos__V1__PromptResult *prs = calloc(n ? n : 1, sizeof *prs);
    Kosmos__V1__PromptResult **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    *blob = NULL;
    if (!prs || !ptrs) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    for (uint32_t i = 0; i < n; i++) {
        kosmos__v1__prompt_result__init(&prs[i]);
        prs[i].has_prompt_index = true;
        prs[i].prompt_index = i;
        prs[i].has_status = true;
        prs[i].status = status;
        prs[i].message = (char *)message;
        ptrs[i] = &prs[i];
    }
    r.job_id = (char *)job->id;
    r.has_attempt = true;
    r.attempt = job->attempt;
    r.has_status = true;
    r.status = status;
    r.message = (char *)message;
    r.n_prompts = n;
    r.prompts = ptrs;
    r.label = job->label;
    *len = kosmos__v1__result__get_packed_size(&r);
    *blob = malloc(*len ? *len : 1);
    if (!*blob) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    kosmos__v1__result__pack(&r, *blob);
cleanup:
    free(prs);
    free(ptrs);
    return st;
}

uint64_t kb_backoff(kb_broker *b, uint32_t n)
{
    uint64_t d = b->p.backoff_base_ms;
    for (uint32_t i = 1; i < n && d < b->p.backoff_cap_ms; i++)
        d *= 2;
    if (b->p.backoff_jitter_ms)
        d += kb_random(b) % b->p.backoff_jitter_ms;
    return d < b->p.backoff_cap_ms ? d : b->p.backoff_cap_ms;
}

ks_status kb_finish_made(kb_broker *b, const kb_job *job, int state, int status,
                         const char *message)
{
    void *blob = NULL;
    size_t len = 0;
    ks_status st = kb_make_result(job, status, message, &blob, &len);
    if (st == KS_OK)
        st = kb_store_finish(b->store, job->id, state, blob, len, job->attempt, kb_now(b));
    free(blob);
    if (st == KS_ERR_INVALID)
        return KS_OK; /* already terminal: nothing to do */
    if (st == KS_OK)
        kb_note_terminal(b, job->id);
    return st;
}

ks_status kb_lapse(kb_broker *b, const char *job_id, uint32_t attempt, bool crash, const char *why)
{
    kb_job job;
    bool found = false;
    ks_status st = kb_store_get(b->store, job_id, &found, &job);
    if (st != KS_OK || !found)
        return st;
    if (job.state != KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING || job.attempt != attempt)
        goto cleanup;
    if (crash)
        b->stats.lease_lapses++;
    kb_logf(b, KS_LOG_WARN, "lease_lapsed",
            "\"job\":\"%s\",\"attempt\":%u,\"crash\":%s,\"why\":\"%s\"", job_id, attempt,
            crash ? "true" : "false", why);
    if (crash && job.crash_count + 1 >= b->p.max_crashes) {
        char msg[200];
        snprintf(msg, sizeof msg, "dead after %u crashed attempts; last: %s", job.crash_count + 1,
                 why);
        st = kb_finish_made(b, &job, KOSMOS__V1__JOB_STATE__JOB_STATE_DEAD,
                            KOSMOS__V1__STATUS__STATUS_DEAD, msg);
        goto cleanup;
    }
    st = kb_store_requeue(b->store, job_id, crash ? kb_now(b) + kb_backoff(b, job.attempt) : 0,
                          crash, why);
cleanup:
    kb_job_fini(&job);
    return st;
}

ks_status kb_retry_or_fail(kb_broker *b, const kb_job *job, const void *result, size_t len,
                           const char *why)
{
    if (job->attempt >= b->p.max_attempts) {
        ks_status st = kb_store_finish(b->store, job->id, KOSMOS__V1__JOB_STATE__JOB_STATE_FAILED,
                                       result, len, job->attempt, kb_now(b));
        if (st == KS_OK)
            kb_note_terminal(b, job->id);
        return st;
    }
    return kb_store_requeue(b->store, job->id, kb_now(b) + kb_backoff(b, job->attempt), false, why);
}

void kb_throughput_add(kb_broker *b, uint64_t jobs, uint64_t tokens)
{
    uint64_t sec = kb_now(b) / 1000;
    size_t i = (size_t)(sec % 60);
    if (b->tput[i].second != sec) {
        b->tput[i].second = sec;
        b->tput[i].jobs = 0;
        b->tput[i].tokens = 0;
    }
    b->tput[i].jobs += jobs;
    b->tput[i].tokens += tokens;
}

/* ---- Life cycle -------------------------------------------------------------------------- */

/* Binds one endpoint. ZMQ_MAXMSGSIZE is the largest frame that endpoint can legitimately
 * receive (+ 64 KiB, so that a frame just over our limit is answered TOO_LARGE rather than
 * dropped): the larger of the two limits on the client endpoint, the protobuf limit on the
 * worker endpoint (workers never send an image frame). libzmq closes a connection that sends
 * a bigger frame before buffering it; it bounds frames, not messages (docs/broker.md "Memory
 * bound"). */
static ks_status kb_bind(kb_broker *b, void *sock, const char *ep, char *resolved, size_t cap,
                         const char *domain, int is_curve, bool images)
{
    int one = 1, zero = 0;
    size_t frame = images && b->p.max_image_bytes > b->p.max_message_bytes ? b->p.max_image_bytes
                                                                           : b->p.max_message_bytes;
    int64_t maxmsg = (int64_t)frame + 65536;
    if (zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0 ||
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0 ||
        zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero) != 0)
        return ks_fail(KS_ERR_IO, "zmq_setsockopt on %s: %s (%s:%d)", ep, zmq_strerror(errno),
                       __FILE__, __LINE__);
    if (is_curve && kb_auth_server_socket(b->curve_state, sock, domain) != KS_OK)
        return KS_ERR_IO;
    if (zmq_bind(sock, ep) != 0)
        return ks_fail(KS_ERR_IO, "zmq_bind %s: %s (%s:%d)", ep, zmq_strerror(errno), __FILE__,
                       __LINE__);
    size_t len = cap;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, resolved, &len) != 0)
        snprintf(resolved, cap, "%s", ep);
    return KS_OK;
}

/* Whether a resolved endpoint is reachable from this host only: ipc://, inproc://, or TCP on a
 * loopback address. */
static bool kb_endpoint_local(const char *ep)
{
    return strncmp(ep, "ipc://", 6) == 0 || strncmp(ep, "inproc://", 9) == 0 ||
           strncmp(ep, "tcp://127.", 10) == 0 || strncmp(ep, "tcp://[::1]", 11) == 0 ||
           strncmp(ep, "tcp://localhost:", 16) == 0;
}

/* Without CURVE a reachable endpoint serves anyone who reaches it: they can submit, pose as a
 * worker, fill --max-workers, and make libzmq buffer what the broker cannot count. Said once at
 * start, per endpoint, so that no one runs that way without knowing. */
static void kb_warn_open(kb_broker *b, const char *ep)
{
    if (kb_endpoint_local(ep))
        return;
    kb_logf(b, KS_LOG_WARN, "curve_off",
            "\"endpoint\":\"%s\",\"why\":\"CURVE is off on an endpoint other hosts can reach: "
            "anyone there can submit jobs, register as a worker and take --max-workers slots, and "
            "make libzmq buffer incomplete messages without bound (docs/broker.md, Memory bound); "
            "turn CURVE on or firewall the port\"",
            ep);
}

static ks_status kb_recover(kb_broker *b)
{
    kb_job *jobs = NULL;
    size_t n = 0;
    uint64_t counts[10];
    ks_status st = kb_store_running(b->store, &jobs, &n);
    if (st != KS_OK)
        return st;
    if (n) {
        b->orphans = calloc(n, sizeof *b->orphans);
        if (!b->orphans) {
            st = ks_fail(KS_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        for (size_t i = 0; i < n; i++) {
            snprintf(b->orphans[i].job_id, sizeof b->orphans[i].job_id, "%s", jobs[i].id);
            b->orphans[i].attempt = jobs[i].attempt;
        }
        b->n_orphans = n;
    }
    uint32_t grace = b->p.restart_grace_ms ? b->p.restart_grace_ms
                                           : (b->p.heartbeat_liveness + 2) * b->p.heartbeat_ms;
    b->grace_until = kb_now(b) + grace;
    if ((st = kb_store_counts(b->store, counts)) != KS_OK)
        goto cleanup;
    kb_logf(b, KS_LOG_INFO, "recovered",
            "\"queued\":%llu,\"running\":%llu,\"retry_wait\":%llu,\"grace_ms\":%u",
            (unsigned long long)counts[1], (unsigned long long)counts[2],
            (unsigned long long)counts[3], grace);
cleanup:
    for (size_t i = 0; i < n; i++)
        kb_job_fini(&jobs[i]);
    free(jobs);
    return st;
}

ks_status kb_broker_new(const kb_params *p, kb_broker **out)
{
    ks_status st = KS_OK;
    kb_broker *b = calloc(1, sizeof *b);
    *out = NULL;
    if (!b)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    b->p = *p;
    atomic_init(&b->mem_zmq, 0);
    b->limits.max_message_bytes = p->max_message_bytes;
    b->limits.max_image_bytes = p->max_image_bytes;
    b->stats.memory_bound = kb_mem_bound(p);
    if (!(b->batch = calloc(p->batch_max ? p->batch_max : 1, sizeof *b->batch))) {
        free(b);
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    }
    {
        uint64_t seed = 0;
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (read(fd, &seed, sizeof seed) != (ssize_t)sizeof seed)
                seed = 0;
            close(fd);
        }
        b->rng = seed ^ kb_now(b) ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ull;
        if (!b->rng)
            b->rng = 1;
    }
    b->instance = kb_random(b);
    b->started = kb_now(b);
    b->next_gc = b->started;
    bool curve = p->curve_secret || p->curve_clients || p->curve_workers;
    if (curve && !(p->curve_secret && p->curve_clients && p->curve_workers)) {
        st = ks_fail(KS_ERR_INVALID, "CURVE needs --curve-secret, --client-keys and "
                                     "--worker-keys together (fail closed)");
        goto cleanup;
    }
    b->zctx = zmq_ctx_new();
    if (!b->zctx) {
        st = ks_fail(KS_ERR_IO, "zmq_ctx_new: %s", zmq_strerror(errno));
        goto cleanup;
    }
    if ((st = kb_store_open(p->db_path, p->db_vfs, &b->store)) != KS_OK)
        goto cleanup;
    /* Without a WAL (":memory:") nothing outlives the process anyway: replies follow COMMIT. */
    if (kb_store_is_wal(b->store) &&
        (st = kb_syncer_new(b->zctx, p->db_path, p->db_vfs, KB_WAL_CHECKPOINT_FRAMES,
                            &b->syncer)) != KS_OK)
        goto cleanup;
    if ((st = kb_recover(b)) != KS_OK)
        goto cleanup;
    if (curve && (st = kb_auth_start(b->zctx, p->curve_secret, p->curve_clients, p->curve_workers,
                                     p->log, p->log_level, (kb_auth **)&b->curve_state)) != KS_OK)
        goto cleanup;
    b->client_sock = zmq_socket(b->zctx, ZMQ_ROUTER);
    b->worker_sock = zmq_socket(b->zctx, ZMQ_ROUTER);
    if (!b->client_sock || !b->worker_sock) {
        st = ks_fail(KS_ERR_IO, "zmq_socket: %s", zmq_strerror(errno));
        goto cleanup;
    }
    if ((st = kb_bind(b, b->client_sock, p->client_endpoint, b->client_ep, sizeof b->client_ep,
                      "kosmos-client", curve, true)) != KS_OK ||
        (st = kb_bind(b, b->worker_sock, p->worker_endpoint, b->worker_ep, sizeof b->worker_ep,
                      "kosmos-worker", curve, false)) != KS_OK)
        goto cleanup;
    if (!curve) {
        kb_warn_open(b, b->client_ep);
        kb_warn_open(b, b->worker_ep);
    }
    kb_mem_recount(b);
    kb_logf(b, KS_LOG_INFO, "started",
            "\"client_endpoint\":\"%s\",\"worker_endpoint\":\"%s\",\"db\":\"%s\",\"curve\":%s,"
            "\"instance\":%llu,\"memory_bound\":%zu",
            b->client_ep, b->worker_ep, p->db_path, curve ? "true" : "false",
            (unsigned long long)b->instance, b->stats.memory_bound);
    *out = b;
    b = NULL;
cleanup:
    kb_broker_destroy(&b);
    return st;
}

void kb_broker_destroy(kb_broker **pb)
{
    if (!pb || !*pb)
        return;
    kb_broker *b = *pb;
    if (b->worker_sock) {
        Kosmos__V1__Disconnect dc = KOSMOS__V1__DISCONNECT__INIT;
        Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
        dc.has_code = true;
        dc.code = KOSMOS__V1__DISCONNECT__CODE__CODE_SHUTDOWN;
        dc.message = "broker shutting down";
        env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT;
        env.disconnect = &dc;
        for (size_t i = 0; i < b->n_workers; i++)
            kp_send(b->worker_sock, b->workers[i]->rid, b->workers[i]->rid_len, &env.base, NULL,
                    ZMQ_DONTWAIT);
    }
    if (b->client_sock)
        for (size_t i = 0; i < b->n_waiters; i++)
            kb_send_client_error(b, b->waiters[i].rid, b->waiters[i].rid_len,
                                 b->waiters[i].request_id,
                                 KOSMOS__V1__ERROR_CODE__ERROR_CODE_UNAVAILABLE,
                                 "broker shutting down", false);
    kb_flush(b, false);
    kb_held_drain(b);
    kb_syncer_destroy(&b->syncer);
    while (b->n_workers)
        kb_worker_forget(b, b->workers[b->n_workers - 1], false, NULL);
    if (b->client_sock)
        zmq_close(b->client_sock);
    if (b->worker_sock)
        zmq_close(b->worker_sock);
    kb_auth_stop((kb_auth **)&b->curve_state);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
    kb_store_destroy(&b->store);
    for (size_t i = 0; i < b->n_models; i++) {
        free(b->models[i].id);
        free(b->models[i].hash);
    }
    free(b->models);
    free(b->batch);
    free(b->workers);
    free(b->waiters);
    free(b->out);
    free(b->held);
    free(b->woken);
    free(b->orphans);
    kb_admit_free(b);
    free(b);
    *pb = NULL;
}

/* --metrics: copies what StatusReply reports into the endpoint's snapshot (kb_metrics.h); the
 * HTTP thread never touches the broker. The store is counted at most once a second. */
static void kb_metrics_update(kb_broker *b)
{
    bool counts_due = false;
    if (!kb_metrics_due(b->p.metrics, &counts_due))
        return;
    kb_metrics_snapshot s;
    memset(&s, 0, sizeof s);
    kb_broker_stats(b, &s.stats);
    s.uptime_ms = kb_now(b) - b->started;
    if (counts_due) {
        s.has_jobs = kb_store_counts(b->store, s.jobs) == KS_OK &&
                     kb_store_totals(b->store, s.totals) == KS_OK;
        if (!s.has_jobs)
            kb_store_fatal(b); /* an I/O error stops the broker as in any query */
    }
    kb_metrics_worker *ws = b->n_workers ? calloc(b->n_workers, sizeof *ws) : NULL;
    for (size_t i = 0; ws && i < b->n_workers; i++) {
        ws[i].name = b->workers[i]->name;
        ws[i].capacity = b->workers[i]->capacity;
        ws[i].credit = b->workers[i]->credit;
        ws[i].running = (uint32_t)b->workers[i]->n_leases;
    }
    s.workers = ws;
    s.n_workers = ws ? b->n_workers : 0;
    kb_metrics_publish(b->p.metrics, &s);
    free(ws);
}

ks_status kb_broker_step(kb_broker *b, int timeout_ms)
{
    if (b->fatal)
        return ks_fail(KS_ERR_IO, "the store failed; the broker stopped (fail-stop)");
    if (b->curve_state && !kb_auth_alive(b->curve_state)) {
        b->fatal = true;
        kb_logf(b, KS_LOG_ERROR, "authenticator_died", NULL);
        return ks_fail(KS_ERR_IO, "the CURVE authenticator stopped (fail closed)");
    }
    /* Past one outbox of replies held for the disk, the cycle reads nothing and answers no
     * waiter: it waits for the syncer (docs/broker.md "Memory bound"). */
    bool intake = b->held_bytes <= kb_outbox_bound(&b->p);
    zmq_pollitem_t items[3];
    int n_items = 0;
    if (intake) {
        items[n_items++] = (zmq_pollitem_t){b->client_sock, 0, ZMQ_POLLIN, 0};
        items[n_items++] = (zmq_pollitem_t){b->worker_sock, 0, ZMQ_POLLIN, 0};
    }
    zmq_pollitem_t *durable = NULL;
    if (b->syncer) {
        durable = &items[n_items++];
        *durable = (zmq_pollitem_t){kb_syncer_socket(b->syncer), 0, ZMQ_POLLIN, 0};
    }
    int wait = timeout_ms;
    if (wait < 0 || wait > (int)b->p.heartbeat_ms / 2)
        wait = (int)b->p.heartbeat_ms / 2; /* timers run at least twice per heartbeat */
    if (zmq_poll(items, n_items, wait) < 0 && errno != EINTR)
        return ks_fail(KS_ERR_IO, "zmq_poll: %s", zmq_strerror(errno));
    if (durable && (durable->revents & ZMQ_POLLIN))
        kb_syncer_drain(b->syncer);
    kb_held_release(b);
    if (intake && !b->fatal)
        kb_clients_batch(b);
    if (intake && !b->fatal)
        kb_workers_batch(b);
    if (!b->fatal)
        kb_timers(b);
    if (!b->fatal)
        kb_dispatch(b);
    kb_txn_end(b, b->fatal ? ks_fail(KS_ERR_IO, "the store failed") : KS_OK);
    if (intake && !b->fatal)
        kb_waiters_run(b);
    kb_held_release(b);
    kb_mem_recount(b);
    if (!b->fatal && b->p.metrics)
        kb_metrics_update(b);
    if (b->fatal)
        return ks_fail(KS_ERR_IO, "the store failed; the broker stopped (fail-stop)");
    return KS_OK;
}

ks_status kb_broker_run(kb_broker *b, volatile sig_atomic_t *stop)
{
    ks_status st = KS_OK;
    while (!*stop && (st = kb_broker_step(b, -1)) == KS_OK) {
        uint64_t now = kb_now(b);
        if (now >= b->next_timer_log) {
            b->next_timer_log = now + 60000;
            kb_logf(b, KS_LOG_INFO, "stats",
                    "\"workers\":%zu,\"waiters\":%zu,\"dispatches\":%llu,\"stored\":%llu,"
                    "\"stale\":%llu,\"violations\":%llu,\"memory\":%zu,\"memory_bound\":%zu",
                    b->n_workers, b->n_waiters, (unsigned long long)b->stats.dispatches,
                    (unsigned long long)b->stats.results_stored,
                    (unsigned long long)b->stats.results_stale,
                    (unsigned long long)b->stats.violations, b->stats.memory_bytes,
                    b->stats.memory_bound);
        }
    }
    if (st != KS_OK)
        return st;
    /* Stop intake: whatever clients still sent is answered UNAVAILABLE. */
    for (uint32_t i = 0; i < b->p.batch_max; i++) {
        kp_inbound *in = NULL;
        if (kp_recv(b->client_sock, true, KP_CLIENT_REQUEST, &b->limits, ZMQ_DONTWAIT, &in) !=
                KS_OK ||
            !in)
            break;
        size_t rl;
        const void *rid = kp_inbound_routing_id(in, &rl);
        if (kp_inbound_verdict(in) != KP_NOT_OURS)
            kb_send_client_error(b, rid, rl, kp_inbound_request_id(in),
                                 KOSMOS__V1__ERROR_CODE__ERROR_CODE_UNAVAILABLE,
                                 "broker shutting down", false);
        kp_inbound_destroy(&in);
    }
    /* Finish the commits: every held reply goes out once the disk has what it promises. */
    kb_held_drain(b);
    if (b->fatal)
        return ks_fail(KS_ERR_IO, "the store failed; the broker stopped (fail-stop)");
    kb_logf(b, KS_LOG_INFO, "stopping", NULL);
    return KS_OK;
}

void kb_broker_stats(const kb_broker *b, kb_stats *out)
{
    *out = b->stats;
    if (b->syncer) {
        kb_syncer_stats ss;
        kb_syncer_stats_get(b->syncer, &ss);
        out->sync_durations = ss.syncs;
        out->checkpoints = ss.checkpoints;
    }
    out->workers = (uint32_t)b->n_workers;
    out->waiters = (uint32_t)b->n_waiters;
}
