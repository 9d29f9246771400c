/* backend_cl: the OpenCL backend (see backend_cl.h). The same forward pass as backend_ref.c,
 * step for step, with the ops of backend_cl_ops.h and every matrix product through cl_gemm.h.
 * Not here: kernel code (the .cl files of kernels/), the GEMM, device listing (kc_device.h).
 *
 * Device memory:
 *   weights   one read-only buffer per tensor, created straight from the model's memory (the
 *             safetensors map) with CL_MEM_COPY_HOST_PTR; q/k/v are fused into one (3E, E)
 *             buffer per layer (and the resampler's k/v into (2E, E)), written part by part,
 *             so one GEMM makes Q, K and V.
 *   KV cache  per text layer, K and V of (slots · capacity, embed) f32: slot s owns rows
 *             [s · capacity, (s + 1) · capacity), as backend_ref.c lays it out per slot. Each
 *             slot has its own length; sequences join and leave without touching the others.
 *   scratch   text activations for the largest step so far (grown on demand); the vision pass
 *             allocates its own for the images of the call and frees them.
 * Every step runs each op over the tokens of all its sequences at once; attention is told per
 * row which keys it sees (kernels/attention.cl), so one launch serves sequences of different
 * lengths. forward(..., NULL) keeps the logits on the device for select_greedy or
 * select_sample (then fetch_logits reads single rows the host path needs). */
#include "backend_cl.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cl_ops.h"
#include "cl_gemm.h"
#include "kc_context.h"
#include "kc_error.h"
#include "ref_ops.h"

typedef struct cl_lin {
    cl_mem w, b; /* b NULL when absent */
} cl_lin;

typedef struct cl_ln {
    cl_mem w, b;
} cl_ln;

typedef struct cl_vlayer {
    cl_ln ln1, ln2;
    cl_lin qkv; /* (3·hid, hid) */
    cl_lin out, fc1, fc2;
} cl_vlayer;

typedef struct cl_tlayer {
    cl_ln ln_attn, ln_inner, ln_final, ln_ffn;
    cl_lin qkv; /* (3·E, E) */
    cl_lin out, fc1, fc2;
    cl_mem kc, vc; /* (slots · capacity, E) f32 */
} cl_tlayer;

typedef struct cl_backend {
    ke_backend base;
    kc_context *ctx;
    cl_command_queue queue;
    ke_cl_gemm *gemm;
    ke_cl_ops *ops;
    ke_dtype wdt;
    bool resampler_full;
    size_t device_bytes;

    cl_mem patch_w, class_emb, pos_emb;
    cl_ln pre_ln, post_ln;
    cl_vlayer *vl;
    cl_lin dense, xq, xkv, xout;
    cl_mem latent; /* (latent_query_num, E) f32 */
    cl_mem embed, lm_head;
    cl_tlayer *tl;
    cl_ln final_ln;
    cl_mem freq; /* (E / 2) f32 */
    cl_mem dummy; /* a valid buffer for arguments a kernel does not read */

    int *slot_len; /* [slots] */

    /* text scratch, for up to `tokens` tokens / `seqs` sequences */
    size_t tokens, seqs, img_rows, sel_rows, hist_len;
    cl_mem x, h, att, qkv, ffn;        /* (tokens, E / E / E / 3E / ffn) */
    cl_mem tok, dest, arows;           /* (tokens) int4, int, int4 */
    cl_mem gidx, last, logits;         /* (seqs) int, (seqs, E), (seqs, vocab) */
    cl_mem image_rows;                 /* (img_rows, E) */
    cl_mem sel_info, sel_hist, sel_out; /* (sel_rows, 5) int, (hist_len) int, (sel_rows) int */
    cl_int4 *h_tok, *h_arows;          /* host staging, live until the step completes */
    cl_int *h_dest, *h_gidx, *h_info, *h_hist, *h_out;
    /* select_sample's lists: (cand_rows, 4) int info, (cand_cap) values and ids, (cand_rows, 4)
     * ulong stats */
    size_t cand_rows, cand_cap;
    cl_mem cand_info, cand_val, cand_id, cand_stat;
    cl_int *h_cinfo, *h_cid;
    float *h_cval;
    cl_ulong *h_cstat;
    int logits_rows; /* rows left on the device by forward(NULL), for select_greedy */
    bool selected;   /* a select ran since the last forward (its bans are in the logits) */
    bool pending;    /* commands from host staging may still be queued */
} cl_backend;

static float inv_sqrt_head_dim(int head_dim)
{
    return (float)pow((double)head_dim, -0.5); /* as backend_ref.c */
}

/* ---- buffers ------------------------------------------------------------------------------ */

static ks_status new_buffer(cl_backend *cb, cl_mem_flags flags, size_t bytes, const void *host,
                            cl_mem *out, const char *what)
{
    ks_status st = kc_context_buffer(cb->ctx, flags, bytes ? bytes : 4, host, out);
    if (st != KS_OK)
        ks_error_prefix("allocating %s (%zu bytes)", what, bytes);
    else
        cb->device_bytes += bytes;
    return st;
}

static void free_buffer(cl_backend *cb, cl_mem *buf)
{
    if (*buf) {
        size_t bytes = 0;
        if (clGetMemObjectInfo(*buf, CL_MEM_SIZE, sizeof bytes, &bytes, NULL) == CL_SUCCESS &&
            bytes <= cb->device_bytes)
            cb->device_bytes -= bytes;
    }
    kc_context_buffer_free(cb->ctx, buf);
}

static size_t tensor_bytes(const ke_tensor *t)
{
    return ke_tensor_numel(t) * (t->dtype == KE_DTYPE_F16 ? 2 : 4);
}

/* One weight tensor, copied to the device straight from its memory (NULL buffer if absent). */
static ks_status upload(cl_backend *cb, const ke_tensor *t, const char *name, cl_mem *out)
{
    *out = NULL;
    if (t->data == NULL)
        return KS_OK;
    if (t->dtype != cb->wdt)
        return ks_fail(KS_ERR_INVALID, "tensor %s is not in the model's storage dtype", name);
    return new_buffer(cb, CL_MEM_READ_ONLY, tensor_bytes(t), t->data, out, name);
}

/* Several tensors of the same dtype back to back in one buffer (absent parts are zeros), each
 * written from its own memory; NULL when every part is absent. */
