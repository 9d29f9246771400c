/* Unit tests for worker/text/postprocess: every line of the golden fixtures made from
 * transformers' post_process_generation (tests/golden/make_postprocess_fixtures.py), plus edge
 * cases: errors, limits, byte offsets and linear time on hostile 10 MB inputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "ks_file.h"
#include "ks_utf8.h"
#include "postprocess.h"

#define GOLDEN(name) KOSMOS_GOLDEN_DIR "/text/" name

/* ---- Fixture plumbing --------------------------------------------------------------------- */

typedef struct jsonl {
    char *data;
    size_t len, pos;
    int line;
} jsonl;

static void jsonl_open(jsonl *f, const char *path)
{
    memset(f, 0, sizeof *f);
    if (ks_file_read(path, (size_t)1 << 30, &f->data, &f->len) != KS_OK)
        fail_msg("cannot read %s: %s (run tests/golden/make_postprocess_fixtures.py)", path,
                 ks_error_message());
}

/* The next line as a JSON object (caller decrefs), or NULL at the end. */
static json_t *jsonl_next(jsonl *f)
{
    while (f->pos < f->len) {
        char *start = f->data + f->pos;
        char *nl = memchr(start, '\n', f->len - f->pos);
        size_t n = nl ? (size_t)(nl - start) : f->len - f->pos;
        f->pos += n + 1;
        f->line++;
        if (n == 0)
            continue;
        json_error_t err;
        json_t *row = json_loadb(start, n, JSON_ALLOW_NUL, &err);
        if (!row)
            fail_msg("line %d: bad JSON: %s", f->line, err.text);
        return row;
    }
    return NULL;
}

static void jsonl_close(jsonl *f) { free(f->data); }

static const char *str_of(json_t *row, const char *key, size_t *len)
{
    json_t *v = json_object_get(row, key);
    if (!json_is_string(v))
        fail_msg("fixture lacks string \"%s\"", key);
    *len = json_string_length(v);
    return json_string_value(v);
}

/* A short, printable excerpt of a fixture input for messages. */
static const char *excerpt(const char *s, size_t len)
{
    static char buf[160];
    size_t n = len < sizeof buf - 4 ? len : sizeof buf - 4;
    for (size_t i = 0; i < n; i++)
        buf[i] = (s[i] == '\n' || s[i] == '\0') ? '|' : s[i];
    strcpy(buf + n, len > n ? "..." : "");
    return buf;
}

