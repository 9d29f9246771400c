/* bench-farm: load generators for the farm benchmarks (docs/benchmarks-farm.md). A benchmark,
 * never a test: it prints one JSON object of figures and leaves judging them to
 * tests/bench/farm.sh, which starts the broker (and beanstalkd, the baseline) for each run.
 *
 *   submit     C clients, each with W submits in flight: durable accepted jobs/s
 *   beanstalk  the same load as beanstalkd `put`s (same payload bytes, same C and W), and
 *              beanstalk-route / beanstalk-latency: the same with consumers (reserve, delete)
 *   route      submitters plus K echo workers: jobs/s through submit, dispatch, result, ack
 *   latency    paced submits at --rate jobs/s plus K echo workers: client send -> Dispatch
 *              arrival at the worker (an upper bound of the broker's receipt-to-dispatch time),
 *              and client send -> ACCEPTED
 *
 * Echo workers are test-only: they register like kosmos-worker (Ready, Credit, heartbeats
 * listing their leases) and answer every Dispatch at once with an OK Result, so the broker is
 * the only thing measured. Submits carry the client's send time (CLOCK_MONOTONIC, shared by
 * all processes of the machine) in Job.label. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "fake_worker_msgs.h"
#include "kosmos.pb-c.h"
#include "wire.h"

#define BF_MAX_THREADS 64
#define BF_PROMPT "<grounding>An image of"

typedef struct bf_opts {
    const char *mode;
    const char *client_ep, *worker_ep, *beanstalk;
    long jobs, clients, window, workers, credit, worker_threads;
    long image_bytes; /* 0: image_uri */
    double rate, seconds, idle_seconds;
    long broker_pid;
    const char *tag; /* makes idempotency keys unique across runs on one database */
    const char *dir; /* mode fsync: where to write */
} bf_opts;

static bf_opts opt = {
    .client_ep = "tcp://127.0.0.1:5555",
    .worker_ep = "tcp://127.0.0.1:5556",
    .beanstalk = "127.0.0.1:11300",
    .jobs = 20000,
    .clients = 4,
    .window = 256,
    .workers = 4,
    .credit = 64,
    .worker_threads = 1,
    .rate = 1000,
    .seconds = 10,
};

static void *zctx;
static uint8_t *image_block; /* the attached image of every submit (shared, never freed early) */
static atomic_int failed;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench-farm: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}

/* ---- latency samples ------------------------------------------------------------------- */

typedef struct bf_samples {
    uint64_t *v;
    size_t n, cap;
} bf_samples;

static void samples_add(bf_samples *s, uint64_t x)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v)
            die("out of memory");
    }
    s->v[s->n++] = x;
}

static void samples_merge(bf_samples *into, const bf_samples *from)
{
    for (size_t i = 0; i < from->n; i++)
        samples_add(into, from->v[i]);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile in milliseconds. */
static double samples_pct_ms(bf_samples *s, double pct)
{
    if (!s->n)
        return 0;
    qsort(s->v, s->n, sizeof *s->v, cmp_u64);
    size_t rank = (size_t)(pct / 100.0 * (double)s->n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > s->n)
        rank = s->n;
    return (double)s->v[rank - 1] / 1e6;
}

/* ---- submitters --------------------------------------------------------------------------- */

typedef struct bf_client {
    pthread_t thread;
    int index;
    long first, count; /* jobs [first, first+count) */
    long accepted, busy, other;
    uint64_t t_first_send, t_last_reply;
    bf_samples accept_latency;
} bf_client;

static void *zsocket(int type, const char *ep)
{
    void *s = zmq_socket(zctx, type);
    int zero = 0, big = 1000000;
    if (!s)
        die("zmq_socket: %s", zmq_strerror(errno));
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_SNDHWM, &big, sizeof big);
    zmq_setsockopt(s, ZMQ_RCVHWM, &big, sizeof big);
    if (zmq_connect(s, ep) != 0)
        die("connect %s: %s", ep, zmq_strerror(errno));
    return s;
}

static void nofree(void *data, void *hint)
{
    (void)data;
    (void)hint;
}

/* The job every mode submits: one grounding prompt, the image by reference or attached. */
static void fill_job(Kosmos__V1__Job *job, Kosmos__V1__Prompt *prompt, Kosmos__V1__Prompt **pp,
                     char *key, size_t key_size, char *label, size_t label_size, long i)
{
    kosmos__v1__job__init(job); /* (its INIT macro trips -Wmissing-braces on the oneof) */
    snprintf(key, key_size, "%s-%ld", opt.tag, i);
    snprintf(label, label_size, "%" PRIu64, now_ns());
    prompt->text = BF_PROMPT;
    pp[0] = prompt;
    job->idempotency_key = key;
    job->n_prompts = 1;
    job->prompts = pp;
    job->label = label;
    if (opt.image_bytes > 0) {
        job->image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE;
        job->image_attached_size = (uint64_t)opt.image_bytes;
    } else {
        job->image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_URI;
        job->image_uri = "/srv/images/bench/000000000000.jpg";
    }
}

