/* ke_backend: the one seam between the model's math and a compute device. The plain-C
 * reference path (backend_ref.c, `--device ref`) and the OpenCL path implement the same calls;
 * everything above it (generation, batching, beam search) is shared and device-agnostic.
 *
 * The KV cache is organised in slots: a sequence owns one slot from its prefill until it is
 * released, and each slot has its own length, so sequences of different lengths run in one
 * batch without pad rows and sequences can join and leave a running batch. Each sequence's
 * result equals HF run on it alone. (HF 5.17's own left-padded batch can differ from that: it
 * gives a decoded token the position pad_id + 1 + padded cache length, so pads shift it.)
 * A slot's cache may be paged (the OpenCL backend): it holds room for the tokens reserved for
 * it (reserve), not a whole context's worth.
 *
 * Decoding without the host in the loop: a greedy select leaves each row's id on the device as
 * its slot's next token, so the next forward can feed it (ke_step.from_device) before the host
 * has read it; select_greedy_enqueue returns before the ids exist, and wait_selected delivers
 * them later. A backend's per-slot id history (what the n-gram ban reads) is the ids fed to the
 * slot, in order. Not thread-safe: one thread drives a backend. */
#ifndef KE_BACKEND_H
#define KE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"
#include "model.h"

typedef struct ke_backend ke_backend;

/* One forward step over several sequences at once: for each sequence, n_tokens[s] new tokens
 * appended to its slot's cache (the whole prompt at prefill, 1 while decoding). */
typedef struct ke_step {
    int n_seqs;
    const int *slots;          /* [n_seqs] KV-cache slot of each sequence (distinct) */
    const int *n_tokens;       /* [n_seqs] */
    const int32_t *ids;        /* [total tokens], sequence after sequence */
    const int32_t *positions;  /* [total tokens], HF position ids (2, 3, ...) */
    const uint8_t *image_mask; /* [total tokens] or NULL: 1 = take the next image_embeds row */
    const float *image_embeds; /* (rows, embed_dim): the rows consumed in token order */
    /* [n_seqs] or NULL: 1 = the sequence's one new token is the id the last greedy select
     * chose for its slot, still on the device (its ids/positions entries are ignored; its
     * position is pad_id + 1 + tokens cached, or pad_id when that id is pad) */
    const uint8_t *from_device;
} ke_step;

/* Optional intermediate results for --dump and tests; any pointer may be NULL. */
typedef struct ke_vision_taps {
    float *post_layernorm; /* (n_images, patches + 1, vision hidden), before the L2 norm */
} ke_vision_taps;

/* One sequence of a select_greedy or select_sample call. */
typedef struct ke_select_row {
    int row;            /* logits row of the last forward (its sequence index in the step) */
    int slot;           /* the sequence's slot: its history there is ids[0 .. len) */
    const int32_t *ids; /* the sequence so far (prompt + generated), borrowed for the call;
                           * may be NULL for a backend that keeps the history itself */
    size_t len;
    int no_repeat_ngram_size; /* 0 = off */
    bool ban_eos;             /* fewer than min_new_tokens generated: </s> is masked */
    /* select_sample only (select_greedy ignores them): */
    int candidates;         /* 0: greedy, the argmax into out.id; > 0: a candidate list of at most
                           * this many tokens (at most vocab) */
    float tail_temperature; /* candidate rows: > 0 also bounds the mass of the tokens left out
                             * at this temperature (out.tail_lo/hi); 0: no bounds */
} ke_select_row;

/* What select_sample gives for one row. For candidate rows the caller provides values and ids
 * with room for rows[i].candidates entries. The candidates are processed logits (n-gram ban and
 * </s> mask applied, no temperature), in no particular order: the n best of the row up to the
 * ties at the boundary. Every token left out has a value <= rest_max, and none is larger than a
 * candidate (a boundary tie with more tokens than fit leaves all of them out). */
