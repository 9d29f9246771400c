/* Golden tests of the reference forward pass and generation: the tiny random checkpoint
 * (tests/data/tiny-kosmos2, f16 weights) against tensors and ids transformers 5.17 produced
 * from it (tests/golden/engine, made by tests/golden/make_test_checkpoint.py). Vision taps,
 * image embeddings and prefill logits within 1e-3; generated ids identical (greedy, n-gram,
 * beam search, a batch of 3 prompts over 2 images). Plus what needs a model but no golden
 * data: parameter errors, seeded sampling, requests waiting for slots.
 * The backend is the reference one, or KOSMOS_TEST_DEVICE's (a --device SPEC): ctest runs the
 * same program as test_engine_golden_cl on the OpenCL CPU device (PoCL), and with
 * KOSMOS_TEST_PRECISION=fp32 as test_engine_golden_cl_fp32 (f32 weights). KOSMOS_TEST_GEMM
 * picks the large products' engine (auto by default: gemm.cl's kernels on PoCL).
 * Skips when the golden data is absent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_open.h"
#include "generate.h"
#include "ks_error.h"
#include "model.h"
#include "safetensors.h"
#ifdef KOSMOS_HAVE_OPENCL
#include "backend_cl.h"
#endif

/* tests/golden of the source tree, or $KOSMOS_GOLDEN_DIR for a build carried to another host
 * (ops/gpu-check.sh). */
static const char *golden_root(void)
{
    const char *dir = getenv("KOSMOS_GOLDEN_DIR");
    return dir && dir[0] ? dir : KOSMOS_GOLDEN_DIR;
}
#define TOL 1e-3

/* ---- golden safetensors (f32 tensors), through the engine's reader ---------------------- */

typedef struct golden_file {
    ke_st_file *st;
} golden_file;

static bool golden_open(golden_file *g, const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/engine/%s", golden_root(), name);
    if (ke_st_open(path, &g->st) != KS_OK) {
        fprintf(stderr, "%s\n", ks_error_message());
        return false;
    }
    return true;
}

static void golden_close(golden_file *g) { ke_st_close(&g->st); }

/* A copy of f32 tensor `name` (caller frees), its element count in *n. */
static float *golden_f32(const golden_file *g, const char *name, size_t *n)
{
    const ke_st_tensor *t = ke_st_find(g->st, name);
    assert_non_null(t);
    assert_int_equal(t->dtype, KE_ST_F32);
    float *out = malloc(t->nbytes ? t->nbytes : 1);
    assert_non_null(out);
    memcpy(out, t->data, t->nbytes); /* the data may be unaligned */
    *n = t->numel;
    return out;
}

/* ---- fixture --------------------------------------------------------------------------------- */

typedef struct fixture {
    json_t *cases;
    ke_model *model;
    ke_backend *backend;
    /* encoded images by name, in cases.json "images" order */
    int n_images;
    const char *image_names[8];
    float *image_embeds; /* (n_images, latent, embed) */
} fixture;

static fixture fx;

/* The device under test: KOSMOS_TEST_DEVICE (a --device SPEC, e.g. "cpu" for the OpenCL CPU
 * device: ctest's test_engine_golden_cl), else the reference backend. */
static const char *test_device(void)
{
    const char *spec = getenv("KOSMOS_TEST_DEVICE");
    return spec && *spec ? spec : "ref";
}

/* KOSMOS_TEST_GEMM=<path> (--gemm's names) picks the OpenCL backend's large-product engine. */
static ks_status open_backend(const ke_backend_options *bo, ke_backend **out)
{
    ke_backend_options o = *bo;
    const char *gemm = getenv("KOSMOS_TEST_GEMM");
    if (gemm && *gemm && !ke_gemm_path_parse(gemm, &o.gemm))
        return ks_fail(KS_ERR_INVALID, "KOSMOS_TEST_GEMM: no path '%s'", gemm);
    return ke_backend_open(fx.model, test_device(), &o, out);
}

static size_t embeds_per_image(void)
{
    return (size_t)fx.model->config.latent_query_num * (size_t)fx.model->config.text.embed_dim;
}

static int setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    char path[4096];
    snprintf(path, sizeof path, "%s/engine/cases.json", golden_root());
    json_error_t error;
    fx.cases = json_load_file(path, 0, &error);
    if (fx.cases == NULL) {
        fprintf(stderr, "%s: %s\n", path, error.text);
        return -1; /* the golden data is committed: its absence is a failure, not a skip */
    }
    /* KOSMOS_TEST_PRECISION=fp32 stores the weights as f32 (the f16 file converts exactly) */
    const char *precision = getenv("KOSMOS_TEST_PRECISION");
    ke_model_options opt = {.storage = precision && !strcmp(precision, "fp32") ? KE_DTYPE_F32
                                                                               : KE_DTYPE_F16};
    snprintf(path, sizeof path, "%s/../data/tiny-kosmos2", golden_root());
    if (ke_model_load(path, &opt, &fx.model) != KS_OK) {
        fprintf(stderr, "ke_model_load: %s\n", ks_error_message());
        return -1;
    }
    ke_backend_options bo = {.slots = 8, .slot_capacity = 512};
    if (open_backend(&bo, &fx.backend) != KS_OK) {
        fprintf(stderr, "ke_backend_open(%s): %s\n", test_device(), ks_error_message());
        return -1;
    }
    ke_backend_stats bs;
    ke_backend_stats_get(fx.backend, &bs);
    printf("backend %s on '%s' (programs: %u built, %u from the cache)\n", fx.backend->ops->name,
           bs.device ? bs.device : "?", bs.programs_built, bs.programs_cached);
    /* encode every image once (test_vision checks the taps) */
    json_t *images = json_object_get(fx.cases, "images");
    const char *key;
    json_t *val;
    size_t per = embeds_per_image();
    fx.image_embeds = malloc(8 * per * sizeof(float));
    json_object_foreach(images, key, val) {
        if (fx.n_images == 8)
            break;
        golden_file g;
        if (!golden_open(&g, json_string_value(json_object_get(val, "file"))))
            return -1;
        size_t n_pix;
        float *pix = golden_f32(&g, "pixel_values", &n_pix);
        ks_status st = fx.backend->ops->encode_images(fx.backend, pix, 1,
                                                      fx.image_embeds + (size_t)fx.n_images * per,
                                                      NULL);
        free(pix);
        golden_close(&g);
        if (st != KS_OK)
            return -1;
        fx.image_names[fx.n_images] = key;
        fx.n_images++;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ke_backend_destroy(&fx.backend);
    ke_model_destroy(&fx.model);
    free(fx.image_embeds);
    json_decref(fx.cases);
    return 0;
}

