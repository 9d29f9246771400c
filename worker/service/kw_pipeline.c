/* kw_pipeline: see kw_pipeline.h. */
#include "kw_pipeline.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image_decode.h"
#include "pixels.h"

double kw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ---- model ---------------------------------------------------------------------------------- */

ks_status kw_model_load(const char *model_dir, ke_dtype storage, kw_model *out)
{
    ks_status status = KS_OK;
    memset(out, 0, sizeof *out);
    if ((status = kt_tokenizer_new(model_dir, &out->tokenizer)) != KS_OK)
        return status;
    ke_model_options options = {.storage = storage};
    if ((status = ke_model_load(model_dir, &options, &out->model)) != KS_OK) {
        kt_tokenizer_destroy(&out->tokenizer);
        return status;
    }
    const ke_config *config = &out->model->config;
    if ((size_t)config->text.vocab_size != kt_tokenizer_vocab_size(out->tokenizer)) {
        ks_status st = ks_fail(KS_ERR_FORMAT,
                               "%s: config.json's vocab_size %d does not match "
                               "the tokenizer's %zu ids",
                               model_dir, config->text.vocab_size,
                               kt_tokenizer_vocab_size(out->tokenizer));
        kw_model_fini(out);
        return st;
    }
    return KS_OK;
}

void kw_model_fini(kw_model *m)
{
    ke_model_destroy(&m->model);
    kt_tokenizer_destroy(&m->tokenizer);
}

/* ---- image ---------------------------------------------------------------------------------- */

void kw_image_init(kw_image *img) { memset(img, 0, sizeof *img); }

void kw_image_fini(kw_image *img)
{
    free(img->pixels);
    ki_image_destroy(&img->decoded);
    kw_image_init(img);
}

ks_status kw_image_decode(kw_image *img, const void *bytes, size_t len,
                          const kw_image_params *params, const ke_config *config)
{
    kw_image_init(img);
    const ke_vision_config *v = &config->vision;
    if (v->image_size != KI_IMAGE_SIZE || v->channels != 3)
        return ks_fail(KS_ERR_UNSUPPORTED,
                       "config.json asks for %dx%d images with %d channels; the image pipeline "
                       "makes %dx%d RGB",
                       v->image_size, v->image_size, v->channels, KI_IMAGE_SIZE, KI_IMAGE_SIZE);
    kw_image_params defaults = {0};
    if (!params)
        params = &defaults;
    ki_decode_params decode;
    ki_decode_params_default(&decode);
    decode.autorotate = params->autorotate;
    if (params->max_pixels)
        decode.max_pixels = params->max_pixels;

    double t0 = kw_now_ms(), decode_ms = 0;
    ki_pixels *pixels = malloc(sizeof *pixels);
    ks_status st = pixels ? KS_OK : ks_fail(KS_ERR_NOMEM, "out of memory for the pixels");
    if (st == KS_OK && params->keep_decoded) {
        /* The whole RGB image is wanted (boxes drawn on it): decode it, then resize. */
        st = ki_image_decode(bytes, len, &decode, &img->decoded);
        decode_ms = kw_now_ms() - t0;
        if (st == KS_OK)
            st = ki_pixels_from_image(img->decoded, pixels);
    } else if (st == KS_OK) {
        /* Row by row: the decoded image is never in memory whole (docs/operations.md). */
        st = ki_pixels_from_buffer(bytes, len, &decode, pixels, &decode_ms);
    }
    if (st == KS_OK && !(img->pixels = malloc(sizeof pixels->values)))
        st = ks_fail(KS_ERR_NOMEM, "out of memory for the pixels");
    if (st == KS_OK) {
        memcpy(img->pixels, pixels->values, sizeof pixels->values);
        img->width = pixels->src_width;
        img->height = pixels->src_height;
        img->decode_ms = decode_ms;
        img->preprocess_ms = kw_now_ms() - t0 - decode_ms;
    }
    free(pixels);
    if (st != KS_OK)
        kw_image_fini(img);
    return st;
}

/* ---- generation parameters ------------------------------------------------------------------ */

void kw_gen_params(const ke_config *config, const kw_gen_overrides *o, ke_gen_params *out)
{
    ke_gen_params_default(out, config);
    if (!o)
        return;
    if (o->has_max_new_tokens)
        out->max_new_tokens = o->max_new_tokens;
    if (o->has_min_new_tokens)
        out->min_new_tokens = o->min_new_tokens;
    if (o->has_num_beams)
        out->num_beams = o->num_beams;
    if (o->has_no_repeat_ngram_size)
        out->no_repeat_ngram_size = o->no_repeat_ngram_size;
    if (o->do_sample) {
        out->do_sample = true;
        if (o->has_temperature)
            out->temperature = (float)o->temperature;
        if (o->has_top_p)
            out->top_p = (float)o->top_p;
        if (o->has_top_k)
            out->top_k = o->top_k;
        if (o->has_seed)
            out->seed = o->seed;
    }
}

/* ---- output --------------------------------------------------------------------------------- */

void kw_text_init(kw_text *t)
{
    ks_buf_init(&t->decoded);
    ks_buf_init(&t->raw);
    kt_grounding_init(&t->grounding);
}

void kw_text_fini(kw_text *t)
{
    ks_buf_fini(&t->decoded);
    ks_buf_fini(&t->raw);
    kt_grounding_fini(&t->grounding);
}

ks_status kw_text_from_ids(const kt_tokenizer *t, const int32_t *ids, size_t n, kw_text *out)
{
    kw_text_fini(out);
    /* The engine's text: special tokens skipped, as Hugging Face's examples decode. */
    kt_decode_options decode = {.skip_special_tokens = true, .clean_up_spaces = -1};
    ks_status st = kt_tokenizer_decode(t, ids, n, &decode, &out->decoded);
    const char *text = out->decoded.data ? out->decoded.data : "";
    if (st == KS_OK)
        st = kt_postprocess_raw(text, out->decoded.len, &out->raw);
    if (st == KS_OK)
        st = kt_postprocess(text, out->decoded.len, &out->grounding);
    if (st != KS_OK)
        kw_text_fini(out);
    return st;
}