static ks_status upload_cat(cl_backend *cb, const ke_tensor *const *parts, int n, const char *name,
                            cl_mem *out)
{
    ks_status status = KS_OK;
    size_t total = 0, each = 0;
    bool any = false;
    *out = NULL;
    for (int i = 0; i < n; i++) {
        if (parts[i]->data) {
            any = true;
            each = tensor_bytes(parts[i]);
            if (parts[i]->dtype != cb->wdt)
                return ks_fail(KS_ERR_INVALID, "tensor %s is not in the storage dtype", name);
        }
    }
    if (!any)
        return KS_OK;
    total = each * (size_t)n; /* parts of one fused linear all have the same shape */
    if ((status = new_buffer(cb, CL_MEM_READ_ONLY, total, NULL, out, name)) != KS_OK)
        return status;
    for (int i = 0; i < n; i++) {
        if (parts[i]->data) {
            KC_CHECK(clEnqueueWriteBuffer(cb->queue, *out, CL_TRUE, (size_t)i * each, each,
                                          parts[i]->data, 0, NULL, NULL));
        } else {
            cl_ushort zero = 0;
            KC_CHECK(clEnqueueFillBuffer(cb->queue, *out, &zero, sizeof zero, (size_t)i * each,
                                         each, 0, NULL, NULL));
        }
    }
cleanup:
    if (status != KS_OK)
        ks_error_prefix("uploading %s (%zu bytes)", name, total);
    return status;
}

static ks_status upload_lin(cl_backend *cb, const ke_linear *l, const char *name, cl_lin *out)
{
    ks_status st = upload(cb, &l->weight, name, &out->w);
    if (st == KS_OK)
        st = upload(cb, &l->bias, name, &out->b);
    return st;
}

static ks_status upload_ln(cl_backend *cb, const ke_layer_norm *l, const char *name, cl_ln *out)
{
    ks_status st = upload(cb, &l->weight, name, &out->w);
    if (st == KS_OK)
        st = upload(cb, &l->bias, name, &out->b);
    if (st == KS_OK && (!out->w || !out->b))
        st = ks_fail(KS_ERR_UNSUPPORTED, "%s: a LayerNorm without weight or bias", name);
    return st;
}

static ks_status upload_fused(cl_backend *cb, const ke_linear *const *lins, int n,
                              const char *name, cl_lin *out)
{
    const ke_tensor *w[3], *b[3];
    for (int i = 0; i < n; i++) {
        w[i] = &lins[i]->weight;
        b[i] = &lins[i]->bias;
    }
    ks_status st = upload_cat(cb, w, n, name, &out->w);
    if (st == KS_OK)
        st = upload_cat(cb, b, n, name, &out->b);
    return st;
}

/* ---- GEMM shorthand ----------------------------------------------------------------------- */

/* y (m, n) [+]= x (m, k) · Wᵀ + b with contiguous rows (offsets in floats). */
static ks_status linear(cl_backend *cb, cl_mem x, size_t x_off, size_t m, size_t k, cl_lin w,
                        size_t n, cl_mem y, size_t y_off, size_t ldy, bool acc, const char *what)
{
    if (m == 0)
        return KS_OK;
    ke_cl_gemm_args a = {.m = m, .n = n, .k = k, .x = x, .x_offset = x_off, .ldx = k, .w = w.w,
                         .w_dtype = cb->wdt, .bias = w.b, .y = y, .y_offset = y_off, .ldy = ldy,
                         .accumulate = acc};
    ks_status st = ke_cl_gemm_run(cb->gemm, &a);
    if (st != KS_OK)
        ks_error_prefix("%s (gemm m %zu, n %zu, k %zu)", what, m, n, k);
    return st;
}

static ks_status write_buf(cl_backend *cb, cl_mem buf, bool blocking, size_t bytes,
                           const void *host)
{
    ks_status status = KS_OK;
    if (bytes == 0)
        return KS_OK;
    KC_CHECK(clEnqueueWriteBuffer(cb->queue, buf, blocking ? CL_TRUE : CL_FALSE, 0, bytes, host, 0,
                                  NULL, NULL));
cleanup:
    return status;
}

static ks_status read_buf(cl_backend *cb, cl_mem buf, size_t bytes, void *host)
{
    ks_status status = KS_OK;
    if (bytes == 0)
        return KS_OK;
    KC_CHECK(clEnqueueReadBuffer(cb->queue, buf, CL_TRUE, 0, bytes, host, 0, NULL, NULL));
cleanup:
    return status;
}

/* ---- vision tower + resampler ------------------------------------------------------------- */

enum { V_PIX, V_PATCH, V_POUT, V_X, V_H, V_QKV, V_ATT, V_MLP, V_ROWS, V_KV, V_RQ, V_RKV, V_RATT,
       V_EMB, V_COUNT };

