/* test_broker: the broker core driven step by step with an injected clock, test clients and
 * fake workers (DEALER sockets over ipc://). Asserts orderings and counters, never wall-clock
 * thresholds. Each fault test keeps ledgers: accepted jobs that never reach a terminal state
 * (lost) must be 0, and a job is dispatched again only with a higher attempt. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "fake_worker_msgs.h"
#include "inproc_broker.h"
#include "kb_auth.h"
#include "kb_broker.h"
#include "kb_faultvfs.h"
#include "kb_internal.h" /* KB_ADMIT_SLOTS */
#include "kb_job.h"
#include "test_curve_cert.h"
#include "test_skip.h"
#include "wire.h"

/* ---- Harness -------------------------------------------------------------------------------- */

static uint64_t fake_now = 1700000000000ull;
static uint64_t fake_clock(void *ctx)
{
    (void)ctx;
    return fake_now;
}
static uint64_t fake_rand_state = 42;
static uint64_t fake_rand(void *ctx)
{
    (void)ctx;
    fake_rand_state = fake_rand_state * 6364136223846793005ull + 1442695040888963407ull;
    return fake_rand_state >> 11;
}

/* The broker under test, stepped by the test itself. */
typedef ts_broker harness;

/* A broker on the injected clock and random source, in a fresh folder; not opened yet, so that
 * the test can change h->p first (ts_broker_start opens it, and restarts it later). */
static harness *h_alloc(void)
{
    harness *h = calloc(1, sizeof *h);
    assert_non_null(h);
    ts_broker_init(h, "kbtest");
    h->p.clock = fake_clock;
    h->p.rand = fake_rand;
    return h;
}

/* A broker with its store on the SQLite VFS `vfs` (NULL: the default). */
static harness *h_new_vfs(const char *vfs)
{
    harness *h = h_alloc();
    h->p.db_vfs = vfs;
    ts_broker_start(h);
    return h;
}

static harness *h_new(void) { return h_new_vfs(NULL); }

static void h_free(harness *h)
{
    ts_broker_fini(h);
    free(h);
}

/* A DEALER connected to `ep`; a CURVE client of `server_key` with (pub, sec) when given (Z85). */
static void *h_socket_curve(harness *h, const char *ep, const char *server_key, const char *pub,
                            const char *sec)
{
    void *s = zmq_socket(h->zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (server_key) {
        assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server_key, 40), 0);
        assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, 40), 0);
        assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, 40), 0);
    }
    assert_int_equal(zmq_connect(s, ep), 0);
    return s;
}

static void *h_socket(harness *h, const char *ep)
{
    return h_socket_curve(h, ep, NULL, NULL, NULL);
}

/* Steps the broker until `sock` has a message (or a bounded number of cycles passed). */
static bool h_pump(harness *h, void *sock)
{
    for (int i = 0; i < 400; i++) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 0) > 0)
            return true;
        assert_int_equal(kb_broker_step(h->b, 5), KS_OK);
    }
    return false;
}

static void h_steps(harness *h, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(kb_broker_step(h->b, 2), KS_OK);
}

/* ---- Test client ------------------------------------------------------------------------- */

static uint64_t next_request_id = 1;

static uint64_t c_send(void *sock, const char *client, Kosmos__V1__ClientRequest *req,
                       const void *image, size_t image_len)
{
    req->has_request_id = true;
    req->request_id = next_request_id++;
    req->client_id = (char *)client;
    zmq_msg_t img, *pimg = NULL;
    if (image) {
        zmq_msg_init_size(&img, image_len);
        memcpy(zmq_msg_data(&img), image, image_len);
        pimg = &img;
    }
    assert_int_equal(kp_send(sock, NULL, 0, &req->base, pimg, 0), KS_OK);
    return req->request_id;
}

/* Receives one reply (after pumping); caller frees with __free_unpacked. */
static Kosmos__V1__ClientReply *c_recv(harness *h, void *sock)
{
    assert_true(h_pump(h, sock));
    kp_inbound *in = NULL;
    assert_int_equal(kp_recv(sock, false, KP_CLIENT_REPLY, NULL, 0, &in), KS_OK);
    assert_non_null(in);
    assert_int_equal(kp_inbound_verdict(in), KP_VALID);
    size_t n = protobuf_c_message_get_packed_size(kp_inbound_envelope(in));
    uint8_t *buf = malloc(n + 1);
    protobuf_c_message_pack(kp_inbound_envelope(in), buf);
    kp_inbound_destroy(&in);
    Kosmos__V1__ClientReply *r = kosmos__v1__client_reply__unpack(NULL, n, buf);
    free(buf);
    assert_non_null(r);
    return r;
}

static Kosmos__V1__ClientReply *c_call(harness *h, void *sock, const char *client,
                                       Kosmos__V1__ClientRequest *req, const void *image,
                                       size_t image_len)
{
    uint64_t id = c_send(sock, client, req, image, image_len);
    Kosmos__V1__ClientReply *r = c_recv(h, sock);
    assert_int_equal(r->request_id, id);
    return r;
}

typedef struct job_opts {
    const char *key;
    int32_t priority;
    bool has_priority;
    uint64_t deadline;
    const char *text;
    const char *model;
} job_opts;

static const uint8_t test_image[] = {0x89, 'P', 'N', 'G', 1, 2, 3, 4, 5, 6, 7, 8};

/* Sends one submit with an attached image; returns its request id. */
static uint64_t c_submit_send(void *sock, const char *client, const job_opts *o)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__SubmitRequest sub = KOSMOS__V1__SUBMIT_REQUEST__INIT;
    Kosmos__V1__Job job;
    kosmos__v1__job__init(&job);
    Kosmos__V1__Prompt prompt = KOSMOS__V1__PROMPT__INIT;
    Kosmos__V1__Prompt *prompts[1] = {&prompt};
    Kosmos__V1__Requirements reqs = KOSMOS__V1__REQUIREMENTS__INIT;
    prompt.text = (char *)(o && o->text ? o->text : "<grounding> An image of");
    job.n_prompts = 1;
    job.prompts = prompts;
    job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE;
    job.image_attached_size = sizeof test_image;
    if (o && o->key)
        job.idempotency_key = (char *)o->key;
    if (o && o->has_priority) {
        job.has_priority = true;
        job.priority = o->priority;
    }
    if (o && o->deadline) {
        job.has_deadline_unix_ms = true;
        job.deadline_unix_ms = o->deadline;
    }
    if (o && o->model) {
        reqs.model_id = (char *)o->model;
        job.requirements = &reqs;
    }
    sub.job = &job;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT;
    req.submit = &sub;
    return c_send(sock, client, &req, test_image, sizeof test_image);
}

/* Submits one job with an attached image; returns the reply. */
static Kosmos__V1__ClientReply *c_submit(harness *h, void *sock, const char *client,
                                         const job_opts *o)
{
    uint64_t id = c_submit_send(sock, client, o);
    Kosmos__V1__ClientReply *r = c_recv(h, sock);
    assert_int_equal(r->request_id, id);
    return r;
}

/* Submits and returns the accepted job id (static buffer per call site is the caller's). */
static void c_submit_ok(harness *h, void *sock, const char *client, const job_opts *o, char id[65])
{
    Kosmos__V1__ClientReply *r = c_submit(h, sock, client, o);
    assert_int_equal(r->reply_case, KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT);
    assert_int_equal(r->submit->outcome_case, KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED);
    snprintf(id, 65, "%s", r->submit->accepted->job_id);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
}

static Kosmos__V1__ClientReply *c_fetch(harness *h, void *sock, const char *client, const char *id)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__FetchRequest f = KOSMOS__V1__FETCH_REQUEST__INIT;
    f.job_id = (char *)id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH;
    req.fetch = &f;
    return c_call(h, sock, client, &req, NULL, 0);
}

/* The job's state (asserting the fetch succeeded). */
static int c_state(harness *h, void *sock, const char *client, const char *id, uint32_t *attempt)
{
    Kosmos__V1__ClientReply *r = c_fetch(h, sock, client, id);
    assert_int_equal(r->reply_case, KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH);
    int s = r->fetch->state;
    if (attempt)
        *attempt = r->fetch->attempt;
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    return s;
}

/* ---- Fake worker ------------------------------------------------------------------------- */

typedef struct fworker {
    void *sock;
    const char *name;
    uint64_t instance;
} fworker;

