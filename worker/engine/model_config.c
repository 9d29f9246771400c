/* ke_config: config.json + generation_config.json of a Kosmos-2 checkpoint -> ke_config.
 *
 * Mirrors transformers 5.17's Kosmos2Config / Kosmos2TextConfig / Kosmos2VisionConfig: a field
 * absent from the file takes the class default (which are the real checkpoint's values), the
 * text config accepts HF's attribute_map aliases (hidden_size, num_attention_heads,
 * num_hidden_layers). Values are range-checked so that later size arithmetic cannot overflow.
 * Not here: the weights (model.c). */
#include "model_config.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ks_file.h"

#define KE_MAX_DIM (1 << 20) /* any width, head count, image size */
#define KE_MAX_LAYERS 4096
#define KE_MAX_VOCAB (1 << 24)
#define KE_MAX_JSON (16u << 20) /* config files are a few KB */

typedef struct reader {
    const char *source;  /* file name for messages */
    const char *section; /* "text_config", "vision_config" or "" */
} reader;

static const char *dot(const reader *r) { return r->section[0] ? "." : ""; }

/* An int field; absent or null keeps *out. */
static ks_status get_int(const reader *r, const json_t *obj, const char *key, int lo, int hi,
                         int *out)
{
    const json_t *v = obj ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v))
        return KS_OK;
    if (!json_is_integer(v))
        return ks_fail(KS_ERR_FORMAT, "%s: %s%s%s must be an integer", r->source, r->section,
                       dot(r), key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return ks_fail(KS_ERR_FORMAT, "%s: %s%s%s = %lld is out of range [%d, %d]", r->source,
                       r->section, dot(r), key, (long long)x, lo, hi);
    *out = (int)x;
    return KS_OK;
}

/* An int under its name or its HF alias; both present and different is an error. */
static ks_status get_int_alias(const reader *r, const json_t *obj, const char *key,
                               const char *alias, int lo, int hi, int *out)
{
    int a = *out, b = *out;
    ks_status st = get_int(r, obj, key, lo, hi, &a);
    if (st == KS_OK)
        st = get_int(r, obj, alias, lo, hi, &b);
    if (st != KS_OK)
        return st;
    int has_a = obj && json_object_get(obj, key) && !json_is_null(json_object_get(obj, key));
    int has_b = obj && json_object_get(obj, alias) && !json_is_null(json_object_get(obj, alias));
    if (has_a && has_b && a != b)
        return ks_fail(KS_ERR_FORMAT, "%s: %s.%s = %d and its alias %s = %d disagree", r->source,
                       r->section, key, a, alias, b);
    *out = has_a ? a : b;
    return KS_OK;
}

static ks_status get_float(const reader *r, const json_t *obj, const char *key, float *out)
{
    const json_t *v = obj ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v))
        return KS_OK;
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return ks_fail(KS_ERR_FORMAT, "%s: %s%s%s must be a finite number", r->source, r->section,
                       dot(r), key);
    *out = (float)json_number_value(v);
    return KS_OK;
}

static ks_status get_bool(const reader *r, const json_t *obj, const char *key, bool *out)
{
    const json_t *v = obj ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v))
        return KS_OK;
    if (!json_is_boolean(v))
        return ks_fail(KS_ERR_FORMAT, "%s: %s%s%s must be true or false", r->source, r->section,
                       dot(r), key);
    *out = json_is_true(v);
    return KS_OK;
}

/* A token id: an integer, null (-1: none) or, for eos, a list whose first entry is taken. */
static ks_status get_token(const reader *r, const json_t *obj, const char *key, int vocab, int *out)
{
    const json_t *v = obj ? json_object_get(obj, key) : NULL;
    if (!v)
        return KS_OK;
    if (json_is_null(v)) {
        *out = -1;
        return KS_OK;
    }
    if (json_is_array(v) && json_array_size(v) > 0)
        v = json_array_get(v, 0);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
        return ks_fail(KS_ERR_FORMAT, "%s: %s%s%s must be a token id in [0, %d)", r->source,
                       r->section, dot(r), key, vocab);
    *out = (int)json_integer_value(v);
    return KS_OK;
}

