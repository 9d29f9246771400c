/* Unit tests for worker/engine/cl_gemm (ke_cl_gemm, kernels/gemm.cl):
 *   - every kernel family against a double-precision reference on random data and edge shapes
 *     (m, n, k odd and even, f16, f32 and int8 weights, bias, activation, residual, offsets,
 *     strides, row gathers, the LayerNorm prologue from row statistics, the statistics
 *     epilogue, the fused Q/K/V split into a KV cache of f32 or half rows);
 *   - the canonical order: a row's output is the same bits whatever m is, whichever kernel runs
 *     it, whatever other rows share the launch and wherever in the launch it sits, with chunks
 *     in one group or in groups of their own (what continuous batching relies on);
 *   - int8 weights (quant.h) against ke_op_linear on the same codes, within the rounding of two
 *     summation orders;
 *   - argument checks, and the tunables text (--gemm-tune) with its errors.
 *
 *   test_cl_gemm [--gemm-tune ROW[,KEY=VALUE...]]
 *
 * Needs an OpenCL device (PoCL's CPU device on CI); without one every device test skips
 * (KOSMOS_TEST_REQUIRE_ALL=1 makes that a failure). KOSMOS_TEST_DEVICE=<spec> picks the device;
 * --gemm-tune builds the gemm with that table row instead of the device's (ke_cl_gemm_new's
 * `tune`, as the backends get it from ke_backend_options.gemm_tune): ctest also runs the whole
 * program with --gemm-tune nvidia (the GPU kernels' staging and split paths on PoCL), the int8
 * tests in a run of their own: KOSMOS_TEST_ONLY / KOSMOS_TEST_SKIP take a cmocka pattern of test
 * names to run / to leave out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl_fixture.h"
#include "cl_gemm.h"
#include "model.h"
#include "quant.h"
#include "ref_ops.h"

/* --gemm-tune of the command line, borrowed from argv; NULL: the device's own row. */
static const char *gemm_tune;

typedef struct fixture {
    kc_device_list *list;
    kc_context *ctx; /* NULL: no device, tests skip */
    ke_cl_gemm *gemm;
} fixture;

#define REQUIRE_DEVICE(fx) TS_CL_REQUIRE((fx)->gemm)

static int group_setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    if (ts_cl_open(&fx->list, NULL, &fx->ctx) != 0)
        return -1;
    if (!fx->ctx)
        return 0;
    if (ke_cl_gemm_new(fx->ctx, gemm_tune, &fx->gemm) != KS_OK) {
        fprintf(stderr, "ke_cl_gemm_new: %s\n", ks_error_message());
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    fixture *fx = *state;
    if (!fx)
        return 0;
    ke_cl_gemm_destroy(&fx->gemm);
    ts_cl_close(&fx->list, &fx->ctx);
    free(fx);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static float frand(void) /* uniform in [-1, 1) */ { return (float)ts_cl_frand(); }

/* n values of dtype dt rounded from v (f16: as torch's .half()); v gets the rounded values. */
static void *to_dtype(float *v, size_t n, ke_dtype dt)
{
    if (dt == KE_DTYPE_F32) {
        float *out = malloc((n ? n : 1) * sizeof *out);
        assert_non_null(out);
        memcpy(out, v, n * sizeof *out);
        return out;
    }
    uint16_t *out = malloc((n ? n : 1) * sizeof *out);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        out[i] = ke_f32_to_f16(v[i]);
        v[i] = ke_f16_to_f32(out[i]);
    }
    return out;
}

/* One product to check. */
typedef struct gemm_case {
    size_t m, n, k;
    ke_dtype dt;
    bool bias, accumulate, ln, gather, stats;
    int act;             /* -1 none */
    size_t x_off, x_pad; /* ldx = k + x_pad */
    size_t y_off, y_pad; /* ldy = n + y_pad */
    size_t ln_sb;
    const char *force; /* "rows", "tiles" or NULL */
    int split;         /* -1 auto, 0 / 1 forced */
    size_t chunk;      /* 0: the device's rule */
} gemm_case;

/* What the side parameters (bias, LayerNorm) of a product with weights of dtype dt are stored
 * as, and what an int8 weight is quantized from: half. */
static ke_dtype side_dtype(ke_dtype dt) { return dt == KE_DTYPE_I8 ? KE_DTYPE_F16 : dt; }

static const char *dtype_label(ke_dtype dt)
{
    return dt == KE_DTYPE_I8 ? "int8" : dt == KE_DTYPE_F16 ? "f16" : "f32";
}

/* int8 weights: wf (n, k) becomes what the device multiplies by, the codes times their row's
 * scale, quantized from w (of dtype src) as the upload quantizes it. */
static void dequantized(const void *w, ke_dtype src, size_t n, size_t k, float *wf)
{
    ke_tensor t = {.dtype = src, .ndim = 2, .shape = {(int64_t)n, (int64_t)k}, .data = w}, q;
    if (ke_q8_tensor_new(&t, &q) != KS_OK)
        fail_msg("%s", ks_error_message());
    ke_tensor_read_f32(&q, 0, n * k, wf);
    ke_q8_tensor_free(&q);
}

