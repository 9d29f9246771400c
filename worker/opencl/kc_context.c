/* kc_context: see kc_context.h. Buffers and programs are kept in small arrays: a worker holds a
 * few dozen programs and a few hundred buffers, and frees them all at once. */
#include "kc_context.h"

#include <stdlib.h>
#include <string.h>

#include "kc_error.h"
#include "kc_internal.h"

struct kc_context {
    kc_device_info device;
    cl_context context;
    cl_command_queue queue;
    kc_cache *cache;       /* NULL when off */
    kc_program **programs; /* [n_programs], owned */
    size_t n_programs, cap_programs;
    cl_mem *buffers; /* [n_buffers], owned; freed slots are NULL */
    size_t n_buffers, cap_buffers;
    kc_build_stats stats;
    char *build_log;     /* last failed build, or NULL */
    kc_profile *profile; /* counts always; events only with `profiling` */
    bool profiling;
    uint64_t enqueued; /* commands enqueued so far (kc_pending.seq) */
};

void kc_context_params_init(kc_context_params *params) { memset(params, 0, sizeof *params); }

ks_status kc_context_new(const kc_device_info *device, const kc_context_params *params,
                         kc_context **out)
{
    ks_status status = KS_OK;
    kc_context_params defaults;
    kc_context_params_init(&defaults);
    if (!params)
        params = &defaults;
    *out = NULL;
    kc_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return ks_fail(KS_ERR_NOMEM, "out of memory creating an OpenCL context");
    ctx->device = *device;
    ctx->profiling = params->profiling;
    if ((status = kc_profile_new(&ctx->profile)) != KS_OK)
        goto cleanup;

    cl_int err = CL_SUCCESS;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)device->platform,
                                     0};
    ctx->context = clCreateContext(props, 1, &device->device, NULL, NULL, &err);
    KC_CHECK_ERR(err, "clCreateContext");
    cl_command_queue_properties qprops = params->profiling ? CL_QUEUE_PROFILING_ENABLE : 0;
    ctx->queue = clCreateCommandQueue(ctx->context, device->device, qprops, &err);
    KC_CHECK_ERR(err, "clCreateCommandQueue");
    /* The cache is best effort: without one, every program is built by the driver. */
    if (!params->no_cache && kc_cache_new(params->cache_root, &ctx->cache) != KS_OK)
        ks_error_clear();
    *out = ctx;
    ctx = NULL;
cleanup:
    if (status != KS_OK)
        ks_error_prefix("opening OpenCL device %zu '%s'", device->index, device->name);
    kc_context_destroy(&ctx);
    return status;
}

void kc_context_destroy(kc_context **pctx)
{
    if (!pctx || !*pctx)
        return;
    kc_context *ctx = *pctx;
    if (ctx->queue)
        clFinish(ctx->queue);
    for (size_t i = 0; i < ctx->n_programs; i++)
        kc_program_destroy(&ctx->programs[i]);
    for (size_t i = 0; i < ctx->n_buffers; i++)
        if (ctx->buffers[i])
            clReleaseMemObject(ctx->buffers[i]);
    if (ctx->queue)
        clReleaseCommandQueue(ctx->queue);
    if (ctx->context)
        clReleaseContext(ctx->context);
    kc_cache_destroy(&ctx->cache);
    kc_profile_destroy(&ctx->profile);
    free(ctx->programs);
    free(ctx->buffers);
    free(ctx->build_log);
    free(ctx);
    *pctx = NULL;
}

const kc_device_info *kc_context_device(const kc_context *ctx) { return &ctx->device; }
cl_context kc_context_cl(const kc_context *ctx) { return ctx->context; }
cl_command_queue kc_context_queue(const kc_context *ctx) { return ctx->queue; }

ks_status kc_context_finish(kc_context *ctx)
{
    ks_status status = KS_OK;
    kc_profile_wait(ctx->profile, "clFinish", false);
    KC_CHECK(clFinish(ctx->queue));
cleanup:
    return status;
}

ks_status kc_context_launch(kc_context *ctx, cl_kernel kernel, const char *name, cl_uint dims,
                            const size_t *global, const size_t *local, const kc_cost *cost)
{
    ks_status status = KS_OK;
    cl_event ev = NULL;
    KC_CHECK(clEnqueueNDRangeKernel(ctx->queue, kernel, dims, NULL, global, local, 0, NULL,
                                    ctx->profiling ? &ev : NULL));
    ctx->enqueued++;
    kc_profile_launch(ctx->profile, name, ev, cost);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("%s (global %zu x %zu)", name, global[0], dims > 1 ? global[1] : 1);
    return status;
}

static ks_status transfer(kc_context *ctx, bool write, cl_mem buf, bool blocking, size_t offset,
                          size_t bytes, void *host, kc_pending *pending)
{
    ks_status status = KS_OK;
    cl_event ev = NULL;
    if (pending)
        *pending = (kc_pending){0};
    if (bytes == 0)
        return KS_OK;
    cl_event *evp = !blocking && pending ? &ev : NULL;
    if (blocking)
        kc_profile_wait(ctx->profile, write ? "blocking write" : "blocking read", false);
    if (write)
        KC_CHECK(clEnqueueWriteBuffer(ctx->queue, buf, blocking ? CL_TRUE : CL_FALSE, offset, bytes,
                                      host, 0, NULL, evp));
    else
        KC_CHECK(clEnqueueReadBuffer(ctx->queue, buf, blocking ? CL_TRUE : CL_FALSE, offset, bytes,
                                     host, 0, NULL, evp));
    ctx->enqueued++;
    if (evp)
        *pending = (kc_pending){ev, ctx->enqueued};
cleanup:
    return status;
}

