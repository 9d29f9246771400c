/* mma.cl: the warp-level matrix multiply-accumulate of the tensor-core GEMM (gemm_mma.cl) behind
 * a small macro layer, pulled in with `#include "mma.cl"` after common.cl; it may not include in
 * turn. Nothing here is a kernel. Two implementations of the same operations, by MMA_IMPL:
 *
 *   1  NVIDIA tensor cores through inline PTX (sm_80 and later; the driver's OpenCL C accepts
 *      asm): mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, ldmatrix, cp.async
 *   0  an emulation in plain OpenCL C (any device; PoCL on CI): each operation does what the
 *      PTX ISA says it does, lane by lane, with the fragments exchanged through local memory,
 *      so that the tile loop's fragment and address arithmetic is checked on a CPU
 *
 * A warp is the 32 work-items of one row of the work-group: lane = get_local_id(0) (the local
 * size of dimension 0 is 32), warp = get_local_id(1). NVIDIA forms warps from consecutive linear
 * ids, so there the warp is a real one. Every operation is called by all 32 lanes of every warp
 * of the group, in uniform control flow: the PTX instructions are .sync.aligned, and the
 * emulation synchronizes through work-group barriers.
 *
 * Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"); with
 * g = lane >> 2 and t = lane & 3, a register holding two halves has the lower index in its low
 * 16 bits:
 *
 *   A 16x16 row-major, uint4 (8 halves):   a.s[j] = A[g + 8*(j & 1)][2t + 8*(j >> 1) + {0, 1}]
 *   B 16x8 (k x n), uint2 (4 halves):      b.s[j] = B[2t + 8*j + {0, 1}][g]
 *   C/D 16x8 f32, float4:                  c.s[i] = C[g + 8*(i >> 1)][2t + (i & 1)]
 *
 *   lane:   0  1  2  3 | 4  5  6  7 | ... | 28 29 30 31       B (k x n), b.s0 (k < 8):
 *   A rows: 0  0  0  0 | 1  1  1  1 | ... |  7  7  7  7         lane 4n + t holds k = 2t, 2t+1
 *   A cols: 0  2  4  6 | 0  2  4  6 | ... |  0  2  4  6         of column n
 *           (a.s0; a.s1 is the same 8 rows lower, a.s2 8 columns right, a.s3 both)
 *
 * Operations (macros, so that the emulation can reach its scratch without an argument):
 *   MMA_SCRATCH                    declares the emulation's local scratch; first statement of a
 *                                  kernel that uses the others (empty for PTX)
 *   MMA_SYNC(c, a, b)              c + A·B for one m16n8k16 (float4, uint4, uint2 -> float4)
 *   MMA_LDMATRIX_X4(tile, off)     ldmatrix .x4: lane l gives the row at tile + off (8 halves,
 *                                  16-byte aligned) for matrix l >> 3; returns matrix j's
 *                                  (row g, columns 2t, 2t+1) in .s[j]: an A fragment when lane
 *                                  l points at row (l & 15), column 8*(l >> 4) of a 16x16 block
 *   MMA_LDMATRIX_X4_T(tile, off)   the same with .trans: matrix j's (rows 2t, 2t+1, column g),
 *                                  the B fragments of two n8 blocks from a k-major tile
 *   MMA_CP_ASYNC16(dst, src, ok)   16 bytes global -> local, both 16-byte aligned, zeros when
 *                                  !ok; done (visible to the lane) after MMA_CP_WAIT
 *   MMA_CP_COMMIT(), MMA_CP_WAIT(n)  close a group of copies; wait until at most n (a literal)
 *                                  groups are in flight
 *
 *   MMA_XCH_PARAM, MMA_XCH_ARG     a helper function that calls the operations declares
 *                                  `f(... MMA_XCH_PARAM)` and is called `f(... MMA_XCH_ARG)`
 *                                  (the emulation's scratch; empty for PTX)
 *   mma_c_row(lane, i), mma_c_col(lane, i)  where c.s[i] of a lane sits in the 16x8 block
 *
 * Tunables (-D):
 *   MMA_IMPL      1: PTX, 0: emulation (0)
 *   MMA_WARPS     warps per work-group: the emulation's scratch (8)
 *   MMA_CP_ASYNC  1: MMA_CP_ASYNC16 is PTX's cp.async (MMA_IMPL 1 only); 0: a plain copy (1)
 *   MMA_PTX_ADDR  how a __local pointer becomes a .shared address for ldmatrix and cp.async:
 *                 0: its integer value (an offset in the shared window), 1: a generic address
 *                 converted with cvta.to.shared (0); the probe tries both
 *
 * The emulation also enforces the instructions' alignment rules: a row address of ldmatrix or
 * an address of cp.async that is not 16-byte aligned makes the result NaN, so that a mistake a
 * GPU would fault on fails the tests on a CPU too.
 */

