/* Unit tests for worker/engine model loading: config.json parsing, the safetensors reader and
 * writer, number conversions, and ke_model_load on the tiny checkpoint (tests/data/tiny-kosmos2,
 * made by tests/golden/make_test_checkpoint.py) and on broken copies of it built in a temporary
 * folder at test time. Every broken folder must give a clear message, never a crash. Also: a
 * model made without a checkpoint (ke_model_new_random) is freed by ke_model_destroy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <malloc.h>

#include "ks_error.h"
#include "ks_file.h"
#include "model.h"
#include "model_config.h"
#include "model_random.h"
#include "safetensors.h"

#define TINY KOSMOS_GOLDEN_DIR "/../data/tiny-kosmos2"
#define GOLDEN_ENGINE KOSMOS_GOLDEN_DIR "/engine"

/* ---- helpers ---- */

static char *read_all(const char *path, size_t *len)
{
    char *data = NULL;
    assert_int_equal(ks_file_read(path, 64u << 20, &data, len), KS_OK);
    return data;
}

static void write_all(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static char *join(const char *dir, const char *name)
{
    char *p = ks_path_join(dir, name);
    assert_non_null(p);
    return p;
}

static void copy_file(const char *from_dir, const char *to_dir, const char *name)
{
    char *src = join(from_dir, name), *dst = join(to_dir, name);
    size_t len;
    char *data = read_all(src, &len);
    write_all(dst, data, len);
    free(data);
    free(src);
    free(dst);
}

/* A fresh copy of the tiny checkpoint's config and weights. */
typedef struct folder {
    char dir[64];
} folder;

static void folder_make(folder *f, int with_weights)
{
    snprintf(f->dir, sizeof f->dir, "/tmp/ke_load_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    copy_file(TINY, f->dir, "config.json");
    copy_file(TINY, f->dir, "generation_config.json");
    if (with_weights)
        copy_file(TINY, f->dir, "model.safetensors");
}

static void folder_remove(folder *f)
{
    const char *names[] = {"config.json",
                           "generation_config.json",
                           "model.safetensors",
                           "model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors",
                           "model.safetensors.index.json"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *p = join(f->dir, names[i]);
        unlink(p);
        free(p);
    }
    assert_int_equal(rmdir(f->dir), 0);
}

/* Loading must fail with a message containing every one of the NULL-terminated needles. */
static void expect_load_error(const char *dir, ke_dtype storage, ...)
{
    ke_model_options opt = {.storage = storage};
    ks_error_clear();
    ke_model *m = NULL;
    ks_status st = ke_model_load(dir, &opt, &m);
    const char *msg = ks_error_message();
    if (st == KS_OK)
        fail_msg("loading %s succeeded", dir);
    assert_null(m);
    print_message("    -> %s\n", msg);
    va_list ap;
    va_start(ap, storage);
    for (const char *needle; (needle = va_arg(ap, const char *));)
        if (!strstr(msg, needle))
            fail_msg("message \"%s\" lacks \"%s\"", msg, needle);
    va_end(ap);
}

static uint64_t header_len(const char *data)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | (unsigned char)data[i];
    return n;
}

/* Rewrites DIR/model.safetensors with its header JSON passed through `edit` (data unchanged). */
static void edit_header(const char *dir, void (*edit)(json_t *root))
{
    char *path = join(dir, "model.safetensors");
    size_t len;
    char *data = read_all(path, &len);
    uint64_t hlen = header_len(data);
    json_t *root = json_loadb(data + 8, (size_t)hlen, 0, NULL);
    assert_non_null(root);
    edit(root);
    char *text = json_dumps(root, JSON_COMPACT);
    assert_non_null(text);
    size_t tlen = strlen(text), padded = (tlen + 7) / 8 * 8;
    size_t data_len = len - 8 - (size_t)hlen;
    char *out = malloc(8 + padded + data_len);
    assert_non_null(out);
    for (int i = 0; i < 8; i++)
        out[i] = (char)((uint64_t)padded >> (8 * i));
    memset(out + 8, ' ', padded);
    memcpy(out + 8, text, tlen);
    memcpy(out + 8 + padded, data + 8 + hlen, data_len);
    write_all(path, out, 8 + padded + data_len);
    free(out);
    free(text);
    json_decref(root);
    free(data);
    free(path);
}

static void edit_config(const char *dir, void (*edit)(json_t *root))
{
    char *path = join(dir, "config.json");
    json_t *root = json_load_file(path, 0, NULL);
    assert_non_null(root);
    edit(root);
    assert_int_equal(json_dump_file(root, path, JSON_INDENT(2)), 0);
    json_decref(root);
    free(path);
}

static float max_abs_diff_f32(const ke_tensor *t, const float *want, size_t n)
{
    float *got = malloc(n * sizeof *got);
    assert_non_null(got);
    ke_tensor_read_f32(t, 0, n, got);
    float worst = 0;
    for (size_t i = 0; i < n; i++) {
        float d = got[i] > want[i] ? got[i] - want[i] : want[i] - got[i];
        if (!(d <= worst))
            worst = d;
    }
    free(got);
    return worst;
}

/* ---- number formats ---- */

static uint32_t rng_state = 12345u;
static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void test_f16_conversions(void **state)
{
    (void)state;
    /* Every half value survives half -> float -> half. */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ke_f16_to_f32((uint16_t)h);
        if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) {
            assert_true(f != f);
            continue;
        }
        assert_int_equal(ke_f32_to_f16(f), h);
    }
    /* Round to nearest even, overflow, underflow (the values torch's .half() gives). */
    assert_int_equal(ke_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);            /* tie -> even */
    assert_int_equal(ke_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);        /* tie -> even (up) */
    assert_int_equal(ke_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01); /* above the tie */
    assert_int_equal(ke_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(ke_f32_to_f16(65519.996f), 0x7bff);
    assert_int_equal(ke_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(ke_f32_to_f16(-1e10f), 0xfc00);
    assert_int_equal(ke_f32_to_f16(0x1p-25f), 0x0000);            /* tie with 0 -> 0 */
    assert_int_equal(ke_f32_to_f16(0x1p-25f + 0x1p-40f), 0x0001); /* above it */
    assert_int_equal(ke_f32_to_f16(3 * 0x1p-25f), 0x0002);        /* tie -> even */
    assert_int_equal(ke_f32_to_f16(-0.0f), 0x8000);
    assert_float_equal(ke_bf16_to_f32(0x3f80), 1.0f, 0);
    assert_float_equal(ke_bf16_to_f32(0xc040), -3.0f, 0);
#if defined(__FLT16_MAX__)
    /* The compiler's conversion is IEEE round-to-nearest-even: compare on random bit patterns
     * and on values near every half boundary. */
    for (int i = 0; i < 2000000; i++) {
        uint32_t bits = rng();
        if (i & 1) /* concentrate on the half range */
            bits = (bits & 0x80000000u) | ((0x30000000u + (bits % 0x18000000u)) & 0x7fffffffu);
        float f;
        memcpy(&f, &bits, sizeof f);
        if (f != f)
            continue;
        _Float16 h = (_Float16)f;
        uint16_t want;
        memcpy(&want, &h, sizeof want);
        if (ke_f32_to_f16(f) != want)
            fail_msg("f32 %08x -> f16 %04x, expected %04x", bits, ke_f32_to_f16(f), want);
    }
#endif
}

/* ---- safetensors ---- */

static void test_safetensors_write_read(void **state)
{
    (void)state;
    char path[] = "/tmp/ke_st_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    ke_st_writer *w = NULL;
    assert_int_equal(ke_st_writer_new(&w), KS_OK);
    assert_non_null(w);
    float logits[5] = {1.5f, -2.0f, 0.0f, 3.25f, 1e-8f};
    int64_t ids[2][3] = {{0, 64003, 4}, {5, 6, -7}};
    assert_int_equal(ke_st_writer_add(w, "logits", KE_ST_F32, 1, (int64_t[]){5}, logits), KS_OK);
    assert_int_equal(ke_st_writer_add(w, "ids", KE_ST_I64, 2, (int64_t[]){2, 3}, ids), KS_OK);
    assert_int_equal(ke_st_writer_add(w, "empty", KE_ST_F32, 2, (int64_t[]){0, 4}, NULL), KS_OK);
    assert_int_equal(ke_st_writer_add(w, "ids", KE_ST_I64, 1, (int64_t[]){1}, ids), KS_ERR_INVALID);
    assert_int_equal(ke_st_writer_add(w, "__metadata__", KE_ST_I64, 1, (int64_t[]){1}, ids),
                     KS_ERR_INVALID);
    assert_int_equal(ke_st_writer_add_metadata(w, "prompt", "<grounding>An image of"), KS_OK);
    assert_int_equal(ke_st_writer_save(w, path), KS_OK);
    ke_st_writer_destroy(&w);
    assert_null(w);

    ke_st_file *f = NULL;
    assert_int_equal(ke_st_open(path, &f), KS_OK);
    assert_int_equal(ke_st_count(f), 3);
    const ke_st_tensor *t = ke_st_find(f, "logits");
    assert_non_null(t);
    assert_int_equal(t->dtype, KE_ST_F32);
    assert_int_equal(t->ndim, 1);
    assert_int_equal(t->shape[0], 5);
    assert_int_equal((uintptr_t)t->data % 8, 0); /* the writer pads the header */
    assert_memory_equal(t->data, logits, sizeof logits);
    t = ke_st_find(f, "ids");
    assert_non_null(t);
    assert_int_equal(t->dtype, KE_ST_I64);
    assert_int_equal(t->shape[1], 3);
    assert_memory_equal(t->data, ids, sizeof ids);
    assert_int_equal(ke_st_find(f, "empty")->numel, 0);
    assert_null(ke_st_find(f, "nope"));
    ke_st_close(&f);

    float *v = NULL;
    assert_int_equal(ke_st_read_f32(path, "logits", 1, (int64_t[]){5}, &v), KS_OK);
    assert_memory_equal(v, logits, sizeof logits);
    free(v);
    assert_int_equal(ke_st_read_f32(path, "logits", 2, (int64_t[]){1, 5}, &v), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "has shape [5], expected [1, 5]"));
    assert_int_equal(ke_st_read_f32(path, "ids", 2, (int64_t[]){2, 3}, &v), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "dtype I64"));
    assert_int_equal(ke_st_read_f32(path, "pixel_values", 1, (int64_t[]){5}, &v), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "no tensor 'pixel_values'"));
    assert_int_equal(ke_st_read_f32("/nonexistent/x.safetensors", "a", 1, (int64_t[]){5}, &v),
                     KS_ERR_IO);
    assert_null(v);
    unlink(path);

    /* The golden pixels, as `--pixels-from` reads them. */
    float *pixels = NULL;
    assert_int_equal(ke_st_read_f32(GOLDEN_ENGINE "/image_snowman.safetensors", "pixel_values", 4,
                                    (int64_t[]){1, 3, 224, 224}, &pixels),
                     KS_OK);
    assert_true(pixels[0] > -3.0f && pixels[0] < 3.0f);
    free(pixels);
}