typedef struct ke_select_out {
    int32_t id;     /* greedy rows: the argmax, lowest id on ties */
    float *values;  /* [candidates] caller's buffer */
    int32_t *ids;   /* [candidates] caller's buffer */
    int n;          /* candidates returned (0 possible: a tie wider than the list) */
    float rest_max; /* the largest value left out; -inf when none (or all -inf) */
    /* tail_temperature T > 0: bounds on the sum, over the tokens left out, of
     * expf(v / T - max / T) as the host computes it (f32 quotients, f32 difference; max the
     * row's largest value): tail_lo <= sum <= tail_hi. Else 0 and +inf. */
    double tail_lo, tail_hi;
    bool valid; /* false: the row holds NaN or +inf; the host must take the full row */
} ke_select_out;

/* What a backend reports about itself (ke_backend_stats_get). Zero / NULL = not applicable. */
typedef struct ke_backend_stats {
    const char *device;       /* the device's name, borrowed from the backend */
    unsigned programs_built;  /* OpenCL programs compiled from source at start */
    unsigned programs_cached; /* ... loaded from the on-disk binary cache instead */
    double program_build_ms;  /* wall time spent building/loading programs */
    size_t device_bytes;      /* device memory held: weights, KV cache, scratch */
    size_t weight_bytes;      /* ... of which the model's weights (written, so resident even
                                * where a device lives in host memory and commits lazily) */
    const char *gemm;         /* the large matrix products' engine and why ("simt: ...",
                                * "mma-ptx: the 16x8x16 probe matched ..."), borrowed */
    const char *tunables;     /* where the GEMM's tunables came from ("built-in row cpu",
                                * "from PATH (entry for DEVICE, driver D): TUNE", "--gemm-tune
                                * T"; cl_gemm_tune.h), borrowed */
} ke_backend_stats;

typedef struct ke_backend_ops {
    const char *name;

    /* pixels (n, channels, image, image) f32 -> image_embeds (n, latent_query_num, embed_dim). */
    ks_status (*encode_images)(ke_backend *b, const float *pixels, int n, float *image_embeds,
                               const ke_vision_taps *taps);

    /* Runs `step`, appending to each slot's cache; writes the logits of the last new token of
     * every sequence to logits (n_seqs, vocab). Fails with KS_ERR_LIMIT if a slot would exceed
     * its capacity. logits may be NULL only for a backend with select_greedy or select_sample
     * (below). */
    ks_status (*forward)(ke_backend *b, const ke_step *step, float *logits);

    /* Makes slot dst a copy of slot src (beam search reorders beams this way). */
    ks_status (*copy_slot)(ke_backend *b, int src, int dst);

    /* Empties a slot for the next sequence. */
    void (*release_slot)(ke_backend *b, int slot);

    void (*destroy)(ke_backend *b);

    /* ---- optional: NULL when a backend has no such operation ---------------------------- */

    /* Greedy selection on the device after forward(b, step, NULL), which then keeps the
     * logits on the device instead of writing them: for each of the n rows, HF's
     * no_repeat_ngram ban over rows[i].ids, </s> masked when rows[i].ban_eos, then the argmax
     * (lowest id on ties) into ids[i]; only the ids come back. One select (this or
     * select_sample) per forward; the bans stay in the logits. Without it (NULL), forward always
     * writes the logits and generation selects on the host; the results are the same. */
    ks_status (*select_greedy)(ke_backend *b, const ke_select_row *rows, int n, int32_t *ids);

    /* Facts for timings and logs (see ke_backend_stats); fills *out. */
    void (*stats)(const ke_backend *b, ke_backend_stats *out);

    /* Sampling's selection on the device, after forward(b, step, NULL) (one select per
     * forward, like select_greedy): for each row the same n-gram ban and </s> mask, then for
     * greedy rows (candidates 0) the argmax into out[i].id, for the others a short candidate
     * list (ke_select_out), so that only it comes back. The host finishes temperature, top-k,
     * top-p and the seeded draw on the list with the code of its full path, or, when the list
     * cannot decide exactly (generate.c: ke_sample_candidates), reads the row with
     * fetch_logits. Both or neither are set. */
    ks_status (*select_sample)(ke_backend *b, const ke_select_row *rows, int n, ke_select_out *out);

    /* After forward(b, step, NULL) and at most one select: copies logits row `row` (with that
     * select's bans applied to its rows) into out (vocab floats). */
    ks_status (*fetch_logits)(ke_backend *b, int row, float *out);

    /* Cache room for `tokens` tokens in an empty slot, held until release_slot: KS_ERR_LIMIT
     * when the cache cannot hold them now (the caller waits for others to finish). Without it
     * (NULL) every slot holds slot_capacity tokens from the start. A forward past a slot's
     * reservation reserves more if it can. */
    ks_status (*reserve)(ke_backend *b, int slot, int tokens);

    /* select_greedy without waiting for the ids: enqueues the selection and returns; `ids`
     * must stay valid until the matching wait_selected, which blocks until the oldest
     * outstanding selection's ids are in its array. At most KE_MAX_OUTSTANDING selections are
     * outstanding. Both or neither are set; select_greedy must be set too. */
    ks_status (*select_greedy_enqueue)(ke_backend *b, const ke_select_row *rows, int n,
                                       int32_t *ids);
    ks_status (*wait_selected)(ke_backend *b);
} ke_backend_ops;

