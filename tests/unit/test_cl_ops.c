/* Unit tests for worker/engine/backend_cl_ops (the OpenCL kernels of the forward pass): every
 * kernel against its plain-C reference op of ref_ops.h (or, for selection, generate.c's host
 * logic written out here) on PoCL, on random data and edge shapes: head_dim 8, 16 and 64, odd
 * widths, 1 and 3 rows or images, sequences of 1 and 257 tokens, f16 and f32 weights. Sampling's
 * selection (topk_rows + generate.c's list sampler) gives the token of generate.c's full host
 * path for every seed, or defers to it.
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
#include "cl_fixture.h"
#include "cl_gemm.h"
#include "generate.h"
#include "model.h"
#include "ref_ops.h"

typedef struct fixture {
    kc_device_list *list;
    kc_context *ctx;   /* NULL: no device, tests skip */
    ke_cl_ops *ops[2]; /* [ke_dtype] */
} fixture;

static fixture fx;

#define REQUIRE_DEVICE() TS_CL_REQUIRE(fx.ctx)

static int setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    if (ts_cl_open(&fx.list, NULL, &fx.ctx) != 0)
        return -1;
    if (!fx.ctx)
        return 0;
    for (int d = 0; d < 2; d++) {
        if (ke_cl_ops_new(fx.ctx, (ke_dtype)d, &fx.ops[d]) != KS_OK) {
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
    ts_cl_close(&fx.list, &fx.ctx);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static float *rand_floats(size_t n, double scale)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(ts_cl_frand() * scale);
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
    return ts_cl_upload(fx.ctx, data, bytes);
}

static void from_device(cl_mem m, void *out, size_t bytes)
{
    ts_cl_download(fx.ctx, m, 0, bytes, out);
}

static void check_ok(ks_status st)
{
    if (st != KS_OK)
        fail_msg("%s", ks_error_message());
}

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
                TS_CL_EXPECT_CLOSE(what, got, want, rows * dim, 2e-5);
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
            TS_CL_EXPECT_CLOSE(what, got, want, n, 2e-6);
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
            TS_CL_EXPECT_CLOSE(what, got, want, n, 2e-6);
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

/* ---- the text decoder's kernels (kernels/decoder.cl) ------------------------------------- */

#define PAGE 4 /* tokens per page in these tests */

static void expect_stats(const char *what, const cl_float2 *got, const cl_float2 *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i].s[0] - want[i].s[0]) <= 1e-5 * (1 + fabs(want[i].s[0])) &&
              fabs((double)got[i].s[1] - want[i].s[1]) <= 1e-4 * (1 + fabs(want[i].s[1]))))
            fail_msg("%s: block %zu is (%g, %g), want (%g, %g)", what, i, (double)got[i].s[0],
                     (double)got[i].s[1], (double)want[i].s[0], (double)want[i].s[1]);
}

/* decoder_embed: ids from the plan or from the slot's last selection, positions given or
 * computed, image rows; the rows equal ke_op_text_embed's, with their statistics, cache rows
 * through the page table, and the ids written to the slots' histories. */
