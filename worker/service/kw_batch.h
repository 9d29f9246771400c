/* kw_batch: runs a batch of dispatched jobs on one device and turns each into its Result
 * (docs/protocol.md §5.3, §8.3): decodes every image once, runs one vision pass for all the
 * batch's images, then all the prompts of all the jobs through one ke_generate call (prompts of
 * a job share their image's embeds), and post-processes each sequence exactly as `kosmos run`
 * (kw_pipeline). A bad image or prompt fails only its job or prompt, non-retriably, with a
 * message; a device failure fails the batch retriably and is returned to the caller.
 * Not here: sockets and threads (kw_compute.c, kw_io.c).
 *
 * Module prefix: kw_ (library kosmos_worker). */
#ifndef KW_BATCH_H
#define KW_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "ks_error.h"
#include "kosmos.pb-c.h"
#include "kw_pipeline.h"

/* What a worker's engine is made of; defaults from kw_engine_params_default. */
typedef struct kw_engine_params {
    const char *model_dir;   /* checkpoint folder (required) */
    const char *device;      /* ke_backend_open spec; NULL/"" = its default */
    ke_dtype precision;      /* weights storage: KE_DTYPE_F16 (default) or F32 */
    int slots;               /* KV-cache slots = sequences (beams) live at once; default 8 */
    int context;             /* tokens per slot (prompt + new); 0 = the model's max_positions */
    bool autorotate;         /* EXIF orientation; default false (as `kosmos run`) */
    uint64_t max_pixels;     /* decoder pixel limit; 0 = the decoder's default (100 MP) */
    size_t max_image_bytes;  /* largest image read from an image_uri; default 64 MiB */
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
    uint64_t batches;        /* kw_batch_run calls that reached the vision pass */
} kw_engine;

/* Loads the model and opens the device. On failure *e is empty, with the message. */
ks_status kw_engine_open(kw_engine *e, const kw_engine_params *p);
void kw_engine_close(kw_engine *e);

/* One job of a batch. */
typedef struct kw_job_in {
    const char *job_id;          /* borrowed */
    uint32_t attempt;
    const Kosmos__V1__Job *job;  /* borrowed; may be NULL (the result then says why) */
    const void *image;           /* the attached frame, borrowed; NULL for inline data or a URI */
    size_t image_len;
    int cancel_reason;           /* 0, or the Kosmos__V1__Cancel__Reason that stopped it */
} kw_job_in;

/* Called between the phases of a batch (`job` NULL) and at every decode step of each prompt
 * still generating (`job` = its job, through ke_gen_request.stop), so the caller can record
 * cancels and deadlines (set jobs[i].cancel_reason): a job whose reason is set stops within
 * one step, the others go on. May be NULL. */
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

/* Runs jobs[0..n) as one batch and writes out[i] for jobs[i] in every case (also on
 * failure). Returns KS_OK, KS_ERR_NOMEM when a result could not even be built (out[i] may then
 * be empty), or the device's error (KS_ERR_DEVICE, or what the backend returned) when the
 * device failed: every job of the batch is then reported FAILED, retriable, and the worker
 * should stop. */
ks_status kw_batch_run(kw_engine *e, kw_job_in *jobs, size_t n, const kw_result_meta *meta,
                       kw_batch_poll_fn *poll, void *poll_ctx, kw_packed *out);

/* A Result for a job that never ran (handed back, refused): every prompt gets `status`.
 * Returns KS_OK or KS_ERR_NOMEM. */
ks_status kw_result_simple(const kw_job_in *job, const kw_result_meta *meta, int status,
                           bool retriable, const char *message, kw_packed *out);

/* Wall clock in unix milliseconds. */
uint64_t kw_unix_ms(void);

#endif