static void send_submit(void *sock, long i, uint64_t request_id, const char *client_id)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__SubmitRequest sub = KOSMOS__V1__SUBMIT_REQUEST__INIT;
    Kosmos__V1__Job job;
    Kosmos__V1__Prompt prompt = KOSMOS__V1__PROMPT__INIT;
    Kosmos__V1__Prompt *pp[1];
    char key[96], label[32];
    fill_job(&job, &prompt, pp, key, sizeof key, label, sizeof label, i);
    sub.job = &job;
    req.has_request_id = true;
    req.request_id = request_id;
    req.client_id = (char *)client_id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT;
    req.submit = &sub;
    zmq_msg_t img;
    zmq_msg_t *imgp = NULL;
    if (opt.image_bytes > 0) {
        if (kp_frame_wrap(&img, image_block, (size_t)opt.image_bytes, nofree, NULL) != KS_OK)
            die("image frame: %s", ks_error_message());
        imgp = &img;
    }
    if (kp_send(sock, NULL, 0, &req.base, imgp, 0) != KS_OK)
        die("submit send: %s", zmq_strerror(errno));
}

/* Open loop when opt.rate > 0 (mode latency): job k of this client is sent at
 * start + k * clients / rate whatever the replies do. Closed loop otherwise: keep `window`
 * submits in flight. */
static void *client_main(void *arg)
{
    bf_client *c = arg;
    char client_id[64];
    snprintf(client_id, sizeof client_id, "bench-%s-%d", opt.tag, c->index);
    void *sock = zsocket(ZMQ_DEALER, opt.client_ep);
    bool paced = strcmp(opt.mode, "latency") == 0;
    uint64_t *sent_at = calloc((size_t)c->count + 1, sizeof *sent_at);
    if (!sent_at)
        die("out of memory");
    long sent = 0, replied = 0;
    uint64_t start = now_ns();
    double interval_ns = paced ? 1e9 * (double)opt.clients / opt.rate : 0;
    while (replied < c->count) {
        while (sent < c->count && (paced || sent - replied < opt.window)) {
            if (paced && (double)(now_ns() - start) < interval_ns * (double)sent)
                break;
            sent_at[sent] = now_ns();
            if (sent == 0)
                c->t_first_send = sent_at[0];
            send_submit(sock, c->first + sent, (uint64_t)sent + 1, client_id);
            sent++;
        }
        long wait_ms = 1000;
        if (paced && sent < c->count) {
            /* Rounded up: a wait of 0 for a send due in under a millisecond made this thread
             * spin, and on a 2-core machine the spinning load generator set the broker's tail
             * latency. A send made late is timed from when it went out. */
            double due = interval_ns * (double)sent - (double)(now_ns() - start);
            wait_ms = due <= 0 ? 0 : (long)ceil(due / 1e6);
        }
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, wait_ms);
        if (rc < 0 && errno != EINTR)
            die("poll: %s", zmq_strerror(errno));
        for (;;) {
            kp_inbound *in = NULL;
            if (kp_recv(sock, false, KP_CLIENT_REPLY, NULL, ZMQ_DONTWAIT, &in) != KS_OK)
                die("recv: %s", ks_error_message());
            if (!in)
                break;
            const Kosmos__V1__ClientReply *r =
                (const Kosmos__V1__ClientReply *)kp_inbound_envelope(in);
            uint64_t t = now_ns();
            if (kp_inbound_verdict(in) != KP_VALID || !r)
                die("bad reply: %s", kp_inbound_reason(in));
            if (r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT &&
                r->submit->outcome_case == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED)
                c->accepted++;
            else if (r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT &&
                     r->submit->outcome_case == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_BUSY)
                c->busy++;
            else {
                if (c->other++ < 3)
                    fprintf(stderr, "bench-farm: unexpected reply (case %d)%s%s\n",
                            (int)r->reply_case,
                            r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR ? ": " : "",
                            r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR &&
                                    r->error->message
                                ? r->error->message
                                : "");
            }
            if (r->request_id >= 1 && r->request_id <= (uint64_t)sent)
                samples_add(&c->accept_latency, t - sent_at[r->request_id - 1]);
            c->t_last_reply = t;
            replied++;
            kp_inbound_destroy(&in);
        }
    }
    free(sent_at);
    zmq_close(sock);
    return NULL;
}

/* ---- echo workers ------------------------------------------------------------------------ */

typedef struct bf_lease {
    char *job_id;
    uint32_t attempt;
} bf_lease;

typedef struct bf_echo_socket {
    void *sock;
    bool welcomed;
    uint64_t last_sent_ns;
} bf_echo_socket;

typedef struct bf_echo {
    pthread_t thread;
    int index;
    long first_worker, n_workers;
    bf_echo_socket *socks;
    bf_samples dispatch_latency;
    long dispatches, stored;
} bf_echo;

static atomic_int echo_welcomed;
static atomic_long echo_stored;
static atomic_int echo_stop;

/* Every message an echo worker sends goes through here: a failure ends the run, and the time
 * paces the next heartbeat. */
static void echo_sent(bf_echo_socket *s, ks_status st)
{
    if (st != KS_OK)
        die("worker send: %s", zmq_strerror(errno));
    s->last_sent_ns = now_ns();
}

static void echo_ready(bf_echo_socket *s, long worker)
{
    char name[64];
    snprintf(name, sizeof name, "echo-%s-%ld", opt.tag, worker);
    ts_fw_ready store;
    Kosmos__V1__Ready *r = ts_fw_ready_init(&store, name,
                                            ((uint64_t)getpid() << 20) ^ (uint64_t)worker,
                                            (uint32_t)opt.credit, "bench/echo");
    r->model_hash = "0000000000000000000000000000000000000000000000000000000000000000";
    r->software_version = "bench-farm";
    ts_fw_ready_device(&store, "echo", "bench", 1ull << 34);
    echo_sent(s, ts_fw_send_ready(s->sock, r));
}