static double max_abs(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m))
            m = d;
    }
    return m;
}

static int image_index(const char *name)
{
    for (int i = 0; i < fx.n_images; i++)
        if (strcmp(fx.image_names[i], name) == 0)
            return i;
    fail_msg("unknown image %s", name);
    return -1;
}

/* ---- vision ------------------------------------------------------------------------------- */

static void test_vision(void **state)
{
    (void)state;
    const ke_config *c = &fx.model->config;
    size_t grid = (size_t)(c->vision.image_size / c->vision.patch_size);
    size_t tap_n = (grid * grid + 1) * (size_t)c->vision.hidden_size;
    size_t per = embeds_per_image();
    json_t *images = json_object_get(fx.cases, "images");
    for (int i = 0; i < fx.n_images; i++) {
        const char *file =
            json_string_value(json_object_get(json_object_get(images, fx.image_names[i]), "file"));
        golden_file g;
        assert_true(golden_open(&g, file));
        size_t n_pix, n_post, n_emb;
        float *pix = golden_f32(&g, "pixel_values", &n_pix);
        float *post = golden_f32(&g, "vision_post_layernorm", &n_post);
        float *emb = golden_f32(&g, "image_embeds", &n_emb);
        assert_int_equal(n_post, tap_n);
        assert_int_equal(n_emb, per);
        float *my_post = malloc(tap_n * sizeof(float));
        float *my_emb = malloc(per * sizeof(float));
        ke_vision_taps taps = {.post_layernorm = my_post};
        assert_int_equal(fx.backend->ops->encode_images(fx.backend, pix, 1, my_emb, &taps), KS_OK);
        /* the same as the embeddings the setup made for the generation tests */
        assert_memory_equal(my_emb, fx.image_embeds + (size_t)i * per, per * sizeof(float));
        double d_post = max_abs(my_post, post, tap_n);
        double d_emb = max_abs(my_emb, emb, per);
        printf("image %-10s vision_post_layernorm max abs diff %.3g, image_embeds %.3g\n",
               fx.image_names[i], d_post, d_emb);
        assert_true(d_post < TOL);
        assert_true(d_emb < TOL);
        free(pix);
        free(post);
        free(emb);
        free(my_post);
        free(my_emb);
        golden_close(&g);
    }

    /* all images in one call (one vision pass over the batch) equal the one-by-one runs */
    float *pix_all = malloc((size_t)fx.n_images * (size_t)c->vision.channels *
                            (size_t)c->vision.image_size * (size_t)c->vision.image_size *
                            sizeof(float));
    float *emb_all = malloc((size_t)fx.n_images * per * sizeof(float));
    float *post_all = malloc((size_t)fx.n_images * tap_n * sizeof(float));
    for (int i = 0; i < fx.n_images; i++) {
        const char *file =
            json_string_value(json_object_get(json_object_get(images, fx.image_names[i]), "file"));
        golden_file g;
        assert_true(golden_open(&g, file));
        size_t n_pix;
        float *pix = golden_f32(&g, "pixel_values", &n_pix);
        memcpy(pix_all + (size_t)i * n_pix, pix, n_pix * sizeof(float));
        free(pix);
        golden_close(&g);
    }
    ke_vision_taps taps_all = {.post_layernorm = post_all};
    assert_int_equal(fx.backend->ops->encode_images(fx.backend, pix_all, fx.n_images, emb_all,
                                                    &taps_all),
                     KS_OK);
    double d_batch = max_abs(emb_all, fx.image_embeds, (size_t)fx.n_images * per);
    printf("%d images in one encode_images call: image_embeds max abs diff to one by one %.3g\n",
           fx.n_images, d_batch);
    assert_true(d_batch < 1e-5);
    free(pix_all);
    free(emb_all);
    free(post_all);
}

/* Five images: the golden ones, then copies made distinct by a shift and a scale. */
static float *five_images(size_t *pix_per_image)
{
    const ke_config *c = &fx.model->config;
    size_t pix = (size_t)c->vision.channels * (size_t)c->vision.image_size *
                 (size_t)c->vision.image_size;
    float *all = malloc(5 * pix * sizeof(float));
    assert_non_null(all);
    json_t *images = json_object_get(fx.cases, "images");
    for (int i = 0; i < fx.n_images && i < 5; i++) {
        const char *file =
            json_string_value(json_object_get(json_object_get(images, fx.image_names[i]), "file"));
        golden_file g;
        assert_true(golden_open(&g, file));
        size_t n_pix;
        float *one = golden_f32(&g, "pixel_values", &n_pix);
        assert_int_equal(n_pix, pix);
        memcpy(all + (size_t)i * pix, one, pix * sizeof(float));
        free(one);
        golden_close(&g);
    }
    assert_true(fx.n_images >= 1);
    for (int i = fx.n_images; i < 5; i++)
        for (size_t k = 0; k < pix; k++)
            all[(size_t)i * pix + k] = all[(size_t)(i % fx.n_images) * pix + k] *
                                           (1.0f - 0.1f * (float)i) +
                                       0.05f * (float)i;
    *pix_per_image = pix;
    return all;
}

/* One backend with `chunk` (and `tune`, NULL = the device's) encodes the five images, twice;
 * the second call must not grow its memory. */
