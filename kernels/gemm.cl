/* gemm.cl: the matrix products of the model (nn.Linear), Y = X · Wᵀ + bias, f32 arithmetic.
 *
 *   Y[r, c] (=|+=) sum_i X[r, i] * W[c, i]  (+ bias[c])       r < m, c < n, i < k
 *
 * Shapes and memory layout (row-major, element offsets and leading dimensions):
 *
 *                 <------- k ------->                       <------- n ------->
 *   X  f32   row r | x[x_off + r*ldx + i] |     Y  f32   row r | y[y_off + r*ldy + c] |
 *   (m, k)         |   (ldx >= k)         |     (m, n)         |   (ldy >= n)         |
 *
 *                 <------- k ------->
 *   W  f32   row c | w[w_off + c*k + i]   |     bias  (n) of W's type, at b_off, or NULL
 *   or half  (n, k), rows k long (nn.Linear's (out, in)), half read with vload_half(N)
 *
 * Kernels (all take the same arguments, see below; they differ in the NDRange):
 *
 *   gemm_simple   one work-item per output: the        global (roundup(n,16), roundup(m,4)),
 *                 reference kernel, any shape, slow.   local (16, 4)
 *
 *   gemm_dot_rR   (R = 1, 2, 4, 8 up to DOT_MAX_R) the small-m kernel (decode: W streamed once
 *                 per R rows of X at full bandwidth). Each work-item computes R rows x DOT_CPI
 *                 columns as dot products along k with DOT_VW-wide loads (vload_halfN / vloadN);
 *                 DOT_LANES work-items share one column group, splitting k, and are summed in
 *                 local memory. A work-group covers DOT_COLS column groups:
 *
 *                     W rows c0 .. c0+DOT_CPI-1 <- one column group     k ->
 *                     | lane0: i=0..VW-1 | lane1: VW.. | ... | lane0 again (stride LANES*VW)
 *
 *                 global (ceil(n / (DOT_CPI*DOT_COLS)) * DOT_LANES*DOT_COLS, ceil(m / R)),
 *                 local (DOT_LANES*DOT_COLS, 1). Rows and columns past the edge are clamped
 *                 for reading and not stored; k % DOT_VW is a scalar tail.
 *
 *   gemm_tiled    the large-m kernel (prefill, vision): a TILE_M x TILE_N block of Y per
 *                 work-group, X (TILE_M x TILE_K) and W (TILE_N x TILE_K) tiles staged in local
 *                 memory (W converted to f32 there), each work-item WPT_M x WPT_N outputs in
 *                 registers (rows ty + i*(TILE_M/WPT_M), columns tx + j*(TILE_N/WPT_N)):
 *
 *                     Xs[TILE_K][TILE_M+1], Ws[TILE_K][TILE_N+1]  (k-major, padded)
 *
 *                 global (ceil(n/TILE_N) * TILE_N/WPT_N, ceil(m/TILE_M) * TILE_M/WPT_M),
 *                 local (TILE_N/WPT_N, TILE_M/WPT_M). Tiles past m, n or k are zero-filled.
 *
 * Arguments: m, n, k (int); x, x_off (ulong), ldx (int); w, w_off (ulong); bias (may be NULL),
 * b_off (ulong), has_bias (int); y, y_off (ulong), ldy (int); accumulate (int: 1 = Y += ...).
 * X and Y must not overlap. All arithmetic is f32; OpenCL 1.2 core only (no cl_khr_fp16).
 *
 * Tunables (-D), constraints checked below:
 *   WEIGHT_HALF   1: W and bias are IEEE half (read with vload_half*); 0: f32 (0)
 *   DOT_VW        vector width of the dot kernels' loads, 4 or 8 (8)
 *   DOT_LANES     work-items splitting k per column group, a power of two (1 = none) (1)
 *   DOT_COLS      column groups per work-group (8)
 *   DOT_CPI       columns per work-item, 1..4 (4)
 *   DOT_MAX_R     largest R compiled, 1, 2, 4 or 8 (4)
 *   TILE_M, TILE_N, TILE_K, WPT_M, WPT_N   the tiled kernel's blocking (64, 64, 16, 4, 4);
 *                 TILE_M % WPT_M == 0, TILE_N % WPT_N == 0 and the work-group
 *                 (TILE_M/WPT_M)*(TILE_N/WPT_N) must divide TILE_M*TILE_K and TILE_N*TILE_K
 */

