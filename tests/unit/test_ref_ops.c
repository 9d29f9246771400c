/* Unit tests for worker/engine/ref_ops: every reference op against a naive double-precision
 * computation written out here, on random data and edge shapes (head_dim 8 and 16, odd widths,
 * 1 and 3 rows, sequences of 1 and 257 tokens). Needs no checkpoint. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref_ops.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static double frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1p-52 - 1.0;
}

static float *rand_floats(size_t n, double scale)
{
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(frand() * scale);
    return x;
}

/* f32 -> f16 bits, round to nearest even (finite, normal-or-subnormal range only). */
static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    float a = fabsf(f);
    if (a == 0.0f)
        return (uint16_t)sign;
    int e;
    frexpf(a, &e); /* a = m · 2^e, m in [0.5, 1) */
    int exp16 = e - 1 + 15;
    double q;
    if (exp16 <= 0) { /* subnormal: units of 2^-24 */
        q = nearbyint((double)a * 0x1p24);
        return (uint16_t)(sign | (uint32_t)q);
    }
    q = nearbyint(ldexp((double)a, 10 - (e - 1))); /* 1024..2048 */
    if (q >= 2048.0) {
        q /= 2;
        exp16++;
    }
    return (uint16_t)(sign | ((uint32_t)exp16 << 10) | ((uint32_t)q - 1024u));
}

typedef struct tensor_buf {
    ke_tensor t;
    void *data;
} tensor_buf;

/* A tensor of the given dtype holding `values` (rounded to f16 if asked); `values` is updated
 * to the stored values so references use exactly what the op reads. */
static tensor_buf make_tensor(ke_dtype dtype, float *values, int ndim, const int64_t *shape)
{
    tensor_buf b;
    memset(&b, 0, sizeof b);
    size_t n = 1;
    for (int d = 0; d < ndim; d++) {
        b.t.shape[d] = shape[d];
        n *= (size_t)shape[d];
    }
    b.t.ndim = ndim;
    b.t.dtype = dtype;
    if (dtype == KE_DTYPE_F16) {
        uint16_t *h = malloc(n * sizeof *h);
        assert_non_null(h);
        for (size_t i = 0; i < n; i++) {
            h[i] = f32_to_f16(values[i]);
            values[i] = ke_op_f16_to_f32(h[i]);
        }
        b.data = h;
    } else {
        float *f = malloc(n * sizeof *f);
        assert_non_null(f);
        memcpy(f, values, n * sizeof *f);
        b.data = f;
    }
    b.t.data = b.data;
    return b;
}

static double max_abs_diff(const float *a, const double *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m))
            m = d; /* NaN propagates */
    }
    return m;
}

/* ---- f16 ---------------------------------------------------------------------------------- */

static void test_f16_exhaustive(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
        float got = ke_op_f16_to_f32((uint16_t)h);
        if (exp == 31) {
            if (man == 0) {
                assert_true(isinf(got));
                assert_int_equal(signbit(got) != 0, sign);
            } else {
                assert_true(isnan(got));
                uint32_t bits;
                memcpy(&bits, &got, 4);
                assert_int_equal((bits >> 13) & 1023, man); /* payload kept */
            }
            continue;
        }
        double v = exp == 0 ? ldexp((double)man, -24) : ldexp((double)(1024 + man), (int)exp - 25);
        if (sign)
            v = -v;
        assert_true((double)got == v);
        assert_int_equal(signbit(got) != 0, sign); /* -0 too */
        if (exp != 0 || man != 0)
            assert_int_equal(f32_to_f16(got), h); /* the test's own encoder round-trips */
    }
}

/* ---- linear ------------------------------------------------------------------------------ */

