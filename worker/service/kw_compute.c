/* kw_compute: the worker's compute thread. It owns the engine, one long-lived continuous batch
 * (kw_batch) and the compute end of the inproc pipe. Each turn of its loop reads the pipe (new
 * dispatches, cancels, the stop), decides stops (a cancel, a passed deadline, the end of the
 * shutdown grace), admits queued jobs while fewer than --max-batch compute, runs one batch step
 * and sends the Result of every job that ended in it: a job arriving while others decode joins
 * them at the next step, and a short one leaves before a long one that came first. The I/O
 * thread grants credit for --max-batch jobs plus a few prefetched (kw_worker.c), which wait
 * here until a job ends. Before a job computes the broker learns that it started (STARTED, then
 * START_OK from the I/O thread once the broker confirmed it: a job that kills the worker is
 * charged a crash, one still queued is not, protocol.md §8.4); the others go on computing
 * meanwhile. A job whose reason to stop is set ends at the next step while the others go on
 * (§8.6). It never touches the broker socket. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actor.h"
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
    if (n == 0) {
        /* The actor's stop message (kw_compute_stop): stop now, without a grace. */
        *m = (kw_msg){.type = KW_MSG_STOP, .at = 0};
        *got = true;
        return KS_OK;
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

typedef enum task_phase {
    TASK_QUEUED = 0, /* dispatched, not started */
    TASK_STARTING,   /* STARTED sent, waiting for START_OK */
    TASK_READY,      /* START_OK came: joins the batch at the next turn */
    TASK_RUNNING     /* in the batch */
} task_phase;

typedef struct held_task {
    kw_task *t;
    task_phase phase;
} held_task;

typedef struct compute_state {
    kw_compute *c;
    void *pipe;
    kw_roots *roots;  /* the Welcome's image roots in use (the engine borrows them) */
    kw_batch *batch;  /* the continuous batch, for the thread's life */
    held_task *tasks; /* every task held, in arrival order */
    size_t n_tasks, cap_tasks;
    bool stopping;
    uint64_t stop_at; /* with stopping: the end of the running sequences' grace (unix ms) */
    bool failed;      /* the pipe broke: stop */
} compute_state;

static void send_done(compute_state *s, kw_task *t, kw_packed *packed)
{
    kw_done *d = calloc(1, sizeof *d);
    if (d && packed->data) {
        snprintf(d->job_id, sizeof d->job_id, "%s", t->job_id);
        d->attempt = t->job.attempt;
        d->packed = *packed;
        packed->data = NULL;
        kw_msg m = {.type = KW_MSG_RESULT, .done = d};
        if (kw_msg_send(s->pipe, &m) == KS_OK)
            d = NULL;
        else
            s->failed = true;
    }
    if (d)
        free(d->packed.data);
    free(d);
    free(packed->data);
    packed->data = NULL;
}

/* A Result for a task that cannot be held or computed: FAILED, retriable (protocol.md §8.3). */
static void answer_failed(compute_state *s, kw_task *t, const char *message)
{
    kw_packed p = {0};
    if (kw_result_simple(&t->job, &s->c->meta, KOSMOS__V1__STATUS__STATUS_FAILED, true, message,
                         &p) == KS_OK)
        send_done(s, t, &p);
}

static void task_push(compute_state *s, kw_task *t)
{
    if (s->n_tasks == s->cap_tasks) {
        size_t ncap = s->cap_tasks ? s->cap_tasks * 2 : 16;
        held_task *grown = realloc(s->tasks, ncap * sizeof *grown);
        if (!grown) {
            answer_failed(s, t, "worker out of memory");
            kw_task_destroy(&t);
            return;
        }
        s->tasks = grown;
        s->cap_tasks = ncap;
    }
    s->tasks[s->n_tasks++] = (held_task){t, TASK_QUEUED};
}

static held_task *task_find(compute_state *s, const char *job_id, uint32_t attempt)
{
    for (size_t i = 0; i < s->n_tasks; i++)
        if (s->tasks[i].t->job.attempt == attempt && strcmp(s->tasks[i].t->job_id, job_id) == 0)
            return &s->tasks[i];
    return NULL;
}

static void task_remove(compute_state *s, size_t i)
{
    kw_task_destroy(&s->tasks[i].t);
    memmove(s->tasks + i, s->tasks + i + 1, (s->n_tasks - i - 1) * sizeof *s->tasks);
    s->n_tasks--;
}

