/* decoder.cl: the text decoder's kernels around its GEMMs (gemm.cl), over a paged KV cache, for
 * steps whose tokens and positions may come from the device itself (a decode step needs nothing
 * from the host: each sequence's next token is what the last selection wrote for its slot).
 *
 *   decoder_embed        the step's input rows, their statistics for the first LayerNorm, each
 *                        token's cache row, and the id history the n-gram ban reads
 *   paged_attention      causal attention of each new token over its slot's cached keys, with
 *                        the statistics of its output (for inner_attn_ln, fused into out_proj)
 *   select_greedy_slots  n-gram ban, </s> mask and argmax per sequence, from the device history;
 *                        the id goes to `out` and becomes the slot's next token
 *
 * Pages. The KV cache of a layer is a pool of rows (f32, or half when kv_half): page p holds
 * rows [p*page_tokens, (p+1)*page_tokens). Position j of slot s is at row
 *     pages[s*max_pages + j/page_tokens] * page_tokens + j % page_tokens,
 * so a sequence holds the pages it needs, not a whole context's worth. `hist` holds each slot's
 * ids (hist[s*hist_cap + j]: the token at position j), written as tokens are fed.
 *
 * The step plan (written by the host, int8 per token t, sequence after sequence):
 *   s0  the token id, or -1: slot_next[slot] (the id the last selection chose for the slot)
 *   s1  the HF position, or -1: pad when the id is pad, else pad + 1 + idx (as HF 5.17 decodes)
 *   s2  the image_rows row whose values replace the token's embedding, or -1
 *   s3  slot;   s4  idx, the token's position in its slot (tokens already cached before it)
 * decoder_embed turns it into tokrow[t] = (cache row, slot, keys it sees = idx + 1, id).
 *
 * Kernels and NDRanges (one work-group per item; local sizes are the tunables):
 *   decoder_embed(plan, table, ldv, panel, image_rows, freq, scale, pad, dim, slot_next,
 *                 pages, max_pages, page_tokens, hist, hist_cap, x, x_stats, stats_nb, tokrow,
 *                 vals)
 *       global T*EMB_NT, local EMB_NT. table is the transposed embedding Wt (dim, ldv) of
 *       gemm.cl (the tied lm_head's layout, panels of `panel` columns or none): token id's
 *       value i is table[weight_index(i, id, dim, ldv, panel)].
 *       x (T, dim) f32, x_stats (T, stats_nb) float2 (blocks of STAT_SB), vals __local dim floats
 *   paged_attention(q, kpool, vpool, kv_half, tokrow, pages, max_pages, page_tokens, out,
 *                   out_stats, heads, head_dim, scale, qh, acc)
 *       global T*heads*AT_NT, local AT_NT; group g = t*heads + h. q, out (T, heads*head_dim) f32;
 *       out_stats (T, heads) float2 (one block per head); qh, acc __local head_dim floats.
 *       Keys are read as rows: AT_NT/DG keys at a time, DG work-items per key row (neighbours
 *       read neighbouring columns), then every work-item accumulates values of its columns over
 *       those keys. Online softmax; masked keys are not visited (exactly HF's additive mask).
 *   paged_attention_serial(the same arguments)
 *       global T*heads, local a divisor of heads: one work-item per (token, head), no barrier
 *       (CPUs, where each barrier splits PoCL's work-item loops): the same online softmax, a
 *       key at a time, dot products in four interleaved partial sums; qh, acc __local
 *       local*head_dim floats, head_dim each work-item's.
 *   select_greedy_slots(logits, vocab, info, hist, hist_cap, eos, out, slot_next)
 *       global n*SEL_NT, local SEL_NT. info (n) int8: (logits row, slot, len, ngram, ban_eos);
 *       the ban is written into the logits row (ties broken to the lowest id, NaN never wins).
 *
 * Tunables (-D): EMB_NT (64), AT_NT (64), SEL_NT (64): powers of two; WEIGHT_HALF (0).
 */
#include "common.cl"

#ifndef EMB_NT
#define EMB_NT 64
#endif
#ifndef AT_NT
#define AT_NT 64
#endif
#ifndef SEL_NT
#define SEL_NT 64
#endif
#if (EMB_NT & (EMB_NT - 1)) || (AT_NT & (AT_NT - 1)) || (SEL_NT & (SEL_NT - 1))
#error "EMB_NT, AT_NT and SEL_NT must be powers of two"
#endif

inline int cache_row(__global const int *pages, const int max_pages, const int page_tokens,
                     const int slot, const int j)
{
    return pages[(size_t)slot * (size_t)max_pages + (size_t)(j / page_tokens)] * page_tokens +
           j % page_tokens;
}