static ks_status cl_encode_images(ke_backend *b, const float *pixels, int n, float *image_embeds,
                                  const ke_vision_taps *taps)
{
    cl_backend *cb = (cl_backend *)b;
    const ke_config *c = &b->model->config;
    const ke_vision_config *vc = &c->vision;
    if (n < 0 || (n > 0 && (pixels == NULL || image_embeds == NULL)))
        return ks_fail(KS_ERR_INVALID, "encode_images: %d images without buffers", n);
    if (n == 0)
        return KS_OK;
    size_t N = (size_t)n;
    size_t hid = (size_t)vc->hidden_size, grid = (size_t)(vc->image_size / vc->patch_size);
    size_t np = grid * grid, seq = np + 1;
    size_t pw = (size_t)vc->channels * (size_t)vc->patch_size * (size_t)vc->patch_size;
    size_t inter = (size_t)vc->intermediate_size;
    size_t E = (size_t)c->text.embed_dim, lq = (size_t)c->latent_query_num, kvr = seq + lq;
    size_t rows = N * seq;
    size_t pix = (size_t)vc->channels * (size_t)vc->image_size * (size_t)vc->image_size;
    size_t n_arows = rows > N * lq ? rows : N * lq;
    size_t sizes[V_COUNT] = {
        [V_PIX] = N * pix * 4,        [V_PATCH] = N * np * pw * 4, [V_POUT] = N * np * hid * 4,
        [V_X] = rows * hid * 4,       [V_H] = rows * hid * 4,      [V_QKV] = rows * 3 * hid * 4,
        [V_ATT] = rows * hid * 4,     [V_MLP] = rows * inter * 4,
        [V_ROWS] = n_arows * sizeof(cl_int4),                      [V_KV] = N * kvr * E * 4,
        [V_RQ] = lq * E * 4,          [V_RKV] = N * kvr * 2 * E * 4, [V_RATT] = N * lq * E * 4,
        [V_EMB] = N * lq * E * 4};
    static const char *const names[V_COUNT] = {
        "pixels", "patches", "patch embeddings", "vision hidden states", "vision scratch",
        "vision q/k/v", "vision attention output", "vision MLP", "attention rows",
        "resampler keys/values input", "resampler queries", "resampler keys/values",
        "resampler attention output", "image embeddings"};
    cl_mem buf[V_COUNT] = {0};
    cl_int4 *arows = NULL;
    ks_status status = KS_OK;
    const char *stage = "allocating";

    if (cb->pending && (status = kc_context_finish(cb->ctx)) != KS_OK)
        goto cleanup;
    cb->pending = false;
    for (int i = 0; i < V_COUNT; i++)
        if ((status = new_buffer(cb, CL_MEM_READ_WRITE, sizes[i], i == V_PIX ? pixels : NULL,
                                 &buf[i], names[i])) != KS_OK)
            goto cleanup;
    arows = malloc(n_arows * sizeof *arows);
    if (!arows) {
        status = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }

    /* patch embedding (unfold + GEMM), class token, positions, pre-LayerNorm */
    stage = "vision embeddings";
    if ((status = ke_cl_unfold_patches(cb->ops, buf[V_PIX], n, vc->channels, vc->image_size,
                                       vc->patch_size, buf[V_PATCH])) != KS_OK ||
        (status = linear(cb, buf[V_PATCH], 0, N * np, pw, (cl_lin){cb->patch_w, NULL}, hid,
                         buf[V_POUT], 0, hid, false, "patch embedding")) != KS_OK ||
        (status = ke_cl_vision_embed(cb->ops, buf[V_POUT], cb->class_emb, cb->pos_emb, n,
                                     (int)seq, (int)hid, buf[V_X])) != KS_OK ||
        (status = ke_cl_layer_norm(cb->ops, buf[V_X], rows, hid, cb->pre_ln.w, cb->pre_ln.b,
                                   vc->layer_norm_eps, buf[V_X])) != KS_OK)
        goto cleanup;

    for (size_t r = 0; r < rows; r++)
        arows[r] = (cl_int4){{(cl_int)r, (cl_int)(r / seq * seq), (cl_int)seq, 0}};
    if ((status = write_buf(cb, buf[V_ROWS], true, rows * sizeof *arows, arows)) != KS_OK)
        goto cleanup;

    int vheads = vc->heads, vhd = vc->hidden_size / vheads;
    for (int l = 0; l < vc->layers; l++) {
        const cl_vlayer *L = &cb->vl[l];
        char what[48];
        snprintf(what, sizeof what, "vision layer %d", l);
        stage = what;
        ke_cl_attention_args att = {.q = buf[V_QKV], .q_off = 0, .q_stride = 3 * hid,
                                    .k = buf[V_QKV], .v = buf[V_QKV], .k_off = hid,
                                    .v_off = 2 * hid, .kv_stride = 3 * hid, .rows = buf[V_ROWS],
                                    .n_rows = rows, .heads = vheads, .head_dim = vhd,
                                    .scale = inv_sqrt_head_dim(vhd), .out = buf[V_ATT],
                                    .out_stride = hid};
        if ((status = ke_cl_layer_norm(cb->ops, buf[V_X], rows, hid, L->ln1.w, L->ln1.b,
                                       vc->layer_norm_eps, buf[V_H])) != KS_OK ||
            (status = linear(cb, buf[V_H], 0, rows, hid, L->qkv, 3 * hid, buf[V_QKV], 0, 3 * hid,
                             false, "q/k/v")) != KS_OK ||
            (status = ke_cl_attention(cb->ops, &att)) != KS_OK ||
            (status = linear(cb, buf[V_ATT], 0, rows, hid, L->out, hid, buf[V_X], 0, hid, true,
                             "out_proj")) != KS_OK ||
            (status = ke_cl_layer_norm(cb->ops, buf[V_X], rows, hid, L->ln2.w, L->ln2.b,
                                       vc->layer_norm_eps, buf[V_H])) != KS_OK ||
            (status = linear(cb, buf[V_H], 0, rows, hid, L->fc1, inter, buf[V_MLP], 0, inter,
                             false, "fc1")) != KS_OK ||
            (status = ke_cl_activation(cb->ops, buf[V_MLP], rows * inter, vc->activation)) !=
                KS_OK ||
            (status = linear(cb, buf[V_MLP], 0, rows, inter, L->fc2, hid, buf[V_X], 0, hid, true,
                             "fc2")) != KS_OK)
            goto cleanup;
    }

    /* post_layernorm on every token, the tap, then the L2 normalisation */
    stage = "post_layernorm";
    if ((status = ke_cl_layer_norm(cb->ops, buf[V_X], rows, hid, cb->post_ln.w, cb->post_ln.b,
                                   vc->layer_norm_eps, buf[V_X])) != KS_OK)
        goto cleanup;
    if (taps && taps->post_layernorm &&
        (status = read_buf(cb, buf[V_X], rows * hid * 4, taps->post_layernorm)) != KS_OK)
        goto cleanup;
    if ((status = ke_cl_l2_normalize(cb->ops, buf[V_X], rows, hid, 1e-12f)) != KS_OK)
        goto cleanup;

    /* resampler: per image KV input = concat(dense(features), latent_query); Q from the
     * latent queries (the same for every image); attention rows per image */
    stage = "resampler";
    for (size_t i = 0; i < N; i++) {
        if ((status = linear(cb, buf[V_X], i * seq * hid, seq, hid, cb->dense, E, buf[V_KV],
                             i * kvr * E, E, false, "dense")) != KS_OK)
            goto cleanup;
        KC_CHECK(clEnqueueCopyBuffer(cb->queue, cb->latent, buf[V_KV], 0,
                                     (i * kvr + seq) * E * sizeof(float), lq * E * sizeof(float),
                                     0, NULL, NULL));
    }
    for (size_t i = 0; i < N; i++)
        for (size_t r = 0; r < lq; r++)
            arows[i * lq + r] = (cl_int4){
                {(cl_int)r, (cl_int)(i * kvr), (cl_int)(cb->resampler_full ? kvr : r + 1), 0}};
    int theads = c->text.heads, thd = c->text.embed_dim / theads;
    ke_cl_attention_args ratt = {.q = buf[V_RQ], .q_off = 0, .q_stride = E, .k = buf[V_RKV],
                                 .v = buf[V_RKV], .k_off = 0, .v_off = E, .kv_stride = 2 * E,
                                 .rows = buf[V_ROWS], .n_rows = N * lq, .heads = theads,
                                 .head_dim = thd, .scale = inv_sqrt_head_dim(thd),
                                 .out = buf[V_RATT], .out_stride = E};
    if ((status = write_buf(cb, buf[V_ROWS], true, N * lq * sizeof *arows, arows)) != KS_OK ||
        (status = linear(cb, cb->latent, 0, lq, E, cb->xq, E, buf[V_RQ], 0, E, false,
                         "x_q_proj")) != KS_OK ||
        (status = linear(cb, buf[V_KV], 0, N * kvr, E, cb->xkv, 2 * E, buf[V_RKV], 0, 2 * E,
                         false, "x_k_proj/x_v_proj")) != KS_OK ||
        (status = ke_cl_attention(cb->ops, &ratt)) != KS_OK ||
        (status = linear(cb, buf[V_RATT], 0, N * lq, E, cb->xout, E, buf[V_EMB], 0, E, false,
                         "x_out_proj")) != KS_OK ||
        (status = read_buf(cb, buf[V_EMB], N * lq * E * 4, image_embeds)) != KS_OK)
        goto cleanup;

cleanup:
    if (status != KS_OK)
        ks_error_prefix("OpenCL encode_images (%d images), %s", n, stage);
    for (int i = 0; i < V_COUNT; i++)
        free_buffer(cb, &buf[i]);
    free(arows);
    return status;
}

