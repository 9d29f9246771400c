/* Unit tests for the matrix-unit GEMM engine (worker/engine/cl_gemm_mma, kernels/gemm_mma.cl,
 * kernels/mma.cl):
 *   - the macro layer alone on one 16x8x16 problem: every lane's A, B and D registers against
 *     the PTX ISA's fragment tables for mma.m16n8k16 (written out below, independently of the
 *     kernels), and D = A·B + C, with ldmatrix and with plain loads;
 *   - whole products through ke_cl_gemm_run against a host reference with f16-rounded operands
 *     (tolerance from the operands' rounding and k), on shapes that are not multiples of the
 *     tiles, with each fused prologue and epilogue (LayerNorm from row statistics, gathered
 *     rows, bias, quick_gelu / gelu, residual, row statistics, the Q/K/V split into a KV cache);
 *   - a row's bits do not depend on m or on the other rows of the launch;
 *   - the path choice: auto keeps the SIMT kernels off NVIDIA, a forced mma path serves the
 *     products above KE_CL_MMA_MIN_M rows only, mma-ptx is refused off NVIDIA.
 *
 *   test_cl_gemm_mma [--gemm mma-emulated|mma-ptx]
 *
 * mma-emulated (default) runs the emulation of the macro layer (PoCL on CI); mma-ptx the tensor
 * cores on an NVIDIA GPU, after the device probe. Needs an OpenCL device; without one every test
 * skips (KOSMOS_TEST_REQUIRE_ALL=1 makes that a failure). KOSMOS_TEST_DEVICE picks it. */
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
#include "cl_gemm_mma.h"
#include "kc_context.h"
#include "kc_device.h"
#include "model.h"

static ke_gemm_path path_under_test = KE_GEMM_MMA_EMULATED;

typedef struct fixture {
    kc_device_list *list;
    kc_context *ctx; /* NULL: no device, tests skip */
    ke_cl_gemm *gemm;
    ke_mma_variant variant; /* the one the path chose */
} fixture;

#define REQUIRE_DEVICE(fx) TS_CL_REQUIRE((fx)->gemm)

