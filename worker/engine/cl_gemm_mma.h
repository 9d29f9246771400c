/* ke_cl_mma: the programs of the matrix-unit GEMM engine (kernels/gemm_mma.cl over the macro
 * layer of kernels/mma.cl) on one context: their tunables per implementation, the device probe,
 * and the macro layer run alone on one 16x8x16 problem. The engine computes what gemm.cl's
 * kernels compute, with f16 operands and f32 sums, for many rows; cl_gemm.c chooses it (its
 * path, ke_cl_gemm_set_path) and launches it with the arguments of every GEMM kernel.
 * docs/gemm.md, "The matrix-unit engine". Not thread-safe (one thread drives a context). */
#ifndef KE_CL_GEMM_MMA_H
#define KE_CL_GEMM_MMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kc_context.h"
#include "kc_program.h"
#include "ks_error.h"

/* Products with more rows than this take the engine when it is on (fewer: gemm.cl's rows
 * kernels, whose groups fit a few rows; a 128-row tile would be mostly padding). */
#define KE_CL_MMA_MIN_M 64

/* One way to build the engine: mma.cl's implementation and the PTX features a driver may
 * refuse (the probe tries them in turn). */
typedef struct ke_mma_variant {
    bool ptx;      /* MMA_IMPL 1: inline PTX (NVIDIA); false: the emulation (any device) */
    bool ldmatrix; /* MMA_LDMATRIX */
    bool cp_async; /* MMA_CP_ASYNC */
    int ptx_addr;  /* MMA_PTX_ADDR: how a __local pointer becomes a .shared address */
    int nv_arch;   /* > 0: built with -cl-nv-arch sm_<nv_arch> (a driver that targets an older
                     * architecture than the device's by default) */
} ke_mma_variant;

/* The engine as built: a value struct; the programs belong to the context. */
typedef struct ke_cl_mma {
    ke_mma_variant variant;
    int bm, bn, bk, wm, wn, stages; /* MMA_BM ... MMA_STAGES */
    int w_panel;                    /* W_PANEL */
    kc_program *prog[2];            /* [ke_dtype]: f16 built, f32 on first use */
} ke_cl_mma;

/* Builds (or loads from the program cache) gemm_mma.cl for f16 weights with `variant`, for
 * weights in panels of `w_panel` columns (0: row-major; else a multiple of 8), with as many
 * pipeline stages as the device's local memory holds (2 or 3). KS_ERR_DEVICE with the build
 * log when the compiler refuses it; KS_ERR_UNSUPPORTED when even 2 stages do not fit. */
ks_status ke_cl_mma_build(kc_context *ctx, const ke_mma_variant *variant, int w_panel,
                          ke_cl_mma *out);

/* The engine's program for weights of `dt` (a model in f32 is rare here: its program is built
 * on first use), borrowed from the context. */
ks_status ke_cl_mma_program(kc_context *ctx, ke_cl_mma *e, int dt, kc_program **out);

/* gemm_mma's NDRange for an (m, n) product. */
void ke_cl_mma_ndrange(const ke_cl_mma *e, size_t m, size_t n, size_t global[3], size_t local[3]);

/* What mma_fragments leaves for one 16x8x16 problem: every lane's registers (two halves per
 * word, the lower index in the low bits) and D = A·B + C (16, 8) row-major, gathered through
 * the engine's C layout. */
typedef struct ke_mma_frags {
    uint32_t a[32][4], b[32][2];
    float d_regs[32][4];
    float d[16 * 8];
} ke_mma_frags;

/* Runs the macro layer alone (kernel mma_fragments) on a (16, 16) row-major, b (16, 8) k-major
 * (f16 bits) and c (16, 8) f32 row-major. */
ks_status ke_cl_mma_fragments(kc_context *ctx, const ke_cl_mma *e, const uint16_t a[256],
                              const uint16_t b[128], const float c[128], ke_mma_frags *out);

/* The device probe: for each PTX variant in turn (ldmatrix and cp.async with either address
 * form, then mma.sync alone; then the three again for the device's own architecture,
 * -cl-nv-arch, where the device reports its compute capability), build the engine and run one 16x8x16 problem of small integers,
 * whose result is exact whatever the order of the sums; the first variant that builds and
 * matches the host's result is *out. `report` gets one line: the chosen variant with the PTX
 * version and target the driver emitted, or why each variant failed. KS_ERR_UNSUPPORTED with
 * that line as the message when none passed. */
ks_status ke_cl_mma_probe(kc_context *ctx, int w_panel, ke_cl_mma *out, char *report,
                          size_t report_len);

/* Describes a variant ("ptx ldmatrix cp.async addr0", "emulated ldmatrix") into buf. */
const char *ke_mma_variant_describe(const ke_mma_variant *v, char *buf, size_t len);

/* The build options of kernels/mma.cl for v ("-DMMA_IMPL=1 -DMMA_LDMATRIX=1 ... [-cl-nv-arch
 * sm_90]"), for the programs that include it; buf of len bytes, returned. */
const char *ke_mma_variant_options(const ke_mma_variant *v, char *buf, size_t len);

#endif
