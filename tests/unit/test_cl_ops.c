/* Unit tests for worker/engine/backend_cl_ops (the OpenCL kernels of the forward pass): every
 * kernel against its plain-C reference op of ref_ops.h (or, for selection, generate.c's host
 * logic written out here) on PoCL, on random data and edge shapes: head_dim 8, 16 and 64, odd
 * widths, 1 and 3 rows or images, sequences of 1 and 257 tokens, f16 and f32 weights.
 *
 * Needs an OpenCL device (KOSMOS_TEST_DEVICE=<spec>, else the default rule); skips without one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cl_ops.h"
#include "kc_context.h"
#include "kc_device.h"
#include "kc_error.h"
#include "model.h"
#include "ref_ops.h"

typedef struct fixture {
    kc_device_list *list;
    kc_context *ctx;         /* NULL: no device, tests skip */
    ke_cl_ops *ops[2];       /* [ke_dtype] */
} fixture;

static fixture fx;

#define REQUIRE_DEVICE()                                                                           \
    do {                                                                                           \
        if (!fx.ctx) {                                                                             \
            print_message("no OpenCL device: skipped\n");                                         \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

static int setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    if (kc_device_list_new(&fx.list) != KS_OK) {
        fprintf(stderr, "kc_device_list_new: %s\n", ks_error_message());
        return -1;
    }
    const char *spec = getenv("KOSMOS_TEST_DEVICE");
    size_t index = 0;
    if (spec && *spec) {
        if (kc_device_list_select(fx.list, spec, &index) != KS_OK) {
            fprintf(stderr, "KOSMOS_TEST_DEVICE: %s\n", ks_error_message());
            return -1;
        }
    } else if (kc_device_list_default(fx.list) >= 0) {
        index = (size_t)kc_device_list_default(fx.list);
    } else {
        return 0;
    }
    const kc_device_info *dev = kc_device_list_get(fx.list, index);
    print_message("device under test: %zu '%s' (%s)\n", dev->index, dev->name, dev->platform_name);
    if (kc_context_new(dev, NULL, &fx.ctx) != KS_OK) {
        fprintf(stderr, "kc_context_new: %s\n", ks_error_message());
        return -1;
    }
    for (int d = 0; d < 2; d++) {
        fx.ops[d] = ke_cl_ops_new(fx.ctx, (ke_dtype)d);
        if (!fx.ops[d]) {
            fprintf(stderr, "ke_cl_ops_new: %s\n", ks_error_message());
            return -1;
        }
    }
    kc_build_stats bs = kc_context_build_stats(fx.ctx);
    print_message("programs: %u built, %u from the cache, %.2f s; work-group %zu\n",
                  bs.cache_misses, bs.cache_hits, bs.seconds, ke_cl_ops_wg_size(fx.ops[0]));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ke_cl_ops_destroy(&fx.ops[0]);
    ke_cl_ops_destroy(&fx.ops[1]);
    kc_context_destroy(&fx.ctx);
    kc_device_list_destroy(&fx.list);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1p-52 - 1.0;
}

static float *rand_floats(size_t n, double scale)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(frand() * scale);
    return x;
}

/* A weight tensor of `dtype` holding `values` (rounded to f16 in place when asked, so the
 * reference reads exactly what the kernel reads), and its device copy. */
typedef struct weight {
    ke_tensor t;
    void *host;
    cl_mem mem;
} weight;

static weight make_weight(ke_dtype dtype, float *values, int ndim, const int64_t *shape)
{
    weight w;
    memset(&w, 0, sizeof w);
    size_t n = 1;
    for (int d = 0; d < ndim; d++) {
        w.t.shape[d] = shape[d];
        n *= (size_t)shape[d];
    }
    w.t.ndim = ndim;
    w.t.dtype = dtype;
    size_t bytes = n * (dtype == KE_DTYPE_F16 ? 2 : 4);
    w.host = malloc(bytes ? bytes : 1);
    assert_non_null(w.host);
    if (dtype == KE_DTYPE_F16) {
        uint16_t *h = w.host;
        for (size_t i = 0; i < n; i++) {
            h[i] = ke_f32_to_f16(values[i]);
            values[i] = ke_f16_to_f32(h[i]);
        }
    } else {
        memcpy(w.host, values, bytes);
    }
    w.t.data = w.host;
    assert_int_equal(kc_context_buffer(fx.ctx, CL_MEM_READ_ONLY, bytes, w.host, &w.mem), KS_OK);
    return w;
}