static void encode_chunked(int chunk, const char *tune, const float *pix, float *emb, float *post)
{
    ke_backend_options bo = {.slots = 1,
                             .slot_capacity = 16,
                             .vision_chunk = chunk,
                             .gemm_tune = tune};
    ke_backend *b = NULL;
    assert_int_equal(open_backend(&bo, &b), KS_OK);
    assert_int_equal(b->vision_chunk, chunk);
    size_t per_pix = (size_t)fx.model->config.vision.channels *
                     (size_t)fx.model->config.vision.image_size *
                     (size_t)fx.model->config.vision.image_size;
    ke_backend_stats s0, s1, s2, s3;
    ke_backend_stats_get(b, &s0);
    float *one = malloc(embeds_per_image() * sizeof(float));
    assert_non_null(one);
    assert_int_equal(b->ops->encode_images(b, pix + 4 * per_pix, 1, one, NULL), KS_OK);
    ke_backend_stats_get(b, &s1);
    ke_vision_taps taps = {.post_layernorm = post};
    assert_int_equal(b->ops->encode_images(b, pix, 5, emb, &taps), KS_OK);
    ke_backend_stats_get(b, &s2);
    assert_int_equal(b->ops->encode_images(b, pix, 5, emb, &taps), KS_OK);
    ke_backend_stats_get(b, &s3);
    /* a one-image call equals the same image's row of a five-image call */
    assert_memory_equal(one, emb + 4 * embeds_per_image(), embeds_per_image() * sizeof(float));
    free(one);
    if (s0.device_bytes) {
        /* the vision buffers: one pass's, kept, for at most `chunk` images (linear in them) */
        size_t one_image = s1.device_bytes - s0.device_bytes;
        size_t held = s2.device_bytes - s0.device_bytes;
        print_message("  vision chunk %d: %zu device bytes for 1 image, %zu after 5\n", chunk,
                      one_image, held);
        assert_true(one_image > 0);
        assert_true(held <= (size_t)(chunk < 5 ? chunk : 5) * one_image);
        assert_true(chunk == 1 ? held == one_image : held > one_image);
        assert_int_equal(s3.device_bytes, s2.device_bytes);
    }
    ke_backend_destroy(&b);
}

/* Vision in chunks: each image's embeddings and taps are the same bits whatever the chunk (the
 * rows of a product do not depend on how many there are, attention is per image), and a chunk
 * bounds the vision buffers. On OpenCL, also with the NVIDIA GEMM tunables, whose kernel
 * depends on the row count (gemm_rows up to 64 rows, gemm_tiles above). */
static void test_vision_chunks(void **state)
{
    (void)state;
    const ke_config *c = &fx.model->config;
    size_t grid = (size_t)(c->vision.image_size / c->vision.patch_size);
    size_t tap = (grid * grid + 1) * (size_t)c->vision.hidden_size, per = embeds_per_image();
    size_t pix_n;
    float *pix = five_images(&pix_n);
    float *emb[3], *post[3];
    for (int i = 0; i < 3; i++) {
        emb[i] = malloc(5 * per * sizeof(float));
        post[i] = malloc(5 * tap * sizeof(float));
        assert_true(emb[i] && post[i]);
    }
    const int chunks[3] = {2, 5, 1};
    bool ref = strcmp(test_device(), "ref") == 0;
    for (int t = 0; t < (ref ? 1 : 2); t++) {
        const char *tune = t ? "nvidia" : NULL;
        for (int i = 0; i < 3; i++)
            encode_chunked(chunks[i], tune, pix, emb[i], post[i]);
        for (int i = 1; i < 3; i++) {
            print_message("  chunk %d vs %d%s: embeddings and taps compared bit for bit\n",
                          chunks[0], chunks[i], tune ? " (nvidia tunables)" : "");
            assert_memory_equal(emb[i], emb[0], 5 * per * sizeof(float));
            assert_memory_equal(post[i], post[0], 5 * tap * sizeof(float));
        }
        /* the golden images keep their embeddings (the fixture encoded them one by one) */
        if (!tune)
            assert_memory_equal(emb[0], fx.image_embeds, (size_t)fx.n_images * per * sizeof(float));
    }
    for (int i = 0; i < 3; i++) {
        free(emb[i]);
        free(post[i]);
    }
    free(pix);
}

/* ---- generation cases ------------------------------------------------------------------ */

typedef struct built {
    int n;
    ke_gen_request req[8];
    int32_t *ids[8];
    uint8_t *mask[8];
} built;

static void build_requests(json_t *c, built *b)
{
    memset(b, 0, sizeof *b);
    json_t *ids = json_object_get(c, "input_ids");
    json_t *masks = json_object_get(c, "image_embeds_position_mask");
    json_t *images = json_object_get(c, "images");
    json_t *params = json_object_get(c, "params");
    b->n = (int)json_array_size(ids);
    assert_true(b->n >= 1 && b->n <= 8);
    for (int r = 0; r < b->n; r++) {
        json_t *row = json_array_get(ids, (size_t)r);
        json_t *mrow = json_array_get(masks, (size_t)r);
        size_t len = json_array_size(row);
        assert_int_equal(json_array_size(mrow), len);
        b->ids[r] = malloc(len * sizeof(int32_t));
        b->mask[r] = malloc(len);
        for (size_t t = 0; t < len; t++) {
            b->ids[r][t] = (int32_t)json_integer_value(json_array_get(row, t));
            b->mask[r][t] = (uint8_t)json_integer_value(json_array_get(mrow, t));
        }
        ke_gen_request *q = &b->req[r];
        q->input_ids = b->ids[r];
        q->image_embeds_position_mask = b->mask[r];
        q->len = len;
        q->want_prefill_logits = true;
        q->image = image_index(json_string_value(json_array_get(images, (size_t)r)));
        ke_gen_params_default(&q->params, &fx.model->config);
        q->params.max_new_tokens = (int)json_integer_value(json_object_get(params,
                                                                           "max_new_tokens"));
        q->params.min_new_tokens = (int)json_integer_value(json_object_get(params,
                                                                           "min_new_tokens"));
        q->params.num_beams = (int)json_integer_value(json_object_get(params, "num_beams"));
        q->params.no_repeat_ngram_size =
            (int)json_integer_value(json_object_get(params, "no_repeat_ngram_size"));
        q->params.length_penalty = 1.0f;
        q->params.early_stopping = false;
    }
}

static void free_requests(built *b)
{
    for (int r = 0; r < b->n; r++) {
        free(b->ids[r]);
        free(b->mask[r]);
    }
}

static bool ids_equal(const ke_gen_result *res, json_t *expected)
{
    if (res->len != json_array_size(expected))
        return false;
    for (size_t i = 0; i < res->len; i++)
        if (res->ids[i] != (int32_t)json_integer_value(json_array_get(expected, i)))
            return false;
    return true;
}

