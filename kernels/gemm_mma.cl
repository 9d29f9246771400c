/* gemm_mma.cl: the matrix-unit GEMM for many rows (vision, prefill): gemm.cl's product with its
 * arguments (GEMM_ARGS, gemm_io.cl), its LayerNorm prologue and its whole epilogue, computed
 * with fp16 operands and fp32 accumulation by warp-level m16n8k16 multiply-accumulates through
 * the macro layer of mma.cl (tensor cores through PTX on NVIDIA, an emulation elsewhere).
 *
 *   Y[r, c] = epilogue(sum_i h(xn[r, i]) * h(Wt[i, c]))   h: rounding to f16 (nearest even);
 *   xn, Wt, epilogue as in gemm.cl; products exact, sums in f32
 *
 * Not gemm.cl's canonical sum: the tensor cores add in an order of their own, so a row's bits
 * differ from the SIMT kernels' (a row's result still does not depend on the other rows of a
 * launch or on m: the k order is fixed and every row is computed alike). chunk_len, partial
 * and counters are ignored.
 *
 * One work-group computes a MMA_BM x MMA_BN block of Y with MMA_WARPS warps, each a MMA_WM x
 * MMA_WN block of (MMA_WM/16) x (MMA_WN/8) m16n8k16 accumulators held in registers:
 *
 *            <------- MMA_BN ------->              k walks in steps of MMA_BK through a ring of
 *         ^  | warp 0 | warp 1 | ... |             MMA_STAGES local buffers, each holding
 *   MMA_BM|  |--------+--------+-----|               As (MMA_BM, MMA_BK) f16 row-major  (X)
 *         v  | warp WARPS_N ...      |               Bs (MMA_BK, MMA_BN) f16 k-major    (W)
 *
 * while the tile MMA_STAGES - 1 steps ahead is fetched: W by cp.async straight into its buffer
 * (f16 weights with MMA_CP_ASYNC; otherwise through registers, converted), X (f32, normalized
 * by the LayerNorm when there is one) into registers before the step's multiplies and, rounded
 * to f16, into its buffer after them. Each row of a buffer is made of 16-byte chunks whose index
 * is XORed with the row's low bits (swz), so that the 8 rows one ldmatrix reads, and the chunks
 * a row of lanes writes, fall in distinct banks. The accumulators leave through local memory
 * in slabs of MMA_EPI_ROWS rows: the epilogue (bias, activation, residual or the KV-cache
 * append, row statistics) runs per element on coalesced columns, as gemm.cl's does.
 *
 * Kernels:
 *   gemm_mma       global (ceil(n / MMA_BN) * 32, ceil(m / MMA_BM) * MMA_WARPS, 1),
 *                  local (32, MMA_WARPS, 1). Any m, n, k. Weights row-major or in panels of a
 *                  multiple of 8 columns (W_PANEL), ldw a multiple of 8.
 *   mma_fragments  the macro layer alone on one 16x8x16 problem, global = local = (32, 1, 1):
 *                  a (16, 16) f16 row-major, b (16, 8) f16 k-major, c (16, 8) f32 row-major
 *                  are staged as gemm_mma stages its tiles and loaded into fragments as it
 *                  loads them; every lane writes its registers (a_regs[lane], b_regs[lane],
 *                  d_regs[lane] after one MMA_SYNC) and D = A·B + C through the C layout into
 *                  d (16, 8). The device probe (cl_gemm_mma.c) and test_cl_gemm_mma compare
 *                  them with the PTX ISA's fragment tables.
 *
 * Tunables (-D), constraints checked below; mma.cl's (MMA_IMPL, MMA_CP_ASYNC, MMA_PTX_ADDR) too:
 *   MMA_BM, MMA_BN, MMA_BK   the group's block of Y and the k step (128, 128, 32)
 *   MMA_WM, MMA_WN           a warp's block (64, 32): MMA_WARPS = (BM / WM) * (BN / WN)
 *   MMA_STAGES               local buffers in the ring, 2 to 5 (3; 48 KiB at the defaults)
 *   MMA_LDMATRIX             1: fragments through ldmatrix; 0: each lane reads its own (1)
 *   MMA_EPI_ROWS             rows per epilogue slab, divides MMA_BM (32)
 *   WEIGHT_HALF, W_PANEL, STAT_SB  as in gemm.cl
 */
#include "common.cl"
#if defined(W_INT8) && W_INT8
#error "gemm_mma reads f16 or f32 weights; int8 codes run on gemm.cl's kernels"
#endif
#define WMAT_T WEIGHT_T /* gemm_io.cl's W element */
#include "gemm_io.cl"

