/* backend_ref: the plain-C reference backend (`--device ref`): the whole Kosmos-2 forward pass
 * composed from ref_ops, single-threaded, f32 activations over f16/f32 weights (or int8 linear
 * weights, quant.h, with options.weights_int8). It is the oracle the OpenCL backend is checked
 * against and the fallback where no OpenCL exists - not a fast path.
 *
 * KV cache: per slot and text layer, (slot_capacity, embed_dim) rows of K and of V, after the
 * projections (bias included), heads side by side in each row. A step runs every matmul over
 * the tokens of all its sequences at once; attention runs per sequence over its own slot. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "quant.h"
#include "ref_ops.h"

/* The vision chunk it reports by default: the worker's images per step before the option
 * existed. Its memory is one image's activations whatever the chunk (encode_one). */
#define REF_VISION_CHUNK 4

typedef struct ref_backend {
    ke_backend base;
    const ke_model *weights; /* what the forward pass reads: base.model, or &q8 */
    /* weights_int8: the model's struct with its own layer arrays, whose linear weights are
     * owned int8 copies (quant.h; every KE_DTYPE_I8 tensor in it is ours) */
    ke_model q8;
    size_t slot_stride; /* floats per slot in k_cache/v_cache: layers · capacity · embed */
    float *k_cache;     /* (slots, layers, capacity, embed) */
    float *v_cache;     /* (slots, layers, capacity, embed) */
    int *slot_len;      /* [slots] tokens cached */
    float *freq;        /* (embed / 2) sinusoid frequencies */
    /* forward scratch, grown on demand to `tokens` rows */
    size_t tokens;
    float *x, *h, *q, *k, *v, *ctx; /* (tokens, embed) each */
    float *ffn;                     /* (tokens, ffn_dim) */
    float *lin_scratch;             /* ke_op_linear_scratch(max input width) */
    float *att_scratch;             /* slot_capacity floats */
    bool resampler_full;            /* options.resampler_full_attention */
} ref_backend;

static float inv_sqrt_head_dim(int head_dim)
{
    /* HF: self.head_dim ** -0.5 in Python (double), multiplied into f32 scores */
    return (float)pow((double)head_dim, -0.5);
}

static void *alloc_floats(size_t n)
{
    if (n > SIZE_MAX / sizeof(float))
        return NULL;
    return calloc(n ? n : 1, sizeof(float));
}

/* ---- vision tower + resampler ---------------------------------------------------------- */