static void test_decoder_embed(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const int dims[] = {48, 7, 2048};
    for (int dt = 0; dt < 2; dt++)
        for (size_t d = 0; d < 6; d++) {
            int dim = dims[d % 3], vocab = 50, pad = 1, slots = 3, max_pages = 4, cap = 16;
            /* the transposed table (dim, ldv), ldv >= vocab: row-major, or in panels of 8
             * columns (the CPU layout) */
            size_t n = 7, ldv = 56, panel = d < 3 ? 0 : 8;
            float *table = rand_floats((size_t)vocab * (size_t)dim, 1.0);
            int64_t shape[2] = {vocab, dim};
            weight w = make_weight((ke_dtype)dt, table, 2, shape); /* rounds `table` */
            size_t es = dt ? 2 : 4;
            unsigned char *tt = calloc((size_t)dim * ldv, es);
            for (int id = 0; id < vocab; id++)
                for (int i = 0; i < dim; i++)
                    memcpy(tt + ke_cl_weight_index(dim, ldv, panel, i, id) * es,
                           (unsigned char *)w.host + ((size_t)id * (size_t)dim + (size_t)i) * es,
                           es);
            cl_int slot_next[3] = {17, 1, 42};
            cl_int pages[3 * 4] = {5, 2, 0, 0, 1, 0, 0, 0, 3, 4, 6, 0};
            /* (id or -1, position or -1, image row or -1, slot, idx) */
            cl_int8 plan[7] = {{{0, 2, -1, 0, 0}},     {{5, 3, 0, 0, 1}},      {{-1, -1, -1, 0, 6}},
                               {{-1, -1, -1, 1, 3}},   {{49, 2047, -1, 2, 9}}, {{7, 1, 1, 2, 10}},
                               {{-1, 2100, -1, 2, 11}}};
            int32_t ids[7], pos[7], slot_of[7], idx[7];
            uint8_t mask[7];
            for (size_t t = 0; t < n; t++) {
                const cl_int *p = plan[t].s;
                slot_of[t] = p[3];
                idx[t] = p[4];
                ids[t] = p[0] >= 0 ? p[0] : slot_next[p[3]];
                pos[t] = p[1] >= 0 ? p[1] : ids[t] == pad ? pad : pad + 1 + p[4];
                mask[t] = p[2] >= 0;
            }
            assert_int_equal(pos[3], pad); /* slot 1's next token is the pad */
            float *img = rand_floats(2 * (size_t)dim, 1.0);
            float *freq = malloc((size_t)(dim / 2) * sizeof(float));
            ke_op_sinusoid_freqs(dim, freq);
            float scale = sqrtf((float)dim);
            float *want = malloc(n * (size_t)dim * sizeof(float));
            float *got = malloc(n * (size_t)dim * sizeof(float));
            assert_int_equal(ke_op_text_embed(&w.t, ids, n, mask, img, scale, pos, pad, freq, want),
                             2);
            size_t nb = ((size_t)dim + 31) / 32;
            cl_float2 *st = malloc(n * nb * sizeof *st), *st_want = malloc(nb * sizeof *st);
            cl_int *hist = calloc((size_t)slots * (size_t)cap, sizeof(cl_int));
            cl_int4 tok[7];
            cl_mem mtab = to_device(tt, (size_t)dim * ldv * es);
            cl_mem mplan = to_device(plan, sizeof plan), mimg = to_device(img, 2 * (size_t)dim * 4);
            cl_mem mfreq = to_device(freq, (size_t)(dim / 2) * 4);
            cl_mem mnext = to_device(slot_next, sizeof slot_next);
            cl_mem mpages = to_device(pages, sizeof pages);
            cl_mem mhist = to_device(hist, (size_t)slots * (size_t)cap * sizeof(cl_int));
            cl_mem mx = to_device(NULL, n * (size_t)dim * 4);
            cl_mem mst = to_device(NULL, n * nb * sizeof *st), mtok = to_device(NULL, sizeof tok);
            ke_cl_decoder_embed_args a = {.plan = mplan,
                                          .n_tokens = n,
                                          .table = mtab,
                                          .ldv = ldv,
                                          .panel = panel,
                                          .image_rows = mimg,
                                          .freq = mfreq,
                                          .scale = scale,
                                          .pad = pad,
                                          .dim = dim,
                                          .slot_next = mnext,
                                          .pages = mpages,
                                          .max_pages = max_pages,
                                          .page_tokens = PAGE,
                                          .hist = mhist,
                                          .hist_cap = cap,
                                          .x = mx,
                                          .x_stats = mst,
                                          .tokrow = mtok};
            check_ok(ke_cl_decoder_embed(fx.ops[dt], &a));
            from_device(mx, got, n * (size_t)dim * 4);
            from_device(mst, st, n * nb * sizeof *st);
            from_device(mtok, tok, sizeof tok);
            from_device(mhist, hist, (size_t)slots * (size_t)cap * sizeof(cl_int));
            char what[64];
            snprintf(what, sizeof what, "decoder_embed %s dim %d panel %zu", dt ? "f16" : "f32",
                     dim, panel);
            TS_CL_EXPECT_CLOSE(what, got, want, n * (size_t)dim, 2e-6);
            for (size_t t = 0; t < n; t++) {
                ts_cl_block_stats(got + t * (size_t)dim, dim, 32, st_want);
                expect_stats(what, st + t * nb, st_want, nb);
                int row = pages[slot_of[t] * max_pages + idx[t] / PAGE] * PAGE + idx[t] % PAGE;
                assert_int_equal(tok[t].s[0], row);
                assert_int_equal(tok[t].s[1], slot_of[t]);
                assert_int_equal(tok[t].s[2], idx[t] + 1);
                assert_int_equal(tok[t].s[3], ids[t]);
                assert_int_equal(hist[slot_of[t] * cap + idx[t]], ids[t]);
            }
            cl_mem *all[] = {&mtab,   &mplan, &mimg, &mfreq, &mnext,
                             &mpages, &mhist, &mx,   &mst,   &mtok};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
                kc_context_buffer_free(fx.ctx, all[i]);
            free_weight(&w);
            free(table), free(tt), free(img), free(freq), free(want), free(got), free(st);
            free(st_want), free(hist);
        }
}

/* paged_attention: each new token over its slot's keys through a scattered page table, f32
 * and half cache rows, equals ke_op_attention on the same keys laid out contiguously; and the
 * per-head statistics of the output. */