#ifndef MMA_BM
#define MMA_BM 128
#endif
#ifndef MMA_BN
#define MMA_BN 128
#endif
#ifndef MMA_BK
#define MMA_BK 32
#endif
#ifndef MMA_WM
#define MMA_WM 64
#endif
#ifndef MMA_WN
#define MMA_WN 32
#endif
#ifndef MMA_STAGES
#define MMA_STAGES 3
#endif
#ifndef MMA_LDMATRIX
#define MMA_LDMATRIX 1
#endif
#ifndef MMA_EPI_ROWS
#define MMA_EPI_ROWS 32
#endif
#ifndef W_PANEL
#define W_PANEL 0
#endif

#define WARPS_M (MMA_BM / MMA_WM)
#define WARPS_N (MMA_BN / MMA_WN)
#define MMA_WARPS (WARPS_M * WARPS_N)
#define MMA_WG (32 * MMA_WARPS)
#include "mma.cl"

/* The fragment loops unrolled for the GPU (the accumulators stay in registers); rolled in the
 * emulation, whose barriers would otherwise multiply into a program PoCL takes minutes to
 * compile. */
#if MMA_IMPL == 1
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("nounroll")
#endif
#define FRAGS_M (MMA_WM / 16) /* accumulators per warp along m */
#define FRAGS_N (MMA_WN / 8)  /* ... along n */
#define A_CH (MMA_BK / 8)     /* 16-byte chunks per row of As */
#define B_CH (MMA_BN / 8)     /* ... of Bs */
#define A_CPR (MMA_BK / 4)    /* float4s per row of an X tile */
#define A_RPP (MMA_WG / A_CPR) /* rows of X fetched per pass of the group */
#define A_PASSES (MMA_BM / A_RPP)
#define B_RPP (MMA_WG / B_CH) /* rows (k) of W fetched per pass, a chunk per work-item */
#define B_PASSES (MMA_BK / B_RPP)
#define STAGE_HALVES (MMA_BM * MMA_BK + MMA_BK * MMA_BN)
#define EPI_LD (MMA_BN + 4) /* floats per slab row */
#define SMEM_HALVES (MMA_STAGES * STAGE_HALVES > 2 * MMA_EPI_ROWS * EPI_LD                        \
                         ? MMA_STAGES * STAGE_HALVES                                               \
                         : 2 * MMA_EPI_ROWS * EPI_LD)
#define USE_CP_ASYNC (WEIGHT_HALF && MMA_CP_ASYNC)

#if MMA_BM % MMA_WM != 0 || MMA_BN % MMA_WN != 0 || MMA_WM % 16 != 0 || MMA_WN % 16 != 0
#error "MMA_WM and MMA_WN must be multiples of 16 dividing MMA_BM and MMA_BN"
#endif
#if MMA_BK % 16 != 0
#error "MMA_BK must be a multiple of 16"
#endif
#if (A_CH != 1 && A_CH != 2 && A_CH != 4 && A_CH % 8 != 0) || (B_CH != 2 && B_CH != 4 && B_CH % 8 != 0)
#error "a tile row must be 1, 2, 4 or a multiple of 8 chunks of 16 bytes (swz)"
#endif
#if MMA_WG % A_CPR != 0 || MMA_BM % A_RPP != 0 || MMA_WG % B_CH != 0 || MMA_BK % B_RPP != 0
#error "the group's work-items must divide the rows of the X and W tiles evenly"
#endif
/* "this step's copies have landed": at most MMA_STAGES - 2 groups in flight (a literal) */
#if MMA_STAGES == 2
#define MMA_CP_WAIT_STEP() MMA_CP_WAIT(0)
#elif MMA_STAGES == 3
#define MMA_CP_WAIT_STEP() MMA_CP_WAIT(1)
#elif MMA_STAGES == 4
#define MMA_CP_WAIT_STEP() MMA_CP_WAIT(2)
#elif MMA_STAGES == 5
#define MMA_CP_WAIT_STEP() MMA_CP_WAIT(3)
#else
#error "MMA_STAGES must be 2 to 5"
#endif
#if MMA_BM % MMA_EPI_ROWS != 0 || MMA_BN % STAT_SB != 0
#error "MMA_EPI_ROWS must divide MMA_BM, and STAT_SB MMA_BN"
#endif
#if W_PANEL % 8 != 0
#error "gemm_mma reads W in chunks of 8 columns: W_PANEL must be 0 or a multiple of 8"
#endif
#if MMA_LDMATRIX != 0 && MMA_LDMATRIX != 1
#error "MMA_LDMATRIX must be 0 or 1"
#endif