static size_t count_phase(const compute_state *s, task_phase lo, task_phase hi)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_tasks; i++)
        n += s->tasks[i].phase >= lo && s->tasks[i].phase <= hi;
    return n;
}

static void handle(compute_state *s, const kw_msg *m)
{
    switch (m->type) {
    case KW_MSG_TASK: task_push(s, m->task); break;
    case KW_MSG_CANCEL: {
        held_task *h = task_find(s, m->job_id, m->attempt);
        if (h && !h->t->job.cancel_reason)
            h->t->job.cancel_reason = m->reason ? m->reason : 1;
        break;
    }
    case KW_MSG_STOP:
        s->stopping = true;
        s->stop_at = m->at;
        break;
    case KW_MSG_START_OK: {
        held_task *h = task_find(s, m->job_id, m->attempt);
        if (h && h->phase == TASK_STARTING)
            h->phase = TASK_READY;
        break;
    }
    case KW_MSG_ROOTS: {
        /* Images are read on this thread (kw_batch_add), so the swap is safe between them. */
        kw_roots *old = s->roots;
        s->roots = m->roots;
        s->c->engine->params.image_roots = (const char *const *)s->roots->paths;
        s->c->engine->params.n_image_roots = s->roots->n;
        kw_roots_destroy(&old);
        break;
    }
    default: break;
    }
}

/* Reads every message waiting on the pipe; with `block`, waits for one first. */
static void drain(compute_state *s, bool block)
{
    for (;;) {
        kw_msg m;
        bool got = false;
        if (kw_msg_recv(s->pipe, &m, block ? 0 : ZMQ_DONTWAIT, &got) != KS_OK) {
            s->failed = true;
            return;
        }
        if (!got)
            return;
        handle(s, &m);
        block = false;
    }
}

/* Which held jobs stop: a deadline that passed, the shutdown grace that ran out (handed back).
 * A cancel from the broker was recorded as it came. The first reason stays. */
static void decide_stops(compute_state *s)
{
    uint64_t now = kw_unix_ms();
    for (size_t i = 0; i < s->n_tasks; i++) {
        kw_job_in *in = &s->tasks[i].t->job;
        const Kosmos__V1__Job *pj = in->job;
        if (s->tasks[i].phase != TASK_RUNNING)
            continue; /* a queued job's deadline is checked as it joins (EXPIRED, not run) */
        if (!in->cancel_reason && pj && pj->has_deadline_unix_ms && pj->deadline_unix_ms <= now)
            in->cancel_reason = KOSMOS__V1__CANCEL__REASON__REASON_DEADLINE;
        if (!in->cancel_reason && s->stopping && now >= s->stop_at)
            in->cancel_reason = KW_REASON_HANDBACK;
    }
}

/* Starts queued jobs while fewer than max_batch compute or start: tells the I/O thread (which
 * answers START_OK once the broker knows, or need not: an older broker, no connection, a
 * bounded wait; kw_worker.c). The batch goes on meanwhile. */
static void announce_starts(compute_state *s)
{
    size_t busy = count_phase(s, TASK_STARTING, TASK_RUNNING);
    for (size_t i = 0; i < s->n_tasks && busy < (size_t)s->c->max_batch && !s->failed; i++) {
        held_task *h = &s->tasks[i];
        if (h->phase != TASK_QUEUED)
            continue;
        kw_msg m = {.type = KW_MSG_STARTED, .attempt = h->t->job.attempt};
        snprintf(m.job_id, sizeof m.job_id, "%s", h->t->job_id);
        if (kw_msg_send(s->pipe, &m) != KS_OK)
            s->failed = true;
        h->phase = TASK_STARTING;
        busy++;
    }
}

/* Puts the jobs whose start the broker knows into the batch. */
static ks_status admit_ready(compute_state *s)
{
    bool first = true;
    for (size_t i = 0; i < s->n_tasks;) {
        held_task *h = &s->tasks[i];
        if (h->phase != TASK_READY) {
            i++;
            continue;
        }
        if (first && s->c->test.before_join)
            s->c->test.before_join(s->c->test.ctx);
        first = false;
        if (s->c->test.on_join)
            s->c->test.on_join(s->c->test.ctx, &h->t->job);
        kw_log(KS_LOG_INFO, "computing", "\"job\":\"%s\",\"attempt\":%u", h->t->job_id,
               h->t->job.attempt);
        ks_status st = kw_batch_add(s->batch, &h->t->job);
        if (st == KS_ERR_NOMEM) {
            answer_failed(s, h->t, "worker out of memory");
            task_remove(s, i);
            continue;
        }
        if (st != KS_OK)
            return st;
        h->phase = TASK_RUNNING;
        i++;
    }
    return KS_OK;
}