static void print_ids(const char *what, const ke_gen_result *res, size_t prompt_len)
{
    printf("  %s (%zu new):", what, res->new_tokens);
    for (size_t i = prompt_len; i < res->len; i++)
        printf(" %d", res->ids[i]);
    printf("\n");
}

static void print_expected(json_t *expected, size_t prompt_len)
{
    printf("  expected:");
    for (size_t i = prompt_len; i < json_array_size(expected); i++)
        printf(" %lld", (long long)json_integer_value(json_array_get(expected, i)));
    printf("\n");
}

static void test_single_cases(void **state)
{
    (void)state;
    json_t *cases = json_object_get(fx.cases, "cases");
    size_t ci;
    json_t *c;
    int n_run = 0;
    json_array_foreach(cases, ci, c) {
        if (json_array_size(json_object_get(c, "input_ids")) != 1)
            continue;
        const char *name = json_string_value(json_object_get(c, "name"));
        built b;
        build_requests(c, &b);
        ke_gen_result res;
        ke_gen_stats stats;
        ks_status st = ke_generate(fx.backend, fx.image_embeds, fx.n_images, b.req, 1, &res,
                                   &stats);
        if (st != KS_OK)
            fail_msg("%s: %s", name, ks_error_message());
        golden_file g;
        assert_true(golden_open(&g, json_string_value(json_object_get(c, "file"))));
        size_t n;
        float *logits = golden_f32(&g, "prefill_logits_last", &n);
        assert_int_equal(n, (size_t)fx.model->config.text.vocab_size);
        double d = max_abs(res.prefill_logits_last, logits, n);
        json_t *expected = json_array_get(json_object_get(c, "expected_ids"), 0);
        bool same = ids_equal(&res, expected);
        printf("%-24s prefill_logits_last max abs diff %.3g; %zu new ids %s (%.1f ms prefill, "
               "%d steps %.1f ms)\n",
               name, d, res.new_tokens, same ? "identical" : "DIFFER", stats.prefill_ms,
               stats.steps, stats.decode_ms);
        if (!same) {
            print_ids("got", &res, b.req[0].len);
            print_expected(expected, b.req[0].len);
        }
        assert_true(d < TOL);
        assert_true(same);
        free(logits);
        golden_close(&g);
        ke_gen_result_fini(&res);
        free_requests(&b);
        n_run++;
    }
    assert_true(n_run > 0);
}

static void test_batch(void **state)
{
    (void)state;
    json_t *cases = json_object_get(fx.cases, "cases");
    size_t ci;
    json_t *c;
    int n_run = 0;
    json_array_foreach(cases, ci, c) {
        if (json_array_size(json_object_get(c, "input_ids")) < 2)
            continue;
        const char *name = json_string_value(json_object_get(c, "name"));
        built b;
        build_requests(c, &b);
        ke_gen_result res[8], one[8];
        ke_gen_stats stats;
        /* all together: one forward per step */
        ks_status st = ke_generate(fx.backend, fx.image_embeds, fx.n_images, b.req, b.n, res,
                                   &stats);
        if (st != KS_OK)
            fail_msg("%s: %s", name, ks_error_message());
        /* one at a time */
        for (int r = 0; r < b.n; r++)
            assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &b.req[r], 1,
                                         &one[r], NULL),
                             KS_OK);
        golden_file g;
        assert_true(golden_open(&g, json_string_value(json_object_get(c, "file"))));
        size_t n;
        float *logits = golden_f32(&g, "prefill_logits_last", &n);
        size_t V = (size_t)fx.model->config.text.vocab_size;
        assert_int_equal(n, (size_t)b.n * V);
        json_t *hf_batch = json_object_get(c, "expected_ids");
        json_t *hf_single = json_object_get(c, "expected_ids_unbatched");
        printf("%s: %d requests in %d steps\n", name, b.n, stats.steps);
        for (int r = 0; r < b.n; r++) {
            double d = max_abs(res[r].prefill_logits_last, logits + (size_t)r * V, V);
            bool eq_one = res[r].len == one[r].len &&
                          memcmp(res[r].ids, one[r].ids, res[r].len * sizeof(int32_t)) == 0;
            bool eq_single = hf_single ? ids_equal(&res[r], json_array_get(hf_single, (size_t)r))
                                       : ids_equal(&res[r], json_array_get(hf_batch, (size_t)r));
            bool eq_batch = ids_equal(&res[r], json_array_get(hf_batch, (size_t)r));
            printf("  row %d: prefill_logits_last max abs diff %.3g; %zu new; batch == one at a "
                   "time: %s; == HF unbatched: %s; == HF left-padded batch: %s\n",
                   r, d, res[r].new_tokens, eq_one ? "yes" : "NO", eq_single ? "yes" : "NO",
                   eq_batch ? "yes" : "no");
            if (!eq_single) {
                print_ids("got", &res[r], b.req[r].len);
                print_expected(json_array_get(hf_single ? hf_single : hf_batch, (size_t)r),
                               b.req[r].len);
            }
            assert_true(d < TOL);
            assert_true(eq_one);
            assert_true(eq_single);
            ke_gen_result_fini(&res[r]);
            ke_gen_result_fini(&one[r]);
        }
        free(logits);
        golden_close(&g);
        free_requests(&b);
        n_run++;
    }
    assert_true(n_run > 0);
}

/* ---- behaviour that needs a model but no golden ids ------------------------------------- */

static json_t *first_case(void) { return json_array_get(json_object_get(fx.cases, "cases"), 0); }

static void test_waiting_for_slots(void **state)
{
    (void)state;
    /* 2 slots, requests of 1, 2 and 1 beams: they run in waves, results as alone */
    ke_backend_options bo = {.slots = 2, .slot_capacity = 512};
    ke_backend *small = NULL;
    assert_int_equal(open_backend(&bo, &small), KS_OK);
    built b;
    build_requests(first_case(), &b);
    b.req[0].params.max_new_tokens = 6;
    b.req[0].params.min_new_tokens = 0;
    b.req[1] = b.req[0];
    b.req[1].params.num_beams = 2;
    b.req[2] = b.req[0];
    b.req[2].params.no_repeat_ngram_size = 1;
    ke_gen_result all[3], one[3];
    assert_int_equal(ke_generate(small, fx.image_embeds, fx.n_images, b.req, 3, all, NULL), KS_OK);
    for (int r = 0; r < 3; r++) {
        assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &b.req[r], 1,
                                     &one[r], NULL),
                         KS_OK);
        assert_int_equal(all[r].len, one[r].len);
        assert_memory_equal(all[r].ids, one[r].ids, all[r].len * sizeof(int32_t));
        ke_gen_result_fini(&all[r]);
        ke_gen_result_fini(&one[r]);
    }
    b.n = 1;
    free_requests(&b);
    ke_backend_destroy(&small);
    assert_null(small);
}

