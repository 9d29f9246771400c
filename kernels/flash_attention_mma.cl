/* flash_attention_mma.cl: flash_attention.cl's non-paged kernel (the vision encoder, the
 * resampler) with both tile products on the matrix units, through mma.cl's macro layer (tensor
 * cores by inline PTX on NVIDIA, or the emulation on any device, which is how CI runs it).
 * Same arguments, same blocks (ke_cl_flash_blocks, at most BQ rows), same formula:
 *
 *   for query row r of head h, which sees keys [0, nk_r) of its block's base:
 *     s_j       = (q[r, h] . k[j, h]) * scale                 j < nk_r
 *     out[r, h] = sum_j softmax_j(s)_j v[j, h]
 *
 * Work: group g = b * heads + h, 4 warps (local size 32 x 4), takes block b (int4: first row,
 * rows <= BQ, key base, keys of the block) for head h; warp w owns query rows 16w .. 16w + 15.
 * Q is staged once as f16; then per tile of BK keys:
 *   - K and V staged as f16 (rows [key][dim], a row stride of HD + 8 halves: 16-byte rows for
 *     ldmatrix, and rows that do not all start in one bank);
 *   - S = Q Kᵀ: m16n8k16 products, Q the A operand (row-major), K's rows as B (.col), read with
 *     ldmatrix (not transposed);
 *   - S scaled into local memory; one work-item per row updates that row's max and sum (the
 *     online softmax, in f32) and writes P = exp(S - max) as f16, 0 past the row's keys;
 *   - O = O * alpha + P V: P the A operand, V (k-major) as B through ldmatrix .trans; O stays in
 *     the warps' accumulators (float4 per 16x8 block) across the tiles.
 * out = O / sum at the end.
 *
 * Numerics: Q, K, V and P are rounded to f16 (the products are exact in f32, the sums are f32 in
 * the units' order): close to ke_op_attention (test_cl_flash checks within 5e-3), not the bits
 * of flash_attention.cl. Only the vision encoder and the resampler run it, and only where the
 * GEMM's matrix-unit path is on (docs/gemm.md, "Paths"): nothing shares bits with it.
 *
 * Tunables (-D): HD (head size, a multiple of 16 up to 64), and mma.cl's MMA_IMPL,
 * MMA_LDMATRIX (unused: fragments always come through ldmatrix), MMA_PTX_ADDR; MMA_WARPS is 4.
 */
#pragma OPENCL FP_CONTRACT OFF

#ifndef HD
#define HD 64
#endif
#if HD < 16 || HD > 64 || HD % 16 != 0
#error "HD must be 16, 32, 48 or 64"
#endif
#define BQ 64           /* query rows per group: 4 warps of 16 */
#define BK 32 /* keys per tile: all tiles and the emulation's scratch in 48 KiB of local memory */
#define LDS (HD + 8)    /* row stride of the Q, K and V tiles, halves */
#define LDP (BK + 8)    /* row stride of the P tile, halves */
#define LDSS (BK + 1)   /* row stride of the scores, floats */
#define KSTEPS (HD / 16) /* k steps of S = Q Kᵀ */
#define DBLK (HD / 8)   /* n8 blocks of O */
#define SBLK (BK / 8)   /* n8 blocks of S */

#undef MMA_WARPS
#define MMA_WARPS 4
#include "common.cl"
#include "mma.cl"

#if MMA_IMPL == 1
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("nounroll")
#endif

/* n values from src (f32, stride 1) as f16 into dst, zeros past `valid`, by the group's 128
 * work-items; rows of `cols` values at src + row * src_stride. */
inline void stage_f16(__local ushort *dst, const int ld, __global const float *src,
                      const size_t src_stride, const int rows, const int valid, const int tid)
{
    for (int e = tid; e < rows * HD; e += 32 * MMA_WARPS) {
        const int r = e / HD, d = e % HD;
        const float v = r < valid ? src[(size_t)r * src_stride + (size_t)d] : 0.0f;
        vstore_half_rte(v, (size_t)(r * ld + d), (__local half *)dst);
    }
}

