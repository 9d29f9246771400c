/* kw_compute: the worker's compute thread. It owns the engine and the compute end of the
 * inproc pipe: it queues the dispatches the I/O thread hands it (never more than the credit
 * the worker granted, i.e. --max-batch), and runs whatever is queued, up to --max-batch jobs,
 * as one batch (dynamic batching: jobs that arrive during a batch form the next one). Before a
 * batch computes, the broker learns that its jobs started (STARTED, then START_OK from the I/O
 * thread once the broker confirmed it: a job that kills the worker is charged a crash, one
 * still queued is not, protocol.md §8.4). Between the phases of a batch and at every decode
 * step it reads the pipe and decides stops, so a cancel, a passed deadline or the end of the
 * shutdown grace stops that job within one step while the others go on (§8.6). It never
 * touches the broker socket. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kw_internal.h"
#include "kw_log.h"
#include "vips_runtime.h"

void kw_task_destroy(kw_task **t)
{
    if (!t || !*t)
        return;
    kp_inbound_destroy(&(*t)->in);
    free(*t);
    *t = NULL;
}

ks_status kw_msg_send(void *pair, const kw_msg *m)
{
    while (zmq_send(pair, m, sizeof *m, 0) < 0) {
        if (errno != EINTR)
            return ks_fail(KS_ERR_IO, "inproc pipe: zmq_send: %s", zmq_strerror(errno));
    }
    return KS_OK;
}

ks_status kw_msg_recv(void *pair, kw_msg *m, int flags, bool *got)
{
    *got = false;
    int n = zmq_recv(pair, m, sizeof *m, flags);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return KS_OK;
        return ks_fail(KS_ERR_IO, "inproc pipe: zmq_recv: %s", zmq_strerror(errno));
    }
    if ((size_t)n != sizeof *m)
        return ks_fail(KS_ERR_IO, "inproc pipe: a %d-byte message", n);
    *got = true;
    return KS_OK;
}

void kw_roots_destroy(kw_roots **r)
{
    if (!r || !*r)
        return;
    for (size_t i = 0; i < (*r)->n; i++)
        free((*r)->paths[i]);
    free((*r)->paths);
    free(*r);
    *r = NULL;
}

typedef struct compute_state {
    kw_compute *c;
    void *pipe;
    kw_roots *roots; /* the Welcome's image roots in use (the engine borrows them) */
    kw_task **queue; /* FIFO of tasks not yet in a batch */
    size_t n_queue, cap_queue;
    kw_task **batch; /* the batch running now */
    size_t n_batch;
    size_t start_oks; /* START_OKs received for the batch about to compute */
    bool stopping;
    uint64_t stop_at; /* with stopping: the end of the running sequences' grace (unix ms) */
    bool failed; /* the pipe broke: stop */
    /* test hooks (test_hooks below), read once */
    const char *slow_marker;
    long step_ms;
} compute_state;

static void queue_push(compute_state *s, kw_task *t)
{
    if (s->n_queue == s->cap_queue) {
        size_t ncap = s->cap_queue ? s->cap_queue * 2 : 16;
        kw_task **grown = realloc(s->queue, ncap * sizeof *grown);
        if (!grown) {
            /* Cannot hold it: answer at once, retriable (protocol.md §8.3). */
            kw_done *d = calloc(1, sizeof *d);
            if (d && kw_result_simple(&t->job, &s->c->meta, KOSMOS__V1__STATUS__STATUS_FAILED,
                                      true, "worker out of memory", &d->packed) == KS_OK) {
                snprintf(d->job_id, sizeof d->job_id, "%s", t->job_id);
                d->attempt = t->job.attempt;
                kw_msg m = {.type = KW_MSG_RESULT, .done = d};
                if (kw_msg_send(s->pipe, &m) == KS_OK)
                    d = NULL;
            }
            if (d)
                free(d->packed.data);
            free(d);
            kw_task_destroy(&t);
            return;
        }
        s->queue = grown;
        s->cap_queue = ncap;
    }
    s->queue[s->n_queue++] = t;
}