/* Continuous batching: requests arrive while others decode, one is stopped, prompts are fed in
 * chunks, the KV cache holds only some of them at a time (so admission waits), and greedy,
 * beam and sampling requests share steps. Every request that ends by itself has exactly the ids
 * of its run alone; the stopped one has a prefix of them. */
/* Request i's result from a shared scheduler equals its run alone (a stopped one: a prefix of
 * it); takes and frees *got. */
static void expect_as_alone(int i, const ke_gen_request *q, ke_gen_result *got, bool stopped)
{
    ke_gen_result alone;
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, q, 1, &alone, NULL),
                     KS_OK);
    printf("  request %d: %zu new ids%s, alone %zu\n", i, got->new_tokens,
           stopped ? " (stopped)" : "", alone.new_tokens);
    if (stopped) {
        assert_true(got->len <= alone.len);
    } else {
        assert_int_equal(got->len, alone.len);
    }
    assert_memory_equal(got->ids, alone.ids, got->len * sizeof(int32_t));
    ke_gen_result_fini(got);
    ke_gen_result_fini(&alone);
}

static void test_continuous_batching(void **state)
{
    (void)state;
    built b;
    build_requests(first_case(), &b);
    enum { N = 7 };
    ke_gen_request q[N];
    static const int max_new[N] = {3, 17, 8, 30, 6, 12, 9};
    for (int i = 0; i < N; i++) {
        q[i] = b.req[0];
        q[i].want_prefill_logits = false;
        q[i].image = i % fx.n_images;
        q[i].params.max_new_tokens = max_new[i];
        q[i].params.min_new_tokens = i == 2 ? 8 : 0;
        q[i].params.no_repeat_ngram_size = i % 2 ? 3 : 0;
    }
    q[4].params.num_beams = 2;
    q[5].params.do_sample = true;
    q[5].params.temperature = 40.0f;
    q[5].params.top_k = 0;
    q[5].params.top_p = 0.95f;
    q[5].params.seed = 7;
    /* room for about three sequences at a time */
    ke_backend_options bo = {.slots = 8,
                             .slot_capacity = 512,
                             .kv_tokens = 3 * (b.req[0].len + 32)};
    ke_backend *small = NULL;
    assert_int_equal(open_backend(&bo, &small), KS_OK);
    ke_sched *s = NULL;
    ke_sched_params sp = {.prefill_tokens = 40}; /* a prompt takes two steps */
    assert_int_equal(ke_sched_new(small, &sp, &s), KS_OK);
    int img[2];
    for (int i = 0; i < fx.n_images && i < 2; i++)
        assert_int_equal(ke_sched_add_image(s, fx.image_embeds + (size_t)i * embeds_per_image(),
                                            &img[i]),
                         KS_OK);
    /* when each request arrives (the step before which it is added), and when 1 is stopped */
    static const int arrive[N] = {0, 0, 2, 3, 5, 7, 9};
    const int stop_at = 6;
    ke_gen_result got[N];
    bool have[N] = {false}, stopped[N] = {false};
    int added = 0;
    for (int step = 0; step < 1000 && (added < N || ke_sched_pending(s) > 0); step++) {
        while (added < N && arrive[added] <= step) {
            ke_gen_request r = q[added];
            r.image = img[r.image];
            assert_int_equal(ke_sched_add(s, &r, (uint64_t)added), KS_OK);
            added++;
        }
        if (step == stop_at)
            ke_sched_stop(s, 1);
        ke_sched_done *done = NULL;
        int n_done = 0;
        if (ke_sched_step(s, &done, &n_done) != KS_OK)
            fail_msg("step %d: %s", step, ks_error_message());
        for (int d = 0; d < n_done; d++) {
            int t = (int)done[d].tag;
            assert_false(have[t]);
            got[t] = done[d].result;
            memset(&done[d].result, 0, sizeof done[d].result);
            have[t] = true;
            stopped[t] = done[d].stopped;
        }
    }
    ke_gen_stats st;
    ke_sched_stats(s, &st);
    printf("  %d steps after the prefills; %d tokens sampled from device lists\n", st.steps,
           st.sampled_on_device);
    ke_sched_drop_image(s, img[0]);
    ke_sched_drop_image(s, img[1]);
    ke_sched_destroy(&s);
    for (int i = 0; i < N; i++) {
        assert_true(have[i]);
        assert_true(stopped[i] == (i == 1));
        expect_as_alone(i, &q[i], &got[i], stopped[i]);
    }
    b.n = 1;
    free_requests(&b);
    ke_backend_destroy(&small);
}

/* Greedy requests only, so that every step's ids are read while the next step computes (on
 * devices with selection), and more of them arrive than the host rows were sized for: the
 * scheduler grows its rows with a selection in flight (it used to fail: "growing during a
 * selection", seen as a device failure by `kosmos submit --model`). Each equals its run alone. */