#define KE_MAX_OUTSTANDING 2

/* The common head of every backend; concrete backends embed it first. */
struct ke_backend {
    const ke_backend_ops *ops;
    const ke_model *model; /* borrowed; outlives the backend */
    int slots;             /* KV slots */
    int slot_capacity;     /* tokens per slot */
    /* images encode_images holds at once: it runs more in passes of this many
     * (ke_backend_options.vision_chunk, or the backend's default for its device); the worker's
     * default for the images one scheduler step encodes */
    int vision_chunk;
};

/* The engine of the matrix products with many rows (vision, prefill) on an OpenCL device
 * (--gemm; docs/gemm.md, "Paths"). AUTO: SIMT on every device until the PTX engine's fidelity
 * is measured on a GPU; SIMT: gemm.cl's kernels; MMA_EMULATED: the matrix-unit engine with its
 * warp operations emulated in plain OpenCL C (any device; slow: for tests); MMA_PTX: tensor
 * cores through inline PTX (NVIDIA; opening fails when the probe does). The reference backend
 * ignores it. */
typedef enum ke_gemm_path {
    KE_GEMM_AUTO = 0,
    KE_GEMM_SIMT,
    KE_GEMM_MMA_EMULATED,
    KE_GEMM_MMA_PTX
} ke_gemm_path;

/* The path by its command-line name: auto, simt, mma-emulated, mma-ptx. false (and *path
 * untouched) for another name. */
bool ke_gemm_path_parse(const char *name, ke_gemm_path *path);

/* The command-line name of a path (static storage). */
const char *ke_gemm_path_name(ke_gemm_path path);

