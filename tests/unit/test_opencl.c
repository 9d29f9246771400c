/* Unit tests for worker/opencl/ (kosmos_opencl): error names, the embedded kernel table and the
 * developer switch, device listing and --device selection, the layer_norm kernel against a
 * naive C LayerNorm, the program binary cache, and build failures.
 *
 * Needs an OpenCL device for most tests (PoCL's CPU device on CI); without one those tests skip
 * and the rest still run. KOSMOS_TEST_DEVICE=<spec> picks the device (default: the default
 * rule). KOSMOS_TEST_EXPECT_NO_OPENCL=1 (the test_opencl_no_icd run, with an empty ICD folder)
 * checks that a machine without OpenCL gives an empty listing, not an error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cl_fixture.h"
#include "kc_cache.h"
#include "kc_error.h"
#include "kc_kernels.h"
#include "kc_program.h"

typedef struct fixture {
    kc_device_list *list;
    const kc_device_info *dev; /* the device under test, or NULL: device tests skip */
    char tmp[256];             /* a fresh folder for this run */
} fixture;

#define REQUIRE_DEVICE(fx) TS_CL_REQUIRE((fx)->dev)

static bool expect_no_opencl(void)
{
    const char *v = getenv("KOSMOS_TEST_EXPECT_NO_OPENCL");
    return v && *v && strcmp(v, "0") != 0;
}

static int group_setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    if (ts_cl_open(&fx->list, &fx->dev, NULL) != 0)
        return -1;
    const char *base = getenv("KOSMOS_CACHE_DIR");
    if (!base || !*base)
        base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0777);
    snprintf(fx->tmp, sizeof fx->tmp, "%s/test_opencl.XXXXXX", base);
    if (!mkdtemp(fx->tmp)) {
        perror(fx->tmp);
        fx->tmp[0] = '\0';
        return -1;
    }
    return 0;
}

static void remove_tree(const char *path);

static int group_teardown(void **state)
{
    fixture *fx = *state;
    if (!fx) /* cmocka tears down even after a failed setup */
        return 0;
    remove_tree(fx->tmp);
    ts_cl_close(&fx->list, NULL);
    free(fx);
    return 0;
}

/* ---- small helpers ---------------------------------------------------------------------- */

static void remove_tree(const char *path)
{
    char cmd[600];
    /* Only ever our own mkdtemp folder. */
    if (strstr(path, "test_opencl.") == NULL)
        return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", path);
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static uint32_t rng_state = 12345u;
static float frand(float lo, float hi)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)(rng_state >> 8) / 16777216.0f;
}

/* IEEE binary16 <-> binary32, round to nearest even (the test's own, independent of ref_ops). */
static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    if (((x >> 23) & 0xff) == 0xff)
        return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        if (exp < -10)
            return (uint16_t)sign;
        mant |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp), h = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)exp << 10) | (mant >> 13), rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

static float f16_to_f32(uint16_t h)
{
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v = e == 0    ? ldexpf((float)m, -24)
              : e == 31 ? (m ? NAN : INFINITY)
                        : ldexpf((float)(m | 0x400), (int)e - 25);
    return (h & 0x8000) ? -v : v;
}

/* The naive reference: double accumulation, population variance. */
static void naive_layer_norm(const float *x, size_t rows, size_t dim, const float *w,
                             const float *b, float eps, double *y)
{
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        double mean = 0, var = 0;
        for (size_t i = 0; i < dim; i++)
            mean += xr[i];
        mean /= (double)dim;
        for (size_t i = 0; i < dim; i++)
            var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        var /= (double)dim;
        double rstd = 1.0 / sqrt(var + (double)eps);
        for (size_t i = 0; i < dim; i++)
            y[r * dim + i] = ((double)xr[i] - mean) * rstd * (double)w[i] + (double)b[i];
    }
}

/* The work-group size the host picks: 256, or the device's limit floored to a power of two. */
static size_t pick_wg(const kc_device_info *dev)
{
    size_t wg = 256;
    while (wg > 1 && wg > dev->max_work_group_size)
        wg >>= 1;
    return wg;
}