#define CANARY 1234.5f

/* Runs c and checks every output, the canaries around Y, and (stats) the statistics. */
static void run_case(fixture *fx, const gemm_case *c)
{
    const size_t m = c->m, n = c->n, k = c->k, ldx = k + c->x_pad, ldy = n + c->y_pad;
    const size_t src_rows = m + 3; /* X has more rows than m: the gather picks among them */
    const size_t x_len = c->x_off + src_rows * ldx + 2, y_len = c->y_off + m * ldy + 5;
    const size_t sb = c->ln_sb ? c->ln_sb : KE_CL_STAT_SB, ln_nb = (k + sb - 1) / sb;
    const size_t out_nb = (n + KE_CL_STAT_SB - 1) / KE_CL_STAT_SB;

    float *x = malloc(x_len * sizeof *x), *wf = malloc(n * k * sizeof *wf);
    float *bf = malloc(n * sizeof *bf), *gf = malloc(k * sizeof *gf), *betaf = malloc(k * 4);
    float *y0 = malloc(y_len * sizeof *y0), *y = malloc(y_len * sizeof *y);
    float *want = malloc(m * n * sizeof *want);
    cl_float2 *xst = malloc(src_rows * ln_nb * sizeof *xst);
    cl_float2 *ost = malloc(m * out_nb * sizeof *ost), *ost_want = malloc(out_nb * sizeof *ost);
    cl_int *gather = malloc(m * sizeof *gather);
    assert_true(x && wf && bf && gf && betaf && y0 && y && want && xst && ost && ost_want &&
                gather);
    for (size_t i = 0; i < x_len; i++)
        x[i] = frand() * 2.0f + 0.5f; /* an offset: LayerNorm has a mean to remove */
    const float ws = 1.0f / sqrtf((float)k);
    for (size_t i = 0; i < n * k; i++)
        wf[i] = frand() * ws * 2.0f;
    for (size_t i = 0; i < n; i++)
        bf[i] = frand();
    for (size_t i = 0; i < k; i++) {
        gf[i] = 1.0f + 0.1f * frand();
        betaf[i] = 0.1f * frand();
    }
    const ke_dtype side = side_dtype(c->dt);
    void *w = to_dtype(wf, n * k, side), *b = to_dtype(bf, n, side);
    void *g = to_dtype(gf, k, side), *beta = to_dtype(betaf, k, side);
    if (c->dt == KE_DTYPE_I8)
        dequantized(w, side, n, k, wf);
    for (size_t i = 0; i < y_len; i++)
        y0[i] = CANARY;
    for (size_t r = 0; r < m; r++)
        for (size_t j = 0; j < n; j++)
            y0[c->y_off + r * ldy + j] = frand();
    for (size_t r = 0; r < m; r++)
        gather[r] = c->gather ? (cl_int)((r * 7 + 2) % src_rows) : (cl_int)r;
    for (size_t r = 0; r < src_rows; r++)
        ts_cl_block_stats(x + c->x_off + r * ldx, k, sb, xst + r * ln_nb);

    /* the reference, in double */
    ts_cl_linear ref = {.m = m,
                        .n = n,
                        .k = k,
                        .x = x + c->x_off,
                        .ldx = ldx,
                        .gather = gather,
                        .gamma = c->ln ? gf : NULL,
                        .beta = betaf,
                        .w = wf,
                        .bias = c->bias ? bf : NULL,
                        .act = c->act,
                        .y0 = y0 + c->y_off,
                        .ldy = ldy,
                        .acc_cols = c->accumulate ? n : 0};
    ts_cl_linear_ref(&ref, want, NULL);

    ke_tensor tw = {.dtype = side, .ndim = 2, .shape = {(int64_t)n, (int64_t)k}, .data = w};
    ke_tensor tb = {.dtype = side, .ndim = 1, .shape = {(int64_t)n}, .data = b};
    const ke_tensor *wp[1] = {&tw}, *bp[1] = {&tb};
    ke_cl_weight wt;
    ke_cl_gemm_force_chunk(fx->gemm, c->chunk);
    if (ke_cl_weight_upload(fx->gemm, c->dt, wp, bp, 1, "test", &wt, NULL) != KS_OK)
        fail_msg("upload: %s", ks_error_message());
    if (!c->bias)
        kc_context_buffer_free(fx->ctx, &wt.bias);
    size_t es = side == KE_DTYPE_F16 ? 2 : 4;
    cl_mem bx = ts_cl_upload(fx->ctx, x, x_len * 4), by = ts_cl_upload(fx->ctx, y0, y_len * 4);
    cl_mem bg = ts_cl_upload(fx->ctx, g, k * es), bbeta = ts_cl_upload(fx->ctx, beta, k * es);
    cl_mem bst = ts_cl_upload(fx->ctx, xst, src_rows * ln_nb * sizeof *xst);
    cl_mem bgat = ts_cl_upload(fx->ctx, gather, m * sizeof *gather);
    cl_mem bost = ts_cl_upload(fx->ctx, ost, m * out_nb * sizeof *ost);
    ke_cl_gemm_args a = {.m = m,
                         .w = &wt,
                         .x = bx,
                         .x_offset = c->x_off,
                         .ldx = ldx,
                         .gather = c->gather ? bgat : NULL,
                         .ln_stats = c->ln ? bst : NULL,
                         .ln_w = bg,
                         .ln_b = bbeta,
                         .ln_sb = sb,
                         .ln_eps = 1e-5f,
                         .y = by,
                         .y_offset = c->y_off,
                         .ldy = ldy,
                         .act = c->act,
                         .accumulate = c->accumulate,
                         .stats_out = c->stats ? bost : NULL};
    if (ke_cl_gemm_force(fx->gemm, c->force, c->split) != KS_OK)
        fail_msg("force: %s", ks_error_message());
    if (ke_cl_gemm_run(fx->gemm, NULL, &a, "test") != KS_OK)
        fail_msg("ke_cl_gemm_run: %s", ks_error_message());
    const char *variant = ke_cl_gemm_last_variant(fx->gemm);
    ts_cl_download(fx->ctx, by, 0, y_len * 4, y);
    if (c->stats)
        ts_cl_download(fx->ctx, bost, 0, m * out_nb * sizeof *ost, ost);
    assert_int_equal(ke_cl_gemm_force(fx->gemm, NULL, -1), KS_OK);
    ke_cl_gemm_force_chunk(fx->gemm, 0);

    size_t bad = 0;
    for (size_t i = 0; i < y_len; i++) {
        size_t rel = i - c->y_off, r = rel / ldy, j = rel % ldy;
        bool inside = i >= c->y_off && r < m && j < n;
        double tol = inside ? 2e-4 * sqrt((double)k) * (1.0 + fabs((double)want[r * n + j])) : 0;
        float expect = inside ? want[r * n + j] : y0[i];
        if (!(fabs((double)y[i] - expect) <= tol) && bad++ < 5)
            print_message("  %s: y[%zu] (row %zu col %zu%s) = %.8g, want %.8g\n", variant, i, r, j,
                          inside ? "" : ", outside Y", (double)y[i], (double)expect);
    }
    for (size_t r = 0; c->stats && r < m; r++) {
        ts_cl_block_stats(want + r * n, n, KE_CL_STAT_SB, ost_want);
        for (size_t j = 0; j < out_nb; j++) {
            double dm = fabs((double)ost[r * out_nb + j].s[0] - ost_want[j].s[0]);
            double d2 = fabs((double)ost[r * out_nb + j].s[1] - ost_want[j].s[1]);
            if ((dm > 1e-3 || d2 > 1e-3 * (1.0 + ost_want[j].s[1])) && bad++ < 5)
                print_message("  %s: statistics of row %zu block %zu: (%g, %g), want (%g, %g)\n",
                              variant, r, j, (double)ost[r * out_nb + j].s[0],
                              (double)ost[r * out_nb + j].s[1], (double)ost_want[j].s[0],
                              (double)ost_want[j].s[1]);
        }
    }
    if (bad)
        fail_msg("m %zu n %zu k %zu %s bias %d acc %d ln %d gather %d act %d stats %d variant %s "
                 "chunk %zu: %zu wrong",
                 m, n, k, dtype_label(c->dt), c->bias, c->accumulate, c->ln, c->gather, c->act,
                 c->stats, variant, wt.chunk_len, bad);

    cl_mem bufs[] = {bx, by, bg, bbeta, bst, bgat, bost, wt.w, wt.bias, wt.scale};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        kc_context_buffer_free(fx->ctx, &bufs[i]);
    free(x), free(wf), free(bf), free(gf), free(betaf), free(y0), free(y), free(want);
    free(xst), free(ost), free(ost_want), free(gather), free(w), free(b), free(g), free(beta);
}