static void free_weight(weight *w)
{
    kc_context_buffer_free(fx.ctx, &w->mem);
    free(w->host);
}

static cl_mem to_device(const void *data, size_t bytes)
{
    cl_mem m = NULL;
    if (kc_context_buffer(fx.ctx, CL_MEM_READ_WRITE, bytes ? bytes : 4, data, &m) != KS_OK)
        fail_msg("buffer of %zu bytes: %s", bytes, ks_error_message());
    return m;
}

static void from_device(cl_mem m, void *out, size_t bytes)
{
    cl_int err = clEnqueueReadBuffer(kc_context_queue(fx.ctx), m, CL_TRUE, 0, bytes, out, 0, NULL,
                                     NULL);
    if (err != CL_SUCCESS)
        fail_msg("clEnqueueReadBuffer: %s", kc_error_name(err));
}

static void check_ok(ks_status st)
{
    if (st != KS_OK)
        fail_msg("%s", ks_error_message());
}

/* max |a - b| / max(1, |b|) */
static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]) / fmax(1.0, fabs((double)b[i]));
        if (!(d <= m))
            m = d;
    }
    return m;
}

#define EXPECT_CLOSE(what, got, want, n, tol)                                                      \
    do {                                                                                           \
        double d_ = max_diff((got), (want), (n));                                                  \
        print_message("  %-40s max diff %.3g\n", (what), d_);                                     \
        if (!(d_ <= (tol)))                                                                        \
            fail_msg("%s: max diff %.3g > %.3g", (what), d_, (double)(tol));                       \
    } while (0)

/* ---- layer_norm --------------------------------------------------------------------------- */

static void test_layer_norm(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const size_t rows_c[] = {1, 3, 257};
    const size_t dims[] = {1, 7, 48, 100, 1025};
    for (int dt = 0; dt < 2; dt++)
        for (size_t r = 0; r < 3; r++)
            for (size_t d = 0; d < 5; d++) {
                size_t rows = rows_c[r], dim = dims[d];
                float *x = rand_floats(rows * dim, 3.0);
                for (size_t i = 0; i < rows * dim; i++)
                    x[i] += 0.5f; /* a mean to take off */
                float *wv = rand_floats(dim, 1.0), *bv = rand_floats(dim, 0.5);
                int64_t shape[1] = {(int64_t)dim};
                weight w = make_weight((ke_dtype)dt, wv, 1, shape);
                weight b = make_weight((ke_dtype)dt, bv, 1, shape);
                float *want = malloc(rows * dim * sizeof(float));
                float *got = malloc(rows * dim * sizeof(float));
                ke_op_layer_norm(x, rows, dim, &w.t, &b.t, 1e-5f, want);
                cl_mem mx = to_device(x, rows * dim * 4);
                check_ok(ke_cl_layer_norm(fx.ops[dt], mx, rows, dim, w.mem, b.mem, 1e-5f, mx));
                from_device(mx, got, rows * dim * 4);
                char what[64];
                snprintf(what, sizeof what, "layer_norm %s rows %zu dim %zu", dt ? "f16" : "f32",
                         rows, dim);
                EXPECT_CLOSE(what, got, want, rows * dim, 2e-5);
                kc_context_buffer_free(fx.ctx, &mx);
                free_weight(&w);
                free_weight(&b);
                free(x);
                free(wv);
                free(bv);
                free(want);
                free(got);
            }
}

/* ---- activation, l2 ----------------------------------------------------------------------- */

static void test_activation(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const size_t ns[] = {1, 1001, 65537};
    const ke_activation acts[] = {KE_ACT_GELU, KE_ACT_QUICK_GELU, KE_ACT_GELU_TANH, KE_ACT_RELU};
    for (size_t a = 0; a < 4; a++)
        for (size_t k = 0; k < 3; k++) {
            size_t n = ns[k];
            float *x = rand_floats(n, 8.0);
            x[0] = 0.0f;
            float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
            memcpy(want, x, n * sizeof(float));
            ke_op_activation(want, n, acts[a]);
            cl_mem m = to_device(x, n * 4);
            check_ok(ke_cl_activation(fx.ops[1], m, n, acts[a]));
            from_device(m, got, n * 4);
            char what[64];
            snprintf(what, sizeof what, "activation %d n %zu", (int)acts[a], n);
            EXPECT_CLOSE(what, got, want, n, 2e-6);
            kc_context_buffer_free(fx.ctx, &m);
            free(x);
            free(want);
            free(got);
        }
}

