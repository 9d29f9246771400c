/* Unit tests of kernels/flash_attention.cl and kernels/attention_wide.cl through backend_cl_ops
 * (ke_cl_flash_*), on PoCL:
 *   - flash_attention and attention_wide against ke_op_attention: the vision encoder (257 tokens, head_dim 8, and
 *     the full model's 16 heads of 64), several images in one launch, the resampler (causal and
 *     full), the causal rows of a decoder, head_dim 5; rows not a multiple of the block, keys
 *     not a multiple of the tile;
 *   - a row's bits do not depend on the blocks and tiles it was computed in;
 *   - flash_attention_paged gives the bits of paged_attention (the serial CPU kernel and the GPU
 *     one, both on any device), outputs and statistics, f32 and half cache rows, for prompts
 *     with and without cached keys beside a decode token;
 *   - ke_cl_flash_blocks;
 *   - the OpenCL backend on the tiny checkpoint runs it for the vision encoder, the resampler and
 *     the prefill (its profile names the kernels), with image embeddings within 1e-5 of the old
 *     kernels' and the same logits, bit for bit, for a prefill, a decode and a mixed step.
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

#include "backend.h"
#include "backend_cl.h"
#include "backend_cl_ops.h"
#include "cl_fixture.h"
#include "model.h"
#include "ref_ops.h"

typedef struct fixture {
    kc_device_list *list;
    const kc_device_info *dev;
    kc_context *ctx; /* NULL: no device, tests skip */
    ke_cl_ops *ops;
} fixture;

static fixture fx;

#define REQUIRE_DEVICE() TS_CL_REQUIRE(fx.ctx)