static void mark_cancel(compute_state *s, const kw_msg *m)
{
    for (size_t i = 0; i < s->n_batch; i++)
        if (s->batch[i]->job.attempt == m->attempt && strcmp(s->batch[i]->job_id, m->job_id) == 0)
            s->batch[i]->job.cancel_reason = m->reason ? m->reason : 1;
    for (size_t i = 0; i < s->n_queue; i++)
        if (s->queue[i]->job.attempt == m->attempt && strcmp(s->queue[i]->job_id, m->job_id) == 0)
            s->queue[i]->job.cancel_reason = m->reason ? m->reason : 1;
}

static void handle(compute_state *s, const kw_msg *m)
{
    switch (m->type) {
    case KW_MSG_TASK:
        queue_push(s, m->task);
        break;
    case KW_MSG_CANCEL:
        mark_cancel(s, m);
        break;
    case KW_MSG_STOP:
        s->stopping = true;
        s->stop_at = m->at;
        break;
    case KW_MSG_START_OK:
        s->start_oks++;
        break;
    case KW_MSG_ROOTS: {
        /* Only between the batch's image reads and the next batch's: this thread reads them. */
        kw_roots *old = s->roots;
        s->roots = m->roots;
        s->c->engine->params.image_roots = (const char *const *)s->roots->paths;
        s->c->engine->params.n_image_roots = s->roots->n;
        kw_roots_destroy(&old);
        break;
    }
    default:
        break;
    }
}

/* Reads every message waiting on the pipe. */
static void drain(compute_state *s)
{
    for (;;) {
        kw_msg m;
        bool got = false;
        if (kw_msg_recv(s->pipe, &m, ZMQ_DONTWAIT, &got) != KS_OK) {
            s->failed = true;
            return;
        }
        if (!got)
            return;
        handle(s, &m);
    }
}