/* Runs layer_norm of `program` (built with weights in f32 or half) over x into y. */
static void run_layer_norm(kc_context *ctx, kc_program *program, size_t wg, const float *x,
                           size_t rows, size_t dim, const void *w, const void *b,
                           size_t weight_bytes, float eps, float *y, bool in_place)
{
    cl_kernel k = NULL;
    assert_int_equal(kc_program_kernel(program, "layer_norm", &k), KS_OK);
    cl_mem bx = NULL, bw = NULL, bb = NULL, by = NULL;
    size_t xbytes = rows * dim * sizeof(float);
    assert_int_equal(kc_context_buffer(ctx, CL_MEM_READ_WRITE, xbytes, x, &bx), KS_OK);
    assert_int_equal(kc_context_buffer(ctx, CL_MEM_READ_ONLY, weight_bytes, w, &bw), KS_OK);
    assert_int_equal(kc_context_buffer(ctx, CL_MEM_READ_ONLY, weight_bytes, b, &bb), KS_OK);
    if (in_place)
        by = bx;
    else
        assert_int_equal(kc_context_buffer(ctx, CL_MEM_WRITE_ONLY, xbytes, NULL, &by), KS_OK);
    cl_int idim = (cl_int)dim;
    assert_int_equal(clSetKernelArg(k, 0, sizeof bx, &bx), CL_SUCCESS);
    assert_int_equal(clSetKernelArg(k, 1, sizeof bw, &bw), CL_SUCCESS);
    assert_int_equal(clSetKernelArg(k, 2, sizeof bb, &bb), CL_SUCCESS);
    assert_int_equal(clSetKernelArg(k, 3, sizeof by, &by), CL_SUCCESS);
    assert_int_equal(clSetKernelArg(k, 4, sizeof idim, &idim), CL_SUCCESS);
    assert_int_equal(clSetKernelArg(k, 5, sizeof eps, &eps), CL_SUCCESS);
    size_t global = rows * wg, local = wg;
    cl_command_queue q = kc_context_queue(ctx);
    assert_int_equal(clEnqueueNDRangeKernel(q, k, 1, NULL, &global, &local, 0, NULL, NULL),
                     CL_SUCCESS);
    assert_int_equal(clEnqueueReadBuffer(q, by, CL_TRUE, 0, xbytes, y, 0, NULL, NULL), CL_SUCCESS);
    if (!in_place)
        kc_context_buffer_free(ctx, &by);
    kc_context_buffer_free(ctx, &bx);
    kc_context_buffer_free(ctx, &bw);
    kc_context_buffer_free(ctx, &bb);
    assert_null(bx);
}

static kc_context *open_context(const fixture *fx, const char *cache_root, bool no_cache)
{
    kc_context_params params;
    kc_context_params_init(&params);
    params.cache_root = cache_root;
    params.no_cache = no_cache;
    kc_context *ctx = NULL;
    ks_status st = kc_context_new(fx->dev, &params, &ctx);
    if (st != KS_OK)
        fail_msg("kc_context_new: %s", ks_error_message());
    return ctx;
}

static kc_program *get_layer_norm(kc_context *ctx, bool half_weights)
{
    char options[96];
    snprintf(options, sizeof options, "-DWG_SIZE=%zu -DWEIGHT_HALF=%d",
             pick_wg(kc_context_device(ctx)), half_weights ? 1 : 0);
    kc_program *p = NULL;
    if (kc_program_get(ctx, "layer_norm.cl", options, &p) != KS_OK)
        fail_msg("layer_norm.cl: %s", ks_error_message());
    return p;
}

/* One LayerNorm case: random x (offset so the mean matters), weights in f32 or half. Returns
 * the largest error relative to max(1, |reference|). */