static int setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    if (ts_cl_open(&fx.list, &fx.dev, &fx.ctx) != 0)
        return -1;
    if (fx.ctx && ke_cl_ops_new(fx.ctx, KE_DTYPE_F32, &fx.ops) != KS_OK) {
        fprintf(stderr, "ke_cl_ops_new: %s\n", ks_error_message());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ke_cl_ops_destroy(&fx.ops);
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

static void expect_close(const char *what, const float *got, const float *want, size_t n)
{
    TS_CL_EXPECT_CLOSE(what, got, want, n, 1e-5);
}

/* The two summation orders (the paged attention kernel the ops follow) and three cuttings of
 * the same rows: the device's tiles, odd ones, and one row per block with one chunk per tile. */
static const struct {
    bool serial;
    int block_q, block_k;
} configs[] = {{true, 0, 0},  {true, 7, 3},   {true, 1, 1},
               {false, 0, 0}, {false, 5, 17}, {false, 1, 1}};
enum { N_CONFIGS = sizeof configs / sizeof configs[0] };

static bool was_serial(void)
{
    return !strcmp(ke_cl_ops_paged_attention_kernel(fx.ops), "paged_attention_serial");
}

/* ---- ke_cl_flash_blocks ------------------------------------------------------------------- */

static void test_blocks(void **state)
{
    (void)state;
    /* an image of 257 rows, one of 3, then 70 causal rows of a slot and 1 of another */
    enum { N = 257 + 3 + 70 + 1 };
    cl_int rows[N * 4], blocks[N * 4];
    size_t r = 0;
    for (int i = 0; i < 257; i++, r++)
        memcpy(rows + 4 * r, (cl_int[4]){(cl_int)r, 0, 257, 0}, sizeof(cl_int[4]));
    for (int i = 0; i < 3; i++, r++)
        memcpy(rows + 4 * r, (cl_int[4]){(cl_int)r, 257, 3, 0}, sizeof(cl_int[4]));
    for (int i = 0; i < 70; i++, r++)
        memcpy(rows + 4 * r, (cl_int[4]){(cl_int)r, 5, 30 + i + 1, 0}, sizeof(cl_int[4]));
    memcpy(rows + 4 * r, (cl_int[4]){(cl_int)r, 2, 9, 0}, sizeof(cl_int[4]));
    size_t nb = ke_cl_flash_blocks(rows, N, 64, blocks);
    /* 257 -> 51 51 52 51 52; 3 -> 3; 70 -> 35 35 (causal: the last row's keys); 1 -> 1 */
    static const cl_int want[][4] = {{0, 51, 0, 257},   {51, 51, 0, 257},  {102, 52, 0, 257},
                                     {154, 51, 0, 257}, {205, 52, 0, 257}, {257, 3, 257, 3},
                                     {260, 35, 5, 65},  {295, 35, 5, 100}, {330, 1, 2, 9}};
    assert_int_equal(nb, sizeof want / sizeof want[0]);
    for (size_t b = 0; b < nb; b++)
        for (int c = 0; c < 4; c++)
            assert_int_equal(blocks[4 * b + (size_t)c], want[b][c]);
    /* blocks of one row: one per row, each row's own key count */
    assert_int_equal(ke_cl_flash_blocks(rows, N, 1, blocks), N);
    for (size_t b = 0; b < N; b++) {
        assert_int_equal(blocks[4 * b], (cl_int)b);
        assert_int_equal(blocks[4 * b + 1], 1);
        assert_int_equal(blocks[4 * b + 3], rows[4 * b + 2]);
    }
    assert_int_equal(ke_cl_flash_blocks(rows, 0, 64, blocks), 0);
}

/* ---- flash_attention against ke_op_attention ---------------------------------------------- */

/* One sequence of a launch: n_q queries over keys [0, n_kv) of its own K/V rows, causal_offset
 * as ke_op_attention's. */
typedef struct att_seq {
    int n_q, n_kv, causal_offset;
} att_seq;

/* ke_cl_flash_attention of a over its total_q rows (host copy `rows`), cut into blocks as the
 * ops now cut them (host scratch `blocks`, device mb), output mo read into got. */
static void flash_once(const ke_cl_attention_args *a, const cl_int *rows, size_t total_q,
                       cl_int *blocks, cl_mem mb, cl_mem mo, float *got)
{
    size_t nb = ke_cl_flash_blocks(rows, total_q, ke_cl_flash_block_q(fx.ops), blocks);
    check_ok(kc_context_write(fx.ctx, mb, true, 0, nb * 4 * sizeof(cl_int), blocks, NULL));
    check_ok(ke_cl_flash_attention(fx.ops, a, mb, nb));
    from_device(mo, got, total_q * (size_t)a->heads * (size_t)a->head_dim * 4);
}

/* The sequences in one launch, Q/K/V fused in one buffer (stride 3 * width) as the vision pass
 * has them, or K/V in a buffer of their own; every config within 1e-5 of the reference and
 * each order the same bits whatever the tiles. */
static void run_flash(const char *name, const att_seq *seqs, int n_seqs, int heads, int head_dim,
                      bool fused, bool mma)
{
    size_t width = (size_t)heads * (size_t)head_dim, total_q = 0, total_kv = 0;
    for (int s = 0; s < n_seqs; s++) {
        total_q += (size_t)seqs[s].n_q;
        total_kv += (size_t)seqs[s].n_kv;
        if (fused)
            assert_int_equal(seqs[s].n_q, seqs[s].n_kv);
    }
    float scale = (float)pow((double)head_dim, -0.5);
    size_t q_stride = fused ? 3 * width : width + 3; /* padded rows */
    size_t kv_stride = fused ? 3 * width : width;
    size_t kv_rows = fused ? total_q : total_kv;
    float *q = rand_floats(total_q * q_stride, 2.0);
    float *kv = fused ? q : rand_floats(kv_rows * 2 * width, 2.0);
    const float *k = fused ? q + width : kv;
    const float *v = fused ? q + 2 * width : kv + kv_rows * width;
    float *want = calloc(total_q * width, sizeof(float));
    float *got = malloc(total_q * width * sizeof(float));
    float *first[3] = {malloc(total_q * width * sizeof(float)),
                       malloc(total_q * width * sizeof(float)),
                       malloc(total_q * width * sizeof(float))};
    float *scratch = malloc((total_kv + 1) * sizeof(float));
    cl_int *rows = malloc(total_q * 4 * sizeof(cl_int));
    cl_int *blocks = malloc(total_q * 4 * sizeof(cl_int));
    size_t qr = 0, kr = 0;
    for (int s = 0; s < n_seqs; s++) {
        ke_op_attention(q + qr * q_stride, q_stride, k + kr * kv_stride, v + kr * kv_stride,
                        kv_stride, seqs[s].n_q, seqs[s].n_kv, heads, head_dim, scale,
                        seqs[s].causal_offset, want + qr * width, width, scratch);
        for (int i = 0; i < seqs[s].n_q; i++, qr++) {
            int nk = seqs[s].n_kv;
            if (seqs[s].causal_offset >= 0 && seqs[s].causal_offset + i + 1 < nk)
                nk = seqs[s].causal_offset + i + 1;
            const cl_int row[4] = {(cl_int)qr, (cl_int)kr, nk, 0};
            memcpy(rows + 4 * qr, row, sizeof row);
        }
        kr += (size_t)seqs[s].n_kv;
    }
    cl_mem mq = to_device(q, total_q * q_stride * 4);
    cl_mem mkv = fused ? NULL : to_device(kv, kv_rows * 2 * width * 4);
    cl_mem mr = to_device(rows, total_q * 4 * sizeof(cl_int));
    cl_mem mb = to_device(NULL, total_q * 4 * sizeof(cl_int));
    cl_mem mo = to_device(NULL, total_q * width * 4);
    ke_cl_attention_args a = {.q = mq,
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
    const bool serial0 = was_serial();
    /* each kernel (flash_attention.cl in either order, attention_wide.cl) the bits of its own
     * first config whatever the blocks and tiles */
    bool seen[3] = {false, false, false};
    for (int wide = 1; wide >= 0; wide--) {
        ke_cl_flash_force_wide(fx.ops, wide);
        for (int c = 0; c < N_CONFIGS; c++) {
            ke_cl_ops_force_serial_attention(fx.ops, configs[c].serial);
            ke_cl_flash_force_tiles(fx.ops, configs[c].block_q, configs[c].block_k);
            bool on_wide = ke_cl_flash_uses_wide(fx.ops, head_dim);
            if (wide && !on_wide)
                break; /* a head size or device it does not serve: flash_attention.cl's turn */
            flash_once(&a, rows, total_q, blocks, mb, mo, got);
            char what[112];
            snprintf(what, sizeof what, "%s, %s, blocks %d, tiles %d", name,
                     on_wide             ? "attention_wide"
                     : configs[c].serial ? "serial order"
                                         : "gpu order",
                     ke_cl_flash_block_q(fx.ops), configs[c].block_k);
            expect_close(what, got, want, total_q * width);
            int kind = on_wide ? 2 : configs[c].serial;
            float *base = first[kind];
            if (!seen[kind])
                memcpy(base, got, total_q * width * sizeof(float));
            else if (memcmp(base, got, total_q * width * sizeof(float)) != 0)
                fail_msg("%s: not the bits of the first blocks and tiles", what);
            seen[kind] = true;
        }
    }
    ke_cl_flash_force_wide(fx.ops, -1);
    if (mma) {
        /* flash_attention_mma.cl, emulated: f16 operands, so close rather than 1e-5; its bits
         * the same whatever the blocks */
        const ke_mma_variant emulated = {.ldmatrix = true, .cp_async = true};
        ke_cl_flash_use_mma(fx.ops, &emulated);
        static const int bqs[] = {0, 7, 1};
        for (size_t c = 0; c < sizeof bqs / sizeof bqs[0]; c++) {
            ke_cl_flash_force_tiles(fx.ops, bqs[c], 0);
            assert_true(ke_cl_flash_uses_mma(fx.ops, head_dim));
            flash_once(&a, rows, total_q, blocks, mb, mo, got);
            char what[112];
            snprintf(what, sizeof what, "%s, flash_attention_mma (emulated), blocks %d", name,
                     ke_cl_flash_block_q(fx.ops));
            TS_CL_EXPECT_CLOSE(what, got, want, total_q * width, 5e-3);
            if (c == 0)
                memcpy(first[2], got, total_q * width * sizeof(float));
            else if (memcmp(first[2], got, total_q * width * sizeof(float)) != 0)
                fail_msg("%s: not the bits of the first blocks", what);
        }
        ke_cl_flash_use_mma(fx.ops, NULL);
    }
    ke_cl_flash_force_tiles(fx.ops, 0, 0);
    ke_cl_ops_force_serial_attention(fx.ops, serial0);
    cl_mem *all[] = {&mq, &mkv, &mr, &mb, &mo};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        kc_context_buffer_free(fx.ctx, all[i]);
    if (!fused)
        free(kv);
    free(q), free(want), free(got), free(first[0]), free(first[1]), free(first[2]);
    free(scratch), free(rows);
    free(blocks);
}

static void test_flash_attention(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    /* vision encoder: 257 tokens, all keys; the tiny checkpoint's 4 x 8 and ViT-L/14's 16 x 64 */
    att_seq enc1[] = {{257, 257, -1}};
    run_flash("encoder 257, 4 heads of 8", enc1, 1, 4, 8, true, false);
    run_flash("encoder 257, 16 heads of 64", enc1, 1, 16, 64, true, false);
    att_seq enc3[] = {{17, 17, -1}, {17, 17, -1}, {17, 17, -1}};
    run_flash("encoder 3 x 17, 3 heads of 16", enc3, 3, 3, 16, true, true);
    att_seq one[] = {{1, 1, -1}};
    run_flash("encoder 1 token", one, 1, 2, 8, true, false);
    /* resampler: 64 latent queries over 257 + 64 rows, causal from 0 (5.17) or full */
    att_seq res[] = {{64, 321, 0}, {64, 321, 0}};
    run_flash("resampler causal, 3 heads of 16", res, 2, 3, 16, false, true);
    att_seq resf[] = {{64, 321, -1}};
    run_flash("resampler full, 2 heads of 64", resf, 1, 2, 64, false, true);
    /* causal rows with and without earlier keys, one query alone */
    att_seq dec[] = {{70, 70, 0}, {1, 6, 5}, {37, 300, 263}};
    run_flash("causal rows, 3 heads of 16", dec, 3, 3, 16, false, true);
    att_seq odd[] = {{5, 9, 4}, {3, 3, -1}};
    run_flash("causal rows, 3 heads of 5", odd, 2, 3, 5, false, false);
}

/* ---- flash_attention_paged against paged_attention ----------------------------------------- */

#define PAGE 4 /* tokens per page in these tests */

/* A step of three sequences: a prompt of 70 tokens from position 0 (slot 0), a chunk of 37
 * after 263 cached tokens (slot 1), one decode token after 5 (slot 2). Flash and paged
 * attention give the same bits, both orders, f32 and half rows, and match the reference. */
static void test_flash_paged(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    static const int shapes[][2] = {{3, 16}, {4, 8}, {2, 64}, {3, 5}};  /* heads, head_dim */
    static const int seqs[][3] = {{0, 0, 70}, {1, 263, 37}, {2, 5, 1}}; /* slot, past, new */
    const int slots = 3, max_pages = 80, n_pages = 240, n = 70 + 37 + 1;
    const bool serial0 = was_serial();
    cl_int *pages = malloc((size_t)slots * max_pages * sizeof(cl_int));
    for (int i = 0; i < slots * max_pages; i++) /* a permutation, so pages interleave */
        pages[i] = i * 37 % n_pages;
    cl_int4 *tok = malloc((size_t)n * sizeof *tok);
    cl_int *rows = malloc((size_t)n * 4 * sizeof(cl_int));
    cl_int *blocks = malloc((size_t)n * 4 * sizeof(cl_int));
    for (int s = 0, t = 0; s < 3; s++)
        for (int i = 0; i < seqs[s][2]; i++, t++) {
            int slot = seqs[s][0], idx = seqs[s][1] + i;
            int row = pages[slot * max_pages + idx / PAGE] * PAGE + idx % PAGE;
            tok[t] = (cl_int4){{row, slot, idx + 1, 0}};
            const cl_int r[4] = {t, slot, idx + 1, 0};
            memcpy(rows + 4 * t, r, sizeof r);
        }
    cl_mem mp = to_device(pages, (size_t)slots * max_pages * sizeof(cl_int));
    cl_mem mt = to_device(tok, (size_t)n * sizeof *tok);
    cl_mem mb = to_device(NULL, (size_t)n * 4 * sizeof(cl_int));
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
        for (int half = 0; half < 2; half++) {
            int heads = shapes[sh][0], hd = shapes[sh][1], width = heads * hd;
            size_t pool = (size_t)n_pages * PAGE * (size_t)width;
            float *kp = rand_floats(pool, 2.0), *vp = rand_floats(pool, 2.0);
            uint16_t *kh = malloc(pool * 2), *vh = malloc(pool * 2);
            for (size_t i = 0; i < pool; i++) {
                kh[i] = ke_f32_to_f16(kp[i]);
                vh[i] = ke_f32_to_f16(vp[i]);
                if (half) {
                    kp[i] = ke_f16_to_f32(kh[i]);
                    vp[i] = ke_f16_to_f32(vh[i]);
                }
            }
            size_t out_n = (size_t)n * (size_t)width, st_n = (size_t)n * (size_t)heads;
            float *q = rand_floats(out_n, 2.0), *want = malloc(out_n * sizeof(float));
            float *got = malloc(out_n * sizeof(float)), *paged = malloc(out_n * sizeof(float));
            cl_float2 *st = malloc(st_n * sizeof *st), *st_paged = malloc(st_n * sizeof *st);
            float *kc = malloc(300 * (size_t)width * sizeof(float));
            float *vc = malloc(300 * (size_t)width * sizeof(float));
            float *scratch = malloc(301 * sizeof(float));
            float scale = (float)pow((double)hd, -0.5);
            for (int t = 0; t < n; t++) {
                int slot = tok[t].s[1], nk = tok[t].s[2];
                for (int j = 0; j < nk; j++) {
                    size_t row = (size_t)pages[slot * max_pages + j / PAGE] * PAGE + j % PAGE;
                    memcpy(kc + (size_t)j * width, kp + row * width, (size_t)width * 4);
                    memcpy(vc + (size_t)j * width, vp + row * width, (size_t)width * 4);
                }
                ke_op_attention(q + (size_t)t * width, (size_t)width, kc, vc, (size_t)width, 1, nk,
                                heads, hd, scale, -1, want + (size_t)t * width, (size_t)width,
                                scratch);
            }
            cl_mem mq = to_device(q, out_n * 4);
            cl_mem mk = half ? to_device(kh, pool * 2) : to_device(kp, pool * 4);
            cl_mem mv = half ? to_device(vh, pool * 2) : to_device(vp, pool * 4);
            cl_mem mo = to_device(NULL, out_n * 4), ms = to_device(NULL, st_n * sizeof *st);
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
            for (int c = 0; c < N_CONFIGS; c++) {
                ke_cl_ops_force_serial_attention(fx.ops, configs[c].serial);
                ke_cl_flash_force_tiles(fx.ops, configs[c].block_q, configs[c].block_k);
                check_ok(ke_cl_paged_attention(fx.ops, NULL, &a));
                from_device(mo, paged, out_n * 4);
                from_device(ms, st_paged, st_n * sizeof *st);
                size_t nb = ke_cl_flash_blocks(rows, (size_t)n, ke_cl_flash_block_q(fx.ops),
                                               blocks);
                check_ok(kc_context_write(fx.ctx, mb, true, 0, nb * 4 * sizeof(cl_int), blocks,
                                          NULL));
                check_ok(ke_cl_flash_attention_paged(fx.ops, &a, mb, nb));
                from_device(mo, got, out_n * 4);
                from_device(ms, st, st_n * sizeof *st);
                char what[96];
                snprintf(what, sizeof what, "paged %s, %d heads of %d, %s order, blocks %d",
                         half ? "half" : "f32", heads, hd, configs[c].serial ? "serial" : "gpu",
                         ke_cl_flash_block_q(fx.ops));
                expect_close(what, got, want, out_n);
                for (size_t i = 0; i < out_n; i++)
                    if (memcmp(&got[i], &paged[i], sizeof(float)) != 0)
                        fail_msg("%s: token %zu column %zu is %a, paged_attention's %a", what,
                                 i / (size_t)width, i % (size_t)width, (double)got[i],
                                 (double)paged[i]);
                if (memcmp(st, st_paged, st_n * sizeof *st) != 0)
                    fail_msg("%s: statistics differ from paged_attention's", what);
            }
            ke_cl_flash_force_tiles(fx.ops, 0, 0);
            ke_cl_ops_force_serial_attention(fx.ops, serial0);
            cl_mem *all[] = {&mq, &mk, &mv, &mo, &ms};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
                kc_context_buffer_free(fx.ctx, all[i]);
            free(kp), free(vp), free(kh), free(vh), free(q), free(want), free(got), free(paged);
            free(st), free(st_paged), free(kc), free(vc), free(scratch);
        }
    kc_context_buffer_free(fx.ctx, &mp);
    kc_context_buffer_free(fx.ctx, &mt);
    kc_context_buffer_free(fx.ctx, &mb);
    free(pages), free(tok), free(rows), free(blocks);
}

/* ---- the backend uses it ------------------------------------------------------------------- */

/* Launches of `kernel` in the backend's profile since its last reset. */
static uint64_t launches_of(ke_backend *b, const char *kernel)
{
    kc_context *ctx = ke_backend_cl_context(b);
    kc_profile_summary sum;
    assert_non_null(ctx);
    check_ok(kc_context_finish(ctx));
    check_ok(kc_profile_summarize(kc_context_profile(ctx), &sum));
    uint64_t calls = 0;
    for (size_t i = 0; i < sum.n_rows; i++)
        if (!sum.rows[i].is_wait && !strcmp(sum.rows[i].name, kernel))
            calls += sum.rows[i].calls;
    return calls;
}

static void reset_profile(ke_backend *b)
{
    kc_profile_reset(kc_context_profile(ke_backend_cl_context(b)));
}

/* A step of the sequences (slot, tokens): ids and positions go on from what the slot holds. */
static void run_step(ke_backend *b, const int *slots, const int *n_tokens, int n_seqs,
                     const int *past, float *logits)
{
    int32_t ids[128], pos[128];
    int t = 0;
    for (int s = 0; s < n_seqs; s++)
        for (int i = 0; i < n_tokens[s]; i++, t++) {
            ids[t] = 4 + (past[s] + i) * 7919 % 60000;
            pos[t] = 2 + past[s] + i;
        }
    ke_step step = {
        .n_seqs = n_seqs, .slots = slots, .n_tokens = n_tokens, .ids = ids, .positions = pos};
    check_ok(b->ops->forward(b, &step, logits));
}

static void test_backend(void **state)
{
    (void)state;
    REQUIRE_DEVICE();
    ke_model_options mo;
    ke_model_options_default(&mo);
    ke_model *model = NULL;
    check_ok(ke_model_load(KOSMOS_TEST_DATA_DIR "/tiny-kosmos2", &mo, &model));
    const ke_config *c = &model->config;
    ke_backend *b[2]; /* [0] flash_attention.cl, [1] the old kernels */
    for (int i = 0; i < 2; i++) {
        ke_backend_options bo = {.slots = 2,
                                 .slot_capacity = 256,
                                 .profiling = true,
                                 .no_flash_attention = i == 1};
        check_ok(ke_backend_cl_new(model, fx.dev, &bo, &b[i]));
    }
    int layers_v = c->vision.layers, layers_t = c->text.layers;
    size_t side = (size_t)c->vision.image_size,
           per = (size_t)c->latent_query_num * (size_t)c->text.embed_dim;
    float *pixels = rand_floats(2 * (size_t)c->vision.channels * side * side, 1.0);
    float *emb[2] = {malloc(2 * per * sizeof(float)), malloc(2 * per * sizeof(float))};
    size_t V = (size_t)c->text.vocab_size;
    float *logits[2] = {malloc(2 * V * sizeof(float)), malloc(2 * V * sizeof(float))};
    for (int i = 0; i < 2; i++) {
        reset_profile(b[i]);
        check_ok(b[i]->ops->encode_images(b[i], pixels, 2, emb[i], NULL));
        /* vision layers, then the resampler (attention_wide.cl on CPUs for its heads of 16) */
        assert_int_equal(launches_of(b[i], "flash_attention") + launches_of(b[i], "attention_wide"),
                         i == 0 ? layers_v + 1 : 0);
        assert_int_equal(launches_of(b[i], "attention"), i == 0 ? 0 : layers_v + 1);
    }
    expect_close("image embeddings, flash vs attention.cl", emb[0], emb[1], 2 * per);

    /* a prefill of two prompts, a decode step, then a step mixing a decode token and a chunk */
    static const int slots[2] = {0, 1};
    static const struct {
        int n_tokens[2], past[2];
        bool flash;
    } steps[] = {{{71, 40}, {0, 0}, true}, {{1, 1}, {71, 40}, false}, {{1, 9}, {72, 41}, true}};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        for (int i = 0; i < 2; i++) {
            reset_profile(b[i]);
            run_step(b[i], slots, steps[s].n_tokens, 2, steps[s].past, logits[i]);
            bool flash = i == 0 && steps[s].flash;
            assert_int_equal(launches_of(b[i], "flash_attention_paged"), flash ? layers_t : 0);
            assert_int_equal(launches_of(b[i], "paged_attention"), flash ? 0 : layers_t);
        }
        print_message("  step %zu (%d + %d tokens): logits %s\n", s, steps[s].n_tokens[0],
                      steps[s].n_tokens[1],
                      memcmp(logits[0], logits[1], 2 * V * sizeof(float)) ? "DIFFER" : "equal");
        assert_memory_equal(logits[0], logits[1], 2 * V * sizeof(float));
    }
    for (int i = 0; i < 2; i++) {
        ke_backend_destroy(&b[i]);
        free(emb[i]);
        free(logits[i]);
    }
    free(pixels);
    ke_model_destroy(&model);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocks),
        cmocka_unit_test(test_flash_attention),
        cmocka_unit_test(test_flash_paged),
        cmocka_unit_test(test_backend),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