static int group_setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    const kc_device_info *dev = NULL;
    if (ts_cl_open(&fx->list, &dev, &fx->ctx) != 0)
        return -1;
    if (!fx->ctx)
        return 0;
    print_message("--gemm %s\n", ke_gemm_path_name(path_under_test));
    if (ke_cl_gemm_new(fx->ctx, NULL, &fx->gemm) != KS_OK) {
        fprintf(stderr, "%s\n", ks_error_message());
        return -1;
    }
    if (ke_cl_gemm_set_path(fx->gemm, path_under_test) != KS_OK) {
        fprintf(stderr, "%s\n", ks_error_message());
        return -1;
    }
    print_message("path: %s\n", ke_cl_gemm_path_report(fx->gemm));
    /* the path's own check of the whole engine against the SIMT kernels passed */
    if (!strstr(ke_cl_gemm_path_report(fx->gemm), "product equals the SIMT kernels'")) {
        fprintf(stderr, "the path's report lacks its engine check\n");
        return -1;
    }
    if (path_under_test == KE_GEMM_MMA_PTX) {
        ke_cl_mma e;
        char report[512];
        if (ke_cl_mma_probe(fx->ctx, 0, &e, report, sizeof report) != KS_OK) {
            fprintf(stderr, "%s\n", report);
            return -1;
        }
        fx->variant = e.variant;
    } else {
        fx->variant = (ke_mma_variant){.ldmatrix = true, .cp_async = true};
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

static float f16_round(float v) { return ke_f16_to_f32(ke_f32_to_f16(v)); }

/* ---- the macro layer against the PTX ISA's fragment tables -------------------------------- */

/* PTX ISA 8.x, "Matrix fragments for mma.m16n8k16 with floating point type", with
 * groupID = laneid >> 2 and threadID_in_group = laneid % 4:
 *   A a_i (i < 8): row = groupID + 8 for a2, a3, a6, a7, else groupID;
 *                  col = threadID_in_group * 2 + (i & 1), + 8 for i >= 4
 *   B b_i (i < 4): row = threadID_in_group * 2 + (i & 1), + 8 for i >= 2; col = groupID
 *   C c_i (i < 4): row = groupID, + 8 for c2, c3; col = threadID_in_group * 2 + (i & 1)
 * Two halves a register, a_(2j) in the low bits of register j. */
static void ptx_a(int lane, int i, int *row, int *col)
{
    int group = lane >> 2, tig = lane % 4;
    *row = (i == 2 || i == 3 || i == 6 || i == 7) ? group + 8 : group;
    *col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}

static void ptx_b(int lane, int i, int *row, int *col)
{
    *row = (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0);
    *col = lane >> 2;
}

static void ptx_c(int lane, int i, int *row, int *col)
{
    *row = (lane >> 2) + (i >= 2 ? 8 : 0);
    *col = (lane % 4) * 2 + (i & 1);
}

/* One 16x8x16 problem through mma_fragments built as v, checked bit for bit: distinct values
 * in quarters (exact in f16, and every sum exact in f32 whatever its order). */
static void check_fragments(fixture *fx, const ke_mma_variant *v)
{
    char desc[64];
    ke_mma_variant_describe(v, desc, sizeof desc);
    ke_cl_mma e;
    if (ke_cl_mma_build(fx->ctx, v, 0, &e) != KS_OK)
        fail_msg("%s", ks_error_message());
    uint16_t a[256], b[128];
    float af[256], bf[128], c[128];
    for (int i = 0; i < 256; i++) {
        af[i] = (float)(i - 128) / 4.0f;
        a[i] = ke_f32_to_f16(af[i]);
    }
    for (int i = 0; i < 128; i++) {
        bf[i] = (float)((i * 3) % 128 - 64) / 4.0f;
        b[i] = ke_f32_to_f16(bf[i]);
        c[i] = (float)(i - 64);
    }
    ke_mma_frags f;
    if (ke_cl_mma_fragments(fx->ctx, &e, a, b, c, &f) != KS_OK)
        fail_msg("%s", ks_error_message());
    size_t bad = 0;
    for (int lane = 0; lane < 32; lane++) {
        for (int i = 0; i < 8; i++) {
            int r, col;
            ptx_a(lane, i, &r, &col);
            uint16_t got = (uint16_t)(f.a[lane][i / 2] >> (16 * (i & 1)));
            if (got != a[r * 16 + col] && bad++ < 5)
                print_message("  %s: lane %d a%d = %g, want A[%d][%d] = %g\n", desc, lane, i,
                              (double)ke_f16_to_f32(got), r, col, (double)af[r * 16 + col]);
        }
        for (int i = 0; i < 4; i++) {
            int r, col;
            ptx_b(lane, i, &r, &col);
            uint16_t got = (uint16_t)(f.b[lane][i / 2] >> (16 * (i & 1)));
            if (got != b[r * 8 + col] && bad++ < 5)
                print_message("  %s: lane %d b%d = %g, want B[%d][%d] = %g\n", desc, lane, i,
                              (double)ke_f16_to_f32(got), r, col, (double)bf[r * 8 + col]);
        }
        for (int i = 0; i < 4; i++) {
            int r, col;
            ptx_c(lane, i, &r, &col);
            double want = c[r * 8 + col];
            for (int k = 0; k < 16; k++)
                want += (double)af[r * 16 + k] * bf[k * 8 + col];
            if (f.d_regs[lane][i] != (float)want && bad++ < 5)
                print_message("  %s: lane %d d%d = %g, want D[%d][%d] = %g\n", desc, lane, i,
                              (double)f.d_regs[lane][i], r, col, want);
            if (f.d[r * 8 + col] != (float)want && bad++ < 5)
                print_message("  %s: D[%d][%d] = %g, want %g\n", desc, r, col,
                              (double)f.d[r * 8 + col], want);
        }
    }
    print_message("  %-36s %zu wrong\n", desc, bad);
    if (bad)
        fail_msg("%s: %zu registers differ from the PTX fragment tables", desc, bad);
}

static void test_fragment_layout(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    if (path_under_test == KE_GEMM_MMA_PTX) {
        check_fragments(fx, &fx->variant);
        return;
    }
    /* the two variants test_products runs (cp.async changes nothing in mma_fragments' code
     * under the emulation, only which way gemm_mma stages W) */
    const ke_mma_variant variants[] = {{.ldmatrix = true, .cp_async = true}, {.ldmatrix = false}};
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++)
        check_fragments(fx, &variants[i]);
}