static double check_layer_norm(kc_context *ctx, kc_program *program, size_t rows, size_t dim,
                               bool half, bool in_place)
{
    float *x = malloc(rows * dim * sizeof *x), *y = malloc(rows * dim * sizeof *y);
    float *w = malloc(dim * sizeof *w), *b = malloc(dim * sizeof *b);
    uint16_t *wh = malloc(dim * sizeof *wh), *bh = malloc(dim * sizeof *bh);
    double *ref = malloc(rows * dim * sizeof *ref);
    assert_true(x && y && w && b && wh && bh && ref);
    for (size_t i = 0; i < rows * dim; i++)
        x[i] = frand(-1.0f, 1.0f) + 3.0f * (float)(i / dim % 2);
    for (size_t i = 0; i < dim; i++) {
        w[i] = frand(0.5f, 1.5f);
        b[i] = frand(-0.5f, 0.5f);
        if (half) { /* the reference sees exactly the values the kernel reads */
            wh[i] = f32_to_f16(w[i]);
            bh[i] = f32_to_f16(b[i]);
            w[i] = f16_to_f32(wh[i]);
            b[i] = f16_to_f32(bh[i]);
        }
    }
    const float eps = 1e-5f;
    naive_layer_norm(x, rows, dim, w, b, eps, ref);
    run_layer_norm(ctx, program, pick_wg(kc_context_device(ctx)), x, rows, dim,
                   half ? (const void *)wh : w, half ? (const void *)bh : b,
                   dim * (half ? sizeof(uint16_t) : sizeof(float)), eps, y, in_place);
    double worst = 0;
    for (size_t i = 0; i < rows * dim; i++)
        worst = fmax(worst, ts_cl_rel_diff(y[i], ref[i]));
    free(x), free(y), free(w), free(b), free(wh), free(bh), free(ref);
    return worst;
}

/* ---- tests without a device ---------------------------------------------------------------- */

static void test_error_names(void **state)
{
    (void)state;
    for (int code = 0; code >= -68; code--) {
        if (code <= -20 && code >= -29)
            continue; /* unassigned in OpenCL 1.2 */
        assert_string_not_equal(kc_error_name(code), "CL_UNKNOWN_ERROR");
    }
    assert_string_equal(kc_error_name(CL_INVALID_VALUE), "CL_INVALID_VALUE");
    assert_string_equal(kc_error_name(-1001), "CL_PLATFORM_NOT_FOUND_KHR");
    assert_string_equal(kc_error_name(-12345), "CL_UNKNOWN_ERROR");
    assert_int_equal(kc_fail_cl(CL_INVALID_KERNEL_ARGS, "clEnqueueNDRangeKernel",
                                "/src/worker/opencl/x.c", 42),
                     KS_ERR_DEVICE);
    assert_string_equal(ks_error_message(),
                        "clEnqueueNDRangeKernel failed: CL_INVALID_KERNEL_ARGS (-52) at x.c:42");
    assert_int_equal(kc_fail_cl(CL_OUT_OF_HOST_MEMORY, "clCreateBuffer", "y.c", 1), KS_ERR_NOMEM);
}

static void test_kernel_table(void **state)
{
    (void)state;
    assert_true(kc_kernel_count() >= 1);
    size_t len = 0;
    const char *embedded = kc_kernel_embedded("layer_norm.cl", &len);
    assert_non_null(embedded);
    assert_int_equal(strlen(embedded), len);
    assert_non_null(strstr(embedded, "__kernel"));
    assert_non_null(strstr(embedded, "#ifndef WG_SIZE"));
    assert_null(kc_kernel_embedded("no_such.cl", NULL));

    char *text = NULL;
    size_t n = 0;
    bool from_disk = true;
    unsetenv("KOSMOS_KERNELS_DIR");
    assert_int_equal(kc_kernel_source("layer_norm.cl", &text, &n, &from_disk), KS_OK);
    assert_false(from_disk);
    assert_int_equal(n, len);
    assert_memory_equal(text, embedded, len);
    free(text);
    assert_int_equal(kc_kernel_source("no_such.cl", &text, &n, NULL), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "no_such.cl"));
    /* #include "common.cl" is expanded in place, with #line markers back to each file */
    assert_int_equal(kc_kernel_source("gemm.cl", &text, &n, NULL), KS_OK);
    assert_non_null(strstr(text, "inline float2 merge_stats"));
    assert_non_null(strstr(text, "#line 1 \"common.cl\""));
    assert_non_null(strstr(text, "\"gemm.cl\"\n"));
    assert_null(strstr(text, "\n#include \"common.cl\""));
    assert_int_equal(strlen(text), n);
    free(text);
    assert_int_equal(kc_kernel_source("../etc/passwd", &text, &n, NULL), KS_ERR_INVALID);
}