/* Crafted headers: each must be refused with a message, never read out of bounds. */
static void test_safetensors_bad_headers(void **state)
{
    (void)state;
    static const struct {
        const char *header;
        size_t data;
        const char *needle;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16, "need"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}", 8,
         "too large"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         8, "JSON"},
        {"{\"__metadata__\":{\"x\":1}}", 0, "__metadata__"},
        {"[1,2]", 0, "start with"},
        {"{\"a\":", 0, "JSON"},
        {"{\"a\":[]}", 0, "not an object"},
    };
    char path[] = "/tmp/ke_st_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t h = strlen(cases[i].header), n = 8 + h + cases[i].data;
        unsigned char *buf = calloc(1, n);
        assert_non_null(buf);
        for (int b = 0; b < 8; b++)
            buf[b] = (unsigned char)((uint64_t)h >> (8 * b));
        memcpy(buf + 8, cases[i].header, h);
        write_all(path, buf, n);
        free(buf);
        ke_st_file *f = NULL;
        ks_status st = ke_st_open(path, &f);
        if (!cases[i].needle) {
            assert_int_equal(st, KS_OK);
            ke_st_close(&f);
            continue;
        }
        if (st == KS_OK)
            fail_msg("header %zu accepted: %s", i, cases[i].header);
        assert_null(f);
        if (!strstr(ks_error_message(), cases[i].needle))
            fail_msg("header %zu: message \"%s\" lacks \"%s\"", i, ks_error_message(),
                     cases[i].needle);
    }
    /* A length beyond the file, and a huge one. */
    unsigned char len_only[12] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                  0xff, 0x7f, '{',  '}',  ' ',  ' '};
    write_all(path, len_only, sizeof len_only);
    ke_st_file *f = NULL;
    assert_int_equal(ke_st_open(path, &f), KS_ERR_FORMAT);
    len_only[7] = 0;
    len_only[0] = 100;
    len_only[1] = len_only[2] = len_only[3] = len_only[4] = len_only[5] = len_only[6] = 0;
    write_all(path, len_only, sizeof len_only);
    assert_int_equal(ke_st_open(path, &f), KS_ERR_FORMAT);
    assert_non_null(strstr(ks_error_message(), "truncated"));
    unlink(path);
}