/* Runs one image; writes post_layernorm (optional) and image_embeds (latent, embed). */
static ks_status encode_one(ref_backend *rb, const float *pixels, float *post_tap, float *embeds)
{
    const ke_model *m = rb->weights;
    const ke_vision_config *vc = &m->config.vision;
    const ke_text_config *tc = &m->config.text;
    size_t hid = (size_t)vc->hidden_size;
    size_t grid = (size_t)(vc->image_size / vc->patch_size);
    size_t n_patch = grid * grid;
    size_t seq = n_patch + 1;
    size_t patch_w = (size_t)vc->channels * (size_t)vc->patch_size * (size_t)vc->patch_size;
    size_t inter = (size_t)vc->intermediate_size;
    size_t emb = (size_t)tc->embed_dim;
    size_t lq = (size_t)m->config.latent_query_num;
    size_t kv_rows = seq + lq;

    size_t widest = patch_w;
    if (inter > widest)
        widest = inter;
    if (emb > widest)
        widest = emb;
    if (hid > widest)
        widest = hid;
    size_t rows_max = kv_rows > n_patch ? kv_rows : n_patch;

    ks_status st = KS_OK;
    float *patches = alloc_floats(n_patch * patch_w);
    float *x = alloc_floats(seq * hid);
    float *h = alloc_floats(seq * hid);
    float *q = alloc_floats(rows_max * (hid > emb ? hid : emb));
    float *k = alloc_floats(rows_max * (hid > emb ? hid : emb));
    float *v = alloc_floats(rows_max * (hid > emb ? hid : emb));
    float *ctx = alloc_floats(rows_max * (hid > emb ? hid : emb));
    float *mlp = alloc_floats(seq * inter);
    float *kv = alloc_floats(kv_rows * emb);
    float *lin = alloc_floats(ke_op_linear_scratch(widest));
    float *att = alloc_floats(kv_rows);
    if (!patches || !x || !h || !q || !k || !v || !ctx || !mlp || !kv || !lin || !att) {
        st = ks_fail(KS_ERR_NOMEM, "reference backend: out of memory encoding an image");
        goto cleanup;
    }

    /* patch embedding (conv as matmul over (channel, ky, kx)), class token, positions */
    ke_op_unfold_patches(pixels, vc->channels, vc->image_size, vc->patch_size, patches);
    ke_op_linear(patches, n_patch, &m->patch_embedding, NULL, x + hid, lin);
    for (size_t i = 0; i < hid; i++)
        x[i] = ke_op_tensor_get(&m->class_embedding, i);
    for (size_t t = 0; t < seq; t++)
        for (size_t i = 0; i < hid; i++)
            x[t * hid + i] += ke_op_tensor_get(&m->position_embedding, t * hid + i);
    ke_op_layer_norm(x, seq, hid, &m->pre_layrnorm.weight, &m->pre_layrnorm.bias,
                     vc->layer_norm_eps, x);

    int vheads = vc->heads;
    int vhd = vc->hidden_size / vheads;
    float vscale = inv_sqrt_head_dim(vhd);
    for (int l = 0; l < vc->layers; l++) {
        const ke_vision_layer *L = &m->vision_layers[l];
        ke_op_layer_norm(x, seq, hid, &L->layer_norm1.weight, &L->layer_norm1.bias,
                         vc->layer_norm_eps, h);
        ke_op_linear(h, seq, &L->q_proj.weight, &L->q_proj.bias, q, lin);
        ke_op_linear(h, seq, &L->k_proj.weight, &L->k_proj.bias, k, lin);
        ke_op_linear(h, seq, &L->v_proj.weight, &L->v_proj.bias, v, lin);
        ke_op_attention(q, hid, k, v, hid, (int)seq, (int)seq, vheads, vhd, vscale, -1, ctx, hid,
                        att);
        ke_op_linear(ctx, seq, &L->out_proj.weight, &L->out_proj.bias, h, lin);
        for (size_t i = 0; i < seq * hid; i++)
            x[i] += h[i];
        ke_op_layer_norm(x, seq, hid, &L->layer_norm2.weight, &L->layer_norm2.bias,
                         vc->layer_norm_eps, h);
        ke_op_linear(h, seq, &L->fc1.weight, &L->fc1.bias, mlp, lin);
        ke_op_activation(mlp, seq * inter, vc->activation);
        ke_op_linear(mlp, seq, &L->fc2.weight, &L->fc2.bias, h, lin);
        for (size_t i = 0; i < seq * hid; i++)
            x[i] += h[i];
    }

    /* Kosmos-2: post_layernorm on every token (class token included), then L2 normalise */
    ke_op_layer_norm(x, seq, hid, &m->post_layernorm.weight, &m->post_layernorm.bias,
                     vc->layer_norm_eps, x);
    if (post_tap)
        memcpy(post_tap, x, seq * hid * sizeof(float));
    ke_op_l2_normalize(x, seq, hid, 1e-12f);

    /* resampler: KV = concat(dense(features), latent_query); Q from latent_query; no inner
     * LayerNorm, no residual. The mask: see ke_backend_options.resampler_full_attention. */
    ke_op_linear(x, seq, &m->dense.weight, &m->dense.bias, kv, lin);
    float *latent = kv + seq * emb;
    for (size_t i = 0; i < lq * emb; i++)
        latent[i] = ke_op_tensor_get(&m->latent_query, i);
    ke_op_linear(latent, lq, &m->x_q_proj.weight, &m->x_q_proj.bias, q, lin);
    ke_op_linear(kv, kv_rows, &m->x_k_proj.weight, &m->x_k_proj.bias, k, lin);
    ke_op_linear(kv, kv_rows, &m->x_v_proj.weight, &m->x_v_proj.bias, v, lin);
    int theads = tc->heads;
    int thd = tc->embed_dim / theads;
    ke_op_attention(q, emb, k, v, emb, (int)lq, (int)kv_rows, theads, thd, inv_sqrt_head_dim(thd),
                    rb->resampler_full ? -1 : 0, ctx, emb, att);
    ke_op_linear(ctx, lq, &m->x_out_proj.weight, &m->x_out_proj.bias, embeds, lin);

cleanup:
    free(patches);
    free(x);
    free(h);
    free(q);
    free(k);
    free(v);
    free(ctx);
    free(mlp);
    free(kv);
    free(lin);
    free(att);
    return st;
}

