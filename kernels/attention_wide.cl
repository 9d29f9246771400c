/* attention_wide.cl: flash_attention.cl's non-paged kernel (the vision encoder, the resampler)
 * for devices whose work-items are threads with wide vector units: CPUs through PoCL. Same
 * arguments, same blocks (ke_cl_flash_blocks), same formula (ke_op_attention):
 *
 *   for query row r of head h, which sees keys [0, nk_r) of its block's base:
 *     s_j       = (q[r, h] . k[j, h]) * scale                 j < nk_r
 *     out[r, h] = sum_j softmax_j(s)_j v[j, h]
 *
 * Why another kernel. flash_attention.cl on a CPU runs one query row per work-item and, to give
 * a prompt token the bits of the serial decode kernel, rescales its online softmax after every
 * key (KEY_CHUNK 1): two exp() and HEAD_DIM extra multiplies per key, in scalar code that PoCL
 * could not vectorize. That was 30% of the vision tower's time at batch 1 on a 2-core EPYC
 * (`kosmos bench --profile`), for 4% of its arithmetic. Neither the vision encoder nor the
 * resampler shares bits with a decode kernel, so here the softmax is rescaled once per tile of
 * KEY_TILE keys and both products run as register-blocked vector code:
 *
 *   S (RB rows, 32 keys)   += q[r][d] * Kt[d][32 keys]     Kt: the tile transposed into local
 *   O (RB rows, HEAD_DIM)  += p[r][j] * V[j][HEAD_DIM]     V read from its rows in place
 *
 * One order: a row's bits depend on KEY_TILE (where the softmax rescales) and HEAD_DIM only, not
 * on BLOCK_Q, on the other rows of its block or on the block's largest key count (a tile past a
 * row's keys rescales by exp(0) = 1 and adds exact zeros). Keys past nk_r get a score of -inf,
 * so their probability is exactly 0 (HF's finite-minimum additive mask, exactly).
 *
 * Work: group g = b * heads + h, one work-item (the vectors are the parallelism), takes block b
 * (int4: first row, rows <= BLOCK_Q, key base, keys of the block) for head h. Per tile: K's tile
 * transposed into local memory once, then every RB rows of the block: scores, softmax update,
 * P V, with the rows' O, max and sum kept in local memory between tiles.
 *
 * Tunables (-D): HEAD_DIM (16, 32, 48 or 64; others use flash_attention.cl), BLOCK_Q (the largest block, rows), KEY_TILE (keys
 * per tile and softmax rescale, a multiple of 32). Local memory: 4 * (HEAD_DIM * KEY_TILE +
 * RB * KEY_TILE + BLOCK_Q * (HEAD_DIM + 2)) bytes.
 * FP_CONTRACT off; the products are explicit fma().
 */
#pragma OPENCL FP_CONTRACT OFF

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#ifndef BLOCK_Q
#define BLOCK_Q 16
#endif
#ifndef KEY_TILE
#define KEY_TILE 128
#endif
#if HEAD_DIM < 16 || HEAD_DIM % 16 != 0
#error "HEAD_DIM must be a positive multiple of 16"
#endif
#if HEAD_DIM > 64
#error "HEAD_DIM above 64: the rows' accumulators would no longer fit the registers"
#endif
#if KEY_TILE < 32 || KEY_TILE % 32 != 0
#error "KEY_TILE must be a positive multiple of 32"
#endif
#if BLOCK_Q < 1
#error "BLOCK_Q must be at least 1"
#endif

#define RB 4                  /* query rows per register block */
#define HV (HEAD_DIM / 16)    /* float16 vectors per head row */
#define LANES16 (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)

#define REP_RB(M) M(0) M(1) M(2) M(3)

inline float max16(const float16 v)
{
    const float8 a = fmax(v.lo, v.hi);
    const float4 b = fmax(a.lo, a.hi);
    const float2 c = fmax(b.lo, b.hi);
    return fmax(c.x, c.y);
}

inline float sum16(const float16 v)
{
    const float8 a = v.lo + v.hi;
    const float4 b = a.lo + a.hi;
    const float2 c = b.lo + b.hi;
    return c.x + c.y;
}

