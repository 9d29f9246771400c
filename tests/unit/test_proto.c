/* test_proto: the kosmos.v1 wire schema as protobuf-c compiles it.
 *
 * Round-trips every sample message of tests/fuzz/make_proto_seeds.c (the same ones the fuzz
 * corpora start from), checks proto2 presence and oneof behaviour the protocol relies on
 * (docs/protocol.md), that unknown fields and unknown oneof members from a newer peer decode,
 * and that truncated or malformed bytes are rejected rather than half-decoded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kosmos.pb-c.h"
#include "make_proto_seeds.h"

/* Packs `m` into a malloc'd buffer; *len gets its size. */
static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    size_t size = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(size + 1);
    assert_non_null(buf);
    assert_int_equal(protobuf_c_message_pack(m, buf), size);
    *len = size;
    return buf;
}

static const ProtobufCMessageDescriptor *descriptor_of(const char *message)
{
    static const struct {
        const char *name;
        const ProtobufCMessageDescriptor *d;
    } table[] = {
        {"client_request", &kosmos__v1__client_request__descriptor},
        {"client_reply", &kosmos__v1__client_reply__descriptor},
        {"worker_message", &kosmos__v1__worker_message__descriptor},
        {"broker_to_worker", &kosmos__v1__broker_to_worker__descriptor},
        {"job", &kosmos__v1__job__descriptor},
        {"result", &kosmos__v1__result__descriptor},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].name, message) == 0)
            return table[i].d;
    return NULL;
}

/* ---- Round trips ------------------------------------------------------------------------ */

typedef struct sample_stats {
    int samples;
    int per_message[6];
} sample_stats;