static void check_linear(ke_dtype dtype, size_t rows, size_t in, size_t out, bool bias, int ndim)
{
    float *x = rand_floats(rows * in, 2.0);
    float *w = rand_floats(out * in, 1.0 / sqrt((double)in));
    float *bv = rand_floats(out, 0.5);
    int64_t shape2[2] = {(int64_t)out, (int64_t)in};
    /* 4-D: (out, in / 9, 3, 3) when in is a multiple of 9 - a conv weight */
    int64_t shape4[4] = {(int64_t)out, (int64_t)in / 9, 3, 3};
    tensor_buf W = make_tensor(dtype, w, ndim, ndim == 4 ? shape4 : shape2);
    int64_t bshape[1] = {(int64_t)out};
    tensor_buf B = make_tensor(dtype, bv, 1, bshape);
    float *y = malloc(rows * out * sizeof *y);
    float *scratch = malloc(ke_op_linear_scratch(in) * sizeof *scratch);
    double *ref = malloc(rows * out * sizeof *ref);
    assert_true(y && scratch && ref);
    ke_op_linear(x, rows, &W.t, bias ? &B.t : NULL, y, scratch);
    for (size_t r = 0; r < rows; r++)
        for (size_t o = 0; o < out; o++) {
            double s = bias ? (double)bv[o] : 0.0;
            for (size_t i = 0; i < in; i++)
                s += (double)x[r * in + i] * (double)w[o * in + i];
            ref[r * out + o] = s;
        }
    double d = max_abs_diff(y, ref, rows * out);
    assert_true(d < 2e-5 * sqrt((double)in));
    /* a row's result does not depend on the batch around it */
    if (rows > 1) {
        float *y1 = malloc(out * sizeof *y1);
        ke_op_linear(x + (rows - 1) * in, 1, &W.t, bias ? &B.t : NULL, y1, scratch);
        assert_memory_equal(y1, y + (rows - 1) * out, out * sizeof *y1);
        free(y1);
    }
    free(x);
    free(w);
    free(bv);
    free(W.data);
    free(B.data);
    free(y);
    free(scratch);
    free(ref);
}

static void test_linear(void **state)
{
    (void)state;
    const size_t rows[] = {1, 3, 257};
    const size_t shapes[][2] = {{1, 1}, {7, 5}, {37, 13}, {64, 48}, {100, 48}, {588, 32}};
    for (int dt = 0; dt < 2; dt++)
        for (size_t r = 0; r < 3; r++)
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                for (int bias = 0; bias < 2; bias++)
                    check_linear(dt ? KE_DTYPE_F16 : KE_DTYPE_F32, rows[r], shapes[s][0],
                                 shapes[s][1], bias, 2);
    check_linear(KE_DTYPE_F16, 3, 27, 5, false, 4); /* conv weight (5, 3, 3, 3) */
}

/* ---- layer norm ---------------------------------------------------------------------------- */

static void check_layer_norm(ke_dtype dtype, size_t rows, size_t dim, float eps, bool in_place)
{
    float *x = rand_floats(rows * dim, 3.0);
    for (size_t i = 0; i < dim; i++)
        x[i] += 100.0f; /* a large mean in row 0 */
    if (rows > 2)
        for (size_t i = 0; i < dim; i++)
            x[2 * dim + i] = 0.75f; /* a constant row: variance 0 */
    float *w = rand_floats(dim, 1.0), *b = rand_floats(dim, 1.0);
    int64_t shape[1] = {(int64_t)dim};
    tensor_buf W = make_tensor(dtype, w, 1, shape), B = make_tensor(dtype, b, 1, shape);
    double *ref = malloc(rows * dim * sizeof *ref);
    for (size_t r = 0; r < rows; r++) {
        double mean = 0, var = 0;
        for (size_t i = 0; i < dim; i++)
            mean += x[r * dim + i];
        mean /= (double)dim;
        for (size_t i = 0; i < dim; i++)
            var += (x[r * dim + i] - mean) * (x[r * dim + i] - mean);
        var /= (double)dim;
        for (size_t i = 0; i < dim; i++)
            ref[r * dim + i] = (x[r * dim + i] - mean) / sqrt(var + eps) * w[i] + b[i];
    }
    float *y = in_place ? x : malloc(rows * dim * sizeof *y);
    ke_op_layer_norm(x, rows, dim, &W.t, &B.t, eps, y);
    assert_true(max_abs_diff(y, ref, rows * dim) < 2e-5);
    if (rows > 2)
        for (size_t i = 0; i < dim; i++)
            assert_true(y[2 * dim + i] == b[i]);
    if (!in_place)
        free(y);
    free(x);
    free(w);
    free(b);
    free(W.data);
    free(B.data);
    free(ref);
}

