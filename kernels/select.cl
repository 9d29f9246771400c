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
 *   topk_rows     sampling (backend.h select_sample): one work-group per candidate row, a
 *                 short list instead of the row. A radix select over order-preserving keys of
 *                 the f32 values (4 passes of 8 bits, a local histogram) finds the key tau of
 *                 the want-th largest value; the list is every token with a key > tau, plus
 *                 those == tau when all of them fit (else none: the host sees the tie through
 *                 rest). For T > 0 it also sums, over the tokens left out, e' = exp((v - max)/T)
 *                 and a bound on |e' - e_host| (e_host = expf(v/T - max/T) on the host), both in
 *                 64-bit fixed point (2^-46 units, truncated; order-free, so deterministic):
 *                 per token (|v| + |max|)/T * 2^-18 + 2^-20 relative covers both sides' f32
 *                 quotient and difference roundings and exp errors of up to 8 ulp together;
 *                 beyond 2^-2 the row is flagged unbounded. -0 counts as +0 (keys from the bits,
 *                 so subnormals keep their order on devices that flush them); NaN or +inf in
 *                 the row flags it. The list holds the values as they are in the row.
 *                 global n_cand*WG_SIZE, local WG_SIZE.
 *
 * Layout:
 *   logits (rows, vocab) f32, modified in place by ngram_ban
 *   info   (n_sel, 5) int: logits row, history offset, history length, ngram size, ban_eos
 *   hist   the sequences' ids (prompt + generated), back to back at their offsets
 *   out    (n_sel) int
 *   cinfo  (n_cand, 4) int: logits row, want (1..vocab), list offset, T as f32 bits (0: no sums)
 *   cval, cid  the lists: row r's at [offset, offset + want)
 *   cstat  (n_cand, 4) ulong: count | flags << 32 (1 NaN/+inf, 2 unbounded), key of the largest
 *          value left out (0: none), tail sum, tail error bound (fixed point)
 *
 * Tunables (-D): WG_SIZE  work-items of argmax_rows and topk_rows, a power of two (64)
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

/* larger float -> larger key; -0 is +0's key. Key 0 is a NaN's, never a candidate's. */
inline uint order_key(float x)
{
    uint u = as_uint(x);
    if (u == 0x80000000u) /* bits only: a device flushing subnormals still orders them */
        u = 0;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline float key_value(uint k)
{
    return as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void topk_rows(__global const float *logits, const int vocab, __global const int *cinfo,
               __global float *cval, __global int *cid, __global ulong *cstat)
{
    __local uint hist[256];
    __local uint shared[6]; /* prefix, remaining, max key, flags, count, rest key */
    __local ulong red_d[WG_SIZE], red_r[WG_SIZE];
    const int lid = (int)get_local_id(0);
    const int s = (int)get_group_id(0);
    __global const int *ci = cinfo + (size_t)s * 4;
    __global const float *lr = logits + (size_t)ci[0] * (size_t)vocab;
    const uint want = (uint)clamp(ci[1], 1, vocab);
    const int off = ci[2];
    const float temp = as_float(ci[3]);
    if (lid == 0) {
        shared[0] = 0;
        shared[1] = want;
        shared[2] = 0;
        shared[3] = 0;
        shared[4] = 0;
        shared[5] = 0;
    }
    uint prefix = 0, mask = 0, remaining = want, eq_count = 0;
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        for (int b = lid; b < 256; b += WG_SIZE)
            hist[b] = 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        uint kmax = 0, bad = 0;
        for (int i = lid; i < vocab; i += WG_SIZE) {
            const float x = lr[i];
            const uint k = order_key(x);
            if (pass == 0) {
                bad |= isnan(x) || x == INFINITY;
                kmax = max(kmax, k);
            }
            if ((k & mask) == prefix)
                atomic_inc(&hist[(k >> shift) & 255u]);
        }
        if (pass == 0) {
            atomic_max(&shared[2], kmax);
            if (bad)
                atomic_or(&shared[3], 1u);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid == 0) {
            uint r = shared[1];
            int b = 255;
            for (; b > 0; b--) {
                if (hist[b] >= r)
                    break;
                r -= hist[b];
            }
            shared[0] |= (uint)b << shift;
            shared[1] = r;
            if (pass == 3)
                shared[4] = hist[b]; /* tokens with key == tau */
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        prefix = shared[0];
        remaining = shared[1];
        mask |= 255u << shift;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const uint tau = prefix;
    eq_count = shared[4];
    const bool take_eq = eq_count == remaining; /* all of the ties fit */
    const float mx = key_value(shared[2]);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0)
        shared[4] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);

    const bool sums = temp > 0.0f && isfinite(mx);
    const float amx = fabs(mx);
    uint rest = 0, unbounded = 0;
    ulong d = 0, e = 0;
    for (int i = lid; i < vocab; i += WG_SIZE) {
        const float x = lr[i];
        const uint k = order_key(x);
        if (k > tau || (k == tau && take_eq)) {
            const uint slot = atomic_inc(&shared[4]);
            cval[off + (int)slot] = x;
            cid[off + (int)slot] = i;
        } else {
            rest = max(rest, k);
            if (sums && x > -INFINITY) {
                const float ev = exp((x - mx) / temp);
                const float rel = (fabs(x) + amx) / temp * 0x1p-18f;
                unbounded |= !(rel <= 0.25f);
                d += convert_ulong(ev * 0x1p46f);
                e += convert_ulong(ev * (rel + 0x1p-20f) * 0x1p46f) + 1;
            }
        }
    }
    atomic_max(&shared[5], rest);
    if (unbounded)
        atomic_or(&shared[3], 2u);
    red_d[lid] = d;
    red_r[lid] = e;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = WG_SIZE / 2; w > 0; w >>= 1) {
        if (lid < w) {
            red_d[lid] += red_d[lid + w];
            red_r[lid] += red_r[lid + w];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        __global ulong *st = cstat + (size_t)s * 4;
        st[0] = (ulong)shared[4] | ((ulong)shared[3] << 32);
        st[1] = shared[5];
        st[2] = red_d[0];
        st[3] = red_r[0];
    }
}