__kernel __attribute__((reqd_work_group_size(EMB_NT, 1, 1)))
void decoder_embed(__global const int8 *plan, __global const WEIGHT_T *table, const int ldv,
                   const int panel,
                   __global const float *image_rows, __global const float *freq, const float scale,
                   const int pad, const int dim, __global const int *slot_next,
                   __global const int *pages, const int max_pages, const int page_tokens,
                   __global int *hist, const int hist_cap, __global float *x,
                   __global float2 *x_stats, const int stats_nb, __global int4 *tokrow,
                   __local float *vals)
{
    const int t = (int)get_group_id(0);
    const int lid = (int)get_local_id(0);
    const int8 p = plan[t];
    const int slot = p.s3, idx = p.s4;
    const int id = p.s0 >= 0 ? p.s0 : slot_next[slot];
    const int pos = p.s1 >= 0 ? p.s1 : (id == pad ? pad : pad + 1 + idx);
    for (int i = lid; i < dim; i += EMB_NT) {
        const float e = p.s2 >= 0 ? image_rows[(size_t)p.s2 * (size_t)dim + (size_t)i]
                                  : LOAD_W(table, weight_index(i, id, dim, ldv, panel));
        const float v = text_embed_value(e, scale, pos, pad, i, dim, freq);
        x[(size_t)t * (size_t)dim + (size_t)i] = v;
        vals[i] = v;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int b = lid; b < stats_nb; b += EMB_NT)
        x_stats[(size_t)t * (size_t)stats_nb + (size_t)b] =
            block_stats(vals + b * STAT_SB, min(STAT_SB, dim - b * STAT_SB));
    if (lid == 0) {
        tokrow[t] = (int4)(cache_row(pages, max_pages, page_tokens, slot, idx), slot, idx + 1, id);
        hist[(size_t)slot * (size_t)hist_cap + (size_t)idx] = id;
    }
}

inline float load_kv(__global const float *pool, const int kv_half, const size_t at)
{
    return kv_half ? vload_half(at, (__global const half *)pool) : pool[at];
}