/* ---- config ---- */

static void test_config_tiny(void **state)
{
    (void)state;
    ke_config c;
    assert_int_equal(ke_config_load(TINY, &c), KS_OK);
    assert_int_equal(c.vision.hidden_size, 32);
    assert_int_equal(c.vision.intermediate_size, 72);
    assert_int_equal(c.vision.layers, 2);
    assert_int_equal(c.vision.heads, 4);
    assert_int_equal(c.vision.channels, 3);
    assert_int_equal(c.vision.image_size, 224);
    assert_int_equal(c.vision.patch_size, 14);
    assert_int_equal(c.vision.activation, KE_ACT_QUICK_GELU);
    assert_float_equal(c.vision.layer_norm_eps, 1e-5f, 0);
    assert_int_equal(c.text.vocab_size, 65037);
    assert_int_equal(c.text.embed_dim, 48);
    assert_int_equal(c.text.layers, 2);
    assert_int_equal(c.text.heads, 3);
    assert_int_equal(c.text.ffn_dim, 100);
    assert_int_equal(c.text.max_positions, 2048);
    assert_int_equal(c.text.pad_id, 1);
    assert_int_equal(c.text.bos_id, 0);
    assert_int_equal(c.text.eos_id, 2);
    assert_int_equal(c.text.activation, KE_ACT_GELU);
    assert_true(c.text.scale_embedding);
    assert_true(c.text.tie_word_embeddings);
    assert_int_equal(c.latent_query_num, 64);
    /* generation_config.json is the real checkpoint's: no_repeat_ngram_size 3. */
    assert_int_equal(c.generation.no_repeat_ngram_size, 3);
    assert_int_equal(c.generation.max_new_tokens, 128);
    assert_int_equal(c.generation.num_beams, 1);
    assert_float_equal(c.generation.length_penalty, 1.0f, 0);
    assert_false(c.generation.early_stopping);
}