typedef struct poll_ctx {
    compute_state *s;
    kw_job_in *jobs; /* the batch's inputs, parallel to s->batch */
} poll_ctx;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (ms > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static bool job_has_marker(const kw_job_in *in, const char *marker)
{
    const Kosmos__V1__Job *job = in->job;
    for (size_t k = 0; marker && *marker && job && k < job->n_prompts; k++)
        if (job->prompts[k]->text && strstr(job->prompts[k]->text, marker))
            return true;
    return false;
}

/* Between the phases of a batch and at each decode step (kw_batch_poll_fn): read the pipe and
 * decide which jobs stop - a cancel from the broker, a deadline that passed, the shutdown
 * grace that ran out (handed back) - on the batch's inputs. The first reason stays. */
static void poll_cb(void *ctx, const kw_job_in *job)
{
    poll_ctx *p = ctx;
    compute_state *s = p->s;
    if (job && s->step_ms > 0 && job_has_marker(job, s->slow_marker))
        sleep_ms(s->step_ms); /* test hook: a decode step of a long job */
    drain(s);
    uint64_t now = kw_unix_ms();
    for (size_t i = 0; i < s->n_batch; i++) {
        kw_job_in *in = &s->batch[i]->job;
        const Kosmos__V1__Job *pj = in->job;
        if (!in->cancel_reason && pj && pj->has_deadline_unix_ms && pj->deadline_unix_ms <= now)
            in->cancel_reason = KOSMOS__V1__CANCEL__REASON__REASON_DEADLINE;
        if (!in->cancel_reason && s->stopping && now >= s->stop_at)
            in->cancel_reason = KW_REASON_HANDBACK;
        p->jobs[i].cancel_reason = in->cancel_reason;
    }
}

/* Test-only fault hooks, read from the environment; unset (always, outside tests) they do
 * nothing. tests/integration/test_faults.c and test_hardening.c use them to make a slow device,
 * a poison job and a long job:
 *   KOSMOS_WORKER_TEST_SLEEP_MS=N     sleep N ms before each batch (heartbeats go on)
 *   KOSMOS_WORKER_TEST_ABORT_MARKER=S abort() the process when a prompt of the batch contains S
 *   KOSMOS_WORKER_TEST_SLOW_MARKER=S with KOSMOS_WORKER_TEST_STEP_MS=N: each decode step of
 *                                     each prompt of a job whose prompt contains S takes N ms
 *                                     more, for as long as the engine keeps generating it: a
 *                                     long job (on the tiny model real ones take milliseconds)
 * They are not options on purpose: no deployment has a reason to set them. */
static void test_hooks(const kw_job_in *jobs, size_t n)
{
    const char *marker = getenv("KOSMOS_WORKER_TEST_ABORT_MARKER");
    const char *ms = getenv("KOSMOS_WORKER_TEST_SLEEP_MS");
    for (size_t i = 0; i < n; i++) {
        if (job_has_marker(&jobs[i], marker)) {
            kw_log(KW_ERROR, "test_abort", "\"job\":\"%s\",\"attempt\":%u", jobs[i].job_id,
                   jobs[i].attempt);
            abort();
        }
    }
    if (ms && *ms)
        sleep_ms(strtol(ms, NULL, 10));
}

/* Tells the I/O thread that the batch's jobs start, and waits until it says the broker knows
 * (or need not: an older broker, no connection, a bounded wait; kw_worker.c). */
static void announce_start(compute_state *s)
{
    s->start_oks = 0;
    for (size_t i = 0; i < s->n_batch && !s->failed; i++) {
        kw_msg m = {.type = KW_MSG_STARTED, .attempt = s->batch[i]->job.attempt};
        snprintf(m.job_id, sizeof m.job_id, "%s", s->batch[i]->job_id);
        if (kw_msg_send(s->pipe, &m) != KS_OK)
            s->failed = true;
    }
    while (!s->failed && s->start_oks < s->n_batch) {
        kw_msg m;
        bool got = false;
        if (kw_msg_recv(s->pipe, &m, 0, &got) != KS_OK)
            s->failed = true;
        else if (got)
            handle(s, &m);
    }
    for (size_t i = 0; i < s->n_batch; i++)
        kw_log(KW_INFO, "computing", "\"job\":\"%s\",\"attempt\":%u", s->batch[i]->job_id,
               s->batch[i]->job.attempt);
}

/* Runs the first max_batch queued tasks; returns the batch's status (a device error ends the
 * thread). */
static ks_status run_batch(compute_state *s)
{
    kw_compute *c = s->c;
    size_t n = s->n_queue < (size_t)c->max_batch ? s->n_queue : (size_t)c->max_batch;
    s->n_batch = n;
    memcpy(s->batch, s->queue, n * sizeof *s->batch);
    memmove(s->queue, s->queue + n, (s->n_queue - n) * sizeof *s->queue);
    s->n_queue -= n;

    kw_job_in *jobs = calloc(n, sizeof *jobs);
    kw_packed *out = calloc(n, sizeof *out);
    ks_status st;
    if (!jobs || !out) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory for a batch");
    } else {
        double t0 = kw_now_ms();
        announce_start(s);
        for (size_t i = 0; i < n; i++)
            jobs[i] = s->batch[i]->job;
        test_hooks(jobs, n);
        poll_ctx pc = {s, jobs};
        st = kw_batch_run(c->engine, jobs, n, &c->meta, poll_cb, &pc, out);
        kw_log(KW_INFO, "batch", "\"jobs\":%zu,\"ms\":%.1f,\"images_encoded\":%llu", n,
               kw_now_ms() - t0, (unsigned long long)c->engine->images_encoded);
    }
    for (size_t i = 0; i < n; i++) {
        kw_task *t = s->batch[i];
        if (t->job.cancel_reason == KW_REASON_HANDBACK) {
            /* Not finished in the shutdown grace: no Result; the Disconnect hands it back. */
            kw_log(KW_INFO, "handed_back", "\"job\":\"%s\",\"attempt\":%u", t->job_id,
                   t->job.attempt);
            kw_task_destroy(&s->batch[i]);
            continue;
        }
        kw_done *d = calloc(1, sizeof *d);
        if (d && out && out[i].data) {
            snprintf(d->job_id, sizeof d->job_id, "%s", t->job_id);
            d->attempt = t->job.attempt;
            d->packed = out[i];
            out[i].data = NULL;
            kw_msg m = {.type = KW_MSG_RESULT, .done = d};
            if (kw_msg_send(s->pipe, &m) == KS_OK)
                d = NULL;
            else
                s->failed = true;
        }
        if (d)
            free(d->packed.data);
        free(d);
        kw_task_destroy(&s->batch[i]);
    }
    s->n_batch = 0;
    for (size_t i = 0; out && i < n; i++)
        free(out[i].data);
    free(out);
    free(jobs);
    return st;
}