/* ---- text decoder ------------------------------------------------------------------------ */

/* Grows a set of buffers (and their host staging) to `want` rows. */
static ks_status grow_tokens(cl_backend *cb, size_t want)
{
    if (want <= cb->tokens)
        return KS_OK;
    const ke_text_config *tc = &cb->base.model->config.text;
    size_t E = (size_t)tc->embed_dim;
    cl_mem *bufs[] = {&cb->x, &cb->h, &cb->att, &cb->qkv, &cb->ffn, &cb->tok, &cb->dest,
                      &cb->arows};
    size_t bytes[] = {want * E * 4, want * E * 4, want * E * 4, want * 3 * E * 4,
                      want * (size_t)tc->ffn_dim * 4, want * sizeof(cl_int4),
                      want * sizeof(cl_int), want * sizeof(cl_int4)};
    cb->tokens = 0;
    free(cb->h_tok);
    free(cb->h_arows);
    free(cb->h_dest);
    cb->h_tok = malloc(want * sizeof(cl_int4));
    cb->h_arows = malloc(want * sizeof(cl_int4));
    cb->h_dest = malloc(want * sizeof(cl_int));
    if (!cb->h_tok || !cb->h_arows || !cb->h_dest)
        return ks_fail(KS_ERR_NOMEM, "out of memory for %zu tokens", want);
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        free_buffer(cb, bufs[i]);
        ks_status st = new_buffer(cb, CL_MEM_READ_WRITE, bytes[i], NULL, bufs[i],
                                  "text activations");
        if (st != KS_OK)
            return st;
    }
    cb->tokens = want;
    return KS_OK;
}

static ks_status grow_seqs(cl_backend *cb, size_t want)
{
    if (want <= cb->seqs)
        return KS_OK;
    const ke_text_config *tc = &cb->base.model->config.text;
    cl_mem *bufs[] = {&cb->gidx, &cb->last, &cb->logits};
    size_t bytes[] = {want * sizeof(cl_int), want * (size_t)tc->embed_dim * 4,
                      want * (size_t)tc->vocab_size * 4};
    cb->seqs = 0;
    free(cb->h_gidx);
    cb->h_gidx = malloc(want * sizeof(cl_int));
    if (!cb->h_gidx)
        return ks_fail(KS_ERR_NOMEM, "out of memory for %zu sequences", want);
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        free_buffer(cb, bufs[i]);
        ks_status st = new_buffer(cb, CL_MEM_READ_WRITE, bytes[i], NULL, bufs[i], "logits");
        if (st != KS_OK)
            return st;
    }
    cb->seqs = want;
    return KS_OK;
}

static ks_status grow_images(cl_backend *cb, size_t want)
{
    if (want <= cb->img_rows)
        return KS_OK;
    cb->img_rows = 0;
    free_buffer(cb, &cb->image_rows);
    ks_status st = new_buffer(cb, CL_MEM_READ_ONLY,
                              want * (size_t)cb->base.model->config.text.embed_dim * 4, NULL,
                              &cb->image_rows, "image embedding rows");
    if (st == KS_OK)
        cb->img_rows = want;
    return st;
}