/* Offset (halves) of half `col` of row `row` in a swizzled tile of `ch` 16-byte chunks per row:
 * the chunk index XORed with the bits of the row that pick its 128-byte line's slot. */
inline int swz(const int row, const int col, const int ch)
{
    const int x = ch >= 8 ? (row & 7) : (row / (8 / ch)) & (ch - 1);
    return row * ch * 8 + (((col >> 3) ^ x) << 3) + (col & 7);
}

/* The A fragment of the 16x16 block at (row0, col0) of a swizzled row-major tile. */
inline uint4 frag_a(__local const ushort *tile, const int ch, const int row0, const int col0
                    MMA_XCH_PARAM)
{
    const int lane = (int)get_local_id(0);
#if MMA_LDMATRIX
    return MMA_LDMATRIX_X4(tile, swz(row0 + (lane & 15), col0 + (lane >> 4) * 8, ch));
#else
    __local const uint *w = (__local const uint *)tile;
    const int g = lane >> 2, t = lane & 3;
    return (uint4)(w[swz(row0 + g, col0 + 2 * t, ch) >> 1],
                   w[swz(row0 + g + 8, col0 + 2 * t, ch) >> 1],
                   w[swz(row0 + g, col0 + 2 * t + 8, ch) >> 1],
                   w[swz(row0 + g + 8, col0 + 2 * t + 8, ch) >> 1]);
#endif
}

/* The B fragments of the n8 blocks at columns n0 (.s01) and n1 (.s23), 16 deep from k0, of a
 * swizzled k-major tile. */
inline uint4 frag_b2(__local const ushort *tile, const int ch, const int k0, const int n0,
                     const int n1 MMA_XCH_PARAM)
{
    const int lane = (int)get_local_id(0);
#if MMA_LDMATRIX
    return MMA_LDMATRIX_X4_T(tile, swz(k0 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                       (lane >> 4) ? n1 : n0, ch));
#else
    const int g = lane >> 2, t = lane & 3;
    uint r[4];
    for (int j = 0; j < 4; j++) {
        const int kk = k0 + 2 * t + 8 * (j & 1), nn = (j >> 1 ? n1 : n0) + g;
        r[j] = (uint)tile[swz(kk, nn, ch)] | ((uint)tile[swz(kk + 1, nn, ch)] << 16);
    }
    return (uint4)(r[0], r[1], r[2], r[3]);
#endif
}

/* X's values [gk, gk + 4) of source row src (normalized), zeros past k. */
inline float4 x_quad(__global const float *x, const ulong x_off, const int ldx, const int src,
                     const int gk, const int k, const float mean, const float rstd,
                     __global const WEIGHT_T *ln_w, __global const WEIGHT_T *ln_b, const int has_ln)
{
    if (gk + 3 < k)
        return load_xn4(x, x_off, ldx, src, gk, mean, rstd, ln_w, ln_b, has_ln);
    float v[4];
    for (int j = 0; j < 4; j++)
        v[j] = gk + j < k ? load_xn(x, x_off, ldx, src, gk + j, mean, rstd, ln_w, ln_b, has_ln)
                          : 0.0f;
    return (float4)(v[0], v[1], v[2], v[3]);
}

#if USE_CP_ASYNC
#define B_REG_T int /* unused: W goes straight to local memory */
#elif WEIGHT_HALF
#define B_REG_T ushort8
#else
#define B_REG_T float8
#endif

