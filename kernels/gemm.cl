/* gemm.cl: every matrix product of the model (nn.Linear), with the LayerNorm in front of it and
 * what follows it fused in, so that a decoder layer is five launches.
 *
 *   xn[r, i]  = LN(X[src(r)])[i]  = (X[src, i] - mean) * rstd * ln_w[i] + ln_b[i]   (or X[src, i])
 *   Y[r, c]   = epilogue(sum_i xn[r, i] * Wt[i, c])        r < m, c < n, i < k
 *   epilogue  : (int8 W: * w_scale[c]), + bias[c], then activation, then (accumulate)
 *               + Y_old[r, c]
 *
 * The canonical sum. Every kernel here computes each output the same way, bit for bit, so that a
 * row's result does not depend on m, on the kernel chosen for m, or on the other rows of the
 * launch (a sequence in a continuous batch must get the ids it gets alone):
 *
 *   k is cut into chunks of chunk_len (the last one shorter); chain_q = fma(xn, w, chain_q) over
 *   the chunk's i in increasing order, from 0; total = ((chain_0 + chain_1) + chain_2) + ...
 *
 * chunk_len is fixed per layer and device by the host (never per m). A kernel either walks all
 * chunks in one work-group (adding each chain to its total) or gives each chunk its own group
 * (grid dimension 2 = the number of chunks): those write their chains to `partial`, and the last
 * group to finish a tile (an atomic counter per tile, reset by that group) adds them in chunk
 * order and runs the epilogue. The two give the same bits.
 *
 * Memory layout (row-major, element offsets; W is stored transposed, once, at upload):
 *
 *                  <------ k ------>                          <------ n ------>
 *   X   f32   row src | x[x_off + src*ldx + i] |   Y  f32  row r | y[y_off + r*ldy + c] |
 *   src = gather[r] (when gather is set) else r
 *
 *                  <-------- ldw --------->   ldw >= n, a multiple of 8 and of W_PANEL;
 *   Wt  (k, ldw)  row i | w[w_off + i*ldw + c] |  columns n .. ldw-1 are zero (vector loads
 *                                                 need no edge case)
 *   or, when W_PANEL > 0, in panels of W_PANEL columns, each a contiguous (k, W_PANEL) block:
 *   element (i, c) at w[w_off + weight_index(i, c, k, ldw, W_PANEL)] (common.cl). The layout
 *   changes where a weight is read from, never the order of the sums.
 *   half or f32 (WEIGHT_HALF), or int8 codes (W_INT8: the sums run over the codes, and each
 *   column's total is multiplied by w_scale[c], f32 (n), before the epilogue); bias (n),
 *   ln_w/ln_b (k) half or f32 (WEIGHT_HALF), NULL when absent
 *
 *   ln_stats  (rows of X, ln_nb) float2: X's row statistics in blocks of ln_sb columns
 *             (common.cl); NULL: no LayerNorm
 *   stats_out (m, stats_nb) float2: the same for Y's rows, blocks of STAT_SB columns; NULL: none
 *   split_q   0, or q: columns [0, q) go to Y (ldy), [q, 2q) to row tokrow[r].x of kpool and
 *             [2q, 3q) to that row of vpool (the KV cache, rows of q values, f32 or half when
 *             kv_half): the fused Q/K/V projection appends K and V to the cache itself
 *   partial   (chunks, m, n rounded up to 4) f32 and counters (one int per group of grid
 *             dimensions 0 and 1, zero on entry and on return) when chunks have groups
 *
 * Kernels:
 *   gemm_rowsR  (R = 1, 2, 4, 8) the few-rows kernel (decode): a group of ROWS_NT work-items
 *               covers ROWS_NT*ROWS_CW*ROWS_VPW columns of R rows; each work-item R x
 *               ROWS_CW*ROWS_VPW outputs, W read once per group as ROWS_CW-wide vectors along n
 *               (coalesced), X staged ROWS_XK at a time in local memory, normalized on the way
 *               in (or read by each work-item, ROWS_STAGE 0).
 *               global (ceil(n / (ROWS_NT*ROWS_CW*ROWS_VPW)) * ROWS_NT, ceil(m / R), 1 or
 *               chunks),
 *               local (ROWS_NT, 1, 1)
 *   gemm_tiles  the many-rows kernel (prefill, vision): TILE_M x TILE_N of Y per group, X and W
 *               tiles of TILE_K staged in local memory, WPT_M x WPT_N outputs per work-item.
 *               global (ceil(n/TILE_N) * TILE_N/WPT_N, ceil(m/TILE_M) * TILE_M/WPT_M, 1),
 *               local (TILE_N/WPT_N, TILE_M/WPT_M, 1). Needs chunk_len % TILE_K == 0 when
 *               there is more than one chunk.
 *
 * Tunables (-D), constraints checked below:
 *   WEIGHT_HALF  1: weights half, 0: f32 (0)
 *   W_INT8       1: Wt int8 codes with w_scale (worker/engine/quant.h), bias and LayerNorm
 *                parameters still WEIGHT_HALF (0)
 *   ROWS_NT      work-items of gemm_rows (32);  ROWS_XK  k staged per pass (64)
 *   ROWS_CW      columns per vector of gemm_rows: 4, 8 or 16 (4)
 *   ROWS_VPW     vectors per work-item of gemm_rows, 1 or 2 (1): 2 takes columns c0 .. and
 *                c0 + ROWS_CW .. (the next panel), so that each X value a work-item loads,
 *                normalizes and broadcasts serves twice the columns (CPUs at m >= 8); only
 *                with ROWS_STAGE 0 and ROWS_SPLIT 0
 *   W_PANEL      0: Wt row-major; else the panel width, a multiple of ROWS_CW (0)
 *   ROWS_STAGE   1: gemm_rows stages X in local memory (GPUs); 0: each work-item reads it
 *                (CPUs: no barrier in the k loop, which PoCL compiles and runs far better) (1)
 *   ROWS_SPLIT   1: gemm_rows can give chunks groups of their own; 0: it never does (CPUs) (1)
 *   ROWS_ORDER   1: gemm_rows' groups in row blocks first (CPUs: each W panel read from memory
 *                once, not once per 8 rows); 0: columns first (0)
 *   TILE_M, TILE_N, TILE_K, WPT_M, WPT_N  gemm_tiles' blocking (64, 64, 16, 4, 4)
 *   STAT_SB      columns per statistics block of stats_out (32); divides ROWS_NT*ROWS_CW and
 *                TILE_N
 */