static ks_status cl_forward(ke_backend *b, const ke_step *step, float *logits)
{
    cl_backend *cb = (cl_backend *)b;
    const ke_model *m = b->model;
    const ke_text_config *tc = &m->config.text;
    size_t E = (size_t)tc->embed_dim, F = (size_t)tc->ffn_dim, V = (size_t)tc->vocab_size;
    size_t cap = (size_t)b->slot_capacity;
    int heads = tc->heads, hd = tc->embed_dim / heads;
    size_t T = 0;
    char stage[64] = "preparing";
    ks_status status = ke_step_check(&cb->base, step, cb->slot_len, &T);
    if (status != KS_OK)
        return status;
    size_t S = (size_t)step->n_seqs;
    if (cb->pending && (status = kc_context_finish(cb->ctx)) != KS_OK)
        goto cleanup;
    cb->pending = false;
    cb->logits_rows = 0;
    cb->selected = false;
    if ((status = grow_tokens(cb, T)) != KS_OK || (status = grow_seqs(cb, S)) != KS_OK)
        goto cleanup;

    /* per token: (id, position, image row), its cache row, the keys it sees; per sequence: its
     * last row */
    size_t row = 0, used = 0;
    for (size_t s = 0; s < S; s++) {
        int slot = step->slots[s];
        size_t past = (size_t)cb->slot_len[slot];
        for (int i = 0; i < step->n_tokens[s]; i++, row++) {
            bool img = step->image_mask && step->image_mask[row];
            cb->h_tok[row] = (cl_int4){
                {step->ids[row], step->positions[row], img ? (cl_int)used : -1, 0}};
            used += img;
            cb->h_dest[row] = (cl_int)((size_t)slot * cap + past + (size_t)i);
            cb->h_arows[row] = (cl_int4){
                {(cl_int)row, (cl_int)((size_t)slot * cap), (cl_int)(past + (size_t)i + 1), 0}};
        }
        cb->h_gidx[s] = (cl_int)(row - 1);
    }
    if ((status = grow_images(cb, used)) != KS_OK)
        goto cleanup;
    cb->pending = true; /* the non-blocking writes below read the staging arrays */
    if ((status = write_buf(cb, cb->tok, false, T * sizeof(cl_int4), cb->h_tok)) != KS_OK ||
        (status = write_buf(cb, cb->dest, false, T * sizeof(cl_int), cb->h_dest)) != KS_OK ||
        (status = write_buf(cb, cb->arows, false, T * sizeof(cl_int4), cb->h_arows)) != KS_OK ||
        (status = write_buf(cb, cb->gidx, false, S * sizeof(cl_int), cb->h_gidx)) != KS_OK ||
        (status = write_buf(cb, cb->image_rows, true, used * E * 4, step->image_embeds)) != KS_OK)
        goto cleanup;

    float embed_scale = tc->scale_embedding ? (float)sqrt((double)tc->embed_dim) : 1.0f;
    if ((status = ke_cl_text_embed(cb->ops, cb->embed, cb->tok, T,
                                   cb->image_rows ? cb->image_rows : cb->dummy, cb->freq,
                                   embed_scale, tc->pad_id, tc->embed_dim, cb->x)) != KS_OK)
        goto cleanup;

    for (int l = 0; l < tc->layers; l++) {
        const cl_tlayer *L = &cb->tl[l];
        float eps = tc->layer_norm_eps;
        snprintf(stage, sizeof stage, "text layer %d", l);
        ke_cl_attention_args att = {.q = cb->qkv, .q_off = 0, .q_stride = 3 * E, .k = L->kc,
                                    .v = L->vc, .k_off = 0, .v_off = 0, .kv_stride = E,
                                    .rows = cb->arows, .n_rows = T, .heads = heads,
                                    .head_dim = hd, .scale = inv_sqrt_head_dim(hd),
                                    .out = cb->att, .out_stride = E};
        if ((status = ke_cl_layer_norm(cb->ops, cb->x, T, E, L->ln_attn.w, L->ln_attn.b, eps,
                                       cb->h)) != KS_OK ||
            (status = linear(cb, cb->h, 0, T, E, L->qkv, 3 * E, cb->qkv, 0, 3 * E, false,
                             "q/k/v")) != KS_OK ||
            (status = ke_cl_kv_store(cb->ops, cb->qkv, (int)(3 * E), (int)E, (int)(2 * E), L->kc,
                                     L->vc, cb->dest, (int)E, T)) != KS_OK ||
            (status = ke_cl_attention(cb->ops, &att)) != KS_OK ||
            (status = ke_cl_layer_norm(cb->ops, cb->att, T, E, L->ln_inner.w, L->ln_inner.b, eps,
                                       cb->att)) != KS_OK ||
            (status = linear(cb, cb->att, 0, T, E, L->out, E, cb->x, 0, E, true, "out_proj")) !=
                KS_OK ||
            (status = ke_cl_layer_norm(cb->ops, cb->x, T, E, L->ln_final.w, L->ln_final.b, eps,
                                       cb->h)) != KS_OK ||
            (status = linear(cb, cb->h, 0, T, E, L->fc1, F, cb->ffn, 0, F, false, "fc1")) !=
                KS_OK ||
            (status = ke_cl_activation(cb->ops, cb->ffn, T * F, tc->activation)) != KS_OK ||
            (status = ke_cl_layer_norm(cb->ops, cb->ffn, T, F, L->ln_ffn.w, L->ln_ffn.b, eps,
                                       cb->ffn)) != KS_OK ||
            (status = linear(cb, cb->ffn, 0, T, F, L->fc2, E, cb->x, 0, E, true, "fc2")) != KS_OK)
            goto cleanup;
    }

    /* final LayerNorm and lm_head on the last new token of each sequence only */
    snprintf(stage, sizeof stage, "logits");
    if ((status = ke_cl_gather_rows(cb->ops, cb->x, cb->gidx, S, (int)E, cb->last)) != KS_OK ||
        (status = ke_cl_layer_norm(cb->ops, cb->last, S, E, cb->final_ln.w, cb->final_ln.b,
                                   tc->layer_norm_eps, cb->last)) != KS_OK ||
        (status = linear(cb, cb->last, 0, S, E, (cl_lin){cb->lm_head, NULL}, V, cb->logits, 0, V,
                         false, "lm_head")) != KS_OK)
        goto cleanup;
    for (size_t s = 0; s < S; s++)
        cb->slot_len[step->slots[s]] += step->n_tokens[s];
    if (logits) {
        snprintf(stage, sizeof stage, "reading %zu x %zu logits", S, V);
        if ((status = read_buf(cb, cb->logits, S * V * 4, logits)) != KS_OK)
            goto cleanup;
        cb->pending = false; /* a blocking read completes everything before it */
    }
    cb->logits_rows = (int)S;

cleanup:
    if (status != KS_OK) {
        ks_error_prefix("OpenCL forward (%zu sequences, %zu tokens), %s", S, T, stage);
        cb->logits_rows = 0;
    }
    return status;
}

/* Stages the rows of a select (info, histories) for select_greedy / select_sample. */
static ks_status stage_select(cl_backend *cb, const char *what, const ke_select_row *rows, int n,
                              size_t *hist_out, size_t *max_len_out)
{
    ks_status status = KS_OK;
    if (n < 1 || rows == NULL)
        return ks_fail(KS_ERR_INVALID, "%s: no rows", what);
    if (cb->logits_rows == 0 || cb->selected)
        return ks_fail(KS_ERR_INVALID, "%s: no logits on the device (call forward with logits "
                                       "NULL first; one select per forward)", what);
    size_t hist = 0, max_len = 0;
    for (int i = 0; i < n; i++) {
        if (rows[i].row < 0 || rows[i].row >= cb->logits_rows || (rows[i].len && !rows[i].ids) ||
            rows[i].no_repeat_ngram_size < 0)
            return ks_fail(KS_ERR_INVALID, "%s: row %d (logits row %d of %d)", what, i,
                           rows[i].row, cb->logits_rows);
        hist += rows[i].len;
        if (rows[i].len > max_len)
            max_len = rows[i].len;
    }
    if (hist > (size_t)INT32_MAX / 2)
        return ks_fail(KS_ERR_LIMIT, "%s: %zu ids of history", what, hist);
    if ((size_t)n > cb->sel_rows) {
        cb->sel_rows = 0;
        free_buffer(cb, &cb->sel_info);
        free_buffer(cb, &cb->sel_out);
        free(cb->h_info);
        free(cb->h_out);
        cb->h_info = malloc((size_t)n * 5 * sizeof(cl_int));
        cb->h_out = malloc((size_t)n * sizeof(cl_int));
        if (!cb->h_info || !cb->h_out)
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        if ((status = new_buffer(cb, CL_MEM_READ_ONLY, (size_t)n * 5 * sizeof(cl_int), NULL,
                                 &cb->sel_info, "selection rows")) != KS_OK ||
            (status = new_buffer(cb, CL_MEM_WRITE_ONLY, (size_t)n * sizeof(cl_int), NULL,
                                 &cb->sel_out, "selected ids")) != KS_OK)
            return status;
        cb->sel_rows = (size_t)n;
    }
    if (hist > cb->hist_len) {
        size_t want = hist * 2;
        cb->hist_len = 0;
        free_buffer(cb, &cb->sel_hist);
        free(cb->h_hist);
        cb->h_hist = malloc(want * sizeof(cl_int));
        if (!cb->h_hist)
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        if ((status = new_buffer(cb, CL_MEM_READ_ONLY, want * sizeof(cl_int), NULL,
                                 &cb->sel_hist, "id histories")) != KS_OK)
            return status;
        cb->hist_len = want;
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        cl_int *in = cb->h_info + (size_t)i * 5;
        in[0] = rows[i].row;
        in[1] = (cl_int)off;
        in[2] = (cl_int)rows[i].len;
        in[3] = rows[i].no_repeat_ngram_size;
        in[4] = rows[i].ban_eos ? 1 : 0;
        for (size_t t = 0; t < rows[i].len; t++)
            cb->h_hist[off + t] = rows[i].ids[t];
        off += rows[i].len;
    }
    if ((status = write_buf(cb, cb->sel_info, true, (size_t)n * 5 * sizeof(cl_int),
                            cb->h_info)) != KS_OK ||
        (status = write_buf(cb, cb->sel_hist, true, hist * sizeof(cl_int), cb->h_hist)) != KS_OK)
        return status;
    *hist_out = hist;
    *max_len_out = max_len;
    return KS_OK;
}