/* ---- whole products against the host ------------------------------------------------------- */

typedef struct mma_case {
    size_t m, n, k;
    bool f32; /* f32 weights (converted to f16 as they are staged), else f16 */
    bool bias, accumulate, ln, gather, stats;
    int act; /* -1 none */
    size_t x_pad, y_off, y_pad;
    size_t split_q; /* > 0: n = 3 * split_q, K and V into a cache */
} mma_case;

#define CANARY 1234.5f

/* Runs c through the mma engine (forced) and checks Y (or Q, K, V), the canaries around Y and
 * the statistics. Returns Y (m, ldy) for callers that compare launches; caller frees. */
static float *run_case(fixture *fx, const mma_case *c, const char *force)
{
    const size_t m = c->m, n = c->n, k = c->k, ldx = k + c->x_pad;
    const size_t width = c->split_q ? c->split_q : n, ldy = width + c->y_pad;
    const size_t src_rows = m + 5, sb = KE_CL_STAT_SB, ln_nb = (k + sb - 1) / sb;
    const size_t out_nb = (width + sb - 1) / sb, y_len = c->y_off + m * ldy + 7;
    const size_t cache_rows = m + 9;
    float *x = malloc(src_rows * ldx * 4), *wf = malloc(n * k * 4), *bf = malloc(n * 4);
    float *gf = malloc(k * 4), *betaf = malloc(k * 4), *y0 = malloc(y_len * 4);
    float *y = malloc(y_len * 4), *want = malloc(m * n * 4), *bound = malloc(m * n * 4);
    float *kc = calloc(cache_rows * c->split_q + 1, 4),
          *vc = calloc(cache_rows * c->split_q + 1, 4);
    uint16_t *wh = malloc(n * k * 2), *bh = malloc(n * 2), *gh = malloc(k * 2);
    uint16_t *betah = malloc(k * 2);
    cl_float2 *xst = malloc(src_rows * ln_nb * sizeof *xst);
    cl_float2 *ost = calloc(m * out_nb, sizeof *ost), *ost_want = malloc(out_nb * sizeof *ost);
    cl_int *gather = malloc(m * sizeof *gather);
    cl_int4 *tok = calloc(m, sizeof *tok);
    assert_true(x && wf && bf && gf && betaf && y0 && y && want && bound && kc && vc && wh && bh &&
                gh && betah && xst && ost && ost_want && gather && tok);
    for (size_t i = 0; i < src_rows * ldx; i++)
        x[i] = frand() * 2.0f + 0.3f;
    for (size_t i = 0; i < n * k; i++) {
        wh[i] = ke_f32_to_f16(frand() * 2.0f / sqrtf((float)k));
        wf[i] = ke_f16_to_f32(wh[i]);
    }
    for (size_t i = 0; i < n; i++) {
        bh[i] = ke_f32_to_f16(frand());
        bf[i] = ke_f16_to_f32(bh[i]);
    }
    for (size_t i = 0; i < k; i++) {
        gh[i] = ke_f32_to_f16(1.0f + 0.2f * frand());
        gf[i] = ke_f16_to_f32(gh[i]);
        betah[i] = ke_f32_to_f16(0.1f * frand());
        betaf[i] = ke_f16_to_f32(betah[i]);
    }
    for (size_t i = 0; i < y_len; i++)
        y0[i] = CANARY;
    for (size_t r = 0; r < m; r++) {
        for (size_t j = 0; j < width; j++)
            y0[c->y_off + r * ldy + j] = frand();
        gather[r] = c->gather ? (cl_int)((r * 11 + 3) % src_rows) : (cl_int)r;
        tok[r].s[0] = (cl_int)(cache_rows - 1 - r);
    }
    for (size_t r = 0; r < src_rows; r++)
        ts_cl_block_stats(x + r * ldx, k, sb, xst + r * ln_nb);

    /* the reference: operands rounded to f16 as the engine rounds them, sums in double; `bound`
     * is sum |x w|, what both the f32 sums and an f16 rounding that lands on the other side of a
     * tie (the engine normalizes in f32, this reference in double) scale with */
    ts_cl_linear ref = {.m = m,
                        .n = n,
                        .k = k,
                        .x = x,
                        .ldx = ldx,
                        .gather = gather,
                        .gamma = c->ln ? gf : NULL,
                        .beta = betaf,
                        .round_x = f16_round,
                        .w = wf,
                        .bias = c->bias ? bf : NULL,
                        .act = c->act,
                        .y0 = y0 + c->y_off,
                        .ldy = ldy,
                        .acc_cols = c->accumulate ? width : 0};
    ts_cl_linear_ref(&ref, want, bound);

    ke_tensor tw = {.dtype = KE_DTYPE_F16,
                    .ndim = 2,
                    .shape = {(int64_t)n, (int64_t)k},
                    .data = wh};
    ke_tensor tb = {.dtype = KE_DTYPE_F16, .ndim = 1, .shape = {(int64_t)n}, .data = bh};
    const ke_tensor *wp[1] = {&tw}, *bp[1] = {c->bias ? &tb : NULL};
    ke_cl_weight wt;
    const ke_dtype dt = c->f32 ? KE_DTYPE_F32 : KE_DTYPE_F16;
    if (ke_cl_weight_upload(fx->gemm, dt, wp, bp, 1, "test", &wt, NULL) != KS_OK)
        fail_msg("upload: %s", ks_error_message());
    const size_t es = c->f32 ? 4 : 2;
    void *g_dt = malloc(k * es), *beta_dt = malloc(k * es);
    assert_true(g_dt && beta_dt);
    ke_convert(g_dt, dt, gh, KE_DTYPE_F16, k);
    ke_convert(beta_dt, dt, betah, KE_DTYPE_F16, k);
    cl_mem bx = ts_cl_upload(fx->ctx, x, src_rows * ldx * 4),
           by = ts_cl_upload(fx->ctx, y0, y_len * 4);
    cl_mem bg = ts_cl_upload(fx->ctx, g_dt, k * es), bbeta = ts_cl_upload(fx->ctx, beta_dt, k * es);
    cl_mem bst = ts_cl_upload(fx->ctx, xst, src_rows * ln_nb * sizeof *xst);
    cl_mem bgat = ts_cl_upload(fx->ctx, gather, m * sizeof *gather);
    cl_mem bost = ts_cl_upload(fx->ctx, ost, m * out_nb * sizeof *ost);
    cl_mem bk = ts_cl_upload(fx->ctx, kc, (cache_rows * c->split_q + 1) * 4);
    cl_mem bv = ts_cl_upload(fx->ctx, vc, (cache_rows * c->split_q + 1) * 4);
    cl_mem btok = ts_cl_upload(fx->ctx, tok, m * sizeof *tok);
    ke_cl_gemm_args a = {.m = m,
                         .w = &wt,
                         .x = bx,
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
                         .stats_out = c->stats ? bost : NULL,
                         .split_q = c->split_q,
                         .kpool = bk,
                         .vpool = bv,
                         .tokrow = btok};
    if (ke_cl_gemm_force(fx->gemm, force, -1) != KS_OK)
        fail_msg("force %s: %s", force ? force : "auto", ks_error_message());
    if (ke_cl_gemm_run(fx->gemm, NULL, &a, "test") != KS_OK)
        fail_msg("ke_cl_gemm_run: %s", ks_error_message());
    const char *variant = ke_cl_gemm_last_variant(fx->gemm);
    ts_cl_download(fx->ctx, by, 0, y_len * 4, y);
    ts_cl_download(fx->ctx, bost, 0, m * out_nb * sizeof *ost, ost);
    ts_cl_download(fx->ctx, bk, 0, (cache_rows * c->split_q + 1) * 4, kc);
    ts_cl_download(fx->ctx, bv, 0, (cache_rows * c->split_q + 1) * 4, vc);
    assert_int_equal(ke_cl_gemm_force(fx->gemm, NULL, -1), KS_OK);
    if (force)
        assert_string_equal(variant, force);

    size_t bad = 0;
    double worst = 0;
    for (size_t i = 0; i < y_len; i++) {
        size_t rel = i - c->y_off, r = rel / ldy, j = rel % ldy;
        if (i >= c->y_off && r < m && j < width)
            continue;
        if (y[i] != y0[i] && bad++ < 5)
            print_message("  y[%zu] outside Y = %g, want %g\n", i, (double)y[i], (double)y0[i]);
    }
    for (size_t r = 0; r < m; r++)
        for (size_t j = 0; j < n; j++) {
            size_t part = c->split_q ? j / c->split_q : 0, col = c->split_q ? j % c->split_q : j;
            size_t at = (size_t)tok[r].s[0] * c->split_q + col;
            float got = part == 0 ? y[c->y_off + r * ldy + col] : part == 1 ? kc[at] : vc[at];
            double w = want[r * n + j];
            double tol = bound[r * n + j] * 0x1p-10 + 1e-5 * (1.0 + fabs(w));
            double err = fabs((double)got - w);
            if (err / tol > worst)
                worst = err / tol;
            if (!(err <= tol) && bad++ < 5)
                print_message("  %s: row %zu col %zu = %.8g, want %.8g (tolerance %.3g)\n", variant,
                              r, j, (double)got, w, tol);
        }
    for (size_t r = 0; c->stats && r < m; r++) {
        ts_cl_block_stats(y + c->y_off + r * ldy, width, sb, ost_want); /* of the Y it wrote */
        for (size_t j = 0; j < out_nb; j++) {
            const cl_float2 g = ost[r * out_nb + j], e = ost_want[j];
            if ((fabs((double)g.s[0] - e.s[0]) > 1e-5 * (1 + fabs((double)e.s[0])) ||
                 fabs((double)g.s[1] - e.s[1]) > 1e-5 * (1 + (double)e.s[1])) &&
                bad++ < 5)
                print_message("  statistics of row %zu block %zu: (%g, %g), want (%g, %g)\n", r, j,
                              (double)g.s[0], (double)g.s[1], (double)e.s[0], (double)e.s[1]);
        }
    }
    print_message("  m %4zu n %4zu k %4zu %s bias %d act %2d acc %d ln %d gather %d stats %d "
                  "split %zu: worst error %.2f of the tolerance\n",
                  m, n, k, c->f32 ? "f32" : "f16", c->bias, c->act, c->accumulate, c->ln, c->gather,
                  c->stats, c->split_q, worst);
    if (bad)
        fail_msg("m %zu n %zu k %zu (%s): %zu wrong", m, n, k, variant, bad);

    float *out = malloc(m * ldy * 4);
    assert_non_null(out);
    memcpy(out, y + c->y_off, m * ldy * 4);
    cl_mem bufs[] = {bx, by, bg, bbeta, bst, bgat, bost, bk, bv, btok, wt.w, wt.bias};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        kc_context_buffer_free(fx->ctx, &bufs[i]);
    free(x), free(wf), free(bf), free(gf), free(betaf), free(y0), free(y), free(want);
    free(bound), free(kc), free(vc), free(wh), free(bh), free(gh), free(betah), free(xst);
    free(ost), free(ost_want), free(gather), free(tok), free(g_dt), free(beta_dt);
    return out;
}