#ifndef WEIGHT_HALF
#define WEIGHT_HALF 0
#endif
#ifndef DOT_VW
#define DOT_VW 8
#endif
#ifndef DOT_LANES
#define DOT_LANES 1
#endif
#ifndef DOT_COLS
#define DOT_COLS 8
#endif
#ifndef DOT_CPI
#define DOT_CPI 4
#endif
#ifndef DOT_MAX_R
#define DOT_MAX_R 4
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

#if DOT_VW != 4 && DOT_VW != 8
#error "DOT_VW must be 4 or 8"
#endif
#if DOT_LANES < 1 || (DOT_LANES & (DOT_LANES - 1)) != 0
#error "DOT_LANES must be a power of two"
#endif
#if DOT_CPI < 1 || DOT_CPI > 4 || DOT_COLS < 1
#error "DOT_CPI must be 1..4 and DOT_COLS >= 1"
#endif
#if DOT_MAX_R != 1 && DOT_MAX_R != 2 && DOT_MAX_R != 4 && DOT_MAX_R != 8
#error "DOT_MAX_R must be 1, 2, 4 or 8"
#endif
#if TILE_M % WPT_M != 0 || TILE_N % WPT_N != 0
#error "TILE_M and TILE_N must be multiples of WPT_M and WPT_N"
#endif
#define TILE_WG ((TILE_M / WPT_M) * (TILE_N / WPT_N))
#if (TILE_M * TILE_K) % TILE_WG != 0 || (TILE_N * TILE_K) % TILE_WG != 0
#error "the tiled work-group must divide the X and W tiles"
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define floatV CAT(float, DOT_VW)
#define VLOAD_F CAT(vload, DOT_VW)
#define VLOAD_H CAT(vload_half, DOT_VW)

#if WEIGHT_HALF
#define WEIGHT_T half
#define LOAD_W(p, i) vload_half((size_t)(i), (p))
#define LOAD_WV(p, i) VLOAD_H(0, (p) + (i)) /* vload_halfN needs only 2-byte alignment */
#else
#define WEIGHT_T float
#define LOAD_W(p, i) ((p)[(i)])
#define LOAD_WV(p, i) VLOAD_F(0, (p) + (i))
#endif

#define GEMM_ARGS                                                                                  \
    const int m, const int n, const int k, __global const float *x, const ulong x_off,            \
        const int ldx, __global const WEIGHT_T *w, const ulong w_off,                              \
        __global const WEIGHT_T *bias, const ulong b_off, const int has_bias, __global float *y,  \
        const ulong y_off, const int ldy, const int accumulate

/* Writes one output: the product plus bias, stored or accumulated. */
inline void store_out(__global float *y, const size_t idx, float v, __global const WEIGHT_T *bias,
                      const ulong b_off, const int has_bias, const int c, const int accumulate)
{
    if (has_bias)
        v += LOAD_W(bias, b_off + (ulong)c);
    if (accumulate)
        v += y[idx];
    y[idx] = v;
}

__kernel void gemm_simple(GEMM_ARGS)
{
    const int c = (int)get_global_id(0);
    const int r = (int)get_global_id(1);
    if (c >= n || r >= m)
        return;
    __global const float *xr = x + x_off + (size_t)r * (size_t)ldx;
    const size_t wr = (size_t)w_off + (size_t)c * (size_t)k;
    float acc = 0.0f;
    for (int i = 0; i < k; i++)
        acc = fma(xr[i], LOAD_W(w, wr + (size_t)i), acc);
    store_out(y, (size_t)y_off + (size_t)r * (size_t)ldy + (size_t)c, acc, bias, b_off, has_bias,
              c, accumulate);
}

/* ---- gemm_dot_rR: small m ------------------------------------------------------------------ */

/* The R x DOT_CPI register block is spelled out by the preprocessor (REP_R*, REP_C*) rather
 * than with loops over private arrays: PoCL's kernel compiler does not unroll such loops, and
 * the accumulators then live in memory (3x slower there). acc<r>_<j> are vectors along k,
 * s<r>_<j> their sums. */
