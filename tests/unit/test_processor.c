/* Unit tests for worker/text/processor (and patch_grid): every line of the golden fixtures made
 * from transformers' Kosmos2Processor (tests/golden/make_processor_fixtures.py), first the text
 * handed to the tokenizer (no tokenizer needed), then the ids with the real tokenizer model;
 * plus edge cases of the box JSON, limits and the grid arithmetic. */
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
#include "patch_grid.h"
#include "processor.h"

#define GOLDEN(name) KOSMOS_GOLDEN_DIR "/text/" name

/* ---- Fixture plumbing --------------------------------------------------------------------- */

typedef struct fixture {
    json_t **rows;
    size_t count;
} fixture;

static void fixture_load(fixture *f)
{
    char *data;
    size_t len;
    memset(f, 0, sizeof *f);
    if (ks_file_read(GOLDEN("processor.jsonl"), (size_t)1 << 28, &data, &len) != KS_OK)
        fail_msg("cannot read processor.jsonl: %s (run tests/golden/make_processor_fixtures.py)",
                 ks_error_message());
    size_t cap = 0;
    for (size_t pos = 0; pos < len;) {
        char *nl = memchr(data + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (data + pos)) : len - pos;
        if (n) {
            json_error_t err;
            json_t *row = json_loadb(data + pos, n, JSON_ALLOW_NUL, &err);
            if (!row)
                fail_msg("line %zu: bad JSON: %s", f->count + 1, err.text);
            if (f->count == cap) {
                cap = cap ? cap * 2 : 64;
                f->rows = realloc(f->rows, cap * sizeof *f->rows);
                assert_non_null(f->rows);
            }
            f->rows[f->count++] = row;
        }
        pos += n + 1;
    }
    free(data);
}

static void fixture_free(fixture *f)
{
    for (size_t i = 0; i < f->count; i++)
        json_decref(f->rows[i]);
    free(f->rows);
}

static const char *prompt_of(json_t *row, size_t *len)
{
    json_t *p = json_object_get(row, "prompt");
    *len = json_string_length(p);
    return json_string_value(p);
}

static const char *short_text(const char *s)
{
    static char buf[100];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *c = buf; *c; c++)
        if (*c == '\n')
            *c = '|';
    return buf;
}

/* Boxes + text for one row: KS_OK and the text in `text`, or the failing status. */
static ks_status build(json_t *row, ks_buf *text)
{
    kt_bboxes b;
    kt_bboxes_init(&b);
    size_t len;
    const char *prompt = prompt_of(row, &len);
    ks_status st = kt_bboxes_from_json(json_object_get(row, "bboxes"), &b);
    if (st == KS_OK)
        st = kt_processor_build_text(prompt, len, &b, text);
    kt_bboxes_fini(&b);
    return st;
}

/* An error line: we fail with KS_ERR_INVALID, with the reference's own message when it raised
 * Kosmos2Processor's ValueError. */
static int check_error(json_t *row, size_t line, ks_status st)
{
    const char *want = json_string_value(json_object_get(row, "error"));
    const char *type = json_string_value(json_object_get(row, "error_type"));
    size_t len;
    const char *prompt = prompt_of(row, &len);
    if (st != KS_ERR_INVALID) {
        print_error("line %zu: \"%s\": got %s, want an error (%s)\n", line, short_text(prompt),
                    ks_status_name(st), short_text(want));
        return 1;
    }
    if (type && strcmp(type, "ValueError") == 0 && !strstr(ks_error_message(), want)) {
        print_error("line %zu: \"%s\": message \"%s\"\n  does not hold the reference's \"%s\"\n",
                    line, short_text(prompt), ks_error_message(), want);
        return 1;
    }
    return 0;
}

