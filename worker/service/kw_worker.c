/* kw_worker: see kw_worker.h. This file is the I/O thread: the broker socket and its state
 * machine (docs/protocol.md §8):
 *
 *   REGISTERING --Welcome--> READY --silence for liveness x interval--> new socket, REGISTERING
 *        ^  Ready every interval; a new socket      |  Disconnect{NOT_REGISTERED}: Ready again
 *        |  with backoff while no Welcome comes     |  Disconnect{SHUTDOWN}: new socket
 *
 * It keeps the leases the worker holds (dispatched, no Result yet: listed in every Heartbeat and
 * in Ready.running after a reconnect) and the Results not yet acknowledged (resent after every
 * Welcome). Credit: the capacity (max_batch computing + prefetch waiting) minus the leases after
 * each Welcome, 1 after each Result. */
#include "kw_worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ks_file.h"
#include "kw_identity.h"
#include "kw_internal.h"
#include "kw_log.h"
#include "vips_runtime.h"

#ifndef KOSMOS_VERSION
#define KOSMOS_VERSION "0"
#endif

int kw_worker_capacity(const kw_worker_params *p)
{
    int prefetch = p->prefetch;
    if (prefetch < 0) { /* a quarter of the batch, 1..64: enough to refill it as jobs end */
        prefetch = (p->max_batch + 3) / 4;
        prefetch = prefetch < 1 ? 1 : prefetch > 64 ? 64 : prefetch;
    }
    return p->max_batch + prefetch;
}

void kw_worker_params_default(kw_worker_params *p)
{
    memset(p, 0, sizeof *p);
    kw_engine_params_default(&p->engine);
    p->max_batch = 4;
    p->prefill_tokens = 512;
    p->prefetch = -1;
    p->heartbeat_ms = 1000;
    p->heartbeat_liveness = 3;
    p->reconnect_max_ms = 30000;
    p->stop_timeout_ms = 120000;
    p->stop_grace_ms = 60000;
}

typedef struct kw_lease {
    char job_id[KW_JOB_ID_MAX + 1];
    uint32_t attempt;
    bool started;        /* the compute thread began it (Lease.started in every heartbeat) */
    uint64_t start_wait; /* the compute thread waits for the broker's confirmation until this
                          * time (unix ms); 0: not waiting */
} kw_lease;

typedef struct kw_pending {
    char job_id[KW_JOB_ID_MAX + 1];
    uint32_t attempt;
    zmq_msg_t body; /* WorkerMessage{result}, packed; copied for each (re)send */
} kw_pending;

typedef struct kw_io {
    const kw_worker_params *p;
    void *ctx, *sock;
    void *pipe; /* the compute actor's pipe, the io thread's end (kw_compute.actor owns it) */
    kp_limits limits;
    /* identity (Ready) */
    char name[256];
    char *model_id;
    char model_hash[KW_HASH_HEX];
    kw_device_info device;
    uint64_t instance;
    bool curve;
    char curve_public[KW_Z85_KEY], curve_secret[KW_Z85_KEY], curve_server[KW_Z85_KEY];
    void *monitor;     /* CURVE: the socket's handshake events (a refused key), or NULL */
    unsigned monitors; /* monitor endpoints made so far (each socket gets its own) */
    /* connection */
    bool welcomed;
    bool confirms_start; /* this broker answers started leases (Welcome.confirms_start) */
    uint64_t broker_instance;
    uint32_t hb_ms, liveness;
    uint64_t last_recv, next_hb, next_ready, next_reconnect;
    uint32_t backoff_ms;
    uint32_t refused_ms; /* CODE_RETRY_LATER backoff: 0, or the last wait (doubling, capped) */
    /* work */
    kw_lease *leases;
    size_t n_leases, cap_leases;
    kw_pending *pending;
    size_t n_pending, cap_pending;
    /* stopping */
    bool stopping, compute_stopped, finished;
    uint64_t stop_deadline;
    int exit_code;
} kw_io;

static uint64_t now_ms(void) { return kw_unix_ms(); }

/* ---- sending -------------------------------------------------------------------------------- */

static bool io_send(kw_io *io, Kosmos__V1__WorkerMessage *m)
{
    if (!io->sock)
        return false;
    if (kp_send(io->sock, NULL, 0, &m->base, NULL, ZMQ_DONTWAIT) != KS_OK) {
        kw_log(KS_LOG_DEBUG, "send_failed", "\"error\":\"%s\"", zmq_strerror(errno));
        return false;
    }
    return true;
}

static Kosmos__V1__Lease **lease_list(kw_io *io, Kosmos__V1__Lease *storage)
{
    Kosmos__V1__Lease **list = calloc(io->n_leases ? io->n_leases : 1, sizeof *list);
    for (size_t i = 0; list && i < io->n_leases; i++) {
        kosmos__v1__lease__init(&storage[i]);
        storage[i].job_id = io->leases[i].job_id;
        storage[i].has_attempt = storage[i].has_started = true;
        storage[i].attempt = io->leases[i].attempt;
        storage[i].started = io->leases[i].started;
        list[i] = &storage[i];
    }
    return list;
}