/* Runs c automatically and through each family forced, chunks in one group and split. */
static void run_all_variants(fixture *fx, gemm_case c)
{
    run_case(fx, &c);
    for (size_t v = 0; v < ke_cl_gemm_variant_count(); v++) {
        c.force = ke_cl_gemm_variant_name(v);
        c.split = 0;
        run_case(fx, &c);
        c.split = 1;
        run_case(fx, &c);
    }
}

/* ---- tests -------------------------------------------------------------------------------- */

/* Edge shapes: tiny, odd, not multiples of any tile or vector width. */
static void edge_shapes(fixture *fx, ke_dtype dt)
{
    static const size_t shapes[][3] = {{1, 1, 1},   {1, 4, 5},     {3, 7, 9},    {8, 33, 17},
                                       {9, 64, 64}, {65, 129, 31}, {130, 5, 200}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        gemm_case c = {.m = shapes[s][0],
                       .n = shapes[s][1],
                       .k = shapes[s][2],
                       .dt = dt,
                       .bias = s % 2 == 0,
                       .act = -1,
                       .split = -1,
                       .chunk = s % 3 == 1 ? 16 : 0};
        run_all_variants(fx, c);
    }
}

/* Offsets, strides, residual, activation, gathered rows, the LayerNorm prologue and the
 * statistics epilogue, together and alone. */