static void echo_credit(bf_echo_socket *s, uint32_t slots)
{
    echo_sent(s, ts_fw_send_credit(s->sock, slots));
}

static void echo_result(bf_echo_socket *s, const Kosmos__V1__Dispatch *d)
{
    ts_fw_result store;
    Kosmos__V1__Result *r = ts_fw_result_init(&store, d->job_id, d->attempt,
                                              KOSMOS__V1__STATUS__STATUS_OK,
                                              "An image of an echo.");
    r->has_started_unix_ms = r->has_finished_unix_ms = true;
    r->worker_name = "echo";
    r->started_unix_ms = r->finished_unix_ms = unix_ms();
    echo_sent(s, ts_fw_send_result(s->sock, r));
    echo_credit(s, 1);
}

static void echo_handle(bf_echo *e, bf_echo_socket *s, kp_inbound *in)
{
    const Kosmos__V1__BrokerToWorker *m =
        (const Kosmos__V1__BrokerToWorker *)kp_inbound_envelope(in);
    if (kp_inbound_verdict(in) != KP_VALID || !m)
        die("bad broker message: %s", kp_inbound_reason(in));
    switch (m->message_case) {
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_WELCOME:
        if (!s->welcomed) {
            s->welcomed = true;
            echo_credit(s, (uint32_t)opt.credit);
            atomic_fetch_add(&echo_welcomed, 1);
        }
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH: {
        const Kosmos__V1__Dispatch *d = m->dispatch;
        uint64_t t = now_ns();
        if (d->job && d->job->label) {
            uint64_t sent = strtoull(d->job->label, NULL, 10);
            if (sent && sent <= t)
                samples_add(&e->dispatch_latency, t - sent);
        }
        e->dispatches++;
        echo_result(s, d);
        break;
    }
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_RESULT_ACK:
        if (m->result_ack->disposition == KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED) {
            e->stored++;
            atomic_fetch_add(&echo_stored, 1);
        }
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT:
        fprintf(stderr, "bench-farm: echo worker disconnected: %s\n",
                m->disconnect->message ? m->disconnect->message : "");
        atomic_store(&failed, 1);
        break;
    default: /* heartbeats, cancels */ break;
    }
}