static ks_status cl_select_greedy(ke_backend *b, const ke_select_row *rows, int n, int32_t *ids)
{
    cl_backend *cb = (cl_backend *)b;
    const ke_text_config *tc = &b->model->config.text;
    ks_status status = KS_OK;
    size_t hist = 0, max_len = 0;
    if (ids == NULL)
        return ks_fail(KS_ERR_INVALID, "select_greedy: no rows");
    if ((status = stage_select(cb, "select_greedy", rows, n, &hist, &max_len)) != KS_OK)
        return status;
    cb->selected = true; /* the bans are in the logits; fetch_logits may read rows */
    if ((status = ke_cl_select_greedy(cb->ops, cb->logits, tc->vocab_size, cb->sel_info,
                                      cb->sel_hist, n, (int)max_len, tc->eos_id, cb->sel_out)) !=
            KS_OK ||
        (status = read_buf(cb, cb->sel_out, (size_t)n * sizeof(cl_int), cb->h_out)) != KS_OK) {
        ks_error_prefix("OpenCL select_greedy (%d sequences)", n);
        return status;
    }
    cb->pending = false;
    for (int i = 0; i < n; i++)
        ids[i] = cb->h_out[i];
    return KS_OK;
}

static ks_status grow_lists(cl_backend *cb, size_t rows, size_t cap)
{
    ks_status status = KS_OK;
    if (rows > cb->cand_rows) {
        cb->cand_rows = 0;
        free_buffer(cb, &cb->cand_info);
        free_buffer(cb, &cb->cand_stat);
        free(cb->h_cinfo);
        free(cb->h_cstat);
        cb->h_cinfo = malloc(rows * 4 * sizeof(cl_int));
        cb->h_cstat = malloc(rows * 4 * sizeof(cl_ulong));
        if (!cb->h_cinfo || !cb->h_cstat)
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        if ((status = new_buffer(cb, CL_MEM_READ_ONLY, rows * 4 * sizeof(cl_int), NULL,
                                 &cb->cand_info, "candidate list rows")) != KS_OK ||
            (status = new_buffer(cb, CL_MEM_WRITE_ONLY, rows * 4 * sizeof(cl_ulong), NULL,
                                 &cb->cand_stat, "candidate list sums")) != KS_OK)
            return status;
        cb->cand_rows = rows;
    }
    if (cap > cb->cand_cap) {
        cb->cand_cap = 0;
        free_buffer(cb, &cb->cand_val);
        free_buffer(cb, &cb->cand_id);
        free(cb->h_cval);
        free(cb->h_cid);
        cb->h_cval = malloc(cap * sizeof(float));
        cb->h_cid = malloc(cap * sizeof(cl_int));
        if (!cb->h_cval || !cb->h_cid)
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        if ((status = new_buffer(cb, CL_MEM_WRITE_ONLY, cap * sizeof(float), NULL,
                                 &cb->cand_val, "candidate values")) != KS_OK ||
            (status = new_buffer(cb, CL_MEM_WRITE_ONLY, cap * sizeof(cl_int), NULL,
                                 &cb->cand_id, "candidate ids")) != KS_OK)
            return status;
        cb->cand_cap = cap;
    }
    return KS_OK;
}

static ks_status cl_select_sample(ke_backend *b, const ke_select_row *rows, int n,
                                  ke_select_out *out)
{
    cl_backend *cb = (cl_backend *)b;
    const ke_text_config *tc = &b->model->config.text;
    const int V = tc->vocab_size;
    ks_status status = KS_OK;
    size_t hist = 0, max_len = 0, n_cand = 0, cap = 0;
    if (out == NULL)
        return ks_fail(KS_ERR_INVALID, "select_sample: no rows");
    for (int i = 0; i < n && rows; i++) {
        if (rows[i].candidates < 0 || rows[i].candidates > V ||
            (rows[i].candidates > 0 && (!out[i].values || !out[i].ids)) ||
            !(rows[i].tail_temperature >= 0.0f))
            return ks_fail(KS_ERR_INVALID, "select_sample: row %d wants %d candidates", i,
                           rows[i].candidates);
        if (rows[i].candidates > 0) {
            n_cand++;
            cap += (size_t)rows[i].candidates;
        }
    }
    if (cap > (size_t)INT32_MAX / 2)
        return ks_fail(KS_ERR_LIMIT, "select_sample: %zu candidates", cap);
    if ((status = stage_select(cb, "select_sample", rows, n, &hist, &max_len)) != KS_OK ||
        (status = grow_lists(cb, n_cand, cap)) != KS_OK)
        return status;
    size_t c = 0, off = 0;
    for (int i = 0; i < n; i++) {
        if (rows[i].candidates == 0)
            continue;
        cl_int *in = cb->h_cinfo + c * 4;
        in[0] = rows[i].row;
        in[1] = rows[i].candidates;
        in[2] = (cl_int)off;
        memcpy(&in[3], &rows[i].tail_temperature, sizeof(float));
        off += (size_t)rows[i].candidates;
        c++;
    }
    cb->selected = true; /* the bans are in the logits; fetch_logits may read rows */
    ke_cl_select_sample_args a = {.logits = cb->logits, .vocab = V, .info = cb->sel_info,
                                  .hist = cb->sel_hist, .n_sel = n, .max_len = (int)max_len,
                                  .eos = tc->eos_id, .out = cb->sel_out,
                                  .cinfo = cb->cand_info, .n_cand = (int)n_cand,
                                  .cval = cb->cand_val, .cid = cb->cand_id,
                                  .cstat = cb->cand_stat};
    if ((n_cand > 0 && (status = write_buf(cb, cb->cand_info, true, n_cand * 4 * sizeof(cl_int),
                                           cb->h_cinfo)) != KS_OK) ||
        (status = ke_cl_select_sample(cb->ops, &a)) != KS_OK ||
        (status = read_buf(cb, cb->sel_out, (size_t)n * sizeof(cl_int), cb->h_out)) != KS_OK ||
        (n_cand > 0 &&
         ((status = read_buf(cb, cb->cand_stat, n_cand * 4 * sizeof(cl_ulong), cb->h_cstat)) !=
              KS_OK ||
          (status = read_buf(cb, cb->cand_val, cap * sizeof(float), cb->h_cval)) != KS_OK ||
          (status = read_buf(cb, cb->cand_id, cap * sizeof(cl_int), cb->h_cid)) != KS_OK))) {
        ks_error_prefix("OpenCL select_sample (%d sequences, %zu lists)", n, n_cand);
        cb->logits_rows = 0;
        return status;
    }
    cb->pending = false;
    c = 0;
    off = 0;
    for (int i = 0; i < n; i++) {
        out[i].id = cb->h_out[i];
        if (rows[i].candidates == 0) {
            out[i].n = 0;
            out[i].valid = true;
            continue;
        }
        ke_cl_sample_stat_decode(cb->h_cstat + c * 4, V, rows[i].tail_temperature, &out[i]);
        if (out[i].n > rows[i].candidates) /* never: the kernel's lists fit */
            out[i].valid = false, out[i].n = 0;
        memcpy(out[i].values, cb->h_cval + off, (size_t)out[i].n * sizeof(float));
        memcpy(out[i].ids, cb->h_cid + off, (size_t)out[i].n * sizeof(int32_t));
        off += (size_t)rows[i].candidates;
        c++;
    }
    return KS_OK;
}