static ks_status get_activation(const reader *r, const json_t *obj, const char *key,
                                ke_activation *out)
{
    const json_t *v = obj ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v))
        return KS_OK;
    const char *s = json_string_value(v);
    if (!s)
        return ks_fail(KS_ERR_FORMAT, "%s: %s.%s must be a string", r->source, r->section, key);
    if (strcmp(s, "gelu") == 0)
        *out = KE_ACT_GELU;
    else if (strcmp(s, "quick_gelu") == 0)
        *out = KE_ACT_QUICK_GELU;
    else if (strcmp(s, "gelu_new") == 0 || strcmp(s, "gelu_pytorch_tanh") == 0)
        *out = KE_ACT_GELU_TANH;
    else if (strcmp(s, "relu") == 0)
        *out = KE_ACT_RELU;
    else
        return ks_fail(KS_ERR_UNSUPPORTED, "%s: %s.%s = \"%s\" is not supported", r->source,
                       r->section, key, s);
    return KS_OK;
}

/* image_size / patch_size: an int or a square [n, n]. */
static ks_status get_square(const reader *r, const json_t *obj, const char *key, int *out)
{
    const json_t *v = obj ? json_object_get(obj, key) : NULL;
    if (!v || !json_is_array(v))
        return get_int(r, obj, key, 1, KE_MAX_DIM, out);
    const json_t *h = json_array_get(v, 0), *w = json_array_get(v, 1);
    if (json_array_size(v) != 2 || !json_is_integer(h) || !json_is_integer(w) ||
        json_integer_value(h) != json_integer_value(w) || json_integer_value(h) < 1 ||
        json_integer_value(h) > KE_MAX_DIM)
        return ks_fail(KS_ERR_UNSUPPORTED,
                       "%s: %s.%s must be a positive integer or a square [n, n]", r->source,
                       r->section, key);
    *out = (int)json_integer_value(h);
    return KS_OK;
}

static void set_defaults(ke_config *c)
{
    memset(c, 0, sizeof *c);
    /* Kosmos2VisionConfig() */
    c->vision.hidden_size = 1024;
    c->vision.intermediate_size = 4096;
    c->vision.layers = 24;
    c->vision.heads = 16;
    c->vision.channels = 3;
    c->vision.image_size = 224;
    c->vision.patch_size = 14;
    c->vision.layer_norm_eps = 1e-5f;
    c->vision.activation = KE_ACT_QUICK_GELU;
    /* Kosmos2TextConfig() */
    c->text.vocab_size = 65037;
    c->text.embed_dim = 2048;
    c->text.layers = 24;
    c->text.heads = 32;
    c->text.ffn_dim = 8192;
    c->text.max_positions = 2048;
    c->text.pad_id = 1;
    c->text.bos_id = 0;
    c->text.eos_id = 2;
    c->text.layer_norm_eps = 1e-5f;
    c->text.activation = KE_ACT_GELU;
    c->text.scale_embedding = true;
    c->text.tie_word_embeddings = true;
    c->latent_query_num = 64;
    c->generation.no_repeat_ngram_size = 0;
    c->generation.max_new_tokens = 128;
    c->generation.num_beams = 1;
    c->generation.length_penalty = 1.0f;
    c->generation.early_stopping = false;
}

static ks_status parse_vision(const char *source, const json_t *v, ke_vision_config *c)
{
    reader r = {source, "vision_config"};
    if (v && !json_is_object(v))
        return ks_fail(KS_ERR_FORMAT, "%s: vision_config is not an object", source);
    ks_status st;
    if ((st = get_int(&r, v, "hidden_size", 1, KE_MAX_DIM, &c->hidden_size)) ||
        (st = get_int(&r, v, "intermediate_size", 1, KE_MAX_DIM, &c->intermediate_size)) ||
        (st = get_int(&r, v, "num_hidden_layers", 1, KE_MAX_LAYERS, &c->layers)) ||
        (st = get_int(&r, v, "num_attention_heads", 1, KE_MAX_DIM, &c->heads)) ||
        (st = get_int(&r, v, "num_channels", 1, 64, &c->channels)) ||
        (st = get_square(&r, v, "image_size", &c->image_size)) ||
        (st = get_square(&r, v, "patch_size", &c->patch_size)) ||
        (st = get_float(&r, v, "layer_norm_eps", &c->layer_norm_eps)) ||
        (st = get_activation(&r, v, "hidden_act", &c->activation)))
        return st;
    if (c->hidden_size % c->heads != 0)
        return ks_fail(
            KS_ERR_FORMAT,
            "%s: vision_config.hidden_size %d is not divisible by num_attention_heads %d", source,
            c->hidden_size, c->heads);
    if (c->image_size % c->patch_size != 0)
        return ks_fail(KS_ERR_FORMAT,
                       "%s: vision_config.image_size %d is not divisible by patch_size %d", source,
                       c->image_size, c->patch_size);
    if (!(c->layer_norm_eps > 0))
        return ks_fail(KS_ERR_FORMAT, "%s: vision_config.layer_norm_eps must be positive", source);
    return KS_OK;
}