static void test_config_parse(void **state)
{
    (void)state;
    ke_config c;
    /* Defaults are Kosmos2Config()'s, i.e. the real checkpoint's. */
    assert_int_equal(ke_config_parse("{\"model_type\":\"kosmos-2\"}", NULL, "t", &c), KS_OK);
    assert_int_equal(c.vision.hidden_size, 1024);
    assert_int_equal(c.vision.layers, 24);
    assert_int_equal(c.text.embed_dim, 2048);
    assert_int_equal(c.text.heads, 32);
    assert_int_equal(c.text.ffn_dim, 8192);
    assert_int_equal(c.generation.no_repeat_ngram_size, 0);
    assert_int_equal(c.generation.max_new_tokens, 128);
    /* HF aliases, list-valued sizes, eos lists; ngram from text_config when generation_config
     * has none; generation_config.json first. */
    const char *cfg = "{\"model_type\":\"kosmos-2\",\"latent_query_num\":16,"
                      "\"text_config\":{\"hidden_size\":40,\"num_attention_heads\":5,"
                      "\"num_hidden_layers\":3,\"eos_token_id\":[2,7],\"no_repeat_ngram_size\":3,"
                      "\"max_new_tokens\":9},"
                      "\"vision_config\":{\"image_size\":[28,28],\"patch_size\":14,"
                      "\"hidden_act\":\"gelu\"}}";
    assert_int_equal(ke_config_parse(cfg, NULL, "t", &c), KS_OK);
    assert_int_equal(c.text.embed_dim, 40);
    assert_int_equal(c.text.heads, 5);
    assert_int_equal(c.text.layers, 3);
    assert_int_equal(c.text.eos_id, 2);
    assert_int_equal(c.latent_query_num, 16);
    assert_int_equal(c.vision.image_size, 28);
    assert_int_equal(c.vision.activation, KE_ACT_GELU);
    assert_int_equal(c.generation.no_repeat_ngram_size, 3);
    assert_int_equal(c.generation.max_new_tokens, 9);
    assert_int_equal(ke_config_parse(cfg, "{\"no_repeat_ngram_size\":0,\"num_beams\":4}", "t", &c),
                     KS_OK);
    assert_int_equal(c.generation.no_repeat_ngram_size, 0);
    assert_int_equal(c.generation.num_beams, 4);
    assert_int_equal(c.generation.max_new_tokens, 9);
    /* Either tie flag ties (HF declares the tie at both levels). */
    assert_int_equal(ke_config_parse("{\"model_type\":\"kosmos-2\",\"tie_word_embeddings\":false,"
                                     "\"text_config\":{\"tie_word_embeddings\":false}}",
                                     NULL, "t", &c),
                     KS_OK);
    assert_false(c.text.tie_word_embeddings);
    assert_int_equal(ke_config_parse("{\"model_type\":\"kosmos-2\",\"tie_word_embeddings\":false}",
                                     NULL, "t", &c),
                     KS_OK);
    assert_true(c.text.tie_word_embeddings);

    static const struct {
        const char *json;
        const char *needle;
    } bad[] = {
        {"{\"model_type\":\"llama\"}", "model_type is \"llama\""},
        {"{}", "model_type is missing"},
        {"{\"model_type\":\"kosmos-2\",\"text_config\":{\"embed_dim\":40,\"hidden_size\":48}}",
         "disagree"},
        {"{\"model_type\":\"kosmos-2\",\"text_config\":{\"embed_dim\":50}}", "not divisible"},
        {"{\"model_type\":\"kosmos-2\",\"vision_config\":{\"patch_size\":15}}", "not divisible"},
        {"{\"model_type\":\"kosmos-2\",\"vision_config\":{\"hidden_act\":\"swish\"}}",
         "not supported"},
        {"{\"model_type\":\"kosmos-2\",\"text_config\":{\"layers\":\"2\"}}", "text_config.layers"},
        {"{\"model_type\":\"kosmos-2\",\"text_config\":{\"layers\":0}}", "out of range"},
        {"{\"model_type\":\"kosmos-2\",\"text_config\":{\"pad_token_id\":70000}}", "pad_token_id"},
        {"{\"model_type\":\"kosmos-2\",\"text_config\":{\"layer_norm_eps\":-1}}", "layer_norm_eps"},
        {"{\"model_type\":\"kosmos-2\",\"vision_config\":[]}", "vision_config"},
        {"{\"model_type\":\"kosmos-2\",", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ks_status st = ke_config_parse(bad[i].json, NULL, "cfg.json", &c);
        if (st == KS_OK)
            fail_msg("accepted %s", bad[i].json);
        if (!strstr(ks_error_message(), bad[i].needle) || !strstr(ks_error_message(), "cfg.json"))
            fail_msg("%s: message \"%s\" lacks \"%s\"", bad[i].json, ks_error_message(),
                     bad[i].needle);
    }
    assert_int_equal(ke_config_parse("{\"model_type\":\"kosmos-2\"}", "{\"num_beams\":0}", "g", &c),
                     KS_ERR_FORMAT);
    assert_non_null(strstr(ks_error_message(), "num_beams"));
}

/* ---- loading the tiny checkpoint ---- */

static void check_shapes(const ke_model *m)
{
    const ke_config *c = &m->config;
    assert_int_equal(m->patch_embedding.ndim, 4);
    assert_int_equal(m->patch_embedding.shape[0], 32);
    assert_int_equal(m->patch_embedding.shape[1], 3);
    assert_int_equal(m->patch_embedding.shape[3], 14);
    assert_int_equal(m->position_embedding.shape[0], 257);
    assert_int_equal(m->class_embedding.shape[0], 32);
    for (int i = 0; i < c->vision.layers; i++) {
        assert_int_equal(m->vision_layers[i].fc1.weight.shape[0], 72);
        assert_int_equal(m->vision_layers[i].fc1.weight.shape[1], 32);
        assert_int_equal(m->vision_layers[i].fc2.weight.shape[0], 32);
        assert_non_null(m->vision_layers[i].q_proj.bias.data);
        /* The file's f16 stays in the map whatever the device stores (no host copy). */
        assert_int_equal(m->vision_layers[i].layer_norm2.weight.dtype, KE_DTYPE_F16);
        assert_false(m->vision_layers[i].layer_norm2.weight.round_f16);
    }
    assert_int_equal(m->dense.weight.shape[0], 48);
    assert_int_equal(m->dense.weight.shape[1], 32);
    assert_int_equal(m->latent_query.shape[0], 64);
    assert_int_equal(m->latent_query.shape[1], 48);
    assert_int_equal(m->x_out_proj.weight.shape[1], 48);
    assert_int_equal(m->embed_tokens.shape[0], 65037);
    assert_int_equal(m->embed_tokens.shape[1], 48);
    for (int i = 0; i < c->text.layers; i++) {
        assert_int_equal(m->text_layers[i].fc1.weight.shape[0], 100);
        assert_int_equal(m->text_layers[i].ffn_layernorm.weight.shape[0], 100);
        assert_int_equal(m->text_layers[i].fc2.weight.shape[1], 100);
        assert_int_equal(m->text_layers[i].inner_attn_ln.bias.shape[0], 48);
        assert_non_null(m->text_layers[i].out_proj.bias.data);
    }
    assert_int_equal(m->final_layer_norm.weight.shape[0], 48);
    /* Tied head. */
    assert_ptr_equal(m->lm_head.data, m->embed_tokens.data);
    assert_int_equal(m->lm_head.shape[0], 65037);
}

/* The model's tensor equals the file's (f16) tensor converted to f32, exactly. */
static void expect_same_as_file(const ke_model *m, const ke_st_file *f, const ke_tensor *t,
                                const char *name)
{
    const ke_st_tensor *s = ke_st_find(f, name);
    assert_non_null(s);
    assert_int_equal(s->dtype, KE_ST_F16);
    assert_int_equal(s->numel, ke_tensor_numel(t));
    float *want = malloc(s->numel * sizeof *want);
    assert_non_null(want);
    for (size_t i = 0; i < s->numel; i++) {
        uint16_t h;
        memcpy(&h, (const char *)s->data + 2 * i, 2);
        want[i] = ke_f16_to_f32(h);
    }
    assert_float_equal(max_abs_diff_f32(t, want, s->numel), 0, 0);
    free(want);
    (void)m;
}

static void load_tiny(ke_dtype storage)
{
    ke_model_options opt = {.storage = storage};
    ke_model *m = NULL;
    if (ke_model_load(TINY, &opt, &m) != KS_OK)
        fail_msg("%s", ks_error_message());
    assert_int_equal(m->storage, storage);
    assert_int_equal(m->config.text.embed_dim, 48);
    check_shapes(m);
    ke_st_file *f = NULL;
    assert_int_equal(ke_st_open(TINY "/model.safetensors", &f), KS_OK);
    expect_same_as_file(m, f, &m->vision_layers[1].fc2.weight,
                        "vision_model.model.encoder.layers.1.mlp.fc2.weight");
    expect_same_as_file(m, f, &m->patch_embedding,
                        "vision_model.model.embeddings.patch_embedding.weight");
    expect_same_as_file(m, f, &m->latent_query, "image_to_text_projection.latent_query");
    expect_same_as_file(m, f, &m->text_layers[1].ffn_layernorm.bias,
                        "text_model.model.layers.1.ffn.ffn_layernorm.bias");
    expect_same_as_file(m, f, &m->final_layer_norm.weight, "text_model.model.layer_norm.weight");
    /* Paging the map out (a backend copied the weights) loses nothing: the tensors read the
     * same afterwards, the zeroed pad row below included. */
    ke_model_page_out(m);
    expect_same_as_file(m, f, &m->vision_layers[1].fc2.weight,
                        "vision_model.model.encoder.layers.1.mlp.fc2.weight");
    /* The pad row is zeroed as transformers does at load; the file keeps its values. */
    float row[48];
    ke_tensor_read_f32(&m->embed_tokens, 1 * 48, 48, row);
    for (int i = 0; i < 48; i++)
        assert_float_equal(row[i], 0.0f, 0);
    const ke_st_tensor *emb = ke_st_find(f, "text_model.model.embed_tokens.weight");
    uint16_t first;
    memcpy(&first, (const char *)emb->data + 2 * 48, 2);
    assert_int_not_equal(first & 0x7fff, 0);
    /* Row 0 and the last row are the file's. */
    ke_tensor_read_f32(&m->embed_tokens, (size_t)65036 * 48, 48, row);
    for (int i = 0; i < 48; i++) {
        uint16_t h;
        memcpy(&h, (const char *)emb->data + 2 * ((size_t)65036 * 48 + (size_t)i), 2);
        assert_float_equal(row[i], ke_f16_to_f32(h), 0);
    }
    if (storage == KE_DTYPE_F16) /* zero copy: the tensors point into the map */
        assert_int_equal(ke_tensor_numel(&m->embed_tokens), 65037 * 48);
    ke_st_close(&f);
    ke_model_destroy(&m);
    assert_null(m);
    ke_model_destroy(&m); /* NULL is fine */
}

static void test_load_tiny_f16(void **state)
{
    (void)state;
    load_tiny(KE_DTYPE_F16);
    /* NULL options mean f16, as do the defaults. */
    ke_model *m = NULL;
    assert_int_equal(ke_model_load(TINY, NULL, &m), KS_OK);
    assert_non_null(m);
    assert_int_equal(m->storage, KE_DTYPE_F16);
    ke_model_destroy(&m);
    ke_model_options opt;
    ke_model_options_default(&opt);
    assert_int_equal(opt.storage, KE_DTYPE_F16);
}

static void test_load_tiny_f32(void **state)
{
    (void)state;
    load_tiny(KE_DTYPE_F32);
}

/* Re-save the tiny checkpoint as two shards (vision in F32, the rest in BF16) plus a separate
 * lm_head, with an index, and load that. */
static void test_load_sharded_untied_bf16(void **state)
{
    (void)state;
    folder d;
    folder_make(&d, 0);
    ke_st_file *src = NULL;
    assert_int_equal(ke_st_open(TINY "/model.safetensors", &src), KS_OK);
    ke_st_writer *w1 = NULL, *w2 = NULL;
    assert_int_equal(ke_st_writer_new(&w1), KS_OK);
    assert_int_equal(ke_st_writer_new(&w2), KS_OK);
    json_t *map = json_object();
    for (size_t i = 0; i < ke_st_count(src); i++) {
        const ke_st_tensor *t = ke_st_get(src, i);
        int vision = strncmp(t->name, "vision_model.", 13) == 0;
        void *buf = malloc(t->numel * 4 + 1);
        assert_non_null(buf);
        for (size_t k = 0; k < t->numel; k++) {
            uint16_t h;
            memcpy(&h, (const char *)t->data + 2 * k, 2);
            float v = ke_f16_to_f32(h);
            if (vision) {
                ((float *)buf)[k] = v;
            } else {
                uint32_t bits;
                memcpy(&bits, &v, 4);
                ((uint16_t *)buf)[k] = (uint16_t)(bits >> 16); /* truncation is fine here */
            }
        }
        assert_int_equal(ke_st_writer_add(vision ? w1 : w2, t->name,
                                          vision ? KE_ST_F32 : KE_ST_BF16, t->ndim, t->shape, buf),
                         KS_OK);
        json_object_set_new(map, t->name,
                            json_string(vision ? "model-00001-of-00002.safetensors"
                                               : "model-00002-of-00002.safetensors"));
        free(buf);
    }
    /* A separate head: row r is all r/1000. */
    float *head = malloc((size_t)65037 * 48 * sizeof *head);
    assert_non_null(head);
    for (size_t r = 0; r < 65037; r++)
        for (size_t k = 0; k < 48; k++)
            head[r * 48 + k] = (float)r / 1000.0f;
    assert_int_equal(ke_st_writer_add(w2, "text_model.lm_head.weight", KE_ST_F32, 2,
                                      (int64_t[]){65037, 48}, head),
                     KS_OK);
    free(head);
    json_object_set_new(map, "text_model.lm_head.weight",
                        json_string("model-00002-of-00002.safetensors"));
    char *p1 = join(d.dir, "model-00001-of-00002.safetensors");
    char *p2 = join(d.dir, "model-00002-of-00002.safetensors");
    char *pi = join(d.dir, "model.safetensors.index.json");
    assert_int_equal(ke_st_writer_save(w1, p1), KS_OK);
    assert_int_equal(ke_st_writer_save(w2, p2), KS_OK);
    ke_st_writer_destroy(&w1);
    ke_st_writer_destroy(&w2);
    json_t *index = json_pack("{s:{s:i},s:o}", "metadata", "total_size", 0, "weight_map", map);
    assert_int_equal(json_dump_file(index, pi, 0), 0);
    json_decref(index);

    /* Still tied: the file's lm_head is ignored, as HF ignores it. */
    ke_model *m = NULL;
    if (ke_model_load(d.dir, &(ke_model_options){.storage = KE_DTYPE_F16}, &m) != KS_OK)
        fail_msg("%s", ks_error_message());
    assert_ptr_equal(m->lm_head.data, m->embed_tokens.data);
    expect_same_as_file(m, src, &m->vision_layers[0].q_proj.weight,
                        "vision_model.model.encoder.layers.0.self_attn.q_proj.weight");
    ke_model_destroy(&m);

    /* Untied. */
    char *cpath = join(d.dir, "config.json");
    json_t *cfg = json_load_file(cpath, 0, NULL);
    json_object_set_new(cfg, "tie_word_embeddings", json_false());
    json_object_set_new(json_object_get(cfg, "text_config"), "tie_word_embeddings", json_false());
    json_dump_file(cfg, cpath, 0);
    json_decref(cfg);
    free(cpath);
    for (int s = 0; s < 2; s++) {
        ke_dtype storage = s ? KE_DTYPE_F32 : KE_DTYPE_F16;
        if (ke_model_load(d.dir, &(ke_model_options){.storage = storage}, &m) != KS_OK)
            fail_msg("%s", ks_error_message());
        assert_ptr_not_equal(m->lm_head.data, m->embed_tokens.data);
        /* The f32 head stays f32 in the map; read, it has the values the device stores. */
        assert_int_equal(m->lm_head.dtype, KE_DTYPE_F32);
        assert_int_equal(m->lm_head.round_f16, !s);
        float row[48];
        ke_tensor_read_f32(&m->lm_head, (size_t)1 * 48, 48, row); /* not zeroed: not embed */
        assert_float_equal(row[0], s ? 0.001f : ke_f16_to_f32(ke_f32_to_f16(0.001f)), 0);
        ke_tensor_read_f32(&m->lm_head, (size_t)1000 * 48, 48, row);
        assert_float_equal(row[47], 1.0f, 0);
        ke_tensor_read_f32(&m->embed_tokens, (size_t)1 * 48, 48, row);
        assert_float_equal(row[5], 0.0f, 0);
        expect_same_as_file(m, src, &m->vision_layers[1].fc1.weight,
                            "vision_model.model.encoder.layers.1.mlp.fc1.weight");
        /* bf16 (truncated) vs the f16 original: within bf16 precision. */
        const ke_st_tensor *s_fc2 = ke_st_find(src, "text_model.model.layers.0.ffn.fc2.weight");
        float got[8];
        ke_tensor_read_f32(&m->text_layers[0].fc2.weight, 0, 8, got);
        for (int k = 0; k < 8; k++) {
            uint16_t h;
            memcpy(&h, (const char *)s_fc2->data + 2 * k, 2);
            float want = ke_f16_to_f32(h);
            assert_true(got[k] == want ||
                        (got[k] - want) * (got[k] - want) < (want * want) * (1.0f / 16384.0f));
        }
        ke_model_destroy(&m);
    }

    /* The index names a shard that is not there / a tensor the shard lacks. */
    index = json_pack("{s:{s:s}}", "weight_map", "vision_model.model.embeddings.class_embedding",
                      "model-00003-of-00003.safetensors");
    json_dump_file(index, pi, 0);
    json_decref(index);
    expect_load_error(d.dir, KE_DTYPE_F16, "model-00003-of-00003.safetensors", "missing", NULL);
    index = json_pack("{s:{s:s}}", "weight_map", "vision_model.model.embeddings.class_embedding",
                      "model-00001-of-00002.safetensors");
    json_dump_file(index, pi, 0);
    json_decref(index);
    expect_load_error(d.dir, KE_DTYPE_F16, "model.safetensors.index.json", "missing tensor",
                      "vision_model.model.embeddings.patch_embedding.weight", NULL);
    index = json_pack("{s:{s:s}}", "weight_map", "vision_model.model.embeddings.class_embedding",
                      "../model.safetensors");
    json_dump_file(index, pi, 0);
    json_decref(index);
    expect_load_error(d.dir, KE_DTYPE_F16, "not a file name", NULL);
    free(p1);
    free(p2);
    free(pi);
    ke_st_close(&src);
    folder_remove(&d);
}

/* ---- broken folders ---- */

static void drop_tensor(json_t *root)
{
    json_object_del(root, "text_model.model.layers.1.self_attn.inner_attn_ln.bias");
}

static void transpose_fc1(json_t *root)
{
    json_t *e = json_object_get(root, "text_model.model.layers.0.ffn.fc1.weight");
    json_object_set_new(e, "shape", json_pack("[i,i]", 48, 100));
}

static void bad_dtype(json_t *root)
{
    json_t *e = json_object_get(root, "image_to_text_projection.latent_query");
    json_object_set_new(e, "dtype", json_string("STRING"));
}

static void int_dtype(json_t *root)
{
    json_t *e = json_object_get(root, "image_to_text_projection.latent_query");
    json_object_set_new(e, "dtype", json_string("I16"));
}

static void offsets_past_end(json_t *root)
{
    json_t *e = json_object_get(root, "text_model.model.layer_norm.bias");
    json_int_t b = json_integer_value(json_array_get(json_object_get(e, "data_offsets"), 0));
    json_object_set_new(e, "data_offsets",
                        json_pack("[I,I]", b + (json_int_t)10000000,
                                  b + (json_int_t)10000000 + 96));
}

static void wrong_model_type(json_t *root)
{
    json_object_set_new(root, "model_type", json_string("llama"));
}

static void wider_ffn(json_t *root)
{
    json_object_set_new(json_object_get(root, "text_config"), "ffn_dim", json_integer(101));
}

static void test_bad_folders(void **state)
{
    (void)state;
    folder d;
    char *st_path;

    folder_make(&d, 1); /* missing config.json */
    char *cfg = join(d.dir, "config.json");
    unlink(cfg);
    free(cfg);
    expect_load_error(d.dir, KE_DTYPE_F16, "config.json", NULL);
    folder_remove(&d);

    folder_make(&d, 0); /* no weights at all */
    expect_load_error(d.dir, KE_DTYPE_F16, "no model.safetensors", NULL);
    folder_remove(&d);

    /* Truncations: inside the length, inside the header, at the data start, inside the data. */
    size_t len;
    char *whole = read_all(TINY "/model.safetensors", &len);
    uint64_t hlen = header_len(whole);
    size_t cuts[] = {0,
                     3,
                     7,
                     8,
                     9,
                     8 + (size_t)hlen / 2,
                     8 + (size_t)hlen - 1,
                     8 + (size_t)hlen,
                     8 + (size_t)hlen + 100,
                     len / 2,
                     len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        folder_make(&d, 0);
        st_path = join(d.dir, "model.safetensors");
        write_all(st_path, whole, cuts[i]);
        print_message("  truncated at %zu of %zu bytes\n", cuts[i], len);
        expect_load_error(d.dir, KE_DTYPE_F16, "model.safetensors", NULL);
        const char *msg = ks_error_message();
        assert_true(strstr(msg, "truncated") || strstr(msg, "outside the data block"));
        free(st_path);
        folder_remove(&d);
    }

    /* Corrupt header JSON: one byte in the middle of the header. */
    folder_make(&d, 0);
    st_path = join(d.dir, "model.safetensors");
    char saved = whole[8 + hlen / 2];
    whole[8 + hlen / 2] = '\x01';
    write_all(st_path, whole, len);
    whole[8 + hlen / 2] = saved;
    expect_load_error(d.dir, KE_DTYPE_F16, "model.safetensors", "JSON", NULL);
    /* A header length that is not the real one. */
    whole[0] = (char)(whole[0] + 1);
    write_all(st_path, whole, len);
    whole[0] = (char)(whole[0] - 1);
    expect_load_error(d.dir, KE_DTYPE_F16, "model.safetensors", NULL);
    free(st_path);
    folder_remove(&d);
    free(whole);

    static const struct {
        void (*edit)(json_t *);
        const char *needle1, *needle2;
    } headers[] = {
        {drop_tensor, "missing tensor", "text_model.model.layers.1.self_attn.inner_attn_ln.bias"},
        {transpose_fc1, "text_model.model.layers.0.ffn.fc1.weight",
         "shape [48, 100], but config.json implies [100, 48]"},
        {bad_dtype, "image_to_text_projection.latent_query", "unknown dtype \"STRING\""},
        {int_dtype, "image_to_text_projection.latent_query", "dtype I16"},
        {offsets_past_end, "text_model.model.layer_norm.bias", "outside the data block"},
    };
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        folder_make(&d, 1);
        edit_header(d.dir, headers[i].edit);
        expect_load_error(d.dir, KE_DTYPE_F16, "model.safetensors", headers[i].needle1,
                          headers[i].needle2, NULL);
        expect_load_error(d.dir, KE_DTYPE_F32, headers[i].needle1, NULL);
        folder_remove(&d);
    }

    folder_make(&d, 1);
    edit_config(d.dir, wrong_model_type);
    expect_load_error(d.dir, KE_DTYPE_F16, "config.json", "model_type is \"llama\"", NULL);
    folder_remove(&d);

    folder_make(&d, 1); /* the config disagrees with the weights */
    edit_config(d.dir, wider_ffn);
    expect_load_error(d.dir, KE_DTYPE_F16, "text_model.model.layers.0.ffn.fc1.weight",
                      "implies [101, 48]", NULL);
    folder_remove(&d);

    folder_make(&d, 1); /* corrupt generation_config.json */
    char *gpath = join(d.dir, "generation_config.json");
    write_all(gpath, "{\"no_repeat_ngram_size\": \"3\"}", 30);
    free(gpath);
    expect_load_error(d.dir, KE_DTYPE_F16, "generation_config.json", "no_repeat_ngram_size", NULL);
    folder_remove(&d);

    expect_load_error("/nonexistent/model", KE_DTYPE_F16,
                      "no such model folder: /nonexistent/model", NULL);

    /* An unknown storage dtype is the caller's mistake, not the checkpoint's. */
    ke_model *m = NULL;
    assert_int_equal(ke_model_load(TINY, &(ke_model_options){.storage = (ke_dtype)7}, &m),
                     KS_ERR_INVALID);
    assert_null(m);
    assert_non_null(strstr(ks_error_message(), "unknown storage dtype 7"));
}