static int check_row(json_t *row, int line)
{
    size_t in_len, want_len, raw_len;
    const char *in = str_of(row, "generated", &in_len);
    const char *want = str_of(row, "text", &want_len);
    const char *raw = str_of(row, "raw", &raw_len);
    json_t *want_entities = json_object_get(row, "entities");
    int bad = 0;

    ks_buf got_raw;
    ks_buf_init(&got_raw);
    if (kt_postprocess_raw(in, in_len, &got_raw) != KS_OK || got_raw.len != raw_len ||
        memcmp(got_raw.data, raw, raw_len) != 0) {
        print_error("line %d: raw differs for \"%s\"\n", line, excerpt(in, in_len));
        bad = 1;
    }
    ks_buf_fini(&got_raw);

    kt_grounding g;
    kt_grounding_init(&g);
    ks_status st = kt_postprocess(in, in_len, &g);
    if (st != KS_OK) {
        print_error("line %d: failed (%s) for \"%s\"\n", line, ks_error_message(),
                    excerpt(in, in_len));
        return 1;
    }
    if (g.text_len != want_len || memcmp(g.text, want, want_len) != 0) {
        print_error("line %d: text\n  got  \"%s\"\n", line, excerpt(g.text, g.text_len));
        print_error("  want \"%s\"\n", excerpt(want, want_len));
        bad = 1;
    }
    if (g.entity_count != json_array_size(want_entities)) {
        print_error("line %d: %zu entities, want %zu, for \"%s\"\n", line, g.entity_count,
                    json_array_size(want_entities), excerpt(in, in_len));
        bad = 1;
    }
    for (size_t k = 0; !bad && k < g.entity_count; k++) {
        json_t *we = json_array_get(want_entities, k);
        const kt_entity *e = &g.entities[k];
        json_t *wname = json_array_get(we, 0), *wspan = json_array_get(we, 1);
        json_t *wboxes = json_array_get(we, 2);
        int64_t ws = (int64_t)json_integer_value(json_array_get(wspan, 0));
        int64_t wend = (int64_t)json_integer_value(json_array_get(wspan, 1));
        if (e->phrase_len != json_string_length(wname) ||
            memcmp(e->phrase, json_string_value(wname), e->phrase_len) != 0 || e->start != ws ||
            e->end != wend || e->box_count != json_array_size(wboxes)) {
            print_error("line %d: entity %zu: got (\"%s\", %lld, %lld, %zu boxes)", line, k,
                        excerpt(e->phrase, e->phrase_len), (long long)e->start, (long long)e->end,
                        e->box_count);
            print_error(" want (\"%s\", %lld, %lld, %zu boxes)\n", json_string_value(wname),
                        (long long)ws, (long long)wend, json_array_size(wboxes));
            bad = 1;
            break;
        }
        for (size_t j = 0; j < e->box_count; j++)
            for (size_t c = 0; c < 4; c++) {
                double w = json_number_value(json_array_get(json_array_get(wboxes, j), c));
                if (e->boxes[j][c] != w) { /* bit-exact: same double arithmetic */
                    print_error("line %d: entity %zu box %zu[%zu]: got %.17g want %.17g\n", line, k,
                                j, c, e->boxes[j][c], w);
                    bad = 1;
                }
            }
        /* Byte offsets agree with the code-point span where it lies inside the text. */
        size_t text_cp = ks_utf8_count(g.text, g.text_len);
        if (e->start >= 0 && (size_t)e->start <= text_cp &&
            ks_utf8_count(g.text, e->start_byte) != (size_t)e->start) {
            print_error("line %d: entity %zu: start_byte %zu is not code point %lld\n", line, k,
                        e->start_byte, (long long)e->start);
            bad = 1;
        }
        if (e->end_byte < e->start_byte || e->end_byte > g.text_len) {
            print_error("line %d: entity %zu: bad byte span [%zu, %zu)\n", line, k, e->start_byte,
                        e->end_byte);
            bad = 1;
        }
    }
    /* The JSON form equals the fixture's (text, entities). */
    json_t *got_json = kt_grounding_to_json(&g);
    json_t *want_json = json_pack("{s:O,s:O}", "text", json_object_get(row, "text"), "entities",
                                  want_entities);
    if (!bad && !json_equal(got_json, want_json)) {
        char *dump = json_dumps(got_json, JSON_COMPACT);
        print_error("line %d: kt_grounding_to_json differs: %.300s\n", line, dump);
        free(dump);
        bad = 1;
    }
    json_decref(got_json);
    json_decref(want_json);
    kt_grounding_fini(&g);
    return bad;
}

static void test_golden(void **state)
{
    (void)state;
    jsonl f;
    jsonl_open(&f, GOLDEN("postprocess.jsonl"));
    int rows = 0, failures = 0;
    json_t *row;
    while ((row = jsonl_next(&f))) {
        rows++;
        failures += check_row(row, f.line);
        json_decref(row);
    }
    jsonl_close(&f);
    print_message("postprocess.jsonl: %d/%d lines match\n", rows - failures, rows);
    assert_true(rows >= 150);
    assert_int_equal(failures, 0);
}