static void test_paged_attention(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    static const int shapes[][2] = {{3, 16}, {4, 8}, {2, 64}, {3, 5}}; /* heads, head_dim */
    const bool was_serial = !strcmp(ke_cl_ops_paged_attention_kernel(fx.ops[1]),
                                    "paged_attention_serial");
    for (int run = 0; run < 4; run++) {
        const int half = run % 2, serial = run / 2; /* both kernels on any device */
        ke_cl_ops_force_serial_attention(fx.ops[1], serial);
        for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
            int heads = shapes[sh][0], hd = shapes[sh][1], width = heads * hd;
            /* tokens: (slot, keys it sees); slot 1 holds 300 keys over 75 pages */
            static const int toks[][2] = {{0, 1}, {0, 2}, {0, 7}, {1, 300}, {2, 5}, {1, 299}};
            const int n = 6, slots = 3, max_pages = 80, n_pages = 100;
            cl_int *pages = malloc((size_t)slots * max_pages * sizeof(cl_int));
            for (int s = 0; s < slots; s++)
                for (int p = 0; p < max_pages; p++) /* a permutation, so pages interleave */
                    pages[s * max_pages + p] = (s * max_pages + p) * 37 % n_pages;
            size_t pool_rows = (size_t)n_pages * PAGE;
            float *kp = rand_floats(pool_rows * (size_t)width, 2.0);
            float *vp = rand_floats(pool_rows * (size_t)width, 2.0);
            uint16_t *kh = malloc(pool_rows * (size_t)width * 2),
                     *vh = malloc(pool_rows * (size_t)width * 2);
            for (size_t i = 0; i < pool_rows * (size_t)width; i++) {
                kh[i] = ke_f32_to_f16(kp[i]);
                vh[i] = ke_f32_to_f16(vp[i]);
                if (half) {
                    kp[i] = ke_f16_to_f32(kh[i]);
                    vp[i] = ke_f16_to_f32(vh[i]);
                }
            }
            float *q = rand_floats((size_t)n * (size_t)width, 2.0);
            float *want = malloc((size_t)n * (size_t)width * sizeof(float));
            float *got = malloc((size_t)n * (size_t)width * sizeof(float));
            float *kc = malloc(300 * (size_t)width * sizeof(float));
            float *vc = malloc(300 * (size_t)width * sizeof(float));
            float *scratch = malloc(301 * sizeof(float));
            cl_int4 tok[6];
            float scale = (float)pow((double)hd, -0.5);
            for (int t = 0; t < n; t++) {
                int slot = toks[t][0], nk = toks[t][1];
                for (int j = 0; j < nk; j++) {
                    size_t row = (size_t)pages[slot * max_pages + j / PAGE] * PAGE + j % PAGE;
                    memcpy(kc + (size_t)j * width, kp + row * width, (size_t)width * 4);
                    memcpy(vc + (size_t)j * width, vp + row * width, (size_t)width * 4);
                }
                ke_op_attention(q + (size_t)t * width, (size_t)width, kc, vc, (size_t)width, 1, nk,
                                heads, hd, scale, -1, want + (size_t)t * width, (size_t)width,
                                scratch);
                tok[t] = (cl_int4){{0, slot, nk, 0}};
            }
            cl_mem mq = to_device(q, (size_t)n * width * 4);
            cl_mem mk = half ? to_device(kh, pool_rows * width * 2)
                             : to_device(kp, pool_rows * width * 4);
            cl_mem mv = half ? to_device(vh, pool_rows * width * 2)
                             : to_device(vp, pool_rows * width * 4);
            cl_mem mt = to_device(tok, sizeof tok);
            cl_mem mp = to_device(pages, (size_t)slots * max_pages * sizeof(cl_int));
            cl_mem mo = to_device(NULL, (size_t)n * width * 4);
            cl_mem ms = to_device(NULL, (size_t)n * heads * sizeof(cl_float2));
            ke_cl_paged_attention_args a = {.q = mq,
                                            .kpool = mk,
                                            .vpool = mv,
                                            .kv_half = half,
                                            .tokrow = mt,
                                            .pages = mp,
                                            .max_pages = max_pages,
                                            .page_tokens = PAGE,
                                            .out = mo,
                                            .out_stats = ms,
                                            .n_tokens = (size_t)n,
                                            .heads = heads,
                                            .head_dim = hd,
                                            .scale = scale};
            check_ok(ke_cl_paged_attention(fx.ops[1], NULL, &a));
            from_device(mo, got, (size_t)n * width * 4);
            char what[64];
            snprintf(what, sizeof what, "paged_attention%s %s heads %d hd %d",
                     serial ? "_serial" : "", half ? "half" : "f32", heads, hd);
            TS_CL_EXPECT_CLOSE(what, got, want, (size_t)n * width, 1e-5);
            cl_float2 *st = malloc((size_t)n * heads * sizeof *st), sw[1];
            from_device(ms, st, (size_t)n * heads * sizeof *st);
            for (int t = 0; t < n; t++)
                for (int h = 0; h < heads; h++) {
                    ts_cl_block_stats(got + (size_t)t * width + (size_t)h * hd, hd, hd, sw);
                    expect_stats(what, &st[t * heads + h], sw, 1);
                }
            cl_mem *all[] = {&mq, &mk, &mv, &mt, &mp, &mo, &ms};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
                kc_context_buffer_free(fx.ctx, all[i]);
            free(pages), free(kp), free(vp), free(kh), free(vh), free(q), free(want), free(got);
            free(kc), free(vc), free(scratch), free(st);
        }
    }
    ke_cl_ops_force_serial_attention(fx.ops[1], was_serial);
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
    ke_cl_attention_args a = {.q = mq,
                              .q_off = 0,
                              .q_stride = q_stride,
                              .k = fused ? mq : mkv,
                              .v = fused ? mq : mkv,
                              .k_off = fused ? width : 0,
                              .v_off = fused ? 2 * width : kv_rows * width,
                              .kv_stride = kv_stride,
                              .rows = mr,
                              .n_rows = total_q,
                              .heads = heads,
                              .head_dim = head_dim,
                              .scale = scale,
                              .out = mo,
                              .out_stride = width};
    check_ok(ke_cl_attention(fx.ops[1], &a));
    from_device(mo, got, total_q * width * 4);
    TS_CL_EXPECT_CLOSE(name, got, want, total_q * width, 1e-5);
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