static void test_layer_norm(void **state)
{
    (void)state;
    const size_t dims[] = {1, 7, 32, 48, 100, 2048};
    for (int dt = 0; dt < 2; dt++)
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
            check_layer_norm(dt ? KE_DTYPE_F16 : KE_DTYPE_F32, 3, dims[d], 1e-5f, false);
            check_layer_norm(dt ? KE_DTYPE_F16 : KE_DTYPE_F32, 1, dims[d], 1e-5f, true);
        }
    check_layer_norm(KE_DTYPE_F32, 257, 33, 1e-6f, true);
}

/* ---- activations, L2 norm ------------------------------------------------------------------ */

static void test_activations(void **state)
{
    (void)state;
    const size_t n = 2001;
    float *x = rand_floats(n, 8.0);
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 30.0f;
    x[3] = -30.0f;
    const ke_activation acts[] = {KE_ACT_GELU, KE_ACT_QUICK_GELU, KE_ACT_GELU_TANH, KE_ACT_RELU};
    for (size_t a = 0; a < 4; a++) {
        float *y = malloc(n * sizeof *y);
        memcpy(y, x, n * sizeof *y);
        ke_op_activation(y, n, acts[a]);
        for (size_t i = 0; i < n; i++) {
            double v = x[i], r;
            switch (acts[a]) {
            case KE_ACT_GELU: r = 0.5 * v * (1.0 + erf(v / sqrt(2.0))); break;
            case KE_ACT_QUICK_GELU: r = v / (1.0 + exp(-1.702 * v)); break;
            case KE_ACT_GELU_TANH:
                r = 0.5 * v *
                    (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (v + 0.044715 * v * v * v)));
                break;
            default: r = v > 0 ? v : 0;
            }
            assert_true(fabs((double)y[i] - r) <= 2e-6 * (1.0 + fabs(r)));
        }
        free(y);
    }
    free(x);
}

static void test_l2_normalize(void **state)
{
    (void)state;
    const size_t rows = 3, dim = 33;
    float *x = rand_floats(rows * dim, 5.0);
    for (size_t i = 0; i < dim; i++)
        x[dim + i] = 0.0f; /* a zero row stays zero (eps 1e-12, not NaN) */
    double ref[3 * 33];
    for (size_t r = 0; r < rows; r++) {
        double ss = 0;
        for (size_t i = 0; i < dim; i++)
            ss += (double)x[r * dim + i] * x[r * dim + i];
        double nrm = fmax(sqrt(ss), 1e-12);
        for (size_t i = 0; i < dim; i++)
            ref[r * dim + i] = x[r * dim + i] / nrm;
    }
    ke_op_l2_normalize(x, rows, dim, 1e-12f);
    assert_true(max_abs_diff(x, ref, rows * dim) < 1e-6);
    for (size_t i = 0; i < dim; i++)
        assert_true(x[dim + i] == 0.0f);
    free(x);
}

/* ---- attention --------------------------------------------------------------------------- */

