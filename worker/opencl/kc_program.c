/* kc_program: see kc_program.h. The build: look the key up in the binary cache; on a valid entry
 * create the program from the binary and build it (cheap); on a miss, or when the driver rejects
 * the cached binary, compile from source and store the resulting binary for next time. */
#include "kc_program.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kc_error.h"
#include "kc_internal.h"
#include "kc_kernels.h"
#include "ks_buf.h"

/* The part of a build log that goes into the error message; the rest stays in the context. */
#define KC_LOG_IN_MESSAGE 640

typedef struct kc_kernel_entry {
    char *name;
    cl_kernel kernel;
} kc_kernel_entry;

#define KC_BOUND_MAX_ARGS 40
#define KC_BOUND_MAX_SIZE 16

struct kc_bound {
    cl_kernel kernel;
    kc_profile *profile; /* borrowed from the context */
    unsigned char value[KC_BOUND_MAX_ARGS][KC_BOUND_MAX_SIZE];
    size_t size[KC_BOUND_MAX_ARGS]; /* 0: never set */
    bool null_buffer[KC_BOUND_MAX_ARGS];
    struct kc_bound *next; /* the program's list */
};

struct kc_program {
    char *name;    /* "layer_norm.cl" */
    char *options; /* as the caller gave them ("" for none) */
    cl_program program;
    kc_kernel_entry *kernels; /* [n_kernels] */
    size_t n_kernels;
    bool cache_hit;
    bool from_disk;
    double seconds;
    kc_context *ctx;  /* the owner (for the profile of bound kernels) */
    kc_bound *bounds; /* owned */
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* "-cl-std=CL1.2 <options>" when the device's OpenCL C is at least 1.2. */
static char *full_options(const kc_device_info *dev, const char *options)
{
    int major = 0, minor = 0;
    bool std12 = sscanf(dev->opencl_c_version, "OpenCL C %d.%d", &major, &minor) == 2 &&
                 (major > 1 || (major == 1 && minor >= 2));
    ks_buf b;
    ks_buf_init(&b);
    if (ks_buf_printf(&b, "%s%s%s", std12 ? "-cl-std=CL1.2" : "",
                      std12 && options && *options ? " " : "", options ? options : "") != KS_OK) {
        ks_buf_fini(&b);
        return NULL;
    }
    return ks_buf_detach(&b, NULL);
}

/* The build log of `program` for the context's device (caller frees; "" when there is none). */
static char *build_log(cl_program program, cl_device_id device)
{
    size_t n = 0;
    char *log = NULL;
    if (clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) == CL_SUCCESS &&
        n > 0 && (log = malloc(n + 1)) != NULL) {
        if (clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, n, log, NULL) !=
            CL_SUCCESS)
            n = 0;
        log[n] = '\0';
    }
    if (!log)
        log = calloc(1, 1);
    /* Drop trailing blank lines, which some drivers pad with. */
    size_t len = log ? strlen(log) : 0;
    while (len > 0 && (log[len - 1] == '\n' || log[len - 1] == ' ' || log[len - 1] == '\0'))
        log[--len] = '\0';
    return log;
}

/* The program's binary for its single device (caller frees), or NULL. */
static unsigned char *program_binary(cl_program program, size_t *length)
{
    size_t size = 0;
    *length = 0;
    if (clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) !=
            CL_SUCCESS ||
        size == 0)
        return NULL;
    unsigned char *bin = malloc(size);
    if (!bin)
        return NULL;
    unsigned char *bins[1] = {bin};
    if (clGetProgramInfo(program, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) != CL_SUCCESS) {
        free(bin);
        return NULL;
    }
    *length = size;
    return bin;
}

