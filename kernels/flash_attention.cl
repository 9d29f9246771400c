/* flash_attention.cl: multi-head attention of many queries at once, with K and V read once per
 * block of queries instead of once per query: the vision encoder (257 tokens per image, every
 * key), the resampler's cross-attention and the text prefill over the paged KV cache. Mirrors
 * ke_op_attention (worker/engine/ref_ops.h); tested against it and, bit for bit, against
 * decoder.cl's paged_attention in tests/unit/test_cl_flash.c. Not for decode (one query per
 * sequence: a block would hold one row), which stays with paged_attention.
 *
 *   for query row r of head h, which sees keys [0, nk_r) of its block's base:
 *     s_j       = (q[r, h] . k[j, h]) * scale                 j < nk_r
 *     out[r, h] = sum_j softmax_j(s)_j v[j, h]
 *
 * as an online softmax over chunks of KEY_CHUNK keys (chunk c = keys [c*KEY_CHUNK, ...)):
 *     m' = max(m, max_{j in c} s_j)    a = exp(m - m')    p_j = exp(s_j - m')
 *     l  = l * a + sum_j p_j           o = o * a + sum_j p_j v_j          m = m'
 * then out = o / l. m, l and o (HEAD_DIM floats) are private to the query's work-item. Masked
 * keys are never visited (HF's finite-minimum additive mask, exactly: their exp() is 0).
 *
 * Work-groups and tiles. blocks[b] = int4 (first row, rows <= BLOCK_Q, key base, keys of the
 * block = the largest nk_r of its rows) names BLOCK_Q query rows that share their keys (one
 * image, one resampler image, one sequence's slot; the host cuts them, ke_cl_flash_blocks).
 * Group g = b*heads + h takes block b, head h, one work-item per row. It walks the block's keys
 * in tiles of BLOCK_K rows: the whole group copies the tile's K and V (head h's columns) into
 * local memory, coalesced along the row, then every row runs its chunks of the tile against
 * them, up to its own nk_r. So K and V travel from global memory once per block, not per row.
 *
 *   local  kt, vt (BLOCK_K, HEAD_DIM) f32     the tile (half cache rows converted on the way in)
 *          trow   (BLOCK_K) int               each tile row's row in k/v (page table looked up
 *                                             once per key, not once per element)
 *
 * One order per device. A row's bits depend on KEY_CHUNK and DOT_ORDER only: chunks start at key
 * 0 whatever the tile (BLOCK_K is a multiple of KEY_CHUNK), a row stops at its own nk_r, and no
 * value crosses rows. So a row's result does not depend on BLOCK_Q, BLOCK_K or the other rows of
 * its block, and the host builds this file with the order of the decode kernel in use: a prompt
 * token gets the bits paged_attention would give it, and a sequence's ids do not depend on the
 * steps it shared (docs/gemm.md, "One sum, whatever the batch"):
 *     paged_attention_serial (CPUs)   KEY_CHUNK 1, DOT_ORDER 0
 *     paged_attention                 KEY_CHUNK AT_NT/4, DOT_ORDER 1 (AT_NT when
 *                                     head_dim % 4 != 0: its key rows are read whole)
 *
 * Matrix units. chunk_scores (S = Q Kᵀ) and chunk_accumulate (O = O a + P V) are the two tile
 * products; a version for tensor cores / XMX / matrix cores replaces them with subgroup
 * matrix-multiply-accumulates over the block (Q and O in fragments instead of private arrays,
 * the tile as the B operand). That changes the summation order: the text path may use it only
 * together with a decode kernel of the same order; the vision encoder and the resampler may
 * use it alone.
 *
 * Kernels (global n_blocks*heads*BLOCK_Q, local BLOCK_Q; element offsets, f32 row-major; head h
 * owns columns [h*HEAD_DIM, (h+1)*HEAD_DIM) of every row; out must not overlap q, k or v):
 *   flash_attention(q, q_off, q_stride, k, k_off, v, v_off, kv_stride, rows, blocks, out,
 *                   out_stride, heads, scale)
 *       rows[r] = int4 (q row, key base, nk_r, -) as attention.cl's; row i of q at
 *       q[q_off + i*q_stride], key j of the block at k[k_off + (base + j)*kv_stride] and
 *       v[v_off + (base + j)*kv_stride] (q, k and v may be one fused QKV buffer); output row r
 *       at out[r*out_stride]. Blocks are runs of rows [first, first + rows).
 *   flash_attention_paged(q, kpool, vpool, kv_half, tokrow, pages, max_pages, page_tokens,
 *                         blocks, out, out_stats, heads, scale)
 *       the text decoder's step (decoder.cl): token t's query is row t of q (T, heads*HEAD_DIM),
 *       its output row t of out, tokrow[t] = (cache row, slot, nk_t, id); the block's key base
 *       is the slot, key j at pool row pages[slot*max_pages + j/page_tokens]*page_tokens +
 *       j % page_tokens (f32 or half rows, kv_half); out_stats (T, heads) float2 the (mean, M2)
 *       of each head's output, as block_stats (common.cl) sums them, for inner_attn_ln.
 *
 * Tunables (-D):
 *   HEAD_DIM   the head size (64); one build per head size: q and o are private arrays
 *   BLOCK_Q    query rows (work-items) per group (64)
 *   BLOCK_K    keys per tile (64), a multiple of KEY_CHUNK; local memory 8*BLOCK_K*HEAD_DIM bytes
 *   KEY_CHUNK  keys per softmax rescale (16)
 *   DOT_ORDER  the order of a score's dot product (1): 0 four interleaved lanes over the first
 *              HEAD_DIM & ~3 columns, added (l0 + l1) + (l2 + l3), then the rest in order; 1 four
 *              contiguous quarters, each a chain from 0, added in order (one chain when
 *              HEAD_DIM % 4 != 0)
 * FP_CONTRACT off: products and sums round as the C reference and decoder.cl round them.
 */