static void fused_prologue_epilogue(fixture *fx, ke_dtype dt)
{
    gemm_case c = {.m = 5,
                   .n = 100,
                   .k = 48,
                   .dt = dt,
                   .bias = true,
                   .accumulate = true,
                   .ln = true,
                   .stats = true,
                   .act = -1,
                   .x_off = 3,
                   .x_pad = 5,
                   .y_off = 7,
                   .y_pad = 3,
                   .split = -1};
    run_all_variants(fx, c);
    c = (gemm_case){.m = 71,
                    .n = 64,
                    .k = 100,
                    .dt = dt,
                    .bias = true,
                    .ln = true,
                    .gather = true,
                    .act = KE_ACT_GELU,
                    .stats = true,
                    .split = -1,
                    .chunk = 32};
    run_all_variants(fx, c);
    c = (gemm_case){.m = 2,
                    .n = 48,
                    .k = 48,
                    .dt = dt,
                    .ln = true,
                    .ln_sb = 16,
                    .act = KE_ACT_QUICK_GELU,
                    .split = -1};
    run_all_variants(fx, c);
}

static void test_edge_shapes(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    edge_shapes(fx, KE_DTYPE_F32);
    edge_shapes(fx, KE_DTYPE_F16);
}

static void test_fused_prologue_epilogue(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    fused_prologue_epilogue(fx, KE_DTYPE_F32);
    fused_prologue_epilogue(fx, KE_DTYPE_F16);
}

/* The model's shapes at the tiny checkpoint's widths, a decode and a prefill of each. */
static void test_model_like(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    static const size_t nk[][2] = {{144, 48}, {48, 48}, {100, 48}, {48, 100}, {65037, 48}};
    for (size_t s = 0; s < sizeof nk / sizeof nk[0]; s++)
        for (size_t m = 1; m <= 71; m += 70) {
            gemm_case c = {.m = m,
                           .n = nk[s][0],
                           .k = nk[s][1],
                           .dt = KE_DTYPE_F16,
                           .bias = s < 4,
                           .ln = true,
                           .act = -1,
                           .split = -1};
            run_case(fx, &c);
        }
}