static void test_l2_normalize(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const size_t rows_c[] = {1, 3, 257};
    const size_t dims[] = {1, 7, 32, 1025};
    for (size_t r = 0; r < 3; r++)
        for (size_t d = 0; d < 4; d++) {
            size_t rows = rows_c[r], dim = dims[d], n = rows * dim;
            float *x = rand_floats(n, 2.0);
            for (size_t i = 0; i < dim; i++)
                x[i] = 0.0f; /* a zero row: divided by eps, stays zero */
            float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
            memcpy(want, x, n * sizeof(float));
            ke_op_l2_normalize(want, rows, dim, 1e-12f);
            cl_mem m = to_device(x, n * 4);
            check_ok(ke_cl_l2_normalize(fx.ops[1], m, rows, dim, 1e-12f));
            from_device(m, got, n * 4);
            char what[64];
            snprintf(what, sizeof what, "l2_normalize rows %zu dim %zu", rows, dim);
            EXPECT_CLOSE(what, got, want, n, 2e-6);
            kc_context_buffer_free(fx.ctx, &m);
            free(x);
            free(want);
            free(got);
        }
}

/* ---- vision input ------------------------------------------------------------------------- */

static void test_unfold_and_vision_embed(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const int cases[][4] = {{1, 3, 28, 14}, {3, 3, 28, 14}, {3, 2, 15, 5}, {1, 1, 7, 7}};
    for (size_t c = 0; c < 4; c++) {
        int n = cases[c][0], ch = cases[c][1], size = cases[c][2], patch = cases[c][3];
        size_t grid = (size_t)(size / patch), np = grid * grid;
        size_t pw = (size_t)ch * (size_t)patch * (size_t)patch;
        size_t pix = (size_t)ch * (size_t)size * (size_t)size;
        float *pixels = rand_floats((size_t)n * pix, 2.0);
        float *want = malloc((size_t)n * np * pw * sizeof(float));
        float *got = malloc((size_t)n * np * pw * sizeof(float));
        for (int i = 0; i < n; i++)
            ke_op_unfold_patches(pixels + (size_t)i * pix, ch, size, patch,
                                 want + (size_t)i * np * pw);
        cl_mem mp = to_device(pixels, (size_t)n * pix * 4);
        cl_mem mo = to_device(NULL, (size_t)n * np * pw * 4);
        check_ok(ke_cl_unfold_patches(fx.ops[1], mp, n, ch, size, patch, mo));
        from_device(mo, got, (size_t)n * np * pw * 4);
        assert_memory_equal(got, want, (size_t)n * np * pw * sizeof(float));

        /* class token + positions over (n, seq, hid), hid odd */
        for (int dt = 0; dt < 2; dt++) {
            size_t hid = 7, seq = np + 1;
            float *pout = rand_floats((size_t)n * np * hid, 1.0);
            float *cls = rand_floats(hid, 1.0), *pos = rand_floats(seq * hid, 1.0);
            int64_t s1[1] = {(int64_t)hid}, s2[2] = {(int64_t)seq, (int64_t)hid};
            weight wc = make_weight((ke_dtype)dt, cls, 1, s1);
            weight wp = make_weight((ke_dtype)dt, pos, 2, s2);
            float *x_want = malloc((size_t)n * seq * hid * sizeof(float));
            float *x_got = malloc((size_t)n * seq * hid * sizeof(float));
            for (int i = 0; i < n; i++)
                for (size_t t = 0; t < seq; t++)
                    for (size_t k = 0; k < hid; k++) {
                        float v = t == 0 ? cls[k] : pout[((size_t)i * np + t - 1) * hid + k];
                        x_want[((size_t)i * seq + t) * hid + k] = v + pos[t * hid + k];
                    }
            cl_mem mpo = to_device(pout, (size_t)n * np * hid * 4);
            cl_mem mx = to_device(NULL, (size_t)n * seq * hid * 4);
            check_ok(ke_cl_vision_embed(fx.ops[dt], mpo, wc.mem, wp.mem, n, (int)seq, (int)hid,
                                        mx));
            from_device(mx, x_got, (size_t)n * seq * hid * 4);
            assert_memory_equal(x_got, x_want, (size_t)n * seq * hid * sizeof(float));
            kc_context_buffer_free(fx.ctx, &mpo);
            kc_context_buffer_free(fx.ctx, &mx);
            free_weight(&wc);
            free_weight(&wp);
            free(pout);
            free(cls);
            free(pos);
            free(x_want);
            free(x_got);
        }
        kc_context_buffer_free(fx.ctx, &mp);
        kc_context_buffer_free(fx.ctx, &mo);
        free(pixels);
        free(want);
        free(got);
    }
}