/* The text the reference tokenizes: needs no tokenizer. */
static void test_golden_text(void **state)
{
    (void)state;
    fixture f;
    fixture_load(&f);
    int failures = 0, errors = 0;
    for (size_t i = 0; i < f.count; i++) {
        json_t *row = f.rows[i];
        ks_buf text;
        ks_buf_init(&text);
        ks_status st = build(row, &text);
        if (json_object_get(row, "error")) {
            errors++;
            failures += check_error(row, i + 1, st);
        } else {
            json_t *want = json_object_get(row, "processed_text");
            size_t len;
            const char *prompt = prompt_of(row, &len);
            if (st != KS_OK) {
                print_error("line %zu: \"%s\": failed: %s\n", i + 1, short_text(prompt),
                            ks_error_message());
                failures++;
            } else if (text.len != json_string_length(want) ||
                       memcmp(text.data, json_string_value(want), text.len) != 0) {
                print_error("line %zu: text differs\n  got  \"%s\"\n", i + 1,
                            text.data + 340 * (text.len > 340));
                print_error("  want \"%s\"\n",
                            json_string_value(want) + 340 * (json_string_length(want) > 340));
                failures++;
            }
        }
        ks_buf_fini(&text);
    }
    print_message("processor.jsonl text: %zu/%zu lines match (%d are errors)\n",
                  f.count - (size_t)failures, f.count, errors);
    assert_true(f.count >= 80);
    fixture_free(&f);
    assert_int_equal(failures, 0);
}

static int compare_array(json_t *want, const void *got, size_t len, bool ids, size_t line,
                         const char *what)
{
    size_t n = json_array_size(want);
    for (size_t k = 0; k < n || k < len; k++) {
        long long w = k < n ? (long long)json_integer_value(json_array_get(want, k)) : -1;
        long long g = k >= len ? -1
                      : ids    ? (long long)((const int32_t *)got)[k]
                               : (long long)((const uint8_t *)got)[k];
        if (k >= n || k >= len || w != g) {
            print_error("line %zu: %s differ at %zu (got %lld, want %lld; lengths %zu, %zu)\n",
                        line, what, k, g, w, len, n);
            return 1;
        }
    }
    return 0;
}

/* The ids, with the real tokenizer. */
static void test_golden_ids(void **state)
{
    (void)state;
    kt_tokenizer *t = NULL;
    if (kt_tokenizer_new(KOSMOS_TEST_DATA_DIR "/kosmos2", &t) != KS_OK)
        fail_msg("cannot load the tokenizer: %s", ks_error_message());
    fixture f;
    fixture_load(&f);
    int failures = 0;
    for (size_t i = 0; i < f.count; i++) {
        json_t *row = f.rows[i];
        size_t len;
        const char *prompt = prompt_of(row, &len);
        kt_bboxes b;
        kt_bboxes_init(&b);
        kt_encoding e;
        kt_encoding_init(&e);
        ks_status st = kt_bboxes_from_json(json_object_get(row, "bboxes"), &b);
        if (st == KS_OK)
            st = kt_processor_encode(t, prompt, len, &b, &e);
        if (json_object_get(row, "error")) {
            failures += check_error(row, i + 1, st);
        } else if (st != KS_OK) {
            print_error("line %zu: \"%s\": failed: %s\n", i + 1, short_text(prompt),
                        ks_error_message());
            failures++;
        } else {
            int bad = compare_array(json_object_get(row, "input_ids"), e.input_ids.v, e.len, true,
                                    i + 1, "input_ids");
            if (!bad)
                bad = compare_array(json_object_get(row, "attention_mask"), e.attention_mask, e.len,
                                    false, i + 1, "attention_mask");
            if (!bad)
                bad = compare_array(json_object_get(row, "image_embeds_position_mask"),
                                    e.image_embeds_position_mask, e.len, false, i + 1,
                                    "image_embeds_position_mask");
            if (bad)
                print_error("  prompt \"%s\"\n", short_text(prompt));
            failures += bad;
        }
        kt_encoding_fini(&e);
        kt_bboxes_fini(&b);
    }
    print_message("processor.jsonl ids: %zu/%zu lines match\n", f.count - (size_t)failures,
                  f.count);
    fixture_free(&f);
    kt_tokenizer_destroy(&t);
    assert_int_equal(failures, 0);
}

/* ---- Edge cases ---------------------------------------------------------------------------- */

static ks_status bboxes_from_string(const char *json, kt_bboxes *b)
{
    json_error_t err;
    json_t *v = json_loads(json, JSON_DECODE_ANY, &err);
    if (!v)
        fail_msg("bad test JSON %s: %s", json, err.text);
    ks_status st = kt_bboxes_from_json(v, b);
    json_decref(v);
    return st;
}

