/* gemm_io.cl: what every GEMM kernel shares around its product, pulled in with
 * `#include "gemm_io.cl"` after common.cl (kernels/gemm.cl, kernels/gemm_mma.cl; it may not
 * include in turn): the argument list GEMM_ARGS (cl_gemm.c sets it, the same for every kernel),
 * X's rows with the LayerNorm prologue, the epilogue of one output, and Y's row statistics.
 * Shapes and layouts: gemm.cl's header comment. The includer defines WMAT_T, the type of W's
 * elements (WEIGHT_T, or char for int8 codes under W_INT8). Nothing here is a kernel. */

#define GEMM_ARGS                                                                                  \
    const int m, const int n, const int k, const int chunk_len, __global const float *x,          \
        const ulong x_off, const int ldx, __global const int *gather,                              \
        __global const float2 *ln_stats, const int ln_nb, const int ln_sb,                         \
        __global const WEIGHT_T *ln_w, __global const WEIGHT_T *ln_b, const float ln_eps,          \
        __global const WMAT_T *w, const ulong w_off, const int ldw,                                \
        __global const WEIGHT_T *bias, __global float *y, const ulong y_off, const int ldy,        \
        const int act, const int accumulate, __global float2 *stats_out, const int stats_nb,       \
        const int split_q, __global float *kpool, __global float *vpool,                           \
        __global const int4 *tokrow, const int kv_half, __global float *partial,                   \
        __global int *counters, __global const float *w_scale

/* X's source row of output row r (r clamped into the matrix: masked rows read valid memory). */
inline int source_row(const int r, const int m, __global const int *gather)
{
    const int rr = min(r, m - 1);
    return gather ? gather[rr] : rr;
}

inline float load_xn(__global const float *x, const ulong x_off, const int ldx, const int src,
                     const int i, const float mean, const float rstd,
                     __global const WEIGHT_T *ln_w, __global const WEIGHT_T *ln_b,
                     const int has_ln)
{
    const float v = x[x_off + (size_t)src * (size_t)ldx + (size_t)i];
    if (!has_ln)
        return v;
    return (v - mean) * rstd * LOAD_W(ln_w, i) + LOAD_W(ln_b, i);
}

/* load_xn for i .. i + 3 at once: the same arithmetic per element, with the LayerNorm's
 * parameters converted four at a time (PoCL converts a lone half in software, which made the
 * prologue cost three times the product on CPUs). */
inline float4 load_xn4(__global const float *x, const ulong x_off, const int ldx, const int src,
                       const int i, const float mean, const float rstd,
                       __global const WEIGHT_T *ln_w, __global const WEIGHT_T *ln_b,
                       const int has_ln)
{
    const float4 v = vload4(0, x + x_off + (size_t)src * (size_t)ldx + (size_t)i);
    if (!has_ln)
        return v;
    return (v - mean) * rstd * LOAD_W4(ln_w, i) + LOAD_W4(ln_b, i);
}

/* Output (r, c) after the epilogue, stored where it goes; returns the value (for statistics). */
inline float store_out(const int r, const int c, float v, __global const float *w_scale,
                       __global const WEIGHT_T *bias, const int act, const int accumulate,
                       __global float *y, const ulong y_off, const int ldy, const int split_q,
                       __global float *kpool, __global float *vpool, __global const int4 *tokrow,
                       const int kv_half)
{
#if W_INT8
    v = v * w_scale[c];
#endif
    if (bias)
        v = v + LOAD_W(bias, c);
    v = activate(v, act);
    if (split_q > 0 && c >= split_q) {
        const int part = c / split_q; /* 1: K, 2: V */
        __global float *pool = part == 1 ? kpool : vpool;
        const size_t at = (size_t)tokrow[r].x * (size_t)split_q + (size_t)(c - part * split_q);
        if (kv_half)
            vstore_half_rte(v, at, (__global half *)pool);
        else
            pool[at] = v;
        return v;
    }
    const size_t idx = y_off + (size_t)r * (size_t)ldy + (size_t)c;
    if (accumulate)
        v = v + y[idx];
    y[idx] = v;
    return v;
}

/* The statistics of the rows [r0, r0 + rows) x columns [c0, c0 + cols) held in vals (row stride
 * `stride`), one (row, block) per work-item `t` of `nt`. */
inline void write_stats(__local const float *vals, const int stride, const int rows, const int cols,
                        const int r0, const int c0, const int m, const int n, const int t,
                        const int nt, __global float2 *stats_out, const int stats_nb)
{
    const int nblk = cols / STAT_SB;
    for (int p = t; p < rows * nblk; p += nt) {
        const int rr = p / nblk, b = p % nblk;
        const int row = r0 + rr, col = c0 + b * STAT_SB;
        if (row < m && col < n)
            stats_out[(size_t)row * (size_t)stats_nb + (size_t)(col / STAT_SB)] =
                block_stats(vals + rr * stride + b * STAT_SB, min(STAT_SB, n - col));
    }
}