static ks_status parse_text(const char *source, const json_t *t, ke_text_config *c)
{
    reader r = {source, "text_config"};
    if (t && !json_is_object(t))
        return ks_fail(KS_ERR_FORMAT, "%s: text_config is not an object", source);
    ks_status st;
    if ((st = get_int(&r, t, "vocab_size", 3, KE_MAX_VOCAB, &c->vocab_size)) ||
        (st = get_int(&r, t, "max_position_embeddings", 1, 1 << 24, &c->max_positions)) ||
        (st = get_int_alias(&r, t, "embed_dim", "hidden_size", 1, KE_MAX_DIM, &c->embed_dim)) ||
        (st = get_int_alias(&r, t, "layers", "num_hidden_layers", 1, KE_MAX_LAYERS, &c->layers)) ||
        (st = get_int_alias(&r, t, "attention_heads", "num_attention_heads", 1, KE_MAX_DIM,
                            &c->heads)) ||
        (st = get_int(&r, t, "ffn_dim", 1, KE_MAX_DIM, &c->ffn_dim)) ||
        (st = get_activation(&r, t, "activation_function", &c->activation)) ||
        (st = get_float(&r, t, "layer_norm_eps", &c->layer_norm_eps)) ||
        (st = get_bool(&r, t, "scale_embedding", &c->scale_embedding)) ||
        (st = get_bool(&r, t, "tie_word_embeddings", &c->tie_word_embeddings)) ||
        (st = get_token(&r, t, "pad_token_id", c->vocab_size, &c->pad_id)) ||
        (st = get_token(&r, t, "bos_token_id", c->vocab_size, &c->bos_id)) ||
        (st = get_token(&r, t, "eos_token_id", c->vocab_size, &c->eos_id)))
        return st;
    if (c->embed_dim % c->heads != 0)
        return ks_fail(KS_ERR_FORMAT,
                       "%s: text_config.embed_dim %d is not divisible by attention_heads %d",
                       source, c->embed_dim, c->heads);
    if (!(c->layer_norm_eps > 0))
        return ks_fail(KS_ERR_FORMAT, "%s: text_config.layer_norm_eps must be positive", source);
    return KS_OK;
}

/* One generation field from generation_config.json, else text_config (checkpoints written by
 * older transformers keep generation defaults there), else the default already in *out. */
static ks_status gen_int(const reader *gr, const json_t *gen, const reader *tr, const json_t *text,
                         const char *key, int lo, int hi, int *out)
{
    const json_t *g = gen ? json_object_get(gen, key) : NULL;
    if (g && !json_is_null(g))
        return get_int(gr, gen, key, lo, hi, out);
    return get_int(tr, text, key, lo, hi, out);
}

static ks_status early_stopping(const reader *r, const json_t *obj, bool *out, bool *found)
{
    const json_t *v = obj ? json_object_get(obj, "early_stopping") : NULL;
    *found = v && !json_is_null(v);
    if (!*found)
        return KS_OK;
    if (json_is_string(v))
        return ks_fail(KS_ERR_UNSUPPORTED, "%s: %s%searly_stopping = \"%s\" is not supported",
                       r->source, r->section, dot(r), json_string_value(v));
    return get_bool(r, obj, "early_stopping", out);
}

