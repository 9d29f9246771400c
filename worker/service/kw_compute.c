/* kw_compute: the worker's compute thread. It owns the engine and the compute end of the
 * inproc pipe: it queues the dispatches the I/O thread hands it (never more than the credit
 * the worker granted, i.e. --max-batch), and runs whatever is queued, up to --max-batch jobs,
 * as one batch (dynamic batching: jobs that arrive during a batch form the next one). Between
 * the phases of a batch it reads the pipe, so cancels reach the batch (protocol.md §8.6). It
 * never touches the broker socket. */
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
    bool stopping;
    bool failed; /* the pipe broke: stop */
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

/* Between the phases of a batch: read the pipe, and pass cancels on to the batch's inputs. */
static void poll_cb(void *ctx)
{
    poll_ctx *p = ctx;
    drain(p->s);
    for (size_t i = 0; i < p->s->n_batch; i++)
        p->jobs[i].cancel_reason = p->s->batch[i]->job.cancel_reason;
}

/* Test-only fault hooks, read from the environment; unset (always, outside tests) they do
 * nothing. tests/integration/test_faults.c uses them to make a slow device and a poison job:
 *   KOSMOS_WORKER_TEST_SLEEP_MS=N     sleep N ms before each batch (heartbeats go on)
 *   KOSMOS_WORKER_TEST_ABORT_MARKER=S abort() the process when a prompt of the batch contains S
 * They are not options on purpose: no deployment has a reason to set them. */
static void test_hooks(const kw_job_in *jobs, size_t n)
{
    const char *marker = getenv("KOSMOS_WORKER_TEST_ABORT_MARKER");
    const char *sleep_ms = getenv("KOSMOS_WORKER_TEST_SLEEP_MS");
    if (marker && *marker) {
        for (size_t i = 0; i < n; i++) {
            const Kosmos__V1__Job *job = jobs[i].job;
            for (size_t k = 0; job && k < job->n_prompts; k++) {
                if (job->prompts[k]->text && strstr(job->prompts[k]->text, marker)) {
                    kw_log(KW_ERROR, "test_abort", "\"job\":\"%s\",\"attempt\":%u",
                           jobs[i].job_id, jobs[i].attempt);
                    abort();
                }
            }
        }
    }
    if (sleep_ms && *sleep_ms) {
        long ms = strtol(sleep_ms, NULL, 10);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (ms > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
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
