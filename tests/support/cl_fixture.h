/* cl_fixture: the OpenCL fixture of the unit tests that run kernels (test_opencl, test_cl_ops,
 * test_cl_gemm): the device under test and a context on it, the skip when this machine has none,
 * buffer copies that fail the test, and the host-side measures that kernel outputs are compared
 * with, and the reference of a matrix product (test_cl_gemm, test_cl_gemm_mma). For cmocka tests
 * only (it fails them). Other references stay with each test.
 * Prefix ts_cl_. */
#ifndef TS_CL_FIXTURE_H
#define TS_CL_FIXTURE_H

#include <stddef.h>

#include "kc_context.h"
#include "kc_device.h"
#include "test_skip.h"

/* Lists the devices and picks the one under test: KOSMOS_TEST_DEVICE=<spec> when set, else the
 * default rule. None is not an error: *dev (when dev is not NULL) and *ctx stay NULL and the
 * device tests skip (TS_CL_REQUIRE). With ctx, also opens a context on the device (default
 * params). Returns 0, or -1 with the reason on stderr: what a cmocka group setup returns. Caller
 * owns *list and *ctx, also after a failure (ts_cl_close). */
int ts_cl_open(kc_device_list **list, const kc_device_info **dev, kc_context **ctx);
/* Closes the context (ctx may be NULL), then the list it borrows its device from. */
void ts_cl_close(kc_device_list **list, kc_context **ctx);

/* Ends a device test when `device` (what the test needs of the fixture) is NULL: a skip, or a
 * failure under KOSMOS_TEST_REQUIRE_ALL=1. */
#define TS_CL_REQUIRE(device)                                                                      \
    do {                                                                                           \
        if (!(device))                                                                             \
            KT_CANNOT_RUN("no OpenCL device");                                                     \
    } while (0)

/* A read-write buffer of `bytes` (at least 4, as OpenCL has no empty buffers) holding a copy of
 * `host` when not NULL. Caller owns it (kc_context_buffer_free). */
cl_mem ts_cl_upload(kc_context *ctx, const void *host, size_t bytes);
/* Reads `bytes` at byte `offset` of m into host, waiting for them. */
void ts_cl_download(kc_context *ctx, cl_mem m, size_t offset, size_t bytes, void *host);

/* Uniform in [-1, 1) (xorshift64): the same sequence in every run of a program, so a failing
 * case comes back. */
double ts_cl_frand(void);

/* The (mean, M2) of each block of sb values of v, summed in order in f32, as the kernels'
 * producers write row statistics (kernels/common.cl block_stats); dim / sb rounded up blocks. */
void ts_cl_block_stats(const float *v, size_t dim, size_t sb, cl_float2 *out);

/* One matrix product as kernels/gemm.cl defines it, for ts_cl_linear_ref: row r of X is row
 * gather[r] (NULL: r) of x (row stride ldx), normalized when gamma is not NULL (LayerNorm over
 * its k values, eps 1e-5, then * gamma + beta), each operand passed through round_x when not
 * NULL (the f16 operands of the matrix-unit engine), times W (n, k) row-major, + bias (n, NULL:
 * none), the activation act (ke_activation's values: 0 gelu, 1 quick_gelu, 2 gelu_tanh,
 * 3 relu; -1 none), + y0[r * ldy + j] for the columns j < acc_cols (the residual; 0: none). */
typedef struct ts_cl_linear {
    size_t m, n, k;
    const float *x;
    size_t ldx;
    const int *gather;
    const float *gamma, *beta;
    float (*round_x)(float);
    const float *w, *bias;
    int act;
    const float *y0;
    size_t ldy, acc_cols;
} ts_cl_linear;

/* The activations in double (the `act` of ts_cl_linear). */
double ts_cl_act_ref(double v, int act);

/* The product of p in double: want (m, n); bound (m, n, may be NULL) the sum of |x w| over k,
 * the scale of the product's rounding errors. */
void ts_cl_linear_ref(const ts_cl_linear *p, float *want, float *bound);

/* |got - want| / max(1, |want|), the error every kernel check measures; NaN reads as infinite,
 * so that it fails any tolerance and no later value hides it. */
double ts_cl_rel_diff(double got, double want);
/* The largest ts_cl_rel_diff over n values. */
double ts_cl_max_rel_diff(const float *got, const float *want, size_t n);

/* Prints the largest difference of n values and fails the test when it is above tol. */
#define TS_CL_EXPECT_CLOSE(what, got, want, n, tol)                                                \
    do {                                                                                           \
        double d_ = ts_cl_max_rel_diff((got), (want), (n));                                        \
        print_message("  %-40s max diff %.3g\n", (what), d_);                                      \
        if (!(d_ <= (tol)))                                                                        \
            fail_msg("%s: max diff %.3g > %.3g", (what), d_, (double)(tol));                       \
    } while (0)

#endif