static void test_developer_switch_reads_disk(void **state)
{
    fixture *fx = *state;
    char dir[300], path[340];
    snprintf(dir, sizeof dir, "%s/kernels", fx->tmp);
    assert_int_equal(mkdir(dir, 0777), 0);
    size_t len = 0;
    const char *embedded = kc_kernel_embedded("layer_norm.cl", &len);
    /* The disk copy: the embedded source plus a marker kernel only it has. */
    const char marker[] = "\n__kernel void kc_disk_marker(__global int *o) { o[0] = 42; }\n";
    char *edited = malloc(len + sizeof marker);
    assert_non_null(edited);
    memcpy(edited, embedded, len);
    memcpy(edited + len, marker, sizeof marker);
    snprintf(path, sizeof path, "%s/layer_norm.cl", dir);
    write_file(path, edited, len + sizeof marker - 1);

    setenv("KOSMOS_KERNELS_DIR", dir, 1);
    char *text = NULL;
    size_t n = 0;
    bool from_disk = false;
    assert_int_equal(kc_kernel_source("layer_norm.cl", &text, &n, &from_disk), KS_OK);
    assert_true(from_disk);
    assert_int_equal(n, len + sizeof marker - 1);
    assert_memory_equal(text, edited, n);
    free(text);
    /* A file missing from the folder is an error, never a silent fallback to the embedded. */
    assert_int_equal(kc_kernel_source("softmax.cl", &text, &n, &from_disk), KS_ERR_IO);
    assert_non_null(strstr(ks_error_message(), "KOSMOS_KERNELS_DIR"));
    /* includes come from the same folder; a missing one is an error naming both files, and
     * an included file may not include in turn */
    char inc_path[340];
    snprintf(inc_path, sizeof inc_path, "%s/uses.cl", dir);
    write_file(inc_path, "#include \"gone.cl\"\n", 19);
    assert_int_equal(kc_kernel_source("uses.cl", &text, &n, &from_disk), KS_ERR_IO);
    assert_non_null(strstr(ks_error_message(), "uses.cl"));
    assert_non_null(strstr(ks_error_message(), "gone.cl"));
    snprintf(inc_path, sizeof inc_path, "%s/gone.cl", dir);
    write_file(inc_path, "#include \"layer_norm.cl\"\n", 26);
    assert_int_equal(kc_kernel_source("uses.cl", &text, &n, &from_disk), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "one level"));

    if (fx->dev) { /* and a build compiles the disk copy */
        kc_context *ctx = open_context(fx, NULL, true);
        kc_program *p = NULL;
        ks_status st = kc_program_get(ctx, "layer_norm.cl", "-DWEIGHT_HALF=0", &p);
        if (st != KS_OK)
            fail_msg("%s", ks_error_message());
        assert_true(kc_program_from_disk(p));
        assert_false(kc_program_cache_hit(p));
        cl_kernel k = NULL;
        assert_int_equal(kc_program_kernel(p, "kc_disk_marker", &k), KS_OK);
        assert_non_null(k);
        assert_int_equal(kc_program_kernel(p, "no_such_kernel", &k), KS_ERR_DEVICE);
        assert_non_null(strstr(ks_error_message(), "CL_INVALID_KERNEL_NAME"));
        assert_non_null(strstr(ks_error_message(), "no_such_kernel"));
        kc_context_destroy(&ctx);
        assert_null(ctx);
    }
    unsetenv("KOSMOS_KERNELS_DIR");
    free(edited);
}

/* ---- devices --------------------------------------------------------------------------------- */

static void test_no_opencl_is_an_empty_list(void **state)
{
    fixture *fx = *state;
    assert_int_equal(kc_device_list_count(fx->list), 0);
    assert_int_equal(kc_device_list_default(fx->list), -1);
    assert_null(kc_device_list_get(fx->list, 0));
    size_t index = 99;
    assert_int_equal(kc_device_list_select(fx->list, "cpu", &index), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "no OpenCL devices"));
    assert_non_null(strstr(ks_error_message(), "--device ref"));
    assert_int_equal(index, 99);
}