/* ---- text input --------------------------------------------------------------------------- */

static void test_text_embed(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const int dims[] = {48, 7, 2048};
    for (int dt = 0; dt < 2; dt++)
        for (size_t d = 0; d < 3; d++) {
            int dim = dims[d], vocab = 50, pad = 1;
            size_t n = 9;
            float *table = rand_floats((size_t)vocab * (size_t)dim, 1.0);
            int64_t shape[2] = {vocab, dim};
            weight w = make_weight((ke_dtype)dt, table, 2, shape);
            int32_t ids[9] = {0, 5, 1, 49, 7, 7, 3, 2, 1};
            int32_t pos[9] = {2, 3, 1, 4, 5, 6, 2047, 2100, 1}; /* pad positions, large ones */
            uint8_t mask[9] = {0, 1, 0, 1, 1, 0, 0, 0, 1};
            float *img = rand_floats(4 * (size_t)dim, 1.0);
            float *freq = malloc((size_t)(dim / 2) * sizeof(float));
            ke_op_sinusoid_freqs(dim, freq);
            float scale = sqrtf((float)dim);
            float *want = malloc(n * (size_t)dim * sizeof(float));
            float *got = malloc(n * (size_t)dim * sizeof(float));
            size_t used = ke_op_text_embed(&w.t, ids, n, mask, img, scale, pos, pad, freq, want);
            assert_int_equal(used, 4);
            cl_int4 tok[9];
            int row = 0;
            for (size_t t = 0; t < n; t++)
                tok[t] = (cl_int4){{ids[t], pos[t], mask[t] ? row++ : -1, 0}};
            cl_mem mt = to_device(tok, sizeof tok);
            cl_mem mi = to_device(img, 4 * (size_t)dim * 4);
            cl_mem mf = to_device(freq, (size_t)(dim / 2) * 4);
            cl_mem mo = to_device(NULL, n * (size_t)dim * 4);
            check_ok(ke_cl_text_embed(fx.ops[dt], w.mem, mt, n, mi, mf, scale, pad, dim, mo));
            from_device(mo, got, n * (size_t)dim * 4);
            char what[64];
            snprintf(what, sizeof what, "text_embed %s dim %d", dt ? "f16" : "f32", dim);
            EXPECT_CLOSE(what, got, want, n * (size_t)dim, 2e-6);
            kc_context_buffer_free(fx.ctx, &mt);
            kc_context_buffer_free(fx.ctx, &mi);
            kc_context_buffer_free(fx.ctx, &mf);
            kc_context_buffer_free(fx.ctx, &mo);
            free_weight(&w);
            free(table);
            free(img);
            free(freq);
            free(want);
            free(got);
        }
}

/* ---- kv_store, gather_rows ---------------------------------------------------------------- */