static void check_attention(int n_q, int n_kv, int heads, int head_dim, int causal_offset)
{
    size_t w = (size_t)heads * (size_t)head_dim;
    size_t qs = w + 3, kvs = w + 5, os = w + 1; /* strides wider than the heads */
    int n_keys_alloc = n_kv + 4;                /* keys beyond n_kv: a slot's unused capacity */
    float *q = rand_floats((size_t)n_q * qs, 2.0);
    float *k = rand_floats((size_t)n_keys_alloc * kvs, 2.0);
    float *v = rand_floats((size_t)n_keys_alloc * kvs, 2.0);
    /* poison the unused capacity: a query must never read past n_kv */
    for (int j = n_kv; j < n_keys_alloc; j++)
        for (size_t d = 0; d < kvs; d++)
            k[(size_t)j * kvs + d] = v[(size_t)j * kvs + d] = NAN;
    float scale = (float)pow(head_dim, -0.5);
    float *out = malloc((size_t)n_q * os * sizeof *out);
    float *scratch = malloc((size_t)n_keys_alloc * sizeof *scratch);
    double *ref = malloc((size_t)n_q * w * sizeof *ref);
    double *p = malloc((size_t)n_kv * sizeof *p);
    for (int i = 0; i < n_q; i++) {
        int nk = n_kv;
        if (causal_offset >= 0 && causal_offset + i + 1 < nk)
            nk = causal_offset + i + 1;
        for (int h = 0; h < heads; h++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < nk; j++) {
                double s = 0;
                for (int d = 0; d < head_dim; d++)
                    s += (double)q[(size_t)i * qs + (size_t)(h * head_dim + d)] *
                         k[(size_t)j * kvs + (size_t)(h * head_dim + d)];
                p[j] = s * scale;
                mx = fmax(mx, p[j]);
            }
            for (int j = 0; j < nk; j++)
                sum += (p[j] = exp(p[j] - mx));
            for (int d = 0; d < head_dim; d++) {
                double o = 0;
                for (int j = 0; j < nk; j++)
                    o += p[j] / sum * v[(size_t)j * kvs + (size_t)(h * head_dim + d)];
                ref[(size_t)i * w + (size_t)(h * head_dim + d)] = o;
            }
        }
    }
    ke_op_attention(q, qs, k, v, kvs, n_q, n_kv, heads, head_dim, scale, causal_offset, out, os,
                    scratch);
    double m = 0;
    for (int i = 0; i < n_q; i++)
        for (size_t c = 0; c < w; c++) {
            double d = fabs((double)out[(size_t)i * os + c] - ref[(size_t)i * w + c]);
            if (!(d <= m))
                m = d;
        }
    assert_true(m < 1e-5);
    free(q);
    free(k);
    free(v);
    free(out);
    free(scratch);
    free(ref);
    free(p);
}

static void test_attention(void **state)
{
    (void)state;
    const int hd[] = {8, 16, 64};
    for (int a = 0; a < 3; a++) {
        check_attention(1, 1, 1, hd[a], -1);
        check_attention(257, 257, 4, hd[a], -1); /* vision: no mask */
        check_attention(64, 321, 3, hd[a], -1);  /* resampler: 64 queries over 257 + 64 */
        check_attention(257, 257, 3, hd[a], 0);  /* prefill, causal */
        check_attention(5, 12, 3, hd[a], 7);     /* chunk after 7 cached tokens */
        check_attention(1, 258, 3, hd[a], 257);  /* one decode step */
        check_attention(3, 3, 2, hd[a], 0);
    }
}

/* ---- positions, embeddings, patches --------------------------------------------------------- */

static void test_sinusoid(void **state)
{
    (void)state;
    const int dims[] = {4, 48, 49, 2048};
    for (size_t di = 0; di < 4; di++) {
        int dim = dims[di], half = dim / 2;
        float *freq = malloc((size_t)half * sizeof *freq);
        float *row = malloc((size_t)dim * sizeof *row);
        ke_op_sinusoid_freqs(dim, freq);
        float c = (float)(-(log(10000.0) / (half - 1)));
        for (int i = 0; i < half; i++) {
            double want = exp((double)((float)i * c));
            assert_true(fabs(freq[i] - want) <= 2e-7 * want); /* ≤ ~1 ulp of expf */
        }
        assert_true(freq[0] == 1.0f);
        const int64_t positions[] = {0, 1, 2, 3, 70, 2049, 5000};
        for (size_t pi = 0; pi < sizeof positions / sizeof positions[0]; pi++) {
            ke_op_sinusoid_position(positions[pi], dim, 1, freq, row);
            for (int i = 0; i < dim; i++) {
                double want = 0.0;
                if (positions[pi] != 1 && i < 2 * half) {
                    double ang = (double)((float)positions[pi] * freq[i % half]);
                    want = i < half ? sin(ang) : cos(ang);
                }
                assert_true(fabs(row[i] - want) < 2e-7);
            }
        }
        free(freq);
        free(row);
    }
    /* values printed by transformers 5.17 (Kosmos2TextSinusoidalPositionalEmbedding
     * .get_embedding(2050, 2048, 1)): row 2 col 0 = sin(2), row 2049 col 1 and col 1024 */
    float freq[1024], row[2048];
    ke_op_sinusoid_freqs(2048, freq);
    ke_op_sinusoid_position(2, 2048, 1, freq, row);
    assert_true(fabs(row[0] - 0.9092974f) < 1e-7);
    assert_true(fabs(row[1024] - (-0.41614684f)) < 1e-7);
}

