/* kc_probe: see kc_probe.h. */
#include "kc_probe.h"

#include <time.h>

#include "kc_error.h"
#include "kc_program.h"

#define COPY_FLOAT4S ((size_t)4 << 20) /* 64 MiB each way */
#define FMA_ITERS 256
#define RUNS 5

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds per launch of k over `global` work-items (a warm-up, then RUNS timed). */
static ks_status time_kernel(kc_context *ctx, cl_kernel k, const char *name, size_t global,
                             double *seconds)
{
    ks_status st = kc_context_launch(ctx, k, name, 1, &global, NULL, NULL);
    if (st == KS_OK)
        st = kc_context_finish(ctx);
    double t0 = now_s();
    for (int r = 0; r < RUNS && st == KS_OK; r++)
        st = kc_context_launch(ctx, k, name, 1, &global, NULL, NULL);
    if (st == KS_OK)
        st = kc_context_finish(ctx);
    *seconds = (now_s() - t0) / RUNS;
    return st;
}

ks_status kc_probe_peaks(kc_context *ctx, kc_peaks *out)
{
    ks_status status = KS_OK;
    kc_program *prog = NULL;
    cl_kernel copy = NULL, fma = NULL;
    cl_mem a = NULL, b = NULL, f = NULL;
    const kc_device_info *dev = kc_context_device(ctx);
    size_t fma_items = (size_t)(dev->compute_units ? dev->compute_units : 1) * 2048;
    const char *scope = kc_profile_current_scope(kc_context_profile(ctx));
    kc_profile_scope(kc_context_profile(ctx), "probe");
    *out = (kc_peaks){0};
    if ((status = kc_program_get(ctx, "probe.cl", NULL, &prog)) != KS_OK ||
        (status = kc_program_kernel(prog, "probe_copy", &copy)) != KS_OK ||
        (status = kc_program_kernel(prog, "probe_fma", &fma)) != KS_OK ||
        (status = kc_context_buffer(ctx, CL_MEM_READ_WRITE, COPY_FLOAT4S * 16, NULL, &a)) !=
            KS_OK ||
        (status = kc_context_buffer(ctx, CL_MEM_READ_WRITE, COPY_FLOAT4S * 16, NULL, &b)) !=
            KS_OK ||
        (status = kc_context_buffer(ctx, CL_MEM_READ_WRITE, fma_items * sizeof(float), NULL, &f)) !=
            KS_OK)
        goto cleanup;
    cl_int n = (cl_int)COPY_FLOAT4S, iters = FMA_ITERS;
    KC_CHECK(clSetKernelArg(copy, 0, sizeof a, &a));
    KC_CHECK(clSetKernelArg(copy, 1, sizeof b, &b));
    KC_CHECK(clSetKernelArg(copy, 2, sizeof n, &n));
    KC_CHECK(clSetKernelArg(fma, 0, sizeof f, &f));
    KC_CHECK(clSetKernelArg(fma, 1, sizeof iters, &iters));
    double s_copy = 0, s_fma = 0;
    if ((status = time_kernel(ctx, copy, "probe_copy", COPY_FLOAT4S, &s_copy)) != KS_OK ||
        (status = time_kernel(ctx, fma, "probe_fma", fma_items, &s_fma)) != KS_OK)
        goto cleanup;
    out->bytes_per_s = s_copy > 0 ? (double)COPY_FLOAT4S * 32.0 / s_copy : 0;
    out->flops_per_s = s_fma > 0 ? (double)fma_items * FMA_ITERS * 64.0 / s_fma : 0;
cleanup:
    kc_context_buffer_free(ctx, &a);
    kc_context_buffer_free(ctx, &b);
    kc_context_buffer_free(ctx, &f);
    kc_profile_scope(kc_context_profile(ctx), scope);
    if (status != KS_OK)
        ks_error_prefix("probing the device's peaks");
    return status;
}
