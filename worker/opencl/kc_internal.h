/* kc_internal: the calls between kc_context.c and kc_program.c that users of kosmos_opencl do
 * not make. The context owns the programs; the program code builds them. */
#ifndef KC_INTERNAL_H
#define KC_INTERNAL_H

#include "kc_cache.h"
#include "kc_context.h"
#include "kc_program.h"

/* The binary cache, or NULL when it is off. Borrowed. */
kc_cache *kc_context_cache(kc_context *ctx);

/* The program already built in this context for (name, options), or NULL. */
kc_program *kc_context_find_program(const kc_context *ctx, const char *name, const char *options);

/* Hands a built program to the context (takes ownership, also on failure). */
ks_status kc_context_adopt_program(kc_context *ctx, kc_program **program);

/* Accounts one build. */
void kc_context_count_build(kc_context *ctx, bool cache_hit, bool store_failed, double seconds);

/* Keeps the whole log of a failed build (copied; NULL clears it). */
void kc_context_set_build_log(kc_context *ctx, const char *log);

/* Releases a program and its kernels (context destroy). */
void kc_program_destroy(kc_program **program);

/* Name and options a program was built with (for kc_context_find_program). */
const char *kc_program_options(const kc_program *program);

#endif
