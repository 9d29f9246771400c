/* Unit tests for worker/engine/quant (int8 weight-only quantization, --precision int8):
 *   - the round trip: every code within [-127, 127], every value within scale / 2 of its code
 *     times the scale, each row's largest value on ±127, zero rows and f16-rounded f32 rows;
 *   - values no scale represents (NaN, infinity) are an error, not a code;
 *   - ke_op_linear on int8 weights: the codes' dot product times the row's scale, plus bias;
 *   - both backends with weights_int8 on the tiny checkpoint: the OpenCL backend's image
 *     embeddings and logits equal the reference backend's (needs an OpenCL device:
 *     KOSMOS_TEST_DEVICE=<spec>, else the default rule; skips without one), and int8 did move
 *     them away from fp16 (the option is not silently ignored).
 * Never a golden test: the goldens run fp16 and fp32 only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_open.h"
#include "model.h"
#include "quant.h"
#include "ref_ops.h"
#include "test_skip.h"

static uint64_t rng_state = 0x3c6ef372fe94f82bull;

static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) * 0x1p-52 - 1.0);
}

/* A (rows, in) weight of dtype dt with rows of different magnitudes, row 2 all zero and row 3
 * a single nonzero value; round_f16 marks f32 data of an f16 model. Caller frees ->data. */
static ke_tensor make_weight(ke_dtype dt, bool round_f16, size_t rows, size_t in)
{
    void *data = malloc(rows * in * (dt == KE_DTYPE_F16 ? 2 : 4));
    assert_non_null(data);
    for (size_t r = 0; r < rows; r++)
        for (size_t i = 0; i < in; i++) {
            float v = frand() * powf(10.0f, (float)(r % 5) - 3.0f);
            if (r == 2 || (r == 3 && i != in / 2))
                v = 0.0f;
            if (dt == KE_DTYPE_F16)
                ((uint16_t *)data)[r * in + i] = ke_f32_to_f16(v);
            else
                ((float *)data)[r * in + i] = v;
        }
    return (ke_tensor){.dtype = dt,
                       .round_f16 = round_f16,
                       .ndim = 2,
                       .shape = {(int64_t)rows, (int64_t)in},
                       .data = data};
}

static void test_round_trip(void **state)
{
    (void)state;
    const size_t rows = 37, in = 53;
    const struct {
        ke_dtype dt;
        bool round_f16;
    } kinds[] = {{KE_DTYPE_F32, false}, {KE_DTYPE_F16, false}, {KE_DTYPE_F32, true}};
    float *w = malloc(rows * in * sizeof *w), *back = malloc(rows * in * sizeof *back);
    assert_true(w && back);
    for (size_t kd = 0; kd < sizeof kinds / sizeof kinds[0]; kd++) {
        ke_tensor t = make_weight(kinds[kd].dt, kinds[kd].round_f16, rows, in), q;
        ke_tensor_read_f32(&t, 0, rows * in, w); /* what the device copy would hold */
        assert_int_equal(ke_q8_tensor_new(&t, &q), KS_OK);
        assert_int_equal(q.dtype, KE_DTYPE_I8);
        assert_int_equal(q.shape[0], rows);
        assert_int_equal(q.shape[1], in);
        ke_tensor_read_f32(&q, 0, rows * in, back);
        const int8_t *codes = q.data;
        for (size_t r = 0; r < rows; r++) {
            const float scale = q.scale[r];
            int top = 0;
            for (size_t i = 0; i < in; i++) {
                const int c = codes[r * in + i];
                assert_true(c >= -127 && c <= 127);
                top = abs(c) > top ? abs(c) : top;
                assert_true(back[r * in + i] == (float)c * scale);
                /* scale / 2, and one rounding of the quotient w / scale on top */
                const double err = fabs((double)back[r * in + i] - (double)w[r * in + i]);
                if (!(err <= (double)scale * (0.5 + 0x1p-20)))
                    fail_msg("kind %zu row %zu column %zu: %g comes back as %g (scale %g)", kd, r,
                             i, (double)w[r * in + i], (double)back[r * in + i], (double)scale);
            }
            if (r == 2) {
                assert_true(scale == 0.0f && top == 0);
            } else {
                assert_true(scale > 0.0f);
                assert_int_equal(top, 127); /* the row's largest value uses the whole range */
            }
        }
        ke_q8_tensor_free(&q);
        assert_null(q.data);
        free((void *)t.data);
    }
    free(w), free(back);
}