#include "common.cl"

#ifndef ROWS_NT
#define ROWS_NT 32
#endif
#ifndef ROWS_XK
#define ROWS_XK 64
#endif
#ifndef TILE_M
#define TILE_M 64
#endif
#ifndef TILE_N
#define TILE_N 64
#endif
#ifndef TILE_K
#define TILE_K 16
#endif
#ifndef WPT_M
#define WPT_M 4
#endif
#ifndef WPT_N
#define WPT_N 4
#endif
#ifndef ROWS_STAGE
#define ROWS_STAGE 1
#endif
#ifndef ROWS_SPLIT
#define ROWS_SPLIT 1
#endif
#ifndef ROWS_CW
#define ROWS_CW 4
#endif
#ifndef W_PANEL
#define W_PANEL 0
#endif
#ifndef ROWS_VPW
#define ROWS_VPW 1
#endif
#ifndef W_INT8
#define W_INT8 0
#endif
#ifndef ROWS_ORDER
#define ROWS_ORDER 0
#endif
#if ROWS_ORDER != 0 && ROWS_ORDER != 1
#error "ROWS_ORDER must be 0 or 1"
#endif

#define ROWS_WCOLS (ROWS_CW * ROWS_VPW) /* columns per work-item */
#define ROWS_COLS (ROWS_NT * ROWS_WCOLS)
#if ROWS_VPW != 1 && ROWS_VPW != 2
#error "ROWS_VPW must be 1 or 2"
#endif
#if ROWS_VPW == 2 && (ROWS_STAGE || ROWS_SPLIT)
#error "ROWS_VPW 2 is for ROWS_STAGE 0 and ROWS_SPLIT 0"
#endif
#if ROWS_NT < 1 || ROWS_XK < 1
#error "ROWS_NT and ROWS_XK must be positive"
#endif
#if ROWS_CW != 4 && ROWS_CW != 8 && ROWS_CW != 16
#error "ROWS_CW must be 4, 8 or 16"
#endif
#if W_PANEL < 0 || (W_PANEL > 0 && W_PANEL % ROWS_CW != 0)
#error "W_PANEL must be 0 or a multiple of ROWS_CW"
#endif
/* The row stride of Wt inside a panel (where a work-item's columns are). */
#if W_PANEL
#define W_STRIDE W_PANEL
#else
#define W_STRIDE ldw
#endif
#if TILE_M % WPT_M != 0 || TILE_N % WPT_N != 0
#error "TILE_M and TILE_N must be multiples of WPT_M and WPT_N"
#endif
#define TILE_RX (TILE_M / WPT_M) /* work-items along m */
#define TILE_RY (TILE_N / WPT_N) /* work-items along n */
#define TILE_WG (TILE_RX * TILE_RY)
#if (TILE_M * TILE_K) % TILE_WG != 0 || (TILE_N * TILE_K) % TILE_WG != 0
#error "the tiled work-group must divide the X and W tiles"
#endif
#if ROWS_COLS % STAT_SB != 0 || TILE_N % STAT_SB != 0
#error "STAT_SB must divide ROWS_NT*4 and TILE_N"
#endif
#if TILE_WG < TILE_M || TILE_WG < TILE_M * (TILE_N / STAT_SB)
#error "gemm_tiles needs a work-item per row and per (row, statistics block)"
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define floatCW CAT(float, ROWS_CW)
/* W's elements (WMAT_T) as f32: LOAD_WM one, LOAD_WCW ROWS_CW neighbours along n */
#if W_INT8
#define WMAT_T char
#define LOAD_WM(p, i) ((float)(p)[(i)])
#define LOAD_WCW(p, i) CAT(convert_float, ROWS_CW)(CAT(vload, ROWS_CW)(0, (p) + (i)))
#elif WEIGHT_HALF
#define WMAT_T WEIGHT_T
#define LOAD_WM(p, i) LOAD_W(p, i)
#define LOAD_WCW(p, i) CAT(vload_half, ROWS_CW)(0, (p) + (i))
#else
#define WMAT_T WEIGHT_T
#define LOAD_WM(p, i) LOAD_W(p, i)
#define LOAD_WCW(p, i) CAT(vload, ROWS_CW)(0, (p) + (i))
#endif
#define VSTORE_CW CAT(vstore, ROWS_CW)
#define VLOAD_CW CAT(vload, ROWS_CW)
/* the bias (and the LayerNorm parameters): half in every build but the f32 one */
#if WEIGHT_HALF
#define LOAD_BCW(p, i) CAT(vload_half, ROWS_CW)(0, (p) + (i))
#else
#define LOAD_BCW(p, i) VLOAD_CW(0, (p) + (i))
#endif
DEFINE_ACTIVATE(ROWS_CW)