/* Shapes that are multiples of nothing (and a few that are), each epilogue once. */
static void test_products(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    const mma_case cases[] = {
        {.m = 1, .n = 1, .k = 1, .act = -1},
        {.m = 3, .n = 7, .k = 9, .bias = true, .act = -1},
        {.m = 130, .n = 75, .k = 61, .bias = true, .act = KE_ACT_QUICK_GELU},
        {.m = 129, .n = 136, .k = 100, .bias = true, .act = KE_ACT_GELU, .x_pad = 3},
        {.m = 200, .n = 48, .k = 160, .accumulate = true, .act = -1, .y_off = 5, .y_pad = 2},
        {.m = 71,
         .n = 100,
         .k = 48,
         .ln = true,
         .gather = true,
         .stats = true,
         .bias = true,
         .act = -1},
        {.m = 65, .n = 96, .k = 40, .ln = true, .split_q = 32, .act = -1, .y_pad = 1},
        {.m = 257,
         .n = 129,
         .k = 33,
         .f32 = true,
         .bias = true,
         .accumulate = true,
         .act = KE_ACT_GELU,
         .stats = true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        free(run_case(fx, &cases[i], "mma"));
}

/* The emulation without ldmatrix and cp.async: the plain fragment loads and copies of the
 * engine (what the probe falls back to) on the same kind of products. */
static void test_products_plain_loads(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    if (path_under_test == KE_GEMM_MMA_PTX)
        skip(); /* the probe chose the variant; test_products ran it */
    const ke_mma_variant plain = {.ldmatrix = false, .cp_async = false};
    if (ke_cl_gemm_use_mma(fx->gemm, &plain) != KS_OK)
        fail_msg("%s", ks_error_message());
    mma_case c = {.m = 150,
                  .n = 140,
                  .k = 70,
                  .bias = true,
                  .ln = true,
                  .stats = true,
                  .act = KE_ACT_QUICK_GELU};
    free(run_case(fx, &c, "mma"));
    assert_int_equal(ke_cl_gemm_set_path(fx->gemm, path_under_test), KS_OK);
}

/* A row's bits whatever m is and wherever the row sits in the launch. */
static void test_rows_do_not_depend_on_the_batch(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    const size_t n = 72, k = 50, rows = 140;
    uint16_t *wh = malloc(n * k * 2);
    float *x = malloc(rows * k * 4), *full = malloc(rows * n * 4), *part = malloc(rows * n * 4);
    cl_int *gat = malloc(rows * sizeof *gat);
    assert_true(wh && x && full && part && gat);
    for (size_t i = 0; i < n * k; i++)
        wh[i] = ke_f32_to_f16(frand() * 0.3f);
    for (size_t i = 0; i < rows * k; i++)
        x[i] = frand();
    ke_tensor tw = {.dtype = KE_DTYPE_F16,
                    .ndim = 2,
                    .shape = {(int64_t)n, (int64_t)k},
                    .data = wh};
    const ke_tensor *wp[1] = {&tw}, *bp[1] = {NULL};
    ke_cl_weight wt;
    assert_int_equal(ke_cl_weight_upload(fx->gemm, KE_DTYPE_F16, wp, bp, 1, "w", &wt, NULL), KS_OK);
    cl_mem bx = ts_cl_upload(fx->ctx, x, rows * k * 4),
           by = ts_cl_upload(fx->ctx, NULL, rows * n * 4);
    cl_mem bgat = ts_cl_upload(fx->ctx, NULL, rows * sizeof *gat);
    ke_cl_gemm_args a = {.m = rows, .w = &wt, .x = bx, .ldx = k, .y = by, .ldy = n, .act = -1};
    assert_int_equal(ke_cl_gemm_force(fx->gemm, "mma", -1), KS_OK);
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "test"), KS_OK);
    ts_cl_download(fx->ctx, by, 0, rows * n * 4, full);
    static const size_t ms[] = {1, 17, 65, 129, 140};
    size_t diff = 0;
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        size_t m = ms[i];
        for (size_t r = 0; r < m; r++)
            gat[r] = (cl_int)(rows - 1 - r); /* back to front: each row elsewhere in its tile */
        assert_int_equal(kc_context_write(fx->ctx, bgat, true, 0, m * sizeof *gat, gat, NULL),
                         KS_OK);
        a.m = m;
        a.gather = bgat;
        assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "test"), KS_OK);
        ts_cl_download(fx->ctx, by, 0, m * n * 4, part);
        for (size_t r = 0; r < m; r++)
            if (memcmp(part + r * n, full + (rows - 1 - r) * n, n * 4) != 0 && diff++ < 5)
                print_message("  m %zu: row %zu differs from the %zu-row launch\n", m, rows - 1 - r,
                              rows);
    }
    assert_int_equal(ke_cl_gemm_force(fx->gemm, NULL, -1), KS_OK);
    cl_mem bufs[] = {bx, by, bgat, wt.w};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        kc_context_buffer_free(fx->ctx, &bufs[i]);
    free(wh), free(x), free(full), free(part), free(gat);
    if (diff)
        fail_msg("%zu rows changed with the batch", diff);
}