static void roundtrip_one(const char *message, const char *name, const ProtobufCMessage *msg,
                          void *user)
{
    sample_stats *st = user;
    const ProtobufCMessageDescriptor *d = descriptor_of(message);
    assert_non_null(d);
    assert_ptr_equal(msg->descriptor, d);
    for (int i = 0; kps_messages[i]; i++)
        if (strcmp(kps_messages[i], message) == 0)
            st->per_message[i]++;
    st->samples++;

    size_t len, len2;
    uint8_t *bytes = pack(msg, &len);
    assert_true(len > 0);
    ProtobufCMessage *back = protobuf_c_message_unpack(d, NULL, len, bytes);
    if (!back)
        fail_msg("%s/%s: its own packed bytes do not unpack", message, name);
    assert_int_equal(back->n_unknown_fields, 0);
    uint8_t *bytes2 = pack(back, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(bytes2, bytes, len);
    protobuf_c_message_free_unpacked(back, NULL);
    free(bytes2);
    free(bytes);
}

static void test_roundtrip_every_sample(void **state)
{
    (void)state;
    sample_stats st = {0};
    kps_for_each_sample(roundtrip_one, &st);
    /* Every top-level type has several samples (they are the fuzz seeds too). */
    for (int i = 0; kps_messages[i]; i++)
        if (st.per_message[i] < 3)
            fail_msg("only %d samples of %s", st.per_message[i], kps_messages[i]);
    assert_true(st.samples >= 30);
}

/* Finds one sample by message and name and hands back its packed bytes. */
typedef struct find_sample {
    const char *message, *name;
    uint8_t *bytes;
    size_t len;
} find_sample;

static void find_one(const char *message, const char *name, const ProtobufCMessage *msg, void *user)
{
    find_sample *f = user;
    if (strcmp(message, f->message) == 0 && strcmp(name, f->name) == 0)
        f->bytes = pack(msg, &f->len);
}

static uint8_t *sample_bytes(const char *message, const char *name, size_t *len)
{
    find_sample f = {message, name, NULL, 0};
    kps_for_each_sample(find_one, &f);
    if (!f.bytes)
        fail_msg("no sample %s/%s", message, name);
    *len = f.len;
    return f.bytes;
}

static void test_submit_fields_survive(void **state)
{
    (void)state;
    size_t len;
    uint8_t *bytes = sample_bytes("client_request", "submit_attached_image", &len);
    Kosmos__V1__ClientRequest *rq = kosmos__v1__client_request__unpack(NULL, len, bytes);
    assert_non_null(rq);
    assert_true(rq->has_request_id);
    assert_int_equal(rq->request_id, 2);
    assert_string_equal(rq->client_id, "alice@lab");
    assert_int_equal(rq->request_case, KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT);
    const Kosmos__V1__Job *job = rq->submit->job;
    assert_non_null(job);
    assert_int_equal(job->image_case, KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE);
    assert_int_equal(job->image_attached_size, 80024);
    assert_int_equal(job->n_prompts, 3);
    const Kosmos__V1__Prompt *p = job->prompts[1];
    assert_int_equal(p->n_phrase_boxes, 2);
    assert_int_equal(p->phrase_boxes[0]->n_boxes, 2);
    assert_int_equal(p->phrase_boxes[1]->n_boxes, 0); /* None for "grass" */
    const Kosmos__V1__Box *b0 = p->phrase_boxes[0]->boxes[0];
    const Kosmos__V1__Box *b1 = p->phrase_boxes[0]->boxes[1];
    assert_int_equal(b0->kind_case, KOSMOS__V1__BOX__KIND_NORMALIZED);
    assert_true(b0->normalized->x1 == 0.484375 && b0->normalized->y2 == 0.984375);
    assert_int_equal(b1->kind_case, KOSMOS__V1__BOX__KIND_PATCH);
    assert_int_equal(b1->patch->ul, 135);
    assert_int_equal(b1->patch->lr, 1008);
    assert_true(job->generation->has_seed);
    assert_true(job->generation->seed == 0x9e3779b97f4a7c15ull);
    assert_true(job->generation->temperature == 0.7);
    assert_int_equal(job->outputs, 15);
    /* Unset optionals: no presence, NULL strings (proto2 in protobuf-c). */
    assert_false(job->has_priority);
    assert_false(job->has_deadline_unix_ms);
    assert_null(job->requirements);
    assert_null(job->label);
    kosmos__v1__client_request__free_unpacked(rq, NULL);
    free(bytes);
}

static void test_result_fields_survive(void **state)
{
    (void)state;
    size_t len;
    uint8_t *bytes = sample_bytes("result", "snowman_two_prompts", &len);
    Kosmos__V1__Result *r = kosmos__v1__result__unpack(NULL, len, bytes);
    assert_non_null(r);
    assert_int_equal(r->status, KOSMOS__V1__STATUS__STATUS_OK);
    assert_int_equal(r->image_width, 1024);
    assert_int_equal(r->n_prompts, 2);
    const Kosmos__V1__Entity *e = r->prompts[0]->entities[0];
    assert_string_equal(e->phrase, "a snowman");
    assert_int_equal(e->start_cp, 12);
    assert_int_equal(e->end_cp, 21);
    assert_true(e->boxes[0]->box->x1 == 0.390625 && e->boxes[0]->box->y1 == 0.046875);
    assert_true(e->boxes[0]->box->x2 == 0.984375 && e->boxes[0]->box->y2 == 0.828125);
    assert_int_equal(e->boxes[0]->patch->ul, 44);
    assert_true(e->boxes_px[0]->x1 == 400.0 && e->boxes_px[0]->y2 == 848.0);
    assert_int_equal(r->prompts[0]->n_generated_ids, 13);
    assert_int_equal(r->prompts[0]->generated_ids[12], 2);
    /* The French prompt: code points and bytes differ after "Voilà". */
    e = r->prompts[1]->entities[0];
    assert_int_equal(e->start_cp, 6);
    assert_int_equal(e->start_byte, 7);
    assert_memory_equal(r->prompts[1]->text + e->start_byte, "un bonhomme de neige",
                        e->end_byte - e->start_byte);
    kosmos__v1__result__free_unpacked(r, NULL);
    free(bytes);
}

/* ---- Presence --------------------------------------------------------------------------- */

static void test_presence_zero_versus_unset(void **state)
{
    (void)state;
    Kosmos__V1__GenerationParams g = KOSMOS__V1__GENERATION_PARAMS__INIT;
    size_t len;
    uint8_t *bytes = pack(&g.base, &len);
    assert_int_equal(len, 0); /* nothing set, nothing sent */
    Kosmos__V1__GenerationParams *back = kosmos__v1__generation_params__unpack(NULL, len, bytes);
    assert_non_null(back);
    assert_false(back->has_temperature);
    assert_false(back->has_seed);
    kosmos__v1__generation_params__free_unpacked(back, NULL);
    free(bytes);

    g.has_temperature = 1;
    g.temperature = 0.0;
    g.has_seed = 1;
    g.seed = 0;
    g.has_no_repeat_ngram_size = 1;
    g.no_repeat_ngram_size = 0; /* explicitly off, not "model default" */
    bytes = pack(&g.base, &len);
    assert_int_equal(len, 9 + 2 + 2);
    back = kosmos__v1__generation_params__unpack(NULL, len, bytes);
    assert_non_null(back);
    assert_true(back->has_temperature);
    assert_true(back->temperature == 0.0);
    assert_true(back->has_seed);
    assert_true(back->has_no_repeat_ngram_size);
    assert_int_equal(back->no_repeat_ngram_size, 0);
    assert_false(back->has_top_p);
    kosmos__v1__generation_params__free_unpacked(back, NULL);
    free(bytes);
}

/* ---- Unknown fields --------------------------------------------------------------------- */

/* Appends a varint to buf at *at. */
static void put_varint(uint8_t *buf, size_t *at, uint64_t v)
{
    while (v >= 0x80) {
        buf[(*at)++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    buf[(*at)++] = (uint8_t)v;
}

static void test_unknown_fields_tolerated(void **state)
{
    (void)state;
    size_t len;
    uint8_t *bytes = sample_bytes("job", "image_uri_requirements", &len);
    uint8_t *ext = malloc(len + 64);
    assert_non_null(ext);
    memcpy(ext, bytes, len);
    size_t at = len;
    put_varint(ext, &at, (77u << 3) | 0); /* varint field 77 from a newer peer */
    put_varint(ext, &at, 300);
    put_varint(ext, &at, (78u << 3) | 2); /* length-delimited field 78 */
    put_varint(ext, &at, 5);
    memcpy(ext + at, "hello", 5);
    at += 5;
    put_varint(ext, &at, (79u << 3) | 1); /* fixed64 field 79 */
    memset(ext + at, 0xab, 8);
    at += 8;
    put_varint(ext, &at, (150u << 3) | 5); /* fixed32 in the site-local range */
    memset(ext + at, 0xcd, 4);
    at += 4;

    Kosmos__V1__Job *job = kosmos__v1__job__unpack(NULL, at, ext);
    assert_non_null(job);
    assert_int_equal(job->base.n_unknown_fields, 4);
    assert_int_equal(job->image_case, KOSMOS__V1__JOB__IMAGE_IMAGE_URI);
    assert_string_equal(job->image_uri, "file:///srv/shared/images/carnaby_street.jpg");
    assert_string_equal(job->requirements->model_id, "microsoft/kosmos-2-patch14-224");
    assert_int_equal(job->priority, -20);
    /* protobuf-c keeps them and sends them on (the broker stores what the client sent). */
    size_t len2;
    uint8_t *again = pack(&job->base, &len2);
    assert_int_equal(len2, at);
    kosmos__v1__job__free_unpacked(job, NULL);
    free(again);
    free(ext);
    free(bytes);
}

static void test_unknown_oneof_member(void **state)
{
    (void)state;
    /* request_id 9 + field 31 (a request type from a later version), an empty message. */
    const uint8_t bytes[] = {0x08, 0x09, 0xfa, 0x01, 0x00}; /* tag (31 << 3 | 2) = 250 */
    Kosmos__V1__ClientRequest *rq = kosmos__v1__client_request__unpack(NULL, sizeof bytes, bytes);
    assert_non_null(rq);
    assert_int_equal(rq->request_id, 9); /* so the error reply can still be matched */
    assert_int_equal(rq->request_case, KOSMOS__V1__CLIENT_REQUEST__REQUEST__NOT_SET);
    assert_int_equal(rq->base.n_unknown_fields, 1);
    kosmos__v1__client_request__free_unpacked(rq, NULL);
}

static void test_unknown_enum_value_kept(void **state)
{
    (void)state;
    /* PromptResult.status = 42: a status this version does not know. protobuf-c keeps the
     * number (Python/Go proto2 would move it to unknown fields); readers must not switch on it
     * without a default. */
    const uint8_t bytes[] = {0x10, 42};
    Kosmos__V1__PromptResult *p = kosmos__v1__prompt_result__unpack(NULL, sizeof bytes, bytes);
    assert_non_null(p);
    assert_true(p->has_status);
    assert_int_equal((int)p->status, 42);
    assert_null(protobuf_c_enum_descriptor_get_value(&kosmos__v1__status__descriptor, 42));
    kosmos__v1__prompt_result__free_unpacked(p, NULL);
}

/* ---- Rejection -------------------------------------------------------------------------- */

typedef struct truncation_stats {
    int samples;
} truncation_stats;

static void truncate_one(const char *message, const char *name, const ProtobufCMessage *msg,
                         void *user)
{
    truncation_stats *st = user;
    const ProtobufCMessageDescriptor *d = descriptor_of(message);
    size_t len;
    uint8_t *bytes = pack(msg, &len);
    /* Every prefix: no crash; a prefix cut inside a field must fail; one cut between fields is a
     * valid shorter message. Dropping the last byte always cuts the last field. */
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *copy = malloc(cut + 1); /* exact-size copy so ASan sees overreads */
        assert_non_null(copy);
        memcpy(copy, bytes, cut);
        ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, cut, copy);
        if (cut == len - 1 && m)
            fail_msg("%s/%s: unpacked with its last byte cut off", message, name);
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
        free(copy);
    }
    st->samples++;
    free(bytes);
}

static void test_truncated_rejected(void **state)
{
    (void)state;
    truncation_stats st = {0};
    kps_for_each_sample(truncate_one, &st);
    assert_true(st.samples > 0);
}

static void expect_rejected(const uint8_t *bytes, size_t len, const char *what)
{
    Kosmos__V1__ClientRequest *rq = kosmos__v1__client_request__unpack(NULL, len, bytes);
    if (rq) {
        kosmos__v1__client_request__free_unpacked(rq, NULL);
        fail_msg("accepted: %s", what);
    }
}

static void test_garbage_rejected(void **state)
{
    (void)state;
    /* Field number 0. */
    const uint8_t zero_tag[] = {0x00, 0x01};
    expect_rejected(zero_tag, sizeof zero_tag, "field number 0");
    /* Wire types 6 and 7 do not exist; 3/4 are groups, which proto2 messages here never use. */
    const uint8_t wt7[] = {0x0f, 0x01};
    expect_rejected(wt7, sizeof wt7, "wire type 7");
    const uint8_t wt6[] = {0x0e, 0x01};
    expect_rejected(wt6, sizeof wt6, "wire type 6");
    /* A varint of 11 bytes. */
    const uint8_t long_varint[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    expect_rejected(long_varint, sizeof long_varint, "11-byte varint");
    /* A length past the end, and a length near 2^32. */
    const uint8_t long_len[] = {0x12, 0x10, 'a', 'b'};
    expect_rejected(long_len, sizeof long_len, "length past the end");
    const uint8_t huge_len[] = {0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 'a'};
    expect_rejected(huge_len, sizeof huge_len, "length 2^32-1");
    /* A known field with the wrong wire type: request_id (varint) sent as fixed32. */
    const uint8_t wrong_type[] = {0x0d, 0x01, 0x02, 0x03, 0x04};
    expect_rejected(wrong_type, sizeof wrong_type, "request_id as fixed32");
    /* The submit member with a broken message inside: a Job whose prompts entry overruns. */
    const uint8_t bad_inner[] = {0x52, 0x04, 0x0a, 0x02, 0x2a, 0x05};
    expect_rejected(bad_inner, sizeof bad_inner, "truncated nested Job");
    /* A tag whose varint never ends. */
    const uint8_t bad_tag[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80};
    expect_rejected(bad_tag, sizeof bad_tag, "unterminated tag");
}

static void test_invalid_field_numbers(void **state)
{
    (void)state;
    /* Field number 0 in its overlong form (0x80 0x00), and a field number >= 2^29 in a 5-byte
     * tag. protobuf-c 1.4.1 accepts both as unknown fields and then re-encodes them into bytes
     * that it, and every other protobuf library, rejects. So our peers refuse any message with
     * such an unknown field as malformed (docs/protocol.md §13). This pins down the library's
     * behaviour: if a protobuf-c update rejects them itself, unpack returns NULL and this still
     * passes. */
    const uint8_t zero[] = {0x08, 0x01, 0x80, 0x00, 0x04};
    const uint8_t huge[] = {0x08, 0x01, 0x88, 0x80, 0x80, 0x80, 0x40, 0x05};
    const struct {
        const uint8_t *bytes;
        size_t len;
    } cases[] = {{zero, sizeof zero}, {huge, sizeof huge}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Kosmos__V1__ClientRequest *rq = kosmos__v1__client_request__unpack(NULL, cases[i].len,
                                                                           cases[i].bytes);
        if (!rq)
            continue;
        int invalid = 0;
        for (unsigned k = 0; k < rq->base.n_unknown_fields; k++) {
            uint32_t tag = rq->base.unknown_fields[k].tag;
            invalid += tag == 0 || tag > 0x1fffffffu;
        }
        assert_int_equal(invalid, 1);
        kosmos__v1__client_request__free_unpacked(rq, NULL);
    }
}

static void test_random_bytes_do_not_crash(void **state)
{
    (void)state;
    /* Fixed-seed xorshift: the same 20000 inputs every run; the fuzzers do the real search. */
    uint64_t x = 0x243f6a8885a308d3ull;
    uint8_t buf[96];
    int decoded = 0;
    for (int n = 0; n < 20000; n++) {
        size_t len = (size_t)(n % (int)sizeof buf);
        for (size_t i = 0; i < len; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = (uint8_t)x;
        }
        for (int k = 0; kps_messages[k]; k++) {
            const ProtobufCMessageDescriptor *d = descriptor_of(kps_messages[k]);
            ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, buf);
            if (m) {
                decoded++;
                protobuf_c_message_free_unpacked(m, NULL);
            }
        }
    }
    assert_true(decoded > 0); /* empty input is a valid (empty) message */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_every_sample),
        cmocka_unit_test(test_submit_fields_survive),
        cmocka_unit_test(test_result_fields_survive),
        cmocka_unit_test(test_presence_zero_versus_unset),
        cmocka_unit_test(test_unknown_fields_tolerated),
        cmocka_unit_test(test_unknown_oneof_member),
        cmocka_unit_test(test_unknown_enum_value_kept),
        cmocka_unit_test(test_truncated_rejected),
        cmocka_unit_test(test_garbage_rejected),
        cmocka_unit_test(test_invalid_field_numbers),
        cmocka_unit_test(test_random_bytes_do_not_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