static ks_status cl_fetch_logits(ke_backend *b, int row, float *out)
{
    cl_backend *cb = (cl_backend *)b;
    size_t V = (size_t)b->model->config.text.vocab_size;
    if (row < 0 || row >= cb->logits_rows || out == NULL)
        return ks_fail(KS_ERR_INVALID, "fetch_logits: row %d of %d on the device", row,
                       cb->logits_rows);
    ks_status status = KS_OK;
    KC_CHECK(clEnqueueReadBuffer(cb->queue, cb->logits, CL_TRUE, (size_t)row * V * 4, V * 4, out,
                                 0, NULL, NULL));
    cb->pending = false;
cleanup:
    if (status != KS_OK)
        ks_error_prefix("OpenCL fetch_logits (row %d)", row);
    return status;
}

static ks_status cl_copy_slot(ke_backend *b, int src, int dst)
{
    cl_backend *cb = (cl_backend *)b;
    ks_status status = KS_OK;
    if (src < 0 || src >= b->slots || dst < 0 || dst >= b->slots)
        return ks_fail(KS_ERR_INVALID, "copy_slot: slot %d -> %d out of range (0..%d)", src, dst,
                       b->slots - 1);
    if (src == dst)
        return KS_OK;
    size_t row = (size_t)b->model->config.text.embed_dim * sizeof(float);
    size_t cap = (size_t)b->slot_capacity;
    size_t bytes = (size_t)cb->slot_len[src] * row;
    for (int l = 0; bytes > 0 && l < b->model->config.text.layers; l++) {
        KC_CHECK(clEnqueueCopyBuffer(cb->queue, cb->tl[l].kc, cb->tl[l].kc, (size_t)src * cap * row,
                                     (size_t)dst * cap * row, bytes, 0, NULL, NULL));
        KC_CHECK(clEnqueueCopyBuffer(cb->queue, cb->tl[l].vc, cb->tl[l].vc, (size_t)src * cap * row,
                                     (size_t)dst * cap * row, bytes, 0, NULL, NULL));
    }
    cb->slot_len[dst] = cb->slot_len[src];
cleanup:
    if (status != KS_OK)
        ks_error_prefix("OpenCL copy_slot %d -> %d (%zu bytes per layer)", src, dst, bytes);
    return status;
}

static void cl_release_slot(ke_backend *b, int slot)
{
    cl_backend *cb = (cl_backend *)b;
    if (slot >= 0 && slot < b->slots)
        cb->slot_len[slot] = 0;
}

static void cl_stats(const ke_backend *b, ke_backend_stats *out)
{
    const cl_backend *cb = (const cl_backend *)b;
    kc_build_stats bs = kc_context_build_stats(cb->ctx);
    out->device = kc_context_device(cb->ctx)->name;
    out->programs_built = bs.cache_misses;
    out->programs_cached = bs.cache_hits;
    out->program_build_ms = bs.seconds * 1e3;
    out->device_bytes = cb->device_bytes;
}

static void cl_destroy(ke_backend *b)
{
    cl_backend *cb = (cl_backend *)b;
    ke_cl_gemm_destroy(&cb->gemm);
    ke_cl_ops_destroy(&cb->ops);
    kc_context_destroy(&cb->ctx); /* every buffer, program and kernel */
    free(cb->vl);
    free(cb->tl);
    free(cb->slot_len);
    free(cb->h_tok);
    free(cb->h_arows);
    free(cb->h_dest);
    free(cb->h_gidx);
    free(cb->h_info);
    free(cb->h_hist);
    free(cb->h_out);
    free(cb->h_cinfo);
    free(cb->h_cid);
    free(cb->h_cval);
    free(cb->h_cstat);
    free(cb);
}

static const ke_backend_ops cl_ops_table = {
    .name = "opencl",
    .encode_images = cl_encode_images,
    .forward = cl_forward,
    .copy_slot = cl_copy_slot,
    .release_slot = cl_release_slot,
    .destroy = cl_destroy,
    .select_greedy = cl_select_greedy,
    .stats = cl_stats,
    .select_sample = cl_select_sample,
    .fetch_logits = cl_fetch_logits,
};

/* ---- construction ------------------------------------------------------------------------ */

static ks_status check_config(const ke_config *c)
{
    const ke_vision_config *vc = &c->vision;
    const ke_text_config *tc = &c->text;
    if (vc->heads < 1 || vc->hidden_size % vc->heads != 0 || vc->patch_size < 1 ||
        vc->image_size % vc->patch_size != 0 || vc->layers < 0 || vc->channels < 1)
        return ks_fail(KS_ERR_INVALID, "inconsistent vision config");
    if (tc->heads < 1 || tc->embed_dim % tc->heads != 0 || tc->layers < 0 || tc->vocab_size < 1)
        return ks_fail(KS_ERR_INVALID, "inconsistent text config");
    if (tc->embed_dim < 4)
        return ks_fail(KS_ERR_UNSUPPORTED, "embed_dim %d < 4 has no sinusoid table",
                       tc->embed_dim);
    if (c->latent_query_num < 1)
        return ks_fail(KS_ERR_INVALID, "latent_query_num %d", c->latent_query_num);
    return KS_OK;
}