static void test_growth_while_selecting(void **state)
{
    (void)state;
    built b;
    build_requests(first_case(), &b);
    enum { N = 7 };
    ke_gen_request q[N];
    for (int i = 0; i < N; i++) {
        q[i] = b.req[0];
        q[i].want_prefill_logits = false;
        q[i].image = 0;
        q[i].params.max_new_tokens = 6 + 2 * i;
        q[i].params.min_new_tokens = 6 + 2 * i;
        q[i].params.no_repeat_ngram_size = 0;
    }
    ke_sched *s = NULL;
    assert_int_equal(ke_sched_new(fx.backend, NULL, &s), KS_OK);
    int img = 0;
    assert_int_equal(ke_sched_add_image(s, fx.image_embeds, &img), KS_OK);
    static const int arrive[N] = {0, 2, 3, 3, 5, 5, 5}; /* 1, then 2, 4 and 7 running */
    ke_gen_result got[N];
    bool have[N] = {false};
    int added = 0;
    for (int step = 0; step < 1000 && (added < N || ke_sched_pending(s) > 0); step++) {
        while (added < N && arrive[added] <= step) {
            ke_gen_request r = q[added];
            r.image = img;
            assert_int_equal(ke_sched_add(s, &r, (uint64_t)added), KS_OK);
            added++;
        }
        ke_sched_done *done = NULL;
        int n_done = 0;
        if (ke_sched_step(s, &done, &n_done) != KS_OK)
            fail_msg("step %d: %s", step, ks_error_message());
        for (int d = 0; d < n_done; d++) {
            int t = (int)done[d].tag;
            got[t] = done[d].result;
            memset(&done[d].result, 0, sizeof done[d].result);
            have[t] = true;
        }
    }
    ke_sched_drop_image(s, img);
    ke_sched_destroy(&s);
    for (int i = 0; i < N; i++) {
        assert_true(have[i]);
        expect_as_alone(i, &q[i], &got[i], false);
    }
    printf("  %d greedy requests arriving while ids were read: each equals its run alone\n", N);
    b.n = 1;
    free_requests(&b);
}

static void test_sampling(void **state)
{
    (void)state;
    built b;
    build_requests(first_case(), &b);
    ke_gen_request q = b.req[0];
    q.params.max_new_tokens = 12;
    q.params.min_new_tokens = 12;
    q.params.no_repeat_ngram_size = 0;
    q.params.do_sample = true;
    q.params.temperature = 40.0f; /* the tiny model's logits are decisive: flatten them */
    q.params.top_p = 0.95f;
    q.params.top_k = 0;
    q.params.seed = 1234;
    ke_gen_result a, a2, c, greedy, k1, p1;
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &q, 1, &a, NULL), KS_OK);
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &q, 1, &a2, NULL),
                     KS_OK);
    assert_int_equal(a.len, a2.len);
    assert_memory_equal(a.ids, a2.ids, a.len * sizeof(int32_t)); /* same seed, same ids */
    q.params.seed = 99;
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &q, 1, &c, NULL), KS_OK);
    assert_true(a.len != c.len || memcmp(a.ids, c.ids, a.len * sizeof(int32_t)) != 0);
    /* top_k 1, or a tiny top_p, leaves only the argmax: sampling equals greedy */
    q.params.top_k = 1;
    q.params.top_p = 1.0f;
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &q, 1, &k1, NULL),
                     KS_OK);
    q.params.top_k = 0;
    q.params.top_p = 1e-6f;
    q.params.temperature = 1.0f;
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &q, 1, &p1, NULL),
                     KS_OK);
    q.params.do_sample = false;
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &q, 1, &greedy, NULL),
                     KS_OK);
    assert_int_equal(k1.len, greedy.len);
    assert_memory_equal(k1.ids, greedy.ids, k1.len * sizeof(int32_t));
    assert_int_equal(p1.len, greedy.len);
    assert_memory_equal(p1.ids, greedy.ids, p1.len * sizeof(int32_t));
    /* a sampled batch equals its requests sampled alone (one RNG per request) */
    ke_gen_request two[2] = {q, q};
    two[0].params.do_sample = two[1].params.do_sample = true;
    two[0].params.top_k = two[1].params.top_k = 50;
    two[0].params.top_p = two[1].params.top_p = 0.9f;
    two[0].params.temperature = two[1].params.temperature = 40.0f;
    two[1].params.seed = 7;
    ke_gen_result both[2], alone;
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, two, 2, both, NULL),
                     KS_OK);
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &two[1], 1, &alone,
                                 NULL),
                     KS_OK);
    assert_int_equal(both[1].len, alone.len);
    assert_memory_equal(both[1].ids, alone.ids, alone.len * sizeof(int32_t));
    ke_gen_result *all[] = {&a, &a2, &c, &greedy, &k1, &p1, &both[0], &both[1], &alone};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        ke_gen_result_fini(all[i]);
    free_requests(&b);
}

/* Greedy selection on the device (select_greedy: the n-gram ban and min_new_tokens there) gives
 * the ids the host path gives: the same requests with the backend's select_greedy hidden. On
 * a backend without it (ref) both runs take the host path. */
static void test_device_select(void **state)
{
    (void)state;
    built b;
    build_requests(first_case(), &b);
    ke_gen_request q[3] = {b.req[0], b.req[0], b.req[0]};
    q[0].params.max_new_tokens = 24;
    q[0].params.min_new_tokens = 24; /* </s> masked throughout */
    q[0].params.no_repeat_ngram_size = 0;
    q[1].params.max_new_tokens = 20;
    q[1].params.min_new_tokens = 10;
    q[1].params.no_repeat_ngram_size = 2;
    q[2].params.max_new_tokens = 16;
    q[2].params.min_new_tokens = 0;
    q[2].params.no_repeat_ngram_size = 1;
    q[2].image = fx.n_images - 1;
    ke_gen_result dev[3], host[3];
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, q, 3, dev, NULL), KS_OK);
    ke_backend_ops hidden = *fx.backend->ops;
    hidden.select_greedy = NULL;
    const ke_backend_ops *saved = fx.backend->ops;
    fx.backend->ops = &hidden;
    ks_status st = ke_generate(fx.backend, fx.image_embeds, fx.n_images, q, 3, host, NULL);
    fx.backend->ops = saved;
    assert_int_equal(st, KS_OK);
    printf("select on the device: %s\n", saved->select_greedy ? "yes" : "no (host path)");
    for (int r = 0; r < 3; r++) {
        bool same = dev[r].len == host[r].len &&
                    memcmp(dev[r].ids, host[r].ids, dev[r].len * sizeof(int32_t)) == 0;
        printf("  request %d: %zu new ids, device == host: %s\n", r, dev[r].new_tokens,
               same ? "yes" : "NO");
        if (!same) {
            print_ids("device", &dev[r], q[r].len);
            print_ids("host", &host[r], q[r].len);
        }
        assert_true(same);
        ke_gen_result_fini(&dev[r]);
        ke_gen_result_fini(&host[r]);
    }
    free_requests(&b);
}

