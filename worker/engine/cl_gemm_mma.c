/* cl_gemm_mma: the matrix-unit engine's programs, its 16x8x16 check and the device probe (see
 * cl_gemm_mma.h). The kernels are kernels/gemm_mma.cl and kernels/mma.cl. */
#include "cl_gemm_mma.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl_gemm.h"
#include "kc_error.h"
#include "model.h"

#ifndef CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV /* cl_nv_device_attribute_query (cl_ext.h) */
#define CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV 0x4000
#define CL_DEVICE_COMPUTE_CAPABILITY_MINOR_NV 0x4001
#endif

#define MMA_FILE "gemm_mma.cl"
#define EMU_SCRATCH_BYTES(warps) ((size_t)(warps)*192 * 4) /* mma.cl's MMA_XCH_WORDS */

/* The block sizes every variant uses (gemm_mma.cl's defaults): 8 warps of 64x32 on 128x128. */
enum { BM = 128, BN = 128, BK = 32, WM = 64, WN = 32, EPI_ROWS = 32 };

const char *ke_mma_variant_describe(const ke_mma_variant *v, char *buf, size_t len)
{
    char arch[24] = "";
    if (v->nv_arch > 0)
        snprintf(arch, sizeof arch, " sm_%d", v->nv_arch);
    snprintf(buf, len, "%s%s%s%s%s", v->ptx ? "ptx" : "emulated", v->ldmatrix ? " ldmatrix" : "",
             v->cp_async ? " cp.async" : "", v->ptx ? (v->ptx_addr ? " addr1" : " addr0") : "",
             arch);
    return buf;
}

/* Local memory of gemm_mma with `stages` (the ring or the epilogue's slab, and the emulation's
 * scratch). */
static size_t local_bytes(const ke_mma_variant *v, int stages)
{
    size_t ring = (size_t)stages * (BM * BK + BK * BN) * 2, slab = (size_t)EPI_ROWS * (BN + 4) * 4;
    return (ring > slab ? ring : slab) + (v->ptx ? 0 : EMU_SCRATCH_BYTES((BM / WM) * (BN / WN)));
}

const char *ke_mma_variant_options(const ke_mma_variant *v, char *buf, size_t len)
{
    char arch[32] = "";
    if (v->nv_arch > 0)
        snprintf(arch, sizeof arch, " -cl-nv-arch sm_%d", v->nv_arch);
    snprintf(buf, len, "-DMMA_IMPL=%d -DMMA_LDMATRIX=%d -DMMA_CP_ASYNC=%d -DMMA_PTX_ADDR=%d%s",
             v->ptx ? 1 : 0, v->ldmatrix ? 1 : 0, v->cp_async ? 1 : 0, v->ptx_addr, arch);
    return buf;
}

static ks_status build_dtype(kc_context *ctx, const ke_cl_mma *e, ke_dtype dt, kc_program **out)
{
    char opts[352], mma[160];
    snprintf(opts, sizeof opts,
             "-DWEIGHT_HALF=%d -DW_PANEL=%d -DSTAT_SB=%d %s -DMMA_BM=%d -DMMA_BN=%d -DMMA_BK=%d "
             "-DMMA_WM=%d -DMMA_WN=%d -DMMA_STAGES=%d -DMMA_EPI_ROWS=%d",
             dt == KE_DTYPE_F16 ? 1 : 0, e->w_panel, KE_CL_STAT_SB,
             ke_mma_variant_options(&e->variant, mma, sizeof mma), e->bm, e->bn, e->bk, e->wm,
             e->wn, e->stages, EPI_ROWS);
    return kc_program_get(ctx, MMA_FILE, opts, out);
}

