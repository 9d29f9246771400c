/* ke_model: loading the Kosmos-2 weights of a Hugging Face checkpoint folder; see model.h.
 *
 * Every tensor the architecture needs is looked up by its HF name, checked against the shape the
 * config implies, and either pointed into the memory map (file dtype == storage dtype and the
 * data suitably aligned) or converted once into owned memory. Extra tensors (position_ids
 * buffers, an lm_head that the config ties away) are ignored. Not here: any arithmetic. */
#include "model.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ks_file.h"
#include "safetensors.h"

#define KE_MAX_INDEX (64u << 20)

struct ke_model_storage {
    ke_st_file **files; /* the opened safetensors files */
    char **file_names;  /* their names inside the folder (as the index spells them) */
    size_t n_files;
    json_t *weight_map; /* model.safetensors.index.json's weight_map, or NULL (single file) */
    void **owned;       /* converted tensors */
    size_t n_owned, cap_owned;
};

/* ---- number formats ---- */

float ke_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0) {
        float v = (float)man * 0x1p-24f; /* zero or subnormal, exact */
        return sign ? -v : v;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (man << 13);
    else
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round-to-nearest-even, overflow to infinity, NaN stays NaN: what torch's .half() does
 * (the algorithm of numpy's npy_floatbits_to_halfbits). */
uint16_t ke_f32_to_f16(float value)
{
    uint32_t f;
    memcpy(&f, &value, sizeof f);
    uint16_t sign = (uint16_t)((f & 0x80000000u) >> 16);
    uint32_t f_exp = f & 0x7f800000u, f_sig;
    if (f_exp >= 0x47800000u) { /* overflow, infinity or NaN */
        if (f_exp == 0x7f800000u && (f & 0x007fffffu)) {
            uint16_t nan = (uint16_t)(0x7c00u + ((f & 0x007fffffu) >> 13));
            return (uint16_t)(sign + (nan == 0x7c00u ? 0x7e00u : nan));
        }
        return (uint16_t)(sign + 0x7c00u);
    }
    if (f_exp <= 0x38000000u) { /* a half subnormal or zero */
        if (f_exp < 0x33000000u)
            return sign;
        f_exp >>= 23;
        f_sig = 0x00800000u + (f & 0x007fffffu);
        f_sig >>= (113u - f_exp);
        /* Ties to even; the shift may have dropped up to 11 low bits, which break the tie. */
        if ((f_sig & 0x3fffu) != 0x1000u || (f & 0x7ffu))
            f_sig += 0x1000u;
        return (uint16_t)(sign + (uint16_t)(f_sig >> 13));
    }
    uint16_t h_exp = (uint16_t)((f_exp - 0x38000000u) >> 13);
    f_sig = f & 0x007fffffu;
    if ((f_sig & 0x3fffu) != 0x1000u)
        f_sig += 0x1000u;
    /* A carry out of the significand bumps the exponent (up to infinity), as it should. */
    return (uint16_t)(sign + (uint16_t)(h_exp + (uint16_t)(f_sig >> 13)));
}

float ke_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

size_t ke_tensor_numel(const ke_tensor *t)
{
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

void ke_tensor_read_f32(const ke_tensor *t, size_t offset, size_t n, float *out)
{
    if (t->dtype == KE_DTYPE_F32) {
        memcpy(out, (const float *)t->data + offset, n * sizeof(float));
        if (t->round_f16)
            for (size_t i = 0; i < n; i++)
                out[i] = ke_f16_to_f32(ke_f32_to_f16(out[i]));
        return;
    }
    if (t->dtype == KE_DTYPE_I8) {
        size_t in = t->shape[0] > 0 ? ke_tensor_numel(t) / (size_t)t->shape[0] : 1;
        const int8_t *q = (const int8_t *)t->data;
        for (size_t i = 0; i < n; i++)
            out[i] = (float)q[offset + i] * t->scale[(offset + i) / in];
        return;
    }
    const uint16_t *h = (const uint16_t *)t->data + offset;
    for (size_t i = 0; i < n; i++)
        out[i] = ke_f16_to_f32(h[i]);
}

/* ---- the loader ---- */

typedef struct loader {
    ke_model *m;
    const char *dir;
    struct ke_model_storage *s;
    ks_status st; /* the first failure; later take() calls do nothing */
    char name[256];
} loader;

static const char *nm(loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *nm(loader *ld, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->name, sizeof ld->name, fmt, ap);
    va_end(ap);
    return ld->name;
}

static ks_status open_file(loader *ld, const char *file_name, ke_st_file **out)
{
    struct ke_model_storage *s = ld->s;
    for (size_t i = 0; i < s->n_files; i++)
        if (strcmp(s->file_names[i], file_name) == 0) {
            *out = s->files[i];
            return KS_OK;
        }
    ke_st_file **files = realloc(s->files, (s->n_files + 1) * sizeof *files);
    if (files)
        s->files = files;
    char **names = realloc(s->file_names, (s->n_files + 1) * sizeof *names);
    if (names)
        s->file_names = names;
    char *copy = strdup(file_name);
    char *path = ks_path_join(ld->dir, file_name);
    ks_status st = KS_OK;
    if (!files || !names || !copy || !path) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (!ks_file_exists(path)) {
        st = ks_fail(KS_ERR_IO, "%s: missing (named by model.safetensors.index.json)", path);
        goto done;
    }
    st = ke_st_open(path, out);
    if (st != KS_OK)
        goto done;
    s->files[s->n_files] = *out;
    s->file_names[s->n_files++] = copy;
    copy = NULL;
done:
    free(copy);
    free(path);
    return st;
}

/* The tensor `name` and its file, or NULL without a message if the checkpoint lacks it. */
static const ke_st_tensor *lookup(loader *ld, const char *name, ke_st_file **file)
{
    struct ke_model_storage *s = ld->s;
    *file = NULL;
    if (!s->weight_map) {
        *file = s->files[0];
        return ke_st_find(s->files[0], name);
    }
    const char *fname = json_string_value(json_object_get(s->weight_map, name));
    if (!fname)
        return NULL;
    ks_status st = open_file(ld, fname, file);
    if (st != KS_OK) {
        ld->st = st;
        return NULL;
    }
    const ke_st_tensor *t = ke_st_find(*file, name);
    if (!t)
        ld->st = ks_fail(KS_ERR_FORMAT,
                         "%s: missing tensor '%s' (model.safetensors.index.json places it there)",
                         ke_st_path(*file), name);
    return t;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && at < cap; d++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (at < cap)
        snprintf(buf + at, cap - at, "]");
}

/* Room for one more owned block; false when out of memory. */
static bool reserve_owned(struct ke_model_storage *s)
{
    if (s->n_owned < s->cap_owned)
        return true;
    size_t cap = s->cap_owned ? 2 * s->cap_owned : 64;
    void **grown = realloc(s->owned, cap * sizeof *grown);
    if (!grown)
        return false;
    s->owned = grown;
    s->cap_owned = cap;
    return true;
}

static void *own(loader *ld, size_t bytes)
{
    struct ke_model_storage *s = ld->s;
    if (!reserve_owned(s))
        return NULL;
    /* 64-byte aligned and padded, for vector loads. */
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p)
        s->owned[s->n_owned++] = p;
    return p;
}

/* Copies or converts n elements of `src` (file dtype, any alignment) to dst in `storage`. */
static void convert(const ke_st_tensor *src, ke_dtype storage, void *dst)
{
    const unsigned char *in = src->data;
    size_t n = src->numel;
    if ((src->dtype == KE_ST_F32 && storage == KE_DTYPE_F32) ||
        (src->dtype == KE_ST_F16 && storage == KE_DTYPE_F16)) {
        memcpy(dst, in, src->nbytes);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float v;
        if (src->dtype == KE_ST_F32) {
            memcpy(&v, in + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, in + 2 * i, 2);
            v = src->dtype == KE_ST_F16 ? ke_f16_to_f32(h) : ke_bf16_to_f32(h);
        }
        if (storage == KE_DTYPE_F32)
            ((float *)dst)[i] = v;
        else
            ((uint16_t *)dst)[i] = ke_f32_to_f16(v);
    }
}

typedef struct origin {
    ke_st_file *file;
    const ke_st_tensor *t;
    int mapped; /* out->data points into the map */
} origin;

/* Loads tensor `name` of exactly `shape` into *out. On failure records it in ld->st. */
static void take(loader *ld, ke_tensor *out, const char *name, int ndim, const int64_t *shape,
                 origin *where)
{
    if (ld->st != KS_OK)
        return;
    ke_st_file *file;
    const ke_st_tensor *t = lookup(ld, name, &file);
    if (ld->st != KS_OK)
        return;
    if (!t) {
        if (ld->s->weight_map)
            ld->st = ks_fail(KS_ERR_FORMAT,
                             "%s/model.safetensors.index.json: missing tensor '%s' (no entry)",
                             ld->dir, name);
        else
            ld->st = ks_fail(KS_ERR_FORMAT, "%s: missing tensor '%s'", ke_st_path(file), name);
        return;
    }
    const char *path = ke_st_path(file);
    if (t->dtype != KE_ST_F32 && t->dtype != KE_ST_F16 && t->dtype != KE_ST_BF16) {
        ld->st = ks_fail(KS_ERR_FORMAT,
                         "%s: tensor '%s' has dtype %s; weights must be F32, F16 or "
                         "BF16",
                         path, name, ke_st_dtype_name(t->dtype));
        return;
    }
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = t->shape[d] == shape[d];
    if (!same) {
        char want[128], got[128];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        ld->st = ks_fail(KS_ERR_FORMAT, "%s: tensor '%s' has shape %s, but config.json implies %s",
                         path, name, got, want);
        return;
    }
    ke_dtype storage = ld->m->storage;
    size_t esize = storage == KE_DTYPE_F32 ? 4 : 2;
    /* F32 and F16 tensors stay in the map in their own dtype: a backend that copies the weights
     * converts them on the way (in bounded chunks), so no host copy is ever made of them */
    size_t file_esize = t->dtype == KE_ST_F32 ? 4 : 2;
    int direct = (t->dtype == KE_ST_F32 || t->dtype == KE_ST_F16) &&
                 (uintptr_t)t->data % file_esize == 0;
    out->dtype = direct ? (t->dtype == KE_ST_F32 ? KE_DTYPE_F32 : KE_DTYPE_F16) : storage;
    out->round_f16 = out->dtype == KE_DTYPE_F32 && storage == KE_DTYPE_F16;
    out->ndim = ndim;
    memset(out->shape, 0, sizeof out->shape);
    for (int d = 0; d < ndim; d++)
        out->shape[d] = shape[d];
    if (direct) {
        out->data = t->data;
    } else {
        void *dst = own(ld, t->numel * esize);
        if (!dst) {
            ld->st = ks_fail(KS_ERR_NOMEM, "%s: out of memory converting '%s'", path, name);
            return;
        }
        convert(t, storage, dst);
        out->data = dst;
    }
    if (where) {
        where->file = file;
        where->t = t;
        where->mapped = direct;
    }
}

#define SHAPE(...)                                                                                 \
    (sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), ((const int64_t[]){__VA_ARGS__})

static void take_linear(loader *ld, ke_linear *l, const char *prefix, int64_t out, int64_t in)
{
    char base[224];
    snprintf(base, sizeof base, "%s", prefix);
    take(ld, &l->weight, nm(ld, "%s.weight", base), SHAPE(out, in), NULL);
    take(ld, &l->bias, nm(ld, "%s.bias", base), SHAPE(out), NULL);
}

static void take_norm(loader *ld, ke_layer_norm *n, const char *prefix, int64_t dim)
{
    char base[224];
    snprintf(base, sizeof base, "%s", prefix);
    take(ld, &n->weight, nm(ld, "%s.weight", base), SHAPE(dim), NULL);
    take(ld, &n->bias, nm(ld, "%s.bias", base), SHAPE(dim), NULL);
}

static void load_vision(loader *ld)
{
    ke_model *m = ld->m;
    const ke_vision_config *v = &m->config.vision;
    int64_t h = v->hidden_size, grid = v->image_size / v->patch_size;
    const char *e = "vision_model.model.embeddings";
    take(ld, &m->patch_embedding, nm(ld, "%s.patch_embedding.weight", e),
         SHAPE(h, v->channels, v->patch_size, v->patch_size), NULL);
    take(ld, &m->class_embedding, nm(ld, "%s.class_embedding", e), SHAPE(h), NULL);
    take(ld, &m->position_embedding, nm(ld, "%s.position_embedding.weight", e),
         SHAPE(grid * grid + 1, h), NULL);
    take_norm(ld, &m->pre_layrnorm, "vision_model.model.pre_layrnorm", h);
    for (int i = 0; i < v->layers && ld->st == KS_OK; i++) {
        ke_vision_layer *L = &m->vision_layers[i];
        char p[160];
        snprintf(p, sizeof p, "vision_model.model.encoder.layers.%d", i);
        take_norm(ld, &L->layer_norm1, nm(ld, "%s.layer_norm1", p), h);
        take_linear(ld, &L->q_proj, nm(ld, "%s.self_attn.q_proj", p), h, h);
        take_linear(ld, &L->k_proj, nm(ld, "%s.self_attn.k_proj", p), h, h);
        take_linear(ld, &L->v_proj, nm(ld, "%s.self_attn.v_proj", p), h, h);
        take_linear(ld, &L->out_proj, nm(ld, "%s.self_attn.out_proj", p), h, h);
        take_norm(ld, &L->layer_norm2, nm(ld, "%s.layer_norm2", p), h);
        take_linear(ld, &L->fc1, nm(ld, "%s.mlp.fc1", p), v->intermediate_size, h);
        take_linear(ld, &L->fc2, nm(ld, "%s.mlp.fc2", p), h, v->intermediate_size);
    }
    take_norm(ld, &m->post_layernorm, "vision_model.model.post_layernorm", h);
}

static void load_projection(loader *ld)
{
    ke_model *m = ld->m;
    int64_t d = m->config.text.embed_dim;
    const char *p = "image_to_text_projection";
    take_linear(ld, &m->dense, nm(ld, "%s.dense", p), d, m->config.vision.hidden_size);
    take(ld, &m->latent_query, nm(ld, "%s.latent_query", p), SHAPE(m->config.latent_query_num, d),
         NULL);
    take_linear(ld, &m->x_q_proj, nm(ld, "%s.x_attn.q_proj", p), d, d);
    take_linear(ld, &m->x_k_proj, nm(ld, "%s.x_attn.k_proj", p), d, d);
    take_linear(ld, &m->x_v_proj, nm(ld, "%s.x_attn.v_proj", p), d, d);
    take_linear(ld, &m->x_out_proj, nm(ld, "%s.x_attn.out_proj", p), d, d);
}

/* transformers 5.17's from_pretrained zeroes embed_tokens[pad_token_id] whatever the file holds
 * (Kosmos2PreTrainedModel._init_weights runs on Kosmos2TextTransformer after loading and its
 * `weight[padding_idx]` slice escapes the "already loaded" guard). With the tied head this makes
 * the pad logit exactly 0. We do the same, so logits match HF. */
static void zero_pad_row(loader *ld, const origin *where)
{
    ke_model *m = ld->m;
    int pad = m->config.text.pad_id;
    if (ld->st != KS_OK || pad < 0)
        return;
    size_t esize = m->embed_tokens.dtype == KE_DTYPE_F32 ? 4 : 2;
    size_t row = (size_t)m->config.text.embed_dim * esize;
    const unsigned char *p = (const unsigned char *)m->embed_tokens.data + (size_t)pad * row;
    size_t nz = 0;
    while (nz < row && p[nz] == 0)
        nz++;
    if (nz == row)
        return;
    void *w = (void *)p;
    if (where->mapped) {
        w = ke_st_writable(where->file, where->t, (size_t)pad * row, row);
        if (!w) {
            ld->st = KS_ERR_IO;
            return;
        }
    }
    memset(w, 0, row);
}

static void load_text(loader *ld)
{
    ke_model *m = ld->m;
    const ke_text_config *t = &m->config.text;
    int64_t d = t->embed_dim, f = t->ffn_dim;
    origin embed = {0};
    take(ld, &m->embed_tokens, "text_model.model.embed_tokens.weight", SHAPE(t->vocab_size, d),
         &embed);
    for (int i = 0; i < t->layers && ld->st == KS_OK; i++) {
        ke_text_layer *L = &m->text_layers[i];
        char p[160];
        snprintf(p, sizeof p, "text_model.model.layers.%d", i);
        take_norm(ld, &L->self_attn_layer_norm, nm(ld, "%s.self_attn_layer_norm", p), d);
        take_linear(ld, &L->q_proj, nm(ld, "%s.self_attn.q_proj", p), d, d);
        take_linear(ld, &L->k_proj, nm(ld, "%s.self_attn.k_proj", p), d, d);
        take_linear(ld, &L->v_proj, nm(ld, "%s.self_attn.v_proj", p), d, d);
        take_norm(ld, &L->inner_attn_ln, nm(ld, "%s.self_attn.inner_attn_ln", p), d);
        take_linear(ld, &L->out_proj, nm(ld, "%s.self_attn.out_proj", p), d, d);
        take_norm(ld, &L->final_layer_norm, nm(ld, "%s.final_layer_norm", p), d);
        take_linear(ld, &L->fc1, nm(ld, "%s.ffn.fc1", p), f, d);
        take_norm(ld, &L->ffn_layernorm, nm(ld, "%s.ffn.ffn_layernorm", p), f);
        take_linear(ld, &L->fc2, nm(ld, "%s.ffn.fc2", p), d, f);
    }
    take_norm(ld, &m->final_layer_norm, "text_model.model.layer_norm", d);
    zero_pad_row(ld, &embed);
    /* Tied: HF points lm_head at embed_tokens, ignoring any lm_head in the file. */
    if (t->tie_word_embeddings)
        m->lm_head = m->embed_tokens;
    else
        take(ld, &m->lm_head, "text_model.lm_head.weight", SHAPE(t->vocab_size, d), NULL);
}

/* Opens model.safetensors, or else the index and all its shards (HF's order of preference). */
static ks_status open_weights(loader *ld)
{
    char *single = ks_path_join(ld->dir, "model.safetensors");
    char *index = ks_path_join(ld->dir, "model.safetensors.index.json");
    char *text = NULL;
    json_t *root = NULL;
    size_t len;
    ks_status st = KS_OK;
    if (!single || !index) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (ks_file_exists(single)) {
        ke_st_file *f = NULL;
        if ((st = ke_st_open(single, &f)) != KS_OK)
            goto done;
        ld->s->files = malloc(sizeof *ld->s->files);
        ld->s->file_names = malloc(sizeof *ld->s->file_names);
        char *name = strdup("model.safetensors");
        if (!ld->s->files || !ld->s->file_names || !name) {
            free(name);
            ke_st_close(&f);
            st = ks_fail(KS_ERR_NOMEM, "out of memory");
            goto done;
        }
        ld->s->files[0] = f;
        ld->s->file_names[0] = name;
        ld->s->n_files = 1;
        goto done;
    }
    if (!ks_file_exists(index)) {
        st = ks_fail(KS_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json",
                     ld->dir);
        goto done;
    }
    if ((st = ks_file_read(index, KE_MAX_INDEX, &text, &len)) != KS_OK)
        goto done;
    json_error_t err;
    root = json_loadb(text, len, 0, &err);
    json_t *map = root ? json_object_get(root, "weight_map") : NULL;
    if (!root || !json_is_object(map)) {
        st = ks_fail(KS_ERR_FORMAT, "%s: %s", index,
                     root ? "no \"weight_map\" object" : "invalid JSON");
        goto done;
    }
    const char *key;
    json_t *value;
    json_object_foreach(map, key, value) {
        const char *v = json_string_value(value);
        /* Shards must sit in the folder itself: no paths, no "..". */
        if (!v || !*v || strchr(v, '/') || strcmp(v, "..") == 0 || strcmp(v, ".") == 0) {
            st = ks_fail(KS_ERR_FORMAT,
                         "%s: weight_map entry '%s' is not a file name in the folder", index, key);
            goto done;
        }
    }
    ld->s->weight_map = json_incref(map);
    /* Open (and so validate) every shard now, as HF does, even one holding only extra keys. */
    json_object_foreach(map, key, value) {
        ke_st_file *f;
        if ((st = open_file(ld, json_string_value(value), &f)) != KS_OK)
            goto done;
    }
done:
    json_decref(root);
    free(text);
    free(single);
    free(index);
    return st;
}

void ke_model_options_default(ke_model_options *options) { options->storage = KE_DTYPE_F16; }

ks_status ke_model_new_empty(const ke_config *config, ke_dtype storage, ke_model **out)
{
    ks_status status = KS_OK;
    *out = NULL;
    if (storage != KE_DTYPE_F16 && storage != KE_DTYPE_F32)
        return ks_fail(KS_ERR_INVALID, "unknown storage dtype %d", (int)storage);
    if (config->vision.layers < 0 || config->text.layers < 0)
        return ks_fail(KS_ERR_INVALID, "a negative layer count (vision %d, text %d)",
                       config->vision.layers, config->text.layers);
    ke_model *m = calloc(1, sizeof *m);
    /* One spare entry each: calloc(0) may return NULL, which would read as out of memory. */
    if (!m || !(m->private_storage = calloc(1, sizeof *m->private_storage)) ||
        !(m->vision_layers = calloc((size_t)config->vision.layers + 1, sizeof *m->vision_layers)) ||
        !(m->text_layers = calloc((size_t)config->text.layers + 1, sizeof *m->text_layers))) {
        status = ks_fail(KS_ERR_NOMEM, "out of memory for a model of %d + %d layers",
                         config->vision.layers, config->text.layers);
        goto cleanup;
    }
    m->config = *config;
    m->storage = storage;
    *out = m;
    m = NULL;
cleanup:
    ke_model_destroy(&m);
    return status;
}

ks_status ke_model_adopt(ke_model *model, void **block)
{
    if (!reserve_owned(model->private_storage)) {
        free(*block);
        *block = NULL;
        return ks_fail(KS_ERR_NOMEM, "out of memory recording a model's weight block");
    }
    model->private_storage->owned[model->private_storage->n_owned++] = *block;
    *block = NULL;
    return KS_OK;
}

ks_status ke_model_load(const char *model_dir, const ke_model_options *options, ke_model **out)
{
    ks_status status = KS_OK;
    ke_model *m = NULL;
    ke_config config;
    *out = NULL;
    if ((status = ks_dir_require(model_dir, "model folder")) != KS_OK ||
        (status = ke_config_load(model_dir, &config)) != KS_OK)
        return status;
    if ((status = ke_model_new_empty(&config, options ? options->storage : KE_DTYPE_F16, &m)) !=
        KS_OK) {
        ks_error_prefix("loading %s", model_dir);
        return status;
    }
    loader ld = {.m = m, .dir = model_dir, .st = KS_OK, .s = m->private_storage};
    if ((status = open_weights(&ld)) != KS_OK)
        goto cleanup;
    load_vision(&ld);
    load_projection(&ld);
    load_text(&ld);
    if ((status = ld.st) != KS_OK)
        goto cleanup;
    *out = m;
    m = NULL;
cleanup:
    ke_model_destroy(&m);
    return status;
}

void ke_model_page_out(const ke_model *model)
{
    if (!model || !model->private_storage)
        return;
    for (size_t i = 0; i < model->private_storage->n_files; i++)
        ke_st_page_out(model->private_storage->files[i]);
}

void ke_model_destroy(ke_model **pm)
{
    if (!pm || !*pm)
        return;
    ke_model *m = *pm;
    struct ke_model_storage *s = m->private_storage;
    if (s) {
        for (size_t i = 0; i < s->n_files; i++) {
            ke_st_close(&s->files[i]);
            free(s->file_names[i]);
        }
        free(s->files);
        free(s->file_names);
        json_decref(s->weight_map);
        for (size_t i = 0; i < s->n_owned; i++)
            free(s->owned[i]);
        free(s->owned);
        free(s);
    }
    free(m->vision_layers);
    free(m->text_layers);
    free(m);
    *pm = NULL;
}
