/* select.cl: greedy token selection on the device, so a decode step returns one id per sequence
 * instead of a row of vocab logits. HF's logits processors in HF's order, then the argmax, as
 * worker/engine/generate.c does on the host (ban_repeated_ngrams, min_new_tokens, argmax):
 *
 *   ngram_ban     NoRepeatNGramLogitsProcessor: with n = ngram and m = n - 1, for every i with
 *                 i + n <= len and hist[i .. i+m) == hist[len-m .. len), token hist[i+m] is set
 *                 to -inf in the sequence's logits row (n == 1 bans every token present; n == 0
 *                 or len < n bans nothing). Then, when ban_eos (fewer than min_new_tokens
 *                 generated), logits[eos] = -inf.
 *                 global (>= max len, n_sel), any local. Races write the same value.
 *   argmax_rows   one work-group per selection: the largest value of the row, the lowest id on
 *                 ties (NaN is never larger), into out[s].
 *                 global n_sel*WG_SIZE, local WG_SIZE.
 *
 * Layout:
 *   logits (rows, vocab) f32, modified in place by ngram_ban
 *   info   (n_sel, 5) int: logits row, history offset, history length, ngram size, ban_eos
 *   hist   the sequences' ids (prompt + generated), back to back at their offsets
 *   out    (n_sel) int
 *
 * Tunables (-D): WG_SIZE  work-items of argmax_rows, a power of two (64)
 */
#ifndef WG_SIZE
#define WG_SIZE 64
#endif
#if WG_SIZE < 1 || (WG_SIZE & (WG_SIZE - 1)) != 0
#error "WG_SIZE must be a power of two"
#endif

__kernel void ngram_ban(__global float *logits, const int vocab, __global const int *info,
                        __global const int *hist, const int n_sel, const int eos)
{
    const int i = (int)get_global_id(0);
    const int s = (int)get_global_id(1);
    if (s >= n_sel)
        return;
    __global const int *in = info + (size_t)s * 5;
    const int row = in[0], len = in[2], n = in[3], ban_eos = in[4];
    __global const int *ids = hist + in[1];
    __global float *lr = logits + (size_t)row * (size_t)vocab;
    if (i == 0 && ban_eos && eos >= 0 && eos < vocab)
        lr[eos] = -INFINITY;
    if (n <= 0 || len < n || i + n > len)
        return;
    const int m = n - 1;
    for (int j = 0; j < m; j++)
        if (ids[i + j] != ids[len - m + j])
            return;
    const int t = ids[i + m];
    if (t >= 0 && t < vocab)
        lr[t] = -INFINITY;
}

__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void argmax_rows(__global const float *logits, const int vocab, __global const int *info,
                 __global int *out)
{
    __local float bv[WG_SIZE];
    __local int bi[WG_SIZE];
    const int lid = (int)get_local_id(0);
    const int s = (int)get_group_id(0);
    __global const float *lr = logits + (size_t)info[(size_t)s * 5] * (size_t)vocab;
    float best = -INFINITY;
    int besti = INT_MAX;
    for (int i = lid; i < vocab; i += WG_SIZE) {
        const float x = lr[i];
        if (x > best || (x == best && i < besti)) {
            best = x;
            besti = i;
        }
    }
    bv[lid] = best;
    bi[lid] = besti;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = WG_SIZE / 2; w > 0; w >>= 1) {
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
    if (lid == 0)
        out[s] = bi[0] == INT_MAX ? 0 : bi[0];
}
