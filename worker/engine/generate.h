/* ke_generate: generation as transformers' `generate` does it for Kosmos-2, above the backend
 * seam and shared by every device: greedy (argmax, lowest id on ties), no_repeat_ngram over the
 * whole sequence (prompt included), min/max new tokens, stop at </s>, beam search with HF's
 * defaults (length_penalty 1.0, early_stopping false), and seeded sampling (temperature, top-p).
 *
 * Several requests (different prompts and images, different lengths) run as one batch: one
 * forward per step for all live sequences; each request finishes on its own. Requests that
 * share an image share its image_embeds row block (one vision pass per image). */
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
    int image; /* which image's embeds (index into the images of ke_generate) */
    ke_gen_params params;
    /* The caller's stop (a cancel, a deadline, a compute cap), asked once per step while the
     * request runs or waits for slots: true ends this request there, with the ids it has
     * (result.stopped set), and frees its slots; the other requests go on. NULL = never.
     * Called on ke_generate's thread. */
    bool (*stop)(void *ctx);
    void *stop_ctx;
} ke_gen_request;

typedef struct ke_gen_result {
    int32_t *ids; /* owned: prompt + generated ids, as HF generate returns them (unpadded) */
    size_t len;
    size_t new_tokens;
    float *prefill_logits_last; /* owned: (vocab) raw logits at the last prompt position */
    bool stopped; /* ended by its request's stop, not by </s> or max_new_tokens */
} ke_gen_result;

void ke_gen_result_fini(ke_gen_result *r);

typedef struct ke_gen_stats {
    double prefill_ms;
    double decode_ms;
    int steps; /* forward calls after the prefill */
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