static ks_status ref_encode_images(ke_backend *b, const float *pixels, int n, float *image_embeds,
                                   const ke_vision_taps *taps)
{
    ref_backend *rb = (ref_backend *)b;
    const ke_config *c = &b->model->config;
    if (n < 0 || (n > 0 && (pixels == NULL || image_embeds == NULL)))
        return ks_fail(KS_ERR_INVALID, "encode_images: %d images without buffers", n);
    size_t pix = (size_t)c->vision.channels * (size_t)c->vision.image_size *
                 (size_t)c->vision.image_size;
    size_t grid = (size_t)(c->vision.image_size / c->vision.patch_size);
    size_t tap = (grid * grid + 1) * (size_t)c->vision.hidden_size;
    size_t out = (size_t)c->latent_query_num * (size_t)c->text.embed_dim;
    for (int i = 0; i < n; i++) {
        float *post = taps && taps->post_layernorm ? taps->post_layernorm + (size_t)i * tap : NULL;
        ks_status st = encode_one(rb, pixels + (size_t)i * pix, post,
                                  image_embeds + (size_t)i * out);
        if (st != KS_OK)
            return st;
    }
    return KS_OK;
}

/* ---- text decoder ---------------------------------------------------------------------- */

static float *kv_row(const ref_backend *rb, float *cache, int slot, int layer, int pos)
{
    size_t emb = (size_t)rb->base.model->config.text.embed_dim;
    size_t cap = (size_t)rb->base.slot_capacity;
    return cache + (size_t)slot * rb->slot_stride + ((size_t)layer * cap + (size_t)pos) * emb;
}

static ks_status grow_scratch(ref_backend *rb, size_t tokens)
{
    if (tokens <= rb->tokens)
        return KS_OK;
    const ke_text_config *tc = &rb->base.model->config.text;
    size_t emb = (size_t)tc->embed_dim;
    float **bufs[] = {&rb->x, &rb->h, &rb->q, &rb->k, &rb->v, &rb->ctx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        free(*bufs[i]);
        *bufs[i] = alloc_floats(tokens * emb);
    }
    free(rb->ffn);
    rb->ffn = alloc_floats(tokens * (size_t)tc->ffn_dim);
    rb->tokens = tokens;
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (*bufs[i] == NULL)
            goto nomem;
    if (rb->ffn == NULL)
        goto nomem;
    return KS_OK;
nomem:
    rb->tokens = 0;
    return ks_fail(KS_ERR_NOMEM, "reference backend: out of memory for %zu tokens", tokens);
}

