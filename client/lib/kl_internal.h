/* kl_internal: what the libkosmos sources share and nobody else sees - the per-thread error,
 * an arena for the immutable objects handed to callers (results, broker status), the job's
 * image buffer (reference-counted, so that ZeroMQ can send it without a copy while the caller
 * keeps or frees the job), and conversions from the wire types.
 *
 * Not installed, never included by kosmos/client.h. Module prefix kl_ (kc_ is the OpenCL
 * runtime's). */
#ifndef KL_INTERNAL_H
#define KL_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kosmos.pb-c.h"
#include "kosmos/client.h"

/* ---- errors (kl_error.c) ---- */

/* Records a message (printf-style) for this thread and returns `code`. */
kosmos_error_t kl_fail(kosmos_error_t code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- arena (kl_arena.c): many small allocations freed at once ---- */

typedef struct kl_arena_block kl_arena_block;
typedef struct kl_arena {
    kl_arena_block *head;
} kl_arena;

/* Zeroed memory, 16-byte aligned; NULL when out of memory. */
void *kl_arena_alloc(kl_arena *a, size_t size);
/* A copy of s ("" for NULL); NULL when out of memory. */
char *kl_arena_strdup(kl_arena *a, const char *s);
void kl_arena_free(kl_arena *a);

/* ---- image buffer (kl_job.c) ---- */

typedef struct kl_image {
    atomic_int refs;
    size_t len;
    unsigned char data[];
} kl_image;

void kl_image_unref(kl_image *img);
/* An initialized ZeroMQ message over img's bytes, holding one reference until ZeroMQ is done
 * with it. KOSMOS_ERR_IO when zmq_msg_init_data fails. */
kosmos_error_t kl_image_msg(kl_image *img, void *zmq_msg);

/* ---- job -> protobuf (kl_job.c) ---- */

/* Builds the wire Job of `job` with idempotency key `key` (borrowed) into a heap message
 * (caller frees with kl_wire_job_free). *image: the job's attached image (borrowed with the
 * job), or NULL. KOSMOS_ERR_INVALID without an image or prompt; NOMEM. */
kosmos_error_t kl_wire_job(const kosmos_job_t *job, const char *key, Kosmos__V1__Job **out,
                           kl_image **image);
void kl_wire_job_free(Kosmos__V1__Job *job);

/* ---- protobuf -> result / status (kl_result.c, kl_status.c) ---- */

kosmos_result_t *kl_result_from_wire(const Kosmos__V1__Result *r);
kosmos_broker_status_t *kl_status_from_wire(const Kosmos__V1__StatusReply *s);

kosmos_job_state_t kl_state_from_wire(int state);
kosmos_result_status_t kl_result_status_from_wire(int status);

/* ---- misc ---- */

/* Monotonic milliseconds. */
uint64_t kl_now_ms(void);
void kl_sleep_ms(uint64_t ms);
/* `n` random bytes (the kernel's, else a time-seeded mix). */
void kl_random_bytes(void *buf, size_t n);

#endif