/* Scores of RB rows (q row pointers qp0..3) against 32 keys [c, c + 32) of the transposed tile,
 * scaled and masked at each row's own key count (keys are tile-relative: row r sees tile keys
 * below lim_r), into p (RB rows of KEY_TILE). */
#define S_DECL(r) float16 sa##r = (float16)(0.0f), sb##r = (float16)(0.0f);
#define S_FMA(r)                                                                                   \
    {                                                                                              \
        const float16 qd = (float16)(qp##r[d]);                                                    \
        sa##r = fma(qd, ka, sa##r);                                                                \
        sb##r = fma(qd, kb, sb##r);                                                                \
    }
#define S_STORE(r)                                                                                 \
    vstore16(select(sa##r * scale, (float16)(-INFINITY), LANES16 + c >= (int16)(lim##r)), 0,       \
             p + (r) * KEY_TILE + c);                                                              \
    vstore16(select(sb##r * scale, (float16)(-INFINITY), LANES16 + (c + 16) >= (int16)(lim##r)),   \
             0, p + (r) * KEY_TILE + c + 16);

/* O of RB rows: HV vectors each, kept in registers across a tile's keys. */
#define O_DECL(r) float16 o##r##_0, o##r##_1, o##r##_2, o##r##_3;
#define O_LOAD(r)                                                                                  \
    {                                                                                              \
        __local float *ob_r = ob + min(r0 + (r), n_rows - 1) * HEAD_DIM;                          \
        const float a = alpha[r];                                                                  \
        o##r##_0 = vload16(0, ob_r) * a;                                                           \
        if (HV > 1)                                                                                \
            o##r##_1 = vload16(1, ob_r) * a;                                                       \
        if (HV > 2)                                                                                \
            o##r##_2 = vload16(2, ob_r) * a;                                                       \
        if (HV > 3)                                                                                \
            o##r##_3 = vload16(3, ob_r) * a;                                                       \
    }
#define O_FMA(r)                                                                                   \
    {                                                                                              \
        const float16 pj = (float16)(p[(r) * KEY_TILE + j]);                                       \
        o##r##_0 = fma(pj, v0, o##r##_0);                                                          \
        if (HV > 1)                                                                                \
            o##r##_1 = fma(pj, v1, o##r##_1);                                                      \
        if (HV > 2)                                                                                \
            o##r##_2 = fma(pj, v2, o##r##_2);                                                      \
        if (HV > 3)                                                                                \
            o##r##_3 = fma(pj, v3, o##r##_3);                                                      \
    }
#define O_STORE(r)                                                                                 \
    if (r0 + (r) < n_rows) {                                                                       \
        __local float *ob_r = ob + (r0 + (r)) * HEAD_DIM;                                          \
        vstore16(o##r##_0, 0, ob_r);                                                               \
        if (HV > 1)                                                                                \
            vstore16(o##r##_1, 1, ob_r);                                                           \
        if (HV > 2)                                                                                \
            vstore16(o##r##_2, 2, ob_r);                                                           \
        if (HV > 3)                                                                                \
            vstore16(o##r##_3, 3, ob_r);                                                           \
    }

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void attention_wide(__global const float *q, const int q_off, const int q_stride,
                    __global const float *k, const int k_off, __global const float *v,
                    const int v_off, const int kv_stride, __global const int4 *rows,
                    __global const int4 *blocks, __global float *out, const int out_stride,
                    const int heads, const float scale)
{
    __local float kt[HEAD_DIM * KEY_TILE]; /* kt[d * KEY_TILE + j]: key j's column d */
    __local float p[RB * KEY_TILE];        /* a register block's scores, then probabilities */
    __local float ob[BLOCK_Q * HEAD_DIM];  /* the block's unnormalised outputs */
    __local float mrow[BLOCK_Q], lrow[BLOCK_Q];
    const int g = (int)get_group_id(0);
    const int4 blk = blocks[g / heads];
    const int hcol = (g % heads) * HEAD_DIM;
    const int n_rows = blk.y, kmax = blk.w;
    for (int i = 0; i < n_rows * HEAD_DIM; i++)
        ob[i] = 0.0f;
    for (int r = 0; r < n_rows; r++) {
        mrow[r] = -INFINITY;
        lrow[r] = 0.0f;
    }
    for (int t0 = 0; t0 < kmax; t0 += KEY_TILE) {
        const int tn = min(KEY_TILE, kmax - t0), tpad = (tn + 31) & ~31;
        for (int j = 0; j < tn; j++) {
            __global const float *kr =
                k + (size_t)k_off + (size_t)(blk.z + t0 + j) * (size_t)kv_stride + (size_t)hcol;
            for (int d = 0; d < HEAD_DIM; d++)
                kt[d * KEY_TILE + j] = kr[d];
        }
        for (int j = tn; j < tpad; j++) /* zeros: finite scores, masked below */
            for (int d = 0; d < HEAD_DIM; d++)
                kt[d * KEY_TILE + j] = 0.0f;
        for (int r0 = 0; r0 < n_rows; r0 += RB) {
            /* rows past the block repeat its last row; their results are dropped */
            __global const float *qp[RB];
            int lim[RB];
            for (int r = 0; r < RB; r++) {
                const int4 info = rows[blk.x + min(r0 + r, n_rows - 1)];
                qp[r] = q + (size_t)q_off + (size_t)info.x * (size_t)q_stride + (size_t)hcol;
                lim[r] = info.z - t0;
            }
            __global const float *qp0 = qp[0], *qp1 = qp[1], *qp2 = qp[2], *qp3 = qp[3];
            const int lim0 = lim[0], lim1 = lim[1], lim2 = lim[2], lim3 = lim[3];
            for (int c = 0; c < tpad; c += 32) {
                REP_RB(S_DECL)
                for (int d = 0; d < HEAD_DIM; d++) {
                    const float16 ka = vload16(0, kt + d * KEY_TILE + c);
                    const float16 kb = vload16(0, kt + d * KEY_TILE + c + 16);
                    REP_RB(S_FMA)
                }
                REP_RB(S_STORE)
            }
            /* the online softmax, once per tile */
            float alpha[RB];
            for (int r = 0; r < RB; r++) {
                __local float *pr = p + r * KEY_TILE;
                float16 mx = (float16)(-INFINITY);
                for (int c = 0; c < tpad; c += 16)
                    mx = fmax(mx, vload16(0, pr + c));
                const int row = min(r0 + r, n_rows - 1);
                const float m_old = mrow[row], m_new = fmax(m_old, max16(mx));
                if (m_new == -INFINITY) { /* no key of the row yet: nothing to add */
                    alpha[r] = 1.0f;
                    for (int c = 0; c < tpad; c += 16)
                        vstore16((float16)(0.0f), 0, pr + c);
                    continue;
                }
                float16 sum = (float16)(0.0f);
                for (int c = 0; c < tpad; c += 16) {
                    const float16 e = exp(vload16(0, pr + c) - m_new);
                    vstore16(e, 0, pr + c);
                    sum = sum + e;
                }
                alpha[r] = exp(m_old - m_new); /* 0 on the row's first keys (m_old = -inf) */
                if (r0 + r < n_rows) {
                    mrow[row] = m_new;
                    lrow[row] = lrow[row] * alpha[r] + sum16(sum);
                }
            }
            /* O = O * alpha + P V; rows past the block read the last row and store nothing */
            REP_RB(O_DECL)
            REP_RB(O_LOAD)
            for (int j = 0; j < tn; j++) {
                __global const float *vr = v + (size_t)v_off +
                                           (size_t)(blk.z + t0 + j) * (size_t)kv_stride +
                                           (size_t)hcol;
                const float16 v0 = vload16(0, vr);
                const float16 v1 = HV > 1 ? vload16(1, vr) : v0;
                const float16 v2 = HV > 2 ? vload16(2, vr) : v0;
                const float16 v3 = HV > 3 ? vload16(3, vr) : v0;
                REP_RB(O_FMA)
            }
            REP_RB(O_STORE)
        }
    }
    for (int r = 0; r < n_rows; r++) {
        const int4 info = rows[blk.x + r];
        const float inv = info.z > 0 ? 1.0f / lrow[r] : 0.0f;
        __global float *orow = out + (size_t)(blk.x + r) * (size_t)out_stride + (size_t)hcol;
        for (int d = 0; d < HEAD_DIM; d++)
            orow[d] = ob[r * HEAD_DIM + d] * inv;
    }
}