/* The canonical order: every row's result is the same bits however the launch is made. */
static void rows_do_not_depend_on_the_batch(fixture *fx, ke_dtype dt)
{
    const size_t n = 100, k = 96, rows = 150;
    const ke_dtype side = side_dtype(dt);
    float *wf = malloc(n * k * sizeof *wf), *x = malloc(rows * k * sizeof *x);
    float *bf = malloc(n * sizeof *bf), *gf = malloc(k * 4), *betaf = malloc(k * 4);
    float *full = malloc(rows * n * 4), *part = malloc(rows * n * 4);
    cl_float2 *st = malloc(rows * 3 * sizeof *st);
    cl_int *gat = malloc(rows * sizeof *gat);
    assert_true(wf && x && bf && gf && betaf && full && part && st && gat);
    for (size_t i = 0; i < n * k; i++)
        wf[i] = frand() * 0.2f;
    for (size_t i = 0; i < rows * k; i++)
        x[i] = frand() * 3.0f;
    for (size_t i = 0; i < n; i++)
        bf[i] = frand();
    for (size_t i = 0; i < k; i++)
        gf[i] = 1.0f + 0.1f * frand(), betaf[i] = 0.1f * frand();
    for (size_t r = 0; r < rows; r++)
        ts_cl_block_stats(x + r * k, k, KE_CL_STAT_SB, st + r * 3);
    void *w = to_dtype(wf, n * k, side), *b = to_dtype(bf, n, side);
    void *g = to_dtype(gf, k, side), *beta = to_dtype(betaf, k, side);
    ke_tensor tw = {.dtype = side, .ndim = 2, .shape = {(int64_t)n, (int64_t)k}, .data = w};
    ke_tensor tb = {.dtype = side, .ndim = 1, .shape = {(int64_t)n}, .data = b};
    const ke_tensor *wp[1] = {&tw}, *bp[1] = {&tb};
    ke_cl_weight wt;
    ke_cl_gemm_force_chunk(fx->gemm, 32); /* three chunks: the split path has work */
    assert_int_equal(ke_cl_weight_upload(fx->gemm, dt, wp, bp, 1, "test", &wt, NULL), KS_OK);
    ke_cl_gemm_force_chunk(fx->gemm, 0);
    size_t es = side == KE_DTYPE_F16 ? 2 : 4;
    cl_mem bx = ts_cl_upload(fx->ctx, x, rows * k * 4),
           by = ts_cl_upload(fx->ctx, full, rows * n * 4);
    cl_mem bg = ts_cl_upload(fx->ctx, g, k * es), bbeta = ts_cl_upload(fx->ctx, beta, k * es);
    cl_mem bst = ts_cl_upload(fx->ctx, st, rows * 3 * sizeof *st);
    cl_mem bgat = ts_cl_upload(fx->ctx, gat, rows * sizeof *gat);
    ke_cl_gemm_args a = {.m = rows,
                         .w = &wt,
                         .x = bx,
                         .ldx = k,
                         .ln_stats = bst,
                         .ln_w = bg,
                         .ln_b = bbeta,
                         .ln_sb = KE_CL_STAT_SB,
                         .ln_eps = 1e-5f,
                         .y = by,
                         .ldy = n,
                         .act = KE_ACT_GELU};
    assert_int_equal(ke_cl_gemm_force(fx->gemm, "tiles", -1), KS_OK);
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "test"), KS_OK);
    ts_cl_download(fx->ctx, by, 0, rows * n * 4, full);
    static const size_t ms[] = {1, 2, 3, 5, 8, 9, 17, 33, 64, 65, 150};
    const char *force[] = {NULL, "rows", "tiles"};
    size_t diff = 0;
    for (size_t f = 0; f < 3; f++)
        for (int split = 0; split < 2; split++)
            for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
                /* rows gathered back to front: each row sits elsewhere in the launch */
                size_t m = ms[i];
                for (size_t r = 0; r < m; r++)
                    gat[r] = (cl_int)(m - 1 - r);
                assert_int_equal(kc_context_write(fx->ctx, bgat, true, 0, m * sizeof *gat, gat,
                                                  NULL),
                                 KS_OK);
                a.m = m;
                a.gather = bgat;
                assert_int_equal(ke_cl_gemm_force(fx->gemm, force[f], split), KS_OK);
                if (ke_cl_gemm_run(fx->gemm, NULL, &a, "test") != KS_OK)
                    fail_msg("%s", ks_error_message());
                ts_cl_download(fx->ctx, by, 0, m * n * 4, part);
                for (size_t r = 0; r < m; r++)
                    if (memcmp(part + r * n, full + (m - 1 - r) * n, n * 4) != 0 && diff++ < 5)
                        print_message("  %s split %d m %zu: row %zu differs from the "
                                      "150-row launch\n",
                                      ke_cl_gemm_last_variant(fx->gemm), split, m, m - 1 - r);
            }
    assert_int_equal(ke_cl_gemm_force(fx->gemm, NULL, -1), KS_OK);
    if (diff)
        fail_msg("%zu rows changed with the batch (%s weights)", diff, dtype_label(dt));
    cl_mem bufs[] = {bx, by, bg, bbeta, bst, bgat, wt.w, wt.bias, wt.scale};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        kc_context_buffer_free(fx->ctx, &bufs[i]);
    free(wf), free(x), free(bf), free(gf), free(betaf), free(full), free(part), free(st);
    free(gat), free(w), free(b), free(g), free(beta);
}

static void test_rows_do_not_depend_on_the_batch(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    rows_do_not_depend_on_the_batch(fx, KE_DTYPE_F32);
    rows_do_not_depend_on_the_batch(fx, KE_DTYPE_F16);
}

/* int8 weights (quant.h): every check above, with biases and LayerNorms in half. */
static void test_int8_edge_shapes(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    edge_shapes(fx, KE_DTYPE_I8);
}

static void test_int8_fused_prologue_epilogue(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    fused_prologue_epilogue(fx, KE_DTYPE_I8);
}

static void test_int8_rows_do_not_depend_on_the_batch(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    rows_do_not_depend_on_the_batch(fx, KE_DTYPE_I8);
}

/* int8 weights against the reference backend's product on the same codes (ke_op_linear on
 * ke_q8_tensor_new's tensor): the two sum in different orders, so each output may differ by
 * the rounding of two f32 sums of k terms, (2k + 8) units of 2^-24 of the sum of |terms| - far
 * below the quantization error itself (a product with the f16 weights misses by ~1e-3 of it). */