__kernel __attribute__((reqd_work_group_size(32, MMA_WARPS, 1))) void gemm_mma(GEMM_ARGS)
{
    MMA_SCRATCH;
    __local uint4 smem[SMEM_HALVES / 8];
    __local ushort *const sh = (__local ushort *)smem;
    const int lane = (int)get_local_id(0), warp = (int)get_local_id(1);
    const int tid = warp * 32 + lane;
    const int mb = (int)get_group_id(1) * MMA_BM, nb = (int)get_group_id(0) * MMA_BN;
    const int wm0 = (warp / WARPS_N) * MMA_WM, wn0 = (warp % WARPS_N) * MMA_WN;
    const int has_ln = ln_stats != 0;
    const int n_steps = (k + MMA_BK - 1) / MMA_BK;
    (void)chunk_len, (void)partial, (void)counters;

    /* The rows of X this work-item fetches are the same at every step: their source rows and
     * LayerNorm statistics are worked out once. */
    const int arow = tid / A_CPR, acol = (tid % A_CPR) * 4;
    int asrc[A_PASSES];
    float amean[A_PASSES], arstd[A_PASSES];
    UNROLL
    for (int p = 0; p < A_PASSES; p++) {
        asrc[p] = source_row(mb + arow + p * A_RPP, m, gather);
        const float2 s = has_ln ? merge_stats(ln_stats + (size_t)asrc[p] * (size_t)ln_nb, ln_nb,
                                              ln_sb, k, ln_eps)
                                : (float2)(0.0f, 1.0f);
        amean[p] = s.x;
        arstd[p] = s.y;
    }
    const int brow = tid / B_CH, bcol = (tid % B_CH) * 8;
    __global const ushort *wh = (__global const ushort *)w + w_off;
    (void)wh;

    float4 acc[FRAGS_M][FRAGS_N];
    UNROLL for (int i = 0; i < FRAGS_M; i++)
        UNROLL for (int j = 0; j < FRAGS_N; j++)
            acc[i][j] = (float4)(0.0f);
    float4 areg[A_PASSES];
    B_REG_T breg[B_PASSES];
    (void)breg;

/* Step `st`'s X into areg; its W into stage `slot` (cp.async) or breg. */
#define FETCH(st, slot)                                                                            \
    do {                                                                                           \
        const int k0_ = (st) * MMA_BK;                                                             \
        UNROLL for (int p = 0; p < A_PASSES; p++)                                       \
            areg[p] = x_quad(x, x_off, ldx, asrc[p], k0_ + acol, k, amean[p], arstd[p], ln_w,      \
                             ln_b, has_ln);                                                        \
        UNROLL for (int p = 0; p < B_PASSES; p++) {                                     \
            const int kr_ = brow + p * B_RPP, gk_ = k0_ + kr_, gc_ = nb + bcol;                    \
            const int ok_ = gk_ < k && gc_ < ldw;                                                  \
            const size_t at_ = ok_ ? weight_index(gk_, gc_, k, ldw, W_PANEL) : 0;                  \
            FETCH_W(p, at_, ok_, sh + (slot) * STAGE_HALVES + MMA_BM * MMA_BK +                    \
                                     swz(kr_, bcol, B_CH));                                        \
        }                                                                                          \
    } while (0)
#if USE_CP_ASYNC
#define FETCH_W(p, at, ok, dst) MMA_CP_ASYNC16((dst), wh + (at), (ok))
#define PUT_W(p, dst)
#elif WEIGHT_HALF
#define FETCH_W(p, at, ok, dst) breg[p] = (ok) ? vload8(0, wh + (at)) : (ushort8)(0)
#define PUT_W(p, dst) vstore8(breg[p], 0, (dst))
#else
#define FETCH_W(p, at, ok, dst) breg[p] = (ok) ? vload8(0, w + w_off + (at)) : (float8)(0.0f)
#define PUT_W(p, dst) vstore_half8_rte(breg[p], 0, (__local half *)(dst))
#endif
/* What FETCH left in registers, rounded to f16, into stage `slot`. */
#define PUT(slot)                                                                                  \
    do {                                                                                           \
        __local ushort *as_ = sh + (slot) * STAGE_HALVES;                                          \
        UNROLL for (int p = 0; p < A_PASSES; p++)                                       \
            vstore_half4_rte(areg[p], 0, (__local half *)(as_ + swz(arow + p * A_RPP, acol, A_CH))); \
        UNROLL for (int p = 0; p < B_PASSES; p++)                                       \
            PUT_W(p, as_ + MMA_BM * MMA_BK + swz(brow + p * B_RPP, bcol, B_CH));                   \
    } while (0)

    /* the ring's first MMA_STAGES - 1 steps; a group of copies per step, empty ones too, so that
     * "at most MMA_STAGES - 2 in flight" always means "this step's have landed" */
    for (int s = 0; s < MMA_STAGES - 1; s++) {
        if (s < n_steps) {
            FETCH(s, s);
            PUT(s);
        }
        MMA_CP_COMMIT();
    }
    for (int st = 0; st < n_steps; st++) {
        MMA_CP_WAIT_STEP();
        barrier(CLK_LOCAL_MEM_FENCE); /* step st is in; every warp is done with step st - 1 */
        const int ahead = st + MMA_STAGES - 1, ahead_slot = ahead % MMA_STAGES;
        if (ahead < n_steps)
            FETCH(ahead, ahead_slot); /* into the slot step st - 1 used */
        MMA_CP_COMMIT();
        __local const ushort *as = sh + (st % MMA_STAGES) * STAGE_HALVES;
        __local const ushort *bs = as + MMA_BM * MMA_BK;
        UNROLL for (int ks = 0; ks < MMA_BK; ks += 16) {
            uint4 af[FRAGS_M], bf[FRAGS_N / 2];
            UNROLL for (int i = 0; i < FRAGS_M; i++)
                af[i] = frag_a(as, A_CH, wm0 + i * 16, ks MMA_XCH_ARG);
            UNROLL for (int j = 0; j < FRAGS_N / 2; j++)
                bf[j] = frag_b2(bs, B_CH, ks, wn0 + j * 16, wn0 + j * 16 + 8 MMA_XCH_ARG);
            UNROLL for (int i = 0; i < FRAGS_M; i++)
                UNROLL for (int j = 0; j < FRAGS_N; j++)
                    acc[i][j] = MMA_SYNC(acc[i][j], af[i], (j & 1) ? bf[j >> 1].zw : bf[j >> 1].xy);
        }
        if (ahead < n_steps)
            PUT(ahead_slot);
    }
    MMA_CP_WAIT(0);
    barrier(CLK_LOCAL_MEM_FENCE); /* the ring becomes the epilogue's slab */

    __local float *slab = (__local float *)smem;
    for (int s0 = 0; s0 < MMA_BM; s0 += MMA_EPI_ROWS) {
        UNROLL for (int i = 0; i < FRAGS_M; i++)
            UNROLL for (int j = 0; j < FRAGS_N; j++) {
                const float v[4] = {acc[i][j].x, acc[i][j].y, acc[i][j].z, acc[i][j].w};
                UNROLL for (int q = 0; q < 4; q++) {
                    const int rr = wm0 + i * 16 + mma_c_row(lane, q) - s0;
                    if (rr >= 0 && rr < MMA_EPI_ROWS)
                        slab[rr * EPI_LD + wn0 + j * 8 + mma_c_col(lane, q)] = v[q];
                }
            }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = tid; e < MMA_EPI_ROWS * MMA_BN; e += MMA_WG) {
            const int rr = e / MMA_BN, cc = e % MMA_BN, r = mb + s0 + rr, c = nb + cc;
            if (r < m && c < n)
                slab[rr * EPI_LD + cc] = store_out(r, c, slab[rr * EPI_LD + cc], w_scale,
                                                   bias, act, accumulate, y, y_off, ldy, split_q,
                                                   kpool, vpool, tokrow, kv_half);
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* unconditional: see gemm.cl's ROWS_SPLIT_COMBINE */
        if (stats_out)
            write_stats(slab, EPI_LD, MMA_EPI_ROWS, MMA_BN, mb + s0, nb, m, n, tid, MMA_WG,
                        stats_out, stats_nb);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
}

__kernel __attribute__((reqd_work_group_size(32, 1, 1))) void mma_fragments(
    __global const ushort *a, __global const ushort *b, __global const float *c,
    __global uint4 *a_regs, __global uint2 *b_regs, __global float4 *d_regs, __global float *d)
{
    MMA_SCRATCH;
    __local uint4 at4[32], bt4[16]; /* A (16, 16): 2 chunks a row; B (16, 8): 1 */
    __local ushort *at = (__local ushort *)at4, *bt = (__local ushort *)bt4;
    const int lane = (int)get_local_id(0);
    MMA_CP_ASYNC16(at + swz(lane >> 1, (lane & 1) * 8, 2), a + lane * 8, 1);
    if (lane < 16)
        MMA_CP_ASYNC16(bt + swz(lane, 0, 1), b + lane * 8, 1);
    MMA_CP_COMMIT();
    MMA_CP_WAIT(0);
    barrier(CLK_LOCAL_MEM_FENCE);
    const uint4 fa = frag_a(at, 2, 0, 0 MMA_XCH_ARG);
    const uint4 fb = frag_b2(bt, 1, 0, 0, 0 MMA_XCH_ARG);
    float cv[4];
    for (int i = 0; i < 4; i++)
        cv[i] = c[mma_c_row(lane, i) * 8 + mma_c_col(lane, i)];
    const float4 fd = MMA_SYNC((float4)(cv[0], cv[1], cv[2], cv[3]), fa, fb.xy);
    a_regs[lane] = fa;
    b_regs[lane] = fb.xy;
    d_regs[lane] = fd;
    const float dv[4] = {fd.x, fd.y, fd.z, fd.w};
    for (int i = 0; i < 4; i++)
        d[mma_c_row(lane, i) * 8 + mma_c_col(lane, i)] = dv[i];
}