/* Inputs the reference raises on: we fail with its message, and raw still works. */
static void test_golden_errors(void **state)
{
    (void)state;
    jsonl f;
    jsonl_open(&f, GOLDEN("postprocess_errors.jsonl"));
    int rows = 0, failures = 0;
    json_t *row;
    while ((row = jsonl_next(&f))) {
        rows++;
        size_t in_len, err_len, raw_len;
        const char *in = str_of(row, "generated", &in_len);
        const char *err = str_of(row, "error", &err_len);
        const char *raw = str_of(row, "raw", &raw_len);
        const char *colon = strstr(err, ": "); /* "ValueError: <message>" */
        const char *want = colon ? colon + 2 : err;
        kt_grounding g;
        kt_grounding_init(&g);
        ks_status st = kt_postprocess(in, in_len, &g);
        if (st != KS_ERR_INVALID || !strstr(ks_error_message(), want)) {
            print_error("line %d: got %s \"%s\", want \"%s\"\n", f.line, ks_status_name(st),
                        ks_error_message(), err);
            failures++;
        }
        if (g.entity_count || g.text) {
            print_error("line %d: output not empty after failure\n", f.line);
            failures++;
        }
        kt_grounding_fini(&g);
        ks_buf b;
        ks_buf_init(&b);
        if (kt_postprocess_raw(in, in_len, &b) != KS_OK || b.len != raw_len ||
            memcmp(b.data, raw, raw_len)) {
            print_error("line %d: raw differs\n", f.line);
            failures++;
        }
        ks_buf_fini(&b);
        json_decref(row);
    }
    jsonl_close(&f);
    print_message("postprocess_errors.jsonl: %d lines\n", rows);
    assert_true(rows >= 5);
    assert_int_equal(failures, 0);
}

/* ---- Edge cases ---------------------------------------------------------------------------- */

static void test_rejects_bad_utf8_and_oversize(void **state)
{
    (void)state;
    kt_grounding g;
    kt_grounding_init(&g);
    assert_int_equal(kt_postprocess("a\xff<phrase>", 10, &g), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "UTF-8"));
    assert_int_equal(kt_postprocess("\xed\xa0\x80", 3, &g), KS_ERR_INVALID); /* a surrogate */
    /* The limit is checked before the bytes are read. */
    assert_int_equal(kt_postprocess("x", KT_POSTPROCESS_MAX_BYTES + 1, &g), KS_ERR_LIMIT);
    ks_buf b;
    ks_buf_init(&b);
    assert_int_equal(kt_postprocess_raw("x", KT_POSTPROCESS_MAX_BYTES + 1, &b), KS_ERR_LIMIT);
    assert_int_equal(kt_postprocess_raw(NULL, 0, &b), KS_OK);
    assert_int_equal(b.len, 0);
    ks_buf_fini(&b);
    assert_int_equal(kt_postprocess(NULL, 0, &g), KS_OK);
    assert_int_equal(g.text_len, 0);
    assert_string_equal(g.text, "");
    kt_grounding_fini(&g);
    kt_grounding_fini(&g); /* twice is fine */
}

static void test_byte_offsets_and_reuse(void **state)
{
    (void)state;
    const char *s = "</image>\xe3\x80\x80\xe7\x8c\xab<phrase> \xf0\x9f\x98\x80 dog</phrase><object>"
                    "<patch_index_0044><patch_index_0863></object>!";
    kt_grounding g;
    kt_grounding_init(&g);
    assert_int_equal(kt_postprocess(s, strlen(s), &g), KS_OK);
    assert_string_equal(g.text, "\xe7\x8c\xab \xf0\x9f\x98\x80 dog!");
    assert_int_equal(g.entity_count, 1);
    assert_string_equal(g.entities[0].phrase, "\xf0\x9f\x98\x80 dog");
    assert_int_equal(g.entities[0].start, 2);
    assert_int_equal(g.entities[0].end, 7);
    assert_int_equal(g.entities[0].start_byte, 4);
    assert_int_equal(g.entities[0].end_byte, 12);
    assert_true(g.entities[0].patches[0][0] == 44 && g.entities[0].patches[0][1] == 863);
    /* Reusing `out` frees the previous result (ASan checks for the leak). */
    assert_int_equal(kt_postprocess("<object><patch_index_1><patch_index_1></object>", 47, &g),
                     KS_OK);
    assert_int_equal(g.entity_count, 1);
    assert_string_equal(g.entities[0].phrase, "<patch_index_1><patch_index_1>");
    assert_true(g.entities[0].boxes[0][2] == 0.0625);
    kt_grounding_fini(&g);
}

