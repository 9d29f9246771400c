/* Unit tests for the tokenizer (worker/text/tokenizer.c): every line of the golden fixtures made
 * by tests/golden/make_tokenizer_fixtures.py from the reference (ids and the four decodes),
 * the id layout, error cases, the tokenizer_config.json switch and pathological inputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "ks_buf.h"
#include "ks_error.h"
#include "ks_file.h"
#include "sentencepiece_model.pb-c.h"
#include "tokenizer.h"

#define MODEL_DIR KOSMOS_TEST_DATA_DIR "/kosmos2"
#define MODEL_PATH MODEL_DIR "/sentencepiece.bpe.model"
#define CHECKPOINT_CONFIG MODEL_DIR "/checkpoint/tokenizer_config.json"
#define FIXTURES KOSMOS_GOLDEN_DIR "/text/tokenizer.jsonl"
#define DECODE_FIXTURES KOSMOS_GOLDEN_DIR "/text/tokenizer_decode.jsonl"
#define MAX_REPORTED 20

static const char *const DECODE_KEYS[4] = {"plain", "clean", "skip", "skip_clean"};
static const kt_decode_options DECODE_OPTIONS[4] = {{false, 0}, {false, 1}, {true, 0}, {true, 1}};

static int setup_tokenizer(void **state)
{
    kt_tokenizer *t = NULL;
    if (kt_tokenizer_new(MODEL_DIR, &t) != KS_OK) {
        fprintf(stderr, "cannot load the tokenizer: %s\n", ks_error_message());
        return -1;
    }
    *state = t;
    return 0;
}

static int teardown_tokenizer(void **state)
{
    kt_tokenizer *t = *state;
    kt_tokenizer_destroy(&t);
    return 0;
}

/* A temporary folder for files the tests write; removed by remove_tree. */
static char *make_temp_dir(void)
{
    char *dir = strdup("/tmp/test_tokenizer.XXXXXX");
    assert_non_null(dir);
    assert_non_null(mkdtemp(dir));
    return dir;
}

static char *write_temp(const char *dir, const char *name, const void *data, size_t len)
{
    char *path = ks_path_join(dir, name);
    assert_non_null(path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void remove_file(char *path)
{
    unlink(path);
    free(path);
}

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
    fprintf(stderr, "    %s [", label);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "%s%d", i ? ", " : "", (int)ids[i]);
    fprintf(stderr, "]\n");
}

/* Compares the four decodes of ids against the fixture's "decode" object; returns mismatches. */
static int check_decodes(const kt_tokenizer *t, const int32_t *ids, size_t n, json_t *expected,
                         const char *what, int reported)
{
    int bad = 0;
    for (int k = 0; k < 4; k++) {
        json_t *want = json_object_get(expected, DECODE_KEYS[k]);
        assert_true(json_is_string(want));
        ks_buf got;
        ks_buf_init(&got);
        ks_status st = kt_tokenizer_decode(t, ids, n, &DECODE_OPTIONS[k], &got);
        const char *got_s = got.data ? got.data : "";
        if (st != KS_OK || got.len != json_string_length(want) ||
            memcmp(got_s, json_string_value(want), got.len) != 0) {
            if (reported + bad < MAX_REPORTED)
                fprintf(stderr,
                        "  decode %s mismatch for %s\n    expected \"%s\"\n    got      "
                        "\"%s\" (%s)\n",
                        DECODE_KEYS[k], what, json_string_value(want), got_s,
                        st == KS_OK ? "ok" : ks_error_message());
            bad++;
        }
        ks_buf_fini(&got);
    }
    return bad;
}

/* Reads a JSON-lines fixture, calling `check` on each parsed line; returns the line count. */
typedef int (*line_check)(const kt_tokenizer *t, json_t *row, size_t line, int reported);

static size_t for_each_line(const kt_tokenizer *t, const char *path, line_check check,
                            int *mismatches)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s (run tests/golden/make_tokenizer_fixtures.py)", path);
    char *line = NULL;
    size_t cap = 0, count = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        json_error_t error;
        json_t *row = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &error);
        if (!row)
            fail_msg("%s:%zu: %s", path, count + 1, error.text);
        count++;
        *mismatches += check(t, row, count, *mismatches);
        json_decref(row);
    }
    free(line);
    fclose(f);
    return count;
}