static void test_listing(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    size_t count = kc_device_list_count(fx->list);
    bool pocl = false, pocl_cpu = false;
    for (size_t i = 0; i < count; i++) {
        const kc_device_info *d = kc_device_list_get(fx->list, i);
        assert_non_null(d);
        assert_int_equal(d->index, i);
        print_message("  %zu %s %s | %s | driver %s | %llu MiB | %s | fp16 %s\n", i,
                      kc_device_type_name(d->type), d->name, d->platform_name, d->driver_version,
                      (unsigned long long)(d->global_mem_bytes >> 20), d->opencl_c_version,
                      d->fp16 ? "yes" : "no");
        assert_true(d->name[0] && d->platform_name[0] && d->platform_version[0]);
        assert_true(d->global_mem_bytes > 0 && d->max_alloc_bytes > 0);
        assert_true(d->max_alloc_bytes <= d->global_mem_bytes);
        assert_true(d->compute_units > 0 && d->max_work_group_size > 0);
        assert_int_equal(strncmp(d->opencl_c_version, "OpenCL C ", 9), 0);
        if (strstr(d->platform_name, "Portable Computing Language")) {
            pocl = true;
            pocl_cpu = pocl_cpu || (d->type & CL_DEVICE_TYPE_CPU);
        }
    }
    if (pocl)
        assert_true(pocl_cpu); /* CI: PoCL's CPU device is listed */
    assert_null(kc_device_list_get(fx->list, count));
}

static void test_selection(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    const kc_device_list *list = fx->list;
    size_t count = kc_device_list_count(list), index = 12345;

    long cpu = -1, gpu = -1;
    for (size_t i = 0; i < count; i++) {
        cl_device_type t = kc_device_list_get(list, i)->type;
        if (cpu < 0 && (t & CL_DEVICE_TYPE_CPU))
            cpu = (long)i;
        if (gpu < 0 && (t & CL_DEVICE_TYPE_GPU))
            gpu = (long)i;
    }
    assert_int_equal(kc_device_list_default(list), gpu >= 0 ? gpu : 0);

    if (cpu >= 0) {
        assert_int_equal(kc_device_list_select(list, "cpu", &index), KS_OK);
        assert_int_equal(index, cpu);
        assert_int_equal(kc_device_list_select(list, "CPU", &index), KS_OK);
        assert_int_equal(index, cpu);
    } else {
        assert_int_equal(kc_device_list_select(list, "cpu", &index), KS_ERR_INVALID);
        assert_non_null(strstr(ks_error_message(), "no OpenCL CPU device"));
    }
    if (gpu >= 0) {
        assert_int_equal(kc_device_list_select(list, "gpu", &index), KS_OK);
        assert_int_equal(index, gpu);
    } else {
        assert_int_equal(kc_device_list_select(list, "gpu", &index), KS_ERR_INVALID);
        assert_non_null(strstr(ks_error_message(), "no OpenCL GPU device"));
    }

    assert_int_equal(kc_device_list_select(list, "0", &index), KS_OK);
    assert_int_equal(index, 0);
    char last[32];
    snprintf(last, sizeof last, "%zu", count - 1);
    assert_int_equal(kc_device_list_select(list, last, &index), KS_OK);
    assert_int_equal(index, count - 1);

    /* A name substring, in other case: the first device whose device or platform name has it. */
    const kc_device_info *d0 = kc_device_list_get(list, 0);
    char sub[8] = {0};
    size_t take = strlen(d0->name) < 5 ? strlen(d0->name) : 5;
    for (size_t i = 0; i < take; i++) {
        char c = d0->name[i + (strlen(d0->name) - take) / 2];
        sub[i] = (c >= 'a' && c <= 'z')   ? (char)(c - 32)
                 : (c >= 'A' && c <= 'Z') ? (char)(c + 32)
                                          : c;
    }
    assert_int_equal(kc_device_list_select(list, sub, &index), KS_OK);
    assert_int_equal(index, 0);
    assert_int_equal(kc_device_list_select(list, d0->platform_name, &index), KS_OK);
    assert_int_equal(strcmp(kc_device_list_get(list, index)->platform_name, d0->platform_name), 0);

    /* Clear errors. */
    index = 777;
    assert_int_equal(kc_device_list_select(list, "no-such-device-xyz", &index), KS_ERR_INVALID);
    print_message("bad spec: %s\n", ks_error_message());
    assert_non_null(strstr(ks_error_message(), "'no-such-device-xyz'"));
    assert_non_null(strstr(ks_error_message(), "devices: 0 '"));
    char big[32];
    snprintf(big, sizeof big, "%zu", count);
    assert_int_equal(kc_device_list_select(list, big, &index), KS_ERR_INVALID);
    print_message("out of range: %s\n", ks_error_message());
    assert_non_null(strstr(ks_error_message(), "out of range"));
    assert_int_equal(kc_device_list_select(list, "99999999999999999999999", &index),
                     KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "out of range"));
    assert_int_equal(kc_device_list_select(list, "-1", &index), KS_ERR_INVALID);
    assert_int_equal(kc_device_list_select(list, "", &index), KS_ERR_INVALID);
    assert_int_equal(index, 777);
}

