/* test_client: libkosmos (kosmos/client.h) against the real broker core, run in-process on its
 * own thread (kb_broker_run, real clock, ipc:// in a temporary folder), and a fake worker thread
 * that speaks the worker protocol (Ready, Credit, Heartbeat, Result) and answers each dispatch
 * at once with a fixed grounded result - except prompts containing "hold", which it keeps
 * running until the broker cancels them. Fake brokers (a bare ROUTER thread) cover what a real
 * broker does not do on purpose: lose a request, speak another protocol version.
 *
 * Covers submit, idempotent resubmit, CONFLICT, fetch after reconnect (a new client object),
 * cancel, status, BUSY, REJECTED, timeouts (no broker, job still pending), lazy-pirate resend,
 * CURVE (keys from ZPL certificates; an unknown key gets nothing), one client per thread,
 * argument errors and kosmos_ground_file. The real worker runs in tests/integration and
 * tests/install. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fake_worker_msgs.h"
#include "inproc_broker.h"
#include "kosmos/client.h"
#include "test_curve_cert.h"
#include "test_skip.h"
#include "wire.h"

static const uint8_t test_image[] = {0x89, 'P', 'N', 'G', 1, 2, 3, 4, 5, 6, 7, 8};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- fake worker --------------------------------------------------------------------------- */

#define FW_MAX_HELD 16

typedef struct fworker {
    void *zctx;
    const char *endpoint;
    volatile int stop;
    pthread_t thread;
    struct {
        char id[65];
        uint32_t attempt;
    } held[FW_MAX_HELD];
    int n_held;
    int dispatches;
} fworker;

/* The seed the fake worker reports for prompt i of an OK result (above 2^32: all 64 bits travel). */
#define FW_SEED(i) (0x0123456789abcdefull + (i))

/* The snowman of protocol.md §12, for any job; status OK unless told otherwise. A FAILED result
 * is final for the job but says each prompt alone might succeed again (prompt retriable).
 * `started_ms` is when the job arrived (Unix ms); finished is now. */
static void fw_result(void *sock, const char *job_id, uint32_t attempt, int status,
                      size_t n_prompts, uint64_t started_ms)
{
    Kosmos__V1__Result r = KOSMOS__V1__RESULT__INIT;
    Kosmos__V1__PromptResult pr[2];
    Kosmos__V1__PromptResult *prs[2] = {&pr[0], &pr[1]};
    Kosmos__V1__Entity e = KOSMOS__V1__ENTITY__INIT;
    Kosmos__V1__Entity *es[1] = {&e};
    Kosmos__V1__ResultBox rb = KOSMOS__V1__RESULT_BOX__INIT;
    Kosmos__V1__ResultBox *rbs[1] = {&rb};
    Kosmos__V1__NormalizedBox nb = KOSMOS__V1__NORMALIZED_BOX__INIT,
                              px = KOSMOS__V1__NORMALIZED_BOX__INIT;
    Kosmos__V1__NormalizedBox *pxs[1] = {&px};
    Kosmos__V1__PatchBox pb = KOSMOS__V1__PATCH_BOX__INIT;
    Kosmos__V1__Timings t = KOSMOS__V1__TIMINGS__INIT;
    uint32_t ids[4] = {64007, 10, 2, 2};
    nb.has_x1 = nb.has_y1 = nb.has_x2 = nb.has_y2 = true;
    nb.x1 = 0.390625, nb.y1 = 0.046875, nb.x2 = 0.984375, nb.y2 = 0.828125;
    px.has_x1 = px.has_y1 = px.has_x2 = px.has_y2 = true;
    px.x1 = 400, px.y1 = 48, px.x2 = 1008, px.y2 = 848;
    pb.has_ul = pb.has_lr = true;
    pb.ul = 44, pb.lr = 863;
    rb.box = &nb;
    rb.patch = &pb;
    e.phrase = "a snowman";
    e.has_start_cp = e.has_end_cp = e.has_start_byte = e.has_end_byte = true;
    e.start_cp = 12, e.end_cp = 21, e.start_byte = 12, e.end_byte = 21;
    e.n_boxes = 1, e.boxes = rbs, e.n_boxes_px = 1, e.boxes_px = pxs;
    t.has_decode_ms = t.has_new_tokens = true;
    t.decode_ms = 12.5, t.new_tokens = 4;
    for (size_t i = 0; i < 2; i++) {
        kosmos__v1__prompt_result__init(&pr[i]);
        pr[i].has_prompt_index = pr[i].has_status = true;
        pr[i].prompt_index = (uint32_t)i;
        pr[i].status = status;
        if (status == KOSMOS__V1__STATUS__STATUS_OK) {
            pr[i].text = "An image of a snowman warming himself by a fire.";
            pr[i].raw_text = "<grounding> An image of<phrase> a snowman</phrase>";
            pr[i].n_entities = 1, pr[i].entities = es;
            pr[i].n_generated_ids = 4, pr[i].generated_ids = ids;
            pr[i].timings = &t;
            pr[i].has_seed = true;
            pr[i].seed = FW_SEED(i);
        } else {
            pr[i].message = "fake failure";
            pr[i].has_retriable = status == KOSMOS__V1__STATUS__STATUS_FAILED;
            pr[i].retriable = true;
        }
    }
    r.job_id = (char *)job_id;
    r.has_attempt = r.has_status = true;
    r.attempt = attempt;
    r.status = status;
    if (status != KOSMOS__V1__STATUS__STATUS_OK)
        r.message = "fake failure";
    r.n_prompts = n_prompts > 2 ? 2 : n_prompts;
    r.prompts = prs;
    r.has_image_width = r.has_image_height = true;
    r.image_width = 1024, r.image_height = 1024;
    r.worker_name = "fake/w0";
    r.device_name = "fake-device";
    r.has_started_unix_ms = r.has_finished_unix_ms = true;
    r.started_unix_ms = started_ms;
    r.finished_unix_ms = unix_ms();
    ts_fw_send_result(sock, &r);
}

