/* test_wire: KOSMOS1 framing and validation (proto/wire.h) over an inproc DEALER pair: every
 * verdict, the invalid-field-number check of protocol.md §13, UTF-8/NUL strings, and a
 * zero-copy image frame whose free function runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wire.h"

static void *ctx, *a, *b;

static int setup(void **state)
{
    (void)state;
    ctx = zmq_ctx_new();
    a = zmq_socket(ctx, ZMQ_DEALER);
    b = zmq_socket(ctx, ZMQ_DEALER);
    zmq_bind(a, "inproc://wire");
    zmq_connect(b, "inproc://wire");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    zmq_close(a);
    zmq_close(b);
    zmq_ctx_term(ctx);
    return 0;
}

static void raw(int n, const void *const *f, const size_t *l)
{
    for (int i = 0; i < n; i++)
        assert_true(zmq_send(b, f[i], l[i], i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
}

static kp_verdict judge(kp_kind kind, const kp_limits *lim, kp_inbound **keep)
{
    kp_inbound *in = NULL;
    assert_int_equal(kp_recv(a, false, kind, lim, 0, &in), KS_OK);
    assert_non_null(in);
    kp_verdict v = kp_inbound_verdict(in);
    if (keep)
        *keep = in;
    else
        kp_inbound_destroy(&in);
    return v;
}

static void test_verdicts(void **state)
{
    (void)state;
    const void *ok[3] = {"", "KOSMOS1", "\x08\x04"};
    size_t okl[3] = {0, 7, 2};
    raw(3, ok, okl);
    kp_inbound *in;
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, &in), KP_VALID);
    assert_int_equal(kp_inbound_request_id(in), 4);
    kp_inbound_destroy(&in);

    const void *v2[3] = {"", "KOSMOS2", "\x08\x04"};
    raw(3, v2, okl);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_BAD_VERSION);

    const void *http[2] = {"", "GET /"};
    size_t httpl[2] = {0, 5};
    raw(2, http, httpl);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_NOT_OURS);

    const void *four[4] = {"", "KOSMOS1", "\x08\x04", "x"}; /* frame 3 not announced */
    size_t fourl[4] = {0, 7, 2, 1};
    raw(4, four, fourl);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, &in), KP_MALFORMED);
    assert_int_equal(kp_inbound_request_id(in), 4); /* still known for the error reply */
    kp_inbound_destroy(&in);

    const void *nodelim[2] = {"KOSMOS1", "\x08\x04"};
    size_t nodelimlen[2] = {7, 2};
    raw(2, nodelim, nodelimlen);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_MALFORMED);

    /* A non-empty delimiter before KOSMOS1 is ours and malformed, with its request id. */
    const void *fulldelim[3] = {"x", "KOSMOS1", "\x08\x04"};
    size_t fulldelimlen[3] = {1, 7, 2};
    raw(3, fulldelim, fulldelimlen);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, &in), KP_MALFORMED);
    assert_int_equal(kp_inbound_request_id(in), 4);
    kp_inbound_destroy(&in);

    const void *junk[3] = {"", "KOSMOS1", "\x0a\xff"};
    raw(3, junk, okl);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_MALFORMED);

    kp_limits small = {4, 4};
    const void *big[3] = {"", "KOSMOS1", "\x08\x04\x08\x04\x08\x04"};
    size_t bigl[3] = {0, 7, 6};
    raw(3, big, bigl);
    assert_int_equal(judge(KP_CLIENT_REQUEST, &small, NULL), KP_TOO_LARGE);
}

static void test_field_numbers_and_strings(void **state)
{
    (void)state;
    /* Field 0 in its overlong form (80 00), kept by protobuf-c as unknown: malformed. */
    const void *f0[3] = {"", "KOSMOS1", "\x08\x04\x80\x00\x01"};
    size_t l5[3] = {0, 7, 5};
    raw(3, f0, l5);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_MALFORMED);
    /* Field 2^29 in a 5-byte tag, nested inside fetch (field 11): malformed as well. */
    const void *deep[3] = {"", "KOSMOS1", "\x08\x04\x5a\x06\x80\x80\x80\x80\x10\x00"};
    size_t l10[3] = {0, 7, 10};
    raw(3, deep, l10);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_MALFORMED);
    /* client_id with invalid UTF-8, then with a NUL inside. */
    const void *bad[3] = {"", "KOSMOS1", "\x08\x04\x12\x02\xc3\x28"};
    size_t l6[3] = {0, 7, 6};
    raw(3, bad, l6);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_BAD_STRING);
    const void *nul[3] = {"", "KOSMOS1", "\x08\x04\x12\x02\x61\x00"};
    raw(3, nul, l6);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_BAD_STRING);
    /* A fetch's job_id (nested string) with bad UTF-8. */
    const void *nested[3] = {"", "KOSMOS1", "\x08\x04\x5a\x03\x0a\x01\xff"};
    size_t l7[3] = {0, 7, 7};
    raw(3, nested, l7);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_BAD_STRING);
}

static int freed;
static void free_fn(void *data, void *hint)
{
    (void)hint;
    freed++;
    free(data);
}

static void test_send_with_image(void **state)
{
    (void)state;
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__SubmitRequest sub = KOSMOS__V1__SUBMIT_REQUEST__INIT;
    Kosmos__V1__Job job;
    kosmos__v1__job__init(&job);
    job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE;
    job.image_attached_size = 5;
    sub.job = &job;
    req.has_request_id = true;
    req.request_id = 9;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT;
    req.submit = &sub;
    char *img = malloc(5);
    memcpy(img, "abcde", 5);
    zmq_msg_t m;
    assert_int_equal(kp_frame_wrap(&m, img, 5, free_fn, NULL), KS_OK);
    assert_int_equal(kp_send(b, NULL, 0, &req.base, &m, 0), KS_OK);
    kp_inbound *in;
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, &in), KP_VALID);
    size_t n;
    const void *p = kp_inbound_image(in, &n);
    assert_int_equal(n, 5);
    assert_memory_equal(p, "abcde", 5);
    kp_inbound_destroy(&in);
    assert_int_equal(freed, 1);
    /* Announced 6, sent 5: malformed. */
    job.image_attached_size = 6;
    zmq_msg_init_size(&m, 5);
    assert_int_equal(kp_send(b, NULL, 0, &req.base, &m, 0), KS_OK);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_MALFORMED);
    /* Announced, not sent. */
    assert_int_equal(kp_send(b, NULL, 0, &req.base, NULL, 0), KS_OK);
    assert_int_equal(judge(KP_CLIENT_REQUEST, NULL, NULL), KP_MALFORMED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verdicts),
        cmocka_unit_test(test_field_numbers_and_strings),
        cmocka_unit_test(test_send_with_image),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