/* A program from a cached binary, built; NULL when the driver will not take it. */
static cl_program program_from_binary(kc_context *ctx, const unsigned char *bin, size_t length,
                                      const char *options)
{
    const kc_device_info *dev = kc_context_device(ctx);
    cl_int err = CL_SUCCESS, bin_status = CL_SUCCESS;
    cl_program p = clCreateProgramWithBinary(kc_context_cl(ctx), 1, &dev->device, &length, &bin,
                                             &bin_status, &err);
    if (err != CL_SUCCESS || bin_status != CL_SUCCESS) {
        if (p)
            clReleaseProgram(p);
        return NULL;
    }
    if (clBuildProgram(p, 1, &dev->device, options, NULL, NULL) != CL_SUCCESS) {
        clReleaseProgram(p);
        return NULL;
    }
    return p;
}

void kc_program_destroy(kc_program **program)
{
    if (!program || !*program)
        return;
    kc_program *p = *program;
    while (p->bounds) {
        kc_bound *next = p->bounds->next;
        clReleaseKernel(p->bounds->kernel);
        free(p->bounds);
        p->bounds = next;
    }
    for (size_t i = 0; i < p->n_kernels; i++) {
        clReleaseKernel(p->kernels[i].kernel);
        free(p->kernels[i].name);
    }
    if (p->program)
        clReleaseProgram(p->program);
    free(p->kernels);
    free(p->name);
    free(p->options);
    free(p);
    *program = NULL;
}

ks_status kc_program_from_source(kc_context *ctx, const char *name, const char *source,
                                 size_t length, const char *options, kc_program **out)
{
    ks_status status = KS_OK;
    kc_program *p = NULL;
    char *opts = NULL, *key = NULL, *stem = NULL, *log = NULL;
    unsigned char *bin = NULL;
    size_t bin_len = 0;
    const kc_device_info *dev = kc_context_device(ctx);
    *out = NULL;
    if (!options)
        options = "";

    kc_program *existing = kc_context_find_program(ctx, name, options);
    if (existing) {
        *out = existing;
        return KS_OK;
    }

    double t0 = now_seconds();
    p = calloc(1, sizeof *p);
    opts = full_options(dev, options);
    key = opts ? kc_cache_key(dev, source, length, opts) : NULL;
    stem = strdup(name);
    if (p) {
        p->name = strdup(name);
        p->options = strdup(options);
        p->ctx = ctx;
    }
    if (!p || !opts || !key || !stem || !p->name || !p->options) {
        status = ks_fail(KS_ERR_NOMEM, "out of memory building %s", name);
        goto cleanup;
    }
    char *dot = strrchr(stem, '.');
    if (dot && dot != stem)
        *dot = '\0';

    kc_cache *cache = kc_context_cache(ctx);
    if (cache && kc_cache_load(cache, stem, key, &bin, &bin_len)) {
        p->program = program_from_binary(ctx, bin, bin_len, opts);
        p->cache_hit = p->program != NULL;
    }
    free(bin);
    bin = NULL;

    bool store_failed = false;
    if (!p->program) {
        cl_int err = CL_SUCCESS;
        p->program = clCreateProgramWithSource(kc_context_cl(ctx), 1, &source, &length, &err);
        KC_CHECK_ERR(err, "clCreateProgramWithSource");
        err = clBuildProgram(p->program, 1, &dev->device, opts, NULL, NULL);
        if (err != CL_SUCCESS) {
            log = build_log(p->program, dev->device);
            kc_context_set_build_log(ctx, log);
            size_t log_len = log ? strlen(log) : 0;
            int shown = log_len > KC_LOG_IN_MESSAGE ? KC_LOG_IN_MESSAGE : (int)log_len;
            status = ks_fail(KS_ERR_DEVICE,
                             "building %s (options: %s) for '%s' failed: %s (%d)\n"
                             "build log:\n%.*s%s",
                             name, *opts ? opts : "none", dev->name, kc_error_name(err), (int)err,
                             shown, log ? log : "",
                             log_len > KC_LOG_IN_MESSAGE ? "\n[... log truncated]" : "");
            goto cleanup;
        }
        if (cache) {
            bin = program_binary(p->program, &bin_len);
            store_failed = !bin || !kc_cache_store(cache, stem, key, bin, bin_len);
        }
    }
    kc_context_set_build_log(ctx, NULL);
    p->seconds = now_seconds() - t0;
    kc_context_count_build(ctx, p->cache_hit, store_failed, p->seconds);
    kc_program *built = p;
    p = NULL;
    status = kc_context_adopt_program(ctx, &built);
    if (status == KS_OK)
        *out = kc_context_find_program(ctx, name, options);

cleanup:
    kc_program_destroy(&p);
    free(opts);
    free(key);
    free(stem);
    free(log);
    free(bin);
    return status;
}