/* generate.c's host processors: no_repeat_ngram ban, </s> mask (in place). */
static void host_process(float *s, const int32_t *ids, size_t len, int n, bool ban_eos, int eos)
{
    if (n > 0 && len >= (size_t)n) {
        size_t m = (size_t)n - 1;
        for (size_t i = 0; i + (size_t)n <= len; i++)
            if (m == 0 || memcmp(ids + i, ids + len - m, m * sizeof *ids) == 0)
                s[ids[i + m]] = -INFINITY;
    }
    if (ban_eos)
        s[eos] = -INFINITY;
}

/* generate.c's greedy host path: the processors, argmax (lowest id on ties). */
static int host_select(const float *logits, int vocab, const int32_t *ids, size_t len, int n,
                       bool ban_eos, int eos)
{
    float *s = malloc((size_t)vocab * sizeof(float));
    memcpy(s, logits, (size_t)vocab * sizeof(float));
    host_process(s, ids, len, n, ban_eos, eos);
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
    int32_t h1[] = {5, 6, 7, 1, 5, 6, 8, 3, 5, 6}; /* 3-gram (5, 6) -> 7 and 8 banned */
    int32_t h2[] = {9, 9, 9};
    int32_t h3[] = {4, 3, 2, 1}; /* 1-gram: every present id banned */
    int32_t h4[] = {0};
    struct {
        const int32_t *ids;
        size_t len;
        int n;
        bool ban_eos;
        int row;
    } rows[5] = {{h0, 4, 0, false, 0},
                 {h1, 10, 3, false, 1},
                 {h2, 3, 2, true, 2},
                 {h3, 4, 1, false, 3},
                 {h4, 1, 0, false, 4}};
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

    /* select_greedy_slots: the same rows with each history in its slot's row of the device
     * history (slot 2i+1 of 10, capacity 16); the ids also become the slots' next tokens */
    const int cap = 16, slots = 10;
    cl_int *shist = calloc((size_t)slots * cap, sizeof(cl_int));
    cl_int8 sinfo[5];
    cl_int next[10];
    for (int i = 0; i < slots; i++)
        next[i] = -7;
    for (int i = 0; i < n_sel; i++) {
        int slot = 2 * i + 1;
        memcpy(shist + slot * cap, rows[i].ids, rows[i].len * sizeof(int32_t));
        sinfo[i] = (cl_int8){
            {rows[i].row, slot, (cl_int)rows[i].len, rows[i].n, rows[i].ban_eos, 0, 0, 0}};
    }
    cl_mem ml2 = to_device(logits, (size_t)n_sel * (size_t)vocab * 4); /* unbanned again */
    cl_mem msi = to_device(sinfo, sizeof sinfo);
    cl_mem msh = to_device(shist, (size_t)slots * cap * sizeof(cl_int));
    cl_mem mnext = to_device(next, sizeof next);
    check_ok(ke_cl_select_greedy_slots(fx.ops[1], ml2, vocab, msi, n_sel, msh, cap, eos, mo,
                                       mnext));
    from_device(mo, got, sizeof got);
    from_device(mnext, next, sizeof next);
    for (int i = 0; i < n_sel; i++) {
        assert_int_equal(got[i], want[i]);
        assert_int_equal(next[2 * i + 1], want[i]);
        assert_int_equal(next[2 * i], -7); /* other slots untouched */
    }
    cl_mem *all[] = {&ml, &mi, &mh, &mo, &ml2, &msi, &msh, &mnext};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        kc_context_buffer_free(fx.ctx, all[i]);
    free(logits);
    free(shist);
}

/* ---- sampling selection ------------------------------------------------------------------- */

/* Rows of several shapes (flat, peaked, boundary ties, masked) under every combination of
 * temperature, top-k and top-p and several seeds: the token from the device's list
 * (ke_sample_candidates) equals generate.c's full host path (ke_sample_row) on the same row, or
 * the list defers (-1, RNG untouched) and the full row read back from the device gives it. The
 * lists themselves are checked: the best values of the row, and tail bounds that hold. */
enum { S_FLAT, S_PEAKED, S_TIES_FIT, S_TIES_WIDE, S_MASKED, S_FEW, S_LARGE, S_ROWS };

static void make_sample_rows(float *lg, int vocab)
{
    for (int r = 0; r < S_ROWS; r++) {
        float *x = lg + (size_t)r * (size_t)vocab;
        for (int i = 0; i < vocab; i++) {
            double u = (ts_cl_frand() + 1.0) / 2.0 + 1e-9; /* (0, 1] */
            switch (r) {
            case S_FLAT: x[i] = (float)(ts_cl_frand() * 4.0); break;
            case S_PEAKED: x[i] = (float)(2.0 * log(u) * 3.0 + ts_cl_frand()); break;
            case S_TIES_FIT:
            case S_TIES_WIDE: x[i] = (float)(ts_cl_frand() * 2.0); break;
            case S_MASKED: x[i] = -INFINITY; break;
            case S_FEW: x[i] = -INFINITY; break;
            default: x[i] = (float)(ts_cl_frand() * 60.0 + 8.0 * log(u)); break;
            }
        }
    }
    float *p = lg + (size_t)S_PEAKED * (size_t)vocab;
    for (int t = 0; t < 40; t++) /* a head of decisive tokens, as a language model has */
        p[(t * 7919 + 11) % vocab] = 14.0f - 0.35f * (float)t;
    for (int r = S_TIES_FIT; r <= S_TIES_WIDE; r++) {
        float *x = lg + (size_t)r * (size_t)vocab;
        x[100] = x[7] = x[3000] = 10.0f;        /* ties at the top: lowest id for greedy */
        int n_ties = r == S_TIES_FIT ? 60 : 70; /* at top-k 50's boundary: 63 fit in 66 */
        for (int t = 0; t < n_ties; t++)
            x[(t * 131 + 17) % vocab] = 5.0f;
    }
    float *f = lg + (size_t)S_FEW * (size_t)vocab;
    f[5] = 1.0f;
    f[9] = 2.5f;
    f[vocab - 1] = 0.5f;
}