/* ---- the layer_norm kernel ---------------------------------------------------------------- */

static void test_layer_norm_matches_naive(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    kc_context *ctx = open_context(fx, NULL, false);
    static const size_t dims[] = {1, 7, 257, 1024};
    static const size_t rows[] = {1, 3};
    for (int half = 0; half <= 1; half++) {
        kc_program *p = get_layer_norm(ctx, half);
        print_message("layer_norm.cl (%s weights): %s in %.3f s\n", half ? "half" : "f32",
                      kc_program_cache_hit(p) ? "cache hit" : "compiled",
                      kc_program_build_seconds(p));
        for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
            for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
                double err = check_layer_norm(ctx, p, rows[r], dims[d], half, false);
                if (!(err <= 1e-5))
                    fail_msg("layer_norm rows %zu dim %zu %s: error %g", rows[r], dims[d],
                             half ? "half" : "f32", err);
            }
        }
        /* In place (y == x), as the engine will call it. */
        double err = check_layer_norm(ctx, p, 3, 257, half, true);
        if (!(err <= 1e-5))
            fail_msg("layer_norm in place: error %g", err);
    }
    /* Same (file, options) in one context: the same program, no second build. */
    kc_build_stats before = kc_context_build_stats(ctx);
    assert_ptr_equal(get_layer_norm(ctx, false), get_layer_norm(ctx, false));
    assert_int_equal(kc_context_build_stats(ctx).builds, before.builds);
    assert_int_equal(before.builds, 2);
    kc_context_destroy(&ctx);
}

/* ---- the program cache ------------------------------------------------------------------- */

