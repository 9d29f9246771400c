/* kw_pipeline: the Kosmos-2 inference pipeline shared by `kosmos run` (the single-shot CLI) and
 * kosmos-worker (the farm), so that both give the same ids, text and entities for the same
 * input: loading the tokenizer and weights, image bytes -> pixel_values, generation parameters
 * (overrides on the model's defaults), and generated ids -> decoded text, raw caption and
 * grounded entities. Not here: ZeroMQ, protobuf, JSON output, device selection
 * (backend_open.h) or the batch loop itself (generate.h). No global state; thread-compatible
 * (one thread per kw_model at a time, as the backend).
 *
 * Module prefix: kw_ (library kosmos_pipeline). */
#ifndef KW_PIPELINE_H
#define KW_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "generate.h"
#include "ks_buf.h"
#include "ks_error.h"
#include "model.h"
#include "postprocess.h"
#include "tokenizer.h"

typedef struct ki_image ki_image;

/* ---- model ---------------------------------------------------------------------------------- */

/* The tokenizer and weights of one checkpoint folder (value struct; owns both). */
typedef struct kw_model {
    kt_tokenizer *tokenizer;
    ke_model *model;
} kw_model;

/* Loads DIR's tokenizer and weights (stored as `storage`) and checks that config.json's
 * vocab_size matches the tokenizer. On failure *out is empty and the message names the file. */
ks_status kw_model_load(const char *model_dir, ke_dtype storage, kw_model *out);
void kw_model_fini(kw_model *m); /* frees both; safe on a zeroed struct */

/* ---- image ---------------------------------------------------------------------------------- */

typedef struct kw_image_params {
    bool autorotate;     /* apply the EXIF orientation; default false, as the reference */
    bool keep_decoded;   /* keep the decoded RGB image (for drawing boxes); default false */
    uint64_t max_pixels; /* width*height above this fails (KS_ERR_LIMIT); 0 = decoder default */
} kw_image_params;

/* One source image and the pixel_values the model sees (value struct). */
typedef struct kw_image {
    int width, height;    /* source image, after EXIF orientation when autorotate */
    float *pixels;        /* owned: (channels, image_size, image_size) pixel_values */
    ki_image *decoded;    /* owned when keep_decoded, else NULL */
    double decode_ms;     /* decoding the bytes */
    double preprocess_ms; /* resize + normalize */
} kw_image;

void kw_image_init(kw_image *img);
void kw_image_fini(kw_image *img); /* frees and re-inits */

/* Decodes `len` bytes (borrowed for the call) and preprocesses them as the reference does.
 * `params` may be NULL for the defaults. Errors: KS_ERR_FORMAT (empty, truncated, corrupt, not
 * an image), KS_ERR_LIMIT (too many pixels, checked from the header before decoding),
 * KS_ERR_UNSUPPORTED (a sample format or a model image shape the pipeline does not make),
 * KS_ERR_NOMEM. On failure *img is left empty. */
ks_status kw_image_decode(kw_image *img, const void *bytes, size_t len,
                          const kw_image_params *params, const ke_config *config);

/* ---- generation parameters ------------------------------------------------------------------ */

/* What a user or a job set explicitly; everything else takes the model's defaults
 * (ke_gen_params_default: generation_config.json, else transformers' defaults). */
typedef struct kw_gen_overrides {
    bool has_max_new_tokens, has_min_new_tokens, has_num_beams, has_no_repeat_ngram_size;
    int max_new_tokens, min_new_tokens, num_beams, no_repeat_ngram_size;
    bool do_sample; /* sampling; the fields below apply only with it */
    bool has_temperature, has_top_p, has_top_k, has_seed;
    double temperature, top_p;
    int top_k;
    uint64_t seed;
} kw_gen_overrides;

/* out = the model's defaults with `o` applied (o may be NULL). Does not validate. */
void kw_gen_params(const ke_config *config, const kw_gen_overrides *o, ke_gen_params *out);

/* ---- output --------------------------------------------------------------------------------- */

/* The text of one generated sequence, as `kosmos run` reports it (value struct). */
typedef struct kw_text {
    ks_buf decoded;         /* tokenizer.decode(ids, skip_special_tokens=True) */
    ks_buf raw;             /* after the last </image>, tags kept */
    kt_grounding grounding; /* post_process_generation: cleaned text + entities */
} kw_text;

void kw_text_init(kw_text *t);
void kw_text_fini(kw_text *t); /* frees and re-inits */

/* Decodes ids[0..n) (the whole sequence, prompt included, as generate returns it) and
 * post-processes it into *out (initialized; old contents freed). Errors from the tokenizer
 * (an id out of range) and the post-processor (malformed UTF-8, limits). */
ks_status kw_text_from_ids(const kt_tokenizer *t, const int32_t *ids, size_t n, kw_text *out);

/* Milliseconds of a monotonic clock, for timings. */
double kw_now_ms(void);

#endif