static int check_encode_line(const kt_tokenizer *t, json_t *row, size_t line, int reported)
{
    json_t *text = json_object_get(row, "text"), *ids = json_object_get(row, "ids");
    assert_true(json_is_string(text) && json_is_array(ids));
    const char *s = json_string_value(text);
    size_t len = json_string_length(text);
    kt_ids got;
    kt_ids_init(&got);
    ks_status st = kt_tokenizer_encode(t, s, len, &got);
    bool same = st == KS_OK && got.len == json_array_size(ids);
    for (size_t i = 0; same && i < got.len; i++)
        same = got.v[i] == json_integer_value(json_array_get(ids, i));
    int bad = 0;
    char what[64];
    snprintf(what, sizeof what, "line %zu", line);
    if (!same) {
        if (reported < MAX_REPORTED) {
            fprintf(stderr, "  ids mismatch at line %zu (%s) for text \"%.300s\"\n", line,
                    st == KS_OK ? "ok" : ks_error_message(), s);
            size_t n = json_array_size(ids);
            int32_t *want = malloc((n ? n : 1) * sizeof *want);
            assert_non_null(want);
            for (size_t i = 0; i < n; i++)
                want[i] = (int32_t)json_integer_value(json_array_get(ids, i));
            print_ids("expected", want, n < 200 ? n : 200);
            print_ids("got     ", got.v, got.len < 200 ? got.len : 200);
            free(want);
        }
        bad++;
    } else {
        bad += check_decodes(t, got.v, got.len, json_object_get(row, "decode"), what,
                             reported + bad);
    }
    kt_ids_fini(&got);
    return bad;
}

