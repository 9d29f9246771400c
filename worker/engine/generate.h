/* ke_generate: generation as transformers' `generate` does it for Kosmos-2, above the backend
 * seam and shared by every device: greedy (argmax, lowest id on ties), no_repeat_ngram over the
 * whole sequence (prompt included), min/max new tokens, stop at </s>, beam search with HF's
 * defaults (length_penalty 1.0, early_stopping false), and seeded sampling (temperature, top-p).
 *
 * Several requests (different prompts and images, different lengths) run as one batch: one
 * forward per step for all live sequences; each request finishes on its own. Requests that
 * share an image share its image_embeds row block (one vision pass per image).
 *
 * The scheduler (ke_sched) is the engine's continuous batching: requests arrive and leave
 * between steps; each step admits what fits (slots and KV-cache room), feeds prompts in chunks
 * under a token budget, and decodes every running sequence. Greedy decoding keeps each
 * sequence's next token on the device and reads the ids of a step while the next one runs, so
 * the device never waits for the host. A sequence's ids do not depend on what runs beside it
 * (the backend computes every row the same way whatever the batch; see kernels/gemm.cl).
 * ke_generate runs a fixed set of requests through it. */
#ifndef KE_GENERATE_H
#define KE_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "ks_error.h"

typedef struct ke_gen_params {
    int max_new_tokens;       /* default 128 */
    int min_new_tokens;       /* default 0: </s> is masked while fewer were generated */
    int num_beams;            /* 1 = greedy or sampling */
    int no_repeat_ngram_size; /* 0 = off */
    bool do_sample;           /* sample instead of argmax (num_beams must be 1) */
    float temperature;        /* > 0, with do_sample; default 1.0 */
    int top_k;                /* with do_sample: keep the k best (HF's default 50); 0 = off */
    float top_p;              /* (0, 1], with do_sample; default 1.0 = off */
    uint64_t seed;            /* sampling is deterministic for a given seed (own RNG, not
                               * torch's: the same distribution as HF, not the same draws) */
    float length_penalty;     /* beam search, default 1.0 */
    bool early_stopping;      /* beam search, default false */
} ke_gen_params;

/* Fills the defaults above, taking no_repeat_ngram_size, max_new_tokens, num_beams,
 * length_penalty and early_stopping from the model's generation defaults (config may be NULL:
 * the library defaults). */
void ke_gen_params_default(ke_gen_params *p, const ke_config *config);

typedef struct ke_gen_request {
    const int32_t *input_ids;                  /* (len) the processor's ids, borrowed */
    const uint8_t *image_embeds_position_mask; /* (len), exactly latent_query_num ones */
    size_t len;
    int image; /* which image's embeds (ke_generate: index into its images; ke_sched: an id
                * from ke_sched_add_image) */
    ke_gen_params params;
    bool want_prefill_logits; /* keep the raw logits at the last prompt position in
                               * result.prefill_logits_last (the prefill then reads them) */
    /* The caller's stop (a cancel, a deadline, a compute cap), asked once per step while the
     * request runs or waits for slots: true ends this request there, with the ids it has
     * (result.stopped set), and frees its slots; the other requests go on. NULL = never.
     * Called on the thread that steps (ke_generate's, ke_sched_step's). */
    bool (*stop)(void *ctx);
    void *stop_ctx;
} ke_gen_request;

typedef struct ke_gen_result {
    int32_t *ids; /* owned: prompt + generated ids, as HF generate returns them (unpadded) */
    size_t len;
    size_t new_tokens;
    float *prefill_logits_last; /* owned: (vocab) raw logits at the last prompt position, when
                                 * the request wanted them; else NULL */
    bool stopped;               /* ended by its request's stop or ke_sched_stop, not by </s> or
                   * max_new_tokens */
} ke_gen_result;

void ke_gen_result_fini(ke_gen_result *r);

typedef struct ke_gen_stats {
    double prefill_ms;
    double decode_ms;
    int steps;             /* forward calls after the prefill */
    int sampled_on_device; /* sampled tokens decided from a select_sample candidate list */
    int sampled_on_host;   /* ... from the full logits row */
} ke_gen_stats;

