/* attention.cl: multi-head scaled dot-product attention for every attention of Kosmos-2 - the
 * vision encoder (all keys), the resampler's cross-attention (5.17's causal mask over the first
 * latent_query_num K/V rows, or all rows), and the text decoder (prefill and decode over the KV
 * cache in slots, several sequences of different lengths in one launch). Mirrors
 * ke_op_attention (worker/engine/ref_ops.h); tested against it in tests/unit/test_cl_ops.c.
 *
 *   for output row r, head h, with (qr, k0, nk) = rows[r]:
 *     s_j   = (q[qr, h] . k[k0 + j, h]) * scale          j < nk (only the visible keys)
 *     p_j   = softmax_j(s)
 *     out[r, h] = sum_j p_j v[k0 + j, h]
 *
 * Which keys a row sees is the host's business: rows[r] = (q row, first key row, key count),
 * int4 (w unused). Encoder: (r, image base, seq); decoder: (t, slot * capacity, past + i + 1);
 * resampler: (i, image base, i + 1) or (i, image base, all rows). Masked keys are simply not
 * visited, which equals HF's finite-minimum additive mask (their exp() is 0) and never gives NaN.
 *
 * Memory layout (f32, row-major, element offsets; head h owns columns [h*hd, (h+1)*hd)):
 *
 *   q   row i at q[q_off + i*q_stride ...]        <- heads side by side in a row
 *   k   row j at k[k_off + j*kv_stride ...]       (k and v may be one fused QKV buffer, or the
 *   v   row j at v[v_off + j*kv_stride ...]        per-layer KV cache (slots*capacity, embed))
 *   out row r at out[r*out_stride ...]
 *
 * One work-group per (row, head): group g = r*heads + h; global = n_rows*heads*WG_SIZE,
 * local = WG_SIZE. Keys are processed in chunks of WG_SIZE (one score per work-item) with an
 * online softmax (running max and sum, the accumulator rescaled per chunk), so any number of
 * keys and any head_dim work with O(WG_SIZE + head_dim) local memory. qh and acc are __local
 * arguments of head_dim floats each (set by the host with clSetKernelArg(size, NULL)).
 * FP_CONTRACT off (products and sums round as in the C reference).
 *
 * Tunables (-D): WG_SIZE  work-items per (row, head), a power of two (64)
 */
#pragma OPENCL FP_CONTRACT OFF

#ifndef WG_SIZE
#define WG_SIZE 64
#endif
#if WG_SIZE < 1 || (WG_SIZE & (WG_SIZE - 1)) != 0
#error "WG_SIZE must be a power of two"
#endif

/* Reduction of v over the work-group (op: 0 max, 1 sum); every work-item gets the result. */
static float group_reduce(__local float *red, float v, const int op)
{
    const int lid = (int)get_local_id(0);
    red[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG_SIZE / 2; s > 0; s >>= 1) {
        if (lid < s)
            red[lid] = op == 0 ? fmax(red[lid], red[lid + s]) : red[lid] + red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void attention(__global const float *q, const int q_off, const int q_stride,
               __global const float *k, const int k_off, __global const float *v, const int v_off,
               const int kv_stride, __global const int4 *rows, __global float *out,
               const int out_stride, const int heads, const int head_dim, const float scale,
               __local float *qh, __local float *acc)
{
    __local float sc[WG_SIZE];
    __local float red[WG_SIZE];
    const int lid = (int)get_local_id(0);
    const int g = (int)get_group_id(0);
    const int r = g / heads, h = g % heads;
    const int4 info = rows[r];
    const int nk = info.z;
    const size_t hcol = (size_t)h * (size_t)head_dim;

    __global const float *qr = q + (size_t)q_off + (size_t)info.x * (size_t)q_stride + hcol;
    for (int d = lid; d < head_dim; d += WG_SIZE) {
        qh[d] = qr[d];
        acc[d] = 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    float m = -INFINITY, l = 0.0f;
    for (int c0 = 0; c0 < nk; c0 += WG_SIZE) {
        const int j = c0 + lid;
        float s = -INFINITY;
        if (j < nk) {
            __global const float *kr =
                k + (size_t)k_off + (size_t)(info.y + j) * (size_t)kv_stride + hcol;
            float dot = 0.0f;
            for (int d = 0; d < head_dim; d++)
                dot = dot + qh[d] * kr[d];
            s = dot * scale;
        }
        const float mc = group_reduce(red, s, 0);
        const float mn = fmax(m, mc);
        const float alpha = exp(m - mn); /* 0 on the first chunk (m = -inf) */
        const float p = j < nk ? exp(s - mn) : 0.0f;
        sc[lid] = p;
        l = l * alpha + group_reduce(red, p, 1); /* the barriers inside publish sc */
        const int cn = min(WG_SIZE, nk - c0);
        for (int d = lid; d < head_dim; d += WG_SIZE) {
            __global const float *vc =
                v + (size_t)v_off + (size_t)(info.y + c0) * (size_t)kv_stride + hcol + (size_t)d;
            float a = acc[d] * alpha;
            for (int jj = 0; jj < cn; jj++)
                a = a + sc[jj] * vc[(size_t)jj * (size_t)kv_stride];
            acc[d] = a;
        }
        m = mn;
        barrier(CLK_LOCAL_MEM_FENCE); /* sc is rewritten by the next chunk */
    }

    const float inv = nk > 0 ? 1.0f / l : 0.0f;
    __global float *o = out + (size_t)r * (size_t)out_stride + hcol;
    for (int d = lid; d < head_dim; d += WG_SIZE)
        o[d] = acc[d] * inv;
}