static void test_kv_store_and_gather(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const int width = 13, ld = 3 * width;
    const size_t n = 5, cache_rows = 20;
    float *qkv = rand_floats(n * (size_t)ld, 1.0);
    cl_int dest[5] = {0, 1, 7, 19, 10};
    float *kc = calloc(cache_rows * (size_t)width, sizeof(float));
    float *vc = calloc(cache_rows * (size_t)width, sizeof(float));
    cl_mem mq = to_device(qkv, n * (size_t)ld * 4);
    cl_mem md = to_device(dest, sizeof dest);
    cl_mem mk = to_device(kc, cache_rows * (size_t)width * 4);
    cl_mem mv = to_device(vc, cache_rows * (size_t)width * 4);
    check_ok(ke_cl_kv_store(fx.ops[1], mq, ld, width, 2 * width, mk, mv, md, width, n));
    for (size_t t = 0; t < n; t++) {
        memcpy(kc + (size_t)dest[t] * (size_t)width, qkv + t * (size_t)ld + width,
               (size_t)width * 4);
        memcpy(vc + (size_t)dest[t] * (size_t)width, qkv + t * (size_t)ld + 2 * width,
               (size_t)width * 4);
    }
    float *got = malloc(cache_rows * (size_t)width * sizeof(float));
    from_device(mk, got, cache_rows * (size_t)width * 4);
    assert_memory_equal(got, kc, cache_rows * (size_t)width * 4);
    from_device(mv, got, cache_rows * (size_t)width * 4);
    assert_memory_equal(got, vc, cache_rows * (size_t)width * 4);

    cl_int idx[3] = {19, 0, 7};
    cl_mem mi = to_device(idx, sizeof idx);
    cl_mem mo = to_device(NULL, 3 * (size_t)width * 4);
    check_ok(ke_cl_gather_rows(fx.ops[1], mk, mi, 3, width, mo));
    from_device(mo, got, 3 * (size_t)width * 4);
    for (size_t r = 0; r < 3; r++)
        assert_memory_equal(got + r * (size_t)width, kc + (size_t)idx[r] * (size_t)width,
                            (size_t)width * 4);
    cl_mem *all[] = {&mq, &md, &mk, &mv, &mi, &mo};
    for (size_t i = 0; i < 6; i++)
        kc_context_buffer_free(fx.ctx, all[i]);
    free(qkv);
    free(kc);
    free(vc);
    free(got);
}

/* ---- attention ---------------------------------------------------------------------------- */

/* One sequence of an attention launch: n_q queries over keys [0, n_kv) of its own K/V block,
 * causal_offset as ke_op_attention's. */
typedef struct att_seq {
    int n_q, n_kv, causal_offset;
} att_seq;

/* Runs several sequences in one launch, Q/K/V fused in one buffer (stride 3·width) like the
 * vision pass, or K/V in a separate cache like the decoder, and compares each with the
 * reference. */
static void run_attention(const char *name, const att_seq *seqs, int n_seqs, int heads,
                          int head_dim, bool fused)
{
    size_t width = (size_t)heads * (size_t)head_dim;
    size_t total_q = 0, total_kv = 0;
    for (int s = 0; s < n_seqs; s++) {
        total_q += (size_t)seqs[s].n_q;
        total_kv += (size_t)seqs[s].n_kv;
    }
    float scale = (float)pow((double)head_dim, -0.5);
    /* queries: (total_q, q_stride); keys/values: (total_kv, kv_stride) */
    size_t q_stride = fused ? 3 * width : width + 3; /* padded rows */
    size_t kv_stride = fused ? 3 * width : width;
    size_t kv_rows = fused ? total_q : total_kv;
    if (fused)
        for (int s = 0; s < n_seqs; s++)
            assert_int_equal(seqs[s].n_q, seqs[s].n_kv);
    float *q = rand_floats(total_q * q_stride, 2.0);
    float *kvbuf = fused ? q : rand_floats(kv_rows * 2 * width, 2.0);
    const float *k = fused ? q + width : kvbuf;
    const float *v = fused ? q + 2 * width : kvbuf + kv_rows * width;
    float *want = calloc(total_q * width, sizeof(float));
    float *got = malloc(total_q * width * sizeof(float));
    float *scratch = malloc((total_kv + 1) * sizeof(float));
    cl_int4 *rows = malloc(total_q * sizeof *rows);
    size_t qr = 0, kr = 0;
    for (int s = 0; s < n_seqs; s++) {
        ke_op_attention(q + qr * q_stride, q_stride, k + kr * kv_stride, v + kr * kv_stride,
                        kv_stride, seqs[s].n_q, seqs[s].n_kv, heads, head_dim, scale,
                        seqs[s].causal_offset, want + qr * width, width, scratch);
        for (int i = 0; i < seqs[s].n_q; i++) {
            int nk = seqs[s].n_kv;
            if (seqs[s].causal_offset >= 0 && seqs[s].causal_offset + i + 1 < nk)
                nk = seqs[s].causal_offset + i + 1;
            rows[qr + (size_t)i] = (cl_int4){{(cl_int)(qr + (size_t)i), (cl_int)kr, nk, 0}};
        }
        qr += (size_t)seqs[s].n_q;
        kr += (size_t)seqs[s].n_kv;
    }
    cl_mem mq = to_device(q, total_q * q_stride * 4);
    cl_mem mkv = fused ? NULL : to_device(kvbuf, kv_rows * 2 * width * 4);
    cl_mem mr = to_device(rows, total_q * sizeof *rows);
    cl_mem mo = to_device(NULL, total_q * width * 4);
    ke_cl_attention_args a = {.q = mq, .q_off = 0, .q_stride = q_stride,
                              .k = fused ? mq : mkv, .v = fused ? mq : mkv,
                              .k_off = fused ? width : 0,
                              .v_off = fused ? 2 * width : kv_rows * width,
                              .kv_stride = kv_stride, .rows = mr, .n_rows = total_q,
                              .heads = heads, .head_dim = head_dim, .scale = scale, .out = mo,
                              .out_stride = width};
    check_ok(ke_cl_attention(fx.ops[1], &a));
    from_device(mo, got, total_q * width * 4);
    EXPECT_CLOSE(name, got, want, total_q * width, 1e-5);
    kc_context_buffer_free(fx.ctx, &mq);
    kc_context_buffer_free(fx.ctx, &mkv);
    kc_context_buffer_free(fx.ctx, &mr);
    kc_context_buffer_free(fx.ctx, &mo);
    free(q);
    if (!fused)
        free(kvbuf);
    free(want);
    free(got);
    free(scratch);
    free(rows);
}