static void *compute_main(void *arg)
{
    kw_compute *c = arg;
    compute_state s = {.c = c};
    char fatal[512] = "";
    const char *step_ms = getenv("KOSMOS_WORKER_TEST_STEP_MS");
    s.slow_marker = getenv("KOSMOS_WORKER_TEST_SLOW_MARKER");
    s.step_ms = step_ms ? strtol(step_ms, NULL, 10) : 0;
    s.pipe = zmq_socket(c->zmq_ctx, ZMQ_PAIR);
    s.batch = calloc((size_t)c->max_batch, sizeof *s.batch);
    if (!s.pipe || !s.batch || zmq_connect(s.pipe, c->endpoint) != 0) {
        kw_log(KW_ERROR, "compute_start_failed", "\"error\":\"%s\"", zmq_strerror(errno));
        goto done;
    }
    while (!s.failed) {
        if (s.n_queue == 0 && !s.stopping) {
            kw_msg m;
            bool got = false;
            if (kw_msg_recv(s.pipe, &m, 0, &got) != KS_OK) {
                s.failed = true;
                break;
            }
            if (got)
                handle(&s, &m);
        }
        drain(&s);
        if (s.stopping || s.failed)
            break;
        if (s.n_queue == 0)
            continue;
        ks_status st = run_batch(&s);
        if (st != KS_OK && st != KS_ERR_NOMEM) {
            snprintf(fatal, sizeof fatal, "%s", ks_error_message());
            break;
        }
    }
    if (fatal[0]) {
        kw_msg m = {.type = KW_MSG_FATAL};
        snprintf(m.message, sizeof m.message, "%s", fatal);
        kw_msg_send(s.pipe, &m);
    }
    /* Whatever is still queued was never started: the I/O thread hands it back to the broker
     * (Disconnect lapses its leases without counting a crash, protocol.md §8.8). */
    for (size_t i = 0; i < s.n_queue; i++)
        kw_task_destroy(&s.queue[i]);
done:;
    kw_msg stopped = {.type = KW_MSG_STOPPED};
    if (s.pipe)
        kw_msg_send(s.pipe, &stopped);
    free(s.queue);
    free(s.batch);
    if (s.roots) {
        c->engine->params.image_roots = NULL;
        c->engine->params.n_image_roots = 0;
        kw_roots_destroy(&s.roots);
    }
    if (s.pipe) {
        int linger = 1000;
        zmq_setsockopt(s.pipe, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(s.pipe);
    }
    ki_thread_shutdown();
    return NULL;
}

ks_status kw_compute_start(kw_compute *c)
{
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(&c->thread, NULL, compute_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return ks_fail(KS_ERR_NOMEM, "cannot start the compute thread: %s", strerror(rc));
    c->started = true;
    return KS_OK;
}