#ifndef MMA_IMPL
#define MMA_IMPL 0
#endif
#ifndef MMA_WARPS
#define MMA_WARPS 8
#endif
#ifndef MMA_CP_ASYNC
#define MMA_CP_ASYNC 1
#endif
#ifndef MMA_PTX_ADDR
#define MMA_PTX_ADDR 0
#endif
#if MMA_IMPL != 0 && MMA_IMPL != 1
#error "MMA_IMPL must be 0 (emulation) or 1 (PTX)"
#endif
#if MMA_WARPS < 1
#error "MMA_WARPS must be positive"
#endif

#define MMA_STR_(x) #x
#define MMA_STR(x) MMA_STR_(x)
#define MMA_NAN2 0x7e007e00u /* two f16 NaNs: what a misaligned access yields in the emulation */

inline int mma_c_row(const int lane, const int i) { return (lane >> 2) + 8 * (i >> 1); }
inline int mma_c_col(const int lane, const int i) { return 2 * (lane & 3) + (i & 1); }

#if MMA_IMPL == 1

#define MMA_SCRATCH
#define MMA_XCH_PARAM
#define MMA_XCH_ARG

/* The .shared address of a __local pointer. */
#if MMA_PTX_ADDR == 0
inline uint mma_saddr(__local const void *p) { return (uint)(size_t)p; }
#else
inline uint mma_saddr(__local const void *p)
{
    ulong s;
    asm volatile("cvta.to.shared.u64 %0, %1;" : "=l"(s) : "l"((ulong)(size_t)p));
    return (uint)s;
}
#endif

inline float4 mma_sync_ptx(const float4 c, const uint4 a, const uint2 b)
{
    float d0, d1, d2, d3;
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
                 : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
                 : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b.x), "r"(b.y), "f"(c.x),
                   "f"(c.y), "f"(c.z), "f"(c.w));
    return (float4)(d0, d1, d2, d3);
}

inline uint4 mma_ldmatrix_ptx(__local const ushort *tile, const int off)
{
    uint r0, r1, r2, r3;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(mma_saddr(tile + off)));
    return (uint4)(r0, r1, r2, r3);
}

inline uint4 mma_ldmatrix_t_ptx(__local const ushort *tile, const int off)
{
    uint r0, r1, r2, r3;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(mma_saddr(tile + off)));
    return (uint4)(r0, r1, r2, r3);
}

#define MMA_SYNC(c, a, b) mma_sync_ptx((c), (a), (b))
#define MMA_LDMATRIX_X4(tile, off) mma_ldmatrix_ptx((tile), (off))
#define MMA_LDMATRIX_X4_T(tile, off) mma_ldmatrix_t_ptx((tile), (off))

#if MMA_CP_ASYNC
inline void mma_cp_async16_ptx(__local ushort *dst, __global const ushort *src, const int ok)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(mma_saddr(dst)),
                 "l"((ulong)(size_t)src), "r"(ok ? 16 : 0)
                 : "memory");
}
#define MMA_CP_ASYNC16(dst, src, ok) mma_cp_async16_ptx((dst), (src), (ok))
#define MMA_CP_COMMIT() asm volatile("cp.async.commit_group;" ::: "memory")
#define MMA_CP_WAIT(n) asm volatile("cp.async.wait_group " MMA_STR(n) ";" ::: "memory")
#endif

#else /* MMA_IMPL == 0: the emulation */

/* Per warp: the 32 lanes' A and B fragments (6 words each) or ldmatrix row addresses. */
#define MMA_XCH_WORDS 192
#define MMA_SCRATCH __local uint mma_xch[MMA_WARPS * MMA_XCH_WORDS]
#define MMA_XCH_PARAM , __local uint *mma_xch
#define MMA_XCH_ARG , mma_xch