static void test_not_finite(void **state)
{
    (void)state;
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        ke_tensor t = make_weight(KE_DTYPE_F32, false, 4, 8), q;
        ((float *)t.data)[2 * 8 + 5] = bad[b];
        assert_int_equal(ke_q8_tensor_new(&t, &q), KS_ERR_INVALID);
        assert_non_null(strstr(ks_error_message(), "row 2"));
        assert_null(q.data);
        free((void *)t.data);
    }
    ke_tensor vec = {.dtype = KE_DTYPE_F32, .ndim = 1, .shape = {3}, .data = bad}, q;
    assert_int_equal(ke_q8_tensor_new(&vec, &q), KS_ERR_INVALID);
}

static void test_linear(void **state)
{
    (void)state;
    const size_t rows = 3, out = 37, in = 53;
    ke_tensor t = make_weight(KE_DTYPE_F16, false, out, in), q;
    assert_int_equal(ke_q8_tensor_new(&t, &q), KS_OK);
    uint16_t bias_h[37];
    float x[3 * 53], y[3 * 37], *scratch = malloc(ke_op_linear_scratch(in) * sizeof *scratch);
    assert_non_null(scratch);
    for (size_t i = 0; i < out; i++)
        bias_h[i] = ke_f32_to_f16(frand());
    for (size_t i = 0; i < rows * in; i++)
        x[i] = frand() * 3.0f;
    ke_tensor bias = {.dtype = KE_DTYPE_F16, .ndim = 1, .shape = {(int64_t)out}, .data = bias_h};
    ke_op_linear(x, rows, &q, &bias, y, scratch);
    const int8_t *codes = q.data;
    for (size_t r = 0; r < rows; r++)
        for (size_t o = 0; o < out; o++) {
            double s = 0, mag = 0;
            for (size_t i = 0; i < in; i++) {
                s += (double)x[r * in + i] * codes[o * in + i];
                mag += fabs((double)x[r * in + i] * codes[o * in + i]);
            }
            const double b = ke_f16_to_f32(bias_h[o]);
            const double want = s * q.scale[o] + b;
            const double tol = ((double)in + 4.0) * 0x1p-24 * (mag * q.scale[o] + fabs(b));
            if (!(fabs((double)y[r * out + o] - want) <= tol))
                fail_msg("row %zu output %zu: %.9g, want %.9g", r, o, (double)y[r * out + o], want);
        }
    ke_q8_tensor_free(&q);
    free((void *)t.data);
    free(scratch);
}

/* ---- both backends on the tiny checkpoint ---------------------------------------------------- */
#ifdef KOSMOS_HAVE_OPENCL /* a build without OpenCL has only the reference */

/* What one backend makes of one image and a prompt: the image embeddings, and the logits of a
 * prefill and of three decode steps fed the ids in `feed` (the reference's argmax when
 * feed_out is set: it fills it). */
typedef struct run_out {
    float *embeds, *logits; /* (latent, embed), (4, vocab) */
} run_out;

static void run_backend(const ke_model *m, const char *spec, bool int8, const float *pixels,
                        int32_t *feed, bool feed_out, run_out *out)
{
    const ke_config *c = &m->config;
    const size_t lq = (size_t)c->latent_query_num, emb = (size_t)c->text.embed_dim;
    const size_t vocab = (size_t)c->text.vocab_size, len = lq + 6;
    ke_backend_options bo = {.slots = 1, .slot_capacity = 128, .weights_int8 = int8};
    ke_backend *b = NULL;
    if (ke_backend_open(m, spec, &bo, &b) != KS_OK)
        fail_msg("%s%s: %s", spec, int8 ? " int8" : "", ks_error_message());
    out->embeds = malloc(lq * emb * sizeof(float));
    out->logits = malloc(4 * vocab * sizeof(float));
    int32_t *ids = malloc(len * sizeof *ids), *pos = malloc(len * sizeof *pos);
    uint8_t *mask = malloc(len);
    assert_true(out->embeds && out->logits && ids && pos && mask);
    assert_int_equal(b->ops->encode_images(b, pixels, 1, out->embeds, NULL), KS_OK);
    /* <s>, the image rows, then a few words: ids that only need to be in the vocabulary */
    for (size_t i = 0; i < len; i++) {
        ids[i] = i == 0 ? c->text.bos_id : (int32_t)((i * 7919) % vocab);
        mask[i] = i >= 2 && i < 2 + lq;
        pos[i] = c->text.pad_id + 1 + (int32_t)i;
    }
    int slot = 0, n = (int)len;
    ke_step step = {.n_seqs = 1,
                    .slots = &slot,
                    .n_tokens = &n,
                    .ids = ids,
                    .positions = pos,
                    .image_mask = mask,
                    .image_embeds = out->embeds};
    for (int s = 0; s < 4; s++) {
        float *logits = out->logits + (size_t)s * vocab;
        assert_int_equal(b->ops->forward(b, &step, logits), KS_OK);
        if (feed_out) {
            size_t best = 0;
            for (size_t v = 1; v < vocab; v++)
                best = logits[v] > logits[best] ? v : best;
            feed[s] = (int32_t)best;
        }
        n = 1;
        step.ids = &feed[s];
        pos[0] = c->text.pad_id + 1 + (int32_t)len + s;
        step.positions = pos;
        step.image_mask = NULL;
    }
    free(ids), free(pos), free(mask);
    ke_backend_destroy(&b);
}