static int check_decode_line(const kt_tokenizer *t, json_t *row, size_t line, int reported)
{
    json_t *ids = json_object_get(row, "ids");
    assert_true(json_is_array(ids));
    size_t n = json_array_size(ids);
    int32_t *v = malloc((n ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(ids, i));
    char what[64];
    snprintf(what, sizeof what, "decode line %zu", line);
    int bad = check_decodes(t, v, n, json_object_get(row, "decode"), what, reported);
    if (bad && reported < MAX_REPORTED)
        print_ids("ids", v, n);
    free(v);
    return bad;
}

static void test_encode_fixtures(void **state)
{
    int mismatches = 0;
    size_t lines = for_each_line(*state, FIXTURES, check_encode_line, &mismatches);
    fprintf(stderr, "tokenizer.jsonl: %zu lines, %d mismatches\n", lines, mismatches);
    assert_true(lines >= 1200);
    assert_int_equal(mismatches, 0);
}

static void test_decode_fixtures(void **state)
{
    int mismatches = 0;
    size_t lines = for_each_line(*state, DECODE_FIXTURES, check_decode_line, &mismatches);
    fprintf(stderr, "tokenizer_decode.jsonl: %zu lines, %d mismatches\n", lines, mismatches);
    assert_true(lines >= 200);
    assert_int_equal(mismatches, 0);
}

static void test_id_layout(void **state)
{
    const kt_tokenizer *t = *state;
    assert_int_equal(kt_tokenizer_vocab_size(t), 65037);
    assert_int_equal(kt_tokenizer_mask_id(t), 64001);
    assert_int_equal(kt_tokenizer_tag_id(t, KT_TAG_DOC_END), 64002);
    assert_int_equal(kt_tokenizer_tag_id(t, KT_TAG_GROUNDING), 64012);
    assert_int_equal(kt_tokenizer_patch_id(t, 0), 64013);
    assert_int_equal(kt_tokenizer_patch_id(t, 1023), 65036);
    assert_string_equal(kt_tokenizer_token_text(t, 0), "<s>");
    assert_string_equal(kt_tokenizer_token_text(t, 1), "<pad>");
    assert_string_equal(kt_tokenizer_token_text(t, 3), "<unk>");
    assert_string_equal(kt_tokenizer_token_text(t, 4), ".");
    assert_string_equal(kt_tokenizer_token_text(t, 5), "\xE2\x96\x81the");
    assert_string_equal(kt_tokenizer_token_text(t, 64001), "<mask>");
    assert_string_equal(kt_tokenizer_token_text(t, 64011), "</delimiter_of_multi_objects/>");
    assert_string_equal(kt_tokenizer_token_text(t, 65036), "<patch_index_1023>");
    assert_null(kt_tokenizer_token_text(t, -1));
    assert_null(kt_tokenizer_token_text(t, 65037));
    assert_false(kt_tokenizer_clean_up_default(t)); /* no tokenizer_config.json there */

    /* The documented example: "<s><grounding> An image of.</s>". */
    const int32_t ids[] = {0, 64012, 712, 1648, 9, 4, 2};
    ks_buf out;
    ks_buf_init(&out);
    kt_decode_options plain = {false, -1};
    assert_int_equal(kt_tokenizer_decode(t, ids, 7, &plain, &out), KS_OK);
    assert_string_equal(out.data, "<s><grounding> An image of.</s>");
    ks_buf_clear(&out);
    assert_int_equal(kt_tokenizer_decode(t, ids, 7, NULL, &out), KS_OK); /* NULL = defaults */
    assert_string_equal(out.data, "<s><grounding> An image of.</s>");
    ks_buf_fini(&out);
}

static void test_invalid_utf8(void **state)
{
    const kt_tokenizer *t = *state;
    static const char *const bad[] = {
        "\x80",         "a\xC3",
        "\xC0\xAF",     "\xE0\x80\xAF",
        "\xED\xA0\x80", "\xF4\x90\x80\x80",
        "\xFF",         "ok <phrase> \xE2\x82",
        "\xF0\x9F\x98",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kt_ids ids;
        kt_ids_init(&ids);
        ks_error_clear();
        assert_int_equal(kt_tokenizer_encode(t, bad[i], strlen(bad[i]), &ids), KS_ERR_INVALID);
        assert_true(strlen(ks_error_message()) > 0);
        kt_ids_fini(&ids);
    }
    /* Embedded NULs are text, not terminators. */
    kt_ids ids;
    kt_ids_init(&ids);
    assert_int_equal(kt_tokenizer_encode(t, "a\0b", 3, &ids), KS_OK);
    assert_int_equal(ids.len, 3);
    assert_int_equal(ids.v[1], KT_ID_UNK);
    kt_ids_fini(&ids);
}

static void test_out_of_range_ids(void **state)
{
    const kt_tokenizer *t = *state;
    const int32_t bad[][2] = {{5, -1}, {65037, 5}, {INT32_MAX, 0}, {INT32_MIN, 0}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ks_buf out;
        ks_buf_init(&out);
        assert_int_equal(kt_tokenizer_decode(t, bad[i], 2, NULL, &out), KS_ERR_INVALID);
        assert_int_equal(out.len, 0); /* nothing appended on failure */
        ks_buf_fini(&out);
    }
    ks_buf out;
    ks_buf_init(&out);
    assert_int_equal(ks_buf_append_str(&out, "keep:"), KS_OK);
    const int32_t ok[] = {65036};
    assert_int_equal(kt_tokenizer_decode(t, ok, 1, NULL, &out), KS_OK);
    assert_string_equal(out.data, "keep:<patch_index_1023>");
    assert_int_equal(kt_tokenizer_decode(t, NULL, 0, NULL, &out), KS_OK);
    assert_string_equal(out.data, "keep:<patch_index_1023>");
    ks_buf_fini(&out);
}

/* Loading must fail, with a message; returns the status for the caller to check. */
static ks_status expect_load_failure(const char *spm, const char *config)
{
    ks_error_clear();
    kt_tokenizer *t = NULL;
    ks_status st = kt_tokenizer_new_from_files(spm, config, &t);
    if (st == KS_OK) {
        kt_tokenizer_destroy(&t);
        fail_msg("loading %s / %s should have failed", spm, config ? config : "(none)");
    }
    assert_null(t);
    assert_true(strlen(ks_error_message()) > 0);
    return st;
}

/* The real model re-packed after `edit` changed it. */
static char *write_edited_model(const char *dir, const char *name,
                                void (*edit)(Sentencepiece__ModelProto *))
{
    char *data;
    size_t len;
    assert_int_equal(ks_file_read(MODEL_PATH, 64u << 20, &data, &len), KS_OK);
    Sentencepiece__ModelProto *proto = sentencepiece__model_proto__unpack(NULL, len,
                                                                          (const uint8_t *)data);
    assert_non_null(proto);
    edit(proto);
    size_t size = sentencepiece__model_proto__get_packed_size(proto);
    uint8_t *packed = malloc(size);
    assert_non_null(packed);
    sentencepiece__model_proto__pack(proto, packed);
    char *path = write_temp(dir, name, packed, size);
    free(packed);
    free(data);
    sentencepiece__model_proto__free_unpacked(proto, NULL);
    return path;
}

static void make_bpe(Sentencepiece__ModelProto *p)
{
    p->trainer_spec->has_model_type = 1;
    p->trainer_spec->model_type = SENTENCEPIECE__TRAINER_SPEC__MODEL_TYPE__BPE;
}

static void keep_two_pieces(Sentencepiece__ModelProto *p)
{
    p->n_pieces = 2; /* pack writes only these; free_unpacked would leak the rest, so swap back */
}

static void drop_charsmap(Sentencepiece__ModelProto *p)
{
    p->normalizer_spec->has_precompiled_charsmap = 0;
}

static void test_load_errors(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char *data;
    size_t len;
    assert_int_equal(ks_file_read(MODEL_PATH, 64u << 20, &data, &len), KS_OK);

    /* The cause travels with the failure: a missing file is not a corrupt one. */
    assert_int_equal(expect_load_failure("/nonexistent/sentencepiece.bpe.model", NULL), KS_ERR_IO);
    ks_error_clear();
    kt_tokenizer *t = NULL;
    assert_int_not_equal(kt_tokenizer_new("/nonexistent", &t), KS_OK);
    assert_null(t);
    assert_true(strlen(ks_error_message()) > 0);
    assert_int_equal(expect_load_failure(MODEL_PATH, "/nonexistent/tokenizer_config.json"),
                     KS_ERR_IO);

    char *empty = write_temp(dir, "empty.model", "", 0);
    expect_load_failure(empty, NULL);
    for (size_t cut = 1; cut < len; cut = cut * 3 + 1) {
        char *truncated = write_temp(dir, "truncated.model", data, cut);
        expect_load_failure(truncated, NULL);
        remove_file(truncated);
    }
    char *half = write_temp(dir, "half.model", data, len / 2);
    expect_load_failure(half, NULL);
    srand(7);
    unsigned char garbage[4096];
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (unsigned char)(rand() & 0xFF);
    char *junk = write_temp(dir, "garbage.model", garbage, sizeof garbage);
    expect_load_failure(junk, NULL);
    char *text = write_temp(dir, "text.model", "this is not a model\n", 20);
    assert_int_equal(expect_load_failure(text, NULL), KS_ERR_FORMAT);

    char *bpe = write_edited_model(dir, "bpe.model", make_bpe);
    expect_load_failure(bpe, NULL);
    char *nomap = write_edited_model(dir, "nomap.model", drop_charsmap);
    expect_load_failure(nomap, NULL);
    /* Re-pack with only two pieces, restoring the count before the proto is freed. */
    {
        Sentencepiece__ModelProto *proto =
            sentencepiece__model_proto__unpack(NULL, len, (const uint8_t *)data);
        assert_non_null(proto);
        size_t n = proto->n_pieces;
        keep_two_pieces(proto);
        size_t size = sentencepiece__model_proto__get_packed_size(proto);
        uint8_t *packed = malloc(size);
        assert_non_null(packed);
        sentencepiece__model_proto__pack(proto, packed);
        proto->n_pieces = n;
        sentencepiece__model_proto__free_unpacked(proto, NULL);
        char *small = write_temp(dir, "small.model", packed, size);
        free(packed);
        expect_load_failure(small, NULL);
        remove_file(small);
    }

    static const char *const bad_configs[] = {
        "{",
        "[1, 2]",
        "{\"clean_up_tokenization_spaces\": \"yes\"}",
        "not json",
        "",
        "{\"clean_up_tokenization_spaces\": 1}",
        "{\"clean_up_tokenization_spaces\": true",
    };
    for (size_t i = 0; i < sizeof bad_configs / sizeof bad_configs[0]; i++) {
        char *config = write_temp(dir, "tokenizer_config.json", bad_configs[i],
                                  strlen(bad_configs[i]));
        expect_load_failure(MODEL_PATH, config);
        remove_file(config);
    }

    remove_file(empty);
    remove_file(half);
    remove_file(junk);
    remove_file(text);
    remove_file(bpe);
    remove_file(nomap);
    free(data);
    rmdir(dir);
    free(dir);
}

static void test_config_flips_clean_up_default(void **state)
{
    (void)state;
    /* The checkpoint's config says clean_up_tokenization_spaces: true. */
    kt_tokenizer *t = NULL;
    assert_int_equal(kt_tokenizer_new_from_files(MODEL_PATH, CHECKPOINT_CONFIG, &t), KS_OK);
    assert_non_null(t);
    assert_true(kt_tokenizer_clean_up_default(t));
    kt_ids ids;
    kt_ids_init(&ids);
    const char *text = "Hello , world ! isn't it ?";
    assert_int_equal(kt_tokenizer_encode(t, text, strlen(text), &ids), KS_OK);
    ks_buf out;
    ks_buf_init(&out);
    kt_decode_options defaults = {false, -1}, raw = {false, 0};
    assert_int_equal(kt_tokenizer_decode(t, ids.v, ids.len, &defaults, &out), KS_OK);
    assert_string_equal(out.data, "Hello, world! isn't it?");
    ks_buf_clear(&out);
    assert_int_equal(kt_tokenizer_decode(t, ids.v, ids.len, &raw, &out), KS_OK);
    assert_string_equal(out.data, "Hello , world ! isn't it ?");
    ks_buf_fini(&out);
    kt_ids_fini(&ids);
    kt_tokenizer_destroy(&t);
    kt_tokenizer_destroy(&t); /* destroy is idempotent on NULL */

    /* A folder with the model and a config saying false, or saying nothing. */
    char *dir = make_temp_dir();
    char *data;
    size_t len;
    assert_int_equal(ks_file_read(MODEL_PATH, 64u << 20, &data, &len), KS_OK);
    char *model = write_temp(dir, "sentencepiece.bpe.model", data, len);
    free(data);
    static const char *const configs[] = {"{\"clean_up_tokenization_spaces\": false}", "{}",
                                          "{\"clean_up_tokenization_spaces\": true}"};
    for (size_t i = 0; i < 3; i++) {
        char *config = write_temp(dir, "tokenizer_config.json", configs[i], strlen(configs[i]));
        assert_int_equal(kt_tokenizer_new(dir, &t), KS_OK);
        assert_non_null(t);
        assert_int_equal(kt_tokenizer_clean_up_default(t), i == 2);
        kt_tokenizer_destroy(&t);
        remove_file(config);
    }
    remove_file(model);
    rmdir(dir);
    free(dir);
}

/* One pathological input of about `size` bytes made of `unit` repeated, with `tail` after. */
static void encode_big(const kt_tokenizer *t, const char *unit, const char *tail, size_t size)
{
    size_t ulen = strlen(unit), tlen = strlen(tail), reps = size / ulen;
    char *s = malloc(reps * ulen + tlen + 1);
    assert_non_null(s);
    for (size_t i = 0; i < reps; i++)
        memcpy(s + i * ulen, unit, ulen);
    memcpy(s + reps * ulen, tail, tlen);
    kt_ids ids;
    kt_ids_init(&ids);
    clock_t start = clock();
    assert_int_equal(kt_tokenizer_encode(t, s, reps * ulen + tlen, &ids), KS_OK);
    double seconds = (double)(clock() - start) / CLOCKS_PER_SEC;
    fprintf(stderr, "  %zu x \"%s\" + \"%s\": %zu ids in %.3f s\n", reps, unit, tail, ids.len,
            seconds);
    /* Linear work finishes in well under a second even under sanitizers; quadratic work on a
     * megabyte would take hours, so this bound only catches the latter. */
    assert_true(seconds < 60.0);
    kt_ids_fini(&ids);
    free(s);
}

static void test_pathological_inputs(void **state)
{
    const kt_tokenizer *t = *state;
    const size_t mb = 1u << 20;
    encode_big(t, "a", "", mb);                                /* one huge word */
    encode_big(t, "qz", "", mb);                               /* pieces that do not chain */
    encode_big(t, "\xE2\x98\x83", "", mb);                     /* unknown characters, fused */
    encode_big(t, "\xCC\x81", "", mb);                         /* one huge grapheme cluster */
    encode_big(t, "\xE2\x96\x81", "", mb);                     /* U+2581 */
    encode_big(t, "<", "", mb);                                /* added-token prefixes */
    encode_big(t, "<patch_index_000", "", mb);                 /* near-miss added tokens */
    encode_big(t, " ", "<phrase>", mb);                        /* lstrip over a long space run */
    encode_big(t, "\xE3\x80\x80", "<phrase>x", mb);            /* ... of U+3000 */
    encode_big(t, "<phrase> ", "", mb);                        /* many added tokens */
    encode_big(t, "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD", "", mb); /* emoji + skin tone */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_fixtures),  cmocka_unit_test(test_decode_fixtures),
        cmocka_unit_test(test_id_layout),        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_out_of_range_ids), cmocka_unit_test(test_pathological_inputs),
    };
    const struct CMUnitTest standalone[] = {
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_config_flips_clean_up_default),
    };
    int failed = cmocka_run_group_tests_name("tokenizer", tests, setup_tokenizer,
                                             teardown_tokenizer);
    failed += cmocka_run_group_tests_name("tokenizer loading", standalone, NULL, NULL);
    return failed;
}