static ks_status ref_forward(ke_backend *b, const ke_step *step, float *logits)
{
    ref_backend *rb = (ref_backend *)b;
    const ke_model *m = rb->weights;
    const ke_text_config *tc = &m->config.text;
    size_t emb = (size_t)tc->embed_dim;
    size_t ffn = (size_t)tc->ffn_dim;
    int heads = tc->heads;
    int hd = tc->embed_dim / heads;
    float scale = inv_sqrt_head_dim(hd);
    size_t total = 0;

    ks_status st = ke_step_check(&rb->base, step, rb->slot_len, &total);
    if (st == KS_OK && step->from_device)
        for (int s = 0; s < step->n_seqs; s++)
            if (step->from_device[s])
                return ks_fail(KS_ERR_UNSUPPORTED, "forward: the reference backend selects on "
                                                   "the host; it keeps no token on a device");
    if (st != KS_OK)
        return st;
    if ((st = grow_scratch(rb, total)) != KS_OK)
        return st;

    float embed_scale = tc->scale_embedding ? (float)sqrt((double)tc->embed_dim) : 1.0f;
    ke_op_text_embed(&m->embed_tokens, step->ids, total, step->image_mask, step->image_embeds,
                     embed_scale, step->positions, tc->pad_id, rb->freq, rb->x);

    float *x = rb->x, *h = rb->h, *q = rb->q, *k = rb->k, *v = rb->v, *ctx = rb->ctx;
    for (int l = 0; l < tc->layers; l++) {
        const ke_text_layer *L = &m->text_layers[l];
        ke_op_layer_norm(x, total, emb, &L->self_attn_layer_norm.weight,
                         &L->self_attn_layer_norm.bias, tc->layer_norm_eps, h);
        ke_op_linear(h, total, &L->q_proj.weight, &L->q_proj.bias, q, rb->lin_scratch);
        ke_op_linear(h, total, &L->k_proj.weight, &L->k_proj.bias, k, rb->lin_scratch);
        ke_op_linear(h, total, &L->v_proj.weight, &L->v_proj.bias, v, rb->lin_scratch);
        size_t row = 0;
        for (int s = 0; s < step->n_seqs; s++) {
            int slot = step->slots[s];
            int past = rb->slot_len[slot];
            int n = step->n_tokens[s];
            float *kc = kv_row(rb, rb->k_cache, slot, l, 0);
            float *vc = kv_row(rb, rb->v_cache, slot, l, 0);
            memcpy(kc + (size_t)past * emb, k + row * emb, (size_t)n * emb * sizeof(float));
            memcpy(vc + (size_t)past * emb, v + row * emb, (size_t)n * emb * sizeof(float));
            ke_op_attention(q + row * emb, emb, kc, vc, emb, n, past + n, heads, hd, scale, past,
                            ctx + row * emb, emb, rb->att_scratch);
            row += (size_t)n;
        }
        ke_op_layer_norm(ctx, total, emb, &L->inner_attn_ln.weight, &L->inner_attn_ln.bias,
                         tc->layer_norm_eps, ctx);
        ke_op_linear(ctx, total, &L->out_proj.weight, &L->out_proj.bias, h, rb->lin_scratch);
        for (size_t i = 0; i < total * emb; i++)
            x[i] += h[i];

        ke_op_layer_norm(x, total, emb, &L->final_layer_norm.weight, &L->final_layer_norm.bias,
                         tc->layer_norm_eps, h);
        ke_op_linear(h, total, &L->fc1.weight, &L->fc1.bias, rb->ffn, rb->lin_scratch);
        ke_op_activation(rb->ffn, total * ffn, tc->activation);
        ke_op_layer_norm(rb->ffn, total, ffn, &L->ffn_layernorm.weight, &L->ffn_layernorm.bias,
                         tc->layer_norm_eps, rb->ffn);
        ke_op_linear(rb->ffn, total, &L->fc2.weight, &L->fc2.bias, h, rb->lin_scratch);
        for (size_t i = 0; i < total * emb; i++)
            x[i] += h[i];
    }

    /* final LayerNorm and lm_head on the last new token of each sequence only (LayerNorm is
     * per row, so this equals HF's full-sequence logits at that position) */
    size_t row = 0;
    for (int s = 0; s < step->n_seqs; s++) {
        row += (size_t)step->n_tokens[s];
        memcpy(h + (size_t)s * emb, x + (row - 1) * emb, emb * sizeof(float));
        rb->slot_len[step->slots[s]] += step->n_tokens[s];
    }
    ke_op_layer_norm(h, (size_t)step->n_seqs, emb, &m->final_layer_norm.weight,
                     &m->final_layer_norm.bias, tc->layer_norm_eps, h);
    ke_op_linear(h, (size_t)step->n_seqs, &m->lm_head, NULL, logits, rb->lin_scratch);
    return KS_OK;
}

static ks_status ref_copy_slot(ke_backend *b, int src, int dst)
{
    ref_backend *rb = (ref_backend *)b;
    if (src < 0 || src >= b->slots || dst < 0 || dst >= b->slots)
        return ks_fail(KS_ERR_INVALID, "copy_slot: slot %d -> %d out of range (0..%d)", src, dst,
                       b->slots - 1);
    if (src == dst)
        return KS_OK;
    size_t emb = (size_t)b->model->config.text.embed_dim;
    size_t n = (size_t)rb->slot_len[src] * emb * sizeof(float);
    for (int l = 0; l < b->model->config.text.layers; l++) {
        memcpy(kv_row(rb, rb->k_cache, dst, l, 0), kv_row(rb, rb->k_cache, src, l, 0), n);
        memcpy(kv_row(rb, rb->v_cache, dst, l, 0), kv_row(rb, rb->v_cache, src, l, 0), n);
    }
    rb->slot_len[dst] = rb->slot_len[src];
    return KS_OK;
}