static double max_abs_diff(const float *a, const float *b, size_t n, double *largest)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        m = d > m || d != d ? d : m;
        if (largest && fabs((double)b[i]) > *largest)
            *largest = fabs((double)b[i]);
    }
    return m;
}

static void test_backends_agree(void **state)
{
    (void)state;
    const char *spec = getenv("KOSMOS_TEST_DEVICE");
    spec = spec && *spec ? spec : "cpu";
    ke_model_options mo;
    ke_model_options_default(&mo);
    ke_model *m = NULL;
    if (ke_model_load(KOSMOS_TEST_DATA_DIR "/tiny-kosmos2", &mo, &m) != KS_OK)
        fail_msg("%s", ks_error_message());
    /* an OpenCL device first: without one the test cannot run */
    ke_backend_options probe_options = {.slots = 1, .slot_capacity = 8};
    ke_backend *probe = NULL;
    if (ke_backend_open(m, spec, &probe_options, &probe) != KS_OK) {
        print_message("--device %s: %s\n", spec, ks_error_message());
        ke_model_destroy(&m);
        KT_CANNOT_RUN("no OpenCL device");
    }
    ke_backend_destroy(&probe);

    const ke_config *c = &m->config;
    const size_t npix = (size_t)c->vision.channels * (size_t)c->vision.image_size *
                        (size_t)c->vision.image_size;
    const size_t ne = (size_t)c->latent_query_num * (size_t)c->text.embed_dim;
    const size_t nl = 4 * (size_t)c->text.vocab_size;
    float *pixels = malloc(npix * sizeof *pixels);
    assert_non_null(pixels);
    for (size_t i = 0; i < npix; i++)
        pixels[i] = frand() * 2.0f;
    int32_t feed[4];
    run_out ref8, cl8, ref16;
    run_backend(m, "ref", true, pixels, feed, true, &ref8);
    run_backend(m, spec, true, pixels, feed, false, &cl8);
    run_backend(m, "ref", false, pixels, feed, false, &ref16);

    double big_e = 0, big_l = 0;
    const double de = max_abs_diff(cl8.embeds, ref8.embeds, ne, &big_e);
    const double dl = max_abs_diff(cl8.logits, ref8.logits, nl, &big_l);
    const double qe = max_abs_diff(ref16.embeds, ref8.embeds, ne, NULL);
    const double ql = max_abs_diff(ref16.logits, ref8.logits, nl, NULL);
    print_message("int8, OpenCL vs reference: image embeds %.3g (values up to %.3g), logits "
                  "%.3g (up to %.3g); int8 vs fp16 (reference): %.3g, %.3g\n",
                  de, big_e, dl, big_l, qe, ql);
    /* the fp16 goldens hold the OpenCL backend to 1e-3 of the reference's logits */
    assert_true(de <= 1e-4 * (1.0 + big_e));
    assert_true(dl <= 1e-3);
    /* quantization moved the results by more than the backends differ: both quantized */
    assert_true(qe > 10.0 * de && ql > 10.0 * dl);

    free(ref8.embeds), free(ref8.logits), free(cl8.embeds), free(cl8.logits);
    free(ref16.embeds), free(ref16.logits), free(pixels);
    ke_model_destroy(&m);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_not_finite),
        cmocka_unit_test(test_linear),
#ifdef KOSMOS_HAVE_OPENCL
        cmocka_unit_test(test_backends_agree),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