/* Which engine runs: the forced path serves the products above KE_CL_MMA_MIN_M rows only;
 * auto keeps the SIMT kernels off NVIDIA; mma-ptx is refused off NVIDIA. */
static void test_path_choice(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    const size_t n = 40, k = 24;
    float *wf = calloc(n * k, 4), *x = calloc(200 * k, 4);
    assert_true(wf && x);
    ke_tensor tw = {.dtype = KE_DTYPE_F32,
                    .ndim = 2,
                    .shape = {(int64_t)n, (int64_t)k},
                    .data = wf};
    const ke_tensor *wp[1] = {&tw}, *bp[1] = {NULL};
    ke_cl_weight w16, w32;
    assert_int_equal(ke_cl_weight_upload(fx->gemm, KE_DTYPE_F16, wp, bp, 1, "w", &w16, NULL),
                     KS_OK);
    assert_int_equal(ke_cl_weight_upload(fx->gemm, KE_DTYPE_F32, wp, bp, 1, "w", &w32, NULL),
                     KS_OK);
    cl_mem bx = ts_cl_upload(fx->ctx, x, 200 * k * 4),
           by = ts_cl_upload(fx->ctx, NULL, 200 * n * 4);
    ke_cl_gemm_args a = {.w = &w16, .x = bx, .ldx = k, .y = by, .ldy = n, .act = -1};
    /* the path under test, set up by the fixture */
    a.m = KE_CL_MMA_MIN_M + 1;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "test"), KS_OK);
    assert_string_equal(ke_cl_gemm_last_variant(fx->gemm), "mma");
    a.m = KE_CL_MMA_MIN_M;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "test"), KS_OK);
    assert_null(strstr(ke_cl_gemm_last_variant(fx->gemm), "mma"));
    a.w = &w32; /* a forced path serves f32 weights too */
    a.m = 200;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "test"), KS_OK);
    assert_string_equal(ke_cl_gemm_last_variant(fx->gemm), "mma");

    const kc_device_info *dev = kc_context_device(fx->ctx);
    bool nvidia = !(dev->type & CL_DEVICE_TYPE_CPU) && strstr(dev->vendor, "NVIDIA");
    assert_int_equal(ke_cl_gemm_set_path(fx->gemm, KE_GEMM_SIMT), KS_OK);
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "test"), KS_OK);
    assert_null(strstr(ke_cl_gemm_last_variant(fx->gemm), "mma"));
    assert_int_equal(ke_cl_gemm_force(fx->gemm, "mma", -1), KS_ERR_INVALID);
    assert_int_equal(ke_cl_gemm_set_path(fx->gemm, KE_GEMM_AUTO), KS_OK);
    print_message("  auto: %s\n", ke_cl_gemm_path_report(fx->gemm));
    a.w = &w16;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, NULL, &a, "test"), KS_OK);
    /* auto keeps the SIMT kernels on every device until the PTX engine's fidelity is measured */
    assert_null(strstr(ke_cl_gemm_last_variant(fx->gemm), "mma"));
    assert_non_null(strstr(ke_cl_gemm_path_report(fx->gemm), "simt: auto"));
    if (!nvidia) {
        assert_int_equal(ke_cl_gemm_set_path(fx->gemm, KE_GEMM_MMA_PTX), KS_ERR_UNSUPPORTED);
        assert_non_null(strstr(ks_error_message(), "needs an NVIDIA GPU"));
    }
    assert_int_equal(ke_cl_gemm_set_path(fx->gemm, path_under_test), KS_OK);
    cl_mem bufs[] = {bx, by, w16.w, w32.w};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        kc_context_buffer_free(fx->ctx, &bufs[i]);
    free(wf), free(x);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gemm") && i + 1 < argc &&
            ke_gemm_path_parse(argv[i + 1], &path_under_test) &&
            (path_under_test == KE_GEMM_MMA_EMULATED || path_under_test == KE_GEMM_MMA_PTX)) {
            i++;
            continue;
        }
        fprintf(stderr, "usage: %s [--gemm mma-emulated|mma-ptx]\n", argv[0]);
        return 2;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fragment_layout),
        cmocka_unit_test(test_products),
        cmocka_unit_test(test_products_plain_loads),
        cmocka_unit_test(test_rows_do_not_depend_on_the_batch),
        cmocka_unit_test(test_path_choice),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