static void ref_release_slot(ke_backend *b, int slot)
{
    ref_backend *rb = (ref_backend *)b;
    if (slot >= 0 && slot < b->slots)
        rb->slot_len[slot] = 0;
}

/* The linears quant.h names in m (vision layers, resampler, text layers); returns how many,
 * filling out (when not NULL). */
static size_t model_linears(ke_model *m, ke_linear **out)
{
    size_t n = 0;
#define ADD(l)                                                                                     \
    do {                                                                                           \
        if (out)                                                                                   \
            out[n] = (l);                                                                          \
        n++;                                                                                       \
    } while (0)
    for (int l = 0; m->vision_layers && l < m->config.vision.layers; l++) {
        ke_vision_layer *L = &m->vision_layers[l];
        ADD(&L->q_proj);
        ADD(&L->k_proj);
        ADD(&L->v_proj);
        ADD(&L->out_proj);
        ADD(&L->fc1);
        ADD(&L->fc2);
    }
    ADD(&m->dense);
    ADD(&m->x_q_proj);
    ADD(&m->x_k_proj);
    ADD(&m->x_v_proj);
    ADD(&m->x_out_proj);
    for (int l = 0; m->text_layers && l < m->config.text.layers; l++) {
        ke_text_layer *L = &m->text_layers[l];
        ADD(&L->q_proj);
        ADD(&L->k_proj);
        ADD(&L->v_proj);
        ADD(&L->out_proj);
        ADD(&L->fc1);
        ADD(&L->fc2);
    }
#undef ADD
    return n;
}

static void free_q8(ref_backend *rb)
{
    size_t n = model_linears(&rb->q8, NULL);
    ke_linear **lins = calloc(n ? n : 1, sizeof *lins);
    if (lins) {
        model_linears(&rb->q8, lins);
        for (size_t i = 0; i < n; i++)
            if (lins[i]->weight.dtype == KE_DTYPE_I8)
                ke_q8_tensor_free(&lins[i]->weight);
    }
    free(lins);
    free(rb->q8.vision_layers);
    free(rb->q8.text_layers);
    memset(&rb->q8, 0, sizeof rb->q8);
}

/* rb->q8: the model with every linear weight quant.h names quantized. */
static ks_status quantize(ref_backend *rb)
{
    const ke_model *m = rb->base.model;
    ke_model *q = &rb->q8;
    *q = *m;
    size_t nv = (size_t)m->config.vision.layers, nt = (size_t)m->config.text.layers;
    q->vision_layers = malloc((nv ? nv : 1) * sizeof *q->vision_layers);
    q->text_layers = malloc((nt ? nt : 1) * sizeof *q->text_layers);
    ke_linear **lins = NULL;
    ks_status st = KS_OK;
    if (!q->vision_layers || !q->text_layers) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    memcpy(q->vision_layers, m->vision_layers, nv * sizeof *q->vision_layers);
    memcpy(q->text_layers, m->text_layers, nt * sizeof *q->text_layers);
    size_t n = model_linears(q, NULL);
    if (!(lins = calloc(n ? n : 1, sizeof *lins))) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    model_linears(q, lins);
    for (size_t i = 0; i < n && st == KS_OK; i++) {
        ke_tensor src = lins[i]->weight;
        st = ke_q8_tensor_new(&src, &lins[i]->weight);
        if (st != KS_OK)
            lins[i]->weight = src; /* not ours: free_q8 leaves it */
    }
cleanup:
    free(lins);
    if (st != KS_OK) {
        free_q8(rb);
        ks_error_prefix("reference backend: quantizing the weights to int8");
    }
    return st;
}

static void ref_destroy(ke_backend *b)
{
    ref_backend *rb = (ref_backend *)b;
    free_q8(rb);
    free(rb->k_cache);
    free(rb->v_cache);
    free(rb->slot_len);
    free(rb->freq);
    free(rb->x);
    free(rb->h);
    free(rb->q);
    free(rb->k);
    free(rb->v);
    free(rb->ctx);
    free(rb->ffn);
    free(rb->lin_scratch);
    free(rb->att_scratch);
    free(rb);
}

static const ke_backend_ops ref_ops_table = {
    .name = "ref",
    .encode_images = ref_encode_images,
    .forward = ref_forward,
    .copy_slot = ref_copy_slot,
    .release_slot = ref_release_slot,
    .destroy = ref_destroy,
};