static void send_ready(kw_io *io)
{
    Kosmos__V1__Ready r = KOSMOS__V1__READY__INIT;
    Kosmos__V1__DeviceInfo d = KOSMOS__V1__DEVICE_INFO__INIT;
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    Kosmos__V1__Lease *storage = calloc(io->n_leases ? io->n_leases : 1, sizeof *storage);
    Kosmos__V1__Lease **list = storage ? lease_list(io, storage) : NULL;
    r.has_protocol_version = r.has_worker_instance = r.has_batch_capacity = true;
    r.protocol_version = 1;
    r.worker_name = io->name;
    r.worker_instance = io->instance;
    r.model_id = io->model_id;
    r.model_hash = io->model_hash[0] ? io->model_hash : NULL;
    d.vendor = io->device.vendor;
    d.name = io->device.name;
    d.has_memory_bytes = io->device.memory_bytes > 0;
    d.memory_bytes = io->device.memory_bytes;
    r.device = &d;
    r.batch_capacity = (uint32_t)kw_worker_capacity(io->p);
    r.software_version = "kosmos-worker " KOSMOS_VERSION;
    if (list) {
        r.running = list;
        r.n_running = io->n_leases;
    }
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_READY;
    m.ready = &r;
    if (io_send(io, &m))
        kw_log(KS_LOG_DEBUG, "ready_sent", "\"running\":%zu", io->n_leases);
    free(list);
    free(storage);
}

static void send_credit(kw_io *io, uint32_t slots)
{
    if (slots == 0)
        return;
    Kosmos__V1__Credit c = KOSMOS__V1__CREDIT__INIT;
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    c.has_slots = true;
    c.slots = slots;
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_CREDIT;
    m.credit = &c;
    io_send(io, &m);
}

static void send_heartbeat(kw_io *io)
{
    Kosmos__V1__Heartbeat h = KOSMOS__V1__HEARTBEAT__INIT;
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    Kosmos__V1__Lease *storage = calloc(io->n_leases ? io->n_leases : 1, sizeof *storage);
    Kosmos__V1__Lease **list = storage ? lease_list(io, storage) : NULL;
    if (!list && io->n_leases) {
        /* A heartbeat that drops a lease would make the broker think the job was lost. */
        free(storage);
        return;
    }
    h.has_sent_unix_ms = true;
    h.sent_unix_ms = now_ms();
    h.running = list;
    h.n_running = io->n_leases;
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_HEARTBEAT;
    m.heartbeat = &h;
    io_send(io, &m);
    free(list);
    free(storage);
}

static void send_disconnect(kw_io *io, const char *why)
{
    Kosmos__V1__Disconnect d = KOSMOS__V1__DISCONNECT__INIT;
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    d.has_code = true;
    d.code = KOSMOS__V1__DISCONNECT__CODE__CODE_SHUTDOWN;
    d.message = (char *)why;
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_DISCONNECT;
    m.disconnect = &d;
    io_send(io, &m);
}

static void send_pending(kw_io *io, kw_pending *pr)
{
    if (!io->sock)
        return;
    zmq_msg_t copy;
    zmq_msg_init(&copy);
    if (zmq_msg_copy(&copy, &pr->body) != 0) {
        zmq_msg_close(&copy);
        return;
    }
    if (kp_send_packed(io->sock, NULL, 0, &copy, NULL, ZMQ_DONTWAIT) != KS_OK)
        kw_log(KS_LOG_DEBUG, "send_failed", "\"error\":\"%s\"", zmq_strerror(errno));
}

/* ---- the socket ----------------------------------------------------------------------------- */