static void test_attention(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    /* vision encoder: 257 tokens, head_dim 8, all keys; 3 images in one launch */
    att_seq enc1[] = {{257, 257, -1}};
    run_attention("encoder 257 hd 8", enc1, 1, 4, 8, true);
    att_seq enc3[] = {{17, 17, -1}, {17, 17, -1}, {17, 17, -1}};
    run_attention("encoder 3 x 17 hd 16", enc3, 3, 3, 16, true);
    att_seq one[] = {{1, 1, -1}};
    run_attention("encoder 1 token", one, 1, 2, 8, true);
    /* resampler: 64 latent queries over 257 + 64 rows, causal from 0 (5.17) or full */
    att_seq res[] = {{64, 321, 0}, {64, 321, 0}};
    run_attention("resampler causal hd 16", res, 2, 3, 16, false);
    att_seq resf[] = {{64, 321, -1}};
    run_attention("resampler full hd 64", resf, 1, 2, 64, false);
    /* decoder: prefill of 257 and of 1, decode after 5 and after 300 cached, in one launch */
    att_seq dec[] = {{257, 257, 0}, {1, 1, 0}, {1, 6, 5}, {1, 301, 300}, {7, 12, 5}};
    run_attention("decoder mixed hd 16", dec, 5, 3, 16, false);
    run_attention("decoder mixed hd 8", dec, 5, 4, 8, false);
    att_seq dec64[] = {{3, 70, 67}, {1, 129, 128}};
    run_attention("decoder hd 64", dec64, 2, 2, 64, false);
    att_seq odd[] = {{5, 9, 4}};
    run_attention("decoder hd 5", odd, 1, 3, 5, false);
}

/* ---- greedy selection --------------------------------------------------------------------- */

/* generate.c's host path: no_repeat_ngram ban, </s> mask, argmax (lowest id on ties). */
static int host_select(const float *logits, int vocab, const int32_t *ids, size_t len, int n,
                       bool ban_eos, int eos)
{
    float *s = malloc((size_t)vocab * sizeof(float));
    memcpy(s, logits, (size_t)vocab * sizeof(float));
    if (n > 0 && len >= (size_t)n) {
        size_t m = (size_t)n - 1;
        for (size_t i = 0; i + (size_t)n <= len; i++)
            if (m == 0 || memcmp(ids + i, ids + len - m, m * sizeof *ids) == 0)
                s[ids[i + m]] = -INFINITY;
    }
    if (ban_eos)
        s[eos] = -INFINITY;
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (s[i] > s[best])
            best = i;
    free(s);
    return best;
}