static void *echo_main(void *arg)
{
    bf_echo *e = arg;
    size_t n = (size_t)e->n_workers;
    zmq_pollitem_t *items = calloc(n, sizeof *items);
    e->socks = calloc(n, sizeof *e->socks);
    if (!items || !e->socks)
        die("out of memory");
    for (size_t i = 0; i < n; i++) {
        e->socks[i].sock = zsocket(ZMQ_DEALER, opt.worker_ep);
        items[i] = (zmq_pollitem_t){e->socks[i].sock, 0, ZMQ_POLLIN, 0};
        echo_ready(&e->socks[i], e->first_worker + (long)i);
    }
    while (!atomic_load(&echo_stop)) {
        int rc = zmq_poll(items, (int)n, 100);
        if (rc < 0 && errno != EINTR)
            die("poll: %s", zmq_strerror(errno));
        uint64_t t = now_ns();
        for (size_t i = 0; i < n; i++) {
            bf_echo_socket *s = &e->socks[i];
            if (items[i].revents & ZMQ_POLLIN) {
                for (;;) {
                    kp_inbound *in = NULL;
                    if (kp_recv(s->sock, false, KP_BROKER_TO_WORKER, NULL, ZMQ_DONTWAIT, &in) !=
                        KS_OK)
                        die("worker recv: %s", ks_error_message());
                    if (!in)
                        break;
                    echo_handle(e, s, in);
                    kp_inbound_destroy(&in);
                }
            }
            if (t - s->last_sent_ns >= 1000000000ull) {
                if (s->welcomed) /* no leases: every dispatch is answered before the next poll */
                    echo_sent(s, ts_fw_send_heartbeat(s->sock, NULL, 0));
                else
                    echo_ready(s, e->first_worker + (long)i);
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        ts_fw_send_disconnect(e->socks[i].sock, KOSMOS__V1__DISCONNECT__CODE__CODE_SHUTDOWN,
                              ZMQ_DONTWAIT);
        zmq_close(e->socks[i].sock);
    }
    free(e->socks);
    free(items);
    return NULL;
}

/* ---- broker CPU and status ----------------------------------------------------------------- */

/* User + system CPU seconds the process has used (/proc/PID/stat fields 14, 15). */
static double proc_cpu_seconds(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long ut = 0, st = 0;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

typedef struct bf_status {
    long workers;
    uint64_t memory_bytes, memory_bound, total_submitted, total_done;
} bf_status;

static bool broker_status(bf_status *out)
{
    void *s = zsocket(ZMQ_DEALER, opt.client_ep);
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__StatusRequest sr = KOSMOS__V1__STATUS_REQUEST__INIT;
    sr.has_include_workers = true;
    sr.include_workers = true;
    req.has_request_id = true;
    req.request_id = 1;
    req.client_id = "bench-status";
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    req.status = &sr;
    bool ok = false;
    if (kp_send(s, NULL, 0, &req.base, NULL, 0) == KS_OK) {
        zmq_pollitem_t item = {s, 0, ZMQ_POLLIN, 0};
        kp_inbound *in = NULL;
        if (zmq_poll(&item, 1, 30000) == 1 &&
            kp_recv(s, false, KP_CLIENT_REPLY, NULL, 0, &in) == KS_OK && in) {
            const Kosmos__V1__ClientReply *r =
                (const Kosmos__V1__ClientReply *)kp_inbound_envelope(in);
            if (r && r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS) {
                out->workers = (long)r->status->n_workers;
                out->memory_bytes = r->status->memory_bytes;
                out->memory_bound = r->status->memory_bound_bytes;
                out->total_submitted = r->status->total_submitted;
                out->total_done = r->status->total_done;
                ok = true;
            }
        }
        kp_inbound_destroy(&in);
    }
    zmq_close(s);
    return ok;
}

/* ---- modes ---------------------------------------------------------------------------------- */

static bf_echo *echo_start(long *n_threads)
{
    long t = opt.worker_threads < 1 ? 1 : opt.worker_threads;
    if (t > opt.workers)
        t = opt.workers;
    bf_echo *e = calloc((size_t)t, sizeof *e);
    if (!e)
        die("out of memory");
    long per = opt.workers / t, extra = opt.workers % t, next = 0;
    for (long i = 0; i < t; i++) {
        e[i].index = (int)i;
        e[i].first_worker = next;
        e[i].n_workers = per + (i < extra);
        next += e[i].n_workers;
        if (pthread_create(&e[i].thread, NULL, echo_main, &e[i]) != 0)
            die("pthread_create failed");
    }
    uint64_t deadline = now_ns() + 120ull * 1000000000ull;
    while (atomic_load(&echo_welcomed) < opt.workers) {
        if (now_ns() > deadline)
            die("only %d of %ld echo workers were welcomed in 120 s", atomic_load(&echo_welcomed),
                opt.workers);
        sleep_ns(10000000);
    }
    *n_threads = t;
    return e;
}

static void echo_stop_all(bf_echo *e, long n, bf_samples *latency, long *dispatches)
{
    atomic_store(&echo_stop, 1);
    for (long i = 0; i < n; i++) {
        pthread_join(e[i].thread, NULL);
        samples_merge(latency, &e[i].dispatch_latency);
        *dispatches += e[i].dispatches;
        free(e[i].dispatch_latency.v);
    }
    free(e);
}

static void run_clients(bf_client *c, long n)
{
    long per = opt.jobs / n, extra = opt.jobs % n, next = 0;
    for (long i = 0; i < n; i++) {
        c[i].index = (int)i;
        c[i].first = next;
        c[i].count = per + (i < extra);
        next += c[i].count;
        if (pthread_create(&c[i].thread, NULL, client_main, &c[i]) != 0)
            die("pthread_create failed");
    }
    for (long i = 0; i < n; i++)
        pthread_join(c[i].thread, NULL);
}

static int mode_broker(void)
{
    bool echo = strcmp(opt.mode, "route") == 0 || strcmp(opt.mode, "latency") == 0;
    if (strcmp(opt.mode, "latency") == 0)
        opt.jobs = (long)(opt.rate * opt.seconds);
    bf_echo *e = NULL;
    long n_echo = 0;
    double idle_cpu = -1;
    uint64_t t_reg = now_ns();
    if (echo)
        e = echo_start(&n_echo);
    double register_s = (double)(now_ns() - t_reg) / 1e9;
    if (echo && opt.idle_seconds > 0 && opt.broker_pid > 0) {
        /* Broker CPU while every worker only heartbeats. */
        double c0 = proc_cpu_seconds(opt.broker_pid);
        uint64_t t0 = now_ns();
        sleep_ns((uint64_t)(opt.idle_seconds * 1e9));
        double c1 = proc_cpu_seconds(opt.broker_pid);
        idle_cpu = (c1 - c0) / ((double)(now_ns() - t0) / 1e9);
    }
    double cpu0 = opt.broker_pid > 0 ? proc_cpu_seconds(opt.broker_pid) : -1;
    bf_client *c = calloc((size_t)opt.clients, sizeof *c);
    if (!c)
        die("out of memory");
    uint64_t t0 = now_ns();
    run_clients(c, opt.clients);
    uint64_t t_accept_end = 0;
    long accepted = 0, busy = 0, other = 0;
    bf_samples accept_lat = {0};
    for (long i = 0; i < opt.clients; i++) {
        accepted += c[i].accepted;
        busy += c[i].busy;
        other += c[i].other;
        if (c[i].t_last_reply > t_accept_end)
            t_accept_end = c[i].t_last_reply;
        samples_merge(&accept_lat, &c[i].accept_latency);
        free(c[i].accept_latency.v);
    }
    uint64_t t_end = t_accept_end;
    if (echo) {
        uint64_t deadline = now_ns() + 300ull * 1000000000ull;
        while (atomic_load(&echo_stored) < accepted && now_ns() < deadline && !atomic_load(&failed))
            sleep_ns(1000000);
        t_end = now_ns();
    }
    double cpu1 = opt.broker_pid > 0 ? proc_cpu_seconds(opt.broker_pid) : -1;
    bf_status st = {0};
    bool have_status = broker_status(&st);
    bf_samples dispatch_lat = {0};
    long dispatches = 0;
    if (echo)
        echo_stop_all(e, n_echo, &dispatch_lat, &dispatches);
    double secs = (double)(t_end - t0) / 1e9;
    printf("{\"mode\":\"%s\",\"jobs\":%ld,\"clients\":%ld,\"window\":%ld,\"image_bytes\":%ld,"
           "\"accepted\":%ld,\"busy\":%ld,\"other\":%ld,\"seconds\":%.3f,\"jobs_per_s\":%.1f",
           opt.mode, opt.jobs, opt.clients, opt.window, opt.image_bytes, accepted, busy, other,
           secs, (double)(echo ? atomic_load(&echo_stored) : accepted) / secs);
    printf(",\"accept_p50_ms\":%.3f,\"accept_p99_ms\":%.3f,\"accept_max_ms\":%.3f",
           samples_pct_ms(&accept_lat, 50), samples_pct_ms(&accept_lat, 99),
           samples_pct_ms(&accept_lat, 100));
    if (echo)
        printf(",\"workers\":%ld,\"credit\":%ld,\"register_s\":%.3f,\"dispatches\":%ld,"
               "\"results_stored\":%ld,\"dispatch_p50_ms\":%.3f,\"dispatch_p99_ms\":%.3f,"
               "\"dispatch_max_ms\":%.3f",
               opt.workers, opt.credit, register_s, dispatches, (long)atomic_load(&echo_stored),
               samples_pct_ms(&dispatch_lat, 50), samples_pct_ms(&dispatch_lat, 99),
               samples_pct_ms(&dispatch_lat, 100));
    if (strcmp(opt.mode, "latency") == 0)
        printf(",\"rate\":%.0f,\"achieved_rate\":%.1f", opt.rate,
               (double)accepted / ((double)(t_accept_end - t0) / 1e9));
    if (idle_cpu >= 0)
        printf(",\"idle_seconds\":%.1f,\"broker_idle_cpu\":%.4f", opt.idle_seconds, idle_cpu);
    if (cpu0 >= 0 && cpu1 >= 0)
        printf(",\"broker_cpu\":%.4f", (cpu1 - cpu0) / secs);
    if (have_status)
        printf(",\"status_workers\":%ld,\"broker_memory_bytes\":%" PRIu64
               ",\"broker_memory_bound\":%" PRIu64 ",\"total_submitted\":%" PRIu64
               ",\"total_done\":%" PRIu64,
               st.workers, st.memory_bytes, st.memory_bound, st.total_submitted, st.total_done);
    printf("}\n");
    free(accept_lat.v);
    free(dispatch_lat.v);
    free(c);
    bool complete = accepted == opt.jobs && other == 0 && !atomic_load(&failed) &&
                    (!echo || atomic_load(&echo_stored) >= accepted);
    if (!complete)
        fprintf(stderr, "bench-farm: incomplete run (accepted %ld of %ld, busy %ld, other %ld)\n",
                accepted, opt.jobs, busy, other);
    return complete ? 0 : 1;
}

/* ---- beanstalkd ------------------------------------------------------------------------------- */

/* The same three loads against beanstalkd: `beanstalk` puts only (durable accepts),
 * `beanstalk-route` puts plus consumers that reserve and delete each job (a work queue's
 * routing), `beanstalk-latency` paced puts plus consumers (put -> reserved). Each payload
 * starts with its send time, as Job.label does for the broker. */

typedef struct bf_bean {
    pthread_t thread;
    long first, count;
    long inserted, other;
    uint64_t t_last;
    bf_samples accept_latency;
} bf_bean;

typedef struct bf_bean_consumer {
    pthread_t thread;
    long deleted;
    bf_samples dispatch_latency;
} bf_bean_consumer;

static uint8_t *bean_payload_bytes;
static size_t bean_payload_len;
static atomic_long bean_deleted;
static atomic_int bean_stop;

static int bean_connect(void)
{
    char host[256];
    snprintf(host, sizeof host, "%s", opt.beanstalk);
    char *colon = strrchr(host, ':');
    if (!colon)
        die("--beanstalk wants HOST:PORT");
    *colon = 0;
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || !ai)
        die("cannot resolve %s", opt.beanstalk);
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
        die("connect %s: %s", opt.beanstalk, strerror(errno));
    freeaddrinfo(ai);
    struct timeval tv = {30, 0}; /* a silent beanstalkd fails the run instead of hanging it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("beanstalkd write: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

/* A line reader over one connection. */
typedef struct bf_lines {
    int fd;
    char buf[1 << 17];
    size_t len, pos;
} bf_lines;

/* Waits (blocking) until at least `need` unread bytes are buffered. */
static bool lines_fill(bf_lines *l, size_t need)
{
    while (l->len - l->pos < need) {
        if (l->pos) {
            memmove(l->buf, l->buf + l->pos, l->len - l->pos);
            l->len -= l->pos;
            l->pos = 0;
        }
        if (l->len == sizeof l->buf)
            die("beanstalkd reply too long");
        ssize_t n = read(l->fd, l->buf + l->len, sizeof l->buf - l->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        l->len += (size_t)n;
    }
    return true;
}

/* The next "\r\n"-terminated line (NUL-terminated in place), or NULL when the peer closed. */
static char *lines_next(bf_lines *l)
{
    for (;;) {
        char *start = l->buf + l->pos;
        char *nl = memchr(start, '\n', l->len - l->pos);
        if (nl) {
            *nl = 0;
            if (nl > start && nl[-1] == '\r')
                nl[-1] = 0;
            l->pos = (size_t)(nl + 1 - l->buf);
            return start;
        }
        if (!lines_fill(l, l->len - l->pos + 1))
            return NULL;
    }
}

static void *bean_producer(void *arg)
{
    bf_bean *b = arg;
    bf_lines *in = calloc(1, sizeof *in);
    char head[64];
    int hl = snprintf(head, sizeof head, "put 0 0 60 %zu\r\n", bean_payload_len);
    size_t put_len = (size_t)hl + bean_payload_len + 2;
    uint8_t *put = malloc(put_len);
    uint64_t *sent_at = calloc((size_t)b->count + 1, sizeof *sent_at);
    if (!in || !put || !sent_at)
        die("out of memory");
    in->fd = bean_connect();
    memcpy(put, head, (size_t)hl);
    memcpy(put + hl, bean_payload_bytes, bean_payload_len);
    memcpy(put + hl + bean_payload_len, "\r\n", 2);
    bool paced = strcmp(opt.mode, "beanstalk-latency") == 0;
    double interval_ns = paced ? 1e9 * (double)opt.clients / opt.rate : 0;
    uint64_t start = now_ns();
    long sent = 0, replied = 0;
    while (replied < b->count) {
        while (sent < b->count && (paced || sent - replied < opt.window)) {
            if (paced && (double)(now_ns() - start) < interval_ns * (double)sent)
                break;
            sent_at[sent] = now_ns();
            char stamp[21];
            snprintf(stamp, sizeof stamp, "%020" PRIu64, sent_at[sent]);
            memcpy(put + hl, stamp, 20);
            write_all(in->fd, put, put_len);
            sent++;
        }
        if (paced && sent < b->count && sent == replied) {
            double due = interval_ns * (double)sent - (double)(now_ns() - start);
            if (due > 0)
                sleep_ns((uint64_t)due);
            continue;
        }
        char *line = lines_next(in);
        if (!line)
            die("beanstalkd closed the connection");
        if (strncmp(line, "INSERTED ", 9) == 0)
            b->inserted++;
        else if (b->other++ < 3)
            fprintf(stderr, "bench-farm: beanstalkd said %s\n", line);
        samples_add(&b->accept_latency, now_ns() - sent_at[replied]);
        replied++;
    }
    b->t_last = now_ns();
    close(in->fd);
    free(in);
    free(put);
    free(sent_at);
    return NULL;
}

/* reserve -> delete, one job at a time per connection (a worker with credit 1). */
static void *bean_consumer(void *arg)
{
    bf_bean_consumer *c = arg;
    bf_lines *in = calloc(1, sizeof *in);
    if (!in)
        die("out of memory");
    in->fd = bean_connect();
    static const char reserve[] = "reserve-with-timeout 1\r\n";
    while (!atomic_load(&bean_stop)) {
        write_all(in->fd, reserve, sizeof reserve - 1);
        char *line = lines_next(in);
        if (!line)
            die("beanstalkd closed the connection");
        unsigned long long id;
        size_t bytes;
        if (strncmp(line, "TIMED_OUT", 9) == 0 || strncmp(line, "DEADLINE_SOON", 13) == 0)
            continue;
        if (sscanf(line, "RESERVED %llu %zu", &id, &bytes) != 2)
            die("beanstalkd answered reserve with %s", line);
        if (!lines_fill(in, bytes + 2))
            die("beanstalkd closed the connection");
        char stamp[21];
        memcpy(stamp, in->buf + in->pos, 20);
        stamp[20] = 0;
        in->pos += bytes + 2;
        uint64_t t = now_ns(), sent = strtoull(stamp, NULL, 10);
        if (sent && sent <= t)
            samples_add(&c->dispatch_latency, t - sent);
        char del[64];
        int dl = snprintf(del, sizeof del, "delete %llu\r\n", id);
        write_all(in->fd, del, (size_t)dl);
        if (!(line = lines_next(in)) || strcmp(line, "DELETED") != 0)
            die("beanstalkd answered delete with %s", line ? line : "nothing");
        c->deleted++;
        atomic_fetch_add(&bean_deleted, 1);
    }
    close(in->fd);
    free(in);
    return NULL;
}

/* The payload a beanstalkd user would store: the same packed Job the broker gets, plus the
 * attached image bytes when there are some (its first 20 bytes then carry the send time). */
static void bean_payload_make(void)
{
    Kosmos__V1__Job job;
    Kosmos__V1__Prompt prompt = KOSMOS__V1__PROMPT__INIT;
    Kosmos__V1__Prompt *pp[1];
    char key[96], label[32];
    fill_job(&job, &prompt, pp, key, sizeof key, label, sizeof label, 0);
    size_t jl = kosmos__v1__job__get_packed_size(&job);
    size_t il = opt.image_bytes > 0 ? (size_t)opt.image_bytes : 0;
    bean_payload_bytes = malloc(20 + jl + il);
    if (!bean_payload_bytes)
        die("out of memory");
    memset(bean_payload_bytes, '0', 20);
    kosmos__v1__job__pack(&job, bean_payload_bytes + 20);
    if (il)
        memcpy(bean_payload_bytes + 20 + jl, image_block, il);
    bean_payload_len = 20 + jl + il;
}

static int mode_beanstalk(void)
{
    bool consume = strcmp(opt.mode, "beanstalk") != 0;
    if (strcmp(opt.mode, "beanstalk-latency") == 0)
        opt.jobs = (long)(opt.rate * opt.seconds);
    bean_payload_make();
    bf_bean *b = calloc((size_t)opt.clients, sizeof *b);
    long n_cons = consume ? opt.workers : 0;
    bf_bean_consumer *cons = calloc((size_t)(n_cons ? n_cons : 1), sizeof *cons);
    if (!b || !cons)
        die("out of memory");
    for (long i = 0; i < n_cons; i++)
        if (pthread_create(&cons[i].thread, NULL, bean_consumer, &cons[i]) != 0)
            die("pthread_create failed");
    long per = opt.jobs / opt.clients, extra = opt.jobs % opt.clients, next = 0;
    uint64_t t0 = now_ns();
    for (long i = 0; i < opt.clients; i++) {
        b[i].first = next;
        b[i].count = per + (i < extra);
        next += b[i].count;
        if (pthread_create(&b[i].thread, NULL, bean_producer, &b[i]) != 0)
            die("pthread_create failed");
    }
    long inserted = 0, other = 0;
    uint64_t t_end = t0;
    bf_samples accept_lat = {0}, dispatch_lat = {0};
    for (long i = 0; i < opt.clients; i++) {
        pthread_join(b[i].thread, NULL);
        inserted += b[i].inserted;
        other += b[i].other;
        if (b[i].t_last > t_end)
            t_end = b[i].t_last;
        samples_merge(&accept_lat, &b[i].accept_latency);
        free(b[i].accept_latency.v);
    }
    if (consume) {
        uint64_t deadline = now_ns() + 300ull * 1000000000ull;
        while (atomic_load(&bean_deleted) < inserted && now_ns() < deadline)
            sleep_ns(1000000);
        t_end = now_ns();
        atomic_store(&bean_stop, 1);
        for (long i = 0; i < n_cons; i++) {
            pthread_join(cons[i].thread, NULL);
            samples_merge(&dispatch_lat, &cons[i].dispatch_latency);
            free(cons[i].dispatch_latency.v);
        }
    }
    double secs = (double)(t_end - t0) / 1e9;
    long done = consume ? (long)atomic_load(&bean_deleted) : inserted;
    printf("{\"mode\":\"%s\",\"jobs\":%ld,\"clients\":%ld,\"window\":%ld,\"payload_bytes\":%zu,"
           "\"accepted\":%ld,\"other\":%ld,\"seconds\":%.3f,\"jobs_per_s\":%.1f,"
           "\"accept_p50_ms\":%.3f,\"accept_p99_ms\":%.3f,\"accept_max_ms\":%.3f",
           opt.mode, opt.jobs, opt.clients, opt.window, bean_payload_len, inserted, other, secs,
           (double)done / secs, samples_pct_ms(&accept_lat, 50), samples_pct_ms(&accept_lat, 99),
           samples_pct_ms(&accept_lat, 100));
    if (consume)
        printf(
            ",\"consumers\":%ld,\"deleted\":%ld,\"dispatch_p50_ms\":%.3f,\"dispatch_p99_ms\":%.3f,"
            "\"dispatch_max_ms\":%.3f",
            n_cons, done, samples_pct_ms(&dispatch_lat, 50), samples_pct_ms(&dispatch_lat, 99),
            samples_pct_ms(&dispatch_lat, 100));
    printf("}\n");
    free(accept_lat.v);
    free(dispatch_lat.v);
    free(b);
    free(cons);
    free(bean_payload_bytes);
    return inserted == opt.jobs && other == 0 && done == inserted ? 0 : 1;
}

/* ---- the disk ------------------------------------------------------------------------------ */

/* What one durable write costs on this disk: a 4 KiB append and fdatasync, paced at --rate
 * for --seconds, in --dir. The floor under every durable figure above. */
static int mode_fsync(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/bench-farm-fsync.%ld", dir, (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die("%s: %s", path, strerror(errno));
    static uint8_t block[4096];
    memset(block, 'k', sizeof block);
    long n = (long)(opt.rate * opt.seconds);
    bf_samples lat = {0};
    uint64_t start = now_ns();
    for (long i = 0; i < n; i++) {
        uint64_t due = start + (uint64_t)(1e9 * (double)i / opt.rate), t = now_ns();
        if (due > t)
            sleep_ns(due - t);
        t = now_ns();
        write_all(fd, block, sizeof block);
        if (fdatasync(fd) != 0)
            die("fdatasync: %s", strerror(errno));
        samples_add(&lat, now_ns() - t);
    }
    close(fd);
    unlink(path);
    printf("{\"mode\":\"fsync\",\"writes\":%ld,\"rate\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
           "\"p999_ms\":%.3f,\"max_ms\":%.3f}\n",
           n, opt.rate, samples_pct_ms(&lat, 50), samples_pct_ms(&lat, 99),
           samples_pct_ms(&lat, 99.9), samples_pct_ms(&lat, 100));
    free(lat.v);
    return 0;
}

/* ---- main ------------------------------------------------------------------------------------ */

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: bench-farm MODE [options]   (a benchmark load generator; see tests/bench/farm.sh)\n"
        "modes:\n"
        "  submit     durable accepted jobs/s against kosmos-broker\n"
        "  beanstalk  the submit load as beanstalkd puts (the baseline)\n"
        "  beanstalk-route    puts + --workers consumers that reserve and delete\n"
        "  beanstalk-latency  paced puts (--rate) + consumers: put -> reserved p50/p99\n"
        "  fsync      4 KiB append + fdatasync at --rate for --seconds in --dir (the disk)\n"
        "  route      submits + echo workers: jobs/s through dispatch, result and ack\n"
        "  latency    paced submits (--rate) + echo workers: send-to-dispatch p50/p99\n"
        "options:\n"
        "  --client-endpoint EP   broker client endpoint (default tcp://127.0.0.1:5555)\n"
        "  --worker-endpoint EP   broker worker endpoint (default tcp://127.0.0.1:5556)\n"
        "  --beanstalk HOST:PORT  beanstalkd address (default 127.0.0.1:11300)\n"
        "  --jobs N               jobs to submit (default 20000; latency: rate x seconds)\n"
        "  --clients N            client sockets, one thread each (default 4)\n"
        "  --window N             submits in flight per client (default 256)\n"
        "  --image-bytes N        attach an N-byte image frame (default 0: an image_uri)\n"
        "  --workers N            echo workers (default 4)\n"
        "  --worker-threads N     threads the echo workers share (default 1)\n"
        "  --credit N             credit per echo worker, 1..64 (default 64)\n"
        "  --rate R --seconds S   latency mode: R submits/s for S seconds (default 1000, 10)\n"
        "  --idle-seconds S       with --broker-pid: broker CPU while workers only heartbeat\n"
        "  --broker-pid PID       report the broker's CPU use (from /proc)\n"
        "  --tag S                idempotency keys and names are S-<n> (default: pid)\n"
        "  --dir DIR              fsync mode: the folder to write in (default .)\n"
        "Prints one JSON object; exits 1 when the run did not complete (every job accepted,\n"
        "and with workers every result stored).\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"client-endpoint", required_argument, 0, 'c'},
                                         {"worker-endpoint", required_argument, 0, 'w'},
                                         {"beanstalk", required_argument, 0, 'b'},
                                         {"jobs", required_argument, 0, 'n'},
                                         {"clients", required_argument, 0, 'C'},
                                         {"window", required_argument, 0, 'W'},
                                         {"image-bytes", required_argument, 0, 'i'},
                                         {"workers", required_argument, 0, 'k'},
                                         {"worker-threads", required_argument, 0, 'T'},
                                         {"credit", required_argument, 0, 'r'},
                                         {"rate", required_argument, 0, 'R'},
                                         {"seconds", required_argument, 0, 's'},
                                         {"idle-seconds", required_argument, 0, 'I'},
                                         {"broker-pid", required_argument, 0, 'p'},
                                         {"tag", required_argument, 0, 't'},
                                         {"dir", required_argument, 0, 'd'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2;
    }
    opt.mode = argv[1];
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': opt.client_ep = optarg; break;
        case 'w': opt.worker_ep = optarg; break;
        case 'b': opt.beanstalk = optarg; break;
        case 'n': opt.jobs = atol(optarg); break;
        case 'C': opt.clients = atol(optarg); break;
        case 'W': opt.window = atol(optarg); break;
        case 'i': opt.image_bytes = atol(optarg); break;
        case 'k': opt.workers = atol(optarg); break;
        case 'T': opt.worker_threads = atol(optarg); break;
        case 'r': opt.credit = atol(optarg); break;
        case 'R': opt.rate = atof(optarg); break;
        case 's': opt.seconds = atof(optarg); break;
        case 'I': opt.idle_seconds = atof(optarg); break;
        case 'p': opt.broker_pid = atol(optarg); break;
        case 't': opt.tag = optarg; break;
        case 'd': opt.dir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (opt.jobs < 1 || opt.clients < 1 || opt.clients > BF_MAX_THREADS || opt.window < 1 ||
        opt.workers < 1 || opt.credit < 1 || opt.credit > 64 || opt.rate <= 0 || opt.seconds <= 0 ||
        opt.image_bytes < 0)
        die("an option is out of range (see --help)");
    static char tag[32];
    if (!opt.tag) {
        snprintf(tag, sizeof tag, "b%ld-%lu", (long)getpid(), (unsigned long)time(NULL));
        opt.tag = tag;
    }
    if (opt.image_bytes > 0) {
        image_block = malloc((size_t)opt.image_bytes);
        if (!image_block)
            die("out of memory");
        for (long i = 0; i < opt.image_bytes; i++)
            image_block[i] = (uint8_t)(i * 2654435761u >> 24);
    }
    zctx = zmq_ctx_new();
    /* 1,000 simulated workers are 1,000 sockets; libzmq's default cap is 1,023. */
    zmq_ctx_set(zctx, ZMQ_MAX_SOCKETS, 8192);
    zmq_ctx_set(zctx, ZMQ_IO_THREADS, 1);
    int rc;
    if (strncmp(opt.mode, "beanstalk", 9) == 0)
        rc = mode_beanstalk();
    else if (strcmp(opt.mode, "fsync") == 0)
        rc = mode_fsync(opt.dir ? opt.dir : ".");
    else if (strcmp(opt.mode, "submit") == 0 || strcmp(opt.mode, "route") == 0 ||
             strcmp(opt.mode, "latency") == 0)
        rc = mode_broker();
    else {
        usage(stderr);
        rc = 1;
    }
    zmq_ctx_term(zctx);
    free(image_block);
    return rc;
}