/* One batch step; sends the Results of the jobs that ended in it. A device error is returned
 * (every job held is then answered, FAILED and retriable). */
static ks_status step(compute_state *s)
{
    kw_batch_done *done = NULL;
    size_t n_done = 0;
    ks_status st = kw_batch_step(s->batch, &done, &n_done);
    for (size_t d = 0; d < n_done; d++) {
        size_t i = 0;
        while (i < s->n_tasks && &s->tasks[i].t->job != done[d].in)
            i++;
        if (i == s->n_tasks)
            continue; /* cannot happen: the batch holds only our tasks */
        kw_task *t = s->tasks[i].t;
        if (t->job.cancel_reason == KW_REASON_HANDBACK) {
            /* Not finished in the shutdown grace: no Result; the Disconnect hands it back. */
            kw_log(KS_LOG_INFO, "handed_back", "\"job\":\"%s\",\"attempt\":%u", t->job_id,
                   t->job.attempt);
        } else if (done[d].packed.data) {
            kw_log(KS_LOG_INFO, "job_done", "\"job\":\"%s\",\"attempt\":%u,\"running\":%zu",
                   t->job_id, t->job.attempt, kw_batch_jobs(s->batch));
            send_done(s, t, &done[d].packed);
        } else {
            answer_failed(s, t, "worker out of memory building the result");
        }
        task_remove(s, i);
    }
    return st;
}

/* Whether the loop has something to do before the next message: a step, a job to admit or to
 * announce, the end of a stop. Otherwise it waits for the pipe (a dispatch, a START_OK, the
 * stop). */
static bool has_work(const compute_state *s)
{
    size_t busy = count_phase(s, TASK_STARTING, TASK_RUNNING);
    if (kw_batch_jobs(s->batch) > 0 || count_phase(s, TASK_READY, TASK_READY) > 0)
        return true;
    if (s->stopping)
        return count_phase(s, TASK_RUNNING, TASK_RUNNING) == 0;
    return busy < (size_t)s->c->max_batch && count_phase(s, TASK_QUEUED, TASK_QUEUED) > 0;
}

static ks_status compute_main(void *pipe, void *arg)
{
    kw_compute *c = arg;
    compute_state s = {.c = c, .pipe = pipe};
    char fatal[512] = "";
    kw_batch_params bp = c->batch;
    bp.poll = c->test.on_step;
    bp.poll_ctx = c->test.ctx;
    ks_status st = kw_batch_new(c->engine, &c->meta, &bp, &s.batch);
    if (st == KS_OK)
        st = kp_actor_ready(pipe);
    if (st != KS_OK) {
        kw_batch_destroy(&s.batch);
        ki_thread_shutdown();
        return st;
    }
    while (!s.failed) {
        drain(&s, !has_work(&s)); /* nothing to do without the pipe: wait for it */
        if (s.failed)
            break;
        decide_stops(&s);
        if (s.stopping) {
            /* Only the running jobs finish (or are handed back); the rest go back unstarted. */
            for (size_t i = 0; i < s.n_tasks;)
                if (s.tasks[i].phase != TASK_RUNNING)
                    task_remove(&s, i);
                else
                    i++;
            if (s.n_tasks == 0)
                break;
        } else {
            announce_starts(&s);
        }
        st = admit_ready(&s);
        if (st == KS_OK && kw_batch_jobs(s.batch) > 0)
            st = step(&s);
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
    /* Whatever is still held never finished: the I/O thread hands it back to the broker
     * (Disconnect lapses its leases without counting a crash, protocol.md §8.8). */
    kw_batch_destroy(&s.batch);
    while (s.n_tasks > 0)
        task_remove(&s, s.n_tasks - 1);
    kw_msg stopped = {.type = KW_MSG_STOPPED};
    kw_msg_send(s.pipe, &stopped);
    free(s.tasks);
    if (s.roots) {
        c->engine->params.image_roots = NULL;
        c->engine->params.n_image_roots = 0;
        kw_roots_destroy(&s.roots);
    }
    ki_thread_shutdown();
    return KS_OK;
}

ks_status kw_compute_start(kw_compute *c, void *zmq_ctx)
{
    return kp_actor_new(zmq_ctx, "the compute thread", compute_main, c, &c->actor);
}

void kw_compute_stop(kw_compute *c) { kp_actor_destroy(&c->actor); }