/* store_out (gemm_io.cl) of ROWS_CW neighbouring outputs of row r from column c, inside Y or,
 * for the fused Q/K/V projection, inside one of its three parts (the caller checks): the same
 * operations lane for lane, so the same bits, without a software half conversion and a scalar
 * exp()/erf() per output (on PoCL the epilogue of the text fc1 cost a third of its product). */
inline floatCW store_out_cw(const int r, const int c, floatCW v, __global const float *w_scale,
                            __global const WEIGHT_T *bias, const int act, const int accumulate,
                            __global float *y, const ulong y_off, const int ldy, const int split_q,
                            __global float *kpool, __global float *vpool,
                            __global const int4 *tokrow, const int kv_half)
{
#if W_INT8
    v = v * VLOAD_CW(0, w_scale + c);
#endif
    if (bias)
        v = v + LOAD_BCW(bias, c);
    v = CAT(activate, ROWS_CW)(v, act);
    if (split_q > 0 && c >= split_q) {
        const int part = c / split_q; /* 1: K, 2: V */
        __global float *pool = part == 1 ? kpool : vpool;
        const size_t at = (size_t)tokrow[r].x * (size_t)split_q + (size_t)(c - part * split_q);
        if (kv_half)
            CAT(CAT(vstore_half, ROWS_CW), _rte)(v, 0, (__global half *)pool + at);
        else
            VSTORE_CW(v, 0, pool + at);
        return v;
    }
    __global float *yp = y + y_off + (size_t)r * (size_t)ldy + (size_t)c;
    if (accumulate)
        v = v + VLOAD_CW(0, yp);
    VSTORE_CW(v, 0, yp);
    return v;
}
/* ROWS_CW floats read one by one through a volatile pointer (another group's writes). */
#define VOLATILE_LOAD_4(p) (float4)((p)[0], (p)[1], (p)[2], (p)[3])
#define VOLATILE_LOAD_8(p) (float8)(VOLATILE_LOAD_4(p), VOLATILE_LOAD_4((p) + 4))
#define VOLATILE_LOAD_16(p) (float16)(VOLATILE_LOAD_8(p), VOLATILE_LOAD_8((p) + 8))
#define VOLATILE_LOAD_CW CAT(VOLATILE_LOAD_, ROWS_CW)