ks_status kc_context_read(kc_context *ctx, cl_mem buf, bool blocking, size_t offset, size_t bytes,
                          void *host, kc_pending *pending)
{
    return transfer(ctx, false, buf, blocking, offset, bytes, host, pending);
}

ks_status kc_context_write(kc_context *ctx, cl_mem buf, bool blocking, size_t offset, size_t bytes,
                           const void *host, kc_pending *pending)
{
    return transfer(ctx, true, buf, blocking, offset, bytes, (void *)host, pending);
}

ks_status kc_context_wait(kc_context *ctx, kc_pending *pending, const char *what)
{
    ks_status status = KS_OK;
    if (!pending->event)
        return KS_OK;
    cl_int state = CL_QUEUED;
    if (clGetEventInfo(pending->event, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof state, &state,
                       NULL) == CL_SUCCESS &&
        state == CL_COMPLETE) { /* done already: no wait */
        kc_pending_release(pending);
        return KS_OK;
    }
    /* Flushing first: a driver may hold the later commands back until asked, and the point of
     * waiting for an old transfer is that the device works on them meanwhile. */
    KC_CHECK(clFlush(ctx->queue));
    kc_profile_wait(ctx->profile, what, ctx->enqueued > pending->seq);
    KC_CHECK(clWaitForEvents(1, &pending->event));
cleanup:
    kc_pending_release(pending);
    return status;
}

bool kc_pending_done(const kc_pending *pending)
{
    cl_int state = CL_COMPLETE;
    if (!pending->event)
        return true;
    if (clGetEventInfo(pending->event, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof state, &state,
                       NULL) != CL_SUCCESS)
        return false;
    return state == CL_COMPLETE || state < 0; /* a failed command: the wait reports it */
}

void kc_pending_release(kc_pending *pending)
{
    if (pending && pending->event) {
        clReleaseEvent(pending->event);
        pending->event = NULL;
    }
}

kc_profile *kc_context_profile(kc_context *ctx) { return ctx->profile; }

bool kc_context_profiling(const kc_context *ctx) { return ctx->profiling; }

ks_status kc_context_buffer(kc_context *ctx, cl_mem_flags flags, size_t bytes, const void *host,
                            cl_mem *out)
{
    ks_status status = KS_OK;
    cl_mem mem = NULL;
    *out = NULL;
    if (bytes == 0)
        return ks_fail(KS_ERR_INVALID, "an OpenCL buffer of 0 bytes");
    if (bytes > ctx->device.max_alloc_bytes)
        return ks_fail(KS_ERR_LIMIT,
                       "an OpenCL buffer of %zu bytes is larger than the device's largest "
                       "allocation (%llu bytes; on PoCL see POCL_MEMORY_LIMIT)",
                       bytes, (unsigned long long)ctx->device.max_alloc_bytes);
    if (ctx->n_buffers == ctx->cap_buffers) {
        size_t cap = ctx->cap_buffers ? 2 * ctx->cap_buffers : 16;
        cl_mem *grown = realloc(ctx->buffers, cap * sizeof *grown);
        if (!grown)
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        ctx->buffers = grown;
        ctx->cap_buffers = cap;
    }
    if (host)
        flags |= CL_MEM_COPY_HOST_PTR;
    cl_int err = CL_SUCCESS;
    mem = clCreateBuffer(ctx->context, flags, bytes, (void *)host, &err);
    KC_CHECK_ERR(err, "clCreateBuffer");
    ctx->buffers[ctx->n_buffers++] = mem;
    *out = mem;
cleanup:
    return status;
}

void kc_context_buffer_free(kc_context *ctx, cl_mem *buf)
{
    if (!buf || !*buf)
        return;
    for (size_t i = 0; i < ctx->n_buffers; i++) {
        if (ctx->buffers[i] == *buf) {
            clReleaseMemObject(ctx->buffers[i]);
            ctx->buffers[i] = ctx->buffers[--ctx->n_buffers];
            break;
        }
    }
    *buf = NULL;
}

kc_build_stats kc_context_build_stats(const kc_context *ctx) { return ctx->stats; }

const char *kc_context_cache_folder(const kc_context *ctx) { return kc_cache_folder(ctx->cache); }

const char *kc_context_build_log(const kc_context *ctx)
{
    return ctx->build_log ? ctx->build_log : "";
}

kc_cache *kc_context_cache(kc_context *ctx) { return ctx->cache; }

kc_program *kc_context_find_program(const kc_context *ctx, const char *name, const char *options)
{
    for (size_t i = 0; i < ctx->n_programs; i++)
        if (!strcmp(kc_program_name(ctx->programs[i]), name) &&
            !strcmp(kc_program_options(ctx->programs[i]), options ? options : ""))
            return ctx->programs[i];
    return NULL;
}

ks_status kc_context_adopt_program(kc_context *ctx, kc_program **program)
{
    if (ctx->n_programs == ctx->cap_programs) {
        size_t cap = ctx->cap_programs ? 2 * ctx->cap_programs : 8;
        kc_program **grown = realloc(ctx->programs, cap * sizeof *grown);
        if (!grown) {
            kc_program_destroy(program);
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        }
        ctx->programs = grown;
        ctx->cap_programs = cap;
    }
    ctx->programs[ctx->n_programs++] = *program;
    *program = NULL;
    return KS_OK;
}

void kc_context_count_build(kc_context *ctx, bool cache_hit, bool store_failed, double seconds)
{
    ctx->stats.builds++;
    if (cache_hit)
        ctx->stats.cache_hits++;
    else
        ctx->stats.cache_misses++;
    if (store_failed)
        ctx->stats.store_failures++;
    ctx->stats.seconds += seconds;
}

void kc_context_set_build_log(kc_context *ctx, const char *log)
{
    free(ctx->build_log);
    ctx->build_log = log ? strdup(log) : NULL;
}