/* The block sizes and stages for `v` on this device, without building. */
static ks_status plan(kc_context *ctx, const ke_mma_variant *v, int w_panel, ke_cl_mma *out)
{
    memset(out, 0, sizeof *out);
    if (w_panel % 8 != 0)
        return ks_fail(KS_ERR_INVALID,
                       "the mma engine reads weights in chunks of 8 columns, "
                       "not in panels of %d",
                       w_panel);
    const uint64_t have = kc_context_device(ctx)->local_mem_bytes;
    out->variant = *v;
    out->bm = BM, out->bn = BN, out->bk = BK, out->wm = WM, out->wn = WN;
    out->w_panel = w_panel;
    out->stages = local_bytes(v, 3) <= have ? 3 : 2;
    if (local_bytes(v, out->stages) > have)
        return ks_fail(KS_ERR_UNSUPPORTED,
                       "the mma engine needs %zu bytes of local memory, the "
                       "device has %llu",
                       local_bytes(v, 2), (unsigned long long)have);
    return KS_OK;
}

ks_status ke_cl_mma_build(kc_context *ctx, const ke_mma_variant *variant, int w_panel,
                          ke_cl_mma *out)
{
    ks_status st = plan(ctx, variant, w_panel, out);
    if (st == KS_OK)
        st = build_dtype(ctx, out, KE_DTYPE_F16, &out->prog[KE_DTYPE_F16]);
    if (st != KS_OK) {
        char desc[64];
        ks_error_prefix("the mma engine (%s)", ke_mma_variant_describe(variant, desc, sizeof desc));
    }
    return st;
}

ks_status ke_cl_mma_program(kc_context *ctx, ke_cl_mma *e, int dt, kc_program **out)
{
    ks_status st = KS_OK;
    if (!e->prog[dt] && (st = build_dtype(ctx, e, (ke_dtype)dt, &e->prog[dt])) != KS_OK) {
        char desc[64];
        ks_error_prefix("the mma engine (%s)",
                        ke_mma_variant_describe(&e->variant, desc, sizeof desc));
    }
    *out = e->prog[dt];
    return st;
}

void ke_cl_mma_ndrange(const ke_cl_mma *e, size_t m, size_t n, size_t global[3], size_t local[3])
{
    local[0] = 32;
    local[1] = (size_t)(e->bm / e->wm) * (size_t)(e->bn / e->wn);
    local[2] = 1;
    global[0] = (n + (size_t)e->bn - 1) / (size_t)e->bn * local[0];
    global[1] = (m + (size_t)e->bm - 1) / (size_t)e->bm * local[1];
    global[2] = 1;
}

ks_status ke_cl_mma_fragments(kc_context *ctx, const ke_cl_mma *e, const uint16_t a[256],
                              const uint16_t b[128], const float c[128], ke_mma_frags *out)
{
    ks_status status = KS_OK;
    cl_mem buf[7] = {NULL};
    const size_t bytes[7] = {256 * 2,       128 * 2,       128 * 4,
                             sizeof out->a, sizeof out->b, sizeof out->d_regs,
                             sizeof out->d};
    const void *in[3] = {a, b, c};
    void *back[4] = {out->a, out->b, out->d_regs, out->d};
    cl_kernel kern = NULL;
    memset(out, 0, sizeof *out);
    if ((status = kc_program_kernel(e->prog[KE_DTYPE_F16], "mma_fragments", &kern)) != KS_OK)
        goto cleanup;
    for (int i = 0; i < 7; i++) {
        if ((status = kc_context_buffer(ctx, i < 3 ? CL_MEM_READ_ONLY : CL_MEM_WRITE_ONLY, bytes[i],
                                        i < 3 ? in[i] : NULL, &buf[i])) != KS_OK)
            goto cleanup;
        KC_CHECK(clSetKernelArg(kern, (cl_uint)i, sizeof(cl_mem), &buf[i]));
    }
    const size_t one_warp[3] = {32, 1, 1};
    if ((status = kc_context_launch(ctx, kern, "mma_fragments", 1, one_warp, one_warp, NULL)) !=
        KS_OK)
        goto cleanup;
    for (int i = 0; i < 4; i++)
        if ((status = kc_context_read(ctx, buf[3 + i], true, 0, bytes[3 + i], back[i], NULL)) !=
            KS_OK)
            goto cleanup;
cleanup:
    for (int i = 0; i < 7; i++)
        kc_context_buffer_free(ctx, &buf[i]);
    if (status != KS_OK)
        ks_error_prefix("the mma engine's 16x8x16 check");
    return status;
}