static ks_status check_config(const ke_config *c)
{
    const ke_vision_config *vc = &c->vision;
    const ke_text_config *tc = &c->text;
    if (vc->heads < 1 || vc->hidden_size % vc->heads != 0 || vc->patch_size < 1 ||
        vc->image_size % vc->patch_size != 0 || vc->layers < 0 || vc->channels < 1)
        return ks_fail(KS_ERR_INVALID, "reference backend: inconsistent vision config");
    if (tc->heads < 1 || tc->embed_dim % tc->heads != 0 || tc->layers < 0 || tc->vocab_size < 1)
        return ks_fail(KS_ERR_INVALID, "reference backend: inconsistent text config");
    if (tc->embed_dim < 4)
        return ks_fail(KS_ERR_UNSUPPORTED,
                       "reference backend: embed_dim %d < 4 has no sinusoid table", tc->embed_dim);
    if (c->latent_query_num < 1)
        return ks_fail(KS_ERR_INVALID, "reference backend: latent_query_num %d",
                       c->latent_query_num);
    return KS_OK;
}

ks_status ke_backend_ref_new(const ke_model *model, const ke_backend_options *options,
                             ke_backend **out)
{
    ks_status status = KS_OK;
    *out = NULL;
    if (model == NULL || options == NULL)
        return ks_fail(KS_ERR_INVALID, "reference backend: no model or options");
    if (options->slots < 1 || options->slot_capacity < 1)
        return ks_fail(KS_ERR_INVALID, "reference backend: %d slots of %d tokens", options->slots,
                       options->slot_capacity);
    if (options->vision_chunk < 0)
        return ks_fail(KS_ERR_INVALID, "reference backend: a vision chunk of %d images",
                       options->vision_chunk);
    if ((status = check_config(&model->config)) != KS_OK)
        return status;
    const ke_text_config *tc = &model->config.text;
    ref_backend *rb = calloc(1, sizeof *rb);
    if (rb == NULL)
        goto nomem;
    rb->base.ops = &ref_ops_table;
    rb->base.model = model;
    rb->base.slots = options->slots;
    rb->base.slot_capacity = options->slot_capacity;
    /* Images run one at a time here whatever the chunk, so it only sets the worker's step */
    rb->base.vision_chunk = options->vision_chunk ? options->vision_chunk : REF_VISION_CHUNK;
    rb->resampler_full = options->resampler_full_attention;
    rb->weights = model;
    if (options->weights_int8) {
        if ((status = quantize(rb)) != KS_OK) {
            ref_destroy(&rb->base);
            return status;
        }
        rb->weights = &rb->q8;
    }

    size_t emb = (size_t)tc->embed_dim;
    size_t per_layer = (size_t)options->slot_capacity * emb;
    if ((size_t)tc->layers > 0 && per_layer > SIZE_MAX / sizeof(float) / (size_t)tc->layers)
        goto nomem;
    rb->slot_stride = (size_t)tc->layers * per_layer;
    if (rb->slot_stride > 0 && (size_t)options->slots > SIZE_MAX / sizeof(float) / rb->slot_stride)
        goto nomem;
    rb->k_cache = alloc_floats((size_t)options->slots * rb->slot_stride);
    rb->v_cache = alloc_floats((size_t)options->slots * rb->slot_stride);
    rb->slot_len = calloc((size_t)options->slots, sizeof(int));
    rb->freq = alloc_floats(emb / 2);
    size_t widest = emb > (size_t)tc->ffn_dim ? emb : (size_t)tc->ffn_dim;
    rb->lin_scratch = alloc_floats(ke_op_linear_scratch(widest));
    rb->att_scratch = alloc_floats((size_t)options->slot_capacity);
    if (!rb->k_cache || !rb->v_cache || !rb->slot_len || !rb->freq || !rb->lin_scratch ||
        !rb->att_scratch)
        goto nomem;
    ke_op_sinusoid_freqs(tc->embed_dim, rb->freq);
    *out = &rb->base;
    return KS_OK;

nomem:
    if (rb)
        ref_destroy(&rb->base);
    return ks_fail(KS_ERR_NOMEM, "reference backend: out of memory for %d slots of %d tokens",
                   options->slots, options->slot_capacity);
}