/* ---- models made without a checkpoint ---- */

/* glibc's mallinfo2 counts what malloc has handed out; under AddressSanitizer malloc is not
 * glibc's (and LeakSanitizer checks the same thing at exit). */
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
#define HEAP_COUNTED 1
static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}
#endif

/* ke_model_destroy frees a random model, weights and all, like a loaded one: the weight block
 * used to need ke_model_random_destroy, and ke_model_destroy leaked it. */
static void test_random_model_destroy(void **state)
{
    (void)state;
    ke_config config;
    ke_config_default_tiny(&config);
    ke_model *m = NULL;
    /* The first model's threads settle the C library's caches (thread stacks and their TLS). */
    assert_int_equal(ke_model_new_random(&config, 7, NULL, &m), KS_OK);
    ke_model_destroy(&m);
    assert_null(m);
#ifdef HEAP_COUNTED
    size_t weight_bytes = (size_t)ke_config_param_count(&config) * 2;
    size_t before = heap_in_use();
#endif
    assert_int_equal(ke_model_new_random(&config, 7, NULL, &m), KS_OK);
    assert_non_null(m);
    assert_int_equal(m->storage, KE_DTYPE_F16);
    check_shapes(m);
    /* nn.Embedding(padding_idx) leaves the pad row zero. */
    float row[48];
    ke_tensor_read_f32(&m->embed_tokens, (size_t)config.text.pad_id * 48, 48, row);
    for (int i = 0; i < 48; i++)
        assert_true(row[i] == 0.0f);
    ke_model_page_out(m); /* no mapped files: nothing to do */
#ifdef HEAP_COUNTED
    assert_true(heap_in_use() >= before + weight_bytes); /* the counter sees the weights */
#endif
    ke_model_destroy(&m);
    assert_null(m);
#ifdef HEAP_COUNTED
    size_t after = heap_in_use();
    if (after >= before + weight_bytes / 2)
        fail_msg("%zu bytes still in use after ke_model_destroy (%zu of weights)", after - before,
                 weight_bytes);
#endif

    /* Failures hand back no model and say why. */
    static ke_model sentinel;
    m = &sentinel; /* overwritten with NULL on failure */
    assert_int_equal(ke_model_new_random(&config, 7, &(ke_model_options){.storage = (ke_dtype)7},
                                         &m),
                     KS_ERR_INVALID);
    assert_null(m);
    assert_non_null(strstr(ks_error_message(), "unknown storage dtype 7"));
    ke_config bad = config;
    bad.text.vocab_size = 0;
    assert_int_equal(ke_model_new_random(&bad, 7, NULL, &m), KS_ERR_INVALID);
    assert_null(m);
    assert_non_null(strstr(ks_error_message(), "invalid configuration"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_conversions),
        cmocka_unit_test(test_safetensors_write_read),
        cmocka_unit_test(test_safetensors_bad_headers),
        cmocka_unit_test(test_config_tiny),
        cmocka_unit_test(test_config_parse),
        cmocka_unit_test(test_load_tiny_f16),
        cmocka_unit_test(test_load_tiny_f32),
        cmocka_unit_test(test_load_sharded_untied_bf16),
        cmocka_unit_test(test_bad_folders),
        cmocka_unit_test(test_random_model_destroy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