#pragma OPENCL FP_CONTRACT OFF

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#ifndef BLOCK_Q
#define BLOCK_Q 64
#endif
#ifndef BLOCK_K
#define BLOCK_K 64
#endif
#ifndef KEY_CHUNK
#define KEY_CHUNK 16
#endif
#ifndef DOT_ORDER
#define DOT_ORDER 1
#endif
#if HEAD_DIM < 1
#error "HEAD_DIM must be at least 1"
#endif
#if BLOCK_Q < 1
#error "BLOCK_Q must be at least 1"
#endif
#if KEY_CHUNK < 1 || BLOCK_K < KEY_CHUNK || BLOCK_K % KEY_CHUNK != 0
#error "BLOCK_K must be a positive multiple of KEY_CHUNK"
#endif
#if DOT_ORDER != 0 && DOT_ORDER != 1
#error "DOT_ORDER must be 0 or 1"
#endif

#if DOT_ORDER == 1 && HEAD_DIM % 4 == 0
#define DOT_PARTS 4
#else
#define DOT_PARTS 1
#endif

/* ---- the tile products (what a matrix-unit version replaces) ----------------------------- */

/* s[j] = (q . kt[j]) * scale for the n <= KEY_CHUNK keys of a chunk; returns their maximum. */
inline float chunk_scores(const float *q, __local const float *kt, const int n, const float scale,
                          float *s)
{
    float mc = -INFINITY;
    for (int j = 0; j < KEY_CHUNK; j++) {
        if (j >= n)
            break;
        __local const float *kr = kt + j * HEAD_DIM;
#if DOT_ORDER == 0
        float4 lanes = (float4)(0.0f);
        for (int d = 0; d + 4 <= HEAD_DIM; d += 4)
            lanes = lanes + vload4(0, q + d) * vload4(0, kr + d);
        float dot = (lanes.x + lanes.y) + (lanes.z + lanes.w);
        for (int d = HEAD_DIM & ~3; d < HEAD_DIM; d++)
            dot = dot + q[d] * kr[d];
#else
        float dot = 0.0f;
        for (int e = 0; e < DOT_PARTS; e++) {
            float part = 0.0f;
            for (int d = e * (HEAD_DIM / DOT_PARTS); d < (e + 1) * (HEAD_DIM / DOT_PARTS); d++)
                part = part + q[d] * kr[d];
            dot = dot + part;
        }
#endif
        s[j] = dot * scale;
        mc = fmax(mc, s[j]);
    }
    return mc;
}