#define REP_R1(M, a) M(0, a)
#define REP_R2(M, a) REP_R1(M, a) M(1, a)
#define REP_R4(M, a) REP_R2(M, a) M(2, a) M(3, a)
#define REP_R8(M, a) REP_R4(M, a) M(4, a) M(5, a) M(6, a) M(7, a)
#define REPR(R, M, a) REP_R##R(M, a)
#define REP_C1(M, a) M(0, a)
#define REP_C2(M, a) REP_C1(M, a) M(1, a)
#define REP_C3(M, a) REP_C2(M, a) M(2, a)
#define REP_C4(M, a) REP_C3(M, a) M(3, a)
#define REPC__(c, M, a) REP_C##c(M, a)
#define REPC_(c, M, a) REPC__(c, M, a)
#define REPC(M, a) REPC_(DOT_CPI, M, a)

#define ACC(r, j) acc##r##_##j
#define SUM(r, j) s##r##_##j
#define XP(r) xp##r
#define WP(j) wp##j
#define WV(j) wv##j

#define D_XPTR(r, _) __global const float *XP(r) = x + x_off + (size_t)min(r0 + r, m - 1) * (size_t)ldx;
#define D_WPTR(j, _) __global const WEIGHT_T *WP(j) = w + w_off + (size_t)min(c0 + j, n - 1) * (size_t)k;
#define D_ACC_J(j, r) floatV ACC(r, j) = (floatV)(0.0f);
#define D_ACC(r, _) REPC(D_ACC_J, r)
#define D_LOADW(j, _) const floatV WV(j) = LOAD_WV(WP(j), i);
#define D_FMA_J(j, r) ACC(r, j) = fma(xv##r, WV(j), ACC(r, j));
#define D_FMA(r, _) const floatV xv##r = VLOAD_F(0, XP(r) + i); REPC(D_FMA_J, r)
#define D_SUM_J(j, r) float SUM(r, j) = hsum(ACC(r, j));
#define D_SUM(r, _) REPC(D_SUM_J, r)
#define D_TAIL_J(j, r) SUM(r, j) = fma(XP(r)[i], LOAD_W(WP(j), i), SUM(r, j));
#define D_TAIL(r, _) REPC(D_TAIL_J, r)
#define D_RED_J(j, r) mine[((r) * DOT_CPI + (j)) * DOT_COLS * DOT_LANES + lane] = SUM(r, j);
#define D_RED(r, _) REPC(D_RED_J, r)
#define D_STORE_J(j, r)                                                                            \
    if (r0 + (r) < m && c0 + (j) < n)                                                              \
        store_out(y, (size_t)y_off + (size_t)(r0 + (r)) * (size_t)ldy + (size_t)(c0 + (j)),       \
                  SUM(r, j), bias, b_off, has_bias, c0 + (j), accumulate);
#define D_STORE(r, _) REPC(D_STORE_J, r)

inline float hsum(floatV v)
{
#if DOT_VW == 8
    const float4 h = v.lo + v.hi;
#else
    const float4 h = v;
#endif
    return (h.x + h.y) + (h.z + h.w);
}

#define DOT_RED_SIZE (DOT_LANES > 1 ? DOT_MAX_R * DOT_CPI * DOT_COLS * DOT_LANES : 1)

/* gemm_dot_r<R>: work-item (lane, cg) of group g computes rows r0 .. r0+R-1 and columns
 * c0 .. c0+DOT_CPI-1 over its share of k; lanes are fastest in the work-group so that
 * neighbouring work-items read neighbouring k of one W row (coalesced on GPUs). */