static void test_select_greedy(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const int vocab = 1001, n_sel = 5, eos = 2;
    float *logits = rand_floats((size_t)n_sel * (size_t)vocab, 4.0);
    /* ties (the lowest id wins), and rows whose best tokens get banned */
    logits[0 * vocab + 500] = 10.0f;
    logits[0 * vocab + 20] = 10.0f;
    logits[1 * vocab + 7] = 9.0f;
    logits[1 * vocab + 8] = 8.5f;
    logits[2 * vocab + eos] = 12.0f;
    logits[3 * vocab + 4] = 11.0f;
    for (int i = 0; i < vocab; i++)
        logits[4 * vocab + i] = -INFINITY; /* everything masked: id 0 as on the host */
    int32_t h0[] = {1, 2, 3, 4};
    int32_t h1[] = {5, 6, 7, 1, 5, 6, 8, 3, 5, 6};       /* 3-gram (5, 6) -> 7 and 8 banned */
    int32_t h2[] = {9, 9, 9};
    int32_t h3[] = {4, 3, 2, 1};                         /* 1-gram: every present id banned */
    int32_t h4[] = {0};
    struct {
        const int32_t *ids;
        size_t len;
        int n;
        bool ban_eos;
        int row;
    } rows[5] = {{h0, 4, 0, false, 0}, {h1, 10, 3, false, 1}, {h2, 3, 2, true, 2},
                 {h3, 4, 1, false, 3}, {h4, 1, 0, false, 4}};
    cl_int info[5 * 5];
    int32_t hist[64];
    size_t off = 0, max_len = 0;
    for (int i = 0; i < n_sel; i++) {
        info[i * 5 + 0] = rows[i].row;
        info[i * 5 + 1] = (cl_int)off;
        info[i * 5 + 2] = (cl_int)rows[i].len;
        info[i * 5 + 3] = rows[i].n;
        info[i * 5 + 4] = rows[i].ban_eos;
        memcpy(hist + off, rows[i].ids, rows[i].len * sizeof(int32_t));
        off += rows[i].len;
        if (rows[i].len > max_len)
            max_len = rows[i].len;
    }
    int want[5];
    for (int i = 0; i < n_sel; i++)
        want[i] = host_select(logits + (size_t)rows[i].row * (size_t)vocab, vocab, rows[i].ids,
                              rows[i].len, rows[i].n, rows[i].ban_eos, eos);
    assert_int_equal(want[0], 20);
    assert_int_not_equal(want[1], 7);
    assert_int_not_equal(want[1], 8);
    assert_int_not_equal(want[2], eos);
    assert_int_equal(want[4], 0);
    cl_mem ml = to_device(logits, (size_t)n_sel * (size_t)vocab * 4);
    cl_mem mi = to_device(info, sizeof info);
    cl_mem mh = to_device(hist, off * sizeof(int32_t));
    cl_mem mo = to_device(NULL, (size_t)n_sel * sizeof(cl_int));
    check_ok(ke_cl_select_greedy(fx.ops[1], ml, vocab, mi, mh, n_sel, (int)max_len, eos, mo));
    cl_int got[5];
    from_device(mo, got, sizeof got);
    for (int i = 0; i < n_sel; i++) {
        print_message("selection %d: device %d, host %d\n", i, got[i], want[i]);
        assert_int_equal(got[i], want[i]);
    }
    cl_mem *all[] = {&ml, &mi, &mh, &mo};
    for (size_t i = 0; i < 4; i++)
        kc_context_buffer_free(fx.ctx, all[i]);
    free(logits);
}

/* ---- errors ------------------------------------------------------------------------------- */

static void test_errors_name_the_kernel(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    /* a launch the driver refuses (a NULL buffer where one is read) must fail with a message
     * naming the kernel and its sizes, not crash */
    ke_cl_attention_args a = {.q = NULL, .q_stride = 8, .kv_stride = 8, .n_rows = 3,
                              .heads = 1, .head_dim = 8, .scale = 1.0f, .out_stride = 8};
    a.heads = 0;
    ks_status st = ke_cl_attention(fx.ops[1], &a);
    assert_int_not_equal(st, KS_OK);
    print_message("%s\n", ks_error_message());
    assert_non_null(strstr(ks_error_message(), "kernel attention"));
    assert_non_null(strstr(ks_error_message(), "3 rows"));
    st = ke_cl_activation(fx.ops[1], (cl_mem)NULL, (size_t)1 << 32, KE_ACT_GELU);
    assert_int_not_equal(st, KS_OK);
    assert_non_null(strstr(ks_error_message(), "kernel activation"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer_norm),
        cmocka_unit_test(test_activation),
        cmocka_unit_test(test_l2_normalize),
        cmocka_unit_test(test_unfold_and_vision_embed),
        cmocka_unit_test(test_text_embed),
        cmocka_unit_test(test_kv_store_and_gather),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_select_greedy),
        cmocka_unit_test(test_errors_name_the_kernel),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