static void test_int8_matches_the_reference_op(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    static const size_t shapes[][4] = {/* m, n, k, chunk */
                                       {1, 144, 48, 0},
                                       {8, 100, 48, 0},
                                       {71, 48, 100, 0},
                                       {3, 65, 300, 64},
                                       {2, 300, 517, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        float *x = malloc(m * k * 4), *wf = malloc(n * k * 4), *bf = malloc(n * 4);
        float *want = malloc(m * n * 4), *got = malloc(m * n * 4);
        float *scratch = malloc(ke_op_linear_scratch(k) * 4);
        assert_true(x && wf && bf && want && got && scratch);
        for (size_t i = 0; i < m * k; i++)
            x[i] = frand() * 2.0f;
        for (size_t i = 0; i < n * k; i++)
            wf[i] = frand() * (i % 7 == 0 ? 0.5f : 0.05f); /* rows with outliers, as trained */
        for (size_t i = 0; i < n; i++)
            bf[i] = frand();
        void *w = to_dtype(wf, n * k, KE_DTYPE_F16), *b = to_dtype(bf, n, KE_DTYPE_F16);
        ke_tensor tw = {.dtype = KE_DTYPE_F16,
                        .ndim = 2,
                        .shape = {(int64_t)n, (int64_t)k},
                        .data = w};
        ke_tensor tb = {.dtype = KE_DTYPE_F16, .ndim = 1, .shape = {(int64_t)n}, .data = b};
        ke_tensor q;
        assert_int_equal(ke_q8_tensor_new(&tw, &q), KS_OK);
        ke_op_linear(x, m, &q, &tb, want, scratch);

        const ke_tensor *wp[1] = {&tw}, *bp[1] = {&tb};
        ke_cl_weight wt;
        ke_cl_gemm_force_chunk(fx->gemm, shapes[s][3]);
        if (ke_cl_weight_upload(fx->gemm, KE_DTYPE_I8, wp, bp, 1, "int8", &wt, NULL) != KS_OK)
            fail_msg("upload: %s", ks_error_message());
        ke_cl_gemm_force_chunk(fx->gemm, 0);
        assert_non_null(wt.scale);
        cl_mem bx = ts_cl_upload(fx->ctx, x, m * k * 4), by = ts_cl_upload(fx->ctx, got, m * n * 4);
        ke_cl_gemm_args a = {.m = m, .w = &wt, .x = bx, .ldx = k, .y = by, .ldy = n, .act = -1};
        const int8_t *codes = q.data;
        for (int v = -1; v < (int)ke_cl_gemm_variant_count(); v++)
            for (int split = 0; split < 2; split++) {
                const char *family = v < 0 ? NULL : ke_cl_gemm_variant_name((size_t)v);
                assert_int_equal(ke_cl_gemm_force(fx->gemm, family, split), KS_OK);
                if (ke_cl_gemm_run(fx->gemm, NULL, &a, "int8") != KS_OK)
                    fail_msg("%s", ks_error_message());
                ts_cl_download(fx->ctx, by, 0, m * n * 4, got);
                for (size_t r = 0; r < m; r++)
                    for (size_t j = 0; j < n; j++) {
                        double mag = 0;
                        for (size_t i = 0; i < k; i++)
                            mag += fabs((double)x[r * k + i] * codes[j * k + i]);
                        mag = mag * q.scale[j] + fabs((double)bf[j]);
                        double tol = (2.0 * (double)k + 8.0) * 0x1p-24 * mag;
                        double d = fabs((double)got[r * n + j] - want[r * n + j]);
                        if (!(d <= tol))
                            fail_msg("%s m %zu n %zu k %zu: y[%zu, %zu] = %.9g, ke_op_linear "
                                     "%.9g (tolerance %.3g)",
                                     ke_cl_gemm_last_variant(fx->gemm), m, n, k, r, j,
                                     (double)got[r * n + j], (double)want[r * n + j], tol);
                    }
            }
        assert_int_equal(ke_cl_gemm_force(fx->gemm, NULL, -1), KS_OK);
        cl_mem bufs[] = {bx, by, wt.w, wt.bias, wt.scale};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            kc_context_buffer_free(fx->ctx, &bufs[i]);
        ke_q8_tensor_free(&q);
        free(x), free(wf), free(bf), free(want), free(got), free(scratch), free(w), free(b);
    }
}

/* The fused Q/K/V projection: Q to Y, K and V to their cache rows, f32 and half. */
static void test_qkv_split_into_cache(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    const size_t q = 16, n = 3 * q, k = 24, m = 5, cache_rows = 40;
    float *wf = malloc(n * k * 4), *x = malloc(m * k * 4), *y = calloc(m * q, 4);
    float *kc = calloc(cache_rows * q, 4), *vc = calloc(cache_rows * q, 4);
    uint16_t *kh = calloc(cache_rows * q, 2), *vh = calloc(cache_rows * q, 2);
    cl_int4 *tok = calloc(m, sizeof *tok);
    assert_true(wf && x && y && kc && vc && kh && vh && tok);
    for (size_t i = 0; i < n * k; i++)
        wf[i] = frand() * 0.3f;
    for (size_t i = 0; i < m * k; i++)
        x[i] = frand();
    for (size_t r = 0; r < m; r++)
        tok[r].s[0] = (cl_int)(37 - 7 * r);
    ke_tensor tw = {.dtype = KE_DTYPE_F32,
                    .ndim = 2,
                    .shape = {(int64_t)n, (int64_t)k},
                    .data = wf};
    const ke_tensor *wp[1] = {&tw}, *bp[1] = {NULL};
    ke_cl_weight wt;
    assert_int_equal(ke_cl_weight_upload(fx->gemm, KE_DTYPE_F32, wp, bp, 1, "qkv", &wt, NULL),
                     KS_OK);
    for (int half = 0; half < 2; half++) {
        size_t es = half ? 2 : 4;
        cl_mem bx = ts_cl_upload(fx->ctx, x, m * k * 4), by = ts_cl_upload(fx->ctx, y, m * q * 4);
        cl_mem bk = ts_cl_upload(fx->ctx, half ? (void *)kh : (void *)kc, cache_rows * q * es);
        cl_mem bv = ts_cl_upload(fx->ctx, half ? (void *)vh : (void *)vc, cache_rows * q * es);
        cl_mem bt = ts_cl_upload(fx->ctx, tok, m * sizeof *tok);
        ke_cl_gemm_args a = {.m = m,
                             .w = &wt,
                             .x = bx,
                             .ldx = k,
                             .y = by,
                             .ldy = q,
                             .act = -1,
                             .split_q = q,
                             .kpool = bk,
                             .vpool = bv,
                             .tokrow = bt,
                             .kv_half = half};
        assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "qkv"), KS_OK);
        ts_cl_download(fx->ctx, by, 0, m * q * 4, y);
        ts_cl_download(fx->ctx, bk, 0, cache_rows * q * es, half ? (void *)kh : (void *)kc);
        ts_cl_download(fx->ctx, bv, 0, cache_rows * q * es, half ? (void *)vh : (void *)vc);
        for (size_t r = 0; r < m; r++)
            for (size_t j = 0; j < n; j++) {
                double s = 0;
                for (size_t i = 0; i < k; i++)
                    s += (double)x[r * k + i] * wf[j * k + i];
                size_t part = j / q, col = j % q, at = (size_t)tok[r].s[0] * q + col;
                float got = part == 0   ? y[r * q + col]
                            : half      ? ke_f16_to_f32(part == 1 ? kh[at] : vh[at])
                            : part == 1 ? kc[at]
                                        : vc[at];
                double tol = half ? 2e-3 * (1 + fabs(s)) : 1e-5 * (1 + fabs(s));
                if (!(fabs(got - s) <= tol))
                    fail_msg("half %d row %zu column %zu (part %zu): %g, want %g", half, r, j, part,
                             (double)got, s);
            }
        cl_mem bufs[] = {bx, by, bk, bv, bt};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            kc_context_buffer_free(fx->ctx, &bufs[i]);
    }
    kc_context_buffer_free(fx->ctx, &wt.w);
    free(wf), free(x), free(y), free(kc), free(vc), free(kh), free(vh), free(tok);
}