/* o = o * alpha + sum_j p[j] vt[j] over the chunk's n keys, in key order per column. */
inline void chunk_accumulate(const float *p, __local const float *vt, const int n,
                             const float alpha, float *o)
{
    for (int d = 0; d < HEAD_DIM; d++) {
        float a = o[d] * alpha;
        for (int j = 0; j < KEY_CHUNK; j++) {
            if (j >= n)
                break;
            a = a + p[j] * vt[j * HEAD_DIM + d];
        }
        o[d] = a;
    }
}

/* One chunk of n keys through the online softmax of one row. */
inline void chunk_step(const float *q, __local const float *kt, __local const float *vt,
                       const int n, const float scale, float *m, float *l, float *o)
{
    float s[KEY_CHUNK];
    const float mn = fmax(*m, chunk_scores(q, kt, n, scale, s));
    const float alpha = exp(*m - mn); /* 0 on the first chunk (m = -inf) */
    float sum = 0.0f;
    for (int j = 0; j < KEY_CHUNK; j++) {
        if (j >= n)
            break;
        s[j] = exp(s[j] - mn);
        sum = sum + s[j];
    }
    *l = *l * alpha + sum;
    chunk_accumulate(s, vt, n, alpha, o);
    *m = mn;
}

/* ---- one block ----------------------------------------------------------------------------- */

inline float load_kv(__global const float *buf, const int half_rows, const size_t at)
{
    return half_rows ? vload_half(at, (__global const half *)buf) : buf[at];
}

/* The rows of one block for head column hcol: q from q[q_at ...] (active rows), keys [0, kmax)
 * of the block, each row up to its own nk; o gets the normalised output. Key j lives in row
 * `base + j` of k/v, or, with page_tokens > 0, in the page table's row for slot `base`. Every
 * work-item of the group must call it (barriers). */