/* Next message from the broker, skipping heartbeats; NULL if none within the pump. */
static Kosmos__V1__BrokerToWorker *w_recv(harness *h, fworker *w)
{
    for (;;) {
        if (!h_pump(h, w->sock))
            return NULL;
        kp_inbound *in = NULL;
        assert_int_equal(kp_recv(w->sock, false, KP_BROKER_TO_WORKER, NULL, 0, &in), KS_OK);
        assert_int_equal(kp_inbound_verdict(in), KP_VALID);
        const ProtobufCMessage *env = kp_inbound_envelope(in);
        size_t n = protobuf_c_message_get_packed_size(env);
        uint8_t *buf = malloc(n + 1);
        protobuf_c_message_pack(env, buf);
        size_t img_len = 0;
        kp_inbound_image(in, &img_len);
        kp_inbound_destroy(&in);
        Kosmos__V1__BrokerToWorker *m = kosmos__v1__broker_to_worker__unpack(NULL, n, buf);
        free(buf);
        if (m->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH)
            assert_int_equal(img_len, sizeof test_image);
        if (m->message_case != KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_HEARTBEAT)
            return m;
        kosmos__v1__broker_to_worker__free_unpacked(m, NULL);
    }
}

/* Polls without stepping the clock: true when a non-heartbeat message is waiting. */
static Kosmos__V1__BrokerToWorker *w_try(harness *h, fworker *w)
{
    h_steps(h, 3);
    for (;;) {
        zmq_pollitem_t it = {w->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 20) <= 0)
            return NULL;
        Kosmos__V1__BrokerToWorker *m = w_recv(h, w);
        if (m)
            return m;
    }
}

/* Fails when the broker sends the worker anything but heartbeats within w_try's window, and
 * says what it sent (a bare assert_null said nothing the one time CI saw it fail under load). */
static void w_none_at(harness *h, fworker *w, int line)
{
    Kosmos__V1__BrokerToWorker *m = w_try(h, w);
    if (!m)
        return;
    const char *job = m->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH
                          ? m->dispatch->job_id
                          : "";
    print_error("line %d: the broker sent message case %d %s (attempt %u) when nothing was due\n",
                line, (int)m->message_case, job,
                m->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH
                    ? m->dispatch->attempt
                    : 0u);
    kosmos__v1__broker_to_worker__free_unpacked(m, NULL);
    fail();
}
#define w_none(h, w) w_none_at((h), (w), __LINE__)

static const char *w_model = "microsoft/kosmos-2-patch14-224"; /* what w_ready offers */

static void w_ready(harness *h, fworker *w, const char *name, uint64_t instance, uint32_t capacity,
                    Kosmos__V1__Lease **running, size_t n_running)
{
    ts_fw_ready store;
    Kosmos__V1__Ready *r = ts_fw_ready_init(&store, name, instance, capacity, w_model);
    w->name = name;
    w->instance = instance;
    r->n_running = n_running;
    r->running = running;
    assert_int_equal(ts_fw_send_ready(w->sock, r), KS_OK);
    Kosmos__V1__BrokerToWorker *wel = w_recv(h, w);
    assert_non_null(wel);
    assert_int_equal(wel->message_case, KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_WELCOME);
    kosmos__v1__broker_to_worker__free_unpacked(wel, NULL);
}

static void w_credit(fworker *w, uint32_t n)
{
    assert_int_equal(ts_fw_send_credit(w->sock, n), KS_OK);
}

static fworker *w_new(harness *h, const char *name, uint32_t capacity, uint32_t credit)
{
    fworker *w = calloc(1, sizeof *w);
    w->sock = h_socket(h, h->wep);
    w_ready(h, w, name, 7, capacity, NULL, 0);
    if (credit)
        w_credit(w, credit);
    return w;
}

static void w_heartbeat(fworker *w, Kosmos__V1__Lease **running, size_t n)
{
    assert_int_equal(ts_fw_send_heartbeat(w->sock, running, n), KS_OK);
}

/* Sends a Result and returns the ResultAck disposition. */
static int w_result(harness *h, fworker *w, const char *job_id, uint32_t attempt, int status,
                    bool retriable)
{
    ts_fw_result store;
    Kosmos__V1__Result *r = ts_fw_result_init(&store, job_id, attempt, status,
                                              "An image of a snowman");
    r->has_retriable = true;
    r->retriable = retriable;
    r->worker_name = (char *)w->name;
    assert_int_equal(ts_fw_send_result(w->sock, r), KS_OK);
    Kosmos__V1__BrokerToWorker *a = w_recv(h, w);
    while (a && a->message_case != KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_RESULT_ACK) {
        kosmos__v1__broker_to_worker__free_unpacked(a, NULL);
        a = w_recv(h, w);
    }
    assert_non_null(a);
    assert_string_equal(a->result_ack->job_id, job_id);
    int d = a->result_ack->disposition;
    kosmos__v1__broker_to_worker__free_unpacked(a, NULL);
    return d;
}

static void w_free(fworker *w)
{
    zmq_close(w->sock);
    free(w);
}

/* Takes the next Dispatch (asserting one comes). */
static void w_take(harness *h, fworker *w, char id[65], uint32_t *attempt)
{
    Kosmos__V1__BrokerToWorker *m = w_recv(h, w);
    assert_non_null(m);
    assert_int_equal(m->message_case, KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH);
    snprintf(id, 65, "%s", m->dispatch->job_id);
    *attempt = m->dispatch->attempt;
    assert_int_equal(m->dispatch->job->image_case, KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE);
    assert_true(m->dispatch->job->generation && m->dispatch->job->generation->has_max_new_tokens);
    kosmos__v1__broker_to_worker__free_unpacked(m, NULL);
}

#define TERMINAL(s) ((s) >= KOSMOS__V1__JOB_STATE__JOB_STATE_DONE)

/* ---- Tests ------------------------------------------------------------------------------- */