#include "gemm_io.cl"

/* ---- gemm_rows: few rows ------------------------------------------------------------------ */

/* The R-row register block is spelled out by the preprocessor: PoCL does not unroll loops over
 * private arrays, and accumulators in memory are 3x slower there. */
#define REP_R1(M) M(0)
#define REP_R2(M) REP_R1(M) M(1)
#define REP_R4(M) REP_R2(M) M(2) M(3)
#define REP_R8(M) REP_R4(M) M(4) M(5) M(6) M(7)
#define REPR(R, M) REP_R##R(M)

#if ROWS_VPW == 2
/* the second vector's chains (columns c0 + ROWS_CW ..): the same order as the first's */
#define R_B(x) x
#else
#define R_B(x)
#endif
#define R_ACC(r)                                                                                   \
    floatCW acc##r = (floatCW)(0.0f), tot##r = (floatCW)(0.0f);                                    \
    R_B(floatCW accB##r = (floatCW)(0.0f); floatCW totB##r = (floatCW)(0.0f);)
#define R_ZERO(r) acc##r = (floatCW)(0.0f); R_B(accB##r = (floatCW)(0.0f);)
#define R_FOLD(r) tot##r = first ? acc##r : tot##r + acc##r; R_B(totB##r = first ? accB##r : totB##r + accB##r;)
#define R_STORE(r) store4(r, tot##r, 0) R_B(store4(r, totB##r, ROWS_CW))

#if ROWS_STAGE
/* X staged ROWS_XK at a time in local memory, normalized once per group (GPUs) */
#define R_XN(r) xs[(r) * ROWS_XK + kk]
#define R_ROW(r)
#else
/* every work-item reads X itself (CPUs: the cache serves it; no barrier in the k loop) */
#define R_XN(r) load_xn(x, x_off, ldx, src##r, kb + kk, st##r.x, st##r.y, ln_w, ln_b, has_ln)
#define R_ROW(r)                                                                                   \
    const int src##r = source_row(r0 + (r), m, gather);                                            \
    const float2 st##r = has_ln ? merge_stats(ln_stats + (size_t)src##r * (size_t)ln_nb, ln_nb,    \
                                              ln_sb, k, ln_eps)                                    \
                                : (float2)(0.0f, 1.0f);