/* ---- the probe -------------------------------------------------------------------------- */

/* Appends printf-style text to report (truncating). */
static void say(char *report, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *report, size_t len, const char *fmt, ...)
{
    size_t used = strlen(report);
    if (used + 1 >= len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(report + used, len - used, fmt, ap);
    va_end(ap);
}

/* The ".version" and ".target" lines of the PTX the driver emitted for the program ("PTX 8.3
 * sm_90"), or "" where its binary is not PTX text. */
static void ptx_facts(kc_program *prog, char *out, size_t len)
{
    cl_kernel kern = NULL;
    cl_program p = NULL;
    size_t size = 0;
    unsigned char *bin = NULL;
    out[0] = '\0';
    if (kc_program_kernel(prog, "mma_fragments", &kern) != KS_OK ||
        clGetKernelInfo(kern, CL_KERNEL_PROGRAM, sizeof p, &p, NULL) != CL_SUCCESS ||
        clGetProgramInfo(p, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS ||
        size == 0 || (bin = malloc(size + 1)) == NULL)
        return;
    if (clGetProgramInfo(p, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) == CL_SUCCESS) {
        bin[size] = '\0';
        const char *ver = strstr((const char *)bin, ".version "),
                   *tgt = strstr((const char *)bin, ".target ");
        char v[16] = "?", t[32] = "?";
        if (ver)
            sscanf(ver + 9, "%15s", v);
        if (tgt)
            sscanf(tgt + 8, "%31[^, \n]", t);
        if (ver || tgt)
            snprintf(out, len, "PTX %s %s", v, t);
    }
    free(bin);
}

/* The first line of the last build log that names an error, else the start of the message. */
static void build_failure(kc_context *ctx, char *out, size_t len)
{
    const char *log = kc_context_build_log(ctx), *line = NULL;
    for (const char *p = log; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strstr(p, "error") && (!strchr(p, '\n') || strstr(p, "error") < strchr(p, '\n'))) {
            line = p;
            break;
        }
    if (!line)
        line = ks_error_message();
    size_t n = strcspn(line, "\n");
    snprintf(out, len, "%.*s", (int)(n < 160 ? n : 160), line);
}

/* A 16x8x16 problem of small integers (exact in f16 and in any order of f32 sums): 0 when the
 * engine's result and every lane's D registers match the host, else the first difference. */
static int check_exact(kc_context *ctx, const ke_cl_mma *e, char *why, size_t len)
{
    uint16_t a[256], b[128];
    float af[256], bf[128], c[128];
    uint32_t s = 12345;
    for (int i = 0; i < 256; i++) {
        s = s * 1664525u + 1013904223u;
        af[i] = (float)((int)(s >> 28) % 9 - 4);
        a[i] = ke_f32_to_f16(af[i]);
        if (i < 128) {
            s = s * 1664525u + 1013904223u;
            bf[i] = (float)((int)(s >> 28) % 9 - 4);
            b[i] = ke_f32_to_f16(bf[i]);
            c[i] = (float)((int)(s >> 24) % 17 - 8);
        }
    }
    ke_mma_frags f;
    if (ke_cl_mma_fragments(ctx, e, a, b, c, &f) != KS_OK) {
        snprintf(why, len, "run: %.160s", ks_error_message());
        return 1;
    }
    for (int r = 0; r < 16; r++)
        for (int col = 0; col < 8; col++) {
            double want = c[r * 8 + col];
            for (int k = 0; k < 16; k++)
                want += (double)af[r * 16 + k] * bf[k * 8 + col];
            if (f.d[r * 8 + col] != (float)want) {
                snprintf(why, len, "mismatch: D[%d][%d] = %g, want %g", r, col,
                         (double)f.d[r * 8 + col], want);
                return 1;
            }
        }
    /* the accumulator layout: c.s[i] of lane l is D[l/4 + 8*(i/2)][2*(l%4) + i%2] */
    for (int lane = 0; lane < 32; lane++)
        for (int i = 0; i < 4; i++) {
            float want = f.d[(lane / 4 + 8 * (i / 2)) * 8 + 2 * (lane % 4) + i % 2];
            if (f.d_regs[lane][i] != want) {
                snprintf(why, len, "lane %d d%d = %g, want %g", lane, i, (double)f.d_regs[lane][i],
                         (double)want);
                return 1;
            }
        }
    return 0;
}

ks_status ke_cl_mma_probe(kc_context *ctx, int w_panel, ke_cl_mma *out, char *report,
                          size_t report_len)
{
    /* the device's architecture (cl_nv_device_attribute_query), for -cl-nv-arch */
    cl_uint cc_major = 0, cc_minor = 0;
    cl_device_id dev = kc_context_device(ctx)->device;
    if (clGetDeviceInfo(dev, CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV, sizeof cc_major, &cc_major,
                        NULL) != CL_SUCCESS ||
        clGetDeviceInfo(dev, CL_DEVICE_COMPUTE_CAPABILITY_MINOR_NV, sizeof cc_minor, &cc_minor,
                        NULL) != CL_SUCCESS)
        cc_major = cc_minor = 0;
    const int arch = cc_major >= 8 ? (int)(cc_major * 10 + cc_minor) : 0;
    ke_mma_variant tries[6];
    size_t n_tries = 0;
    for (int with_arch = 0; with_arch <= (arch > 0); with_arch++) {
        const int a = with_arch ? arch : 0;
        tries[n_tries++] = (ke_mma_variant){
            .ptx = true, .ldmatrix = true, .cp_async = true, .ptx_addr = 0, .nv_arch = a};
        tries[n_tries++] = (ke_mma_variant){
            .ptx = true, .ldmatrix = true, .cp_async = true, .ptx_addr = 1, .nv_arch = a};
        tries[n_tries++] = (ke_mma_variant){.ptx = true, .nv_arch = a};
    }
    char failed[600] = ""; /* what each refused variant said */
    for (size_t i = 0; i < n_tries; i++) {
        char desc[64], why[200] = "", facts[48] = "";
        ke_mma_variant_describe(&tries[i], desc, sizeof desc);
        ke_cl_mma e;
        ks_status st = plan(ctx, &tries[i], w_panel, &e);
        if (st == KS_OK &&
            (st = build_dtype(ctx, &e, KE_DTYPE_F16, &e.prog[KE_DTYPE_F16])) != KS_OK)
            build_failure(ctx, why, sizeof why);
        else if (st != KS_OK)
            snprintf(why, sizeof why, "%.160s", ks_error_message());
        if (st == KS_OK) {
            ptx_facts(e.prog[KE_DTYPE_F16], facts, sizeof facts);
            if (check_exact(ctx, &e, why, sizeof why) != 0)
                st = KS_ERR_UNSUPPORTED;
        }
        if (st == KS_OK) {
            snprintf(report, report_len, "mma-ptx: the 16x8x16 probe matched with %s%s%s%s%s%s",
                     desc, *facts ? " (" : "", facts, *facts ? ")" : "",
                     *failed ? "; refused before it: " : "", failed);
            *out = e;
            return KS_OK;
        }
        say(failed, sizeof failed, "%s[%s%s%s] %s", *failed ? "; " : "", desc, *facts ? ", " : "",
            facts, why);
    }
    snprintf(report, report_len, "the mma-ptx probe failed: %s", failed);
    return ks_fail(KS_ERR_UNSUPPORTED, "%s", report);
}