static ks_status parse_generation(const char *gen_source, const json_t *gen, const char *source,
                                  const json_t *text, ke_generation_defaults *g)
{
    reader gr = {gen_source, ""}, tr = {source, "text_config"};
    if (gen && !json_is_object(gen))
        return ks_fail(KS_ERR_FORMAT, "%s: not a JSON object", gen_source);
    if (text && !json_is_object(text))
        text = NULL;
    ks_status st;
    if ((st = gen_int(&gr, gen, &tr, text, "no_repeat_ngram_size", 0, 1 << 20,
                      &g->no_repeat_ngram_size)) ||
        (st = gen_int(&gr, gen, &tr, text, "max_new_tokens", 1, 1 << 24, &g->max_new_tokens)) ||
        (st = gen_int(&gr, gen, &tr, text, "num_beams", 1, 1024, &g->num_beams)))
        return st;
    const json_t *lp = gen ? json_object_get(gen, "length_penalty") : NULL;
    st = lp && !json_is_null(lp) ? get_float(&gr, gen, "length_penalty", &g->length_penalty)
                                 : get_float(&tr, text, "length_penalty", &g->length_penalty);
    if (st != KS_OK)
        return st;
    bool found = false;
    st = early_stopping(&gr, gen, &g->early_stopping, &found);
    if (st == KS_OK && !found)
        st = early_stopping(&tr, text, &g->early_stopping, &found);
    return st;
}

static json_t *load_json(const char *text, const char *source, ks_status *st)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    if (!j)
        *st = ks_fail(KS_ERR_FORMAT, "%s: invalid JSON (%s, line %d)", source, err.text, err.line);
    else if (!json_is_object(j)) {
        *st = ks_fail(KS_ERR_FORMAT, "%s: not a JSON object", source);
        json_decref(j);
        j = NULL;
    }
    return j;
}

static ks_status parse(const char *config_json, const char *generation_json, const char *source,
                       const char *gen_source, ke_config *out)
{
    ke_config c;
    set_defaults(&c);
    ks_status st = KS_OK;
    json_t *gen = NULL;
    json_t *root = load_json(config_json, source, &st);
    if (!root)
        return st;
    if (generation_json && !(gen = load_json(generation_json, gen_source, &st)))
        goto done;
    const char *type = json_string_value(json_object_get(root, "model_type"));
    if (!type || strcmp(type, "kosmos-2") != 0) {
        st = ks_fail(KS_ERR_FORMAT,
                     "%s: model_type is %s%s%s, expected \"kosmos-2\" (not a Kosmos-2 checkpoint)",
                     source, type ? "\"" : "", type ? type : "missing", type ? "\"" : "");
        goto done;
    }
    const json_t *text = json_object_get(root, "text_config");
    const json_t *vision = json_object_get(root, "vision_config");
    if (json_is_null(text))
        text = NULL;
    if (json_is_null(vision))
        vision = NULL;
    reader top = {source, ""};
    /* HF ties lm_head if the top-level flag or the text config's flag says so (both default
     * true): Kosmos2ForConditionalGeneration and Kosmos2TextForCausalLM each declare the tie. */
    bool tie_top = true;
    if ((st = parse_vision(source, vision, &c.vision)) ||
        (st = parse_text(source, text, &c.text)) ||
        (st = get_int(&top, root, "latent_query_num", 1, KE_MAX_DIM, &c.latent_query_num)) ||
        (st = get_bool(&top, root, "tie_word_embeddings", &tie_top)) ||
        (st = parse_generation(gen_source, gen, source, text, &c.generation)))
        goto done;
    c.text.tie_word_embeddings = c.text.tie_word_embeddings || tie_top;
    *out = c;
done:
    json_decref(gen);
    json_decref(root);
    return st;
}

ks_status ke_config_parse(const char *config_json, const char *generation_json, const char *source,
                          ke_config *out)
{
    return parse(config_json, generation_json, source, source, out);
}

ks_status ke_config_load(const char *model_dir, ke_config *out)
{
    char *cpath = ks_path_join(model_dir, "config.json");
    char *gpath = ks_path_join(model_dir, "generation_config.json");
    char *ctext = NULL, *gtext = NULL;
    size_t len;
    ks_status st = KS_OK;
    if (!cpath || !gpath) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (!ks_file_exists(cpath)) {
        st = ks_fail(KS_ERR_IO, "%s: no config.json (not a Hugging Face checkpoint folder?)",
                     model_dir);
        goto done;
    }
    if ((st = ks_file_read(cpath, KE_MAX_JSON, &ctext, &len)) != KS_OK)
        goto done;
    if (ks_file_exists(gpath) && (st = ks_file_read(gpath, KE_MAX_JSON, &gtext, &len)) != KS_OK)
        goto done;
    st = parse(ctext, gtext, cpath, gpath, out);
done:
    free(ctext);
    free(gtext);
    free(cpath);
    free(gpath);
    return st;
}
