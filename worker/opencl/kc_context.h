/* kc_context: one OpenCL device in use: its context and in-order queue, and everything created
 * on them - the programs (kc_program.h) with their kernels, and the buffers. Destroying the
 * context releases all of it, so a failed start cleans up with one call.
 *
 * Not thread-safe: one thread drives a context (as one thread drives a ke_backend). */
#ifndef KC_CONTEXT_H
#define KC_CONTEXT_H

#include <stdbool.h>
#include <stddef.h>

#include "kc_cl.h"
#include "kc_device.h"
#include "kc_profile.h"
#include "ks_error.h"

typedef struct kc_context kc_context;

typedef struct kc_context_params {
    const char *cache_root; /* kosmos cache folder; NULL (default) = $KOSMOS_CACHE_DIR, else
                               $XDG_CACHE_HOME/kosmos, else $HOME/.cache/kosmos. Copied. */
    bool no_cache;          /* default false: true builds from source and writes nothing */
    bool profiling;         /* default false: CL_QUEUE_PROFILING_ENABLE on the queue, and device
                               times in the profile (kc_context_profile) */
} kc_context_params;

/* The defaults documented above. */
void kc_context_params_init(kc_context_params *params);

/* Opens `device` (copied; from a kc_device_list) with params (NULL = defaults) into a new context
 * the caller destroys. KS_ERR_DEVICE with the failing call's name and error when the driver
 * refuses. */
ks_status kc_context_new(const kc_device_info *device, const kc_context_params *params,
                         kc_context **out);

/* Waits for the queue, then releases every kernel, program and buffer, the queue and the
 * context. Accepts NULL; sets *ctx = NULL. */
void kc_context_destroy(kc_context **ctx);

/* Borrowed until the context is destroyed. */
const kc_device_info *kc_context_device(const kc_context *ctx);
cl_context kc_context_cl(const kc_context *ctx);
cl_command_queue kc_context_queue(const kc_context *ctx);

/* clFinish on the queue (counted as a wait in the profile). */
ks_status kc_context_finish(kc_context *ctx);

/* ---- enqueueing through the context: every launch and every wait is profiled ------------ */

/* Enqueues `kernel` (its arguments set) with the given NDRange (local may be NULL); no wait.
 * `name` (a literal) and `cost` (may be NULL) go to the profile. KS_ERR_DEVICE names the kernel
 * and the sizes when the driver refuses. */
ks_status kc_context_launch(kc_context *ctx, cl_kernel kernel, const char *name, cl_uint dims,
                            const size_t *global, const size_t *local, const kc_cost *cost);

/* A non-blocking transfer still in flight: wait for it with kc_context_wait. */
typedef struct kc_pending {
    cl_event event; /* owned until kc_context_wait / kc_pending_release */
    uint64_t seq;   /* the context's enqueue count when it was enqueued */
} kc_pending;

/* Reads / writes `bytes` at byte `offset` of buf. blocking: returns when done (a profiled
 * wait); else returns at once, with the transfer in *pending when pending is not NULL (the
 * host memory must stay valid and untouched until it completes). */
ks_status kc_context_read(kc_context *ctx, cl_mem buf, bool blocking, size_t offset, size_t bytes,
                          void *host, kc_pending *pending);
ks_status kc_context_write(kc_context *ctx, cl_mem buf, bool blocking, size_t offset, size_t bytes,
                           const void *host, kc_pending *pending);

/* Waits for a pending transfer and releases it: a profiled wait named `what` (a literal; "busy"
 * when something was enqueued after it, so the device had work while the host waited), unless
 * it had completed already. */
ks_status kc_context_wait(kc_context *ctx, kc_pending *pending, const char *what);

/* Releases a pending transfer without waiting (its memory must still outlive it). */
void kc_pending_release(kc_pending *pending);

/* True when the transfer has completed (or there is none): checked without waiting. */
bool kc_pending_done(const kc_pending *pending);

/* The profile of this context's queue (always counting; timed with params.profiling).
 * Borrowed until the context is destroyed. */
kc_profile *kc_context_profile(kc_context *ctx);

/* Whether the queue was opened with profiling (device times available). */
bool kc_context_profiling(const kc_context *ctx);

/* A buffer of `bytes` owned by the context (released by kc_context_buffer_free or destroy).
 * host: initial contents copied in (CL_MEM_COPY_HOST_PTR is added), or NULL. */
ks_status kc_context_buffer(kc_context *ctx, cl_mem_flags flags, size_t bytes, const void *host,
                            cl_mem *out);

/* Releases a buffer made by kc_context_buffer early; accepts NULL / *buf == NULL. */
void kc_context_buffer_free(kc_context *ctx, cl_mem *buf);

/* Program building so far, for the CLI's timings ("program compilation skipped"). */
typedef struct kc_build_stats {
    unsigned builds;         /* programs built (in-memory reuse not counted) */
    unsigned cache_hits;     /* ... of which loaded from the binary cache */
    unsigned cache_misses;   /* ... of which compiled from source */
    unsigned store_failures; /* binaries that could not be written to the cache */
    double seconds;          /* wall time spent in building */
} kc_build_stats;

kc_build_stats kc_context_build_stats(const kc_context *ctx);

/* The folder binaries are cached in, or NULL when the cache is off or has no folder. */
const char *kc_context_cache_folder(const kc_context *ctx);

/* The whole log of the last failed build ("" if none). Borrowed until the next build. */
const char *kc_context_build_log(const kc_context *ctx);

#endif
