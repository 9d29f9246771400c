/* kc_program: building OpenCL programs for a kc_context, through the on-disk binary cache
 * (kc_cache.h), and the kernels made from them.
 *
 * Every build gets "-cl-std=CL1.2" (on devices whose OpenCL C is 1.2 or newer) in front of the
 * caller's options, which carry the tunables as -D NAME=VALUE. A program is built once per
 * context for a (file, options) pair; asking again returns the same program. */
#ifndef KC_PROGRAM_H
#define KC_PROGRAM_H

#include <stdbool.h>
#include <stddef.h>

#include "kc_cl.h"
#include "kc_context.h"
#include "ks_error.h"

typedef struct kc_program kc_program;

/* The program of kernels/<file> ("layer_norm.cl", embedded or from KOSMOS_KERNELS_DIR, see
 * kc_kernels.h) built with `options` (NULL = none). *out is owned by the context, borrowed until
 * it is destroyed. A failed build is KS_ERR_DEVICE with the file, the options and the build log
 * (truncated; kc_context_build_log has all of it) in the message. */
ks_status kc_program_get(kc_context *ctx, const char *file, const char *options, kc_program **out);

/* The same for source text given by the caller; `name` ("bad.cl") names it in messages and in
 * the cache. source need not be NUL-terminated. */
ks_status kc_program_from_source(kc_context *ctx, const char *name, const char *source,
                                 size_t length, const char *options, kc_program **out);

/* A kernel of the program by function name, created once and owned by the program (borrowed
 * until the context is destroyed). KS_ERR_DEVICE naming the kernel when it does not exist. */
ks_status kc_program_kernel(kc_program *program, const char *kernel_name, cl_kernel *out);

/* A kernel object of a call site's own, which remembers the arguments it was given: a site that
 * launches the same kernel again and again (a layer's GEMM, once per decode step) sets only the
 * arguments that changed, instead of every one per launch. Owned by the program (released with
 * the context); not thread-safe. */
typedef struct kc_bound kc_bound;

ks_status kc_bound_new(kc_program *program, const char *kernel_name, kc_bound **out);

/* Sets argument `index` unless it already holds these `size` bytes (size <= 16). NULL value: a
 * NULL buffer (size sizeof(cl_mem)) or a __local argument of `size` bytes. Counts the calls it
 * makes in the context's profile ("kernel arguments set"). */
ks_status kc_bound_arg(kc_bound *bound, cl_uint index, size_t size, const void *value);

cl_kernel kc_bound_kernel(const kc_bound *bound);

/* True when the binary came from the on-disk cache (the compiler did not run). */
bool kc_program_cache_hit(const kc_program *program);

/* Wall seconds the build took (cache lookup included). */
double kc_program_build_seconds(const kc_program *program);

/* True when the source was read from KOSMOS_KERNELS_DIR rather than the embedded table. */
bool kc_program_from_disk(const kc_program *program);

/* The file name it was built from. Borrowed. */
const char *kc_program_name(const kc_program *program);

#endif