/* Sampling's selection on the device (select_sample: candidate lists, the host finishing
 * top-p and the draw, fetch_logits where a list cannot decide) gives, seed for seed, the ids of
 * the host path on the same backend: the same requests with select_sample and fetch_logits
 * hidden. One batch mixes greedy and sampling requests and every kind of list: top-k (50; 5
 * with top-p), top-p alone (decided from the list with the tail's bounds, or deferred), no
 * filter (always the full row), n-gram bans and min_new_tokens. (The reference backend's own
 * logits differ from a device's within 1e-3, so a flattened distribution may draw differently
 * there: the host path on the device's logits is the specification.) On the reference backend
 * both runs take the host path. */
static void test_device_sample(void **state)
{
    (void)state;
    built b;
    build_requests(first_case(), &b);
    enum { NQ = 6 };
    ke_gen_request q[NQ];
    for (int r = 0; r < NQ; r++) {
        q[r] = b.req[0];
        q[r].params.max_new_tokens = 16;
        q[r].params.min_new_tokens = 0;
        q[r].params.no_repeat_ngram_size = 0;
        q[r].params.do_sample = true;
        q[r].params.top_k = 50;
        q[r].params.top_p = 1.0f;
        q[r].params.temperature = 1.0f;
        q[r].image = r % fx.n_images;
    }
    q[0].params.temperature = 40.0f; /* flattened: top-k 50 decides on the list */
    q[0].params.min_new_tokens = 16;
    q[1].params.top_k = 0; /* top-p alone: list + tail bounds, or the full row */
    q[1].params.top_p = 0.9f;
    q[1].params.temperature = 2.0f;
    q[1].params.no_repeat_ngram_size = 2;
    q[2].params.top_k = 0; /* no filter: always the full row */
    q[2].params.temperature = 20.0f;
    q[3].params.top_k = 5;
    q[3].params.top_p = 0.5f;
    q[3].params.temperature = 30.0f;
    q[3].params.no_repeat_ngram_size = 1;
    q[4].params.do_sample = false; /* a greedy request in the same steps */
    q[4].params.min_new_tokens = 8;
    q[5].params.top_k = 0; /* top-p alone, flattened: the nucleus leaves the list */
    q[5].params.top_p = 0.95f;
    q[5].params.temperature = 40.0f;
    const bool has = fx.backend->ops->select_sample != NULL;
    int on_device = 0, on_host = 0;
    /* without select_sample both runs take the host path: one seed is enough there */
    const uint64_t n_seeds = has ? 4 : 1;
    for (uint64_t seed = 1; seed <= n_seeds; seed++) {
        for (int r = 0; r < NQ; r++)
            q[r].params.seed = seed * 1000 + (uint64_t)r;
        ke_gen_result dev[NQ], host[NQ];
        ke_gen_stats gs;
        assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, q, NQ, dev, &gs),
                         KS_OK);
        on_device += gs.sampled_on_device;
        on_host += gs.sampled_on_host;
        ke_backend_ops hidden = *fx.backend->ops;
        hidden.select_sample = NULL;
        hidden.fetch_logits = NULL;
        const ke_backend_ops *saved = fx.backend->ops;
        fx.backend->ops = &hidden;
        ks_status st = ke_generate(fx.backend, fx.image_embeds, fx.n_images, q, NQ, host, &gs);
        fx.backend->ops = saved;
        assert_int_equal(st, KS_OK);
        assert_int_equal(gs.sampled_on_device, 0);
        for (int r = 0; r < NQ; r++) {
            bool same = dev[r].len == host[r].len &&
                        memcmp(dev[r].ids, host[r].ids, dev[r].len * sizeof(int32_t)) == 0;
            if (!same) {
                printf("  seed %llu request %d: device != host\n", (unsigned long long)seed, r);
                print_ids("device", &dev[r], q[r].len);
                print_ids("host", &host[r], q[r].len);
            }
            assert_true(same);
            ke_gen_result_fini(&dev[r]);
            ke_gen_result_fini(&host[r]);
        }
    }
    printf("sampling on the device: %s; %d tokens decided from lists, %d from full rows\n",
           has ? "yes" : "no (host path)", on_device, on_host);
    if (has)
        assert_true(on_device > 0 && on_host > 0);
    else
        assert_int_equal(on_device, 0);
    free_requests(&b);
}

/* A greedy decode step on an OpenCL device, counted (never timed) through the context's
 * profile: at most six launches per text layer (five today: the fused GEMMs and the paged
 * attention), and no call that makes the host wait while a step is enqueued; the host waits
 * only for a step's ids, with the next step already queued. */
static void test_decode_step_launches_and_waits(void **state)
{
    (void)state;
#ifdef KOSMOS_HAVE_OPENCL
    kc_context *ctx = ke_backend_cl_context(fx.backend);
    assert_non_null(ctx);
    kc_profile *prof = kc_context_profile(ctx);
    built b;
    build_requests(first_case(), &b);
    ke_gen_request q = b.req[0];
    q.want_prefill_logits = false;
    q.params.max_new_tokens = q.params.min_new_tokens = 20;
    q.params.num_beams = 1;
    kc_profile_reset(prof);
    ke_gen_result r;
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &q, 1, &r, NULL), KS_OK);
    assert_int_equal(r.new_tokens, 20);
    uint64_t steps = kc_profile_counter_value(prof, "text steps"); /* the prefill and 19 more */
    uint64_t layer = kc_profile_launches(prof, "text layer");
    uint64_t busy = 0, in_step = kc_profile_waits(prof, "text step", NULL) +
                                 kc_profile_waits(prof, "text layer", NULL);
    uint64_t ids = kc_profile_waits(prof, NULL, &busy) - in_step;
    int layers = fx.model->config.text.layers;
    printf("  %llu steps: %.2f launches per text layer and step, %llu waits inside steps, "
           "%llu waits for ids (%llu with the next step queued)\n",
           (unsigned long long)steps, (double)layer / (double)steps / layers,
           (unsigned long long)in_step, (unsigned long long)ids, (unsigned long long)busy);
    assert_int_equal(steps, 20);
    assert_true(layer <= 6 * steps * (uint64_t)layers);
    assert_int_equal(in_step, 0);
    assert_true(busy + 1 >= ids); /* only the last step's ids are waited for with nothing after */
    ke_gen_result_fini(&r);
    b.n = 1;
    free_requests(&b);