__kernel __attribute__((reqd_work_group_size(32, MMA_WARPS, 1)))
void flash_attention_mma(__global const float *q, const int q_off, const int q_stride,
                         __global const float *k, const int k_off, __global const float *v,
                         const int v_off, const int kv_stride, __global const int4 *rows,
                         __global const int4 *blocks, __global float *out, const int out_stride,
                         const int heads, const float scale)
{
    MMA_SCRATCH;
    /* 16-byte rows for ldmatrix (the emulation turns a misaligned row into NaN) */
    __local ushort qs[BQ * LDS] __attribute__((aligned(16)));
    __local ushort ks[BK * LDS] __attribute__((aligned(16)));
    __local ushort vs[BK * LDS] __attribute__((aligned(16)));
    __local ushort ps[BQ * LDP] __attribute__((aligned(16)));
    __local float ss[BQ * LDSS], mrow[BQ], lrow[BQ], arow[BQ];
    __local int nkrow[BQ];
    const int lane = (int)get_local_id(0), warp = (int)get_local_id(1), tid = warp * 32 + lane;
    const int g = (int)get_group_id(0);
    const int4 blk = blocks[g / heads];
    const int hcol = (g % heads) * HD, n_rows = blk.y, kmax = blk.w;

    /* Q (rows past the block: zeros), each row's key count, the softmax state */
    for (int e = tid; e < BQ * HD; e += 32 * MMA_WARPS) {
        const int r = e / HD, d = e % HD;
        const float x = r < n_rows ? q[(size_t)q_off + (size_t)rows[blk.x + r].x * (size_t)q_stride +
                                       (size_t)(hcol + d)]
                                   : 0.0f;
        vstore_half_rte(x, (size_t)(r * LDS + d), (__local half *)qs);
    }
    if (tid < BQ) {
        nkrow[tid] = tid < n_rows ? rows[blk.x + tid].z : 0;
        mrow[tid] = -INFINITY;
        lrow[tid] = 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    uint4 qa[KSTEPS];
    UNROLL for (int kk = 0; kk < KSTEPS; kk++)
        qa[kk] = MMA_LDMATRIX_X4(qs, (warp * 16 + (lane & 15)) * LDS + kk * 16 + (lane >> 4) * 8);
    float4 o[DBLK];
    UNROLL for (int j = 0; j < DBLK; j++)
        o[j] = (float4)(0.0f);

    const int m = lane >> 3; /* the 8x8 matrix this lane names a row of, for ldmatrix */
    for (int t0 = 0; t0 < kmax; t0 += BK) {
        const int tn = min(BK, kmax - t0);
        barrier(CLK_LOCAL_MEM_FENCE); /* the last tile's K, V and P are no longer read */
        const size_t base = (size_t)(blk.z + t0) * (size_t)kv_stride + (size_t)hcol;
        stage_f16(ks, LDS, k + (size_t)k_off + base, (size_t)kv_stride, BK, tn, tid);
        stage_f16(vs, LDS, v + (size_t)v_off + base, (size_t)kv_stride, BK, tn, tid);
        barrier(CLK_LOCAL_MEM_FENCE);

        /* S = Q Kᵀ for the warp's 16 rows, two n8 blocks of keys per ldmatrix */
        float4 s[SBLK];
        UNROLL for (int j = 0; j < SBLK; j++)
            s[j] = (float4)(0.0f);
        UNROLL for (int kk = 0; kk < KSTEPS; kk++)
            UNROLL for (int j = 0; j < SBLK; j += 2)
            {
                const uint4 b = MMA_LDMATRIX_X4(
                    ks, ((j + (m >> 1)) * 8 + (lane & 7)) * LDS + kk * 16 + (m & 1) * 8);
                s[j] = MMA_SYNC(s[j], qa[kk], (uint2)(b.s0, b.s1));
                s[j + 1] = MMA_SYNC(s[j + 1], qa[kk], (uint2)(b.s2, b.s3));
            }
        {
            /* c.s[i] of a lane: row g (+ 8 for i >= 2), column 2t + (i & 1) of its n8 block */
            __local float *s0 = ss + (warp * 16 + (lane >> 2)) * LDSS + 2 * (lane & 3);
            UNROLL for (int j = 0; j < SBLK; j++)
            {
                vstore2(s[j].s01 * scale, 0, s0 + j * 8);
                vstore2(s[j].s23 * scale, 0, s0 + 8 * LDSS + j * 8);
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        /* the online softmax, a work-item per row */
        if (tid < BQ) {
            const int lim = clamp(nkrow[tid] - t0, 0, tn);
            __local const float *sr = ss + tid * LDSS;
            const float m_old = mrow[tid];
            float mx = m_old;
            for (int j = 0; j < lim; j++)
                mx = fmax(mx, sr[j]);
            float alpha = 1.0f, sum = 0.0f;
            if (mx != -INFINITY) {
                alpha = exp(m_old - mx); /* 0 on the row's first keys */
                for (int j = 0; j < lim; j++) {
                    const float p = exp(sr[j] - mx);
                    sum += p;
                    vstore_half_rte(p, (size_t)(tid * LDP + j), (__local half *)ps);
                }
            }
            for (int j = mx != -INFINITY ? lim : 0; j < BK; j++)
                vstore_half_rte(0.0f, (size_t)(tid * LDP + j), (__local half *)ps);
            lrow[tid] = lrow[tid] * alpha + sum;
            mrow[tid] = mx;
            arow[tid] = alpha;
        }
        barrier(CLK_LOCAL_MEM_FENCE);

        /* O = O * alpha + P V, V's rows k-major through ldmatrix .trans */
        {
            const float a0 = arow[warp * 16 + (lane >> 2)], a8 = arow[warp * 16 + (lane >> 2) + 8];
            UNROLL for (int j = 0; j < DBLK; j++)
                o[j] = o[j] * (float4)(a0, a0, a8, a8);
        }
        UNROLL for (int kk = 0; kk < BK / 16; kk++)
        {
            const uint4 pa =
                MMA_LDMATRIX_X4(ps, (warp * 16 + (lane & 15)) * LDP + kk * 16 + (lane >> 4) * 8);
            UNROLL for (int j = 0; j < DBLK; j += 2)
            {
                const uint4 b = MMA_LDMATRIX_X4_T(
                    vs, (kk * 16 + (m & 1) * 8 + (lane & 7)) * LDS + (j + (m >> 1)) * 8);
                o[j] = MMA_SYNC(o[j], pa, (uint2)(b.s0, b.s1));
                o[j + 1] = MMA_SYNC(o[j + 1], pa, (uint2)(b.s2, b.s3));
            }
        }
    }

    for (int half_rows = 0; half_rows < 2; half_rows++) { /* rows g, then g + 8 */
        const int r = warp * 16 + (lane >> 2) + 8 * half_rows;
        if (r >= n_rows)
            continue;
        const float inv = nkrow[r] > 0 ? 1.0f / lrow[r] : 0.0f;
        __global float *orow =
            out + (size_t)(blk.x + r) * (size_t)out_stride + (size_t)hcol + 2 * (lane & 3);
        UNROLL for (int j = 0; j < DBLK; j++)
            vstore2((half_rows ? o[j].s23 : o[j].s01) * inv, 0, orow + j * 8);
    }
}
