/* actor: see actor.h. The pipe's high-water marks are off (0, no limit), so that neither end
 * ever blocks on a busy peer: an owner's loop must not stall behind its own thread, and the
 * stop message must get through whatever is queued before it. */
#include "actor.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

struct kp_actor {
    const char *name;
    kp_actor_fn fn;
    void *arg;
    void *front; /* the owner's end */
    void *back;  /* the thread's end: the thread's once started (it closes it); never touched
                  * by the owner then */
    pthread_t thread;
    bool started, joined;
};

/* Whether this thread's body called kp_actor_ready: each actor has a thread of its own. */
static _Thread_local bool kp_ready_sent;

/* The start signal, the thread's first message: a status, then the failure's message. */
static ks_status kp_actor_signal(void *pipe, ks_status st, const char *message)
{
    char buf[4 + 1024];
    int32_t code = (int32_t)st;
    size_t n = message ? strlen(message) : 0;
    if (n > sizeof buf - 4)
        n = sizeof buf - 4;
    memcpy(buf, &code, 4);
    if (n)
        memcpy(buf + 4, message, n);
    while (zmq_send(pipe, buf, 4 + n, 0) < 0) {
        if (errno != EINTR)
            return ks_fail(KS_ERR_IO, "actor pipe: zmq_send: %s", zmq_strerror(errno));
    }
    return KS_OK;
}

ks_status kp_actor_ready(void *pipe)
{
    kp_ready_sent = true;
    return kp_actor_signal(pipe, KS_OK, NULL);
}

static void *kp_actor_main(void *arg)
{
    kp_actor *a = arg;
    kp_ready_sent = false;
    ks_error_clear();
    ks_status st = a->fn(a->back, a->arg);
    if (!kp_ready_sent)
        kp_actor_signal(a->back, st, st != KS_OK ? ks_error_message() : NULL);
    /* What the body sent last (a result, "stopped") must reach the owner, but a shutdown must
     * not hang on an owner that stopped reading. */
    int linger = 1000;
    zmq_setsockopt(a->back, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(a->back);
    return NULL;
}

static ks_status kp_pipe_socket(void *zctx, const char *name, void **out)
{
    int zero = 0;
    *out = zmq_socket(zctx, ZMQ_PAIR);
    if (!*out || zmq_setsockopt(*out, ZMQ_SNDHWM, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(*out, ZMQ_RCVHWM, &zero, sizeof zero) != 0)
        return ks_fail(KS_ERR_IO, "%s: pipe socket: %s", name, zmq_strerror(errno));
    return KS_OK;
}

ks_status kp_actor_new(void *zctx, const char *name, kp_actor_fn fn, void *arg, kp_actor **out)
{
    static atomic_uint serial;
    ks_status st = KS_OK;
    *out = NULL;
    kp_actor *a = calloc(1, sizeof *a);
    if (!a)
        return ks_fail(KS_ERR_NOMEM, "%s: out of memory", name);
    a->name = name;
    a->fn = fn;
    a->arg = arg;
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "inproc://kp-actor-%p-%u", (void *)a,
             atomic_fetch_add(&serial, 1));
    if ((st = kp_pipe_socket(zctx, name, &a->front)) != KS_OK ||
        (st = kp_pipe_socket(zctx, name, &a->back)) != KS_OK)
        goto cleanup;
    if (zmq_bind(a->front, endpoint) != 0 || zmq_connect(a->back, endpoint) != 0) {
        st = ks_fail(KS_ERR_IO, "%s: pipe %s: %s", name, endpoint, zmq_strerror(errno));
        goto cleanup;
    }
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(&a->thread, NULL, kp_actor_main, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        st = ks_fail(KS_ERR_NOMEM, "%s: cannot start its thread: %s", name, strerror(rc));
        goto cleanup;
    }
    a->started = true; /* from here the back end is the thread's */

    zmq_msg_t m;
    zmq_msg_init(&m);
    int n;
    while ((n = zmq_msg_recv(&m, a->front, 0)) < 0 && errno == EINTR) {
    }
    if (n < 4) {
        st = ks_fail(KS_ERR_IO, "%s: no start signal from its thread: %s", name,
                     n < 0 ? zmq_strerror(errno) : "a short message");
    } else {
        int32_t code;
        memcpy(&code, zmq_msg_data(&m), 4);
        if (code != KS_OK) {
            kp_actor_join(a); /* a body that failed has returned */
            st = ks_fail((ks_status)code, "%.*s", n - 4, (const char *)zmq_msg_data(&m) + 4);
        }
    }
    zmq_msg_close(&m);
    if (st == KS_OK) {
        *out = a;
        a = NULL;
    }
cleanup:
    if (a && !a->started && a->back)
        zmq_close(a->back);
    kp_actor_destroy(&a);
    return st;
}

void *kp_actor_pipe(kp_actor *a) { return a->front; }

void kp_actor_stop(kp_actor *a)
{
    if (a && a->started && !a->joined)
        zmq_send(a->front, "", 0, ZMQ_DONTWAIT);
}

void kp_actor_join(kp_actor *a)
{
    if (a && a->started && !a->joined) {
        pthread_join(a->thread, NULL);
        a->joined = true;
    }
}

void kp_actor_destroy(kp_actor **pa)
{
    if (!pa || !*pa)
        return;
    kp_actor *a = *pa;
    kp_actor_stop(a);
    kp_actor_join(a);
    if (a->front) {
        int linger = 0; /* the thread is gone: nobody will read what is left */
        zmq_setsockopt(a->front, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(a->front);
    }
    free(a);
    *pa = NULL;
}