static void test_select_sample(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const int vocab = 20011, eos = 2, n_sel = S_ROWS;
    float *logits = malloc((size_t)n_sel * (size_t)vocab * sizeof(float));
    assert_non_null(logits);
    make_sample_rows(logits, vocab);
    /* histories: n-gram bans and </s> masks on some rows */
    int32_t h_flat[] = {5, 6, 7, 1, 5, 6, 8, 3, 5, 6}; /* 3-gram (5, 6) -> 7, 8 banned */
    int32_t h_peak[] = {11, 2, 7930, 11};              /* 2-gram (11) -> 2, 7930 banned */
    int32_t h_one[] = {1};
    struct {
        const int32_t *ids;
        size_t len;
        int n;
        bool ban_eos;
    } hr[S_ROWS] = {{h_flat, 10, 3, false}, {h_peak, 4, 2, true}, {h_one, 1, 0, false},
                    {h_one, 1, 0, true},    {h_one, 1, 0, false}, {h_one, 1, 1, false},
                    {h_peak, 4, 1, true}};
    cl_int info[S_ROWS * 5];
    int32_t hist[64];
    size_t off = 0, max_len = 0;
    for (int i = 0; i < n_sel; i++) {
        info[i * 5 + 0] = i;
        info[i * 5 + 1] = (cl_int)off;
        info[i * 5 + 2] = (cl_int)hr[i].len;
        info[i * 5 + 3] = hr[i].n;
        info[i * 5 + 4] = hr[i].ban_eos;
        memcpy(hist + off, hr[i].ids, hr[i].len * sizeof(int32_t));
        off += hr[i].len;
        if (hr[i].len > max_len)
            max_len = hr[i].len;
    }
    /* the host's processed rows (the device writes the same bans into its logits) */
    float *proc = malloc((size_t)n_sel * (size_t)vocab * sizeof(float));
    float *row = malloc((size_t)vocab * sizeof(float));
    memcpy(proc, logits, (size_t)n_sel * (size_t)vocab * sizeof(float));
    for (int i = 0; i < n_sel; i++)
        host_process(proc + (size_t)i * (size_t)vocab, hr[i].ids, hr[i].len, hr[i].n, hr[i].ban_eos,
                     eos);
    const size_t cap = 1024;
    cl_mem ml = to_device(logits, (size_t)n_sel * (size_t)vocab * 4);
    cl_mem mi = to_device(info, sizeof info);
    cl_mem mh = to_device(hist, off * sizeof(int32_t));
    cl_mem mo = to_device(NULL, (size_t)n_sel * sizeof(cl_int));
    cl_mem mci = to_device(NULL, (size_t)n_sel * 4 * sizeof(cl_int));
    cl_mem mcv = to_device(NULL, (size_t)n_sel * cap * sizeof(float));
    cl_mem mcd = to_device(NULL, (size_t)n_sel * cap * sizeof(cl_int));
    cl_mem mcs = to_device(NULL, (size_t)n_sel * 4 * sizeof(cl_ulong));
    float *cval = malloc((size_t)n_sel * cap * sizeof(float));
    int32_t *cid = malloc((size_t)n_sel * cap * sizeof(int32_t));

    const float temps[] = {0.7f, 1.0f, 1.5f};
    const int topks[] = {0, 1, 50};
    const float topps[] = {0.1f, 0.9f, 1.0f};
    const uint64_t seeds[] = {1, 42, 977};
    int decided = 0, deferred = 0, total = 0, decided_row[S_ROWS] = {0};
    for (int ti = 0; ti < 3; ti++)
        for (int ki = 0; ki < 3; ki++)
            for (int pi = 0; pi < 3; pi++) {
                ke_gen_params p;
                ke_gen_params_default(&p, NULL);
                p.do_sample = true;
                p.temperature = temps[ti];
                p.top_k = topks[ki];
                p.top_p = topps[pi];
                cl_int cinfo[S_ROWS * 4];
                float tail_t[S_ROWS];
                int want[S_ROWS], n_cand = 0, list_of[S_ROWS];
                for (int i = 0; i < n_sel; i++) {
                    want[i] = ke_sample_candidates_wanted(&p, vocab, &tail_t[i]);
                    assert_true(want[i] >= 0 && (size_t)want[i] <= cap);
                    list_of[i] = -1;
                    if (want[i] == 0)
                        continue;
                    list_of[i] = n_cand;
                    cinfo[n_cand * 4 + 0] = i;
                    cinfo[n_cand * 4 + 1] = want[i];
                    cinfo[n_cand * 4 + 2] = (cl_int)((size_t)n_cand * cap);
                    memcpy(&cinfo[n_cand * 4 + 3], &tail_t[i], sizeof(float));
                    n_cand++;
                }
                cl_ulong cstat[S_ROWS * 4];
                cl_int ids[S_ROWS];
                check_ok(clEnqueueWriteBuffer(kc_context_queue(fx.ctx), mci, CL_TRUE, 0,
                                              sizeof cinfo, cinfo, 0, NULL, NULL) == CL_SUCCESS
                             ? KS_OK
                             : KS_ERR_DEVICE);
                ke_cl_select_sample_args a = {.logits = ml,
                                              .vocab = vocab,
                                              .info = mi,
                                              .hist = mh,
                                              .n_sel = n_sel,
                                              .max_len = (int)max_len,
                                              .eos = eos,
                                              .out = mo,
                                              .cinfo = mci,
                                              .n_cand = n_cand,
                                              .cval = mcv,
                                              .cid = mcd,
                                              .cstat = mcs};
                check_ok(ke_cl_select_sample(fx.ops[1], &a));
                from_device(mo, ids, sizeof ids);
                if (n_cand > 0) {
                    from_device(mcs, cstat, (size_t)n_cand * 4 * sizeof(cl_ulong));
                    from_device(mcv, cval, (size_t)n_cand * cap * sizeof(float));
                    from_device(mcd, cid, (size_t)n_cand * cap * sizeof(int32_t));
                }
                for (int i = 0; i < n_sel; i++) {
                    const float *pr = proc + (size_t)i * (size_t)vocab;
                    /* the greedy id of every row, as select_greedy gives it */
                    int best = 0;
                    for (int v = 1; v < vocab; v++)
                        if (pr[v] > pr[best])
                            best = v;
                    assert_int_equal(ids[i], best);
                    ke_select_out o = {0};
                    if (list_of[i] >= 0) {
                        int c = list_of[i];
                        o.values = cval + (size_t)c * cap;
                        o.ids = cid + (size_t)c * cap;
                        ke_cl_sample_stat_decode(cstat + (size_t)c * 4, vocab, tail_t[i], &o);
                        /* the list: the best of the row, the rest no larger than rest_max */
                        assert_true(o.n >= 0 && o.n <= want[i]);
                        char *in = calloc((size_t)vocab, 1);
                        float mx = -INFINITY;
                        for (int v = 0; v < vocab; v++)
                            mx = pr[v] > mx ? pr[v] : mx;
                        for (int j = 0; j < o.n; j++) {
                            assert_true(o.ids[j] >= 0 && o.ids[j] < vocab && !in[o.ids[j]]);
                            in[o.ids[j]] = 1;
                            assert_true(o.values[j] == pr[o.ids[j]]);
                            assert_true(o.values[j] >= o.rest_max);
                        }
                        float rest = -INFINITY;
                        double tail = 0.0;
                        for (int v = 0; v < vocab; v++)
                            if (!in[v]) {
                                rest = pr[v] > rest ? pr[v] : rest;
                                if (tail_t[i] > 0.0f)
                                    tail += (double)expf(pr[v] / tail_t[i] - mx / tail_t[i]);
                            }
                        assert_true(rest == o.rest_max || (rest == -INFINITY && o.n == vocab));
                        if (tail_t[i] > 0.0f && o.valid && isfinite(mx)) {
                            if (!(o.tail_lo <= tail * (1 + 1e-9) && tail <= o.tail_hi * (1 + 1e-9)))
                                print_message("row %d T %g: tail %.17g outside [%.17g, %.17g]\n", i,
                                              (double)tail_t[i], tail, o.tail_lo, o.tail_hi);
                            assert_true(o.tail_lo <= tail * (1 + 1e-9));
                            assert_true(tail <= o.tail_hi * (1 + 1e-9));
                        }
                        free(in);
                    }
                    for (size_t si = 0; si < sizeof seeds / sizeof seeds[0]; si++) {
                        ke_rng r_host, r_dev, r_seed;
                        ke_rng_seed(&r_host, seeds[si]);
                        ke_rng_seed(&r_dev, seeds[si]);
                        ke_rng_seed(&r_seed, seeds[si]);
                        memcpy(row, pr, (size_t)vocab * sizeof(float));
                        int want_tok = ke_sample_row(&p, row, vocab, &r_host);
                        assert_true(want_tok >= 0 && want_tok < vocab);
                        int got = list_of[i] >= 0 ? ke_sample_candidates(&p, &o, vocab, &r_dev)
                                                  : -1;
                        total++;
                        if (got >= 0) {
                            decided++;
                            decided_row[i]++;
                        } else {
                            /* deferred: the RNG untouched, the device's row takes the host path */
                            deferred++;
                            assert_memory_equal(&r_dev, &r_seed, sizeof r_dev);
                            size_t row_bytes = (size_t)vocab * sizeof(float);
                            ts_cl_download(fx.ctx, ml, (size_t)i * row_bytes, row_bytes, row);
                            host_process(row, hr[i].ids, hr[i].len, hr[i].n, hr[i].ban_eos, eos);
                            got = ke_sample_row(&p, row, vocab, &r_dev);
                        }
                        if (got != want_tok)
                            print_message("row %d T %g top_k %d top_p %g seed %llu: device %d, "
                                          "host %d\n",
                                          i, (double)p.temperature, p.top_k, (double)p.top_p,
                                          (unsigned long long)seeds[si], got, want_tok);
                        assert_int_equal(got, want_tok);
                        assert_memory_equal(&r_dev, &r_host, sizeof r_dev);
                        if (i == S_MASKED)
                            assert_int_equal(want_tok, vocab - 1); /* the host's NaN walk */
                    }
                }
            }
    print_message("sampling: %d tokens, %d decided from the device's list, %d deferred\n", total,
                  decided, deferred);
    for (int i = 0; i < n_sel; i++)
        print_message("  row kind %d: %d decided\n", i, decided_row[i]);
    /* the lists decide the usual cases: top-k 50 (or 1) on every row with a clear boundary,
     * top-p alone on the peaked rows */
    assert_true(decided_row[S_PEAKED] >= 3 * 3 * 3 * 2);
    assert_true(decided_row[S_FLAT] >= 3 * 2 * 2 * 3);
    assert_int_equal(decided_row[S_MASKED], 0);
    cl_mem *all[] = {&ml, &mi, &mh, &mo, &mci, &mcv, &mcd, &mcs};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        kc_context_buffer_free(fx.ctx, all[i]);
    free(cval);
    free(cid);
    free(proc);
    free(row);
    free(logits);
}

