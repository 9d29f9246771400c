/* bench_cl_gemm: speed of the OpenCL GEMM seam (ke_cl_gemm) on Kosmos-2's shapes, against
 * CLBlast (where built in) and the plain-C ke_op_linear, in one process (a benchmark, never a
 * test; correctness is test_cl_gemm's job).
 *
 *   bench_cl_gemm [--device SPEC] [--m LIST] [--shapes LIST] [--seconds S] [--no-ref]
 *                 [--variants LIST] [--fused LIST] [--gemm-tune ROW[,KEY=VALUE...]]
 *                 [--gemm LIST] [--events N] [--dtypes f16,f32]
 *
 *   --m 1,8,71,257    batch rows (default): decode 1 and 8, one 71-token prompt, one image
 *   --shapes a,b      names from the table below (default all)
 *   --seconds 0.3     minimum time per measurement (at least one run after a warm-up)
 *   --variants auto,clblast   ours (auto = the seam's own choice, or a family: rows, tiles), clblast
 *   --no-ref          skip the plain-C baseline (slow for large m on the lm_head)
 *   --fused LIST      what the decoder's layers fuse around the product: ln (LayerNorm
 *                     prologue), bias, resid (Y += ...), stats (row statistics out), or all
 *   --gemm-tune T     the tunables of table row T (cpu, nvidia, gpu) with overrides, as
 *                     `kosmos bench --gemm-tune` (docs/gemm.md); default the device's row
 *   --gemm LIST       the paths to measure, each in turn on the same data (ke_cl_gemm_set_path:
 *                     auto, simt, mma-emulated, mma-ptx; default auto); each prints its probe
 *                     report, and the figures of later paths their ratio to the first's
 *   --events N        time each product by its OpenCL event (a profiling queue): the median of
 *                     N >= 1 runs after a warm-up, and TFLOP/s = 2·m·n·k / that median (the
 *                     figure for the matrix units; --seconds and the CPU columns unused)
 *   --dtypes LIST     weight dtypes to run, f16 and/or f32 (default both)
 *
 * The vision shapes at 64 images (m = 16448 = 64 x 257) are the tensor-core targets:
 *   bench_cl_gemm --device gpu --m 16448 --shapes v_qkv,v_attn,v_up,v_down --no-ref \
 *       --variants auto --dtypes f16 --gemm simt,mma-ptx --events 10
 *
 * For each shape and m it prints milliseconds per product, GFLOP/s (2·m·n·k), the GB/s of
 * weight traffic (n·k·bytes per weight, read once), GFLOP per CPU-second of the process (steadier
 * than wall time on a shared machine) and the wall-time speed-up over ke_op_linear with f16
 * weights (one thread). Ours runs with f16 and f32 weights; CLBlast only with f32 (it has no
 * f16-storage/f32-compute mode without cl_khr_fp16), so compare it with ours-f32.
 * POCL_MEMORY_LIMIT must allow the lm_head's 533 MB f32 buffer (=8 does). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef KOSMOS_HAVE_CLBLAST
#include <clblast_c.h>
#endif

#include "cl_gemm.h"
#include "kc_context.h"
#include "kc_device.h"
#include "ref_ops.h"

typedef struct shape {
    const char *name;
    size_t n, k;
} shape;

static const shape shapes[] = {
    {"attn", 2048, 2048},     /* text q/k/v/out projections */
    {"ffn_up", 8192, 2048},   /* text fc1 */
    {"ffn_down", 2048, 8192}, /* text fc2 */
    {"lm_head", 65037, 2048}, /* vocabulary */
    {"v_qkv", 3072, 1024},    /* vision q, k and v as one product */
    {"v_attn", 1024, 1024},   /* vision q/k/v/out */
    {"v_up", 4096, 1024},     /* vision fc1 */
    {"v_down", 1024, 4096},   /* vision fc2 */
    {"patch", 1024, 588},     /* patch embedding (3·14·14) */
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds of the whole process (PoCL's worker threads included): on a shared machine,
 * GFLOP per CPU-second is steadier than per wall-second. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double last_cpu_s; /* CPU seconds per run of the last measurement */

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1p-53 - 0.5);
}

