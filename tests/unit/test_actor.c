/* test_actor: the actor helper (proto/actor.h). The start handshake is proved by what the body
 * recorded before kp_actor_ready being visible when kp_actor_new returns (the body dawdles
 * first, so a start that did not wait would find it unset), a body's start failure by its
 * status and message on the caller's thread, and stop + join by the body's own counts. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <zmq.h>

#include "actor.h"

typedef struct body_state {
    atomic_int setup_done;    /* set just before kp_actor_ready */
    atomic_int order_setup;   /* ticket taken at the end of the setup */
    atomic_int received;      /* non-empty messages read */
    atomic_int stop_messages; /* empty messages read */
    atomic_int returned;      /* set as the body returns */
    atomic_int term_blocked, int_blocked;
} body_state;

static atomic_int ticket;

static void *ctx;

static int setup(void **state)
{
    (void)state;
    ctx = zmq_ctx_new();
    return ctx ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    zmq_ctx_term(ctx);
    return 0;
}

/* Reads until the stop message, counting what came before it. */
static ks_status serve_until_stop(void *pipe, body_state *b)
{
    for (;;) {
        char buf[16];
        int n = zmq_recv(pipe, buf, sizeof buf, 0);
        if (n < 0)
            return ks_fail(KS_ERR_IO, "zmq_recv: %s", zmq_strerror(errno));
        if (n == 0) {
            atomic_fetch_add(&b->stop_messages, 1);
            return KS_OK;
        }
        atomic_fetch_add(&b->received, 1);
    }
}

static ks_status slow_start_body(void *pipe, void *arg)
{
    body_state *b = arg;
    /* Gives a start that does not wait every chance to return first. */
    for (int i = 0; i < 2000; i++)
        sched_yield();
    sigset_t mask;
    pthread_sigmask(SIG_BLOCK, NULL, &mask);
    atomic_store(&b->term_blocked, sigismember(&mask, SIGTERM) == 1);
    atomic_store(&b->int_blocked, sigismember(&mask, SIGINT) == 1);
    atomic_store(&b->order_setup, atomic_fetch_add(&ticket, 1));
    atomic_store(&b->setup_done, 1);
    ks_status st = kp_actor_ready(pipe);
    if (st == KS_OK)
        st = serve_until_stop(pipe, b);
    atomic_store(&b->returned, 1);
    return st;
}

static void test_start_waits_for_ready(void **state)
{
    (void)state;
    body_state b = {0};
    kp_actor *a = NULL;
    assert_int_equal(kp_actor_new(ctx, "slow", slow_start_body, &b, &a), KS_OK);
    int order_returned = atomic_fetch_add(&ticket, 1);
    assert_int_equal(atomic_load(&b.setup_done), 1);
    assert_true(atomic_load(&b.order_setup) < order_returned);
    /* The actor's signals are blocked in its thread only. */
    assert_int_equal(atomic_load(&b.term_blocked), 1);
    assert_int_equal(atomic_load(&b.int_blocked), 1);
    sigset_t mine;
    pthread_sigmask(SIG_BLOCK, NULL, &mine);
    assert_int_equal(sigismember(&mine, SIGTERM), 0);
    assert_int_equal(atomic_load(&b.returned), 0);
    kp_actor_destroy(&a);
    assert_null(a);
}

static void test_stop_after_messages_then_join(void **state)
{
    (void)state;
    body_state b = {0};
    kp_actor *a = NULL;
    assert_int_equal(kp_actor_new(ctx, "counter", slow_start_body, &b, &a), KS_OK);
    void *pipe = kp_actor_pipe(a);
    for (int i = 0; i < 3; i++)
        assert_int_equal(zmq_send(pipe, "job", 3, 0), 3);
    kp_actor_stop(a);
    kp_actor_join(a);
    /* Joined: what the body did is all done and visible. */
    assert_int_equal(atomic_load(&b.received), 3);
    assert_int_equal(atomic_load(&b.stop_messages), 1);
    assert_int_equal(atomic_load(&b.returned), 1);
    kp_actor_join(a);     /* idempotent */
    kp_actor_stop(a);     /* nothing left to stop */
    kp_actor_destroy(&a); /* no second stop message reaches anyone */
    assert_int_equal(atomic_load(&b.stop_messages), 1);
    kp_actor_destroy(&a); /* NULL is fine */
}

static ks_status failing_body(void *pipe, void *arg)
{
    (void)pipe;
    body_state *b = arg;
    atomic_store(&b->returned, 1);
    return ks_fail(KS_ERR_DEVICE, "no device %d", 7);
}

static void test_start_failure(void **state)
{
    (void)state;
    body_state b = {0};
    kp_actor *a = (kp_actor *)(uintptr_t)1; /* must come back NULL */
    ks_error_clear();
    assert_int_equal(kp_actor_new(ctx, "failing", failing_body, &b, &a), KS_ERR_DEVICE);
    assert_null(a);
    assert_string_equal(ks_error_message(), "no device 7");
    assert_int_equal(atomic_load(&b.returned), 1); /* joined before kp_actor_new returned */
}

static ks_status ends_alone_body(void *pipe, void *arg)
{
    body_state *b = arg;
    ks_status st = kp_actor_ready(pipe);
    if (st == KS_OK && zmq_send(pipe, "bye", 3, 0) != 3)
        st = ks_fail(KS_ERR_IO, "zmq_send");
    atomic_store(&b->returned, 1);
    return st;
}

static void test_body_that_ends_by_itself(void **state)
{
    (void)state;
    body_state b = {0};
    kp_actor *a = NULL;
    assert_int_equal(kp_actor_new(ctx, "brief", ends_alone_body, &b, &a), KS_OK);
    char buf[8];
    /* Sent just before the body returned: the closing pipe still delivers it. */
    assert_int_equal(zmq_recv(kp_actor_pipe(a), buf, sizeof buf, 0), 3);
    assert_memory_equal(buf, "bye", 3);
    kp_actor_join(a);
    assert_int_equal(atomic_load(&b.returned), 1);
    kp_actor_destroy(&a); /* a stop to a thread that is gone neither blocks nor fails */
}

static ks_status no_ready_body(void *pipe, void *arg)
{
    (void)pipe;
    atomic_store(&((body_state *)arg)->returned, 1);
    return KS_OK;
}

static void test_ok_without_ready_counts_as_ready(void **state)
{
    (void)state;
    body_state b = {0};
    kp_actor *a = NULL;
    assert_int_equal(kp_actor_new(ctx, "quiet", no_ready_body, &b, &a), KS_OK);
    assert_non_null(a);
    kp_actor_destroy(&a);
    assert_int_equal(atomic_load(&b.returned), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start_waits_for_ready),
        cmocka_unit_test(test_stop_after_messages_then_join),
        cmocka_unit_test(test_start_failure),
        cmocka_unit_test(test_body_that_ends_by_itself),
        cmocka_unit_test(test_ok_without_ready_counts_as_ready),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