static void test_program_cache(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    char root[300];
    snprintf(root, sizeof root, "%s/cache", fx->tmp);

    /* 1: a fresh folder: a miss, the binary is stored. */
    kc_context *ctx = open_context(fx, root, false);
    kc_program *p = get_layer_norm(ctx, false);
    assert_false(kc_program_cache_hit(p));
    kc_build_stats st = kc_context_build_stats(ctx);
    assert_int_equal(st.cache_misses, 1);
    assert_int_equal(st.cache_hits, 0);
    assert_int_equal(st.store_failures, 0);
    double compile_s = kc_program_build_seconds(p);
    assert_non_null(kc_context_cache_folder(ctx));
    assert_non_null(strstr(kc_context_cache_folder(ctx), "/cache/opencl"));
    /* Find the entry's path through the same key the build used. */
    char options[96];
    snprintf(options, sizeof options, "-cl-std=CL1.2 -DWG_SIZE=%zu -DWEIGHT_HALF=0",
             pick_wg(fx->dev));
    size_t len = 0;
    const char *src = kc_kernel_embedded("layer_norm.cl", &len);
    char *key = kc_cache_key(fx->dev, src, len, options);
    kc_cache *cache = NULL;
    assert_int_equal(kc_cache_new(root, &cache), KS_OK);
    char *path = kc_cache_entry_path(cache, "layer_norm", key);
    assert_non_null(path);
    assert_true(access(path, R_OK) == 0);
    assert_non_null(strstr(path, "/layer_norm-"));
    kc_context_destroy(&ctx);

    /* 2: a new context (a new process, as far as the cache knows): a hit, and it computes. */
    ctx = open_context(fx, root, false);
    p = get_layer_norm(ctx, false);
    assert_true(kc_program_cache_hit(p));
    st = kc_context_build_stats(ctx);
    assert_int_equal(st.cache_hits, 1);
    assert_int_equal(st.cache_misses, 0);
    print_message("cache: compile %.3f s, cache hit %.3f s\n", compile_s,
                  kc_program_build_seconds(p));
    assert_true(check_layer_norm(ctx, p, 3, 257, false, false) <= 1e-5);
    kc_context_destroy(&ctx);

    /* 3: a corrupted entry (flipped bytes in the binary): rebuilt silently and overwritten. */
    struct stat info;
    assert_int_equal(stat(path, &info), 0);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, (long)info.st_size - 16, SEEK_SET), 0);
    assert_int_equal(fwrite("garbagegarbage!!", 1, 16, f), 16);
    assert_int_equal(fclose(f), 0);
    ctx = open_context(fx, root, false);
    p = get_layer_norm(ctx, false);
    assert_false(kc_program_cache_hit(p));
    assert_string_equal(ks_error_message(), ks_error_message()); /* no crash reading it */
    assert_true(check_layer_norm(ctx, p, 1, 7, false, false) <= 1e-5);
    kc_context_destroy(&ctx);
    ctx = open_context(fx, root, false);
    assert_true(kc_program_cache_hit(get_layer_norm(ctx, false)));
    kc_context_destroy(&ctx);

    /* 4: a truncated entry, and one that is not an entry at all: misses too. */
    assert_int_equal(truncate(path, 40), 0);
    ctx = open_context(fx, root, false);
    assert_false(kc_program_cache_hit(get_layer_norm(ctx, false)));
    kc_context_destroy(&ctx);
    write_file(path, "hello", 5);
    ctx = open_context(fx, root, false);
    assert_false(kc_program_cache_hit(get_layer_norm(ctx, false)));
    kc_context_destroy(&ctx);

    /* 5: a cache that cannot be written (its root is a regular file): still builds, no error. */
    char blocked[320];
    snprintf(blocked, sizeof blocked, "%s/not-a-folder", fx->tmp);
    write_file(blocked, "x", 1);
    ctx = open_context(fx, blocked, false);
    ks_error_clear();
    p = get_layer_norm(ctx, false);
    assert_false(kc_program_cache_hit(p));
    assert_int_equal(kc_context_build_stats(ctx).store_failures, 1);
    assert_string_equal(ks_error_message(), "");
    kc_context_destroy(&ctx);

    /* 6: no_cache: nothing read, nothing written. */
    ctx = open_context(fx, root, true);
    assert_null(kc_context_cache_folder(ctx));
    assert_false(kc_program_cache_hit(get_layer_norm(ctx, false)));
    kc_context_destroy(&ctx);

    free(path);
    free(key);
    kc_cache_destroy(&cache);
}

static void test_cache_folder_rules(void **state)
{
    (void)state;
    char *saved[3];
    const char *names[3] = {"KOSMOS_CACHE_DIR", "XDG_CACHE_HOME", "HOME"};
    for (int i = 0; i < 3; i++)
        saved[i] = getenv(names[i]) ? strdup(getenv(names[i])) : NULL;

    setenv("KOSMOS_CACHE_DIR", "/k", 1);
    setenv("XDG_CACHE_HOME", "/x", 1);
    setenv("HOME", "/h", 1);
    kc_cache *c = NULL;
    assert_int_equal(kc_cache_new(NULL, &c), KS_OK);
    assert_string_equal(kc_cache_folder(c), "/k/opencl");
    kc_cache_destroy(&c);
    unsetenv("KOSMOS_CACHE_DIR");
    assert_int_equal(kc_cache_new(NULL, &c), KS_OK);
    assert_string_equal(kc_cache_folder(c), "/x/kosmos/opencl");
    kc_cache_destroy(&c);
    unsetenv("XDG_CACHE_HOME");
    assert_int_equal(kc_cache_new(NULL, &c), KS_OK);
    assert_string_equal(kc_cache_folder(c), "/h/.cache/kosmos/opencl");
    kc_cache_destroy(&c);
    unsetenv("HOME");
    assert_int_equal(kc_cache_new(NULL, &c), KS_ERR_UNSUPPORTED);
    assert_null(c);
    assert_non_null(strstr(ks_error_message(), "HOME"));
    assert_int_equal(kc_cache_new("/explicit", &c), KS_OK);
    assert_string_equal(kc_cache_folder(c), "/explicit/opencl");
    kc_cache_destroy(&c);
    assert_null(c);

    for (int i = 0; i < 3; i++) {
        if (saved[i])
            setenv(names[i], saved[i], 1);
        else
            unsetenv(names[i]);
        free(saved[i]);
    }
}