static void socket_close(kw_io *io, int linger_ms)
{
    if (io->monitor) {
        zmq_close(io->monitor);
        io->monitor = NULL;
    }
    if (!io->sock)
        return;
    zmq_setsockopt(io->sock, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    zmq_close(io->sock);
    io->sock = NULL;
}

static ks_status socket_open(kw_io *io)
{
    io->sock = zmq_socket(io->ctx, ZMQ_DEALER);
    if (!io->sock)
        return ks_fail(KS_ERR_IO, "zmq_socket: %s", zmq_strerror(errno));
    int zero = 0, one = 1, ivl = 100, ivl_max = 5000;
    int64_t max_size = (int64_t)(io->limits.max_message_bytes > io->limits.max_image_bytes
                                     ? io->limits.max_message_bytes
                                     : io->limits.max_image_bytes) +
                       (64 << 10);
    /* IMMEDIATE: nothing queues for a broker that is not connected; a Ready or Heartbeat
     * then fails at once and the timers resend it (no pile of stale Readys on connect). */
    if (zmq_setsockopt(io->sock, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(io->sock, ZMQ_IMMEDIATE, &one, sizeof one) ||
        zmq_setsockopt(io->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl) ||
        zmq_setsockopt(io->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max) ||
        zmq_setsockopt(io->sock, ZMQ_MAXMSGSIZE, &max_size, sizeof max_size))
        goto failed;
    if (io->curve && (zmq_setsockopt(io->sock, ZMQ_CURVE_SERVERKEY, io->curve_server, 41) ||
                      zmq_setsockopt(io->sock, ZMQ_CURVE_PUBLICKEY, io->curve_public, 41) ||
                      zmq_setsockopt(io->sock, ZMQ_CURVE_SECRETKEY, io->curve_secret, 41)))
        goto failed;
    if (io->curve) {
        /* A key the broker's ZAP handler refuses (status 400) is a refusal for good: the
         * worker hears of it only through this event (§11). */
        char ep[96];
        snprintf(ep, sizeof ep, "inproc://kw-monitor-%llx-%u", (unsigned long long)io->instance,
                 io->monitors++);
        if (zmq_socket_monitor(io->sock, ep, ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0 ||
            !(io->monitor = zmq_socket(io->ctx, ZMQ_PAIR)) || zmq_connect(io->monitor, ep) != 0)
            goto failed;
    }
    if (zmq_connect(io->sock, io->p->broker) != 0)
        goto failed;
    return KS_OK;
failed:;
    ks_status st = ks_fail(KS_ERR_IO, "connecting to %s: %s", io->p->broker, zmq_strerror(errno));
    socket_close(io, 0);
    return st;
}

/* Starts registering: optionally on a new socket (a new routing id), then Ready. */
static void start_registering(kw_io *io, bool new_socket)
{
    uint64_t now = now_ms();
    io->welcomed = false;
    if (new_socket) {
        socket_close(io, 0);
        char esc[600];
        if (socket_open(io) != KS_OK)
            kw_log(KS_LOG_ERROR, "socket_failed", "\"error\":%s",
                   ks_log_str(esc, sizeof esc, ks_error_message()));
    }
    send_ready(io);
    io->next_ready = now + io->hb_ms;
    io->next_reconnect = now + io->backoff_ms;
    io->last_recv = now;
}

/* ---- leases and results --------------------------------------------------------------------- */

static kw_lease *lease_find(kw_io *io, const char *job_id, uint32_t attempt)
{
    for (size_t i = 0; i < io->n_leases; i++)
        if (io->leases[i].attempt == attempt && strcmp(io->leases[i].job_id, job_id) == 0)
            return &io->leases[i];
    return NULL;
}

static bool lease_add(kw_io *io, const char *job_id, uint32_t attempt)
{
    if (io->n_leases == io->cap_leases) {
        size_t ncap = io->cap_leases ? io->cap_leases * 2 : 16;
        kw_lease *grown = realloc(io->leases, ncap * sizeof *grown);
        if (!grown)
            return false;
        io->leases = grown;
        io->cap_leases = ncap;
    }
    kw_lease *l = &io->leases[io->n_leases++];
    memset(l, 0, sizeof *l);
    snprintf(l->job_id, sizeof l->job_id, "%s", job_id);
    l->attempt = attempt;
    return true;
}

/* Lets the compute thread compute (job_id, attempt): the broker knows it started. */
static void start_ok(kw_io *io, const char *job_id, uint32_t attempt)
{
    kw_msg m = {.type = KW_MSG_START_OK, .attempt = attempt};
    snprintf(m.job_id, sizeof m.job_id, "%s", job_id);
    kw_msg_send(io->pipe, &m);
}

/* The compute thread is about to compute (job_id, attempt). The broker must know before it
 * does (a job that kills the worker is charged a crash, a queued one is not: §8.4), so the
 * lease is reported started at once and the compute thread waits for the broker's answer -
 * at most liveness intervals (a broker that does not answer considers this worker dead
 * anyway). No wait with a broker that does not confirm (older), without a connection, or
 * while stopping. */
static void on_started(kw_io *io, const char *job_id, uint32_t attempt)
{
    kw_lease *l = lease_find(io, job_id, attempt);
    if (l)
        l->started = true;
    if (!l || !io->welcomed || !io->confirms_start || io->stopping) {
        start_ok(io, job_id, attempt);
        return;
    }
    l->start_wait = now_ms() + (uint64_t)io->hb_ms * io->liveness;
    send_heartbeat(io);
    io->next_hb = now_ms() + io->hb_ms;
}

/* Releases every start still waiting: all of them (force), or those the broker confirmed in
 * `hb` (its Heartbeat.running), or those whose wait ran out. */
static void release_starts(kw_io *io, const Kosmos__V1__Heartbeat *hb, bool force)
{
    uint64_t now = now_ms();
    for (size_t i = 0; i < io->n_leases; i++) {
        kw_lease *l = &io->leases[i];
        if (!l->start_wait)
            continue;
        bool confirmed = false;
        for (size_t k = 0; hb && k < hb->n_running && !confirmed; k++)
            confirmed = hb->running[k] && hb->running[k]->job_id && hb->running[k]->has_attempt &&
                        hb->running[k]->attempt == l->attempt &&
                        strcmp(hb->running[k]->job_id, l->job_id) == 0;
        if (!force && !confirmed && now < l->start_wait)
            continue;
        if (!confirmed && !force)
            kw_log(KS_LOG_WARN, "start_unconfirmed", "\"job\":\"%s\",\"attempt\":%u", l->job_id,
                   l->attempt);
        l->start_wait = 0;
        start_ok(io, l->job_id, l->attempt);
    }
}

static void lease_drop(kw_io *io, const char *job_id, uint32_t attempt)
{
    kw_lease *l = lease_find(io, job_id, attempt);
    if (l)
        *l = io->leases[--io->n_leases];
}

static void free_packed(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* A result from the compute thread: keep it until acknowledged, send it, grant 1 credit. */
static void on_result(kw_io *io, kw_done *d)
{
    lease_drop(io, d->job_id, d->attempt);
    if (io->n_pending == io->cap_pending) {
        size_t ncap = io->cap_pending ? io->cap_pending * 2 : 16;
        kw_pending *grown = realloc(io->pending, ncap * sizeof *grown);
        if (!grown) {
            kw_log(KS_LOG_ERROR, "result_dropped", "\"job\":\"%s\",\"why\":\"out of memory\"",
                   d->job_id);
            free(d->packed.data);
            free(d);
            return;
        }
        io->pending = grown;
        io->cap_pending = ncap;
    }
    kw_pending *pr = &io->pending[io->n_pending];
    if (kp_frame_wrap(&pr->body, d->packed.data, d->packed.len, free_packed, NULL) != KS_OK) {
        free(d->packed.data);
        free(d);
        return;
    }
    snprintf(pr->job_id, sizeof pr->job_id, "%s", d->job_id);
    pr->attempt = d->attempt;
    io->n_pending++;
    kw_log(KS_LOG_INFO, "result", "\"job\":\"%s\",\"attempt\":%u,\"bytes\":%zu", d->job_id,
           d->attempt, d->packed.len);
    free(d);
    if (io->welcomed) {
        send_pending(io, pr);
        if (!io->stopping)
            send_credit(io, 1);
    }
}

static void on_result_ack(kw_io *io, const Kosmos__V1__ResultAck *a)
{
    if (!a->job_id || !a->has_attempt)
        return;
    for (size_t i = 0; i < io->n_pending; i++)
        if (io->pending[i].attempt == a->attempt && strcmp(io->pending[i].job_id, a->job_id) == 0) {
            zmq_msg_close(&io->pending[i].body);
            io->pending[i] = io->pending[--io->n_pending];
            break;
        }
    const char *d;
    switch (a->has_disposition ? (int)a->disposition : 0) {
    case KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED: d = "stored"; break;
    case KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STALE: d = "stale"; break;
    case KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_UNKNOWN_JOB: d = "unknown_job"; break;
    default: d = "unknown"; break; /* a newer broker: the worker may forget it anyway */
    }
    kw_log(KS_LOG_INFO, "result_ack", "\"job\":\"%s\",\"attempt\":%u,\"disposition\":\"%s\"",
           a->job_id, a->attempt, d);
}

/* ---- stopping ------------------------------------------------------------------------------- */

/* Stops taking work and ends the loop once the compute thread stopped and the results are
 * acknowledged, or after timeout_ms. A refusal for good waits one heartbeat interval: enough
 * for an idle compute thread to stop (and a running batch to be handed back), so that the
 * process exits through its cleanup. */
static void begin_stop(kw_io *io, int exit_code, uint32_t timeout_ms, const char *why)
{
    if (!io->stopping) {
        io->stopping = true;
        io->exit_code = exit_code;
        io->stop_deadline = now_ms() + timeout_ms;
        kw_log(KS_LOG_INFO, "stopping", "\"why\":\"%s\",\"running\":%zu,\"unacked\":%zu", why,
               io->n_leases, io->n_pending);
        if (!io->compute_stopped) {
            /* Running sequences get the grace; what is left then is handed back. */
            uint32_t grace = io->p->stop_grace_ms < timeout_ms ? io->p->stop_grace_ms : timeout_ms;
            kw_msg m = {.type = KW_MSG_STOP, .at = now_ms() + grace};
            kw_msg_send(io->pipe, &m);
        }
        release_starts(io, NULL, true);
    } else if (exit_code != KW_EXIT_OK && io->exit_code == KW_EXIT_OK) {
        io->exit_code = exit_code;
    }
    if (timeout_ms == 0)
        io->stop_deadline = now_ms();
}

/* ---- receiving ------------------------------------------------------------------------------ */

static void on_dispatch(kw_io *io, kp_inbound **inp)
{
    const Kosmos__V1__BrokerToWorker *env = (const void *)kp_inbound_envelope(*inp);
    const Kosmos__V1__Dispatch *d = env->dispatch;
    if (!d || !d->job_id || !d->has_attempt || !d->job_id[0] || strlen(d->job_id) > KW_JOB_ID_MAX) {
        kw_log(KS_LOG_WARN, "dispatch_unusable",
               "\"why\":\"no job_id of 1..64 bytes or no attempt\"");
        return;
    }
    if (lease_find(io, d->job_id, d->attempt)) {
        kw_log(KS_LOG_WARN, "dispatch_duplicate", "\"job\":\"%s\",\"attempt\":%u", d->job_id,
               d->attempt);
        return;
    }
    if (!lease_add(io, d->job_id, d->attempt)) {
        kw_log(KS_LOG_ERROR, "dispatch_dropped", "\"job\":\"%s\",\"why\":\"out of memory\"",
               d->job_id);
        return;
    }
    kw_log(KS_LOG_INFO, "dispatch", "\"job\":\"%s\",\"attempt\":%u,\"prompts\":%zu", d->job_id,
           d->attempt, d->job ? d->job->n_prompts : 0);
    if (io->stopping || io->compute_stopped)
        return; /* never started: handed back by the Disconnect at the end (§8.8) */
    kw_task *t = calloc(1, sizeof *t);
    if (!t) {
        kw_log(KS_LOG_ERROR, "dispatch_dropped", "\"job\":\"%s\",\"why\":\"out of memory\"",
               d->job_id);
        return; /* the lease stays listed until the Disconnect */
    }
    snprintf(t->job_id, sizeof t->job_id, "%s", d->job_id);
    t->job.job_id = t->job_id;
    t->job.attempt = d->attempt;
    t->job.job = d->job;
    t->job.image = kp_inbound_image(*inp, &t->job.image_len);
    t->in = *inp;
    *inp = NULL;
    kw_msg m = {.type = KW_MSG_TASK, .task = t};
    if (kw_msg_send(io->pipe, &m) != KS_OK) {
        *inp = t->in;
        t->in = NULL;
        kw_task_destroy(&t);
    }
}

/* The broker's image roots, for a worker without --image-root of its own (§2): handed to the
 * compute thread, which reads image_uri files. */
static void send_roots(kw_io *io, const Kosmos__V1__Welcome *w)
{
    if (io->p->engine.n_image_roots > 0 || io->compute_stopped)
        return;
    kw_roots *r = calloc(1, sizeof *r);
    if (r)
        r->paths = calloc(w->n_image_roots ? w->n_image_roots : 1, sizeof *r->paths);
    for (size_t i = 0; r && r->paths && i < w->n_image_roots; i++)
        if (ks_path_clean(w->image_roots[i]) && (r->paths[r->n] = strdup(w->image_roots[i])))
            r->n++;
    if (!r || !r->paths) {
        kw_roots_destroy(&r);
        kw_log(KS_LOG_ERROR, "image_roots_dropped", "\"why\":\"out of memory\"");
        return;
    }
    kw_log(KS_LOG_INFO, "image_roots", "\"from\":\"broker\",\"count\":%zu", r->n);
    kw_msg m = {.type = KW_MSG_ROOTS, .roots = r};
    if (kw_msg_send(io->pipe, &m) != KS_OK)
        kw_roots_destroy(&r);
}

static void on_disconnect(kw_io *io, const Kosmos__V1__Disconnect *d)
{
    int code = d && d->has_code ? (int)d->code : 0;
    char msg[600];
    ks_log_str(msg, sizeof msg, d && d->message ? d->message : "");
    kw_log(KS_LOG_WARN, "broker_disconnect", "\"code\":%d,\"message\":%s", code, msg);
    switch (code) {
    case KOSMOS__V1__DISCONNECT__CODE__CODE_REJECTED:
        /* For good (wrong protocol, invalid name or capacity): only a new configuration helps,
         * so exit 1, which the systemd unit does not restart (RestartPreventExitStatus). */
        kw_log(KS_LOG_ERROR, "rejected", "\"message\":%s", msg);
        begin_stop(io, KW_EXIT_CONFIG, io->hb_ms, "the broker refused this worker");
        break;
    case KOSMOS__V1__DISCONNECT__CODE__CODE_RETRY_LATER: {
        /* For now (the broker is full): Ready again after a capped exponential backoff, at
         * least what the broker asked for; never exit. */
        uint64_t wait = io->refused_ms ? (uint64_t)io->refused_ms * 2 : io->hb_ms;
        if (d->has_retry_after_ms && wait < d->retry_after_ms)
            wait = d->retry_after_ms;
        if (wait > io->p->reconnect_max_ms)
            wait = io->p->reconnect_max_ms;
        io->refused_ms = (uint32_t)wait;
        kw_log(KS_LOG_WARN, "refused_for_now", "\"message\":%s,\"retry_in_ms\":%llu", msg,
               (unsigned long long)wait);
        if (!io->stopping) {
            uint64_t now = now_ms();
            io->welcomed = false;
            io->next_ready = now + wait;
            /* the broker answered: no reason to open a new socket before the retry */
            io->next_reconnect = io->next_ready + (uint64_t)io->hb_ms * io->liveness;
            io->last_recv = now;
        }
        break;
    }
    case KOSMOS__V1__DISCONNECT__CODE__CODE_SHUTDOWN:
        if (!io->stopping)
            start_registering(io, true); /* it will come back (§8.7) */
        break;
    default: /* NOT_REGISTERED, PROTOCOL_ERROR, unknown: register again on this socket */
        if (!io->stopping)
            start_registering(io, false);
        break;
    }
}

static void on_broker_message(kw_io *io, kp_inbound *in)
{
    kp_verdict v = kp_inbound_verdict(in);
    if (v == KP_BAD_VERSION) {
        kw_log(KS_LOG_ERROR, "protocol_version",
               "\"message\":\"broker speaks a different protocol "
               "version (%s)\"",
               kp_inbound_reason(in));
        begin_stop(io, KW_EXIT_CONFIG, io->hb_ms, "protocol version mismatch");
        kp_inbound_destroy(&in);
        return;
    }
    if (v != KP_VALID) {
        char why[300];
        kw_log(KS_LOG_WARN, "broker_message_invalid", "\"verdict\":\"%s\",\"why\":%s",
               kp_verdict_name(v), ks_log_str(why, sizeof why, kp_inbound_reason(in)));
        kp_inbound_destroy(&in);
        return;
    }
    io->last_recv = now_ms();
    const Kosmos__V1__BrokerToWorker *m = (const void *)kp_inbound_envelope(in);
    switch (m->message_case) {
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_WELCOME: {
        if (io->welcomed || !m->welcome)
            break; /* an answer to an earlier Ready of the same registration */
        const Kosmos__V1__Welcome *w = m->welcome;
        io->welcomed = true;
        io->refused_ms = 0;
        io->confirms_start = w->has_confirms_start && w->confirms_start;
        if (w->has_heartbeat_interval_ms && w->heartbeat_interval_ms > 0)
            io->hb_ms = w->heartbeat_interval_ms;
        if (w->has_heartbeat_liveness && w->heartbeat_liveness > 0)
            io->liveness = w->heartbeat_liveness;
        io->backoff_ms = io->hb_ms * io->liveness;
        bool restarted = io->broker_instance && w->broker_instance != io->broker_instance;
        io->broker_instance = w->broker_instance;
        io->next_hb = now_ms() + io->hb_ms;
        kw_log(KS_LOG_INFO, "registered",
               "\"broker_instance\":%llu,\"broker_restarted\":%s,"
               "\"heartbeat_ms\":%u,\"liveness\":%u,\"running\":%zu,\"unacked\":%zu",
               (unsigned long long)w->broker_instance, restarted ? "true" : "false", io->hb_ms,
               io->liveness, io->n_leases, io->n_pending);
        send_roots(io, w);
        for (size_t i = 0; i < io->n_pending; i++)
            send_pending(io, &io->pending[i]);
        if (!io->stopping && (size_t)kw_worker_capacity(io->p) > io->n_leases)
            send_credit(io, (uint32_t)((size_t)kw_worker_capacity(io->p) - io->n_leases));
        if (!io->confirms_start)
            release_starts(io, NULL, true); /* a broker that does not confirm: do not wait */
        else
            send_heartbeat(io); /* starts still waiting are confirmed in the answer */
        break;
    }
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_HEARTBEAT:
        if (m->heartbeat && m->heartbeat->n_running)
            release_starts(io, m->heartbeat, false);
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH: on_dispatch(io, &in); break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_CANCEL: {
        const Kosmos__V1__Cancel *c = m->cancel;
        if (!c || !c->job_id || !c->has_attempt || strlen(c->job_id) > KW_JOB_ID_MAX)
            break;
        kw_log(KS_LOG_INFO, "cancel", "\"job\":\"%s\",\"attempt\":%u,\"reason\":%d", c->job_id,
               c->attempt, c->has_reason ? (int)c->reason : 0);
        if (!lease_find(io, c->job_id, c->attempt) || io->compute_stopped)
            break; /* not ours (§8.6) */
        kw_msg cm = {.type = KW_MSG_CANCEL,
                     .attempt = c->attempt,
                     .reason = c->has_reason && c->reason
                                   ? (int)c->reason
                                   : KOSMOS__V1__CANCEL__REASON__REASON_CLIENT};
        snprintf(cm.job_id, sizeof cm.job_id, "%s", c->job_id);
        kw_msg_send(io->pipe, &cm);
        break;
    }
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_RESULT_ACK:
        if (m->result_ack)
            on_result_ack(io, m->result_ack);
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT: on_disconnect(io, m->disconnect); break;
    default:
        kw_log(KS_LOG_DEBUG, "broker_message_unknown", NULL); /* a newer broker (§7) */
        break;
    }
    kp_inbound_destroy(&in);
}

/* A handshake event of the broker socket (CURVE): a key refused by the broker stops the worker
 * as a permanent refusal does. */
static void on_monitor(kw_io *io)
{
    zmq_msg_t event, endpoint;
    zmq_msg_init(&event);
    zmq_msg_init(&endpoint);
    if (zmq_msg_recv(&event, io->monitor, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&event) &&
        zmq_msg_recv(&endpoint, io->monitor, ZMQ_DONTWAIT) >= 0 && zmq_msg_size(&event) >= 6) {
        const uint8_t *d = zmq_msg_data(&event);
        uint16_t id;
        uint32_t status;
        memcpy(&id, d, sizeof id);
        memcpy(&status, d + 2, sizeof status);
        if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH && status == 400) {
            kw_log(KS_LOG_ERROR, "rejected",
                   "\"message\":\"the broker refused this worker's CURVE "
                   "key (ZAP status 400)\"");
            begin_stop(io, KW_EXIT_CONFIG, io->hb_ms, "the broker refused this worker's key");
        }
    }
    zmq_msg_close(&event);
    zmq_msg_close(&endpoint);
}

static void on_pipe(kw_io *io)
{
    for (;;) {
        kw_msg m;
        bool got = false;
        if (kw_msg_recv(io->pipe, &m, ZMQ_DONTWAIT, &got) != KS_OK || !got)
            return;
        switch (m.type) {
        case KW_MSG_RESULT: on_result(io, m.done); break;
        case KW_MSG_FATAL: {
            char msg[600];
            kw_log(KS_LOG_ERROR, "device_failed", "\"message\":%s",
                   ks_log_str(msg, sizeof msg, m.message));
            begin_stop(io, KW_EXIT_DEVICE, io->p->stop_timeout_ms, "device failure");
            break;
        }
        case KW_MSG_STARTED: on_started(io, m.job_id, m.attempt); break;
        case KW_MSG_STOPPED: io->compute_stopped = true; break;
        default: break;
        }
    }
}

/* ---- the loop ------------------------------------------------------------------------------- */

static void run_loop(kw_io *io, volatile sig_atomic_t *stop)
{
    start_registering(io, false);
    while (!io->finished) {
        uint64_t now = now_ms();
        if (*stop >= 1 && !io->stopping)
            begin_stop(io, KW_EXIT_OK, io->p->stop_timeout_ms, "signal");
        if (*stop >= 2)
            begin_stop(io, io->exit_code, 0, "second signal");
        if (io->stopping &&
            ((io->compute_stopped && io->n_pending == 0) || now >= io->stop_deadline)) {
            if (io->n_pending || !io->compute_stopped)
                kw_log(KS_LOG_WARN, "stop_timeout", "\"unacked\":%zu,\"compute_done\":%s",
                       io->n_pending, io->compute_stopped ? "true" : "false");
            break;
        }
        if (!io->welcomed) {
            if (now >= io->next_reconnect) {
                kw_log(KS_LOG_WARN, "no_welcome", "\"reconnect_after_ms\":%u", io->backoff_ms);
                uint64_t doubled = (uint64_t)io->backoff_ms * 2;
                io->backoff_ms = (uint32_t)(doubled > io->p->reconnect_max_ms
                                                ? io->p->reconnect_max_ms
                                                : doubled);
                start_registering(io, true);
            } else if (now >= io->next_ready) {
                send_ready(io);
                io->next_ready = now + io->hb_ms;
            }
        } else {
            if (now >= io->last_recv + (uint64_t)io->hb_ms * io->liveness) {
                kw_log(KS_LOG_WARN, "broker_silent", "\"ms\":%llu",
                       (unsigned long long)(now - io->last_recv));
                io->backoff_ms = io->hb_ms * io->liveness;
                start_registering(io, true);
                continue;
            }
            if (now >= io->next_hb) {
                send_heartbeat(io);
                io->next_hb = now + io->hb_ms;
            }
        }
        release_starts(io, NULL, false); /* waits that ran out */
        uint64_t next = io->welcomed ? io->next_hb
                                     : (io->next_ready < io->next_reconnect ? io->next_ready
                                                                            : io->next_reconnect);
        long timeout = next > now ? (long)(next - now) : 0;
        if (timeout > 100)
            timeout = 100;
        zmq_pollitem_t items[3] = {{io->sock, 0, ZMQ_POLLIN, 0},
                                   {io->pipe, 0, ZMQ_POLLIN, 0},
                                   {io->monitor, 0, ZMQ_POLLIN, 0}};
        int first = io->sock ? 0 : 1;
        if (zmq_poll(items + first, (io->monitor ? 3 : 2) - first, timeout) < 0) {
            if (errno == EINTR)
                continue;
            kw_log(KS_LOG_ERROR, "poll_failed", "\"error\":\"%s\"", zmq_strerror(errno));
            begin_stop(io, KW_EXIT_CONFIG, 0, "zmq_poll failed");
            continue;
        }
        if (items[1].revents & ZMQ_POLLIN)
            on_pipe(io);
        if (io->monitor && (items[2].revents & ZMQ_POLLIN))
            on_monitor(io);
        for (int i = 0; io->sock && (items[0].revents & ZMQ_POLLIN) && i < 64; i++) {
            kp_inbound *in = NULL;
            void *sock = io->sock;
            if (kp_recv(sock, false, KP_BROKER_TO_WORKER, &io->limits, ZMQ_DONTWAIT, &in) !=
                    KS_OK ||
                !in)
                break;
            on_broker_message(io, in);
            if (io->sock != sock)
                break; /* re-registering on a new socket */
        }
    }
    if (io->sock) {
        send_disconnect(io, io->exit_code == KW_EXIT_DEVICE ? "device failure" : "worker stopping");
        socket_close(io, 1000); /* let the Disconnect out */
    }
}

static uint64_t random_u64(void)
{
    uint64_t v = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&v, sizeof v, 1, f) != 1)
            v = 0;
        fclose(f);
    }
    return v ? v : now_ms() ^ ((uint64_t)(uintptr_t)&v << 16);
}