static void test_submit_dispatch_result_fetch_ack(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char id[65], got[65];
    uint32_t attempt;
    c_submit_ok(h, c, "alice", NULL, id);
    assert_int_equal(strlen(id), 26);
    assert_int_equal(c_state(h, c, "alice", id, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED);
    fworker *w = w_new(h, "host/gpu0", 4, 4);
    w_take(h, w, got, &attempt);
    assert_string_equal(got, id);
    assert_int_equal(attempt, 1);
    assert_int_equal(c_state(h, c, "alice", id, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING);
    assert_int_equal(w_result(h, w, id, 1, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
    /* A resent result (the ack was lost) is STORED again, not stored twice. */
    assert_int_equal(w_result(h, w, id, 1, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
    Kosmos__V1__ClientReply *r = c_fetch(h, c, "alice", id);
    assert_int_equal(r->fetch->state, KOSMOS__V1__JOB_STATE__JOB_STATE_DONE);
    assert_non_null(r->fetch->result);
    assert_int_equal(r->fetch->result->n_prompts, 1);
    assert_string_equal(r->fetch->result->prompts[0]->text, "An image of a snowman");
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__AckRequest ack = KOSMOS__V1__ACK_REQUEST__INIT;
    ack.job_id = id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_ACK;
    req.ack = &ack;
    for (int i = 0; i < 2; i++) { /* idempotent */
        r = c_call(h, c, "alice", &req, NULL, 0);
        assert_int_equal(r->reply_case, KOSMOS__V1__CLIENT_REPLY__REPLY_ACK);
        assert_int_equal(r->ack->state, KOSMOS__V1__JOB_STATE__JOB_STATE_ACKED);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    r = c_fetch(h, c, "alice", id);
    assert_int_equal(r->fetch->state, KOSMOS__V1__JOB_STATE__JOB_STATE_ACKED);
    assert_null(r->fetch->result);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    w_free(w);
    zmq_close(c);
    h_free(h);
}

static void test_idempotency(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char id1[65], id2[65];
    job_opts o = {.key = "k-1"};
    c_submit_ok(h, c, "alice", &o, id1);
    Kosmos__V1__ClientReply *r = c_submit(h, c, "alice", &o);
    assert_int_equal(r->submit->outcome_case, KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED);
    assert_true(r->submit->accepted->duplicate);
    assert_string_equal(r->submit->accepted->job_id, id1);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    job_opts other = {.key = "k-1", .text = "<grounding> Something else"};
    r = c_submit(h, c, "alice", &other);
    assert_int_equal(r->submit->outcome_case, KOSMOS__V1__SUBMIT_REPLY__OUTCOME_CONFLICT);
    assert_string_equal(r->submit->conflict->job_id, id1);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    /* Another identity, same key: its own job. */
    c_submit_ok(h, c, "bob", &o, id2);
    assert_string_not_equal(id1, id2);

    /* 100 submits with one key from 4 sockets of one identity, all in flight at once: one job. */
    void *cs[4];
    uint64_t ids[100];
    for (int i = 0; i < 4; i++)
        cs[i] = h_socket(h, h->cep);
    for (int i = 0; i < 100; i++) {
        Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
        Kosmos__V1__SubmitRequest sub = KOSMOS__V1__SUBMIT_REQUEST__INIT;
        Kosmos__V1__Job job;
        kosmos__v1__job__init(&job);
        Kosmos__V1__Prompt prompt = KOSMOS__V1__PROMPT__INIT;
        Kosmos__V1__Prompt *prompts[1] = {&prompt};
        prompt.text = "<grounding> An image of";
        job.n_prompts = 1;
        job.prompts = prompts;
        job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_DATA; /* inline this time */
        job.image_data.data = (uint8_t *)test_image;
        job.image_data.len = sizeof test_image;
        job.idempotency_key = "same-key";
        sub.job = &job;
        req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT;
        req.submit = &sub;
        ids[i] = c_send(cs[i % 4], "carol", &req, NULL, 0);
    }
    char first[65] = "";
    int accepted = 0, dup = 0;
    for (int i = 0; i < 100; i++) {
        Kosmos__V1__ClientReply *rr = c_recv(h, cs[i % 4]);
        (void)ids;
        assert_int_equal(rr->submit->outcome_case, KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED);
        if (!first[0])
            snprintf(first, sizeof first, "%s", rr->submit->accepted->job_id);
        assert_string_equal(rr->submit->accepted->job_id, first);
        if (rr->submit->accepted->duplicate)
            dup++;
        else
            accepted++;
        kosmos__v1__client_reply__free_unpacked(rr, NULL);
    }
    assert_int_equal(accepted, 1);
    assert_int_equal(dup, 99);
    /* An attached image with the same bytes is the same contents as the inline one. */
    job_opts same = {.key = "same-key"};
    r = c_submit(h, c, "carol", &same);
    assert_int_equal(r->submit->outcome_case, KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED);
    assert_string_equal(r->submit->accepted->job_id, first);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    /* Status: exactly 4 jobs (alice, bob, carol; the conflict stored nothing). */
    Kosmos__V1__ClientRequest sreq = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__StatusRequest sq = KOSMOS__V1__STATUS_REQUEST__INIT;
    sreq.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    sreq.status = &sq;
    r = c_call(h, c, "x", &sreq, NULL, 0);
    assert_int_equal(r->status->total_submitted, 3);
    assert_true(r->status->has_memory_bytes && r->status->memory_bytes > 0);
    assert_true(r->status->memory_bytes <= r->status->memory_bound_bytes);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    for (int i = 0; i < 4; i++)
        zmq_close(cs[i]);
    zmq_close(c);
    h_free(h);
}

static void test_credit_priority_fifo(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char ids[6][65], got[65];
    uint32_t attempt;
    job_opts lo = {.has_priority = true, .priority = -5};
    job_opts hi = {.has_priority = true, .priority = 50};
    c_submit_ok(h, c, "a", &lo, ids[0]);
    c_submit_ok(h, c, "a", NULL, ids[1]);
    c_submit_ok(h, c, "a", &hi, ids[2]);
    c_submit_ok(h, c, "a", NULL, ids[3]);
    c_submit_ok(h, c, "a", &hi, ids[4]);
    fworker *w = w_new(h, "w0", 4, 2);
    /* Credit 2: exactly two dispatches, the two priority-50 jobs in submit order. */
    w_take(h, w, got, &attempt);
    assert_string_equal(got, ids[2]);
    w_take(h, w, got, &attempt);
    assert_string_equal(got, ids[4]);
    Kosmos__V1__BrokerToWorker *m = w_try(h, w);
    assert_null(m); /* credit exhausted: nothing more */
    kb_stats st;
    kb_broker_stats(h->b, &st);
    assert_int_equal(st.dispatches, 2);
    /* Finish one, grant one: the next is the oldest priority-0 job. */
    assert_int_equal(w_result(h, w, ids[2], 1, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
    w_credit(w, 1);
    w_take(h, w, got, &attempt);
    assert_string_equal(got, ids[1]);
    w_none(h, w);
    w_credit(w, 2);
    w_take(h, w, got, &attempt);
    assert_string_equal(got, ids[3]);
    w_take(h, w, got, &attempt);
    assert_string_equal(got, ids[0]);
    kb_broker_stats(h->b, &st);
    assert_int_equal(st.dispatches, 5);
    w_free(w);
    zmq_close(c);
    h_free(h);
}

static void test_deadline_expired(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char id[65];
    job_opts past = {.deadline = fake_now - 1};
    Kosmos__V1__ClientReply *r = c_submit(h, c, "a", &past);
    assert_int_equal(r->submit->outcome_case, KOSMOS__V1__SUBMIT_REPLY__OUTCOME_REJECTED);
    assert_int_equal(r->submit->rejected->code, KOSMOS__V1__REJECT_CODE__REJECT_CODE_EXPIRED);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    job_opts soon = {.deadline = fake_now + 1000};
    c_submit_ok(h, c, "a", &soon, id);
    fake_now += 1001;
    h_steps(h, 2);
    assert_int_equal(c_state(h, c, "a", id, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_EXPIRED);
    fworker *w = w_new(h, "w0", 1, 1);
    w_none(h, w); /* never dispatched */
    w_free(w);
    zmq_close(c);
    h_free(h);
}

/* A deadline of 2^64 - 1 means never: a queued job with it stays queued, and a running one is
 * never cancelled for it (deadline + heartbeat_ms used to wrap round to the past). */
static void test_deadline_never(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char id[65], queued[65], got[65];
    uint32_t attempt;
    job_opts never = {.deadline = UINT64_MAX};
    c_submit_ok(h, c, "a", &never, id);
    c_submit_ok(h, c, "a", &never, queued);
    fworker *w = w_new(h, "w0", 1, 1);
    w_take(h, w, got, &attempt);
    assert_string_equal(got, id);
    Kosmos__V1__Lease l = KOSMOS__V1__LEASE__INIT;
    Kosmos__V1__Lease *ls[1] = {&l};
    l.job_id = got;
    l.has_attempt = true;
    l.attempt = attempt;
    for (int i = 0; i < 5; i++) {
        fake_now += 1000;
        w_heartbeat(w, ls, 1);
        w_none(h, w); /* no Cancel{DEADLINE} */
    }
    assert_int_equal(c_state(h, c, "a", queued, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED);
    assert_int_equal(w_result(h, w, id, attempt, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
    assert_int_equal(c_state(h, c, "a", id, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_DONE);
    w_free(w);
    zmq_close(c);
    h_free(h);
}

static int c_submit_outcome(harness *h, void *sock, const char *client)
{
    Kosmos__V1__ClientReply *r = c_submit(h, sock, client, NULL);
    assert_int_equal(r->reply_case, KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT);
    int outcome = (int)r->submit->outcome_case;
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    return outcome;
}

static void c_cancel_ok(harness *h, void *sock, const char *client, const char *id)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__CancelRequest cr = KOSMOS__V1__CANCEL_REQUEST__INIT;
    cr.job_id = (char *)id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_CANCEL;
    req.cancel = &cr;
    Kosmos__V1__ClientReply *r = c_call(h, sock, client, &req, NULL, 0);
    assert_int_equal(r->reply_case, KOSMOS__V1__CLIENT_REPLY__REPLY_CANCEL);
    assert_true(r->cancel->cancelled);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
}

/* The queue limits use cached counts that may only overstate: busy must still rest on an exact
 * count, so a job that ends frees its place at once (the clock does not move here). */
static void test_admission_limits(void **state)
{
    (void)state;
    harness *h = h_new();
    h->p.max_queued = 3;
    h->p.max_client_jobs = 2;
    ts_broker_start(h);
    void *c = h_socket(h, h->cep);
    char a1[65], a2[65], b1[65];
    const int accepted = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED;
    const int busy = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_BUSY;
    c_submit_ok(h, c, "a", NULL, a1);
    c_submit_ok(h, c, "a", NULL, a2);
    assert_int_equal(c_submit_outcome(h, c, "a"), busy); /* a's window */
    c_submit_ok(h, c, "b", NULL, b1);
    assert_int_equal(c_submit_outcome(h, c, "c"), busy); /* the queue */
    c_cancel_ok(h, c, "a", a1);
    assert_int_equal(c_submit_outcome(h, c, "a"), accepted);
    assert_int_equal(c_submit_outcome(h, c, "a"), busy);
    c_cancel_ok(h, c, "b", b1);
    assert_int_equal(c_submit_outcome(h, c, "c"), accepted);
    assert_int_equal(c_submit_outcome(h, c, "c"), busy);
    /* Many clients (past the cache's size) keep exact answers too. */
    h->p.max_queued = 100000;
    ts_broker_start(h);
    enum { MANY = KB_ADMIT_SLOTS / 2 + 10, IN_FLIGHT = 256 };
    /* Sent IN_FLIGHT at a time (a few batches, a few commits each): more would fill the
     * sockets' high-water marks while this thread, which also steps the broker, is sending. */
    for (int sent = 0; sent < MANY; sent += IN_FLIGHT) {
        int n = MANY - sent < IN_FLIGHT ? MANY - sent : IN_FLIGHT;
        for (int i = sent; i < sent + n; i++) {
            char name[32];
            snprintf(name, sizeof name, "client-%d", i);
            c_submit_send(c, name, NULL);
        }
        for (int i = 0; i < n; i++) {
            Kosmos__V1__ClientReply *r = c_recv(h, c);
            assert_int_equal(r->submit->outcome_case, accepted);
            kosmos__v1__client_reply__free_unpacked(r, NULL);
        }
    }
    assert_int_equal(c_submit_outcome(h, c, "a"), busy); /* still 2 of a's jobs queued */
    zmq_close(c);
    h_free(h);
}

/* Dispatch skips workers whose kind (model, hash, memory) found no queued job until a job is
 * queued again: that must not starve a worker of another kind whose credit comes later, nor
 * a job submitted after the queue was found empty. */
static void test_dispatch_skips_by_worker_kind(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    w_model = "other/model";
    fworker *other = w_new(h, "w-other", 1, 0); /* offers the model, no credit yet */
    w_model = "microsoft/kosmos-2-patch14-224";
    fworker *plain = w_new(h, "w-plain", 1, 1);
    h_steps(h, 3); /* the queue is empty: plain's kind is found empty */
    char id[65], got[65];
    uint32_t attempt;
    job_opts o = {.model = "other/model"};
    c_submit_ok(h, c, "a", &o, id);
    h_steps(h, 3); /* plain cannot run it; its kind is empty again, nothing queued since */
    w_none(h, plain);
    w_credit(other, 1);
    w_take(h, other, got, &attempt);
    assert_string_equal(got, id);
    c_submit_ok(h, c, "a", NULL, id); /* queued after plain's kind was found empty */
    w_take(h, plain, got, &attempt);
    assert_string_equal(got, id);
    w_free(other);
    w_free(plain);
    zmq_close(c);
    h_free(h);
}

/* The model table is bounded (4 x --max-workers). A worker whose model no longer fits compares
 * its kind by its own strings; dispatch reaches it, also after its kind was found empty. */
static void test_dispatch_when_model_table_full(void **state)
{
    (void)state;
    harness *h = h_new();
    h->p.max_workers = 1;
    ts_broker_start(h);
    void *c = h_socket(h, h->cep);
    char model[4][32];
    for (int i = 0; i < 4; i++) {
        snprintf(model[i], sizeof model[i], "fill/model-%d", i);
        w_model = model[i];
        fworker *w = w_new(h, "w-fill", 1, 0);
        fake_now += 3000; /* silent for 3 heartbeats: forgotten, its model stays known */
        h_steps(h, 2);
        w_free(w);
    }
    assert_int_equal(h->b->n_models, 4);
    w_model = "microsoft/kosmos-2-patch14-224";
    fworker *last = w_new(h, "w-last", 1, 1);
    h_steps(h, 2);
    assert_int_equal(h->b->n_workers, 1);
    assert_int_equal(h->b->n_models, 4); /* full: not interned */
    assert_ptr_equal(h->b->workers[0]->kind_id, h->b->workers[0]->model_id);
    char id[65], got[65];
    uint32_t attempt;
    c_submit_ok(h, c, "a", NULL, id);
    w_take(h, last, got, &attempt);
    assert_string_equal(got, id);
    assert_int_equal(w_result(h, last, id, attempt, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
    w_credit(last, 1);
    h_steps(h, 3); /* nothing queued: its kind is found empty */
    c_submit_ok(h, c, "a", NULL, id);
    w_take(h, last, got, &attempt);
    assert_string_equal(got, id);
    w_free(last);
    zmq_close(c);
    h_free(h);
}

/* CURVE fails closed at run time too: once the ZAP handler thread is gone, the next cycle stops
 * the broker (libzmq 4.3.4 would let any client in with no handler bound, docs/broker.md). */
static void test_curve_handler_death_stops_broker(void **state)
{
    (void)state;
    if (!zmq_has("curve"))
        KT_CANNOT_RUN("libzmq without CURVE");
    harness *h = h_new();
    char keys[128], clients[128], workers[128], secret[160], path[200];
    char bpub[41], bsec[41], cpub[41], csec[41], wpub[41], wsec[41];
    snprintf(keys, sizeof keys, "%s/keys", h->dir);
    snprintf(clients, sizeof clients, "%s/clients", h->dir);
    snprintf(workers, sizeof workers, "%s/workers", h->dir);
    assert_int_equal(mkdir(keys, 0700), 0);
    assert_int_equal(mkdir(clients, 0700), 0);
    assert_int_equal(mkdir(workers, 0700), 0);
    assert_int_equal(zmq_curve_keypair(bpub, bsec), 0);
    assert_int_equal(zmq_curve_keypair(cpub, csec), 0);
    assert_int_equal(zmq_curve_keypair(wpub, wsec), 0);
    snprintf(secret, sizeof secret, "%s/broker.key_secret", keys);
    write_cert(secret, bpub, bsec);
    snprintf(path, sizeof path, "%s/client.key", clients);
    write_cert(path, cpub, NULL);
    snprintf(path, sizeof path, "%s/worker.key", workers);
    write_cert(path, wpub, NULL);
    h->p.curve_secret = secret;
    h->p.curve_clients = clients;
    h->p.curve_workers = workers;
    ts_broker_start(h);

    /* The handler runs: a known client key is served. */
    void *c = h_socket_curve(h, h->cep, bpub, cpub, csec);
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__StatusRequest sreq = KOSMOS__V1__STATUS_REQUEST__INIT;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    req.status = &sreq;
    c_send(c, "ignored-with-curve", &req, NULL, 0);
    Kosmos__V1__ClientReply *r = c_recv(h, c);
    assert_int_equal(r->reply_case, KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS);
    kosmos__v1__client_reply__free_unpacked(r, NULL);

    /* The handler dies: the broker stops at its next cycle, and stays stopped. */
    kb_auth_halt((kb_auth *)h->b->curve_state);
    assert_int_equal(kb_broker_step(h->b, 5), KS_ERR_IO);
    assert_int_equal(kb_broker_step(h->b, 5), KS_ERR_IO);
    zmq_close(c);
    h_free(h);
}

/* Writes `body` to dir/name. */
static void write_file(const char *dir, const char *name, const char *body)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(body, f);
    fclose(f);
}

/* Certificates as CZMQ's zcert_save and pyzmq's create_certificates write them (comment
 * header, metadata section, quoted keys) are read without CZMQ; a folder's *.key files that are
 * no certificate are skipped, and the broker refuses to start, with a message that says why,
 * when its secret key or every key of a folder is missing (fail closed). */
static void test_curve_certificate_files(void **state)
{
    (void)state;
    if (!zmq_has("curve"))
        KT_CANNOT_RUN("libzmq without CURVE");
    harness *h = h_new();
    char keys[128], clients[128], workers[128], empty[128], secret[160], bad_secret[160];
    char bpub[41], bsec[41], cpub[41], csec[41], wpub[41], wsec[41], body[512];
    snprintf(keys, sizeof keys, "%s/keys", h->dir);
    snprintf(clients, sizeof clients, "%s/clients", h->dir);
    snprintf(workers, sizeof workers, "%s/workers", h->dir);
    snprintf(empty, sizeof empty, "%s/empty", h->dir);
    const char *dirs[] = {keys, clients, workers, empty};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(mkdir(dirs[i], 0700), 0);
    assert_int_equal(zmq_curve_keypair(bpub, bsec), 0);
    assert_int_equal(zmq_curve_keypair(cpub, csec), 0);
    assert_int_equal(zmq_curve_keypair(wpub, wsec), 0);
    snprintf(body, sizeof body,
             "#   ****  Generated on 2026-01-02 03:04:05 by CZMQ  ****\n"
             "#   ZeroMQ CURVE **Secret** Certificate\n"
             "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n"
             "\n"
             "metadata\n"
             "    name = \"broker\"\n"
             "curve\n"
             "    public-key = \"%s\"\n"
             "    secret-key = \"%s\"\n",
             bpub, bsec);
    write_file(keys, "broker.key_secret", body);
    snprintf(body, sizeof body,
             "#   ****  Generated on 2026-01-02 03:04:05.123456 by pyzmq  ****\n"
             "#   ZeroMQ CURVE Public Certificate\n"
             "#   Exchange securely, or use a secure mechanism to verify the contents\n"
             "#   of this file after exchange. Store public certificates in your home\n"
             "#   directory, in the .curve subdirectory.\n"
             "\n"
             "metadata\n"
             "curve\n"
             "    public-key = \"%s\"\n",
             cpub);
    write_file(clients, "frontend.key", body);
    write_file(clients, "notes.key", "not a certificate\n");
    write_file(clients, "frontend.key_secret", "curve\n    secret-key = \"unused\"\n");
    snprintf(body, sizeof body, "curve\n    public-key = \"%s\"\n", wpub);
    write_file(workers, "gpu-01.key", body);
    write_file(empty, "notes.key", "metadata\ncurve\n    public-key = \"too short\"\n");
    snprintf(secret, sizeof secret, "%s/broker.key_secret", keys);
    h->p.curve_secret = secret;
    h->p.curve_clients = clients;
    h->p.curve_workers = workers;
    ts_broker_start(h);

    void *c = h_socket_curve(h, h->cep, bpub, cpub, csec);
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__StatusRequest sreq = KOSMOS__V1__STATUS_REQUEST__INIT;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    req.status = &sreq;
    c_send(c, "ignored-with-curve", &req, NULL, 0);
    Kosmos__V1__ClientReply *r = c_recv(h, c);
    assert_int_equal(r->reply_case, KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    zmq_close(c);
    kb_broker_destroy(&h->b);

    /* The public certificate where the secret one belongs: no secret key, no start. */
    snprintf(bad_secret, sizeof bad_secret, "%s/frontend.key", clients);
    h->p.curve_secret = bad_secret;
    assert_int_equal(kb_broker_new(&h->p, &h->b), KS_ERR_FORMAT);
    assert_null(h->b);
    assert_non_null(strstr(ks_error_message(), "CURVE (fail closed)"));
    assert_non_null(strstr(ks_error_message(), "no valid secret-key"));
    /* A folder with no valid public certificate, and one that does not exist. */
    h->p.curve_secret = secret;
    h->p.curve_workers = empty;
    assert_int_equal(kb_broker_new(&h->p, &h->b), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "holds no valid public certificate"));
    snprintf(empty, sizeof empty, "%s/missing", h->dir);
    assert_int_equal(kb_broker_new(&h->p, &h->b), KS_ERR_IO);
    assert_non_null(strstr(ks_error_message(), "cannot open key folder"));
    h->p.curve_workers = workers;
    ts_broker_start(h);
    h_free(h);
}

/* Worker death: lease lapses, job waits out its backoff, comes back with attempt+1; the old
 * attempt's late result is fenced off; after the 3rd death the job is DEAD. */
static void test_lease_lapse_stale_poison(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char id[65], got[65];
    uint32_t attempt, a2;
    c_submit_ok(h, c, "a", NULL, id);
    fworker *w1 = w_new(h, "w1", 1, 1);
    w_take(h, w1, got, &attempt);
    assert_int_equal(attempt, 1);
    /* w1 goes silent: 3 heartbeat intervals later it is dead. */
    fake_now += 3000;
    h_steps(h, 2);
    assert_int_equal(c_state(h, c, "a", id, &a2), KOSMOS__V1__JOB_STATE__JOB_STATE_RETRY_WAIT);
    Kosmos__V1__ClientReply *r = c_fetch(h, c, "a", id);
    uint64_t wait = r->fetch->next_attempt_unix_ms - fake_now;
    assert_true(wait >= 1000 && wait < 2000); /* 1 s * 2^0 + jitter [0, 1 s) */
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    fake_now += 2000;
    fworker *w2 = w_new(h, "w2", 1, 1);
    w_take(h, w2, got, &attempt);
    assert_string_equal(got, id);
    assert_int_equal(attempt, 2);
    /* w1 comes back (same name, new instance) and reports attempt 1: stale. */
    w_ready(h, w1, "w1", 8, 1, NULL, 0);
    assert_int_equal(w_result(h, w1, id, 1, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STALE);
    assert_int_equal(c_state(h, c, "a", id, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING);
    /* w2 dies too (2nd crash), backoff 2 s + jitter, then w3 gets attempt 3 and dies: DEAD. */
    fake_now += 3000;
    w_heartbeat(w1, NULL, 0);
    h_steps(h, 2);
    r = c_fetch(h, c, "a", id);
    assert_int_equal(r->fetch->state, KOSMOS__V1__JOB_STATE__JOB_STATE_RETRY_WAIT);
    wait = r->fetch->next_attempt_unix_ms - fake_now;
    assert_true(wait >= 2000 && wait < 3000);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    fake_now += 3000;
    w_heartbeat(w1, NULL, 0);
    fworker *w3 = w_new(h, "w3", 1, 1);
    /* w1 has no credit (it re-registered), so w3 gets it. */
    w_take(h, w3, got, &attempt);
    assert_int_equal(attempt, 3);
    fake_now += 3000;
    h_steps(h, 2);
    r = c_fetch(h, c, "a", id);
    assert_int_equal(r->fetch->state, KOSMOS__V1__JOB_STATE__JOB_STATE_DEAD);
    assert_int_equal(r->fetch->result->status, KOSMOS__V1__STATUS__STATUS_DEAD);
    assert_int_equal(r->fetch->result->prompts[0]->status, KOSMOS__V1__STATUS__STATUS_DEAD);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    kb_stats st;
    kb_broker_stats(h->b, &st);
    assert_int_equal(st.lease_lapses, 3);
    assert_int_equal(st.results_stale, 1);
    w_free(w1);
    w_free(w2);
    w_free(w3);
    zmq_close(c);
    h_free(h);
}

/* A v1.1 worker reports which leases it computes (Lease.started). A lease it lists queued is
 * extended as long as it lists it, whatever --max-job-seconds says; the start is confirmed at
 * once (Heartbeat.running) and the cap runs from it; a queued lease that lapses with its
 * worker is not charged a crash and goes straight back to the queue. */
static void test_lease_started_accounting(void **state)
{
    (void)state;
    harness *h = h_new();
    h->p.max_job_ms = 5000;
    ts_broker_start(h);
    void *c = h_socket(h, h->cep);
    char a[65], b[65], got_a[65], got_b[65];
    uint32_t att_a, att_b;
    c_submit_ok(h, c, "a", NULL, a);
    c_submit_ok(h, c, "a", NULL, b);
    fworker *w = w_new(h, "w1", 2, 2);
    w_take(h, w, got_a, &att_a);
    w_take(h, w, got_b, &att_b);
    Kosmos__V1__Lease la = KOSMOS__V1__LEASE__INIT, lb = KOSMOS__V1__LEASE__INIT;
    Kosmos__V1__Lease *ls[2] = {&la, &lb};
    la.job_id = got_a;
    lb.job_id = got_b;
    la.has_attempt = lb.has_attempt = la.has_started = lb.has_started = true;
    la.attempt = att_a;
    lb.attempt = att_b;
    /* Both queued in the worker for 3 x max_job_ms: no Cancel, no lapse. */
    for (int i = 0; i < 15; i++) {
        fake_now += 1000;
        w_heartbeat(w, ls, 2);
        w_none(h, w);
    }
    /* A starts: confirmed at once. */
    la.started = true;
    w_heartbeat(w, ls, 2);
    Kosmos__V1__BrokerToWorker *m = NULL;
    for (int i = 0; i < 50 && !m; i++) {
        h_steps(h, 1);
        zmq_pollitem_t it = {w->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 10) > 0) {
            kp_inbound *in = NULL;
            assert_int_equal(kp_recv(w->sock, false, KP_BROKER_TO_WORKER, NULL, 0, &in), KS_OK);
            const Kosmos__V1__BrokerToWorker *env = (const void *)kp_inbound_envelope(in);
            if (env->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_HEARTBEAT &&
                env->heartbeat->n_running == 1) {
                assert_string_equal(env->heartbeat->running[0]->job_id, got_a);
                assert_true(env->heartbeat->running[0]->started);
                m = (void *)1;
            }
            kp_inbound_destroy(&in);
        }
    }
    assert_non_null(m);
    /* The cap runs from the start: 4 s in, nothing; 5 s in, Cancel{LEASE_EXPIRED} for A only. */
    fake_now += 4000;
    w_heartbeat(w, ls, 2);
    w_none(h, w);
    fake_now += 1000;
    w_heartbeat(w, ls, 2);
    Kosmos__V1__BrokerToWorker *cancel = w_try(h, w);
    assert_non_null(cancel);
    assert_int_equal(cancel->message_case, KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_CANCEL);
    assert_string_equal(cancel->cancel->job_id, got_a);
    assert_int_equal(cancel->cancel->reason, KOSMOS__V1__CANCEL__REASON__REASON_LEASE_EXPIRED);
    kosmos__v1__broker_to_worker__free_unpacked(cancel, NULL);
    assert_int_equal(c_state(h, c, "a", got_a, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_RETRY_WAIT);
    /* The worker dies holding B queued: B goes back at once, uncharged. */
    fake_now += 5000;
    h_steps(h, 2);
    assert_int_equal(c_state(h, c, "a", got_b, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED);
    kb_stats st;
    kb_broker_stats(h->b, &st);
    assert_int_equal(st.lease_lapses, 1); /* A's cap only */
    w_free(w);
    zmq_close(c);
    h_free(h);
}

/* --max-workers: a Ready beyond it is refused for now (CODE_RETRY_LATER), at most once per
 * heartbeat interval for one peer; once a slot frees, the same peer registers. */
static void test_refused_for_now(void **state)
{
    (void)state;
    harness *h = h_new();
    h->p.max_workers = 1;
    ts_broker_start(h);
    fworker *w1 = w_new(h, "w1", 1, 0);
    fworker w2 = {.sock = h_socket(h, h->wep), .name = "w2", .instance = 9};
    ts_fw_ready store;
    Kosmos__V1__Ready *ready = ts_fw_ready_init(&store, "w2", 9, 1, NULL);
    assert_int_equal(ts_fw_send_ready(w2.sock, ready), KS_OK);
    Kosmos__V1__BrokerToWorker *m = w_recv(h, &w2);
    assert_non_null(m);
    assert_int_equal(m->message_case, KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT);
    assert_int_equal(m->disconnect->code, KOSMOS__V1__DISCONNECT__CODE__CODE_RETRY_LATER);
    assert_true(m->disconnect->has_retry_after_ms && m->disconnect->retry_after_ms > 0);
    kosmos__v1__broker_to_worker__free_unpacked(m, NULL);
    /* An older worker sends Ready again at once: not answered within the interval. */
    assert_int_equal(ts_fw_send_ready(w2.sock, ready), KS_OK);
    assert_int_equal(ts_fw_send_ready(w2.sock, ready), KS_OK);
    w_none(h, &w2);
    fake_now += 1000;
    assert_int_equal(ts_fw_send_ready(w2.sock, ready), KS_OK);
    m = w_try(h, &w2);
    assert_non_null(m);
    assert_int_equal(m->disconnect->code, KOSMOS__V1__DISCONNECT__CODE__CODE_RETRY_LATER);
    kosmos__v1__broker_to_worker__free_unpacked(m, NULL);
    /* w1 leaves; w2 gets in. */
    assert_int_equal(ts_fw_send_disconnect(w1->sock, KOSMOS__V1__DISCONNECT__CODE__CODE_SHUTDOWN,
                                           0),
                     KS_OK);
    h_steps(h, 3);
    w_ready(h, &w2, "w2", 9, 1, NULL, 0);
    w_free(w1);
    zmq_close(w2.sock);
    h_free(h);
}

/* Retriable failures: attempts 1..5, with backoff 1, 2, 4, 8 s (+ jitter); the 5th is final. */
static void test_retry_backoff(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char id[65], got[65];
    uint32_t attempt;
    c_submit_ok(h, c, "a", NULL, id);
    fworker *w = w_new(h, "w", 1, 1);
    for (uint32_t n = 1; n <= 5; n++) {
        w_take(h, w, got, &attempt);
        assert_int_equal(attempt, n);
        assert_int_equal(w_result(h, w, id, n, KOSMOS__V1__STATUS__STATUS_FAILED, true),
                         KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
        Kosmos__V1__ClientReply *r = c_fetch(h, c, "a", id);
        if (n == 5) {
            assert_int_equal(r->fetch->state, KOSMOS__V1__JOB_STATE__JOB_STATE_FAILED);
            assert_true(r->fetch->result->retriable);
            kosmos__v1__client_reply__free_unpacked(r, NULL);
            break;
        }
        assert_int_equal(r->fetch->state, KOSMOS__V1__JOB_STATE__JOB_STATE_RETRY_WAIT);
        uint64_t wait = r->fetch->next_attempt_unix_ms - fake_now, base = 1000ull << (n - 1);
        assert_true(wait >= base && wait < base + 1000);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
        w_credit(w, 1);
        fake_now += base - 1; /* not yet */
        w_heartbeat(w, NULL, 0);
        w_none(h, w);
        fake_now += 1000;
        w_heartbeat(w, NULL, 0);
    }
    w_free(w);
    zmq_close(c);
    h_free(h);
}

static void send_raw(void *sock, int nframes, const void *const *data, const size_t *len)
{
    for (int i = 0; i < nframes; i++)
        assert_true(zmq_send(sock, data[i], len[i], i + 1 < nframes ? ZMQ_SNDMORE : 0) >= 0);
}

/* Protocol breakers are answered or dropped, counted, and others go on being served. */
static void test_violations(void **state)
{
    (void)state;
    harness *h = h_new();
    void *bad = h_socket(h, h->cep);
    void *good = h_socket(h, h->cep);
    char id[65];
    /* Malformed protobuf. */
    {
        const void *f[3] = {"", "KOSMOS1", "\xff\xff\xff"};
        size_t l[3] = {0, 7, 3};
        send_raw(bad, 3, f, l);
        Kosmos__V1__ClientReply *r = c_recv(h, bad);
        assert_int_equal(r->reply_case, KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR);
        assert_int_equal(r->error->code, KOSMOS__V1__ERROR_CODE__ERROR_CODE_MALFORMED);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    /* Wrong frame count: a fetch with a stray 4th frame; request_id 5 decodes. */
    {
        const void *f[4] = {"", "KOSMOS1", "\x08\x05\x5a\x03\x0a\x01X", "junk"};
        size_t l[4] = {0, 7, 7, 4};
        send_raw(bad, 4, f, l);
        Kosmos__V1__ClientReply *r = c_recv(h, bad);
        assert_int_equal(r->error->code, KOSMOS__V1__ERROR_CODE__ERROR_CODE_MALFORMED);
        assert_int_equal(r->request_id, 5);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    /* Other version. */
    {
        const void *f[3] = {"", "KOSMOS2", "\x08\x01"};
        size_t l[3] = {0, 7, 2};
        send_raw(bad, 3, f, l);
        Kosmos__V1__ClientReply *r = c_recv(h, bad);
        assert_int_equal(r->error->code, KOSMOS__V1__ERROR_CODE__ERROR_CODE_PROTOCOL_VERSION);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    /* Unknown request (field 30, a later request type). */
    {
        const void *f[3] = {"", "KOSMOS1", "\x08\x09\xf2\x01\x00"};
        size_t l[3] = {0, 7, 5};
        send_raw(bad, 3, f, l);
        Kosmos__V1__ClientReply *r = c_recv(h, bad);
        assert_int_equal(r->error->code, KOSMOS__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_REQUEST);
        assert_int_equal(r->request_id, 9);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    /* Invalid field number 0 (overlong tag 80 00): malformed (protocol.md §13). */
    {
        const void *f[3] = {"", "KOSMOS1", "\x08\x0a\x80\x00\x01"};
        size_t l[3] = {0, 7, 5};
        send_raw(bad, 3, f, l);
        Kosmos__V1__ClientReply *r = c_recv(h, bad);
        assert_int_equal(r->error->code, KOSMOS__V1__ERROR_CODE__ERROR_CODE_MALFORMED);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    /* Not ours: dropped, nothing answered. */
    {
        const void *f[2] = {"", "HTTP/1.1"};
        size_t l[2] = {0, 8};
        send_raw(bad, 2, f, l);
    }
    /* Non-UTF-8 prompt: rejected INVALID. */
    {
        Kosmos__V1__ClientReply *r = NULL;
        job_opts o = {.text = "bad \xff text"};
        r = c_submit(h, bad, "a", &o);
        assert_int_equal(r->submit->outcome_case, KOSMOS__V1__SUBMIT_REPLY__OUTCOME_REJECTED);
        assert_int_equal(r->submit->rejected->code, KOSMOS__V1__REJECT_CODE__REJECT_CODE_INVALID);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    /* A model nobody offered. */
    {
        job_opts o = {.model = "someone/else"};
        Kosmos__V1__ClientReply *r = c_submit(h, bad, "a", &o);
        assert_int_equal(r->submit->rejected->code,
                         KOSMOS__V1__REJECT_CODE__REJECT_CODE_NO_SUCH_MODEL);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    /* The good client is served all along. */
    c_submit_ok(h, good, "g", NULL, id);
    /* A worker sending a result for a job never leased to it: UNKNOWN_JOB / STALE, no harm. */
    fworker *w = w_new(h, "w", 1, 0);
    assert_int_equal(w_result(h, w, "01NOSUCHJOB0000000000000000", 1, KOSMOS__V1__STATUS__STATUS_OK,
                              false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_UNKNOWN_JOB);
    assert_int_equal(w_result(h, w, id, 1, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STALE);
    assert_int_equal(c_state(h, good, "g", id, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED);
    /* A worker breaking framing is disconnected; a heartbeat from an unknown peer gets
     * NOT_REGISTERED. */
    {
        const void *f[3] = {"", "KOSMOS1", "\xff"};
        size_t l[3] = {0, 7, 1};
        send_raw(w->sock, 3, f, l);
        Kosmos__V1__BrokerToWorker *m = w_recv(h, w);
        assert_int_equal(m->message_case, KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT);
        assert_int_equal(m->disconnect->code, KOSMOS__V1__DISCONNECT__CODE__CODE_PROTOCOL_ERROR);
        kosmos__v1__broker_to_worker__free_unpacked(m, NULL);
        w_heartbeat(w, NULL, 0);
        m = w_recv(h, w);
        assert_int_equal(m->disconnect->code, KOSMOS__V1__DISCONNECT__CODE__CODE_NOT_REGISTERED);
        kosmos__v1__broker_to_worker__free_unpacked(m, NULL);
    }
    kb_stats st;
    kb_broker_stats(h->b, &st);
    assert_true(st.violations >= 6);
    assert_int_equal(c_state(h, good, "g", id, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED);
    w_free(w);
    zmq_close(bad);
    zmq_close(good);
    h_free(h);
}

static void test_oversized_frame(void **state)
{
    (void)state;
    harness *h = h_alloc();
    h->p.max_message_bytes = 1024;
    h->p.max_image_bytes = 4096;
    ts_broker_start(h);
    void *c = h_socket(h, h->cep);
    char big[2048];
    memset(big, 0, sizeof big);
    const void *f[3] = {"", "KOSMOS1", big};
    size_t l[3] = {0, 7, sizeof big};
    send_raw(c, 3, f, l);
    Kosmos__V1__ClientReply *r = c_recv(h, c);
    assert_int_equal(r->error->code, KOSMOS__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    char id[65];
    c_submit_ok(h, c, "a", NULL, id); /* still serving */
    zmq_close(c);
    h_free(h);
}

static void test_isolation(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char id[65];
    c_submit_ok(h, c, "alice", NULL, id);
    Kosmos__V1__ClientReply *r = c_fetch(h, c, "bob", id);
    assert_int_equal(r->error->code, KOSMOS__V1__ERROR_CODE__ERROR_CODE_NOT_FOUND);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__CancelRequest cq = KOSMOS__V1__CANCEL_REQUEST__INIT;
    cq.job_id = id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_CANCEL;
    req.cancel = &cq;
    r = c_call(h, c, "bob", &req, NULL, 0);
    assert_int_equal(r->error->code, KOSMOS__V1__ERROR_CODE__ERROR_CODE_NOT_FOUND);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    assert_int_equal(c_state(h, c, "alice", id, NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED);
    r = c_call(h, c, "alice", &req, NULL, 0);
    assert_true(r->cancel->cancelled);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    r = c_call(h, c, "alice", &req, NULL, 0); /* idempotent */
    assert_false(r->cancel->cancelled);
    assert_int_equal(r->cancel->state, KOSMOS__V1__JOB_STATE__JOB_STATE_CANCELLED);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    zmq_close(c);
    h_free(h);
}

/* Restart: queued jobs survive; a leased job is re-adopted when its worker re-registers listing
 * it, another is requeued after the grace without a crash and runs with the next attempt. */
static void test_restart_recovery(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char ids[3][65], got[65];
    uint32_t attempt;
    for (int i = 0; i < 3; i++)
        c_submit_ok(h, c, "a", NULL, ids[i]);
    fworker *w1 = w_new(h, "w1", 2, 2);
    char leased[2][65];
    w_take(h, w1, leased[0], &attempt);
    w_take(h, w1, leased[1], &attempt);
    ts_broker_start(h);
    for (int i = 0; i < 3; i++)
        assert_false(TERMINAL(c_state(h, c, "a", ids[i], NULL)));
    /* The old broker said goodbye; w1 re-registers (same instance) listing only the first
     * lease (§8.7). */
    Kosmos__V1__BrokerToWorker *bye = w_recv(h, w1);
    assert_non_null(bye);
    assert_int_equal(bye->message_case, KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT);
    assert_int_equal(bye->disconnect->code, KOSMOS__V1__DISCONNECT__CODE__CODE_SHUTDOWN);
    kosmos__v1__broker_to_worker__free_unpacked(bye, NULL);
    Kosmos__V1__Lease l = KOSMOS__V1__LEASE__INIT;
    Kosmos__V1__Lease *ls[1] = {&l};
    l.job_id = leased[0];
    l.has_attempt = true;
    l.attempt = 1;
    w_ready(h, w1, "w1", 7, 2, ls, 1);
    fake_now += 5001; /* past the grace */
    w_heartbeat(w1, ls, 1);
    h_steps(h, 3);
    assert_int_equal(c_state(h, c, "a", leased[0], NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING);
    assert_int_equal(c_state(h, c, "a", leased[1], NULL), KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED);
    assert_int_equal(w_result(h, w1, leased[0], 1, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
    w_credit(w1, 2);
    w_take(h, w1, got, &attempt);
    if (strcmp(got, leased[1]) == 0)
        assert_int_equal(attempt, 2); /* fenced: the old attempt 1 can no longer report */
    w_take(h, w1, got, &attempt);
    if (strcmp(got, leased[1]) == 0)
        assert_int_equal(attempt, 2);
    assert_int_equal(w_result(h, w1, leased[1], 1, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STALE);
    kb_stats st;
    kb_broker_stats(h->b, &st);
    assert_int_equal(st.lease_lapses, 0); /* a restart is not the job's fault */
    w_free(w1);
    zmq_close(c);
    h_free(h);
}

/* A dispatch leaves once its commit is written; the submit's ACCEPTED only once an fdatasync
 * made that commit durable (kb_syncer.h). With the disk's syncs held back, the worker has the
 * job and the client has heard nothing; once they complete, the client hears ACCEPTED for the
 * same job. */
static void test_dispatch_before_sync_accepted_after(void **state)
{
    (void)state;
    kbf_register();
    harness *h = h_new_vfs(KB_FAULTVFS_NAME);
    void *c = h_socket(h, h->cep);
    fworker *w = w_new(h, "host/gpu0", 1, 1);
    h_steps(h, 3);

    atomic_store(&kbf_hold_syncs, true);
    uint64_t request = c_submit_send(c, "a", NULL);
    char dispatched[65];
    uint32_t attempt;
    w_take(h, w, dispatched, &attempt);
    assert_int_equal(attempt, 1);
    h_steps(h, 20);
    zmq_pollitem_t it = {c, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 0), 0); /* no reply before the disk has the job */
    kb_stats st;
    kb_broker_stats(h->b, &st);
    assert_int_equal(st.dispatches, 1);

    atomic_store(&kbf_hold_syncs, false);
    Kosmos__V1__ClientReply *r = c_recv(h, c);
    assert_int_equal(r->request_id, request);
    assert_int_equal(r->submit->outcome_case, KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED);
    assert_string_equal(r->submit->accepted->job_id, dispatched);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    kb_broker_stats(h->b, &st);
    uint64_t syncs = 0;
    for (int k = 0; k < KB_DURATION_BUCKETS; k++)
        syncs += st.sync_durations.buckets[k];
    assert_true(syncs >= 1);
    w_free(w);
    zmq_close(c);
    h_free(h);
}

/* Disk full: no ACCEPTED without a commit; busy instead; the broker goes on and recovers. An
 * fsync error stops it (fail-stop) and a restart recovers every accepted job. */
static void test_disk_full_and_fail_stop(void **state)
{
    (void)state;
    kbf_register();
    harness *h = h_new_vfs(KB_FAULTVFS_NAME);
    void *c = h_socket(h, h->cep);
    char accepted[16][65];
    int n_acc = 0;
    c_submit_ok(h, c, "a", NULL, accepted[n_acc++]);
    kbf_fail_writes = true;
    for (int i = 0; i < 3; i++) {
        Kosmos__V1__ClientReply *r = c_submit(h, c, "a", NULL);
        assert_int_equal(r->submit->outcome_case, KOSMOS__V1__SUBMIT_REPLY__OUTCOME_BUSY);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    kb_stats st;
    kb_broker_stats(h->b, &st);
    assert_true(st.commit_failures >= 3);
    kbf_fail_writes = false;
    c_submit_ok(h, c, "a", NULL, accepted[n_acc++]);
    c_submit_ok(h, c, "a", NULL, accepted[n_acc++]);
    /* fsync fails: the broker stops (step returns KS_ERR_IO), no ACCEPTED was sent. */
    kbf_fail_syncs = true;
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__SubmitRequest sub = KOSMOS__V1__SUBMIT_REQUEST__INIT;
    Kosmos__V1__Job job;
    kosmos__v1__job__init(&job);
    Kosmos__V1__Prompt prompt = KOSMOS__V1__PROMPT__INIT;
    Kosmos__V1__Prompt *prompts[1] = {&prompt};
    prompt.text = "x";
    job.n_prompts = 1;
    job.prompts = prompts;
    job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_URI;
    job.image_uri = "file:///nowhere"; /* no roots: rejected without a write... */
    job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_DATA;
    job.image_data.data = (uint8_t *)test_image;
    job.image_data.len = sizeof test_image;
    sub.job = &job;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT;
    req.submit = &sub;
    c_send(c, "a", &req, NULL, 0);
    ks_status s = KS_OK;
    for (int i = 0; i < 200 && s == KS_OK; i++)
        s = kb_broker_step(h->b, 5);
    assert_int_equal(s, KS_ERR_IO);
    zmq_pollitem_t it = {c, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 50) > 0) {
        Kosmos__V1__ClientReply *r = c_recv(h, c);
        assert_int_not_equal(r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT &&
                                 r->submit->outcome_case ==
                                     KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED,
                             1);
        kosmos__v1__client_reply__free_unpacked(r, NULL);
    }
    /* A disk that still cannot sync: the syncer's thread fails its start (the first sync of
     * what the stopped broker left), and the broker's start fails with its message. */
    kb_broker_destroy(&h->b);
    assert_int_equal(kb_broker_new(&h->p, &h->b), KS_ERR_IO);
    assert_null(h->b);
    assert_non_null(strstr(ks_error_message(), "the WAL sync connection"));
    kbf_fail_syncs = false;
    ts_broker_start(h);
    /* Ledger: every accepted job is still there, none lost. */
    int lost = 0;
    for (int i = 0; i < n_acc; i++)
        if (c_state(h, c, "a", accepted[i], NULL) != KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED)
            lost++;
    assert_int_equal(lost, 0);
    zmq_close(c);
    h_free(h);
}

static void test_long_poll(void **state)
{
    (void)state;
    harness *h = h_new();
    void *c = h_socket(h, h->cep);
    char id[65], got[65];
    uint32_t attempt;
    c_submit_ok(h, c, "a", NULL, id);
    fworker *w = w_new(h, "w", 1, 1);
    w_take(h, w, got, &attempt);
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__FetchRequest f = KOSMOS__V1__FETCH_REQUEST__INIT;
    f.job_id = id;
    f.has_wait_ms = true;
    f.wait_ms = 20000;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH;
    req.fetch = &f;
    uint64_t rq = c_send(c, "a", &req, NULL, 0);
    h_steps(h, 5);
    zmq_pollitem_t it = {c, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 0), 0); /* held */
    kb_stats st;
    kb_broker_stats(h->b, &st);
    assert_int_equal(st.waiters, 1);
    assert_int_equal(w_result(h, w, id, 1, KOSMOS__V1__STATUS__STATUS_OK, false),
                     KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED);
    Kosmos__V1__ClientReply *r = c_recv(h, c);
    assert_int_equal(r->request_id, rq);
    assert_int_equal(r->fetch->state, KOSMOS__V1__JOB_STATE__JOB_STATE_DONE);
    kosmos__v1__client_reply__free_unpacked(r, NULL);
    w_free(w);
    zmq_close(c);
    h_free(h);
}

/* docs/protocol.md 5.1: image_uri under --image-root by whole path components. */
static void test_image_uri_roots(void **state)
{
    (void)state;
    const char *roots[] = {"/x/root", "/y/img/"};
    static const char *const ok[] = {"/x/root",
                                     "/x/root/a.png",
                                     "/x/root/sub/a.png",
                                     "file:///x/root/a.png",
                                     "file://localhost/x/root/a.png",
                                     "/y/img/a.png",
                                     "/y/img",
                                     "/x/root//a.png"};
    static const char *const bad[] = {"/x/rootx",
                                      "/x/rootx/a.png",
                                      "/x/roo",
                                      "/x/root/../etc/passwd",
                                      "/x/root/..",
                                      "/x/root/./a.png",
                                      "/x/root/.",
                                      "x/root/a.png",
                                      "file://x/root/a.png",
                                      "file://localhost",
                                      "http:///x/root/a.png",
                                      "",
                                      "/y/imgx/a.png",
                                      "/x",
                                      "/"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_true(kb_job_uri_allowed(ok[i], roots, 2));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(kb_job_uri_allowed(bad[i], roots, 2));
    assert_false(kb_job_uri_allowed("/x/root/a.png", roots, 0)); /* no roots: none */
    const char *slash[] = {"/"};
    assert_true(kb_job_uri_allowed("/any/a.png", slash, 1));
    assert_false(kb_job_uri_allowed("/any/../a.png", slash, 1));
    assert_true(kb_job_root_valid("/x/root"));
    assert_false(kb_job_root_valid("x/root"));
    assert_false(kb_job_root_valid("/x/../root"));
    assert_false(kb_job_root_valid(""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_submit_dispatch_result_fetch_ack),
        cmocka_unit_test(test_idempotency),
        cmocka_unit_test(test_credit_priority_fifo),
        cmocka_unit_test(test_deadline_expired),
        cmocka_unit_test(test_deadline_never),
        cmocka_unit_test(test_admission_limits),
        cmocka_unit_test(test_dispatch_skips_by_worker_kind),
        cmocka_unit_test(test_dispatch_when_model_table_full),
        cmocka_unit_test(test_curve_handler_death_stops_broker),
        cmocka_unit_test(test_curve_certificate_files),
        cmocka_unit_test(test_lease_lapse_stale_poison),
        cmocka_unit_test(test_retry_backoff),
        cmocka_unit_test(test_lease_started_accounting),
        cmocka_unit_test(test_refused_for_now),
        cmocka_unit_test(test_violations),
        cmocka_unit_test(test_oversized_frame),
        cmocka_unit_test(test_isolation),
        cmocka_unit_test(test_restart_recovery),
        cmocka_unit_test(test_disk_full_and_fail_stop),
        cmocka_unit_test(test_dispatch_before_sync_accepted_after),
        cmocka_unit_test(test_long_poll),
        cmocka_unit_test(test_image_uri_roots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