static void test_cache_key_covers_inputs(void **state)
{
    (void)state;
    kc_device_info d;
    memset(&d, 0, sizeof d);
    strcpy(d.platform_name, "P");
    strcpy(d.platform_version, "OpenCL 1.2 P");
    strcpy(d.name, "D");
    strcpy(d.driver_version, "1.0");
    char *base = kc_cache_key(&d, "src", 3, "-DA=1");
    char *other_src = kc_cache_key(&d, "srd", 3, "-DA=1");
    char *other_opt = kc_cache_key(&d, "src", 3, "-DA=2");
    strcpy(d.driver_version, "1.1");
    char *other_drv = kc_cache_key(&d, "src", 3, "-DA=1");
    assert_non_null(base);
    assert_string_not_equal(base, other_src);
    assert_string_not_equal(base, other_opt);
    assert_string_not_equal(base, other_drv);
    assert_non_null(strstr(base, "format 1"));
    kc_cache *c = NULL;
    assert_int_equal(kc_cache_new("/r", &c), KS_OK);
    char *p1 = kc_cache_entry_path(c, "a/b c", base), *p2 = kc_cache_entry_path(c, "x", other_opt);
    assert_non_null(strstr(p1, "/r/opencl/a_b_c-"));
    assert_string_not_equal(strrchr(p1, '-'), strrchr(p2, '-'));
    free(p1), free(p2), free(base), free(other_src), free(other_opt), free(other_drv);
    kc_cache_destroy(&c);
}

/* ---- build failures ----------------------------------------------------------------------- */

static void test_build_failure_names_file_and_log(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    kc_context *ctx = open_context(fx, NULL, true);
    static const char broken[] = "__kernel void broken(__global float *x)\n"
                                 "{\n"
                                 "    x[0] = ;\n"
                                 "}\n";
    kc_program *p = (kc_program *)1;
    ks_status st = kc_program_from_source(ctx, "broken.cl", broken, sizeof broken - 1,
                                          "-DWG_SIZE=64", &p);
    assert_int_equal(st, KS_ERR_DEVICE);
    assert_null(p);
    const char *msg = ks_error_message();
    print_message("build failure message:\n%s\n", msg);
    assert_non_null(strstr(msg, "building broken.cl"));
    assert_non_null(strstr(msg, "-DWG_SIZE=64"));
    assert_non_null(strstr(msg, "CL_BUILD_PROGRAM_FAILURE"));
    assert_non_null(strstr(msg, "build log:\n"));
    const char *log = kc_context_build_log(ctx);
    assert_true(strlen(log) > 0);
    assert_non_null(strstr(msg, "error")); /* the compiler's words made it into the message */
    assert_int_equal(kc_context_build_stats(ctx).builds, 0);
    kc_context_destroy(&ctx);
}

int main(void)
{
    /* The host-side tests run in both configurations; the no-OpenCL run
     * (KOSMOS_TEST_EXPECT_NO_OPENCL=1, test_opencl_no_icd) checks the empty listing instead of
     * the device tests, which cannot apply there. */
    const struct CMUnitTest with_opencl[] = {
        cmocka_unit_test(test_error_names),
        cmocka_unit_test(test_kernel_table),
        cmocka_unit_test(test_cache_folder_rules),
        cmocka_unit_test(test_cache_key_covers_inputs),
        cmocka_unit_test(test_listing),
        cmocka_unit_test(test_selection),
        cmocka_unit_test(test_layer_norm_matches_naive),
        cmocka_unit_test(test_program_cache),
        cmocka_unit_test(test_developer_switch_reads_disk),
        cmocka_unit_test(test_build_failure_names_file_and_log),
    };
    const struct CMUnitTest without_opencl[] = {
        cmocka_unit_test(test_error_names),
        cmocka_unit_test(test_kernel_table),
        cmocka_unit_test(test_cache_folder_rules),
        cmocka_unit_test(test_cache_key_covers_inputs),
        cmocka_unit_test(test_no_opencl_is_an_empty_list),
        cmocka_unit_test(test_developer_switch_reads_disk),
    };
    if (expect_no_opencl())
        return cmocka_run_group_tests_name("test_opencl (no OpenCL)", without_opencl, group_setup,
                                           group_teardown);
    return cmocka_run_group_tests(with_opencl, group_setup, group_teardown);
}