static void test_text_embed(void **state)
{
    (void)state;
    const int vocab = 11, dim = 6, half = 3;
    float *table = rand_floats((size_t)vocab * dim, 1.0);
    int64_t shape[2] = {vocab, dim};
    tensor_buf E = make_tensor(KE_DTYPE_F16, table, 2, shape);
    const int32_t ids[5] = {1, 0, 4, 5, 9};
    const uint8_t mask[5] = {0, 0, 1, 1, 0};
    const int32_t pos[5] = {1, 2, 3, 4, 5};
    float *img = rand_floats(2 * (size_t)dim, 1.0);
    float freq[3], out[5 * 6];
    ke_op_sinusoid_freqs(dim, freq);
    const float scale = (float)sqrt(6.0);
    size_t used = ke_op_text_embed(&E.t, ids, 5, mask, img, scale, pos, 1, freq, out);
    assert_int_equal(used, 2);
    int img_row = 0;
    for (int t = 0; t < 5; t++) {
        const float *src = mask[t] ? img + (size_t)(img_row++) * dim : table + (size_t)ids[t] * dim;
        for (int i = 0; i < dim; i++) {
            float want = src[i] * scale; /* the image row is scaled too */
            if (pos[t] != 1) {
                float a = (float)pos[t] * freq[i % half];
                want += i < half ? sinf(a) : cosf(a);
            }
            assert_true(out[t * dim + i] == want);
        }
    }
    free(table);
    free(E.data);
    free(img);
}

static void test_unfold_patches_as_conv(void **state)
{
    (void)state;
    const int C = 3, S = 12, P = 4, G = 3, OUT = 5;
    float *pix = rand_floats((size_t)C * S * S, 1.0);
    float *w = rand_floats((size_t)OUT * C * P * P, 0.3);
    int64_t shape[4] = {OUT, C, P, P};
    tensor_buf W = make_tensor(KE_DTYPE_F32, w, 4, shape);
    float *patches = malloc((size_t)G * G * C * P * P * sizeof *patches);
    float *y = malloc((size_t)G * G * OUT * sizeof *y);
    float *scratch = malloc(ke_op_linear_scratch((size_t)C * P * P) * sizeof *scratch);
    ke_op_unfold_patches(pix, C, S, P, patches);
    ke_op_linear(patches, (size_t)G * G, &W.t, NULL, y, scratch);
    for (int gy = 0; gy < G; gy++)
        for (int gx = 0; gx < G; gx++)
            for (int o = 0; o < OUT; o++) {
                double s = 0; /* Conv2d(stride = kernel = P, no bias) at output (gy, gx) */
                for (int c = 0; c < C; c++)
                    for (int ky = 0; ky < P; ky++)
                        for (int kx = 0; kx < P; kx++)
                            s += (double)w[((o * C + c) * P + ky) * P + kx] *
                                 pix[(c * S + gy * P + ky) * S + gx * P + kx];
                assert_true(fabs(y[(gy * G + gx) * OUT + o] - s) < 1e-5);
            }
    free(pix);
    free(w);
    free(W.data);
    free(patches);
    free(y);
    free(scratch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_exhaustive),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_layer_norm),
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_l2_normalize),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_sinusoid),
        cmocka_unit_test(test_text_embed),
        cmocka_unit_test(test_unfold_patches_as_conv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