typedef struct ke_backend_options {
    int slots;         /* how many sequences can be live at once */
    int slot_capacity; /* max tokens per sequence (prompt + generated) */
    /* The KV cache (backends with reserve): tokens it holds in all (0: slots * slot_capacity),
     * stored in half precision (kv_half) or f32 */
    size_t kv_tokens;
    bool kv_half;
    bool profiling; /* OpenCL: device times in the profile (kosmos bench --profile) */
    /* OpenCL: the GEMM tunables "<row>[,key=value...]" instead of the device's own row
     * (--gemm-tune; docs/gemm.md, checked by ke_backend_gemm_tune_check), borrowed for the
     * call that opens the backend; NULL or "": the device's row. The reference backend has no
     * GEMM tunables and ignores it. */
    const char *gemm_tune;
    /* OpenCL, without gemm_tune: the tuning database `kosmos tune` writes, whose entry for the
     * device and driver replaces the device's row (--tune-db; docs/gemm.md, "Tuning";
     * cl_gemm_tune.h), borrowed for the call: NULL = <cache>/gemm-tune.json, "" = none. A
     * missing database is silent, an unusable one a warning in ke_backend_stats.tunables. */
    const char *tune_db;
    ke_gemm_path gemm; /* OpenCL: the large products' engine (default auto) */
    /* The resampler's cross-attention. false (default): as transformers 5.17 computes it with
     * its default SDPA attention - x_attn has is_causal=True and no mask, so SDPA keeps the
     * first latent_query_num K/V rows and masks them causally: latent query i sees rows 0..i
     * (the class token and the first patches) only. true: every query sees all 257 + 64 rows,
     * as HF's eager attention, older transformers and the original unilm model do. */
    bool resampler_full_attention;
    /* OpenCL: the vision encoder, the resampler and the prefill attend with attention.cl and
     * paged_attention (one work-group per query row) instead of flash_attention.cl, as before
     * it existed: for A/B benchmarks and tests. Prefill logits are the same bits either way. */
    bool no_flash_attention;
    /* --precision int8: the linear layers' matrices as int8 codes with a scale per output
     * channel (quant.h, which names the weights), the rest in the model's storage (which must
     * be f16 on OpenCL devices); activations stay f32. Half the memory of those weights, at some
     * cost in agreement with fp16 (docs/benchmarks.md). Never used by a golden test. */
    bool weights_int8;
    /* encode_images runs n images in passes of at most this many, so that the memory of the
     * vision activations is bounded whatever n is (the OpenCL backend keeps one pass's buffers
     * between calls); 0: the backend's default for its device (ke_backend.vision_chunk says
     * which). Each image's embeddings are the same bits whatever the chunk: every row of the
     * vision tower and the resampler depends on its own image only. Negative: KS_ERR_INVALID. */
    int vision_chunk;
} ke_backend_options;

/* The KV cache's storage by its command-line name: "f32" (the default) or "f16" (half the
 * memory, OpenCL devices; the reference backend keeps f32). f16 keeps every golden's ids and
 * the full-size fidelity check's 64 ids, but moves logits by up to 1.2e-3, past the goldens'
 * 1e-3, so it is an opt-in. false (and *kv_half untouched) for another name. */
bool ke_kv_cache_parse(const char *name, bool *kv_half);

/* The weights' precision by its command-line name (--precision): "fp16" (the default, alias
 * "f16": stored as half, f32 arithmetic), "fp32" ("f32") or "int8" (the linear layers as int8,
 * the rest as half). Sets the model's storage dtype (ke_model_options.storage) and
 * ke_backend_options.weights_int8; false (both untouched) for another name. */
bool ke_precision_parse(const char *name, ke_dtype *storage, bool *weights_int8);

/* The command-line name of a precision: "fp16", "fp32" or "int8". Static storage. */
const char *ke_precision_name(ke_dtype storage, bool weights_int8);

/* The plain-C reference backend, into *out (caller owns; ke_backend_destroy). `model` is
 * borrowed and must outlive it. KS_ERR_INVALID (bad options), KS_ERR_UNSUPPORTED (a config it
 * cannot run), KS_ERR_NOMEM; *out is then NULL. */
ks_status ke_backend_ref_new(const ke_model *model, const ke_backend_options *options,
                             ke_backend **out);

/* Fills *out from b->ops->stats, or with the backend's name only when it has none. */
void ke_backend_stats_get(const ke_backend *b, ke_backend_stats *out);

/* Checks a step against the backend's slots (slot_len[s]: tokens already in slot s): slots in
 * range and distinct, at least one new token per sequence, capacity, ids in the vocabulary,
 * positions >= 0, image rows present. Sets *total to the step's token count. For backends. */
ks_status ke_step_check(const ke_backend *b, const ke_step *step, const int *slot_len,
                        size_t *total);

/* Destroys any backend; accepts NULL and sets *b to NULL. */
void ke_backend_destroy(ke_backend **b);

#endif