static void test_invalid(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    float wf[12] = {0};
    ke_tensor tw = {.dtype = KE_DTYPE_F32, .ndim = 2, .shape = {3, 4}, .data = wf};
    const ke_tensor *wp[1] = {&tw}, *bp[1] = {NULL};
    ke_cl_weight wt;
    assert_int_equal(ke_cl_weight_upload(fx->gemm, KE_DTYPE_F32, wp, bp, 1, "w", &wt, NULL), KS_OK);
    /* n = 3 padded to a multiple of 8 and of the panel width */
    assert_int_equal(wt.ldw, wt.panel > 8 ? wt.panel : 8);
    cl_mem x = ts_cl_upload(fx->ctx, wf, 12 * 4), y = ts_cl_upload(fx->ctx, wf, 12 * 4);
    ke_cl_gemm_args a = {.m = 3, .w = &wt, .x = x, .ldx = 4, .y = y, .ldy = 3, .act = -1};
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "ok"), KS_OK);
    a.m = 0;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "nothing"), KS_OK);
    a.m = 3;
    a.ldx = 3;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "bad"), KS_ERR_INVALID);
    a.ldx = 4;
    a.m = 4; /* x and y hold 3 rows */
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "bad"), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "exceeds its buffer"));
    a.m = 3;
    a.split_q = 1; /* without a cache */
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "bad"), KS_ERR_INVALID);
    a.split_q = 0;
    a.ln_stats = x; /* without the LayerNorm's parameters */
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "bad"), KS_ERR_INVALID);
    assert_int_equal(ke_cl_gemm_force(fx->gemm, "nope", -1), KS_ERR_INVALID);
    float other[8] = {0};
    ke_tensor t2 = {.dtype = KE_DTYPE_F32, .ndim = 2, .shape = {2, 4}, .data = other};
    ke_tensor t3 = {.dtype = KE_DTYPE_F32, .ndim = 2, .shape = {2, 3}, .data = other};
    const ke_tensor *mixed[2] = {&t2, &t3}, *nob[2] = {NULL, NULL};
    assert_int_equal(ke_cl_weight_upload(fx->gemm, KE_DTYPE_F32, mixed, nob, 2, "mixed", &wt, NULL),
                     KS_ERR_INVALID);
    kc_context_buffer_free(fx->ctx, &x);
    kc_context_buffer_free(fx->ctx, &y);
}

