/* kw_batch: the worker's continuous batch on one device (docs/protocol.md §5.3, §8.3). Jobs
 * join it at any time (kw_batch_add: the image decoded, the prompts encoded and checked); each
 * kw_batch_step runs at most one vision pass over a few waiting images (kw_batch_params.
 * vision_chunk, so a large arrival delays the running sequences by one short pass) and then one
 * step of the engine's scheduler (ke_sched) over every prompt of every job; a job whose
 * prompts have all ended comes back as its packed Result, post-processed exactly as `kosmos run`
 * (kw_pipeline). A job's ids do not depend on what runs beside it (generate.h). Every request
 * kind (greedy, beams, sampling) runs in the one scheduler: a step with a beam request selects
 * on the host for all rows, which is slower, not different. A bad image or prompt fails only
 * its job or prompt, non-retriably, with a message; a device failure fails every job in the
 * batch retriably and is returned to the caller.
 * Not here: sockets and threads (kw_compute.c, kw_worker.c).
 *
 * Module prefix: kw_ (library kosmos_worker). */
#ifndef KW_BATCH_H
#define KW_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "kosmos.pb-c.h"
#include "ks_error.h"
#include "kw_pipeline.h"

/* What a worker's engine is made of; defaults from kw_engine_params_default. */
typedef struct kw_engine_params {
    const char *model_dir;  /* checkpoint folder (required) */
    const char *device;     /* ke_backend_open spec; NULL/"" = its default */
    ke_dtype precision;     /* weights storage: KE_DTYPE_F16 (default) or F32 */
    bool weights_int8;      /* the linear layers as int8 (--precision int8; storage F16) */
    int slots;              /* KV-cache slots = sequences (beams) live at once; default 8 */
    int context;            /* tokens per slot (prompt + new); 0 = the model's max_positions */
    size_t kv_tokens;       /* KV-cache pool, tokens in all (backends with a paged cache, the
                              * OpenCL one); 0 = slots x context. Smaller lets more slots run
                              * short sequences; a sequence waits until its tokens fit */
    bool kv_half;           /* the KV cache in half precision (OpenCL; --kv-cache f16) */
    const char *tune_db;    /* the tuning database (--tune-db, ke_backend_options.tune_db),
                              * borrowed; NULL = the default one, "" = none */
    const char *gemm_tune;  /* OpenCL GEMM tunables (--gemm-tune, ke_backend_options.gemm_tune),
                              * borrowed; NULL = the device's own */
    int vision_chunk;       /* images one vision pass holds (--vision-chunk, ke_backend_options.
                              * vision_chunk); 0 = the backend's default for the device */
    bool autorotate;        /* EXIF orientation; default false (as `kosmos run`) */
    uint64_t max_pixels;    /* decoder pixel limit; 0 = the decoder's default (100 MP) */
    size_t max_image_bytes; /* largest image read from an image_uri; default 64 MiB */
    /* Folders an image_uri may be read beneath (ks_file_read_beneath), borrowed; none = no
     * image_uri is read. kosmos-worker sets its --image-root here, else the broker's. */
    const char *const *image_roots;
    size_t n_image_roots;
} kw_engine_params;

void kw_engine_params_default(kw_engine_params *p);

/* A loaded model on an opened device (value struct; owns everything). */
typedef struct kw_engine {
    kw_model model;
    ke_backend *backend;
    kw_engine_params params; /* strings borrowed from the caller's params */
    uint64_t images_encoded; /* vision passes so far, one per image (for logs and tests) */
    uint64_t batches;        /* vision passes */
} kw_engine;

/* Loads the model and opens the device. On failure *e is empty, with the message. */
ks_status kw_engine_open(kw_engine *e, const kw_engine_params *p);
void kw_engine_close(kw_engine *e);