static bool in_list(const char *list, const char *item)
{
    if (!list)
        return true;
    size_t n = strlen(item);
    for (const char *p = list; (p = strstr(p, item)) != NULL; p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

/* One product: ours through the seam, or (clblast) CLBlastSgemm on the untransposed f32 W. */
static ks_status run_once(ke_cl_gemm *g, const ke_cl_gemm_args *a, bool clblast, cl_mem w_rows,
                          kc_context *ctx)
{
#ifdef KOSMOS_HAVE_CLBLAST
    if (clblast) {
        cl_command_queue q = kc_context_queue(ctx);
        CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo,
                                           CLBlastTransposeYes, a->m, a->w->n, a->w->k, 1.0f, a->x,
                                           0, a->ldx, w_rows, 0, a->w->k, 0.0f, a->y, 0, a->ldy, &q,
                                           NULL);
        return s == CLBlastSuccess ? KS_OK : ks_fail(KS_ERR_DEVICE, "CLBlastSgemm: %d", (int)s);
    }
#else
    (void)w_rows;
    (void)ctx;
    if (clblast)
        return ks_fail(KS_ERR_UNSUPPORTED, "built without CLBlast");
#endif
    return ke_cl_gemm_run(g, NULL, a, "bench");
}

/* Seconds per run (warm-up, then repeats until `min_s`); < 0 on failure. */
static double time_gemm(kc_context *ctx, ke_cl_gemm *g, const ke_cl_gemm_args *a, bool clblast,
                        cl_mem w_rows, double min_s, char *variant, size_t variant_len)
{
    if (run_once(g, a, clblast, w_rows, ctx) != KS_OK || kc_context_finish(ctx) != KS_OK) {
        fprintf(stderr, "  %s\n", ks_error_message());
        return -1.0;
    }
    snprintf(variant, variant_len, "%s", clblast ? "CLBlastSgemm" : ke_cl_gemm_last_variant(g));
    int runs = 0, batch = 1;
    double t0 = now(), c0 = cpu_now(), t;
    do {
        for (int i = 0; i < batch; i++)
            if (run_once(g, a, clblast, w_rows, ctx) != KS_OK)
                return -1.0;
        if (kc_context_finish(ctx) != KS_OK)
            return -1.0;
        runs += batch;
        batch *= 2;
        t = now() - t0;
    } while (t < min_s);
    last_cpu_s = (cpu_now() - c0) / runs;
    return t / runs;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Device seconds of one product by its OpenCL event: the median of `runs` after a warm-up; < 0
 * on failure. The context's queue profiles (kc_context_params.profiling). */
static double time_events(kc_context *ctx, ke_cl_gemm *g, const ke_cl_gemm_args *a, int runs,
                          char *variant, size_t variant_len)
{
    kc_profile *prof = kc_context_profile(ctx);
    double *t = calloc((size_t)runs, sizeof *t);
    if (!t || run_once(g, a, false, NULL, ctx) != KS_OK || kc_context_finish(ctx) != KS_OK) {
        fprintf(stderr, "  %s\n", t ? ks_error_message() : "out of memory");
        free(t);
        return -1.0;
    }
    snprintf(variant, variant_len, "%s", ke_cl_gemm_last_variant(g));
    for (int r = 0; r < runs; r++) {
        kc_profile_summary sum;
        kc_profile_reset(prof);
        if (run_once(g, a, false, NULL, ctx) != KS_OK || kc_context_finish(ctx) != KS_OK ||
            kc_profile_summarize(prof, &sum) != KS_OK || !sum.timed) {
            fprintf(stderr, "  %s\n", ks_error_message());
            free(t);
            return -1.0;
        }
        for (size_t i = 0; i < sum.n_rows; i++)
            if (!sum.rows[i].is_wait)
                t[r] += sum.rows[i].device_ms * 1e-3;
    }
    qsort(t, (size_t)runs, sizeof *t, cmp_double);
    double median = runs % 2 ? t[runs / 2] : 0.5 * (t[runs / 2 - 1] + t[runs / 2]);
    free(t);
    return median;
}

/* One event-timed figure: median ms, TFLOP/s, and the ratio to the first path's figure. */
static void report_events(const char *shape_name, size_t m, size_t n, size_t k, const char *path,
                          const char *impl, const char *variant, double s, double first_s)
{
    printf("%-9s %5zu %6zu %5zu  %-12s %-9s %-12s %9.4g %9.4g", shape_name, m, n, k, path, impl,
           variant, s * 1e3, 2.0 * (double)m * (double)n * (double)k / s * 1e-12);
    if (first_s > 0)
        printf(" %8.3gx", first_s / s);
    printf("\n");
    fflush(stdout);
}

static void report(const char *shape_name, size_t m, size_t n, size_t k, const char *impl,
                   const char *variant, size_t wbytes, double s, double ref_s)
{
    double flops = 2.0 * (double)m * (double)n * (double)k;
    printf("%-9s %4zu %6zu %5zu  %-11s %-12s %9.3f %8.2f %8.2f %8.2f", shape_name, m, n, k, impl,
           variant, s * 1e3, flops / s * 1e-9, (double)n * (double)k * (double)wbytes / s * 1e-9,
           flops / last_cpu_s * 1e-9);
    if (ref_s > 0)
        printf(" %8.2fx", ref_s / s);
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *device = NULL, *m_list = "1,8,71,257", *shape_list = NULL;
    const char *variants = "auto,clblast";
    double min_s = 0.3;
    bool ref = true;
    const char *fused = "", *tune = NULL, *paths = "auto", *dtypes = "f16,f32";
    int events = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device = argv[++i];
        else if (!strcmp(argv[i], "--m") && i + 1 < argc)
            m_list = argv[++i];
        else if (!strcmp(argv[i], "--shapes") && i + 1 < argc)
            shape_list = argv[++i];
        else if (!strcmp(argv[i], "--variants") && i + 1 < argc)
            variants = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            min_s = atof(argv[++i]);
        else if (!strcmp(argv[i], "--no-ref"))
            ref = false;
        else if (!strcmp(argv[i], "--fused") && i + 1 < argc)
            fused = argv[++i];
        else if (!strcmp(argv[i], "--gemm-tune") && i + 1 < argc)
            tune = argv[++i];
        else if (!strcmp(argv[i], "--gemm") && i + 1 < argc)
            paths = argv[++i];
        else if (!strcmp(argv[i], "--events") && i + 1 < argc && atoi(argv[i + 1]) >= 1)
            events = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dtypes") && i + 1 < argc)
            dtypes = argv[++i];
        else {
            fprintf(stderr,
                    "usage: %s [--device SPEC] [--m 1,8,71,257] [--shapes attn,...] "
                    "[--variants auto,rows,tiles,clblast] [--seconds S] "
                    "[--no-ref] [--fused ln,bias,resid,stats|all] "
                    "[--gemm-tune ROW[,KEY=VALUE...]] "
                    "[--gemm auto,simt,mma-emulated,mma-ptx] [--events N] "
                    "[--dtypes f16,f32]\n",
                    argv[0]);
            return 2;
        }
    }

    kc_device_list *list = NULL;
    kc_context *ctx = NULL;
    ke_cl_gemm *g = NULL;
    int rc = 1;
    if (kc_device_list_new(&list) != KS_OK) {
        fprintf(stderr, "%s\n", ks_error_message());
        return 1;
    }
    size_t index = 0;
    if (device) {
        if (kc_device_list_select(list, device, &index) != KS_OK) {
            fprintf(stderr, "%s\n", ks_error_message());
            goto done;
        }
    } else if (kc_device_list_default(list) >= 0) {
        index = (size_t)kc_device_list_default(list);
    } else {
        fprintf(stderr, "no OpenCL device\n");
        goto done;
    }
    /* the paths, checked before anything is built */
    ke_gemm_path path_list[8];
    size_t n_paths = 0;
    for (const char *p = paths; p && *p && n_paths < 8;
         p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
        char name[32];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(p, ","), p);
        if (!ke_gemm_path_parse(name, &path_list[n_paths++])) {
            fprintf(stderr, "--gemm: no path '%s' (auto, simt, mma-emulated, mma-ptx)\n", name);
            goto done;
        }
    }
    size_t max_m = 1;
    for (const char *mp = m_list; mp && *mp; mp = strchr(mp, ',') ? strchr(mp, ',') + 1 : NULL)
        if ((size_t)strtoul(mp, NULL, 10) > max_m)
            max_m = (size_t)strtoul(mp, NULL, 10);
    const kc_device_info *dev = kc_device_list_get(list, index);
    kc_context_params cp;
    kc_context_params_init(&cp);
    cp.profiling = events > 0;
    if (kc_context_new(dev, &cp, &ctx) != KS_OK || ke_cl_gemm_new(ctx, tune, &g) != KS_OK) {
        fprintf(stderr, "%s\n", ks_error_message());
        goto done;
    }
    printf("device: %s (%s, %s, %u compute units)\n", dev->name, dev->platform_name,
           dev->driver_version, dev->compute_units);
    bool path_ok[8];
    for (size_t pi = 0; pi < n_paths; pi++) {
        path_ok[pi] = ke_cl_gemm_set_path(g, path_list[pi]) == KS_OK;
        if (!path_ok[pi])
            fprintf(stderr, "%s\n", ks_error_message()); /* names the path */
        printf("gemm %s: %s\n", ke_gemm_path_name(path_list[pi]), ke_cl_gemm_path_report(g));
    }
    if (events)
        printf("%-9s %5s %6s %5s  %-12s %-9s %-12s %9s %9s %9s\n", "shape", "m", "n", "k", "path",
               "impl", "variant", "median ms", "TFLOP/s", "vs first");
    else
        printf("%-9s %4s %6s %5s  %-11s %-12s %9s %8s %8s %8s %9s\n", "shape", "m", "n", "k",
               "impl", "variant", "ms", "GFLOP/s", "W GB/s", "GF/cpu-s", "vs ref");

    for (size_t si = 0; si < N_SHAPES; si++) {
        const shape *sh = &shapes[si];
        if (!in_list(shape_list, sh->name))
            continue;
        const size_t n = sh->n, k = sh->k;
        /* host data: W as f32 and f16 (the same values), X for up to max_m rows */
        float *wf = malloc(n * k * sizeof *wf);
        uint16_t *wh = malloc(n * k * sizeof *wh);
        float *x = malloc(max_m * k * sizeof *x);
        float *y = malloc(max_m * n * sizeof *y);
        float *scratch = malloc(ke_op_linear_scratch(k) * sizeof *scratch);
        if (!wf || !wh || !x || !y || !scratch) {
            fprintf(stderr, "out of memory\n");
            goto done;
        }
        for (size_t i = 0; i < n * k; i++) {
            /* an f16 bit pattern of magnitude < 1 (exponent < 15), and its f32 value */
            wh[i] = (uint16_t)((rng >> 20) & 0x83ffu) | (uint16_t)((10 + (rng >> 40) % 5) << 10);
            frand();
            wf[i] = ke_op_f16_to_f32(wh[i]);
        }
        for (size_t i = 0; i < max_m * k; i++)
            x[i] = frand();
        cl_mem bx = NULL, bwf = NULL, by = NULL, ln_stats = NULL, stats_out = NULL;
        cl_mem ln_wb[2] = {NULL, NULL}, bias[2] = {NULL, NULL}; /* [ke_dtype] */
        ke_tensor tf = {.dtype = KE_DTYPE_F32,
                        .ndim = 2,
                        .shape = {(int64_t)n, (int64_t)k},
                        .data = wf};
        ke_tensor th = {.dtype = KE_DTYPE_F16,
                        .ndim = 2,
                        .shape = {(int64_t)n, (int64_t)k},
                        .data = wh};
        const ke_tensor *pf[1] = {&tf}, *ph[1] = {&th}, *nob[1] = {NULL};
        ke_cl_weight wt[2]; /* [ke_dtype] */
        if (kc_context_buffer(ctx, CL_MEM_READ_ONLY, max_m * k * 4, x, &bx) != KS_OK ||
            kc_context_buffer(ctx, CL_MEM_READ_ONLY, n * k * 4, wf, &bwf) != KS_OK ||
            kc_context_buffer(ctx, CL_MEM_READ_WRITE, max_m * n * 4, NULL, &by) != KS_OK ||
            ke_cl_weight_upload(g, KE_DTYPE_F32, pf, nob, 1, sh->name, &wt[KE_DTYPE_F32], NULL) !=
                KS_OK ||
            ke_cl_weight_upload(g, KE_DTYPE_F16, ph, nob, 1, sh->name, &wt[KE_DTYPE_F16], NULL) !=
                KS_OK) {
            fprintf(stderr, "%s\n", ks_error_message());
            goto done;
        }
        bool all = in_list(fused, "all");
        /* the LayerNorm's inputs: blocks of (mean 0, M2 = block length) give rstd ~1; weight and
         * bias in the storage dtype (the first k words of wh/wf serve) */
        size_t ln_nb = (k + KE_CL_STAT_SB - 1) / KE_CL_STAT_SB;
        if (all || in_list(fused, "ln")) {
            cl_float2 *st = malloc(max_m * ln_nb * sizeof *st);
            for (size_t i = 0; st && i < max_m * ln_nb; i++)
                st[i] = (cl_float2){{0.0f, (float)KE_CL_STAT_SB}};
            if (!st ||
                kc_context_buffer(ctx, CL_MEM_READ_ONLY, max_m * ln_nb * sizeof *st, st,
                                  &ln_stats) != KS_OK ||
                kc_context_buffer(ctx, CL_MEM_READ_ONLY, 2 * k * 4, wf, &ln_wb[KE_DTYPE_F32]) !=
                    KS_OK ||
                kc_context_buffer(ctx, CL_MEM_READ_ONLY, 2 * k * 2, wh, &ln_wb[KE_DTYPE_F16]) !=
                    KS_OK) {
                fprintf(stderr, "%s\n", st ? ks_error_message() : "out of memory");
                free(st);
                goto done;
            }
            free(st);
        }
        if ((all || in_list(fused, "bias")) &&
            (kc_context_buffer(ctx, CL_MEM_READ_ONLY, n * 4, wf, &bias[KE_DTYPE_F32]) != KS_OK ||
             kc_context_buffer(ctx, CL_MEM_READ_ONLY, n * 2, wh, &bias[KE_DTYPE_F16]) != KS_OK)) {
            fprintf(stderr, "%s\n", ks_error_message());
            goto done;
        }
        if ((all || in_list(fused, "stats")) &&
            kc_context_buffer(ctx, CL_MEM_READ_WRITE,
                              max_m * ((n + KE_CL_STAT_SB - 1) / KE_CL_STAT_SB) * sizeof(cl_float2),
                              NULL, &stats_out) != KS_OK) {
            fprintf(stderr, "%s\n", ks_error_message());
            goto done;
        }
        for (const char *mp = m_list; mp && *mp;
             mp = strchr(mp, ',') ? strchr(mp, ',') + 1 : NULL) {
            size_t m = (size_t)strtoul(mp, NULL, 10);
            if (m == 0 || m > max_m)
                continue;
            double ref_s = -1.0;
            if (ref) {
                ke_tensor tw = {.dtype = KE_DTYPE_F16,
                                .ndim = 2,
                                .shape = {(int64_t)n, (int64_t)k},
                                .data = wh};
                int runs = 0;
                double t0 = now(), c0 = cpu_now(), t;
                do {
                    ke_op_linear(x, m, &tw, NULL, y, scratch);
                    runs++;
                    t = now() - t0;
                } while (t < min_s);
                ref_s = t / runs;
                last_cpu_s = (cpu_now() - c0) / runs;
                report(sh->name, m, n, k, "ref-f16", "ke_op_linear", 2, ref_s, ref_s);
            }
            ke_cl_gemm_args a = {.m = m,
                                 .x = bx,
                                 .ldx = k,
                                 .y = by,
                                 .ldy = n,
                                 .act = -1,
                                 .ln_stats = ln_stats,
                                 .ln_sb = KE_CL_STAT_SB,
                                 .ln_eps = 1e-5f,
                                 .accumulate = all || in_list(fused, "resid"),
                                 .stats_out = stats_out};
            char variant[64];
            double first_s[2][8] = {{0}}; /* [dt][variant]: the first path's figures */
            for (size_t pi = 0; pi < n_paths; pi++) {
                if (!path_ok[pi] || (n_paths > 1 && ke_cl_gemm_set_path(g, path_list[pi]) != KS_OK))
                    continue;
                for (int dt = 1; dt >= 0; dt--) {
                    if (!in_list(dtypes, dt ? "f16" : "f32"))
                        continue;
                    a.w = &wt[dt];
                    a.ln_w = ln_wb[dt];
                    a.ln_b = ln_wb[dt] ? ln_wb[dt] : NULL;
                    wt[dt].bias = bias[dt];
                    /* ours: auto and each family; CLBlast: f32 only (no f16-storage mode) */
                    for (size_t v = 0; v <= ke_cl_gemm_variant_count() + 1 && v < 8; v++) {
                        bool clblast = v == ke_cl_gemm_variant_count() + 1;
                        const char *vn = v == 0    ? "auto"
                                         : clblast ? "clblast"
                                                   : ke_cl_gemm_variant_name(v - 1);
                        if (!in_list(variants, vn) || (dt && clblast) || (events && clblast))
                            continue;
                        if (!clblast && ke_cl_gemm_force(g, v == 0 ? NULL : vn, -1) != KS_OK)
                            continue;
                        const char *impl = clblast ? "clblast-f32" : dt ? "ours-f16" : "ours-f32";
                        if (events) {
                            double s = time_events(ctx, g, &a, events, variant, sizeof variant);
                            if (s > 0)
                                report_events(sh->name, m, n, k, ke_gemm_path_name(path_list[pi]),
                                              impl, variant, s, first_s[dt][v]);
                            if (pi == 0)
                                first_s[dt][v] = s;
                            continue;
                        }
                        double s = time_gemm(ctx, g, &a, clblast, bwf, min_s, variant,
                                             sizeof variant);
                        if (s > 0)
                            report(sh->name, m, n, k, impl, variant, dt ? 2 : 4, s, ref_s);
                    }
                }
                ke_cl_gemm_force(g, NULL, -1);
            }
        }
        kc_context_buffer_free(ctx, &bx);
        kc_context_buffer_free(ctx, &bwf);
        kc_context_buffer_free(ctx, &by);
        kc_context_buffer_free(ctx, &ln_stats);
        kc_context_buffer_free(ctx, &stats_out);
        for (int dt = 0; dt < 2; dt++) {
            kc_context_buffer_free(ctx, &ln_wb[dt]);
            wt[dt].bias = NULL;
            kc_context_buffer_free(ctx, &bias[dt]);
            kc_context_buffer_free(ctx, &wt[dt].w);
            kc_context_buffer_free(ctx, &wt[dt].bias);
        }
        free(wf);
        free(wh);
        free(x);
        free(y);
        free(scratch);
    }
    rc = 0;
done:
    ke_cl_gemm_destroy(&g);
    kc_context_destroy(&ctx);
    kc_device_list_destroy(&list);
    return rc;
}