inline void flash_block(__global const float *q, const size_t q_at, const bool active, const int nk,
                        const int kmax, __global const float *k, __global const float *v,
                        const int half_rows, const size_t k_off, const size_t v_off,
                        const size_t stride, const size_t hcol, const int base,
                        __global const int *pages, const int max_pages, const int page_tokens,
                        const float scale, __local float *kt, __local float *vt,
                        __local int *trow, float *o)
{
    const int lid = (int)get_local_id(0);
    float qv[HEAD_DIM];
    for (int d = 0; d < HEAD_DIM; d++) {
        qv[d] = active ? q[q_at + (size_t)d] : 0.0f;
        o[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int t0 = 0; t0 < kmax; t0 += BLOCK_K) {
        const int tn = min(BLOCK_K, kmax - t0);
        barrier(CLK_LOCAL_MEM_FENCE); /* every row is done with the last tile */
        for (int j = lid; j < tn; j += BLOCK_Q) {
            const int key = t0 + j;
            trow[j] = page_tokens > 0
                          ? pages[(size_t)base * (size_t)max_pages + (size_t)(key / page_tokens)] *
                                    page_tokens + key % page_tokens
                          : base + key;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = lid; e < tn * HEAD_DIM; e += BLOCK_Q) {
            const size_t at = (size_t)trow[e / HEAD_DIM] * stride + hcol + (size_t)(e % HEAD_DIM);
            kt[e] = load_kv(k, half_rows, k_off + at);
            vt[e] = load_kv(v, half_rows, v_off + at);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        const int rn = active ? min(tn, nk - t0) : 0;
        for (int c = 0; c < rn; c += KEY_CHUNK)
            chunk_step(qv, kt + c * HEAD_DIM, vt + c * HEAD_DIM, min(KEY_CHUNK, rn - c), scale,
                       &m, &l, o);
    }
    const float inv = nk > 0 ? 1.0f / l : 0.0f;
    for (int d = 0; d < HEAD_DIM; d++)
        o[d] = o[d] * inv;
}

/* ---- kernels --------------------------------------------------------------------------------- */

__kernel __attribute__((reqd_work_group_size(BLOCK_Q, 1, 1)))
void flash_attention(__global const float *q, const int q_off, const int q_stride,
                     __global const float *k, const int k_off, __global const float *v,
                     const int v_off, const int kv_stride, __global const int4 *rows,
                     __global const int4 *blocks, __global float *out, const int out_stride,
                     const int heads, const float scale)
{
    __local float kt[BLOCK_K * HEAD_DIM];
    __local float vt[BLOCK_K * HEAD_DIM];
    __local int trow[BLOCK_K];
    const int lid = (int)get_local_id(0);
    const int g = (int)get_group_id(0);
    const int4 blk = blocks[g / heads];
    const size_t hcol = (size_t)(g % heads) * HEAD_DIM;
    const bool active = lid < blk.y;
    const int r = blk.x + lid;
    const int4 info = active ? rows[r] : (int4)(0);
    float o[HEAD_DIM];
    flash_block(q, (size_t)q_off + (size_t)info.x * (size_t)q_stride + hcol, active, info.z, blk.w,
                k, v, 0, (size_t)k_off, (size_t)v_off, (size_t)kv_stride, hcol, blk.z,
                (__global const int *)0, 0, 0, scale, kt, vt, trow, o);
    if (active) {
        __global float *orow = out + (size_t)r * (size_t)out_stride + hcol;
        for (int d = 0; d < HEAD_DIM; d++)
            orow[d] = o[d];
    }
}

__kernel __attribute__((reqd_work_group_size(BLOCK_Q, 1, 1)))
void flash_attention_paged(__global const float *q, __global const float *kpool,
                           __global const float *vpool, const int kv_half,
                           __global const int4 *tokrow, __global const int *pages,
                           const int max_pages, const int page_tokens,
                           __global const int4 *blocks, __global float *out,
                           __global float2 *out_stats, const int heads, const float scale)
{
    __local float kt[BLOCK_K * HEAD_DIM];
    __local float vt[BLOCK_K * HEAD_DIM];
    __local int trow[BLOCK_K];
    const int lid = (int)get_local_id(0);
    const int g = (int)get_group_id(0);
    const int4 blk = blocks[g / heads];
    const int h = g % heads;
    const size_t hcol = (size_t)h * HEAD_DIM, width = (size_t)heads * HEAD_DIM;
    const bool active = lid < blk.y;
    const int t = blk.x + lid;
    const int nk = active ? tokrow[t].z : 0;
    float o[HEAD_DIM];
    flash_block(q, (size_t)t * width + hcol, active, nk, blk.w, kpool, vpool, kv_half, 0, 0, width,
                hcol, blk.z, pages, max_pages, page_tokens, scale, kt, vt, trow, o);
    if (!active)
        return;
    __global float *orow = out + (size_t)t * width + hcol;
    float sum = 0.0f;
    for (int d = 0; d < HEAD_DIM; d++) {
        orow[d] = o[d];
        sum += o[d];
    }
    /* block_stats's sums, over the private row */
    const float mean = sum / (float)HEAD_DIM;
    float m2 = 0.0f;
    for (int d = 0; d < HEAD_DIM; d++) {
        const float dd = o[d] - mean;
        m2 += dd * dd;
    }
    out_stats[(size_t)t * (size_t)heads + (size_t)h] = (float2)(mean, m2);
}