int kw_worker_run(const kw_worker_params *p, volatile sig_atomic_t *stop)
{
    kw_io io;
    memset(&io, 0, sizeof io);
    io.p = p;
    io.hb_ms = p->heartbeat_ms ? p->heartbeat_ms : 1000;
    io.liveness = p->heartbeat_liveness ? p->heartbeat_liveness : 3;
    io.backoff_ms = io.hb_ms * io.liveness;
    io.limits.max_message_bytes = KP_DEFAULT_MAX_MESSAGE_BYTES;
    io.limits.max_image_bytes = p->engine.max_image_bytes ? p->engine.max_image_bytes
                                                          : KP_DEFAULT_MAX_IMAGE_BYTES;
    io.instance = random_u64();
    kw_engine engine;
    memset(&engine, 0, sizeof engine);
    kw_compute compute;
    memset(&compute, 0, sizeof compute);
    int code = KW_EXIT_CONFIG;
    char esc[1100];

    if ((p->curve_secret != NULL) != (p->curve_server != NULL)) {
        kw_log(KS_LOG_ERROR, "config",
               "\"error\":\"--curve-secret and --curve-server-public go together\"");
        return KW_EXIT_CONFIG;
    }
    if (p->curve_secret) {
        if (kw_curve_load(p->curve_secret, io.curve_public, io.curve_secret) != KS_OK ||
            kw_curve_load(p->curve_server, io.curve_server, NULL) != KS_OK) {
            kw_log(KS_LOG_ERROR, "config", "\"error\":%s",
                   ks_log_str(esc, sizeof esc, ks_error_message()));
            return KW_EXIT_CONFIG;
        }
        io.curve = true;
    }
    if (ki_init() != KS_OK) {
        kw_log(KS_LOG_ERROR, "start_failed", "\"error\":%s",
               ks_log_str(esc, sizeof esc, ks_error_message()));
        return KW_EXIT_CONFIG;
    }
    double t0 = kw_now_ms();
    if (kw_engine_open(&engine, &p->engine) != KS_OK) {
        kw_log(KS_LOG_ERROR, "start_failed", "\"error\":%s",
               ks_log_str(esc, sizeof esc, ks_error_message()));
        return KW_EXIT_CONFIG;
    }
    if (p->name)
        snprintf(io.name, sizeof io.name, "%s", p->name);
    else
        kw_default_name(p->engine.device, io.name, sizeof io.name);
    io.model_id = p->model_id ? strdup(p->model_id) : kw_model_id(p->engine.model_dir);
    if (p->model_hash) {
        snprintf(io.model_hash, sizeof io.model_hash, "%s", p->model_hash);
    } else if (kw_model_hash(p->engine.model_dir, io.model_hash) != KS_OK) {
        kw_log(KS_LOG_WARN, "model_hash", "\"error\":%s",
               ks_log_str(esc, sizeof esc, ks_error_message()));
        io.model_hash[0] = '\0';
    }
    kw_device_info_get(engine.backend, &io.device);
    ke_backend_stats backend_stats;
    ke_backend_stats_get(engine.backend, &backend_stats);
    /* device_bytes: what the device holds for us (weights, KV cache, scratch). On a CPU device
     * (PoCL) it lives in this process's anonymous memory, committed as it is first touched; the
     * weights are written at start, so RssAnon - weight_bytes is what the host itself holds. */
    char model_esc[300], device_esc[300], tunables_esc[1600];
    kw_log(KS_LOG_INFO, "started",
           "\"name\":%s,\"model_id\":%s,\"model_hash\":\"%s\","
           "\"device\":%s,\"max_batch\":%d,\"capacity\":%d,\"slots\":%d,\"context\":%d,"
           "\"kv_tokens\":%zu,\"kv_cache\":\"%s\",\"precision\":\"%s\",\"load_ms\":%.0f,"
           "\"device_bytes\":%zu,\"weight_bytes\":%zu,\"vision_chunk\":%d,"
           "\"prefill_tokens\":%d,\"tunables\":%s",
           ks_log_str(esc, sizeof esc, io.name),
           ks_log_str(model_esc, sizeof model_esc, io.model_id), io.model_hash,
           ks_log_str(device_esc, sizeof device_esc, io.device.name), p->max_batch,
           kw_worker_capacity(p), engine.backend->slots, engine.backend->slot_capacity,
           p->engine.kv_tokens, p->engine.kv_half ? "f16" : "f32",
           ke_precision_name(p->engine.precision, p->engine.weights_int8), kw_now_ms() - t0,
           backend_stats.device_bytes, backend_stats.weight_bytes, engine.backend->vision_chunk,
           p->prefill_tokens,
           backend_stats.tunables
               ? ks_log_str(tunables_esc, sizeof tunables_esc, backend_stats.tunables)
               : "null");

    io.ctx = zmq_ctx_new();
    if (!io.ctx) {
        kw_log(KS_LOG_ERROR, "start_failed", "\"error\":\"zmq_ctx_new: %s\"", zmq_strerror(errno));
        goto cleanup;
    }
    kw_batch_params batch_params;
    kw_batch_params_default(&batch_params);
    batch_params.vision_chunk = engine.backend->vision_chunk; /* --vision-chunk or the device's */
    batch_params.prefill_tokens = p->prefill_tokens;
    compute = (kw_compute){.engine = &engine,
                           .max_batch = p->max_batch,
                           .batch = batch_params,
                           .test = p->test,
                           .meta = {.worker_name = io.name, .device_name = io.device.name}};
    if (kw_compute_start(&compute, io.ctx) != KS_OK) {
        kw_log(KS_LOG_ERROR, "start_failed", "\"error\":%s",
               ks_log_str(esc, sizeof esc, ks_error_message()));
        goto cleanup;
    }
    io.pipe = kp_actor_pipe(compute.actor);
    if (socket_open(&io) != KS_OK) {
        kw_log(KS_LOG_ERROR, "start_failed", "\"error\":%s",
               ks_log_str(esc, sizeof esc, ks_error_message()));
        goto cleanup;
    }
    run_loop(&io, stop);
    code = io.exit_code;
    if (!io.compute_stopped) {
        /* Still inside a step (second signal or stop timeout): the device cannot be
         * interrupted, so leave without joining; the process exit ends the thread. */
        kw_log(KS_LOG_WARN, "exit_without_join", NULL);
        return code;
    }
    kw_compute_stop(&compute); /* it ended by itself: this joins it */
    kw_log(KS_LOG_INFO, "stopped", "\"exit_code\":%d,\"images_encoded\":%llu", code,
           (unsigned long long)engine.images_encoded);

cleanup:
    kw_compute_stop(&compute);
    io.pipe = NULL; /* the actor's, closed with it */
    for (size_t i = 0; i < io.n_pending; i++)
        zmq_msg_close(&io.pending[i].body);
    free(io.pending);
    free(io.leases);
    socket_close(&io, 0);
    if (io.ctx)
        zmq_ctx_term(io.ctx);
    free(io.model_id);
    kw_engine_close(&engine);
    return code;
}