static void test_bboxes_json_forms(void **state)
{
    (void)state;
    kt_bboxes b;
    kt_bboxes_init(&b);
    assert_true(b.is_null);
    assert_int_equal(bboxes_from_string("null", &b), KS_OK);
    assert_true(b.is_null);
    assert_int_equal(bboxes_from_string("[]", &b), KS_OK);
    assert_false(b.is_null);
    assert_int_equal(b.count, 0);
    assert_int_equal(
        bboxes_from_string("[null, [1, 2], [0, 0, 1, 1], [], [[3, 4], [0.5, 0, 1, 0.5]]]", &b),
        KS_OK);
    assert_int_equal(b.count, 5);
    assert_true(b.phrases[0].is_null);
    assert_true(b.phrases[1].boxes[0].is_patch_pair);
    assert_int_equal(b.phrases[1].boxes[0].lr, 2);
    assert_false(b.phrases[2].boxes[0].is_patch_pair);
    assert_true(b.phrases[2].boxes[0].x2 == 1.0);
    assert_false(b.phrases[3].is_null);
    assert_int_equal(b.phrases[3].count, 0);
    assert_int_equal(b.phrases[4].count, 2);
    assert_true(b.phrases[4].boxes[1].x1 == 0.5);
    /* Shapes the reference rejects; the message names the entry. */
    const char *bad[] = {"5",
                         "\"x\"",
                         "{}",
                         "[5]",
                         "[[1, 2, 3]]",
                         "[[1.0, 2]]",
                         "[[true, 1]]",
                         "[[[1, 2], null]]",
                         "[[[[1, 2]]]]",
                         "[[0, 0, 1, \"1\"]]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(bboxes_from_string(bad[i], &b), KS_ERR_INVALID);
        assert_non_null(strstr(ks_error_message(), "bboxes"));
        assert_true(b.is_null && b.count == 0); /* left empty */
    }
    assert_int_equal(bboxes_from_string("[[[1, 2], [3]]]", &b), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "bboxes[0][1]"));
    kt_bboxes_fini(&b);
}

static void test_bboxes_limit(void **state)
{
    (void)state;
    json_t *entry = json_array();
    for (size_t i = 0; i <= KT_PROCESSOR_MAX_BOXES; i++)
        json_array_append_new(entry, json_pack("[ii]", 1, 2));
    json_t *all = json_pack("[o]", entry);
    kt_bboxes b;
    kt_bboxes_init(&b);
    assert_int_equal(kt_bboxes_from_json(all, &b), KS_ERR_LIMIT);
    json_decref(all);
    kt_bboxes_fini(&b);
}

static void test_grid_examples(void **state)
{
    (void)state;
    /* Reference doc section 9.4. */
    const double boxes[][4] = {{0.390625, 0.046875, 0.984375, 0.828125},
                               {0.1, 0.2, 0.3, 0.4},
                               {0.0, 0.0, 0.5, 0.5},
                               {0.25, 0.25, 0.75, 0.75},
                               {0.0, 0.0, 1.0, 1.0}};
    const int32_t want[][2] = {{44, 863}, {195, 393}, {0, 495}, {264, 759}, {0, 1023}};
    for (size_t i = 0; i < 5; i++) {
        int32_t ul = -1, lr = -1;
        assert_true(kt_patch_box_is_ordered(boxes[i]));
        assert_int_equal(kt_patch_box_to_indices(boxes[i], &ul, &lr), KS_OK);
        assert_int_equal(ul, want[i][0]);
        assert_int_equal(lr, want[i][1]);
    }
    const double bad[][4] = {{-0.1, 0, 0.5, 0.5}, {0, 0, 1.5, 1}, {0, 0, 1e-300, 1e-300}};
    for (size_t i = 0; i < 3; i++) {
        int32_t ul, lr;
        assert_int_equal(kt_patch_box_to_indices(bad[i], &ul, &lr), KS_ERR_INVALID);
    }
    /* Back to boxes (reference doc section 11, step 5). */
    double box[4];
    assert_int_equal(kt_patch_indices_to_box("0044", 4, "0863", 4, box), KS_OK);
    assert_true(box[0] == 0.390625 && box[1] == 0.046875 && box[2] == 0.984375 &&
                box[3] == 0.828125);
    assert_int_equal(kt_patch_indices_to_box("3", 1, "4", 1, box), KS_OK); /* same row */
    assert_true(box[0] == 0.09375 && box[1] == 0.0 && box[2] == 0.15625 && box[3] == 0.03125);
    assert_int_equal(kt_patch_indices_to_box("0000", 4, "0", 1, box), KS_OK); /* UL == LR */
    assert_true(box[2] == 0.03125 && box[3] == 0.03125);
    char big[400];
    memset(big, '9', sizeof big);
    assert_int_equal(kt_patch_indices_to_box(big, sizeof big, "1", 1, box), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "int too large to convert to float"));
}