#endif
}

/* A device that cannot hold what is asked fails the open with a message naming the buffer and
 * its size, never a crash (OpenCL devices only: the reference backend's calloc may overcommit). */
static void test_device_out_of_memory(void **state)
{
    (void)state;
    /* ~0.8 TB of KV cache per layer for the tiny model: more than any device holds. */
    ke_backend_options bo = {.slots = 1024, .slot_capacity = 1 << 22};
    ke_backend *huge = NULL;
    ks_status st = open_backend(&bo, &huge);
    assert_null(huge);
    /* Past the device's largest allocation: a limit, told before anything is allocated. */
    assert_int_equal(st, KS_ERR_LIMIT);
    printf("  %s\n", ks_error_message());
    assert_non_null(strstr(ks_error_message(), "KV cache"));
    assert_non_null(strstr(ks_error_message(), "bytes"));
}

static void test_invalid_params(void **state)
{
    (void)state;
    built b;
    build_requests(first_case(), &b);
    ke_gen_request good = b.req[0];
    good.params.max_new_tokens = 4;
    good.params.min_new_tokens = 0;
    struct {
        const char *what;
        ke_gen_request q;
        ks_status want;
    } bad[16];
    int n = 0;
#define BAD(w, field, value, status)                                                               \
    do {                                                                                           \
        bad[n].what = w;                                                                           \
        bad[n].q = good;                                                                           \
        bad[n].q.field = value;                                                                    \
        bad[n].want = status;                                                                      \
        n++;                                                                                       \
    } while (0)
    BAD("num_beams 0", params.num_beams, 0, KS_ERR_INVALID);
    BAD("max_new_tokens -1", params.max_new_tokens, -1, KS_ERR_INVALID);
    BAD("min > max", params.min_new_tokens, 5, KS_ERR_INVALID);
    BAD("beams > slots", params.num_beams, 9, KS_ERR_LIMIT);
    BAD("too long", params.max_new_tokens, 500, KS_ERR_LIMIT);
    BAD("image out of range", image, 7, KS_ERR_INVALID);
    BAD("no mask", image_embeds_position_mask, NULL, KS_ERR_INVALID);
    BAD("empty prompt", len, 0, KS_ERR_INVALID);
    BAD("ngram -1", params.no_repeat_ngram_size, -1, KS_ERR_INVALID);
    bad[n] = bad[0];
    bad[n].what = "temperature 0";
    bad[n].q = good;
    bad[n].q.params.do_sample = true;
    bad[n].q.params.temperature = 0.0f;
    bad[n++].want = KS_ERR_INVALID;
    bad[n] = bad[n - 1];
    bad[n].what = "top_p 0";
    bad[n].q.params.temperature = 1.0f;
    bad[n].q.params.top_p = 0.0f;
    bad[n++].want = KS_ERR_INVALID;
    bad[n] = bad[n - 1];
    bad[n].what = "top_p 1.5";
    bad[n].q.params.top_p = 1.5f;
    bad[n++].want = KS_ERR_INVALID;
    bad[n] = bad[n - 1];
    bad[n].what = "sampling with beams";
    bad[n].q.params.top_p = 1.0f;
    bad[n].q.params.num_beams = 2;
    bad[n++].want = KS_ERR_UNSUPPORTED;
    int32_t *ids = malloc(good.len * sizeof(int32_t));
    memcpy(ids, good.input_ids, good.len * sizeof(int32_t));
    ids[good.len - 1] = fx.model->config.text.vocab_size;
    bad[n] = bad[0];
    bad[n].what = "id outside vocab";
    bad[n].q = good;
    bad[n].q.input_ids = ids;
    bad[n++].want = KS_ERR_INVALID;
    for (int i = 0; i < n; i++) {
        ke_gen_result r;
        ks_status st = ke_generate(fx.backend, fx.image_embeds, fx.n_images, &bad[i].q, 1, &r,
                                   NULL);
        printf("  %-20s -> %s: %s\n", bad[i].what, ks_status_name(st), ks_error_message());
        assert_int_equal(st, bad[i].want);
        assert_null(r.ids);
        assert_true(strlen(ks_error_message()) > 0);
    }
    /* max_new_tokens 0 returns the prompt, with the prefill logits when asked for */
    ke_gen_result r;
    good.params.max_new_tokens = 0;
    good.want_prefill_logits = true;
    assert_int_equal(ke_generate(fx.backend, fx.image_embeds, fx.n_images, &good, 1, &r, NULL),
                     KS_OK);
    assert_int_equal(r.len, good.len);
    assert_int_equal(r.new_tokens, 0);
    assert_non_null(r.prefill_logits_last);
    ke_gen_result_fini(&r);
    /* the backend refuses a step beyond a slot's capacity */
    int32_t one_id = 0, one_pos = 2;
    int slot = 0, many = 600;
    ke_step step = {
        .n_seqs = 1, .slots = &slot, .n_tokens = &many, .ids = &one_id, .positions = &one_pos};
    float *logits = malloc((size_t)fx.model->config.text.vocab_size * sizeof(float));
    assert_int_equal(fx.backend->ops->forward(fx.backend, &step, logits), KS_ERR_LIMIT);
    free(logits);
    free(ids);
    free_requests(&b);
}

int main(void)
{
    /* the last two run on OpenCL devices only: the reference backend's calloc may overcommit,
     * so there is no failure to check, and it has no launches to count */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vision),
        cmocka_unit_test(test_vision_chunks),
        cmocka_unit_test(test_single_cases),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_waiting_for_slots),
        cmocka_unit_test(test_continuous_batching),
        cmocka_unit_test(test_growth_while_selecting),
        cmocka_unit_test(test_sampling),
        cmocka_unit_test(test_device_select),
        cmocka_unit_test(test_device_sample),
        cmocka_unit_test(test_invalid_params),
        cmocka_unit_test(test_device_out_of_memory),
        cmocka_unit_test(test_decode_step_launches_and_waits),
    };
    size_t count = sizeof tests / sizeof tests[0];
    if (strcmp(test_device(), "ref") == 0)
        count -= 2;
    return _cmocka_run_group_tests("test_engine_golden", tests, count, setup, teardown);
}