static ks_status upload_weights(cl_backend *cb)
{
    const ke_model *m = cb->base.model;
    const ke_config *c = &m->config;
    const ke_text_config *tc = &c->text;
    char name[96];
    ks_status st;
    if ((st = upload(cb, &m->patch_embedding, "patch_embedding", &cb->patch_w)) ||
        (st = upload(cb, &m->class_embedding, "class_embedding", &cb->class_emb)) ||
        (st = upload(cb, &m->position_embedding, "position_embedding", &cb->pos_emb)) ||
        (st = upload_ln(cb, &m->pre_layrnorm, "pre_layrnorm", &cb->pre_ln)) ||
        (st = upload_ln(cb, &m->post_layernorm, "post_layernorm", &cb->post_ln)))
        return st;
    for (int l = 0; l < c->vision.layers; l++) {
        const ke_vision_layer *L = &m->vision_layers[l];
        cl_vlayer *D = &cb->vl[l];
        const ke_linear *qkv[3] = {&L->q_proj, &L->k_proj, &L->v_proj};
        snprintf(name, sizeof name, "vision layer %d", l);
        if ((st = upload_ln(cb, &L->layer_norm1, name, &D->ln1)) ||
            (st = upload_ln(cb, &L->layer_norm2, name, &D->ln2)) ||
            (st = upload_fused(cb, qkv, 3, name, &D->qkv)) ||
            (st = upload_lin(cb, &L->out_proj, name, &D->out)) ||
            (st = upload_lin(cb, &L->fc1, name, &D->fc1)) ||
            (st = upload_lin(cb, &L->fc2, name, &D->fc2)))
            return st;
    }
    const ke_linear *xkv[2] = {&m->x_k_proj, &m->x_v_proj};
    if ((st = upload_lin(cb, &m->dense, "image_to_text_projection.dense", &cb->dense)) ||
        (st = upload_lin(cb, &m->x_q_proj, "x_q_proj", &cb->xq)) ||
        (st = upload_fused(cb, xkv, 2, "x_k_proj/x_v_proj", &cb->xkv)) ||
        (st = upload_lin(cb, &m->x_out_proj, "x_out_proj", &cb->xout)))
        return st;
    /* the latent queries as f32 rows: they are copied into each image's K/V input */
    size_t lq_n = (size_t)c->latent_query_num * (size_t)tc->embed_dim;
    float *latent = malloc(lq_n * sizeof(float));
    if (!latent)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    ke_tensor_read_f32(&m->latent_query, 0, lq_n, latent);
    st = new_buffer(cb, CL_MEM_READ_ONLY, lq_n * sizeof(float), latent, &cb->latent,
                    "latent_query");
    free(latent);
    if (st)
        return st;

    if ((st = upload(cb, &m->embed_tokens, "embed_tokens", &cb->embed)))
        return st;
    if (m->lm_head.data == m->embed_tokens.data)
        cb->lm_head = cb->embed; /* tied */
    else if ((st = upload(cb, &m->lm_head, "lm_head", &cb->lm_head)))
        return st;
    size_t kv_bytes = (size_t)cb->base.slots * (size_t)cb->base.slot_capacity *
                      (size_t)tc->embed_dim * sizeof(float);
    for (int l = 0; l < tc->layers; l++) {
        const ke_text_layer *L = &m->text_layers[l];
        cl_tlayer *D = &cb->tl[l];
        const ke_linear *qkv[3] = {&L->q_proj, &L->k_proj, &L->v_proj};
        snprintf(name, sizeof name, "text layer %d", l);
        if ((st = upload_ln(cb, &L->self_attn_layer_norm, name, &D->ln_attn)) ||
            (st = upload_ln(cb, &L->inner_attn_ln, name, &D->ln_inner)) ||
            (st = upload_ln(cb, &L->final_layer_norm, name, &D->ln_final)) ||
            (st = upload_ln(cb, &L->ffn_layernorm, name, &D->ln_ffn)) ||
            (st = upload_fused(cb, qkv, 3, name, &D->qkv)) ||
            (st = upload_lin(cb, &L->out_proj, name, &D->out)) ||
            (st = upload_lin(cb, &L->fc1, name, &D->fc1)) ||
            (st = upload_lin(cb, &L->fc2, name, &D->fc2)))
            return st;
        snprintf(name, sizeof name, "text layer %d KV cache (%d slots of %d tokens)", l,
                 cb->base.slots, cb->base.slot_capacity);
        if ((st = new_buffer(cb, CL_MEM_READ_WRITE, kv_bytes, NULL, &D->kc, name)) ||
            (st = new_buffer(cb, CL_MEM_READ_WRITE, kv_bytes, NULL, &D->vc, name)))
            return st;
    }
    if ((st = upload_ln(cb, &m->final_layer_norm, "text layer_norm", &cb->final_ln)))
        return st;
    float *freq = malloc((size_t)(tc->embed_dim / 2) * sizeof(float));
    if (!freq)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    ke_op_sinusoid_freqs(tc->embed_dim, freq);
    st = new_buffer(cb, CL_MEM_READ_ONLY, (size_t)(tc->embed_dim / 2) * sizeof(float), freq,
                    &cb->freq, "sinusoid frequencies");
    free(freq);
    if (st)
        return st;
    return new_buffer(cb, CL_MEM_READ_ONLY, 16, NULL, &cb->dummy, "placeholder");
}

ke_backend *ke_backend_cl_new(const ke_model *model, const kc_device_info *device,
                              const ke_backend_options *options)
{
    if (model == NULL || device == NULL || options == NULL) {
        ks_fail(KS_ERR_INVALID, "OpenCL backend: no model, device or options");
        return NULL;
    }
    if (options->slots < 1 || options->slot_capacity < 1) {
        ks_fail(KS_ERR_INVALID, "OpenCL backend: %d slots of %d tokens", options->slots,
                options->slot_capacity);
        return NULL;
    }
    if (check_config(&model->config) != KS_OK) {
        ks_error_prefix("OpenCL backend");
        return NULL;
    }
    cl_backend *cb = calloc(1, sizeof *cb);
    if (cb == NULL) {
        ks_fail(KS_ERR_NOMEM, "OpenCL backend: out of memory");
        return NULL;
    }
    cb->base.ops = &cl_ops_table;
    cb->base.model = model;
    cb->base.slots = options->slots;
    cb->base.slot_capacity = options->slot_capacity;
    cb->resampler_full = options->resampler_full_attention;
    cb->wdt = model->storage;
    cb->vl = calloc((size_t)(model->config.vision.layers ? model->config.vision.layers : 1),
                    sizeof *cb->vl);
    cb->tl = calloc((size_t)(model->config.text.layers ? model->config.text.layers : 1),
                    sizeof *cb->tl);
    cb->slot_len = calloc((size_t)options->slots, sizeof(int));
    if (!cb->vl || !cb->tl || !cb->slot_len) {
        ks_fail(KS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    kc_context_params params;
    kc_context_params_init(&params);
    if (kc_context_new(device, &params, &cb->ctx) != KS_OK)
        goto fail;
    cb->queue = kc_context_queue(cb->ctx);
    if ((cb->gemm = ke_cl_gemm_new(cb->ctx)) == NULL ||
        (cb->ops = ke_cl_ops_new(cb->ctx, cb->wdt)) == NULL)
        goto fail;
    if (upload_weights(cb) != KS_OK)
        goto fail;
    if (kc_context_finish(cb->ctx) != KS_OK)
        goto fail;
    return &cb->base;

fail:
    ks_error_prefix("OpenCL backend on device %zu '%s'", device->index, device->name);
    cl_destroy(&cb->base);
    return NULL;
}