ks_status kc_program_get(kc_context *ctx, const char *file, const char *options, kc_program **out)
{
    *out = NULL;
    kc_program *existing = kc_context_find_program(ctx, file, options);
    if (existing) {
        *out = existing;
        return KS_OK;
    }
    char *text = NULL;
    size_t length = 0;
    bool from_disk = false;
    ks_status st = kc_kernel_source(file, &text, &length, &from_disk);
    if (st == KS_OK)
        st = kc_program_from_source(ctx, file, text, length, options, out);
    if (st == KS_OK)
        (*out)->from_disk = from_disk;
    free(text);
    return st;
}

ks_status kc_program_kernel(kc_program *program, const char *kernel_name, cl_kernel *out)
{
    ks_status status = KS_OK;
    *out = NULL;
    for (size_t i = 0; i < program->n_kernels; i++) {
        if (!strcmp(program->kernels[i].name, kernel_name)) {
            *out = program->kernels[i].kernel;
            return KS_OK;
        }
    }
    kc_kernel_entry *grown = realloc(program->kernels,
                                     (program->n_kernels + 1) * sizeof *program->kernels);
    if (!grown)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    program->kernels = grown;
    cl_int err = CL_SUCCESS;
    cl_kernel k = clCreateKernel(program->program, kernel_name, &err);
    KC_CHECK_ERR(err, "clCreateKernel");
    char *name = strdup(kernel_name);
    if (!name) {
        clReleaseKernel(k);
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    }
    program->kernels[program->n_kernels++] = (kc_kernel_entry){name, k};
    *out = k;
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel '%s' of %s", kernel_name, program->name);
    return status;
}

ks_status kc_bound_new(kc_program *program, const char *kernel_name, kc_bound **out)
{
    ks_status status = KS_OK;
    *out = NULL;
    kc_bound *b = calloc(1, sizeof *b);
    if (!b)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    cl_int err = CL_SUCCESS;
    b->kernel = clCreateKernel(program->program, kernel_name, &err);
    KC_CHECK_ERR(err, "clCreateKernel");
    b->profile = kc_context_profile(program->ctx);
    b->next = program->bounds;
    program->bounds = b;
    *out = b;
    b = NULL;
cleanup:
    free(b);
    if (status != KS_OK)
        ks_error_prefix("kernel '%s' of %s", kernel_name, program->name);
    return status;
}

ks_status kc_bound_arg(kc_bound *b, cl_uint index, size_t size, const void *value)
{
    ks_status status = KS_OK;
    bool is_null = value == NULL;
    if (index >= KC_BOUND_MAX_ARGS || (!is_null && size > KC_BOUND_MAX_SIZE) || size == 0)
        return ks_fail(KS_ERR_INVALID, "kernel argument %u of %zu bytes", index, size);
    if (b->size[index] == size && b->null_buffer[index] == is_null &&
        (is_null || memcmp(b->value[index], value, size) == 0))
        return KS_OK;
    KC_CHECK(clSetKernelArg(b->kernel, index, size, value));
    b->size[index] = size;
    b->null_buffer[index] = is_null;
    if (!is_null)
        memcpy(b->value[index], value, size);
    kc_profile_count(b->profile, "kernel arguments set");
cleanup:
    return status;
}

cl_kernel kc_bound_kernel(const kc_bound *b) { return b->kernel; }

bool kc_program_cache_hit(const kc_program *program) { return program->cache_hit; }
double kc_program_build_seconds(const kc_program *program) { return program->seconds; }
bool kc_program_from_disk(const kc_program *program) { return program->from_disk; }
const char *kc_program_name(const kc_program *program) { return program->name; }
const char *kc_program_options(const kc_program *program) { return program->options; }