/* Spans outside the text (an all-space phrase; an unclosed '<' before a bare object) keep the
 * reference's values, while the byte span is clamped to a valid slice. */
static void test_out_of_text_spans(void **state)
{
    (void)state;
    kt_grounding g;
    kt_grounding_init(&g);
    const char *s = "  <phrase>   </phrase><object><patch_index_0001><patch_index_0002></object>";
    assert_int_equal(kt_postprocess(s, strlen(s), &g), KS_OK);
    assert_true(g.entities[0].start == 0);
    assert_true(g.entities[0].end == -3); /* 5 - 5 leading - 3 trailing name spaces */
    assert_int_equal(g.entities[0].start_byte, 0);
    assert_int_equal(g.entities[0].end_byte, 0);
    s = "a <b c<object><patch_index_0001><patch_index_0002></object>";
    assert_int_equal(kt_postprocess(s, strlen(s), &g), KS_OK);
    assert_string_equal(g.text, "a");
    assert_int_equal(g.entities[0].start, 6);
    assert_int_equal(g.entities[0].start_byte, 1);
    assert_int_equal(g.entities[0].end_byte, 1);
    kt_grounding_fini(&g);
}

/* The patch pairs as int() parsed them: any Unicode digits, leading zeros, saturated at
 * INT64_MAX; the name of a bare object uses the exact value. */
static void test_patch_pairs(void **state)
{
    (void)state;
    const char *s = "<object><patch_index_99999999999999999999>"
                    "<patch_index_\xd9\xa0\xd9\xa4\xd9\xa4></object>"; /* Arabic-Indic 044 */
    kt_grounding g;
    kt_grounding_init(&g);
    assert_int_equal(kt_postprocess(s, strlen(s), &g), KS_OK);
    assert_int_equal(g.entity_count, 1);
    assert_string_equal(g.entities[0].phrase, "<patch_index_99999999999999999999><patch_index_44>");
    assert_true(g.entities[0].patches[0][0] == INT64_MAX);
    assert_true(g.entities[0].patches[0][1] == 44);
    kt_grounding_fini(&g);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* 10 MB made of `unit` repeated, then post-processed: must finish in linear-ish time. */
static void run_big(const char *unit, size_t expect_entities_per_unit)
{
    size_t unit_len = strlen(unit), reps = ((size_t)10 << 20) / unit_len;
    char *s = malloc(reps * unit_len + 1);
    assert_non_null(s);
    for (size_t i = 0; i < reps; i++)
        memcpy(s + i * unit_len, unit, unit_len);
    s[reps * unit_len] = '\0';
    kt_grounding g;
    kt_grounding_init(&g);
    double t0 = now_s();
    assert_int_equal(kt_postprocess(s, reps * unit_len, &g), KS_OK);
    double dt = now_s() - t0;
    print_message("10 MB of \"%.40s\": %zu entities in %.2f s\n", unit, g.entity_count, dt);
    assert_int_equal(g.entity_count, reps * expect_entities_per_unit);
    assert_true(dt < 60.0); /* quadratic would be hours; generous for sanitizer builds */
    kt_grounding_fini(&g);
    free(s);
}

static void test_linear_on_hostile_inputs(void **state)
{
    (void)state;
    run_big("<", 0);        /* every '<' looks for a '>' that never comes */
    run_big("<phrase>", 0); /* phrases that never close */
    run_big("<phrase>a", 0);
    run_big("<object><patch_index_1><patch_index_2></delimiter_of_multi_objects/>", 0);
    run_big("<phrase> x</phrase><object><patch_index_1><patch_index_2></object>", 1);
    run_big("<object><patch_index_0001><patch_index_0002></object>", 1);
    run_big("<a\n", 0);
    run_big("</image", 0);
    run_big(" \xe3\x80\x80", 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_golden_errors),
        cmocka_unit_test(test_rejects_bad_utf8_and_oversize),
        cmocka_unit_test(test_byte_offsets_and_reuse),
        cmocka_unit_test(test_out_of_text_spans),
        cmocka_unit_test(test_patch_pairs),
        cmocka_unit_test(test_linear_on_hostile_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
