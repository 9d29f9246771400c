/* ke_cl_gemm: the one GEMM seam of the OpenCL engine. Every matrix product of the model goes
 * through it, so kernels (ours, or CLBlast where it wins) can be chosen per device and shape
 * in one place without touching the forward pass.
 *
 *   Y (m, n) [+]= X (m, k) · Wᵀ + bias      W is (n, k) row-major, as nn.Linear stores it
 *
 * X and Y are f32; W and bias are f16 (read with vload_half, f32 arithmetic) or f32, both of
 * the model's storage dtype. Offsets and leading dimensions are in elements, so callers can
 * address row blocks and head slices of larger buffers. Buffers are borrowed. Not thread-safe
 * (one thread drives a context). */
#ifndef KE_CL_GEMM_H
#define KE_CL_GEMM_H

#include <stdbool.h>
#include <stddef.h>

#include "kc_context.h"
#include "ks_error.h"
#include "model.h"

typedef struct ke_cl_gemm ke_cl_gemm;

typedef struct ke_cl_gemm_args {
    size_t m, n, k;
    cl_mem x;
    size_t x_offset, ldx; /* ldx >= k */
    cl_mem w;
    size_t w_offset; /* rows are k long (no row padding) */
    ke_dtype w_dtype;
    cl_mem bias; /* (n) of w_dtype, or NULL */
    size_t bias_offset;
    cl_mem y;
    size_t y_offset, ldy; /* ldy >= n */
    bool accumulate;      /* Y += product (+ bias): residual connections for free */
} ke_cl_gemm_args;

/* Builds (or loads from the program cache) the GEMM kernels for ctx's device: kernels/gemm.cl
 * twice (f32 and f16 weights) with the device's tunables (docs/gemm.md; the developer switch
 * KOSMOS_GEMM_TUNE overrides them). NULL with a message on failure. `ctx` is borrowed and must
 * outlive the gemm. */
ke_cl_gemm *ke_cl_gemm_new(kc_context *ctx);
void ke_cl_gemm_destroy(ke_cl_gemm **g);

/* Enqueues the product on ctx's queue (no wait). m or n = 0 enqueues nothing; k = 0 gives
 * Y (+)= bias. Buffer extents are checked against the offsets and strides. KS_ERR_INVALID on
 * inconsistent sizes, KS_ERR_DEVICE with the kernel name and sizes when the device refuses. */
ks_status ke_cl_gemm_run(ke_cl_gemm *g, const ke_cl_gemm_args *args);

/* Which implementation ran last ("ours:dot_r4", "ours:tiled", "clblast", ...; "none" before the
 * first run), for benchmarks and notes. Borrowed until the next run. */
const char *ke_cl_gemm_last_variant(const ke_cl_gemm *g);

/* For tests and benchmarks: the variants this build has ("simple", "dot", "tiled", and
 * "clblast" where CLBlast was found), by index < count (static storage; NULL out of range). */
size_t ke_cl_gemm_variant_count(void);
const char *ke_cl_gemm_variant_name(size_t i);

/* For tests and benchmarks: every later run uses variant `name` (one of the above) whatever
 * the shape, until called again; NULL restores the automatic choice. KS_ERR_INVALID for an
 * unknown name; a variant that cannot serve a run (clblast with f16 weights) fails that run
 * with KS_ERR_UNSUPPORTED. */
ks_status ke_cl_gemm_force(ke_cl_gemm *g, const char *name);

#endif