inline __local uint *mma_warp_scratch(__local uint *xch)
{
    return xch + (int)get_local_id(1) * MMA_XCH_WORDS;
}

/* A[row][col] and B[kk][col] of the fragments the warp's lanes put in w (mma_sync_emu). */
inline float mma_a_elem(__local const uint *w, const int row, const int col)
{
    const int lane = (row & 7) * 4 + ((col & 7) >> 1), reg = (row >> 3) + 2 * (col >> 3);
    return vload_half((size_t)((lane * 4 + reg) * 2 + (col & 1)), (__local const half *)w);
}

inline float mma_b_elem(__local const uint *w, const int kk, const int col)
{
    const int lane = col * 4 + ((kk & 7) >> 1), reg = kk >> 3;
    return vload_half((size_t)(256 + (lane * 2 + reg) * 2 + (kk & 1)), (__local const half *)w);
}

inline float4 mma_sync_emu(const float4 c, const uint4 a, const uint2 b, __local uint *xch)
{
    __local uint *w = mma_warp_scratch(xch);
    const int lane = (int)get_local_id(0);
    vstore4(a, lane, w);
    vstore2(b, lane, w + 128);
    barrier(CLK_LOCAL_MEM_FENCE);
    float d[4] = {c.x, c.y, c.z, c.w};
    for (int i = 0; i < 4; i++) {
        const int row = mma_c_row(lane, i), col = mma_c_col(lane, i);
        for (int kk = 0; kk < 16; kk++)
            d[i] = fma(mma_a_elem(w, row, kk), mma_b_elem(w, kk, col), d[i]);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    return (float4)(d[0], d[1], d[2], d[3]);
}

/* ldmatrix .x4 (trans 0) or .x4.trans (1): every lane publishes its row address, then reads
 * what the instruction would hand it from the rows the other lanes named. */
inline uint4 mma_ldmatrix_emu(__local const ushort *tile, const int off, const int trans,
                              __local uint *xch)
{
    __local uint *w = mma_warp_scratch(xch);
    const int lane = (int)get_local_id(0), g = lane >> 2, t = lane & 3;
    w[lane] = (uint)off;
    barrier(CLK_LOCAL_MEM_FENCE);
    uint r[4];
    for (int j = 0; j < 4; j++) {
        uint lo, hi;
        if (trans) {
            __local const ushort *row0 = tile + w[8 * j + 2 * t], *row1 = tile + w[8 * j + 2 * t + 1];
            lo = ((size_t)row0 & 15) ? 0x7e00u : (uint)row0[g];
            hi = ((size_t)row1 & 15) ? 0x7e00u : (uint)row1[g];
        } else {
            __local const ushort *row = tile + w[8 * j + g];
            lo = ((size_t)row & 15) ? 0x7e00u : (uint)row[2 * t];
            hi = ((size_t)row & 15) ? 0x7e00u : (uint)row[2 * t + 1];
        }
        r[j] = lo | (hi << 16);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    return (uint4)(r[0], r[1], r[2], r[3]);
}

#define MMA_SYNC(c, a, b) mma_sync_emu((c), (a), (b), mma_xch)
#define MMA_LDMATRIX_X4(tile, off) mma_ldmatrix_emu((tile), (off), 0, mma_xch)
#define MMA_LDMATRIX_X4_T(tile, off) mma_ldmatrix_emu((tile), (off), 1, mma_xch)

#endif /* MMA_IMPL */

#if !(MMA_IMPL == 1 && MMA_CP_ASYNC)
/* cp.async's contract with a plain copy (done at once; the groups need no tracking). */
inline void mma_cp_async16_plain(__local ushort *dst, __global const ushort *src, const int ok)
{
    ushort8 v = (ushort8)(0);
    if (((size_t)dst & 15) || ((size_t)src & 15))
        v = as_ushort8((uint4)(MMA_NAN2));
    else if (ok)
        v = vload8(0, src);
    vstore8(v, 0, dst);
}
#define MMA_CP_ASYNC16(dst, src, ok) mma_cp_async16_plain((dst), (src), (ok))
#define MMA_CP_COMMIT() ((void)0)
#define MMA_CP_WAIT(n) ((void)0)
#endif