__kernel __attribute__((reqd_work_group_size(AT_NT, 1, 1)))
void paged_attention(__global const float *q, __global const float *kpool,
                     __global const float *vpool, const int kv_half,
                     __global const int4 *tokrow, __global const int *pages, const int max_pages,
                     const int page_tokens, __global float *out, __global float2 *out_stats,
                     const int heads, const int head_dim, const float scale, __local float *qh,
                     __local float *acc)
{
    /* DG work-items share a key row (each head_dim / DG columns); KPI keys per iteration */
    const int dg_n = head_dim % 4 == 0 ? 4 : 1;
    const int kpi = AT_NT / dg_n;
    const int dpw = head_dim / dg_n;
    __local float part[AT_NT];
    __local float sc[AT_NT];
    __local int krow[AT_NT];
    const int lid = (int)get_local_id(0);
    const int g = (int)get_group_id(0);
    const int t = g / heads, h = g % heads;
    const int4 info = tokrow[t];
    const int slot = info.y, nk = info.z;
    const int width = heads * head_dim;
    const size_t hcol = (size_t)h * (size_t)head_dim;
    for (int d = lid; d < head_dim; d += AT_NT) {
        qh[d] = q[(size_t)t * (size_t)width + hcol + (size_t)d];
        acc[d] = 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    const int kj = lid / dg_n, dg = lid % dg_n;
    float m = -INFINITY, l = 0.0f;
    for (int c0 = 0; c0 < nk; c0 += kpi) {
        const int j = c0 + kj;
        float s = 0.0f;
        if (j < nk) {
            const int row = cache_row(pages, max_pages, page_tokens, slot, j);
            if (dg == 0)
                krow[kj] = row;
            const size_t base = (size_t)row * (size_t)width + hcol + (size_t)(dg * dpw);
            for (int d = 0; d < dpw; d++)
                s = s + qh[dg * dpw + d] * load_kv(kpool, kv_half, base + (size_t)d);
        }
        part[lid] = s;
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid < kpi) {
            float dot = 0.0f;
            for (int e = 0; e < dg_n; e++)
                dot = dot + part[lid * dg_n + e];
            sc[lid] = c0 + lid < nk ? dot * scale : -INFINITY;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        const int cn = min(kpi, nk - c0);
        float mc = -INFINITY;
        for (int e = 0; e < cn; e++)
            mc = fmax(mc, sc[e]);
        const float mn = fmax(m, mc);
        const float alpha = exp(m - mn); /* 0 on the first chunk (m = -inf) */
        barrier(CLK_LOCAL_MEM_FENCE);   /* everyone has read sc before it becomes p */
        if (lid < cn)
            sc[lid] = exp(sc[lid] - mn);
        barrier(CLK_LOCAL_MEM_FENCE);
        float sum = 0.0f;
        for (int e = 0; e < cn; e++)
            sum = sum + sc[e];
        l = l * alpha + sum;
        for (int d = lid; d < head_dim; d += AT_NT) {
            float a = acc[d] * alpha;
            for (int e = 0; e < cn; e++)
                a = a + sc[e] * load_kv(vpool, kv_half,
                                        (size_t)krow[e] * (size_t)width + hcol + (size_t)d);
            acc[d] = a;
        }
        m = mn;
        barrier(CLK_LOCAL_MEM_FENCE); /* sc, krow and part are rewritten by the next chunk */
    }

    const float inv = nk > 0 ? 1.0f / l : 0.0f;
    for (int d = lid; d < head_dim; d += AT_NT) {
        const float v = acc[d] * inv;
        acc[d] = v;
        out[(size_t)t * (size_t)width + hcol + (size_t)d] = v;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0)
        out_stats[(size_t)t * (size_t)heads + (size_t)h] = block_stats(acc, head_dim);
}

inline float4 load_kv4(__global const float *pool, const int kv_half, const size_t at)
{
    return kv_half ? vload_half4(0, (__global const half *)pool + at) : vload4(0, pool + at);
}

__kernel void paged_attention_serial(__global const float *q, __global const float *kpool,
                            __global const float *vpool, const int kv_half,
                            __global const int4 *tokrow, __global const int *pages,
                            const int max_pages, const int page_tokens, __global float *out,
                            __global float2 *out_stats, const int heads, const int head_dim,
                            const float scale, __local float *qh, __local float *acc)
{
    const int g = (int)get_global_id(0);
    const int t = g / heads, h = g % heads;
    const int4 info = tokrow[t];
    const int slot = info.y, nk = info.z;
    const int width = heads * head_dim;
    const size_t hcol = (size_t)h * (size_t)head_dim;
    const int hd4 = head_dim & ~3;
    qh += (size_t)get_local_id(0) * (size_t)head_dim;
    acc += (size_t)get_local_id(0) * (size_t)head_dim;
    for (int d = 0; d < head_dim; d++) {
        qh[d] = q[(size_t)t * (size_t)width + hcol + (size_t)d];
        acc[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = 0; j < nk; j++) {
        const size_t base =
            (size_t)cache_row(pages, max_pages, page_tokens, slot, j) * (size_t)width + hcol;
        float4 dv = (float4)(0.0f);
        for (int d = 0; d < hd4; d += 4)
            dv = dv + vload4(0, qh + d) * load_kv4(kpool, kv_half, base + (size_t)d);
        float dot = (dv.x + dv.y) + (dv.z + dv.w);
        for (int d = hd4; d < head_dim; d++)
            dot = dot + qh[d] * load_kv(kpool, kv_half, base + (size_t)d);
        const float s = dot * scale;
        const float mn = fmax(m, s);
        const float alpha = exp(m - mn); /* 0 on the first key (m = -inf) */
        const float p = exp(s - mn);
        l = l * alpha + p;
        for (int d = 0; d < hd4; d += 4)
            vstore4(vload4(0, acc + d) * alpha + p * load_kv4(vpool, kv_half, base + (size_t)d), 0,
                    acc + d);
        for (int d = hd4; d < head_dim; d++)
            acc[d] = acc[d] * alpha + p * load_kv(vpool, kv_half, base + (size_t)d);
        m = mn;
    }
    const float inv = nk > 0 ? 1.0f / l : 0.0f;
    for (int d = 0; d < head_dim; d++) {
        const float v = acc[d] * inv;
        acc[d] = v;
        out[(size_t)t * (size_t)width + hcol + (size_t)d] = v;
    }
    out_stats[(size_t)t * (size_t)heads + (size_t)h] = block_stats(acc, head_dim);
}

__kernel __attribute__((reqd_work_group_size(SEL_NT, 1, 1)))
void select_greedy_slots(__global float *logits, const int vocab, __global const int8 *info,
                         __global const int *hist, const int hist_cap, const int eos,
                         __global int *out, __global int *slot_next)
{
    __local float bv[SEL_NT];
    __local int bi[SEL_NT];
    const int lid = (int)get_local_id(0);
    const int s = (int)get_group_id(0);
    const int8 in = info[s];
    const int row = in.s0, slot = in.s1, len = in.s2, n = in.s3, ban_eos = in.s4;
    __global float *lr = logits + (size_t)row * (size_t)vocab;
    __global const int *ids = hist + (size_t)slot * (size_t)hist_cap;
    /* NoRepeatNGramLogitsProcessor: every token that followed the last n-1 ids anywhere */
    if (n > 0 && len >= n) {
        const int m = n - 1;
        for (int i = lid; i + n <= len; i += SEL_NT) {
            bool same = true;
            for (int j = 0; j < m && same; j++)
                same = ids[i + j] == ids[len - m + j];
            const int tok = ids[i + m];
            if (same && tok >= 0 && tok < vocab)
                lr[tok] = -INFINITY;
        }
    }
    if (lid == 0 && ban_eos && eos >= 0 && eos < vocab)
        lr[eos] = -INFINITY;
    barrier(CLK_GLOBAL_MEM_FENCE);
    float best = -INFINITY;
    int besti = INT_MAX;
    for (int i = lid; i < vocab; i += SEL_NT) {
        const float x = lr[i];
        if (x > best || (x == best && i < besti)) {
            best = x;
            besti = i;
        }
    }
    bv[lid] = best;
    bi[lid] = besti;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = SEL_NT / 2; w > 0; w >>= 1) {
        if (lid < w) {
            const float x = bv[lid + w];
            const int xi = bi[lid + w];
            if (x > bv[lid] || (x == bv[lid] && xi < bi[lid])) {
                bv[lid] = x;
                bi[lid] = xi;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        const int id = bi[0] == INT_MAX ? 0 : bi[0];
        out[s] = id;
        slot_next[slot] = id;
    }
}