#endif
#define R_FMA(r)                                                                                   \
    {                                                                                              \
        const floatCW xb = (floatCW)(R_XN(r));                                                     \
        acc##r = fma(xb, wv, acc##r);                                                              \
        R_B(accB##r = fma(xb, wvB, accB##r);)                                                      \
    }
#if !ROWS_STAGE
/* four steps of k at once: X (normalized) read as a vector, the chains in the same order */
#define R_X4(r)                                                                                    \
    const float4 xq##r =                                                                           \
        load_xn4(x, x_off, ldx, src##r, kb + kk, st##r.x, st##r.y, ln_w, ln_b, has_ln);
#define R_FMA_SJ(r, j)                                                                             \
    {                                                                                              \
        const floatCW xb = (floatCW)(xq##r.s##j);                                                  \
        acc##r = fma(xb, wv##j, acc##r);                                                           \
        R_B(accB##r = fma(xb, wvB##j, accB##r);)                                                   \
    }
#define R_FMA_S0(r) R_FMA_SJ(r, 0)
#define R_FMA_S1(r) R_FMA_SJ(r, 1)
#define R_FMA_S2(r) R_FMA_SJ(r, 2)
#define R_FMA_S3(r) R_FMA_SJ(r, 3)
#define ROWS_K_BLOCK4(R)                                                                           \
    for (; kk + 4 <= kn; kk += 4) {                                                                \
        REPR(R, R_X4)                                                                              \
        const floatCW wv0 = LOAD_WCW(wp, (size_t)kk * (size_t)W_STRIDE);                           \
        const floatCW wv1 = LOAD_WCW(wp, (size_t)(kk + 1) * (size_t)W_STRIDE);                     \
        const floatCW wv2 = LOAD_WCW(wp, (size_t)(kk + 2) * (size_t)W_STRIDE);                     \
        const floatCW wv3 = LOAD_WCW(wp, (size_t)(kk + 3) * (size_t)W_STRIDE);                     \
        R_B(const floatCW wvB0 = LOAD_WCW(wpB, (size_t)kk * (size_t)W_STRIDE);                     \
            const floatCW wvB1 = LOAD_WCW(wpB, (size_t)(kk + 1) * (size_t)W_STRIDE);               \
            const floatCW wvB2 = LOAD_WCW(wpB, (size_t)(kk + 2) * (size_t)W_STRIDE);               \
            const floatCW wvB3 = LOAD_WCW(wpB, (size_t)(kk + 3) * (size_t)W_STRIDE);)              \
        REPR(R, R_FMA_S0)                                                                          \
        REPR(R, R_FMA_S1)                                                                          \
        REPR(R, R_FMA_S2)                                                                          \
        REPR(R, R_FMA_S3)                                                                          \
    }
#else
#define ROWS_K_BLOCK4(R)
#endif

/* The R rows' sums go to this work-item's own part of `vals` (no private array, which PoCL keeps
 * in memory and compiles slowly next to barriers); store_rows then runs the epilogue on them
 * and leaves the stored values there for the statistics. One loop, not a copy per row and
 * vector: the epilogue's vector exp()/erf() inlined R x VPW times made the program take PoCL
 * over ten minutes to build. */
#define store4(r, t, cofs) VSTORE_CW((t), 0, vals + (r) * ROWS_COLS + lid * ROWS_WCOLS + (cofs));

inline void store_rows(__local float *vals, const int rows, const int lid, const int r0,
                       const int c0, const int m, const int n, __global const float *w_scale,
                       __global const WEIGHT_T *bias, const int act, const int accumulate,
                       __global float *y, const ulong y_off, const int ldy, const int split_q,
                       __global float *kpool, __global float *vpool, __global const int4 *tokrow,
                       const int kv_half)
{
    for (int rr = 0; rr < rows; rr++)
        for (int h = 0; h < ROWS_VPW; h++) {
            __local float *own = vals + rr * ROWS_COLS + lid * ROWS_WCOLS + h * ROWS_CW;
            const int cv = c0 + h * ROWS_CW;
            if (r0 + rr < m && cv + ROWS_CW <= n &&
                (split_q == 0 || cv / split_q == (cv + ROWS_CW - 1) / split_q)) {
                VSTORE_CW(store_out_cw(r0 + rr, cv, VLOAD_CW(0, own), w_scale, bias, act,
                                       accumulate, y, y_off, ldy, split_q, kpool, vpool, tokrow,
                                       kv_half),
                          0, own);
                continue;
            }
            for (int j = 0; j < ROWS_CW; j++)
                if (r0 + rr < m && cv + j < n)
                    own[j] = store_out(r0 + rr, cv + j, own[j], w_scale, bias, act, accumulate, y,
                                       y_off, ldy, split_q, kpool, vpool, tokrow, kv_half);
        }
}

#if ROWS_STAGE
#define ROWS_PROLOGUE(R)                                                                           \
    __local float xs[R * ROWS_XK];                                                                 \
    __local float lmean[R], lrstd[R];                                                              \
    __local int lsrc[R];                                                                           \
    if (lid < R) {                                                                                 \
        const int src = source_row(r0 + lid, m, gather);                                           \
        lsrc[lid] = src;                                                                           \
        const float2 s = has_ln ? merge_stats(ln_stats + (size_t)src * (size_t)ln_nb, ln_nb, ln_sb, \
                                              k, ln_eps)                                           \
                                : (float2)(0.0f, 1.0f);                                            \
        lmean[lid] = s.x;                                                                          \
        lrstd[lid] = s.y;                                                                          \
    }                                                                                              \
    barrier(CLK_LOCAL_MEM_FENCE);
#define ROWS_PASS(R)                                                                               \
    for (int e = lid; e < R * ROWS_XK; e += ROWS_NT) {                                             \
        const int rr = e / ROWS_XK, kk = e % ROWS_XK;                                              \
        if (kk < kn)                                                                               \
            xs[e] = load_xn(x, x_off, ldx, lsrc[rr], kb + kk, lmean[rr], lrstd[rr], ln_w, ln_b,    \
                            has_ln);                                                               \
    }                                                                                              \
    barrier(CLK_LOCAL_MEM_FENCE);
#define ROWS_PASS_END barrier(CLK_LOCAL_MEM_FENCE);
#define ROWS_STEP ROWS_XK
#else
#define ROWS_PROLOGUE(R) REPR(R, R_ROW)
#define ROWS_PASS(R)
#define ROWS_PASS_END
#define ROWS_STEP (1 << 30) /* one pass over the whole chunk */
#endif

#if ROWS_SPLIT
/* Chunks in groups of their own: each writes its chains to `partial`; the last group of a tile
 * adds them in chunk order (volatile reads: another group's writes, not a cached copy). */
#define R_PART_OUT(r)                                                                              \
    if (r0 + (r) < m)                                                                              \
        VSTORE_CW(tot##r, 0, partial + ((size_t)cbeg * (size_t)m + (size_t)(r0 + (r))) *           \
                                           (size_t)n4 + (size_t)c0);
#define R_PART_IN(r)                                                                               \
    if (r0 + (r) < m) {                                                                            \
        __global volatile const float *pp = partial +                                              \
            ((size_t)q * (size_t)m + (size_t)(r0 + (r))) * (size_t)n4 + (size_t)c0;                \
        const floatCW p = VOLATILE_LOAD_CW(pp);                                                    \
        tot##r = q == 0 ? p : tot##r + p;                                                          \
    }
#define ROWS_SPLIT_DECL __local int last;
/* Every barrier here is reached by the whole group unconditionally: PoCL replicates the code
 * after a barrier under a condition (or after a return) once per path, which made this kernel
 * take minutes to compile. Groups that are not the tile's last keep going and store nothing. */
#define ROWS_SPLIT_COMBINE(R)                                                                      \
    if (split && c0 < n) {                                                                         \
        REPR(R, R_PART_OUT)                                                                        \
    }                                                                                              \
    mem_fence(CLK_GLOBAL_MEM_FENCE);                                                               \
    barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);                                           \
    if (split && lid == 0) {                                                                       \
        const size_t tile = (size_t)get_group_id(1) * get_num_groups(0) + get_group_id(0);         \
        last = atomic_inc(counters + tile) == n_chunks - 1;                                        \
        if (last)                                                                                  \
            atomic_xchg(counters + tile, 0);                                                       \
    }                                                                                              \
    barrier(CLK_LOCAL_MEM_FENCE);                                                                  \
    const int keep = !split || last;                                                               \
    if (split && keep) {                                                                           \
        mem_fence(CLK_GLOBAL_MEM_FENCE);                                                           \
        for (int q = 0; q < n_chunks && c0 < n; q++) {                                             \
            REPR(R, R_PART_IN)                                                                     \
        }                                                                                          \
    }
#else
#define ROWS_SPLIT_DECL
#define ROWS_SPLIT_COMBINE(R) const int keep = 1;
#endif

/* gemm_rowsR's (column group, row block) from its group (dimensions 0 and 1 of the range): with
 * ROWS_ORDER 1 the linear group order walks the row blocks first, so the groups a CPU runs one
 * after another read the same columns of W (cached) instead of all of W per row block. */
#if ROWS_ORDER
#define ROWS_GROUP_LINEAR ((int)(get_group_id(1) * get_num_groups(0) + get_group_id(0)))
#define ROWS_COL_GROUP (ROWS_GROUP_LINEAR / (int)get_num_groups(1))
#define ROWS_ROW_BLOCK (ROWS_GROUP_LINEAR % (int)get_num_groups(1))
#else
#define ROWS_COL_GROUP ((int)get_group_id(0))
#define ROWS_ROW_BLOCK ((int)get_group_id(1))
#endif

#define ROWS_KERNEL(R)                                                                             \
    __kernel __attribute__((reqd_work_group_size(ROWS_NT, 1, 1))) void gemm_rows##R(GEMM_ARGS)    \
    {                                                                                              \
        __local float vals[R * ROWS_COLS];                                                         \
        ROWS_SPLIT_DECL                                                                            \
        const int lid = (int)get_local_id(0);                                                      \
        const int col_group = ROWS_COL_GROUP;                                                      \
        const int c0 = (col_group * ROWS_NT + lid) * ROWS_WCOLS;                                   \
        const int r0 = ROWS_ROW_BLOCK * R;                                                         \
        const int n_chunks = (k + chunk_len - 1) / chunk_len;                                      \
        const int n4 = (n + 15) & ~15; /* partial's row stride */                                  \
        const int split = ROWS_SPLIT && (int)get_num_groups(2) > 1;                                \
        const int cbeg = split ? (int)get_group_id(2) : 0;                                         \
        const int cend = split ? cbeg + 1 : n_chunks;                                              \
        const int has_ln = ln_stats != 0;                                                          \
        (void)n4;                                                                                  \
        ROWS_PROLOGUE(R)                                                                           \
        REPR(R, R_ACC)                                                                             \
        for (int chunk = cbeg; chunk < cend; chunk++) {                                            \
            const bool first = chunk == cbeg;                                                      \
            const int kend = min(k, (chunk + 1) * chunk_len);                                      \
            REPR(R, R_ZERO)                                                                        \
            for (int kb = chunk * chunk_len; kb < kend; kb += ROWS_STEP) {                         \
                const int kn = min(ROWS_STEP, kend - kb);                                          \
                ROWS_PASS(R)                                                                       \
                if (c0 < n) {                                                                      \
                    __global const WMAT_T *wp = w + w_off + weight_index(kb, c0, k, ldw, W_PANEL); \
                    R_B(/* past the last column: read the first vector's again, stored nowhere */  \
                        __global const WMAT_T *wpB = c0 + ROWS_CW < n ? w + w_off +                \
                            weight_index(kb, c0 + ROWS_CW, k, ldw, W_PANEL) : wp;)                 \
                    int kk = 0;                                                                    \
                    ROWS_K_BLOCK4(R)                                                               \
                    for (; kk < kn; kk++) {                                                        \
                        const floatCW wv = LOAD_WCW(wp, (size_t)kk * (size_t)W_STRIDE);            \
                        R_B(const floatCW wvB = LOAD_WCW(wpB, (size_t)kk * (size_t)W_STRIDE);)     \
                        REPR(R, R_FMA)                                                             \
                    }                                                                              \
                }                                                                                  \
                ROWS_PASS_END                                                                      \
            }                                                                                      \
            REPR(R, R_FOLD)                                                                        \
        }                                                                                          \
        ROWS_SPLIT_COMBINE(R)                                                                      \
        if (keep) {                                                                                \
            REPR(R, R_STORE)                                                                       \
            store_rows(vals, R, lid, r0, c0, m, n, w_scale, bias, act, accumulate, y, y_off, ldy,  \
                       split_q, kpool, vpool, tokrow, kv_half);                                    \
        }                                                                                          \
        barrier(CLK_LOCAL_MEM_FENCE);                                                              \
        if (keep && stats_out)                                                                     \
            write_stats(vals, ROWS_COLS, R, ROWS_COLS, r0, col_group * ROWS_COLS, m,              \
                        n, lid, ROWS_NT, stats_out, stats_nb);                                     \
    }

ROWS_KERNEL(1)
ROWS_KERNEL(2)
ROWS_KERNEL(4)
ROWS_KERNEL(8)

/* ---- gemm_ln_rows: the LayerNorm prologue as a pass of its own ------------------------------ */

/* Row r of Y (ldy >= k) = row source_row(r) of X normalized by load_xn4/load_xn, the functions
 * that hand the products above their X, so that a product of these rows without a prologue has
 * the bits of the product with it. cl_gemm.c runs it above ln_apart_m rows on CPUs, where each
 * work-item of gemm_rows would otherwise normalize every X value it reads, once per group of
 * columns. One work-item per row; W is not read. */
__kernel void gemm_ln_rows(GEMM_ARGS)
{
    const int r = (int)get_global_id(1);
    if (r >= m)
        return;
    const int src = source_row(r, m, gather);
    const float2 st = merge_stats(ln_stats + (size_t)src * (size_t)ln_nb, ln_nb, ln_sb, k, ln_eps);
    __global float *yr = y + y_off + (size_t)r * (size_t)ldy;
    int i = 0;
    for (; i + 4 <= k; i += 4)
        vstore4(load_xn4(x, x_off, ldx, src, i, st.x, st.y, ln_w, ln_b, 1), 0, yr + i);
    for (; i < k; i++)
        yr[i] = load_xn(x, x_off, ldx, src, i, st.x, st.y, ln_w, ln_b, 1);
}

/* ---- gemm_tiles: many rows ---------------------------------------------------------------- */

__kernel __attribute__((reqd_work_group_size(TILE_RY, TILE_RX, 1))) void gemm_tiles(GEMM_ARGS)
{
    __local float xs[TILE_K][TILE_M + 1];
    __local float ws[TILE_K][TILE_N + 1];
    __local float lmean[TILE_M], lrstd[TILE_M];
    __local int lsrc[TILE_M];
    __local float vals[TILE_M * TILE_N];
    const int tx = (int)get_local_id(0); /* along n */
    const int ty = (int)get_local_id(1); /* along m */
    const int tid = ty * TILE_RY + tx;
    const int mb = (int)get_group_id(1) * TILE_M;
    const int nb = (int)get_group_id(0) * TILE_N;
    const int has_ln = ln_stats != 0;
    if (tid < TILE_M) {
        const int src = source_row(mb + tid, m, gather);
        lsrc[tid] = src;
        const float2 s = has_ln ? merge_stats(ln_stats + (size_t)src * (size_t)ln_nb, ln_nb, ln_sb,
                                              k, ln_eps)
                                : (float2)(0.0f, 1.0f);
        lmean[tid] = s.x;
        lrstd[tid] = s.y;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    float acc[WPT_M][WPT_N], tot[WPT_M][WPT_N];
    for (int i = 0; i < WPT_M; i++)
        for (int j = 0; j < WPT_N; j++)
            acc[i][j] = tot[i][j] = 0.0f;

    for (int kb = 0; kb < k; kb += TILE_K) {
        if (kb > 0 && kb % chunk_len == 0) { /* a chunk ends: add its chains to the totals */
            for (int i = 0; i < WPT_M; i++)
                for (int j = 0; j < WPT_N; j++) {
                    tot[i][j] = kb == chunk_len ? acc[i][j] : tot[i][j] + acc[i][j];
                    acc[i][j] = 0.0f;
                }
        }
        for (int e = tid; e < TILE_M * TILE_K; e += TILE_WG) {
            const int row = e / TILE_K, kk = e % TILE_K;
            const int gk = kb + kk;
            xs[kk][row] = (mb + row < m && gk < k)
                              ? load_xn(x, x_off, ldx, lsrc[row], gk, lmean[row], lrstd[row], ln_w,
                                        ln_b, has_ln)
                              : 0.0f;
        }
        for (int e = tid; e < TILE_N * TILE_K; e += TILE_WG) {
            const int kk = e / TILE_N, col = e % TILE_N; /* neighbours read neighbouring columns */
            const int gc = nb + col, gk = kb + kk;
            ws[kk][col] = (gc < n && gk < k)
                              ? LOAD_WM(w, w_off + weight_index(gk, gc, k, ldw, W_PANEL))
                              : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        const int kn = min(TILE_K, k - kb);
        for (int kk = 0; kk < kn; kk++) {
            float xv[WPT_M], wv[WPT_N];
            for (int i = 0; i < WPT_M; i++)
                xv[i] = xs[kk][ty + i * TILE_RX];
            for (int j = 0; j < WPT_N; j++)
                wv[j] = ws[kk][tx + j * TILE_RY];
            for (int i = 0; i < WPT_M; i++)
                for (int j = 0; j < WPT_N; j++)
                    acc[i][j] = fma(xv[i], wv[j], acc[i][j]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const bool one_chunk = chunk_len >= k;
    for (int i = 0; i < WPT_M; i++) {
        const int rr = ty + i * TILE_RX, r = mb + rr;
        for (int j = 0; j < WPT_N; j++) {
            const int cc = tx + j * TILE_RY, c = nb + cc;
            const float t = one_chunk ? acc[i][j] : tot[i][j] + acc[i][j];
            if (r < m && c < n)
                vals[rr * TILE_N + cc] = store_out(r, c, t, w_scale, bias, act, accumulate, y,
                                                   y_off, ldy, split_q, kpool, vpool, tokrow,
                                                   kv_half);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE); /* unconditional: see ROWS_SPLIT_COMBINE */
    if (stats_out)
        write_stats(vals, TILE_N, TILE_M, TILE_N, mb, nb, m, n, tid, TILE_WG, stats_out, stats_nb);
}