/* Runs every request to completion. image_embeds is (n_images, latent_query_num, embed_dim) as
 * encode_images produced it. results[i] belongs to requests[i] (caller finis them; on failure
 * they are all empty). stats may be NULL. A request takes num_beams slots; requests that do
 * not fit in the free slots wait (FIFO) and join the running batch when earlier ones finish.
 * Everything is validated before any work: invalid parameters or inputs (KS_ERR_INVALID), a
 * request needing more slots than the backend has or prompt + max_new_tokens above
 * slot_capacity (KS_ERR_LIMIT), sampling with beams (KS_ERR_UNSUPPORTED); then a backend
 * failure is returned as is. The backend's slots must be empty on entry; they are on return. */
ks_status ke_generate(ke_backend *backend, const float *image_embeds, int n_images,
                      const ke_gen_request *requests, int n_requests, ke_gen_result *results,
                      ke_gen_stats *stats);

/* ---- the scheduler: continuous batching ------------------------------------------------ */

typedef struct ke_sched ke_sched;

typedef struct ke_sched_params {
    int prefill_tokens; /* the most prompt tokens one step feeds (0: no limit): a long prompt
                         * takes several steps while running sequences go on decoding */
} ke_sched_params;

/* A scheduler over `backend` (borrowed; its slots must be empty, and it must outlive the
 * scheduler). params may be NULL (no prefill limit). */
ks_status ke_sched_new(ke_backend *backend, const ke_sched_params *params, ke_sched **out);

/* Releases everything, the slots of unfinished requests included. Accepts NULL. */
void ke_sched_destroy(ke_sched **s);

/* Copies one image's embeds (latent_query_num x embed_dim floats) and gives its id. The caller
 * holds a reference until ke_sched_drop_image; each request naming it holds one until it ends,
 * and the copy is freed with the last. */
ks_status ke_sched_add_image(ke_sched *s, const float *embeds, int *image);
void ke_sched_drop_image(ke_sched *s, int image);

/* Queues a request, validated as ke_generate validates them (the same errors). Its arrays are
 * borrowed until its result comes back; `tag` comes back with it. */
ks_status ke_sched_add(ke_sched *s, const ke_gen_request *request, uint64_t tag);

/* Ends request `tag` at the next step with what it generated so far (a queued one with no new
 * tokens); its result says stopped. Unknown tags are ignored. */
void ke_sched_stop(ke_sched *s, uint64_t tag);

typedef struct ke_sched_done {
    uint64_t tag;
    ke_gen_result result; /* the caller's to take (and fini); else freed at the next step */
    bool stopped;         /* by ke_sched_stop or the request's stop (as result.stopped) */
} ke_sched_done;

/* Runs one step and gives the requests that ended in it: *done (n entries) belongs to the
 * scheduler until the next call. A backend failure is returned as is; the scheduler should
 * then be destroyed. */
ks_status ke_sched_step(ke_sched *s, ke_sched_done **done, int *n_done);

/* Requests queued or running (0: idle). */
int ke_sched_pending(const ke_sched *s);

/* Totals since the scheduler started. */
void ke_sched_stats(const ke_sched *s, ke_gen_stats *out);

/* ---- sampling, as ke_generate does it (exposed for backends' tests) --------------------
 * One code path: the full row is a candidate list holding every token, so a device's short list
 * and the host's row cannot diverge (see docs/opencl.md, "Sampling on the device"). */

/* ke_generate's RNG: xoshiro256** seeded through splitmix64, one uniform draw per token. */
typedef struct ke_rng {
    uint64_t s[4];
} ke_rng;

void ke_rng_seed(ke_rng *r, uint64_t seed);

/* The token sampled from a full row of processed logits (n-gram ban and </s> mask applied):
 * temperature, top-k, top-p, one draw. scores (vocab) is overwritten. -1 only without memory. */
int ke_sample_row(const ke_gen_params *p, float *scores, int vocab, ke_rng *r);

/* What to ask select_sample for a sampling row: the candidates wanted (0: the list could never
 * decide, take the full row) and *tail_temperature for ke_select_row. */
int ke_sample_candidates_wanted(const ke_gen_params *p, int vocab, float *tail_temperature);

/* The token ke_sample_row gives for the row behind a select_sample list, or -1 when the list
 * cannot prove it (a tie or the top-p cut too close to call, a nucleus reaching past the list,
 * an invalid row): the RNG is then untouched and the caller samples the full row. */
int ke_sample_candidates(const ke_gen_params *p, const ke_select_out *o, int vocab, ke_rng *r);

#endif