/* One job of a batch. */
typedef struct kw_job_in {
    const char *job_id; /* borrowed */
    uint32_t attempt;
    const Kosmos__V1__Job *job; /* borrowed; may be NULL (the result then says why) */
    const void *image;          /* the attached frame, borrowed; NULL for inline data or a URI */
    size_t image_len;
    int cancel_reason; /* 0, or the Kosmos__V1__Cancel__Reason that stopped it */
} kw_job_in;

/* Asked at every step for each prompt the scheduler holds (through ke_gen_request.stop) before
 * its job's cancel_reason is read: a test's slow device. May be NULL. */
typedef void kw_batch_poll_fn(void *ctx, const kw_job_in *job);

/* Identity stamped on every result. */
typedef struct kw_result_meta {
    const char *worker_name;
    const char *device_name;
} kw_result_meta;

/* One packed result: the bytes of a WorkerMessage{result} (owned by the caller: free()). */
typedef struct kw_packed {
    uint8_t *data;
    size_t len;
} kw_packed;

typedef struct kw_batch kw_batch;

/* The most images one step encodes (the host's staging is sized for them). */
#define KW_MAX_VISION_CHUNK 64

typedef struct kw_batch_params {
    int vision_chunk;       /* images one step encodes at most, 1..KW_MAX_VISION_CHUNK; default
                             * 0: the backend's vision chunk (ke_backend.vision_chunk), so that
                             * a step's images are one pass on the device */
    int prefill_tokens;     /* prompt tokens one step feeds at most (ke_sched_params); default
                             * 512: a burst of arrivals does not stall the decoding for long */
    kw_batch_poll_fn *poll; /* may be NULL */
    void *poll_ctx;
} kw_batch_params;

void kw_batch_params_default(kw_batch_params *p);

/* A continuous batch on e (borrowed, and meta's strings too, until kw_batch_destroy; nothing else
 * may drive e->backend meanwhile). params may be NULL (the defaults). */
ks_status kw_batch_new(kw_engine *e, const kw_result_meta *meta, const kw_batch_params *params,
                       kw_batch **out);

/* Drops every job without a result (their inputs are the caller's) and the scheduler. */
void kw_batch_destroy(kw_batch **b);

/* Takes a job in: reads and decodes its image, encodes its prompts and checks its parameters
 * now (a failure stays with the job or prompt and comes back in its Result). `in` is borrowed
 * until its kw_batch_done comes back; its cancel_reason may be set meanwhile (a cancel, a
 * deadline, the shutdown grace): the job's sequences stop at the next step and its Result says
 * CANCELLED or EXPIRED (KW_REASON_HANDBACK's too: the caller drops it). KS_ERR_NOMEM (the job is
 * not held) or KS_ERR_DEVICE (the batch failed before: destroy it). */
ks_status kw_batch_add(kw_batch *b, kw_job_in *in);

/* A finished job. */
typedef struct kw_batch_done {
    kw_job_in *in;    /* the kw_batch_add argument, now the caller's again */
    kw_packed packed; /* its Result, the caller's to free (empty when even that failed) */
} kw_batch_done;

/* One step: jobs stopped by their cancel_reason end, one vision pass over at most vision_chunk
 * waiting images, one scheduler step. *done (n entries, valid until the next call) lists the
 * jobs that ended. KS_OK, or the device's error: every job held is then in *done, FAILED and
 * retriable, and the batch only answers KS_ERR_DEVICE from now on. */
ks_status kw_batch_step(kw_batch *b, kw_batch_done **done, size_t *n_done);

/* Jobs held (added, not yet back in a step's done list). */
size_t kw_batch_jobs(const kw_batch *b);

/* A Result for a job that never ran (handed back, refused): every prompt gets `status`.
 * Returns KS_OK or KS_ERR_NOMEM. */
ks_status kw_result_simple(const kw_job_in *job, const kw_result_meta *meta, int status,
                           bool retriable, const char *message, kw_packed *out);

/* Wall clock in unix milliseconds. */
uint64_t kw_unix_ms(void);

#endif