static void test_prompt_limits_and_utf8(void **state)
{
    (void)state;
    ks_buf text;
    ks_buf_init(&text);
    assert_int_equal(kt_processor_build_text("x", KT_PROCESSOR_MAX_PROMPT_BYTES + 1, NULL, &text),
                     KS_ERR_LIMIT);
    assert_int_equal(kt_processor_build_text("a\xc3", 2, NULL, &text), KS_ERR_INVALID);
    assert_int_equal(text.len, 0);
    /* A failure leaves what `out` already held. */
    assert_int_equal(ks_buf_append_str(&text, "keep"), KS_OK);
    kt_bboxes b;
    kt_bboxes_init(&b);
    assert_int_equal(bboxes_from_string("[[1, 2], [0, 5000]]", &b), KS_OK);
    const char *p = "<phrase> a</phrase><phrase> b</phrase>";
    assert_int_equal(kt_processor_build_text(p, strlen(p), &b, &text), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "5000"));
    assert_string_equal(text.data, "keep");
    kt_bboxes_fini(&b);
    ks_buf_fini(&text);
}

/* Phrase matching stays linear on hostile prompts (1 MB of unclosed phrases). */
static void test_linear_phrase_search(void **state)
{
    (void)state;
    const char *units[] = {"<phrase>", "<phrase>a", "<phrase>\n</phrase>", "</phrase><phrase>x"};
    kt_bboxes b;
    kt_bboxes_init(&b);
    assert_int_equal(bboxes_from_string("[null]", &b), KS_OK);
    for (size_t u = 0; u < 4; u++) {
        size_t unit = strlen(units[u]), reps = KT_PROCESSOR_MAX_PROMPT_BYTES / unit;
        char *s = malloc(reps * unit);
        assert_non_null(s);
        for (size_t i = 0; i < reps; i++)
            memcpy(s + i * unit, units[u], unit);
        ks_buf text;
        ks_buf_init(&text);
        clock_t t0 = clock();
        ks_status st = kt_processor_build_text(s, reps * unit, &b, &text);
        double dt = (double)(clock() - t0) / CLOCKS_PER_SEC;
        print_message("1 MB of \"%s\": %s in %.3f s\n", short_text(units[u]), ks_status_name(st),
                      dt);
        assert_true(dt < 20.0);
        ks_buf_fini(&text);
        free(s);
    }
    kt_bboxes_fini(&b);
}

/* Reference doc section 9.2, first example, when the tokenizer works. */
static void test_brief_prompt_ids(void **state)
{
    (void)state;
    kt_tokenizer *t = NULL;
    if (kt_tokenizer_new(KOSMOS_TEST_DATA_DIR "/kosmos2", &t) != KS_OK)
        fail_msg("cannot load the tokenizer: %s", ks_error_message());
    kt_encoding e;
    kt_encoding_init(&e);
    assert_int_equal(kt_processor_encode(t, "<grounding>An image of", 22, NULL, &e), KS_OK);
    assert_int_equal(e.len, 71);
    assert_int_equal(e.input_ids.v[0], 0);
    assert_int_equal(e.input_ids.v[1], 64003);
    for (int i = 0; i < 64; i++) {
        assert_int_equal(e.input_ids.v[2 + i], 4 + i);
        assert_int_equal(e.image_embeds_position_mask[2 + i], 1);
    }
    assert_int_equal(e.input_ids.v[66], 64004);
    assert_int_equal(e.input_ids.v[67], 64012);
    assert_int_equal(e.input_ids.v[70], 9);
    assert_int_equal(e.image_embeds_position_mask[0] + e.image_embeds_position_mask[1] +
                         e.image_embeds_position_mask[66],
                     0);
    kt_encoding_fini(&e);
    kt_encoding_fini(&e);
    kt_tokenizer_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_text),          cmocka_unit_test(test_golden_ids),
        cmocka_unit_test(test_bboxes_json_forms),    cmocka_unit_test(test_bboxes_limit),
        cmocka_unit_test(test_grid_examples),        cmocka_unit_test(test_prompt_limits_and_utf8),
        cmocka_unit_test(test_linear_phrase_search), cmocka_unit_test(test_brief_prompt_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