static void *fw_main(void *arg)
{
    fworker *w = arg;
    void *sock = zmq_socket(w->zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_connect(sock, w->endpoint);
    ts_fw_ready ready;
    ts_fw_ready_init(&ready, "fake/w0", 99, 8, "microsoft/kosmos-2-patch14-224");
    ts_fw_ready_device(&ready, "fake-device", "kosmos tests", 1u << 30);
    ts_fw_send_ready(sock, &ready.ready);
    bool welcomed = false;
    uint64_t last_hb = now_ms(), last_ready = now_ms();
    while (!w->stop) {
        uint64_t now = now_ms();
        if (!welcomed && now - last_ready > 500) {
            ts_fw_send_ready(sock, &ready.ready);
            last_ready = now;
        }
        if (welcomed && now - last_hb >= 200) {
            Kosmos__V1__Lease leases[FW_MAX_HELD], *lp[FW_MAX_HELD];
            for (int i = 0; i < w->n_held; i++) {
                kosmos__v1__lease__init(&leases[i]);
                leases[i].job_id = w->held[i].id;
                leases[i].has_attempt = true;
                leases[i].attempt = w->held[i].attempt;
                lp[i] = &leases[i];
            }
            ts_fw_send_heartbeat(sock, lp, (size_t)w->n_held);
            last_hb = now;
        }
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        kp_inbound *in = NULL;
        if (kp_recv(sock, false, KP_BROKER_TO_WORKER, NULL, ZMQ_DONTWAIT, &in) != KS_OK || !in)
            continue;
        const Kosmos__V1__BrokerToWorker *b =
            (const Kosmos__V1__BrokerToWorker *)kp_inbound_envelope(in);
        if (kp_inbound_verdict(in) != KP_VALID || !b) {
            kp_inbound_destroy(&in);
            continue;
        }
        if (b->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_WELCOME && !welcomed) {
            welcomed = true;
            ts_fw_send_credit(sock, 8);
        } else if (b->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH) {
            const Kosmos__V1__Dispatch *d = b->dispatch;
            uint64_t arrived = unix_ms();
            const char *text = d->job->n_prompts ? d->job->prompts[0]->text : "";
            w->dispatches++;
            if (strstr(text, "hold") && w->n_held < FW_MAX_HELD) {
                snprintf(w->held[w->n_held].id, 65, "%s", d->job_id);
                w->held[w->n_held].attempt = d->attempt;
                w->n_held++;
            } else {
                int st = strstr(text, "fail") ? KOSMOS__V1__STATUS__STATUS_FAILED
                                              : KOSMOS__V1__STATUS__STATUS_OK;
                fw_result(sock, d->job_id, d->attempt, st, d->job->n_prompts, arrived);
                ts_fw_send_credit(sock, 1);
            }
        } else if (b->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_CANCEL) {
            for (int i = 0; i < w->n_held; i++) {
                if (strcmp(w->held[i].id, b->cancel->job_id) != 0)
                    continue;
                fw_result(sock, w->held[i].id, w->held[i].attempt,
                          KOSMOS__V1__STATUS__STATUS_CANCELLED, 1, unix_ms());
                ts_fw_send_credit(sock, 1);
                w->held[i] = w->held[--w->n_held];
                break;
            }
        }
        kp_inbound_destroy(&in);
    }
    zmq_close(sock);
    return NULL;
}

/* ---- farm: broker thread + fake worker thread ---------------------------------------------- */

typedef struct farm {
    ts_broker br;
    fworker w;
    bool worker; /* w runs */
} farm;

/* max_queued 0 = the default. */
static farm *farm_start(bool worker, uint64_t max_queued)
{
    farm *f = calloc(1, sizeof *f);
    assert_non_null(f);
    ts_broker_init(&f->br, "kltest");
    f->br.p.heartbeat_ms = 200;
    f->br.p.heartbeat_liveness = 10;
    if (max_queued)
        f->br.p.max_queued = max_queued;
    ts_broker_start_thread(&f->br);
    if (worker) {
        f->worker = true;
        f->w.zctx = f->br.zctx;
        f->w.endpoint = f->br.wep;
        assert_int_equal(pthread_create(&f->w.thread, NULL, fw_main, &f->w), 0);
    }
    return f;
}

static void farm_stop(farm *f)
{
    if (f->worker) {
        f->w.stop = 1;
        pthread_join(f->w.thread, NULL);
    }
    ts_broker_fini(&f->br);
    free(f);
}

static kosmos_client_t *client_for(const farm *f, const char *client_id)
{
    kosmos_client_params_t p;
    kosmos_client_params_init(&p);
    p.broker = f->br.cep;
    p.client_id = client_id;
    kosmos_client_t *c = kosmos_client_new(&p);
    assert_non_null(c);
    return c;
}

static kosmos_job_t *job_with(const char *prompt)
{
    kosmos_job_t *j = kosmos_job_new();
    assert_non_null(j);
    assert_int_equal(kosmos_job_set_image_data(j, test_image, sizeof test_image), KOSMOS_OK);
    assert_int_equal(kosmos_job_add_prompt(j, prompt), KOSMOS_OK);
    return j;
}

static int setup_farm(void **state)
{
    *state = farm_start(true, 0);
    return 0;
}

static int teardown_farm(void **state)
{
    farm_stop(*state);
    return 0;
}

/* Waits until the fake worker is registered (so dispatch can happen). */
static void wait_worker(kosmos_client_t *c)
{
    for (int i = 0; i < 100; i++) {
        kosmos_broker_status_t *s = NULL;
        assert_int_equal(kosmos_client_status(c, true, &s), KOSMOS_OK);
        size_t n = s->worker_count;
        uint32_t credit = n ? s->workers[0].credit : 0;
        kosmos_broker_status_destroy(&s);
        if (n == 1 && credit > 0)
            return;
        sleep_ms(50);
    }
    fail_msg("the fake worker never registered");
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_submit_wait_ack(void **state)
{
    farm *f = *state;
    kosmos_client_t *c = client_for(f, "alice");
    wait_worker(c);
    kosmos_job_t *j = job_with("<grounding> An image of");
    kosmos_job_set_label(j, "snowman-1");
    kosmos_job_set_outputs(j, KOSMOS_OUTPUT_DEFAULT | KOSMOS_OUTPUT_GENERATED_IDS);
    kosmos_generation_t g;
    kosmos_generation_init(&g);
    g.max_new_tokens = 64;
    assert_int_equal(kosmos_job_set_generation(j, &g), KOSMOS_OK);
    char id[KOSMOS_JOB_ID_SIZE];
    kosmos_submit_info_t info;
    uint64_t submitted_ms = unix_ms();
    assert_int_equal(kosmos_client_submit(c, j, NULL, id, &info), KOSMOS_OK);
    assert_int_equal(strlen(id), 26);
    assert_string_equal(info.job_id, id);
    assert_false(info.duplicate);
    assert_true(strncmp(info.idempotency_key, "kl-", 3) == 0);
    assert_int_not_equal(kosmos_client_broker_instance(c), 0);

    kosmos_result_t *r = NULL;
    assert_int_equal(kosmos_client_wait(c, id, 10000, &r), KOSMOS_OK);
    uint64_t received_ms = unix_ms();
    assert_non_null(r);
    assert_string_equal(kosmos_result_job_id(r), id);
    assert_int_equal(kosmos_result_status(r), KOSMOS_RESULT_OK);
    assert_false(kosmos_result_retriable(r));
    assert_string_equal(kosmos_result_message(r), "");
    assert_int_equal(kosmos_result_attempt(r), 1);
    assert_string_equal(kosmos_result_worker(r), "fake/w0");
    assert_string_equal(kosmos_result_device(r), "fake-device");
    assert_int_equal(kosmos_result_image_width(r), 1024);
    assert_string_equal(kosmos_result_label(r), "snowman-1");
    assert_int_equal(kosmos_result_prompt_count(r), 1);
    assert_int_equal(kosmos_result_prompt_status(r, 0), KOSMOS_RESULT_OK);
    assert_false(kosmos_result_prompt_retriable(r, 0));
    /* the worker's clock, passed through the broker: within this test's submit .. receive */
    uint64_t started = kosmos_result_started_unix_ms(r),
             finished = kosmos_result_finished_unix_ms(r);
    assert_true(submitted_ms <= started);
    assert_true(started <= finished);
    assert_true(finished <= received_ms);
    uint64_t seed = 0;
    assert_true(kosmos_result_seed(r, 0, &seed));
    assert_true(seed == FW_SEED(0));
    assert_true(kosmos_result_seed(r, 0, NULL));
    assert_false(kosmos_result_seed(r, 1, &seed)); /* one prompt only */
    assert_true(seed == FW_SEED(0));               /* untouched */
    assert_string_equal(kosmos_result_text(r, 0),
                        "An image of a snowman warming himself by a fire.");
    assert_non_null(kosmos_result_raw_text(r, 0));
    size_t n_ids = 0;
    const uint32_t *ids = kosmos_result_generated_ids(r, 0, &n_ids);
    assert_int_equal(n_ids, 4);
    assert_int_equal(ids[3], 2);
    const kosmos_timings_t *t = kosmos_result_timings(r, 0);
    assert_non_null(t);
    assert_true(t->decode_ms == 12.5);
    assert_int_equal(t->new_tokens, 4);
    assert_true(t->load_ms < 0); /* not reported */
    assert_int_equal(kosmos_result_entity_count(r, 0), 1);
    const kosmos_entity_t *e = kosmos_result_entity(r, 0, 0);
    assert_non_null(e);
    assert_string_equal(e->phrase, "a snowman");
    assert_int_equal(e->start_cp, 12);
    assert_int_equal(e->end_cp, 21);
    assert_int_equal(e->start_byte, 12);
    assert_int_equal(e->end_byte, 21);
    assert_int_equal(e->box_count, 1);
    assert_true(e->boxes[0].x1 == 0.390625 && e->boxes[0].y2 == 0.828125);
    assert_int_equal(e->patch_ul[0], 44);
    assert_int_equal(e->patch_lr[0], 863);
    assert_non_null(e->boxes_px);
    assert_true(e->boxes_px[0].x1 == 400.0 && e->boxes_px[0].y2 == 848.0);
    /* out of range indices give empty values */
    assert_null(kosmos_result_entity(r, 0, 1));
    assert_null(kosmos_result_entity(r, 5, 0));
    assert_string_equal(kosmos_result_text(r, 5), "");
    kosmos_result_destroy(&r);
    assert_null(r);

    assert_int_equal(kosmos_client_ack(c, id), KOSMOS_OK);
    assert_int_equal(kosmos_client_ack(c, id), KOSMOS_OK); /* idempotent */
    kosmos_job_info_t ji;
    assert_int_equal(kosmos_client_poll(c, id, &ji, &r), KOSMOS_OK);
    assert_int_equal(ji.state, KOSMOS_STATE_ACKED);
    assert_null(r);
    assert_int_equal(kosmos_client_wait(c, id, 1000, &r), KOSMOS_ERR_INVALID_STATE);
    kosmos_job_destroy(&j);
    kosmos_client_destroy(&c);
    assert_null(c);
}

static void test_idempotent_resubmit_and_conflict(void **state)
{
    farm *f = *state;
    kosmos_client_t *c = client_for(f, "bob");
    kosmos_job_t *j = job_with("<grounding> An image of");
    char id1[KOSMOS_JOB_ID_SIZE], id2[KOSMOS_JOB_ID_SIZE];
    kosmos_submit_info_t info;
    assert_int_equal(kosmos_client_submit(c, j, "order-42", id1, &info), KOSMOS_OK);
    assert_false(info.duplicate);
    assert_string_equal(info.idempotency_key, "order-42");
    /* the same job again, from a new client object with the same identity: the first job */
    kosmos_client_t *c2 = client_for(f, "bob");
    assert_int_equal(kosmos_client_submit(c2, j, "order-42", id2, &info), KOSMOS_OK);
    assert_true(info.duplicate);
    assert_string_equal(id1, id2);
    /* other contents under the same key: CONFLICT naming the first job */
    kosmos_job_t *j2 = job_with("<grounding> Something else");
    assert_int_equal(kosmos_client_submit(c2, j2, "order-42", id2, &info), KOSMOS_ERR_CONFLICT);
    assert_string_equal(info.job_id, id1);
    assert_string_equal(id2, "");
    assert_non_null(strstr(kosmos_error_message(), "order-42"));
    /* another identity has its own key space */
    kosmos_client_t *c3 = client_for(f, "carol");
    assert_int_equal(kosmos_client_submit(c3, j2, "order-42", id2, &info), KOSMOS_OK);
    assert_false(info.duplicate);
    assert_string_not_equal(id1, id2);
    /* no key: each submit is a new job */
    char a[KOSMOS_JOB_ID_SIZE], b[KOSMOS_JOB_ID_SIZE];
    assert_int_equal(kosmos_client_submit(c, j, NULL, a, NULL), KOSMOS_OK);
    assert_int_equal(kosmos_client_submit(c, j, NULL, b, NULL), KOSMOS_OK);
    assert_string_not_equal(a, b);
    kosmos_job_destroy(&j);
    kosmos_job_destroy(&j2);
    kosmos_client_destroy(&c);
    kosmos_client_destroy(&c2);
    kosmos_client_destroy(&c3);
}

static void test_fetch_after_reconnect(void **state)
{
    farm *f = *state;
    char id[KOSMOS_JOB_ID_SIZE];
    kosmos_client_t *c = client_for(f, "dave");
    kosmos_job_t *j = job_with("<grounding> An image of");
    kosmos_job_add_prompt(j, "<grounding> Describe");
    assert_int_equal(kosmos_client_submit(c, j, "dave-1", id, NULL), KOSMOS_OK);
    kosmos_client_destroy(&c); /* the program "restarts" */
    kosmos_job_destroy(&j);

    c = client_for(f, "dave");
    kosmos_result_t *r = NULL;
    assert_int_equal(kosmos_client_wait(c, id, 10000, &r), KOSMOS_OK);
    assert_int_equal(kosmos_result_prompt_count(r), 2);
    assert_string_equal(kosmos_result_job_id(r), id);
    kosmos_result_destroy(&r);
    kosmos_job_info_t ji;
    assert_int_equal(kosmos_client_fetch(c, id, 0, &ji, &r), KOSMOS_OK);
    assert_int_equal(ji.state, KOSMOS_STATE_DONE);
    assert_int_equal(ji.attempt, 1);
    assert_string_equal(ji.job_id, id);
    assert_non_null(r);
    kosmos_result_destroy(&r);
    /* another identity does not see it */
    kosmos_client_t *other = client_for(f, "eve");
    assert_int_equal(kosmos_client_poll(other, id, &ji, &r), KOSMOS_ERR_NOT_FOUND);
    assert_null(r);
    assert_non_null(strstr(kosmos_error_message(), "NOT_FOUND"));
    kosmos_client_destroy(&other);
    kosmos_client_destroy(&c);
}

static void test_cancel_and_pending(void **state)
{
    farm *f = *state;
    kosmos_client_t *c = client_for(f, "frank");
    wait_worker(c);
    kosmos_job_t *j = job_with("<grounding> hold this one");
    char id[KOSMOS_JOB_ID_SIZE];
    assert_int_equal(kosmos_client_submit(c, j, NULL, id, NULL), KOSMOS_OK);
    kosmos_result_t *r = NULL;
    /* the worker holds it: waiting runs out */
    uint64_t t0 = now_ms();
    assert_int_equal(kosmos_client_wait(c, id, 300, &r), KOSMOS_ERR_PENDING);
    assert_true(now_ms() - t0 >= 250);
    assert_null(r);
    kosmos_job_info_t ji;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(kosmos_client_poll(c, id, &ji, NULL), KOSMOS_OK);
        if (ji.state == KOSMOS_STATE_RUNNING)
            break;
        sleep_ms(20);
    }
    assert_int_equal(ji.state, KOSMOS_STATE_RUNNING);
    bool cancelled = false;
    kosmos_job_state_t st;
    assert_int_equal(kosmos_client_cancel(c, id, &cancelled, &st), KOSMOS_OK);
    assert_true(cancelled);
    assert_int_equal(st, KOSMOS_STATE_CANCELLED);
    assert_int_equal(kosmos_client_wait(c, id, 5000, &r), KOSMOS_OK);
    assert_int_equal(kosmos_result_status(r), KOSMOS_RESULT_CANCELLED);
    assert_int_equal(kosmos_result_prompt_status(r, 0), KOSMOS_RESULT_CANCELLED);
    kosmos_result_destroy(&r);
    /* idempotent: already terminal */
    assert_int_equal(kosmos_client_cancel(c, id, &cancelled, &st), KOSMOS_OK);
    assert_false(cancelled);
    assert_int_equal(st, KOSMOS_STATE_CANCELLED);
    /* a failed job still comes back as a result */
    kosmos_job_t *jf = job_with("<grounding> fail please");
    assert_int_equal(kosmos_client_submit(c, jf, NULL, id, NULL), KOSMOS_OK);
    assert_int_equal(kosmos_client_wait(c, id, 10000, &r), KOSMOS_OK);
    assert_int_equal(kosmos_result_status(r), KOSMOS_RESULT_FAILED);
    assert_false(kosmos_result_retriable(r));
    assert_string_equal(kosmos_result_message(r), "fake failure");
    assert_string_equal(kosmos_result_status_name(kosmos_result_status(r)), "failed");
    /* per prompt: failed, but that prompt alone might pass; no seed without a caption */
    assert_int_equal(kosmos_result_prompt_status(r, 0), KOSMOS_RESULT_FAILED);
    assert_true(kosmos_result_prompt_retriable(r, 0));
    assert_false(kosmos_result_prompt_retriable(r, 1)); /* out of range */
    assert_string_equal(kosmos_result_prompt_message(r, 0), "fake failure");
    uint64_t seed = 7;
    assert_false(kosmos_result_seed(r, 0, &seed));
    assert_true(seed == 7);
    assert_true(kosmos_result_started_unix_ms(r) > 0);
    kosmos_result_destroy(&r);
    kosmos_job_destroy(&j);
    kosmos_job_destroy(&jf);
    kosmos_client_destroy(&c);
}

static void test_status(void **state)
{
    farm *f = *state;
    kosmos_client_t *c = client_for(f, NULL);
    wait_worker(c);
    kosmos_job_t *j = job_with("<grounding> An image of");
    char id[KOSMOS_JOB_ID_SIZE];
    kosmos_result_t *r = NULL;
    assert_int_equal(kosmos_client_submit(c, j, NULL, id, NULL), KOSMOS_OK);
    assert_int_equal(kosmos_client_wait(c, id, 10000, &r), KOSMOS_OK);
    kosmos_result_destroy(&r);
    kosmos_broker_status_t *s = NULL;
    assert_int_equal(kosmos_client_status(c, true, &s), KOSMOS_OK);
    assert_non_null(s->broker_version);
    assert_int_equal(s->broker_instance, kosmos_client_broker_instance(c));
    assert_int_equal(s->worker_count, 1);
    assert_string_equal(s->workers[0].name, "fake/w0");
    assert_string_equal(s->workers[0].device_name, "fake-device");
    assert_int_equal(s->workers[0].batch_capacity, 8);
    assert_true(s->workers[0].credit > 0);
    assert_true(s->queue[KOSMOS_STATE_DONE] >= 1);
    assert_true(s->total_submitted >= 1);
    assert_true(s->total_done >= 1);
    kosmos_broker_status_destroy(&s);
    assert_null(s);
    assert_int_equal(kosmos_client_status(c, false, &s), KOSMOS_OK);
    assert_int_equal(s->worker_count, 0);
    kosmos_broker_status_destroy(&s);
    kosmos_job_destroy(&j);
    kosmos_client_destroy(&c);
}

static void test_rejected(void **state)
{
    farm *f = *state;
    kosmos_client_t *c = client_for(f, "grace");
    kosmos_job_t *j = job_with("<grounding> An image of");
    kosmos_submit_info_t info;
    char id[KOSMOS_JOB_ID_SIZE];
    assert_int_equal(kosmos_job_set_deadline(j, unix_ms() - 60000), KOSMOS_OK);
    assert_int_equal(kosmos_client_submit(c, j, NULL, id, &info), KOSMOS_ERR_REJECTED);
    assert_int_equal(info.reject_code, KOSMOS_REJECT_EXPIRED);
    assert_non_null(strstr(kosmos_error_message(), "REJECT_CODE_EXPIRED"));
    kosmos_job_destroy(&j);
    /* no --image-root: every image URI is refused */
    j = kosmos_job_new();
    assert_int_equal(kosmos_job_set_image_uri(j, "/shared/a.png"), KOSMOS_OK);
    assert_int_equal(kosmos_job_add_prompt(j, "<grounding> An image of"), KOSMOS_OK);
    assert_int_equal(kosmos_client_submit(c, j, NULL, id, &info), KOSMOS_ERR_REJECTED);
    assert_int_equal(info.reject_code, KOSMOS_REJECT_IMAGE_URI_NOT_ALLOWED);
    kosmos_job_destroy(&j);
    /* a requirement nobody offers */
    j = job_with("<grounding> An image of");
    kosmos_job_set_model(j, "no/such-model", NULL);
    assert_int_equal(kosmos_client_submit(c, j, NULL, id, &info), KOSMOS_ERR_REJECTED);
    assert_int_equal(info.reject_code, KOSMOS_REJECT_NO_SUCH_MODEL);
    kosmos_job_destroy(&j);
    /* wrong phrase-box count is the broker's to find */
    j = job_with("<grounding><phrase> It</phrase> is");
    kosmos_box_t two[1] = {{0.1, 0.1, 0.5, 0.5}};
    assert_int_equal(kosmos_job_add_phrase_boxes(j, two, 1), KOSMOS_OK);
    assert_int_equal(kosmos_job_add_phrase_boxes(j, NULL, 0), KOSMOS_OK);
    assert_int_equal(kosmos_client_submit(c, j, NULL, id, &info), KOSMOS_ERR_REJECTED);
    assert_int_equal(info.reject_code, KOSMOS_REJECT_INVALID);
    kosmos_job_destroy(&j);
    kosmos_client_destroy(&c);
}

static void test_busy(void **state)
{
    (void)state;
    farm *f = farm_start(false, 1); /* one unfinished job at most, no worker */
    kosmos_client_t *c = client_for(f, "henry");
    kosmos_job_t *j = job_with("<grounding> An image of");
    char id[KOSMOS_JOB_ID_SIZE];
    kosmos_submit_info_t info;
    assert_int_equal(kosmos_client_submit(c, j, "k1", id, &info), KOSMOS_OK);
    assert_int_equal(kosmos_client_submit(c, j, "k2", id, &info), KOSMOS_ERR_BUSY);
    assert_true(info.retry_after_ms > 0);
    assert_int_equal(info.queue_depth, 1);
    assert_string_equal(id, "");
    assert_string_equal(kosmos_error_name(KOSMOS_ERR_BUSY), "busy");
    /* the same key again is still the first job, busy or not */
    assert_int_equal(kosmos_client_submit(c, j, "k1", id, &info), KOSMOS_OK);
    assert_true(info.duplicate);
    kosmos_job_destroy(&j);
    kosmos_client_destroy(&c);
    farm_stop(f);
}

static void test_timeouts_and_arguments(void **state)
{
    (void)state;
    kosmos_client_params_t p;
    kosmos_client_params_init(&p);
    assert_int_equal(p.reply_timeout_ms, 5000);
    assert_int_equal(p.retries, 2);
    assert_null(kosmos_client_new(&p)); /* no broker */
    assert_non_null(strstr(kosmos_error_message(), "endpoint"));
    assert_null(kosmos_client_new(NULL));
    p.broker = "nonsense://x";
    assert_null(kosmos_client_new(&p));
    p.broker = "ipc:///tmp/kltest-nobody-listens-here";
    p.curve_public_key = "0123456789012345678901234567890123456789";
    assert_null(kosmos_client_new(&p)); /* one key of three */
    p.curve_public_key = NULL;
    p.reply_timeout_ms = 150;
    p.retries = 1;
    kosmos_client_t *c = kosmos_client_new(&p);
    assert_non_null(c);
    kosmos_broker_status_t *s = NULL;
    uint64_t t0 = now_ms();
    assert_int_equal(kosmos_client_status(c, true, &s), KOSMOS_ERR_TIMEOUT);
    uint64_t took = now_ms() - t0;
    assert_true(took >= 280 && took < 3000);
    assert_null(s);
    assert_non_null(strstr(kosmos_error_message(), "2 tries"));
    /* argument errors never reach the wire */
    kosmos_job_t *j = kosmos_job_new();
    char id[KOSMOS_JOB_ID_SIZE];
    assert_int_equal(kosmos_client_submit(c, j, NULL, id, NULL), KOSMOS_ERR_INVALID); /* no image */
    assert_int_equal(kosmos_job_set_image_data(j, test_image, sizeof test_image), KOSMOS_OK);
    assert_int_equal(kosmos_client_submit(c, j, NULL, id, NULL),
                     KOSMOS_ERR_INVALID); /* no prompt */
    assert_int_equal(kosmos_job_add_phrase_boxes(j, NULL, 0), KOSMOS_ERR_INVALID);
    assert_int_equal(kosmos_job_add_prompt(j, "x"), KOSMOS_OK);
    char longkey[200];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    assert_int_equal(kosmos_client_submit(c, j, longkey, id, NULL), KOSMOS_ERR_INVALID);
    assert_int_equal(kosmos_client_submit(c, j, "", id, NULL), KOSMOS_ERR_INVALID);
    kosmos_box_t bad = {0.5, 0.1, 0.4, 0.9};
    assert_int_equal(kosmos_job_add_phrase_boxes(j, &bad, 1), KOSMOS_ERR_INVALID);
    kosmos_generation_t g;
    kosmos_generation_init(&g);
    g.num_beams = 9;
    assert_int_equal(kosmos_job_set_generation(j, &g), KOSMOS_ERR_INVALID);
    assert_int_equal(kosmos_job_set_priority(j, 101), KOSMOS_ERR_INVALID);
    assert_int_equal(kosmos_job_set_image_file(j, "/nonexistent/x.png"), KOSMOS_ERR_IO);
    assert_int_equal(kosmos_client_poll(c, "", NULL, NULL), KOSMOS_ERR_INVALID);
    assert_int_equal(kosmos_client_ack(c, NULL), KOSMOS_ERR_INVALID);
    assert_int_equal(kosmos_client_wait(c, "x", 0, NULL), KOSMOS_ERR_INVALID);
    kosmos_job_destroy(&j);
    kosmos_job_destroy(&j); /* NULL-safe */
    kosmos_client_destroy(&c);
    kosmos_client_destroy(&c);
    kosmos_client_destroy(NULL);
    kosmos_result_destroy(NULL);
    /* a NULL result reads as empty */
    assert_int_equal(kosmos_result_started_unix_ms(NULL), 0);
    assert_int_equal(kosmos_result_finished_unix_ms(NULL), 0);
    assert_false(kosmos_result_prompt_retriable(NULL, 0));
    uint64_t no_seed = 3;
    assert_false(kosmos_result_seed(NULL, 0, &no_seed));
    assert_true(no_seed == 3);
    kosmos_broker_status_destroy(NULL);
    assert_string_equal(kosmos_job_state_name(KOSMOS_STATE_RETRY_WAIT), "retry_wait");
    assert_true(kosmos_job_state_is_terminal(KOSMOS_STATE_ACKED));
    assert_false(kosmos_job_state_is_terminal(KOSMOS_STATE_RUNNING));
    assert_string_equal(kosmos_error_name((kosmos_error_t)999), "unknown");
    assert_string_equal(kosmos_version(), "0.1.0");
}

/* ---- fake brokers: a bare ROUTER that misbehaves on purpose ---------------------------------- */

typedef struct fake_broker {
    void *zctx;
    char ep[128];
    int mode; /* 0: drop the first request, answer the rest; 1: answer in KOSMOS2 */
    int requests;
    uint64_t rids[8];
    pthread_t thread;
    volatile int stop;
} fake_broker;

static void *fake_broker_main(void *arg)
{
    fake_broker *fb = arg;
    void *s = zmq_socket(fb->zctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_bind(s, fb->ep);
    while (!fb->stop) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        kp_inbound *in = NULL;
        if (kp_recv(s, true, KP_CLIENT_REQUEST, NULL, 0, &in) != KS_OK || !in)
            continue;
        size_t rid_len = 0;
        const void *rid = kp_inbound_routing_id(in, &rid_len);
        uint64_t req_id = kp_inbound_request_id(in);
        if (fb->requests < 8)
            fb->rids[fb->requests] = req_id;
        int n = fb->requests++;
        if (fb->mode == 0 && n > 0) {
            Kosmos__V1__ClientReply rep = KOSMOS__V1__CLIENT_REPLY__INIT;
            Kosmos__V1__StatusReply st = KOSMOS__V1__STATUS_REPLY__INIT;
            /* a stale reply first (another request id): must be ignored */
            rep.has_request_id = true;
            rep.request_id = req_id + 1000;
            rep.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS;
            rep.status = &st;
            st.broker_version = "stale";
            kp_send(s, rid, rid_len, &rep.base, NULL, 0);
            rep.request_id = req_id;
            st.broker_version = "fake-1";
            st.has_total_done = true;
            st.total_done = 7;
            kp_send(s, rid, rid_len, &rep.base, NULL, 0);
        } else if (fb->mode == 1) {
            zmq_send(s, rid, rid_len, ZMQ_SNDMORE);
            zmq_send(s, "", 0, ZMQ_SNDMORE);
            zmq_send(s, "KOSMOS2", 7, ZMQ_SNDMORE);
            zmq_send(s, "\x08\x01", 2, 0);
        }
        kp_inbound_destroy(&in);
    }
    zmq_close(s);
    return NULL;
}

static void test_resend_and_version(void **state)
{
    (void)state;
    fake_broker fb = {0};
    fb.zctx = zmq_ctx_new();
    char dir[64] = "/tmp/klfake.XXXXXX";
    assert_non_null(mkdtemp(dir));
    snprintf(fb.ep, sizeof fb.ep, "ipc://%s/c", dir);
    assert_int_equal(pthread_create(&fb.thread, NULL, fake_broker_main, &fb), 0);

    kosmos_client_params_t p;
    kosmos_client_params_init(&p);
    p.broker = fb.ep;
    p.reply_timeout_ms = 300;
    p.retries = 2;
    kosmos_client_t *c = kosmos_client_new(&p);
    kosmos_broker_status_t *s = NULL;
    /* first request lost: resent on a fresh socket with the same request id, then answered */
    assert_int_equal(kosmos_client_status(c, true, &s), KOSMOS_OK);
    assert_string_equal(s->broker_version, "fake-1");
    assert_int_equal(s->total_done, 7);
    kosmos_broker_status_destroy(&s);
    assert_int_equal(fb.requests, 2);
    assert_true(fb.rids[0] != 0 && fb.rids[0] == fb.rids[1]);
    kosmos_client_destroy(&c);

    fb.mode = 1;
    c = kosmos_client_new(&p);
    assert_int_equal(kosmos_client_status(c, true, &s), KOSMOS_ERR_PROTOCOL);
    assert_non_null(strstr(kosmos_error_message(), "different protocol"));
    kosmos_client_destroy(&c);

    fb.stop = 1;
    pthread_join(fb.thread, NULL);
    zmq_ctx_term(fb.zctx);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- CURVE: a broker that fails closed, keys read from ZPL certificates ---------------------- */

static void test_curve(void **state)
{
    (void)state;
    if (!zmq_has("curve"))
        KT_CANNOT_RUN("libzmq without CURVE");
    farm *f = calloc(1, sizeof *f);
    assert_non_null(f);
    ts_broker_init(&f->br, "klcurve");
    const char *dir = f->br.dir;
    char bpub[41], bsec[41], cpub[41], csec[41], wpub[41], wsec[41], xpub[41], xsec[41];
    assert_int_equal(zmq_curve_keypair(bpub, bsec), 0);
    assert_int_equal(zmq_curve_keypair(cpub, csec), 0);
    assert_int_equal(zmq_curve_keypair(wpub, wsec), 0);
    assert_int_equal(zmq_curve_keypair(xpub, xsec), 0); /* a client the broker does not know */
    char path[4][160], clients[128], workers[128];
    snprintf(clients, sizeof clients, "%s/clients", dir);
    snprintf(workers, sizeof workers, "%s/workers", dir);
    assert_int_equal(mkdir(clients, 0700), 0);
    assert_int_equal(mkdir(workers, 0700), 0);
    snprintf(path[0], sizeof path[0], "%s/broker.key_secret", dir);
    snprintf(path[1], sizeof path[1], "%s/broker.key", dir);
    snprintf(path[2], sizeof path[2], "%s/client.key_secret", dir);
    snprintf(path[3], sizeof path[3], "%s/client.key", clients);
    write_cert(path[0], bpub, bsec);
    write_cert(path[1], bpub, NULL);
    write_cert(path[2], cpub, csec);
    write_cert(path[3], cpub, NULL);
    char wpath[160];
    snprintf(wpath, sizeof wpath, "%s/w.key", workers);
    write_cert(wpath, wpub, NULL);

    f->br.p.curve_secret = path[0];
    f->br.p.curve_clients = clients;
    f->br.p.curve_workers = workers;
    ts_broker_start_thread(&f->br);

    /* keys from the certificate files, as a user of the library reads them */
    char pub[KOSMOS_Z85_KEY_SIZE], sec[KOSMOS_Z85_KEY_SIZE], srv[KOSMOS_Z85_KEY_SIZE];
    assert_int_equal(kosmos_curve_load_cert(path[2], pub, sec), KOSMOS_OK);
    assert_string_equal(pub, cpub);
    assert_string_equal(sec, csec);
    assert_int_equal(kosmos_curve_load_cert(path[1], srv, NULL), KOSMOS_OK);
    assert_int_equal(kosmos_curve_load_cert(path[1], srv, sec),
                     KOSMOS_ERR_INVALID); /* public only */
    assert_int_equal(kosmos_curve_load_cert("/nonexistent.key", srv, NULL), KOSMOS_ERR_IO);
    assert_int_equal(kosmos_curve_load_cert(path[2], pub, sec), KOSMOS_OK);

    kosmos_client_params_t p;
    kosmos_client_params_init(&p);
    p.broker = f->br.cep;
    p.client_id = "ignored-with-curve";
    p.curve_public_key = pub;
    p.curve_secret_key = sec;
    p.curve_server_key = srv;
    kosmos_client_t *c = kosmos_client_new(&p);
    assert_non_null(c);
    kosmos_job_t *j = job_with("<grounding> An image of");
    char id[KOSMOS_JOB_ID_SIZE];
    assert_int_equal(kosmos_client_submit(c, j, "curve-1", id, NULL), KOSMOS_OK);
    kosmos_job_info_t ji;
    assert_int_equal(kosmos_client_poll(c, id, &ji, NULL), KOSMOS_OK);
    assert_int_equal(ji.state, KOSMOS_STATE_QUEUED);
    kosmos_client_destroy(&c);

    /* an unknown key gets no connection: its requests time out */
    p.curve_public_key = xpub;
    p.curve_secret_key = xsec;
    p.reply_timeout_ms = 200;
    p.retries = 0;
    c = kosmos_client_new(&p);
    assert_non_null(c);
    assert_int_equal(kosmos_client_poll(c, id, &ji, NULL), KOSMOS_ERR_TIMEOUT);
    kosmos_client_destroy(&c);
    /* without CURVE: nothing either */
    p.curve_public_key = p.curve_secret_key = p.curve_server_key = NULL;
    c = kosmos_client_new(&p);
    assert_int_equal(kosmos_client_poll(c, id, &ji, NULL), KOSMOS_ERR_TIMEOUT);
    kosmos_client_destroy(&c);
    kosmos_job_destroy(&j);
    farm_stop(f);
}

static void test_ground_file(void **state)
{
    farm *f = *state;
    kosmos_client_t *c = client_for(f, "ivy");
    wait_worker(c);
    char path[128];
    snprintf(path, sizeof path, "%s/img.png", f->br.dir);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fwrite(test_image, 1, sizeof test_image, fp);
    fclose(fp);
    kosmos_result_t *r = NULL;
    assert_int_equal(kosmos_ground_file(c, path, NULL, 10000, &r), KOSMOS_OK);
    assert_non_null(r);
    assert_int_equal(kosmos_result_status(r), KOSMOS_RESULT_OK);
    char id[KOSMOS_JOB_ID_SIZE];
    snprintf(id, sizeof id, "%s", kosmos_result_job_id(r));
    kosmos_result_destroy(&r);
    kosmos_job_info_t ji;
    assert_int_equal(kosmos_client_poll(c, id, &ji, NULL), KOSMOS_OK);
    assert_int_equal(ji.state, KOSMOS_STATE_ACKED); /* the helper acked it */
    /* a held job: the helper gives up (PENDING) and cancels it */
    assert_int_equal(kosmos_ground_file(c, path, "<grounding> hold", 300, &r), KOSMOS_ERR_PENDING);
    assert_null(r);
    assert_non_null(strstr(kosmos_error_message(), "cancelled"));
    assert_int_equal(kosmos_ground_file(c, "/nonexistent.png", NULL, 1000, &r), KOSMOS_ERR_IO);
    kosmos_client_destroy(&c);
}

/* A client object per thread, concurrently (the documented thread-safety model). */
typedef struct thread_arg {
    const farm *f;
    int ok;
} thread_arg;

static void *client_thread(void *arg)
{
    thread_arg *a = arg;
    kosmos_client_params_t p;
    kosmos_client_params_init(&p);
    p.broker = a->f->br.cep;
    p.client_id = "threads";
    kosmos_client_t *c = kosmos_client_new(&p);
    kosmos_job_t *j = kosmos_job_new();
    kosmos_job_set_image_data(j, test_image, sizeof test_image);
    kosmos_job_add_prompt(j, "<grounding> An image of");
    for (int i = 0; i < 5; i++) {
        char id[KOSMOS_JOB_ID_SIZE];
        kosmos_result_t *r = NULL;
        if (kosmos_client_submit(c, j, NULL, id, NULL) == KOSMOS_OK &&
            kosmos_client_wait(c, id, 10000, &r) == KOSMOS_OK &&
            kosmos_result_status(r) == KOSMOS_RESULT_OK)
            a->ok++;
        kosmos_result_destroy(&r);
    }
    kosmos_job_destroy(&j);
    kosmos_client_destroy(&c);
    return NULL;
}

static void test_threads(void **state)
{
    farm *f = *state;
    kosmos_client_t *c = client_for(f, "threads");
    wait_worker(c);
    kosmos_client_destroy(&c);
    pthread_t t[4];
    thread_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i].f = f;
        a[i].ok = 0;
        assert_int_equal(pthread_create(&t[i], NULL, client_thread, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].ok, 5);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_submit_wait_ack, setup_farm, teardown_farm),
        cmocka_unit_test_setup_teardown(test_idempotent_resubmit_and_conflict, setup_farm,
                                        teardown_farm),
        cmocka_unit_test_setup_teardown(test_fetch_after_reconnect, setup_farm, teardown_farm),
        cmocka_unit_test_setup_teardown(test_cancel_and_pending, setup_farm, teardown_farm),
        cmocka_unit_test_setup_teardown(test_status, setup_farm, teardown_farm),
        cmocka_unit_test_setup_teardown(test_rejected, setup_farm, teardown_farm),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_timeouts_and_arguments),
        cmocka_unit_test(test_resend_and_version),
        cmocka_unit_test(test_curve),
        cmocka_unit_test_setup_teardown(test_ground_file, setup_farm, teardown_farm),
        cmocka_unit_test_setup_teardown(test_threads, setup_farm, teardown_farm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