/* Random rows and random parameters (top-p alone mostly, the case with tail bounds), plus rows
 * built so that top-p's threshold falls exactly on a cumulative-sum step behind a heavy tail
 * (the cut too close to call: the list defers) or halfway between two steps (the list decides
 * through the tail's bounds): every token equals the host path's. */
static void test_select_sample_random(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    const int vocab = 12007, n_sel = 8, rounds = 12;
    const size_t cap = 1024;
    float *logits = malloc((size_t)n_sel * (size_t)vocab * sizeof(float));
    float *row = malloc((size_t)vocab * sizeof(float));
    float *cval = malloc((size_t)n_sel * cap * sizeof(float));
    int32_t *cid = malloc((size_t)n_sel * cap * sizeof(int32_t));
    cl_int info[8 * 5];
    int32_t hist[8];
    for (int i = 0; i < n_sel; i++) {
        cl_int in[5] = {i, i, 1, 0, 0};
        memcpy(info + i * 5, in, sizeof in);
        hist[i] = 0;
    }
    cl_mem ml = to_device(NULL, (size_t)n_sel * (size_t)vocab * 4);
    cl_mem mi = to_device(info, sizeof info);
    cl_mem mh = to_device(hist, sizeof hist);
    cl_mem mo = to_device(NULL, (size_t)n_sel * sizeof(cl_int));
    cl_mem mci = to_device(NULL, (size_t)n_sel * 4 * sizeof(cl_int));
    cl_mem mcv = to_device(NULL, (size_t)n_sel * cap * sizeof(float));
    cl_mem mcd = to_device(NULL, (size_t)n_sel * cap * sizeof(cl_int));
    cl_mem mcs = to_device(NULL, (size_t)n_sel * 4 * sizeof(cl_ulong));
    int decided = 0, total = 0, edge_rows = 0, edge_decided = 0, mid_decided = 0;
    for (int round = 0; round < rounds; round++) {
        ke_gen_params p[8];
        cl_int cinfo[8 * 4];
        float tail_t[8];
        int n_cand = 0, list_of[8];
        for (int i = 0; i < n_sel; i++) {
            float *x = logits + (size_t)i * (size_t)vocab;
            ke_gen_params_default(&p[i], NULL);
            p[i].do_sample = true;
            p[i].temperature = (float)(0.4 + 1.2 * (ts_cl_frand() + 1.0));
            p[i].top_k = (i % 4 == 3) ? 1 + (int)((ts_cl_frand() + 1.0) * 100.0) : 0;
            p[i].top_p = (float)(0.05 + 0.47 * (ts_cl_frand() + 1.0));
            int head = 1 + (int)((ts_cl_frand() + 1.0) * 40.0);
            double spread = 1.0 + (ts_cl_frand() + 1.0) * 3.0;
            for (int v = 0; v < vocab; v++)
                x[v] = (float)(ts_cl_frand() * spread - 4.0);
            for (int t = 0; t < head; t++)
                x[(t * 4099 + round * 31 + i) % vocab] = (float)(6.0 + ts_cl_frand() * 3.0);
            if (i == n_sel - 1) {
                /* top-p exactly on a step of the host's cumulative sum: equal head tokens over a
                 * heavy flat tail, top_p = 1 - (that cumulative sum, as f32) */
                for (int v = 0; v < vocab; v++)
                    x[v] = -2.0f;
                for (int t = 0; t < 8; t++)
                    x[t * 97 + 5] = 3.0f;
                p[i].temperature = 1.0f;
                p[i].top_k = 0;
                double sum = 0.0, cum = 0.0;
                float e_tail = expf(-2.0f - 3.0f), e_head = expf(0.0f);
                for (int v = 0; v < vocab - 8; v++)
                    sum += (double)e_tail;
                for (int t = 0; t < 8; t++)
                    sum += (double)e_head;
                for (int v = 0; v < vocab - 8; v++)
                    cum += (double)(float)((double)e_tail / sum);
                for (int t = 0; t < 1 + round % 5; t++)
                    cum += (double)(float)((double)e_head / sum);
                if (round % 2) /* odd rounds: halfway between two steps, clearly decidable */
                    cum += 0.5 * (double)e_head / sum;
                p[i].top_p = 1.0f - (float)cum;
                edge_rows += round % 2 == 0;
            }
            list_of[i] = -1;
            int w = ke_sample_candidates_wanted(&p[i], vocab, &tail_t[i]);
            if (w > 0) {
                list_of[i] = n_cand;
                cl_int c4[4] = {i, w, (cl_int)((size_t)n_cand * cap), 0};
                memcpy(&c4[3], &tail_t[i], sizeof(float));
                memcpy(cinfo + n_cand * 4, c4, sizeof c4);
                n_cand++;
            }
        }
        check_ok(clEnqueueWriteBuffer(kc_context_queue(fx.ctx), ml, CL_TRUE, 0,
                                      (size_t)n_sel * (size_t)vocab * 4, logits, 0, NULL,
                                      NULL) == CL_SUCCESS &&
                         n_cand > 0 &&
                         clEnqueueWriteBuffer(kc_context_queue(fx.ctx), mci, CL_TRUE, 0,
                                              (size_t)n_cand * 4 * sizeof(cl_int), cinfo, 0, NULL,
                                              NULL) == CL_SUCCESS
                     ? KS_OK
                     : KS_ERR_DEVICE);
        ke_cl_select_sample_args a = {.logits = ml,
                                      .vocab = vocab,
                                      .info = mi,
                                      .hist = mh,
                                      .n_sel = n_sel,
                                      .max_len = 1,
                                      .eos = 2,
                                      .out = mo,
                                      .cinfo = mci,
                                      .n_cand = n_cand,
                                      .cval = mcv,
                                      .cid = mcd,
                                      .cstat = mcs};
        check_ok(ke_cl_select_sample(fx.ops[1], &a));
        cl_ulong cstat[8 * 4];
        from_device(mcs, cstat, (size_t)n_cand * 4 * sizeof(cl_ulong));
        from_device(mcv, cval, (size_t)n_cand * cap * sizeof(float));
        from_device(mcd, cid, (size_t)n_cand * cap * sizeof(int32_t));
        for (int i = 0; i < n_sel; i++) {
            ke_select_out o = {0};
            if (list_of[i] >= 0) {
                o.values = cval + (size_t)list_of[i] * cap;
                o.ids = cid + (size_t)list_of[i] * cap;
                ke_cl_sample_stat_decode(cstat + (size_t)list_of[i] * 4, vocab, tail_t[i], &o);
            }
            for (uint64_t seed = 1; seed <= 3; seed++) {
                ke_rng rh, rd;
                ke_rng_seed(&rh, seed + 100 * (uint64_t)round);
                ke_rng_seed(&rd, seed + 100 * (uint64_t)round);
                memcpy(row, logits + (size_t)i * (size_t)vocab, (size_t)vocab * sizeof(float));
                int want_tok = ke_sample_row(&p[i], row, vocab, &rh);
                int got = list_of[i] >= 0 ? ke_sample_candidates(&p[i], &o, vocab, &rd) : -1;
                total++;
                if (got >= 0) {
                    decided++;
                    edge_decided += i == n_sel - 1 && round % 2 == 0;
                    mid_decided += i == n_sel - 1 && round % 2 == 1;
                } else {
                    memcpy(row, logits + (size_t)i * (size_t)vocab, (size_t)vocab * sizeof(float));
                    got = ke_sample_row(&p[i], row, vocab, &rd);
                }
                if (got != want_tok)
                    print_message("round %d row %d T %g top_k %d top_p %.9g: device %d, host %d\n",
                                  round, i, (double)p[i].temperature, p[i].top_k,
                                  (double)p[i].top_p, got, want_tok);
                assert_int_equal(got, want_tok);
                assert_memory_equal(&rd, &rh, sizeof rd);
            }
        }
    }
    print_message("random sampling: %d tokens, %d decided from lists; rows on a top-p edge: %d, "
                  "tokens decided there %d (halfway: %d of %d)\n",
                  total, decided, edge_rows, edge_decided, mid_decided, 3 * (rounds - edge_rows));
    assert_true(decided > total / 3);
    assert_int_equal(mid_decided, 3 * (rounds - edge_rows)); /* the tail bounds are tight enough */
    cl_mem *all[] = {&ml, &mi, &mh, &mo, &mci, &mcv, &mcd, &mcs};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        kc_context_buffer_free(fx.ctx, all[i]);
    free(cval);
    free(cid);
    free(row);
    free(logits);
}

/* ---- errors ------------------------------------------------------------------------------- */

static void test_errors_name_the_kernel(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    /* a launch the driver refuses (a NULL buffer where one is read) must fail with a message
     * naming the kernel and its sizes, not crash */
    ke_cl_attention_args a = {.q = NULL,
                              .q_stride = 8,
                              .kv_stride = 8,
                              .n_rows = 3,
                              .heads = 1,
                              .head_dim = 8,
                              .scale = 1.0f,
                              .out_stride = 8};
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
        cmocka_unit_test(test_decoder_embed),
        cmocka_unit_test(test_paged_attention),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_select_greedy),
        cmocka_unit_test(test_select_sample),
        cmocka_unit_test(test_select_sample_random),
        cmocka_unit_test(test_errors_name_the_kernel),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