/* The tunables text: what it accepts, and errors that name the bad item (no device needed). */
static void test_tune_text(void **state)
{
    (void)state;
    static const char *const good[] = {
        "", "cpu", "nvidia", "gpu", "cpu,rows_cw=8", "gpu,rows_cw=8,groups_goal=0,rows_max_m=1"};
    assert_int_equal(ke_cl_gemm_tune_check(NULL), KS_OK);
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_int_equal(ke_cl_gemm_tune_check(good[i]), KS_OK);
    static const struct {
        const char *text, *message;
    } bad[] = {
        {"amd", "--gemm-tune 'amd': the first item must be cpu, nvidia or gpu"},
        {"rows_cw=8,cpu", "the first item must be cpu, nvidia or gpu"},
        {"cpu,rows_cw", "--gemm-tune: bad item 'rows_cw'"},
        {"cpu,rows_cw=", "bad item 'rows_cw='"},
        {"cpu,rows_cw=-4", "bad item 'rows_cw=-4'"},
        {"cpu,rows_cw=8x", "bad item 'rows_cw=8x'"},
        {"cpu,rows_cw=2000000000", "bad item 'rows_cw=2000000000'"},
        {"nvidia,", "bad item ''"},
        {"cpu,nope=1", "--gemm-tune: unknown tunable 'nope'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(ke_cl_gemm_tune_check(bad[i].text), KS_ERR_INVALID);
        if (!strstr(ks_error_message(), bad[i].message))
            fail_msg("'%s': '%s' does not say '%s'", bad[i].text, ks_error_message(),
                     bad[i].message);
    }
    /* longer than the parser's buffer: refused, not cut short into other text */
    char long_text[320] = "cpu";
    while (strlen(long_text) + 10 < sizeof long_text)
        strcat(long_text, ",rows_nt=8");
    assert_int_equal(ke_cl_gemm_tune_check(long_text), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "longer than 255 characters"));
}

/* The row the gemm was made with is the one in effect: the GPU rows (groups_goal > 0) split a
 * long k across groups where the columns alone give too few (n = 32, k = 2048: at least 4
 * chunks), the cpu row never splits. So a run with --gemm-tune nvidia on PoCL cannot pass by
 * testing the cpu row again. And a gemm refuses bad text. */
static void test_tune_in_effect(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    const char *row = gemm_tune && *gemm_tune                                 ? gemm_tune
                      : kc_context_device(fx->ctx)->type & CL_DEVICE_TYPE_CPU ? "cpu"
                                                                              : "gpu";
    size_t chunk = ke_cl_gemm_chunk(fx->gemm, 32, 2048);
    print_message("row %s: chunks of %zu for n = 32, k = 2048\n", row, chunk);
    if (strchr(row, ','))
        print_message("overrides given: the split is theirs, not checked\n");
    else if (!strcmp(row, "cpu"))
        assert_int_equal(chunk, 2048);
    else
        assert_true(chunk <= 512);
    ke_cl_gemm *bad = NULL;
    assert_int_equal(ke_cl_gemm_new(fx->ctx, "cpu,rows_cw=x", &bad), KS_ERR_INVALID);
    assert_null(bad);
    assert_non_null(strstr(ks_error_message(), "ke_cl_gemm_new: --gemm-tune: bad item"));
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gemm-tune") && i + 1 < argc) {
            gemm_tune = argv[++i];
        } else {
            fprintf(stderr, "usage: %s [--gemm-tune ROW[,KEY=VALUE...]]\n", argv[0]);
            return 2;
        }
    }
    if (ke_cl_gemm_tune_check(gemm_tune) != KS_OK) {
        fprintf(stderr, "%s\n", ks_error_message());
        return 2;
    }
    if (gemm_tune)
        print_message("--gemm-tune %s\n", gemm_tune);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tune_text),
        cmocka_unit_test(test_tune_in_effect),
        cmocka_unit_test(test_edge_shapes),
        cmocka_unit_test(test_fused_prologue_epilogue),
        cmocka_unit_test(test_model_like),
        cmocka_unit_test(test_rows_do_not_depend_on_the_batch),
        cmocka_unit_test(test_qkv_split_into_cache),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_int8_edge_shapes),
        cmocka_unit_test(test_int8_fused_prologue_epilogue),
        cmocka_unit_test(test_int8_rows_do_not_depend_on_the_batch),
        cmocka_unit_test(test_int8_matches_the_reference_op),
    };
    /* ctest runs the int8 tests apart under the GPU tunables (their own program to build) */
    const char *only = getenv("KOSMOS_TEST_ONLY"), *skip = getenv("KOSMOS_TEST_SKIP");
    if (only && *only)
        cmocka_set_test_filter(only);
    if (skip && *skip)
        cmocka_set_skip_filter(skip);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