#define DOT_KERNEL(R)                                                                              \
    __kernel __attribute__((reqd_work_group_size(DOT_LANES * DOT_COLS, 1, 1)))                     \
    void gemm_dot_r##R(GEMM_ARGS)                                                                  \
    {                                                                                              \
        __local float red[DOT_RED_SIZE];                                                           \
        const int lid = (int)get_local_id(0);                                                      \
        const int lane = lid % DOT_LANES;                                                          \
        const int cg = lid / DOT_LANES;                                                            \
        const int c0 = ((int)get_group_id(0) * DOT_COLS + cg) * DOT_CPI;                           \
        const int r0 = (int)get_global_id(1) * R;                                                  \
        REPR(R, D_XPTR, _)                                                                         \
        REPC(D_WPTR, _)                                                                            \
        REPR(R, D_ACC, _)                                                                          \
        const int kv = k - k % DOT_VW;                                                             \
        for (int i = lane * DOT_VW; i < kv; i += DOT_LANES * DOT_VW) {                             \
            REPC(D_LOADW, _)                                                                       \
            REPR(R, D_FMA, _)                                                                      \
        }                                                                                          \
        REPR(R, D_SUM, _)                                                                          \
        for (int i = kv + lane; i < k; i += DOT_LANES) {                                           \
            REPR(R, D_TAIL, _)                                                                     \
        }                                                                                          \
        if (DOT_LANES > 1) {                                                                       \
            /* red[q][cg][lane], q = r*DOT_CPI + j: one tree over the lanes for all outputs */    \
            __local float *mine = red + cg * DOT_LANES;                                            \
            REPR(R, D_RED, _)                                                                      \
            barrier(CLK_LOCAL_MEM_FENCE);                                                          \
            for (int h = DOT_LANES / 2; h > 0; h >>= 1) {                                          \
                if (lane < h)                                                                      \
                    for (int q = 0; q < R * DOT_CPI; q++)                                          \
                        mine[q * DOT_COLS * DOT_LANES + lane] +=                                   \
                            mine[q * DOT_COLS * DOT_LANES + lane + h];                             \
                barrier(CLK_LOCAL_MEM_FENCE);                                                      \
            }                                                                                      \
            /* lane q stores output q (lanes loop when there are more outputs than lanes) */      \
            for (int q = lane; q < R * DOT_CPI; q += DOT_LANES) {                                  \
                const int r = r0 + q / DOT_CPI, c = c0 + q % DOT_CPI;                              \
                if (r < m && c < n)                                                                \
                    store_out(y, (size_t)y_off + (size_t)r * (size_t)ldy + (size_t)c,             \
                              mine[q * DOT_COLS * DOT_LANES], bias, b_off, has_bias, c,            \
                              accumulate);                                                         \
            }                                                                                      \
        } else {                                                                                   \
            REPR(R, D_STORE, _)                                                                    \
        }                                                                                          \
    }

DOT_KERNEL(1)
#if DOT_MAX_R >= 2
DOT_KERNEL(2)
#endif
#if DOT_MAX_R >= 4
DOT_KERNEL(4)
#endif
#if DOT_MAX_R >= 8
DOT_KERNEL(8)
#endif

/* ---- gemm_tiled: large m ------------------------------------------------------------------- */

#define TILE_RX (TILE_M / WPT_M) /* work-items along m */
#define TILE_RY (TILE_N / WPT_N) /* work-items along n */

__kernel __attribute__((reqd_work_group_size(TILE_N / WPT_N, TILE_M / WPT_M, 1)))
void gemm_tiled(GEMM_ARGS)
{
    __local float xs[TILE_K][TILE_M + 1];
    __local float ws[TILE_K][TILE_N + 1];
    const int tx = (int)get_local_id(0); /* along n */
    const int ty = (int)get_local_id(1); /* along m */
    const int tid = ty * TILE_RY + tx;
    const int mb = (int)get_group_id(1) * TILE_M;
    const int nb = (int)get_group_id(0) * TILE_N;

    float acc[WPT_M][WPT_N];
    for (int i = 0; i < WPT_M; i++)
        for (int j = 0; j < WPT_N; j++)
            acc[i][j] = 0.0f;

    for (int kb = 0; kb < k; kb += TILE_K) {
        /* stage: element e of a tile is (row e / TILE_K, kk e % TILE_K): neighbours read
           neighbouring k of one row */
        for (int e = tid; e < TILE_M * TILE_K; e += TILE_WG) {
            const int row = e / TILE_K, kk = e % TILE_K;
            const int gr = mb + row, gk = kb + kk;
            xs[kk][row] = (gr < m && gk < k) ? x[x_off + (size_t)gr * (size_t)ldx + (size_t)gk]
                                             : 0.0f;
        }
        for (int e = tid; e < TILE_N * TILE_K; e += TILE_WG) {
            const int col = e / TILE_K, kk = e % TILE_K;
            const int gc = nb + col, gk = kb + kk;
            ws[kk][col] = (gc < n && gk < k)
                              ? LOAD_W(w, w_off + (size_t)gc * (size_t)k + (size_t)gk)
                              : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TILE_K; kk++) {
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
    for (int i = 0; i < WPT_M; i++) {
        const int r = mb + ty + i * TILE_RX;
        for (int j = 0; j < WPT_N; j++) {
            const int c = nb + tx + j * TILE_RY;
            if (r < m && c < n)
                store_out(y, (size_t)y_off + (size_t)r * (size_t)ldy + (size_t)c, acc[i][j], bias,
                          b_off, has_bias, c, accumulate);
        }
    }
}
