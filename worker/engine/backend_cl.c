/* backend_cl: the OpenCL backend (see backend_cl.h). The same forward pass as backend_ref.c,
 * with the kernels of kernels/ through backend_cl_ops.h and every matrix product through
 * cl_gemm.h. Not here: kernel code, the GEMM, device listing (kc_device.h).
 *
 * Device memory:
 *   weights   transposed at upload (ke_cl_weight), in bounded chunks; q/k/v fused into one
 *             matrix per layer (the resampler's k/v into one), so one GEMM makes Q, K and V;
 *             the token embedding is held once, as the tied lm_head's matrix, and the lookup
 *             reads its columns
 *   KV cache  per text layer a pool of rows (f32, or half with kv_half) cut into pages of
 *             PAGE_TOKENS rows; a slot holds the pages its reservation needs (reserve), listed
 *             in its row of the page table, so memory follows what sequences use
 *   state     per slot: the ids fed so far (the n-gram history) and the id its last greedy
 *             select chose (the next token a decode step feeds without the host)
 *   scratch   text activations for the largest step so far (grown on demand); the vision
 *             pass's for the most images a pass has held, at most the vision chunk (grown on
 *             demand, kept): encode_images runs more images in passes of the chunk
 *
 * A text step is five launches per decoder layer (kernels/gemm.cl fuses each LayerNorm into the
 * GEMM after it from row statistics the previous kernel wrote, and bias, activation, residual
 * and the KV-cache append into the GEMM's epilogue), plus the embedding, the lm_head and the
 * selection. Nothing in a step waits for the device: the host's inputs go through a ring of
 * staging buffers with non-blocking writes, and a greedy select's ids come back through
 * select_greedy_enqueue / wait_selected while the next step runs. */
#include "backend_cl.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cl_ops.h"
#include "cl_gemm.h"
#include "cl_gemm_tune.h"
#include "kc_context.h"
#include "kc_error.h"
#include "ref_ops.h"

#define PAGE_TOKENS 16 /* KV-cache rows per page */
/* Staging buffers for a step's host inputs, used in turn: a forward and a select take one each,
 * and two steps may be in flight. */
#define N_STAGE 6

typedef struct cl_ln {
    cl_mem w, b;
} cl_ln;

typedef struct cl_vlayer {
    cl_ln ln1, ln2;
    ke_cl_weight qkv, out, fc1, fc2; /* qkv: (3·hid) outputs */
} cl_vlayer;

typedef struct cl_tlayer {
    cl_ln ln_attn, ln_inner, ln_final, ln_ffn;
    ke_cl_weight qkv, out, fc1, fc2; /* qkv: (3·E) outputs */
    cl_mem kpool, vpool;             /* (pages · PAGE_TOKENS, E) f32 or half */
    ke_cl_gemm_site *s_qkv, *s_out, *s_fc1, *s_fc2;
    kc_bound *s_att;
} cl_tlayer;

/* One set of host staging for a step's inputs; `done` marks the last write reading it. */
/* Rows of eight ints as the kernels read cl_int8, kept as plain arrays: cl_int8 itself asks for
 * 32-byte alignment, which realloc'd staging does not give. */
typedef cl_int cl_row8[8];

typedef struct cl_stage {
    cl_row8 *plan;   /* [tokens] */
    cl_int *gidx;    /* [seqs] */
    float *img;      /* [img_rows * E] */
    cl_int *pages;   /* [dirty slots * max_pages] */
    cl_row8 *sel;    /* [seqs] selection rows */
    cl_int *frows;   /* [tokens * 4] flash rows (token, slot, keys it sees, 0) */
    cl_int *fblocks; /* [tokens * 4] their blocks (ke_cl_flash_blocks) */
    size_t tokens, seqs, img_rows, page_rows;
    kc_pending done;
} cl_stage;

/* A greedy selection whose ids are still on their way to the host. */
typedef struct cl_outstanding {
    kc_pending read;
    int n;
} cl_outstanding;

/* The vision pass's device buffers, for cb->v_images images (vision_sizes). */
enum {
    V_PIX,
    V_PATCH,
    V_POUT,
    V_X,
    V_H,
    V_QKV,
    V_ATT,
    V_MLP,
    V_STATS,
    V_ROWS,
    V_KV,
    V_RQ,
    V_RKV,
    V_RATT,
    V_EMB,
    V_BLOCKS,
    V_COUNT
};

typedef struct cl_backend {
    ke_backend base;
    kc_context *ctx;
    ke_cl_gemm *gemm;
    ke_tune_choice tune; /* where the GEMM's tunables came from (ke_backend_stats.tunables) */
    ke_cl_ops *ops;
    ke_dtype wdt;    /* the model's storage: biases, LayerNorms, embeddings, every matrix ... */
    ke_dtype lin_dt; /* ... but the linears quant.h names: KE_DTYPE_I8 with weights_int8 */
    bool resampler_full;
    /* flash_attention.cl for the vision encoder, and for the resampler and the prefill (the
     * text's head size); else attention.cl and paged_attention. Blocks of flash_bq rows. */
    bool flash_vision, flash_text;
    int flash_bq;
    size_t device_bytes;
    size_t weight_bytes; /* the part of device_bytes that holds the model's weights */

    /* vision tower and resampler */
    ke_cl_weight patch;
    cl_mem class_emb, pos_emb;
    cl_ln pre_ln, post_ln;
    cl_vlayer *vl;
    ke_cl_weight dense, xq, xkv, xout;
    cl_mem latent; /* (latent_query_num, E) f32 */
    /* one vision pass's buffers (grow_vision), for v_images <= base.vision_chunk images, and
     * the host's attention rows and blocks for them */
    cl_mem vbuf[V_COUNT];
    size_t v_images;
    cl_int4 *v_arows;
    cl_int *v_ablocks;

    /* text decoder */
    ke_cl_weight embed;   /* embed_tokens transposed (E, ldv): the lookup table and tied head */
    ke_cl_weight lm_head; /* = embed when tied */
    ke_cl_gemm_site *s_lm;
    cl_tlayer *tl;
    cl_ln final_ln;
    cl_mem freq;  /* (E / 2) f32 */
    cl_mem dummy; /* a valid buffer for arguments a kernel does not read */

    /* KV pages and per-slot state */
    bool kv_half;
    int max_pages;   /* pages a slot may hold (slot_capacity / PAGE_TOKENS, rounded up) */
    int n_pages;     /* in the pool */
    int *free_pages; /* stack of free page numbers */
    int n_free;
    int *slot_pages;  /* [slots * max_pages] host copy of the page table */
    int *slot_npages; /* [slots] */
    bool *slot_dirty; /* [slots] the device's row of the page table is stale */
    int *slot_len;    /* [slots] tokens cached */
    cl_mem pages;     /* (slots, max_pages) int */
    cl_mem hist;      /* (slots, slot_capacity) int */
    cl_mem slot_next; /* (slots) int */

    /* text scratch, for up to `tokens` tokens / `seqs` sequences */
    size_t tokens, seqs, img_rows;
    cl_mem x, q, att, ffn;                /* (tokens, E / E / E / ffn) f32 */
    cl_mem x_stats, att_stats, ffn_stats; /* row statistics (cl_float2 blocks) */
    cl_mem plan, tokrow, gidx;            /* (tokens) int8, (tokens) int4, (seqs) int */
    cl_mem fblocks;                       /* (tokens) int4 flash blocks of a prefill step */
    cl_mem logits;                        /* (seqs, vocab) */
    cl_mem image_rows;                    /* (img_rows, E) */
    cl_mem sel_info, sel_out;             /* (seqs) int8, (KE_MAX_OUTSTANDING + 1, seqs) int */
    cl_stage stage[N_STAGE];
    int stage_at;
    cl_outstanding outstanding[KE_MAX_OUTSTANDING];
    int n_outstanding, sel_at;

    /* select_sample's lists: (cand_rows, 4) int info, (cand_cap) values and ids, (cand_rows, 4)
     * ulong stats; the sampling rows' (rows, 5) int info */
    size_t cand_rows, cand_cap, samp_rows;
    cl_mem cand_info, cand_val, cand_id, cand_stat, samp_info;
    cl_int *h_cinfo, *h_cid, *h_sinfo, *h_out;
    float *h_cval;
    cl_ulong *h_cstat;
    int logits_rows; /* rows left on the device by forward(NULL), for the selects */
    bool selected;   /* a select ran since the last forward (its bans are in the logits) */
} cl_backend;

static float inv_sqrt_head_dim(int head_dim)
{
    return (float)pow((double)head_dim, -0.5); /* as backend_ref.c */
}

static size_t ceil_div(size_t v, size_t d) { return (v + d - 1) / d; }

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

/* The n buffers *bufs[i] freed and made anew with bytes[i] each (a group that grows together:
 * their contents are per step or pass). On a failure the ones not yet made are NULL. */
static ks_status renew_buffers(cl_backend *cb, cl_mem *const *bufs, const size_t *bytes, size_t n,
                               const char *what)
{
    for (size_t i = 0; i < n; i++)
        free_buffer(cb, bufs[i]);
    for (size_t i = 0; i < n; i++) {
        ks_status st = new_buffer(cb, CL_MEM_READ_WRITE, bytes[i], NULL, bufs[i], what);
        if (st != KS_OK)
            return st;
    }
    return KS_OK;
}

/* One weight vector or small table in the storage dtype (NULL buffer if absent); converted
 * through a temporary copy when the file's dtype differs (these are small). */
static ks_status upload(cl_backend *cb, const ke_tensor *t, const char *name, cl_mem *out)
{
    *out = NULL;
    if (t->data == NULL)
        return KS_OK;
    size_t n = ke_tensor_numel(t), bytes = n * (cb->wdt == KE_DTYPE_F16 ? 2 : 4);
    cb->weight_bytes += bytes;
    if (t->dtype == cb->wdt)
        return new_buffer(cb, CL_MEM_READ_ONLY, bytes, t->data, out, name);
    void *conv = malloc(bytes ? bytes : 1);
    if (!conv)
        return ks_fail(KS_ERR_NOMEM, "out of memory converting %s", name);
    ke_convert(conv, cb->wdt, t->data, t->dtype, n);
    ks_status st = new_buffer(cb, CL_MEM_READ_ONLY, bytes, conv, out, name);
    free(conv);
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

/* n nn.Linear concatenated along their outputs, transposed for gemm.cl, the matrices in dt. */
static ks_status upload_weight(cl_backend *cb, ke_dtype dt, const ke_linear *const *lins, int n,
                               const char *name, ke_cl_weight *out)
{
    const ke_tensor *w[3], *b[3];
    for (int i = 0; i < n; i++) {
        w[i] = &lins[i]->weight;
        b[i] = &lins[i]->bias;
    }
    size_t bytes = 0;
    ks_status st = ke_cl_weight_upload(cb->gemm, dt, w, b, n, name, out, &bytes);
    cb->device_bytes += bytes;
    cb->weight_bytes += bytes;
    return st;
}

/* The linears quant.h names: int8 with options.weights_int8. */
static ks_status upload_lin(cl_backend *cb, const ke_linear *const *lins, int n, const char *name,
                            ke_cl_weight *out)
{
    return upload_weight(cb, cb->lin_dt, lins, n, name, out);
}

static ks_status upload_one(cl_backend *cb, const ke_linear *l, const char *name, ke_cl_weight *out)
{
    const ke_linear *one[1] = {l};
    return upload_lin(cb, one, 1, name, out);
}

/* A matrix that keeps the storage dtype at every precision (quant.h: the patch embedding, the
 * token embedding and lm_head). */
static ks_status upload_matrix(cl_backend *cb, const ke_tensor *w, const char *name,
                               ke_cl_weight *out)
{
    const ke_linear l = {.weight = *w};
    const ke_linear *one[1] = {&l};
    return upload_weight(cb, cb->wdt, one, 1, name, out);
}

/* ---- GEMM shorthand (the vision tower) ----------------------------------------------------- */

/* y (m, n) [+]= x (m, k) · W + b [, act] with contiguous rows (offsets in floats). */
/* y (m, w->n) [+]= act(LN(x) (m, w->k) . W + bias): the LayerNorm `ln` (NULL: none) from the
 * statistics in ln_stats that the product writing x left (blocks of KE_CL_STAT_SB columns),
 * and those of y into stats_out (NULL: none) for the next one. */
static ks_status linear_ln(cl_backend *cb, cl_mem x, size_t x_off, size_t m, const ke_cl_weight *w,
                           const cl_ln *ln, cl_mem ln_stats, float eps, cl_mem y, size_t y_off,
                           bool acc, int act, cl_mem stats_out, const char *what)
{
    ke_cl_gemm_args a = {.m = m,
                         .w = w,
                         .x = x,
                         .x_offset = x_off,
                         .ldx = w->k,
                         .ln_stats = ln ? ln_stats : NULL,
                         .ln_w = ln ? ln->w : NULL,
                         .ln_b = ln ? ln->b : NULL,
                         .ln_sb = KE_CL_STAT_SB,
                         .ln_eps = eps,
                         .y = y,
                         .y_offset = y_off,
                         .ldy = w->n,
                         .act = act,
                         .accumulate = acc,
                         .stats_out = stats_out};
    ks_status st = ke_cl_gemm_run(cb->gemm, NULL, &a, what);
    if (st != KS_OK)
        ks_error_prefix("%s", what);
    return st;
}

static ks_status linear(cl_backend *cb, cl_mem x, size_t x_off, size_t m, const ke_cl_weight *w,
                        cl_mem y, size_t y_off, bool acc, int act, const char *what)
{
    return linear_ln(cb, x, x_off, m, w, NULL, NULL, 0.0f, y, y_off, acc, act, NULL, what);
}

static ks_status write_now(cl_backend *cb, cl_mem buf, size_t bytes, const void *host)
{
    return kc_context_write(cb->ctx, buf, true, 0, bytes, host, NULL);
}

static ks_status read_now(cl_backend *cb, cl_mem buf, size_t offset, size_t bytes, void *host)
{
    return kc_context_read(cb->ctx, buf, true, offset, bytes, host, NULL);
}

/* ---- vision tower + resampler ------------------------------------------------------------- */

static const char *const vision_names[V_COUNT] = {"pixels",
                                                  "patches",
                                                  "patch embeddings",
                                                  "vision hidden states",
                                                  "vision scratch",
                                                  "vision q/k/v",
                                                  "vision attention output",
                                                  "vision MLP",
                                                  "vision row statistics",
                                                  "attention rows",
                                                  "resampler keys/values input",
                                                  "resampler queries",
                                                  "resampler keys/values",
                                                  "resampler attention output",
                                                  "image embeddings",
                                                  "attention blocks"};

/* The shapes of one vision pass (sizes in elements of a row). */
typedef struct vision_dims {
    size_t hid, np, seq, pw, inter, E, lq, kvr, pix;
} vision_dims;

static vision_dims vision_dims_of(const ke_config *c)
{
    const ke_vision_config *vc = &c->vision;
    size_t grid = (size_t)(vc->image_size / vc->patch_size);
    vision_dims d = {.hid = (size_t)vc->hidden_size,
                     .np = grid * grid,
                     .seq = grid * grid + 1,
                     .pw = (size_t)vc->channels * (size_t)vc->patch_size * (size_t)vc->patch_size,
                     .inter = (size_t)vc->intermediate_size,
                     .E = (size_t)c->text.embed_dim,
                     .lq = (size_t)c->latent_query_num,
                     .pix = (size_t)vc->channels * (size_t)vc->image_size * (size_t)vc->image_size};
    d.kvr = d.seq + d.lq;
    return d;
}

/* Rows of the attention row and block tables for N images (the tower's or the resampler's). */
static size_t vision_att_rows(const vision_dims *d, size_t N)
{
    return N * (d->seq > d->lq ? d->seq : d->lq);
}

/* The bytes of each vision buffer for N images. */
static void vision_sizes(const vision_dims *d, size_t N, size_t sizes[V_COUNT])
{
    size_t rows = N * d->seq, arows = vision_att_rows(d, N);
    sizes[V_PIX] = N * d->pix * 4;
    sizes[V_PATCH] = N * d->np * d->pw * 4;
    sizes[V_POUT] = N * d->np * d->hid * 4;
    sizes[V_X] = sizes[V_H] = sizes[V_ATT] = rows * d->hid * 4;
    sizes[V_QKV] = rows * 3 * d->hid * 4;
    sizes[V_MLP] = rows * d->inter * 4;
    sizes[V_STATS] = rows * ((d->hid + KE_CL_STAT_SB - 1) / KE_CL_STAT_SB) * sizeof(cl_float2);
    sizes[V_ROWS] = sizes[V_BLOCKS] = arows * sizeof(cl_int4);
    sizes[V_KV] = N * d->kvr * d->E * 4;
    sizes[V_RQ] = d->lq * d->E * 4;
    sizes[V_RKV] = N * d->kvr * 2 * d->E * 4;
    sizes[V_RATT] = sizes[V_EMB] = N * d->lq * d->E * 4;
}

/* The default vision chunk on `device`. One image's activations (vision_sizes) are, for
 * Kosmos-2, 257 rows x (3·1024 hidden/scratch/attention + 3·1024 q/k/v + 4096 MLP) floats in
 * the tower, 321 rows x (2048 + 2·2048) for the resampler's keys and values, plus the pixels,
 * patches and a few rows of 64 x 2048: about 21.7 MB. A GPU gets 32 (about 700 MB beside 3.3 GB
 * of weights): products of 8224 rows fill it, and more would mostly delay the running
 * sequences by a longer pass. A CPU gets 8 (about 175 MB of the host's memory): a few thousand
 * rows already keep its cores busy. Never more than an eighth of the device's memory, nor a
 * buffer past its largest allocation; at least 1. */
static int default_vision_chunk(const ke_config *c, const kc_device_info *device)
{
    vision_dims d = vision_dims_of(c);
    size_t one[V_COUNT], total = 0, largest = 0;
    vision_sizes(&d, 1, one);
    for (int i = 0; i < V_COUNT; i++) {
        total += one[i];
        largest = one[i] > largest ? one[i] : largest;
    }
    uint64_t chunk = device->type & CL_DEVICE_TYPE_GPU ? 32 : 8;
    if (total && chunk * total > device->global_mem_bytes / 8)
        chunk = device->global_mem_bytes / 8 / total;
    if (largest && chunk * largest > device->max_alloc_bytes)
        chunk = device->max_alloc_bytes / largest;
    return chunk < 1 ? 1 : (int)chunk;
}

/* Holds the vision buffers for at least `images` images (at most the chunk), kept between calls
 * so that a pass allocates nothing; grown by reallocating (their contents are per pass). */
static ks_status grow_vision(cl_backend *cb, size_t images)
{
    if (images <= cb->v_images)
        return KS_OK;
    vision_dims d = vision_dims_of(&cb->base.model->config);
    size_t sizes[V_COUNT], arows = vision_att_rows(&d, images);
    vision_sizes(&d, images, sizes);
    for (int i = 0; i < V_COUNT; i++)
        free_buffer(cb, &cb->vbuf[i]);
    free(cb->v_arows);
    free(cb->v_ablocks);
    cb->v_images = 0;
    cb->v_arows = malloc(arows * sizeof *cb->v_arows);
    cb->v_ablocks = malloc(arows * sizeof(cl_int4));
    if (!cb->v_arows || !cb->v_ablocks)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    for (int i = 0; i < V_COUNT; i++) {
        ks_status st = new_buffer(cb, CL_MEM_READ_WRITE, sizes[i], NULL, &cb->vbuf[i],
                                  vision_names[i]);
        if (st != KS_OK) {
            ks_error_prefix("a vision pass of %zu images", images);
            for (int j = 0; j < i; j++)
                free_buffer(cb, &cb->vbuf[j]);
            return st;
        }
    }
    cb->v_images = images;
    return KS_OK;
}

/* The flash blocks of attention rows[0 .. n) (runs of rows that share their keys) into
 * `blocks`, cut in `host` (room for n); none when `flash` is off. */
static ks_status write_blocks(cl_backend *cb, bool flash, const cl_int4 *rows, size_t n,
                              cl_int *host, cl_mem blocks, size_t *nb)
{
    *nb = flash ? ke_cl_flash_blocks(rows[0].s, n, cb->flash_bq, host) : 0;
    return *nb ? write_now(cb, blocks, *nb * sizeof(cl_int4), host) : KS_OK;
}

/* ke_cl_attention, through flash_attention.cl when write_blocks cut blocks. */
static ks_status attend(cl_backend *cb, const ke_cl_attention_args *a, cl_mem blocks, size_t nb)
{
    return nb ? ke_cl_flash_attention(cb->ops, a, blocks, nb) : ke_cl_attention(cb->ops, a);
}

/* The vision tower on the N images in vbuf[V_PIX], to the L2-normalised features in vbuf[V_X];
 * the post_layernorm tap (N images) when post_tap is not NULL. *stage names the part running. */
static ks_status vision_tower(cl_backend *cb, size_t N, float *post_tap, const char **stage,
                              char *what, size_t what_size)
{
    const ke_vision_config *vc = &cb->base.model->config.vision;
    vision_dims d = vision_dims_of(&cb->base.model->config);
    cl_mem *buf = cb->vbuf;
    cl_int4 *arows = cb->v_arows;
    size_t hid = d.hid, seq = d.seq, rows = N * seq;
    ks_status status;

    /* patch embedding (unfold + GEMM), class token, positions, pre-LayerNorm */
    *stage = "vision embeddings";
    if ((status = ke_cl_unfold_patches(cb->ops, buf[V_PIX], (int)N, vc->channels, vc->image_size,
                                       vc->patch_size, buf[V_PATCH])) != KS_OK ||
        (status = linear(cb, buf[V_PATCH], 0, N * d.np, &cb->patch, buf[V_POUT], 0, false, -1,
                         "patch embedding")) != KS_OK ||
        (status = ke_cl_vision_embed(cb->ops, buf[V_POUT], cb->class_emb, cb->pos_emb, (int)N,
                                     (int)seq, (int)hid, buf[V_X])) != KS_OK ||
        (status = ke_cl_layer_norm(cb->ops, buf[V_X], rows, hid, cb->pre_ln.w, cb->pre_ln.b,
                                   vc->layer_norm_eps, buf[V_X])) != KS_OK)
        return status;

    for (size_t r = 0; r < rows; r++)
        arows[r] = (cl_int4){{(cl_int)r, (cl_int)(r / seq * seq), (cl_int)seq, 0}};
    size_t n_blocks = 0;
    if ((status = write_now(cb, buf[V_ROWS], rows * sizeof *arows, arows)) != KS_OK ||
        (status = write_blocks(cb, cb->flash_vision, arows, rows, cb->v_ablocks, buf[V_BLOCKS],
                               &n_blocks)) != KS_OK)
        return status;

    int vheads = vc->heads, vhd = vc->hidden_size / vheads;
    for (int l = 0; l < vc->layers; l++) {
        const cl_vlayer *L = &cb->vl[l];
        snprintf(what, what_size, "vision layer %d", l);
        *stage = what;
        ke_cl_attention_args att = {.q = buf[V_QKV],
                                    .q_off = 0,
                                    .q_stride = 3 * hid,
                                    .k = buf[V_QKV],
                                    .v = buf[V_QKV],
                                    .k_off = hid,
                                    .v_off = 2 * hid,
                                    .kv_stride = 3 * hid,
                                    .rows = buf[V_ROWS],
                                    .n_rows = rows,
                                    .heads = vheads,
                                    .head_dim = vhd,
                                    .scale = inv_sqrt_head_dim(vhd),
                                    .out = buf[V_ATT],
                                    .out_stride = hid};
        /* The two LayerNorms in the products' prologues, from the statistics of x that the
         * residual products leave (out_proj, fc2); the first layer's input (pre_layrnorm's
         * output) has none, so its layer_norm1 is a pass of its own. */
        float eps = vc->layer_norm_eps;
        bool first = l == 0;
        if ((first && (status = ke_cl_layer_norm(cb->ops, buf[V_X], rows, hid, L->ln1.w, L->ln1.b,
                                                 eps, buf[V_H])) != KS_OK) ||
            (status = linear_ln(cb, first ? buf[V_H] : buf[V_X], 0, rows, &L->qkv,
                                first ? NULL : &L->ln1, buf[V_STATS], eps, buf[V_QKV], 0, false, -1,
                                NULL, "vision q/k/v")) != KS_OK ||
            (status = attend(cb, &att, buf[V_BLOCKS], n_blocks)) != KS_OK ||
            (status = linear_ln(cb, buf[V_ATT], 0, rows, &L->out, NULL, NULL, eps, buf[V_X], 0,
                                true, -1, buf[V_STATS], "vision out_proj")) != KS_OK ||
            (status = linear_ln(cb, buf[V_X], 0, rows, &L->fc1, &L->ln2, buf[V_STATS], eps,
                                buf[V_MLP], 0, false, (int)vc->activation, NULL, "vision fc1")) !=
                KS_OK ||
            (status = linear_ln(cb, buf[V_MLP], 0, rows, &L->fc2, NULL, NULL, eps, buf[V_X], 0,
                                true, -1, buf[V_STATS], "vision fc2")) != KS_OK)
            return status;
    }

    /* post_layernorm on every token, the tap, then the L2 normalisation */
    *stage = "post_layernorm";
    if ((status = ke_cl_layer_norm(cb->ops, buf[V_X], rows, hid, cb->post_ln.w, cb->post_ln.b,
                                   vc->layer_norm_eps, buf[V_X])) != KS_OK)
        return status;
    if (post_tap && (status = read_now(cb, buf[V_X], 0, rows * hid * 4, post_tap)) != KS_OK)
        return status;
    return ke_cl_l2_normalize(cb->ops, buf[V_X], rows, hid, 1e-12f);
}

/* The resampler on the N images' features in vbuf[V_X], to image_embeds (N, lq, E): per image
 * the K/V input is concat(dense(features), latent_query); Q comes from the latent queries (the
 * same for every image); attention rows per image. */
static ks_status resample(cl_backend *cb, size_t N, float *image_embeds)
{
    const ke_config *c = &cb->base.model->config;
    vision_dims d = vision_dims_of(c);
    cl_mem *buf = cb->vbuf;
    cl_int4 *arows = cb->v_arows;
    size_t E = d.E, lq = d.lq, kvr = d.kvr, seq = d.seq, hid = d.hid;
    ks_status status = KS_OK;
    for (size_t i = 0; i < N; i++) {
        if ((status = linear(cb, buf[V_X], i * seq * hid, seq, &cb->dense, buf[V_KV], i * kvr * E,
                             false, -1, "resampler dense")) != KS_OK)
            return status;
        KC_CHECK(clEnqueueCopyBuffer(kc_context_queue(cb->ctx), cb->latent, buf[V_KV], 0,
                                     (i * kvr + seq) * E * sizeof(float), lq * E * sizeof(float), 0,
                                     NULL, NULL));
    }
    for (size_t i = 0; i < N; i++)
        for (size_t r = 0; r < lq; r++)
            arows[i * lq + r] = (cl_int4){
                {(cl_int)r, (cl_int)(i * kvr), (cl_int)(cb->resampler_full ? kvr : r + 1), 0}};
    int theads = c->text.heads, thd = c->text.embed_dim / theads;
    ke_cl_attention_args ratt = {.q = buf[V_RQ],
                                 .q_off = 0,
                                 .q_stride = E,
                                 .k = buf[V_RKV],
                                 .v = buf[V_RKV],
                                 .k_off = 0,
                                 .v_off = E,
                                 .kv_stride = 2 * E,
                                 .rows = buf[V_ROWS],
                                 .n_rows = N * lq,
                                 .heads = theads,
                                 .head_dim = thd,
                                 .scale = inv_sqrt_head_dim(thd),
                                 .out = buf[V_RATT],
                                 .out_stride = E};
    size_t n_blocks = 0;
    if ((status = write_now(cb, buf[V_ROWS], N * lq * sizeof *arows, arows)) != KS_OK ||
        (status = linear(cb, cb->latent, 0, lq, &cb->xq, buf[V_RQ], 0, false, -1,
                         "resampler x_q_proj")) != KS_OK ||
        (status = linear(cb, buf[V_KV], 0, N * kvr, &cb->xkv, buf[V_RKV], 0, false, -1,
                         "resampler x_k_proj/x_v_proj")) != KS_OK ||
        (status = write_blocks(cb, cb->flash_text, arows, N * lq, cb->v_ablocks, buf[V_BLOCKS],
                               &n_blocks)) != KS_OK ||
        (status = attend(cb, &ratt, buf[V_BLOCKS], n_blocks)) != KS_OK ||
        (status = linear(cb, buf[V_RATT], 0, N * lq, &cb->xout, buf[V_EMB], 0, false, -1,
                         "resampler x_out_proj")) != KS_OK)
        return status;
    return read_now(cb, buf[V_EMB], 0, N * lq * E * 4, image_embeds);
cleanup: /* KC_CHECK's */
    return status;
}

/* n images in passes of at most base.vision_chunk, through buffers kept for the chunk (so the
 * memory is the chunk's whatever n is). */
static ks_status cl_encode_images(ke_backend *b, const float *pixels, int n, float *image_embeds,
                                  const ke_vision_taps *taps)
{
    cl_backend *cb = (cl_backend *)b;
    if (n < 0 || (n > 0 && (pixels == NULL || image_embeds == NULL)))
        return ks_fail(KS_ERR_INVALID, "encode_images: %d images without buffers", n);
    if (n == 0)
        return KS_OK;
    vision_dims d = vision_dims_of(&b->model->config);
    size_t tap = d.seq * d.hid, out = d.lq * d.E;
    size_t chunk = (size_t)b->vision_chunk, done = 0;
    ks_status status = KS_OK;
    const char *stage = "allocating";
    char what[48];
    kc_profile_scope(kc_context_profile(cb->ctx), "vision");
    while (done < (size_t)n && status == KS_OK) {
        size_t N = (size_t)n - done < chunk ? (size_t)n - done : chunk;
        float *post = taps && taps->post_layernorm ? taps->post_layernorm + done * tap : NULL;
        stage = "allocating";
        if ((status = grow_vision(cb, N)) != KS_OK)
            break;
        stage = "pixels";
        if ((status = write_now(cb, cb->vbuf[V_PIX], N * d.pix * 4, pixels + done * d.pix)) !=
                KS_OK ||
            (status = vision_tower(cb, N, post, &stage, what, sizeof what)) != KS_OK)
            break;
        stage = "resampler";
        if ((status = resample(cb, N, image_embeds + done * out)) != KS_OK)
            break;
        done += N;
    }
    if (status != KS_OK)
        ks_error_prefix("OpenCL encode_images (%d images, the pass from image %zu), %s", n, done,
                        stage);
    kc_profile_scope(kc_context_profile(cb->ctx), NULL);
    return status;
}

/* ---- KV pages ----------------------------------------------------------------------------- */

/* Gives `slot` pages until it holds `tokens` tokens; KS_ERR_LIMIT (nothing taken) when the pool
 * has too few free pages. */
static ks_status hold_pages(cl_backend *cb, int slot, int tokens)
{
    int want = (int)ceil_div((size_t)tokens, PAGE_TOKENS);
    int have = cb->slot_npages[slot];
    if (want <= have)
        return KS_OK;
    if (want > cb->max_pages)
        return ks_fail(KS_ERR_LIMIT, "slot %d: %d tokens exceed the slot capacity %d", slot, tokens,
                       cb->base.slot_capacity);
    if (want - have > cb->n_free)
        return ks_fail(KS_ERR_LIMIT,
                       "the KV cache has %d free pages of %d tokens, %d more are "
                       "needed",
                       cb->n_free, PAGE_TOKENS, want - have);
    for (int p = have; p < want; p++)
        cb->slot_pages[(size_t)slot * (size_t)cb->max_pages + (size_t)p] =
            cb->free_pages[--cb->n_free];
    cb->slot_npages[slot] = want;
    cb->slot_dirty[slot] = true;
    return KS_OK;
}

static ks_status cl_reserve(ke_backend *b, int slot, int tokens)
{
    cl_backend *cb = (cl_backend *)b;
    if (slot < 0 || slot >= b->slots || tokens < 0)
        return ks_fail(KS_ERR_INVALID, "reserve: slot %d of %d, %d tokens", slot, b->slots, tokens);
    return hold_pages(cb, slot, tokens);
}

static void cl_release_slot(ke_backend *b, int slot)
{
    cl_backend *cb = (cl_backend *)b;
    if (slot < 0 || slot >= b->slots)
        return;
    for (int p = 0; p < cb->slot_npages[slot]; p++)
        cb->free_pages[cb->n_free++] =
            cb->slot_pages[(size_t)slot * (size_t)cb->max_pages + (size_t)p];
    cb->slot_npages[slot] = 0;
    cb->slot_len[slot] = 0;
}

/* ---- staging ------------------------------------------------------------------------------ */

/* The next staging set, big enough for the sizes asked; waits (a profiled wait, which a caller
 * that waits for its selections never meets) if the device still reads it. */
static ks_status next_stage(cl_backend *cb, size_t tokens, size_t seqs, size_t img_rows,
                            size_t page_rows, cl_stage **out)
{
    cl_stage *s = &cb->stage[cb->stage_at];
    cb->stage_at = (cb->stage_at + 1) % N_STAGE;
    ks_status st = kc_context_wait(cb->ctx, &s->done, "staging reuse");
    if (st != KS_OK)
        return st;
    size_t E = (size_t)cb->base.model->config.text.embed_dim;
#define GROW(field, count, want, elem)                                                             \
    if ((want) > s->count) {                                                                       \
        void *grown = realloc(s->field, (want) * (elem));                                          \
        if (!grown)                                                                                \
            return ks_fail(KS_ERR_NOMEM, "out of memory for a step's inputs");                     \
        s->field = grown;                                                                          \
    }
    GROW(plan, tokens, tokens, sizeof(cl_row8))
    GROW(frows, tokens, tokens, 4 * sizeof(cl_int))
    GROW(fblocks, tokens, tokens, 4 * sizeof(cl_int))
    if (tokens > s->tokens)
        s->tokens = tokens;
    GROW(gidx, seqs, seqs, sizeof(cl_int))
    GROW(sel, seqs, seqs, sizeof(cl_row8))
    if (seqs > s->seqs)
        s->seqs = seqs;
    GROW(img, img_rows, img_rows, E * sizeof(float))
    if (img_rows > s->img_rows)
        s->img_rows = img_rows;
    GROW(pages, page_rows, page_rows, (size_t)cb->max_pages * sizeof(cl_int))
    if (page_rows > s->page_rows)
        s->page_rows = page_rows;
#undef GROW
    *out = s;
    return KS_OK;
}

/* A non-blocking write from staging set s; the set is busy until the last of them is done. */
static ks_status stage_write(cl_backend *cb, cl_stage *s, cl_mem buf, size_t offset, size_t bytes,
                             const void *host)
{
    if (bytes == 0)
        return KS_OK;
    kc_pending_release(&s->done);
    return kc_context_write(cb->ctx, buf, false, offset, bytes, host, &s->done);
}

/* ---- text decoder ------------------------------------------------------------------------ */

static ks_status grow_tokens(cl_backend *cb, size_t want)
{
    if (want <= cb->tokens)
        return KS_OK;
    const ke_text_config *tc = &cb->base.model->config.text;
    size_t E = (size_t)tc->embed_dim, F = (size_t)tc->ffn_dim;
    cl_mem *bufs[] = {&cb->x,         &cb->q,         &cb->att,  &cb->ffn,    &cb->x_stats,
                      &cb->att_stats, &cb->ffn_stats, &cb->plan, &cb->tokrow, &cb->fblocks};
    size_t bytes[] = {want * E * 4,
                      want * E * 4,
                      want * E * 4,
                      want * F * 4,
                      want * ceil_div(E, KE_CL_STAT_SB) * sizeof(cl_float2),
                      want * (size_t)tc->heads * sizeof(cl_float2),
                      want * ceil_div(F, KE_CL_STAT_SB) * sizeof(cl_float2),
                      want * sizeof(cl_int8),
                      want * sizeof(cl_int4),
                      want * sizeof(cl_int4)};
    cb->tokens = 0;
    ks_status st = renew_buffers(cb, bufs, bytes, sizeof bufs / sizeof bufs[0], "text activations");
    if (st != KS_OK)
        return st;
    cb->tokens = want;
    return KS_OK;
}

static ks_status grow_seqs(cl_backend *cb, size_t want)
{
    if (want <= cb->seqs)
        return KS_OK;
    const ke_text_config *tc = &cb->base.model->config.text;
    cl_mem *bufs[] = {&cb->gidx, &cb->logits, &cb->sel_info, &cb->sel_out};
    size_t bytes[] = {want * sizeof(cl_int), want * (size_t)tc->vocab_size * 4,
                      want * sizeof(cl_int8), (KE_MAX_OUTSTANDING + 1) * want * sizeof(cl_int)};
    cb->seqs = 0;
    free(cb->h_out);
    cb->h_out = malloc(want * sizeof(cl_int));
    if (!cb->h_out)
        return ks_fail(KS_ERR_NOMEM, "out of memory for %zu sequences", want);
    ks_status st = renew_buffers(cb, bufs, bytes, sizeof bufs / sizeof bufs[0], "logits");
    if (st != KS_OK)
        return st;
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

/* Text layer l over the step's T token rows: LayerNorm + q/k/v with the KV append, attention
 * through the page table (flash_attention.cl's blocks when the step holds a prefill), out_proj,
 * and the MLP, each residual added in place into cb->x. */
static ks_status text_layer(cl_backend *cb, int l, size_t T, bool flash, size_t n_blocks)
{
    const ke_text_config *tc = &cb->base.model->config.text;
    size_t E = (size_t)tc->embed_dim;
    int heads = tc->heads, hd = tc->embed_dim / heads;
    float eps = tc->layer_norm_eps;
    const cl_tlayer *L = &cb->tl[l];
    ke_cl_gemm_args qkv = {.m = T,
                           .w = &L->qkv,
                           .x = cb->x,
                           .ldx = E,
                           .ln_stats = cb->x_stats,
                           .ln_sb = KE_CL_STAT_SB,
                           .ln_w = L->ln_attn.w,
                           .ln_b = L->ln_attn.b,
                           .ln_eps = eps,
                           .y = cb->q,
                           .ldy = E,
                           .act = -1,
                           .split_q = E,
                           .kpool = L->kpool,
                           .vpool = L->vpool,
                           .tokrow = cb->tokrow,
                           .kv_half = cb->kv_half};
    ke_cl_paged_attention_args att = {.q = cb->q,
                                      .kpool = L->kpool,
                                      .vpool = L->vpool,
                                      .kv_half = cb->kv_half,
                                      .tokrow = cb->tokrow,
                                      .pages = cb->pages,
                                      .max_pages = cb->max_pages,
                                      .page_tokens = PAGE_TOKENS,
                                      .out = cb->att,
                                      .out_stats = cb->att_stats,
                                      .n_tokens = T,
                                      .heads = heads,
                                      .head_dim = hd,
                                      .scale = inv_sqrt_head_dim(hd)};
    ke_cl_gemm_args out = {.m = T,
                           .w = &L->out,
                           .x = cb->att,
                           .ldx = E,
                           .ln_stats = cb->att_stats,
                           .ln_sb = (size_t)hd,
                           .ln_w = L->ln_inner.w,
                           .ln_b = L->ln_inner.b,
                           .ln_eps = eps,
                           .y = cb->x,
                           .ldy = E,
                           .act = -1,
                           .accumulate = true,
                           .stats_out = cb->x_stats};
    ke_cl_gemm_args fc1 = {.m = T,
                           .w = &L->fc1,
                           .x = cb->x,
                           .ldx = E,
                           .ln_stats = cb->x_stats,
                           .ln_sb = KE_CL_STAT_SB,
                           .ln_w = L->ln_final.w,
                           .ln_b = L->ln_final.b,
                           .ln_eps = eps,
                           .y = cb->ffn,
                           .ldy = L->fc1.n,
                           .act = (int)tc->activation,
                           .stats_out = cb->ffn_stats};
    ke_cl_gemm_args fc2 = {.m = T,
                           .w = &L->fc2,
                           .x = cb->ffn,
                           .ldx = L->fc1.n,
                           .ln_stats = cb->ffn_stats,
                           .ln_sb = KE_CL_STAT_SB,
                           .ln_w = L->ln_ffn.w,
                           .ln_b = L->ln_ffn.b,
                           .ln_eps = eps,
                           .y = cb->x,
                           .ldy = E,
                           .act = -1,
                           .accumulate = true,
                           .stats_out = cb->x_stats};
    ks_status status;
    if ((status = ke_cl_gemm_run(cb->gemm, L->s_qkv, &qkv, "q/k/v + KV append")) != KS_OK ||
        (status = flash ? ke_cl_flash_attention_paged(cb->ops, &att, cb->fblocks, n_blocks)
                        : ke_cl_paged_attention(cb->ops, L->s_att, &att)) != KS_OK ||
        (status = ke_cl_gemm_run(cb->gemm, L->s_out, &out, "out_proj + residual")) != KS_OK ||
        (status = ke_cl_gemm_run(cb->gemm, L->s_fc1, &fc1, "fc1 + activation")) != KS_OK)
        return status;
    return ke_cl_gemm_run(cb->gemm, L->s_fc2, &fc2, "fc2 + residual");
}

/* The outstanding selections must be collected before their output rows or the logits are
 * reused in a way they could observe: a forward only appends, so it needs no wait. */
static ks_status cl_forward(ke_backend *b, const ke_step *step, float *logits)
{
    cl_backend *cb = (cl_backend *)b;
    const ke_model *m = b->model;
    const ke_text_config *tc = &m->config.text;
    size_t E = (size_t)tc->embed_dim, V = (size_t)tc->vocab_size;
    size_t T = 0;
    char stage[64] = "preparing";
    kc_profile *prof = kc_context_profile(cb->ctx);
    ks_status status = ke_step_check(&cb->base, step, cb->slot_len, &T);
    if (status != KS_OK)
        return status;
    size_t S = (size_t)step->n_seqs;
    kc_profile_scope(prof, "text step");
    kc_profile_count(prof, "text steps");
    cb->logits_rows = 0;
    cb->selected = false;
    size_t img_used = 0, dirty = 0;
    for (size_t s = 0, row = 0; s < S; s++) {
        int slot = step->slots[s];
        if ((status = hold_pages(cb, slot, cb->slot_len[slot] + step->n_tokens[s])) != KS_OK)
            goto cleanup;
        for (int i = 0; i < step->n_tokens[s]; i++, row++)
            img_used += step->image_mask && step->image_mask[row];
    }
    for (int slot = 0; slot < b->slots; slot++)
        dirty += cb->slot_dirty[slot];
    cl_stage *sg = NULL;
    if ((status = grow_tokens(cb, T)) != KS_OK || (status = grow_seqs(cb, S)) != KS_OK ||
        (status = grow_images(cb, img_used)) != KS_OK ||
        (status = next_stage(cb, T, S, img_used, dirty, &sg)) != KS_OK)
        goto cleanup;

    /* the plan: per token (id or -1, position or -1, image row or -1, slot, cache position);
     * a step that holds a prefill attends through flash_attention.cl, in the same bits */
    size_t row = 0, used = 0, n_blocks = 0;
    bool flash = false;
    for (size_t s = 0; s < S; s++) {
        flash = flash || (cb->flash_text && step->n_tokens[s] > 1);
        int slot = step->slots[s];
        bool device = step->from_device && step->from_device[s];
        for (int i = 0; i < step->n_tokens[s]; i++, row++) {
            bool img = step->image_mask && step->image_mask[row];
            if (img)
                memcpy(sg->img + used * E, step->image_embeds + used * E, E * sizeof(float));
            const cl_row8 plan = {device ? -1 : step->ids[row],
                                  device ? -1 : step->positions[row],
                                  img ? (cl_int)used : -1,
                                  slot,
                                  cb->slot_len[slot] + i,
                                  0,
                                  0,
                                  0};
            memcpy(sg->plan[row], plan, sizeof plan);
            const cl_int frow[4] = {(cl_int)row, slot, cb->slot_len[slot] + i + 1, 0};
            memcpy(sg->frows + 4 * row, frow, sizeof frow);
            used += img;
        }
        sg->gidx[s] = (cl_int)(row - 1);
    }
    size_t page_row_bytes = (size_t)cb->max_pages * sizeof(cl_int);
    for (int slot = 0, d = 0; slot < b->slots; slot++) {
        if (!cb->slot_dirty[slot])
            continue;
        memcpy(sg->pages + (size_t)d * (size_t)cb->max_pages,
               cb->slot_pages + (size_t)slot * (size_t)cb->max_pages, page_row_bytes);
        if ((status = stage_write(cb, sg, cb->pages, (size_t)slot * page_row_bytes, page_row_bytes,
                                  sg->pages + (size_t)d * (size_t)cb->max_pages)) != KS_OK)
            goto cleanup;
        cb->slot_dirty[slot] = false;
        d++;
    }
    if ((status = stage_write(cb, sg, cb->plan, 0, T * sizeof(cl_row8), sg->plan)) != KS_OK ||
        (status = stage_write(cb, sg, cb->gidx, 0, S * sizeof(cl_int), sg->gidx)) != KS_OK ||
        (status = stage_write(cb, sg, cb->image_rows, 0, used * E * 4, sg->img)) != KS_OK)
        goto cleanup;
    if (flash) {
        n_blocks = ke_cl_flash_blocks(sg->frows, T, cb->flash_bq, sg->fblocks);
        if ((status = stage_write(cb, sg, cb->fblocks, 0, n_blocks * sizeof(cl_int4),
                                  sg->fblocks)) != KS_OK)
            goto cleanup;
    }

    float embed_scale = tc->scale_embedding ? (float)sqrt((double)tc->embed_dim) : 1.0f;
    ke_cl_decoder_embed_args ea = {.plan = cb->plan,
                                   .n_tokens = T,
                                   .table = cb->embed.w,
                                   .ldv = cb->embed.ldw,
                                   .panel = cb->embed.panel,
                                   .image_rows = cb->image_rows ? cb->image_rows : cb->dummy,
                                   .freq = cb->freq,
                                   .scale = embed_scale,
                                   .pad = tc->pad_id,
                                   .dim = tc->embed_dim,
                                   .slot_next = cb->slot_next,
                                   .pages = cb->pages,
                                   .max_pages = cb->max_pages,
                                   .page_tokens = PAGE_TOKENS,
                                   .hist = cb->hist,
                                   .hist_cap = b->slot_capacity,
                                   .x = cb->x,
                                   .x_stats = cb->x_stats,
                                   .tokrow = cb->tokrow};
    if ((status = ke_cl_decoder_embed(cb->ops, &ea)) != KS_OK)
        goto cleanup;

    kc_profile_scope(prof, "text layer");
    for (int l = 0; l < tc->layers; l++) {
        snprintf(stage, sizeof stage, "text layer %d", l);
        if ((status = text_layer(cb, l, T, flash, n_blocks)) != KS_OK)
            goto cleanup;
    }

    /* final LayerNorm and lm_head on the last new token of each sequence only */
    kc_profile_scope(prof, "text step");
    snprintf(stage, sizeof stage, "logits");
    ke_cl_gemm_args lm = {.m = S,
                          .w = &cb->lm_head,
                          .x = cb->x,
                          .ldx = E,
                          .gather = cb->gidx,
                          .ln_stats = cb->x_stats,
                          .ln_sb = KE_CL_STAT_SB,
                          .ln_w = cb->final_ln.w,
                          .ln_b = cb->final_ln.b,
                          .ln_eps = tc->layer_norm_eps,
                          .y = cb->logits,
                          .ldy = V,
                          .act = -1};
    if ((status = ke_cl_gemm_run(cb->gemm, cb->s_lm, &lm, "lm_head")) != KS_OK)
        goto cleanup;
    for (size_t s = 0; s < S; s++)
        cb->slot_len[step->slots[s]] += step->n_tokens[s];
    if (logits) {
        snprintf(stage, sizeof stage, "reading %zu x %zu logits", S, V);
        if ((status = read_now(cb, cb->logits, 0, S * V * 4, logits)) != KS_OK)
            goto cleanup;
    }
    cb->logits_rows = (int)S;

cleanup:
    kc_profile_scope(prof, NULL);
    if (status != KS_OK) {
        ks_error_prefix("OpenCL forward (%zu sequences, %zu tokens), %s", S, T, stage);
        cb->logits_rows = 0;
    }
    return status;
}

/* Checks select rows against the last forward and fills `info` with (row, slot, len, ngram,
 * ban_eos) for the kernels that read the device history. */
static ks_status check_select(cl_backend *cb, const char *what, const ke_select_row *rows, int n)
{
    if (n < 1 || rows == NULL)
        return ks_fail(KS_ERR_INVALID, "%s: no rows", what);
    if (cb->logits_rows == 0 || cb->selected)
        return ks_fail(KS_ERR_INVALID,
                       "%s: no logits on the device (call forward with logits "
                       "NULL first; one select per forward)",
                       what);
    for (int i = 0; i < n; i++) {
        const ke_select_row *r = &rows[i];
        if (r->row < 0 || r->row >= cb->logits_rows || r->slot < 0 || r->slot >= cb->base.slots ||
            r->len != (size_t)cb->slot_len[r->slot] || r->no_repeat_ngram_size < 0)
            return ks_fail(KS_ERR_INVALID,
                           "%s: row %d (logits row %d of %d, slot %d holding %d "
                           "ids, %zu given)",
                           what, i, r->row, cb->logits_rows, r->slot,
                           r->slot >= 0 && r->slot < cb->base.slots ? cb->slot_len[r->slot] : -1,
                           r->len);
    }
    return KS_OK;
}

static ks_status cl_select_greedy_enqueue(ke_backend *b, const ke_select_row *rows, int n,
                                          int32_t *ids)
{
    cl_backend *cb = (cl_backend *)b;
    const ke_text_config *tc = &b->model->config.text;
    ks_status status = KS_OK;
    cl_stage *sg = NULL;
    kc_profile *prof = kc_context_profile(cb->ctx);
    if (ids == NULL)
        return ks_fail(KS_ERR_INVALID, "select_greedy: no ids");
    if (cb->n_outstanding >= KE_MAX_OUTSTANDING)
        return ks_fail(KS_ERR_INVALID, "select_greedy: %d selections outstanding already",
                       cb->n_outstanding);
    if ((status = check_select(cb, "select_greedy", rows, n)) != KS_OK ||
        (status = next_stage(cb, 0, (size_t)n, 0, 0, &sg)) != KS_OK)
        return status;
    kc_profile_scope(prof, "text step");
    for (int i = 0; i < n; i++) {
        const cl_row8 sel = {rows[i].row,
                             rows[i].slot,
                             (cl_int)rows[i].len,
                             rows[i].no_repeat_ngram_size,
                             rows[i].ban_eos ? 1 : 0,
                             0,
                             0,
                             0};
        memcpy(sg->sel[i], sel, sizeof sel);
    }
    cb->selected = true; /* the bans are in the logits; fetch_logits may read rows */
    size_t out_off = (size_t)cb->sel_at * cb->seqs * sizeof(cl_int);
    cl_outstanding *o = &cb->outstanding[cb->n_outstanding];
    if ((status = stage_write(cb, sg, cb->sel_info, 0, (size_t)n * sizeof(cl_row8), sg->sel)) !=
            KS_OK ||
        (status = ke_cl_select_greedy_slots(cb->ops, cb->logits, tc->vocab_size, cb->sel_info, n,
                                            cb->hist, b->slot_capacity, tc->eos_id, cb->sel_out,
                                            cb->slot_next)) != KS_OK)
        goto cleanup;
    /* the ids go to their own row of sel_out, so a later select cannot overwrite them before
     * this read: copy them there on the device, then read without waiting */
    KC_CHECK(clEnqueueCopyBuffer(kc_context_queue(cb->ctx), cb->sel_out, cb->sel_out, 0,
                                 out_off + cb->seqs * sizeof(cl_int), (size_t)n * sizeof(cl_int), 0,
                                 NULL, NULL));
    if ((status = kc_context_read(cb->ctx, cb->sel_out, false, out_off + cb->seqs * sizeof(cl_int),
                                  (size_t)n * sizeof(cl_int), ids, &o->read)) != KS_OK)
        goto cleanup;
    o->n = n;
    cb->n_outstanding++;
    cb->sel_at = (cb->sel_at + 1) % KE_MAX_OUTSTANDING;
cleanup:
    kc_profile_scope(prof, NULL);
    if (status != KS_OK)
        ks_error_prefix("OpenCL select_greedy (%d sequences)", n);
    return status;
}

static ks_status cl_wait_selected(ke_backend *b)
{
    cl_backend *cb = (cl_backend *)b;
    if (cb->n_outstanding == 0)
        return ks_fail(KS_ERR_INVALID, "wait_selected: nothing outstanding");
    ks_status st = kc_context_wait(cb->ctx, &cb->outstanding[0].read, "ids of a selection");
    memmove(cb->outstanding, cb->outstanding + 1,
            (size_t)(cb->n_outstanding - 1) * sizeof *cb->outstanding);
    cb->n_outstanding--;
    if (st != KS_OK)
        ks_error_prefix("OpenCL wait_selected");
    return st;
}

static ks_status cl_select_greedy(ke_backend *b, const ke_select_row *rows, int n, int32_t *ids)
{
    cl_backend *cb = (cl_backend *)b;
    ks_status st = KS_OK;
    while (cb->n_outstanding > 0 && st == KS_OK)
        st = cl_wait_selected(b);
    if (st == KS_OK)
        st = cl_select_greedy_enqueue(b, rows, n, ids);
    if (st == KS_OK)
        st = cl_wait_selected(b);
    return st;
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
        if ((status = new_buffer(cb, CL_MEM_WRITE_ONLY, cap * sizeof(float), NULL, &cb->cand_val,
                                 "candidate values")) != KS_OK ||
            (status = new_buffer(cb, CL_MEM_WRITE_ONLY, cap * sizeof(cl_int), NULL, &cb->cand_id,
                                 "candidate ids")) != KS_OK)
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
    size_t n_cand = 0, cap = 0, max_len = 0;
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
        if (rows[i].len > max_len)
            max_len = rows[i].len;
    }
    if (cap > (size_t)INT32_MAX / 2)
        return ks_fail(KS_ERR_LIMIT, "select_sample: %zu candidates", cap);
    if ((status = check_select(cb, "select_sample", rows, n)) != KS_OK ||
        (status = grow_lists(cb, n_cand, cap)) != KS_OK)
        return status;
    while (cb->n_outstanding > 0)
        if ((status = cl_wait_selected(b)) != KS_OK)
            return status;
    if ((size_t)n > cb->samp_rows) {
        cb->samp_rows = 0;
        free_buffer(cb, &cb->samp_info);
        free(cb->h_sinfo);
        cb->h_sinfo = malloc((size_t)n * 5 * sizeof(cl_int));
        if (!cb->h_sinfo)
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        if ((status = new_buffer(cb, CL_MEM_READ_ONLY, (size_t)n * 5 * sizeof(cl_int), NULL,
                                 &cb->samp_info, "selection rows")) != KS_OK)
            return status;
        cb->samp_rows = (size_t)n;
    }
    size_t c = 0, off = 0;
    for (int i = 0; i < n; i++) {
        cl_int *in = cb->h_sinfo + (size_t)i * 5; /* the history is the slot's, on the device */
        in[0] = rows[i].row;
        in[1] = (cl_int)((size_t)rows[i].slot * (size_t)b->slot_capacity);
        in[2] = (cl_int)rows[i].len;
        in[3] = rows[i].no_repeat_ngram_size;
        in[4] = rows[i].ban_eos ? 1 : 0;
        if (rows[i].candidates == 0)
            continue;
        cl_int *ci = cb->h_cinfo + c * 4;
        ci[0] = rows[i].row;
        ci[1] = rows[i].candidates;
        ci[2] = (cl_int)off;
        memcpy(&ci[3], &rows[i].tail_temperature, sizeof(float));
        off += (size_t)rows[i].candidates;
        c++;
    }
    cb->selected = true; /* the bans are in the logits; fetch_logits may read rows */
    ke_cl_select_sample_args a = {.logits = cb->logits,
                                  .vocab = V,
                                  .info = cb->samp_info,
                                  .hist = cb->hist,
                                  .n_sel = n,
                                  .max_len = (int)max_len,
                                  .eos = tc->eos_id,
                                  .out = cb->sel_out,
                                  .cinfo = cb->cand_info,
                                  .n_cand = (int)n_cand,
                                  .cval = cb->cand_val,
                                  .cid = cb->cand_id,
                                  .cstat = cb->cand_stat};
    if ((status = write_now(cb, cb->samp_info, (size_t)n * 5 * sizeof(cl_int), cb->h_sinfo)) !=
            KS_OK ||
        (n_cand > 0 && (status = write_now(cb, cb->cand_info, n_cand * 4 * sizeof(cl_int),
                                           cb->h_cinfo)) != KS_OK) ||
        (status = ke_cl_select_sample(cb->ops, &a)) != KS_OK ||
        (status = read_now(cb, cb->sel_out, 0, (size_t)n * sizeof(cl_int), cb->h_out)) != KS_OK ||
        (n_cand > 0 &&
         ((status = read_now(cb, cb->cand_stat, 0, n_cand * 4 * sizeof(cl_ulong), cb->h_cstat)) !=
              KS_OK ||
          (status = read_now(cb, cb->cand_val, 0, cap * sizeof(float), cb->h_cval)) != KS_OK ||
          (status = read_now(cb, cb->cand_id, 0, cap * sizeof(cl_int), cb->h_cid)) != KS_OK))) {
        ks_error_prefix("OpenCL select_sample (%d sequences, %zu lists)", n, n_cand);
        cb->logits_rows = 0;
        return status;
    }
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
    ks_status status = read_now(cb, cb->logits, (size_t)row * V * 4, V * 4, out);
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
    int len = cb->slot_len[src];
    if ((status = hold_pages(cb, dst, len)) != KS_OK)
        return status;
    cl_command_queue q = kc_context_queue(cb->ctx);
    size_t row = (size_t)b->model->config.text.embed_dim * (cb->kv_half ? 2 : 4);
    size_t page_bytes = PAGE_TOKENS * row;
    for (int p = 0; p * PAGE_TOKENS < len; p++) {
        size_t from = (size_t)cb->slot_pages[(size_t)src * (size_t)cb->max_pages + (size_t)p];
        size_t to = (size_t)cb->slot_pages[(size_t)dst * (size_t)cb->max_pages + (size_t)p];
        size_t bytes = (size_t)(len - p * PAGE_TOKENS < PAGE_TOKENS ? len - p * PAGE_TOKENS
                                                                    : PAGE_TOKENS) *
                       row;
        for (int l = 0; l < b->model->config.text.layers; l++) {
            KC_CHECK(clEnqueueCopyBuffer(q, cb->tl[l].kpool, cb->tl[l].kpool, from * page_bytes,
                                         to * page_bytes, bytes, 0, NULL, NULL));
            KC_CHECK(clEnqueueCopyBuffer(q, cb->tl[l].vpool, cb->tl[l].vpool, from * page_bytes,
                                         to * page_bytes, bytes, 0, NULL, NULL));
        }
    }
    size_t hist_row = (size_t)b->slot_capacity * sizeof(cl_int);
    if (len > 0)
        KC_CHECK(clEnqueueCopyBuffer(q, cb->hist, cb->hist, (size_t)src * hist_row,
                                     (size_t)dst * hist_row, (size_t)len * sizeof(cl_int), 0, NULL,
                                     NULL));
    KC_CHECK(clEnqueueCopyBuffer(q, cb->slot_next, cb->slot_next, (size_t)src * sizeof(cl_int),
                                 (size_t)dst * sizeof(cl_int), sizeof(cl_int), 0, NULL, NULL));
    cb->slot_len[dst] = len;
cleanup:
    if (status != KS_OK)
        ks_error_prefix("OpenCL copy_slot %d -> %d (%d tokens)", src, dst, len);
    return status;
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
    out->weight_bytes = cb->weight_bytes;
    out->gemm = ke_cl_gemm_path_report(cb->gemm);
    out->tunables = cb->tune.report;
}

static void cl_destroy(ke_backend *b)
{
    cl_backend *cb = (cl_backend *)b;
    for (int i = 0; i < cb->n_outstanding; i++)
        kc_pending_release(&cb->outstanding[i].read);
    if (cb->ctx)
        kc_context_finish(cb->ctx); /* staging memory is read until the queue is done */
    for (int i = 0; i < N_STAGE; i++) {
        kc_pending_release(&cb->stage[i].done);
        free(cb->stage[i].plan);
        free(cb->stage[i].gidx);
        free(cb->stage[i].img);
        free(cb->stage[i].pages);
        free(cb->stage[i].sel);
        free(cb->stage[i].frows);
        free(cb->stage[i].fblocks);
    }
    ke_cl_gemm_destroy(&cb->gemm);
    ke_cl_ops_destroy(&cb->ops);
    kc_context_destroy(&cb->ctx); /* every buffer, program and kernel */
    free(cb->v_arows);
    free(cb->v_ablocks);
    free(cb->vl);
    free(cb->tl);
    free(cb->free_pages);
    free(cb->slot_pages);
    free(cb->slot_npages);
    free(cb->slot_dirty);
    free(cb->slot_len);
    free(cb->h_out);
    free(cb->h_cinfo);
    free(cb->h_cid);
    free(cb->h_cval);
    free(cb->h_cstat);
    free(cb->h_sinfo);
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
    .reserve = cl_reserve,
    .select_greedy_enqueue = cl_select_greedy_enqueue,
    .wait_selected = cl_wait_selected,
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
        return ks_fail(KS_ERR_UNSUPPORTED, "embed_dim %d < 4 has no sinusoid table", tc->embed_dim);
    if (c->latent_query_num < 1)
        return ks_fail(KS_ERR_INVALID, "latent_query_num %d", c->latent_query_num);
    return KS_OK;
}

/* An explicit vision chunk whose largest buffer the device cannot allocate fails at the start,
 * not at the first large vision pass. */
static ks_status check_vision_chunk(const ke_config *c, const kc_device_info *device, int chunk)
{
    if (chunk < 0)
        return ks_fail(KS_ERR_INVALID, "OpenCL backend: a vision chunk of %d images", chunk);
    vision_dims d = vision_dims_of(c);
    size_t sizes[V_COUNT];
    vision_sizes(&d, 1, sizes);
    for (int i = 0; i < V_COUNT; i++)
        if ((double)sizes[i] * chunk > (double)device->max_alloc_bytes)
            return ks_fail(KS_ERR_LIMIT,
                           "a vision chunk of %d images needs %.0f bytes for the %s, more than "
                           "the device's largest allocation of %llu bytes (a smaller vision "
                           "chunk)",
                           chunk, (double)sizes[i] * chunk, vision_names[i],
                           (unsigned long long)device->max_alloc_bytes);
    return KS_OK;
}

static ks_status upload_vision(cl_backend *cb)
{
    const ke_model *m = cb->base.model;
    const ke_config *c = &m->config;
    const ke_vision_config *vc = &c->vision;
    char name[96];
    ks_status st;
    /* the patch embedding (hidden, channels, p, p) is a linear map of the unfolded patch */
    ke_tensor patch = m->patch_embedding;
    patch.ndim = 2;
    patch.shape[1] = (int64_t)vc->channels * vc->patch_size * vc->patch_size;
    if ((st = upload_matrix(cb, &patch, "patch_embedding", &cb->patch)) ||
        (st = upload(cb, &m->class_embedding, "class_embedding", &cb->class_emb)) ||
        (st = upload(cb, &m->position_embedding, "position_embedding", &cb->pos_emb)) ||
        (st = upload_ln(cb, &m->pre_layrnorm, "pre_layrnorm", &cb->pre_ln)) ||
        (st = upload_ln(cb, &m->post_layernorm, "post_layernorm", &cb->post_ln)))
        return st;
    for (int l = 0; l < vc->layers; l++) {
        const ke_vision_layer *L = &m->vision_layers[l];
        cl_vlayer *D = &cb->vl[l];
        const ke_linear *qkv[3] = {&L->q_proj, &L->k_proj, &L->v_proj};
        snprintf(name, sizeof name, "vision layer %d", l);
        if ((st = upload_ln(cb, &L->layer_norm1, name, &D->ln1)) ||
            (st = upload_ln(cb, &L->layer_norm2, name, &D->ln2)) ||
            (st = upload_lin(cb, qkv, 3, name, &D->qkv)) ||
            (st = upload_one(cb, &L->out_proj, name, &D->out)) ||
            (st = upload_one(cb, &L->fc1, name, &D->fc1)) ||
            (st = upload_one(cb, &L->fc2, name, &D->fc2)))
            return st;
    }
    const ke_linear *xkv[2] = {&m->x_k_proj, &m->x_v_proj};
    if ((st = upload_one(cb, &m->dense, "image_to_text_projection.dense", &cb->dense)) ||
        (st = upload_one(cb, &m->x_q_proj, "x_q_proj", &cb->xq)) ||
        (st = upload_lin(cb, xkv, 2, "x_k_proj/x_v_proj", &cb->xkv)) ||
        (st = upload_one(cb, &m->x_out_proj, "x_out_proj", &cb->xout)))
        return st;
    /* the latent queries as f32 rows: they are copied into each image's K/V input */
    size_t lq_n = (size_t)c->latent_query_num * (size_t)c->text.embed_dim;
    float *latent = malloc(lq_n * sizeof(float));
    if (!latent)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    ke_tensor_read_f32(&m->latent_query, 0, lq_n, latent);
    st = new_buffer(cb, CL_MEM_READ_ONLY, lq_n * sizeof(float), latent, &cb->latent,
                    "latent_query");
    free(latent);
    return st;
}

static ks_status upload_text(cl_backend *cb)
{
    const ke_model *m = cb->base.model;
    const ke_text_config *tc = &m->config.text;
    char name[96];
    ks_status st;
    if ((st = upload_matrix(cb, &m->embed_tokens, "embed_tokens", &cb->embed)))
        return st;
    if (m->lm_head.data == m->embed_tokens.data) {
        cb->lm_head = cb->embed; /* tied */
    } else if ((st = upload_matrix(cb, &m->lm_head, "lm_head", &cb->lm_head))) {
        return st;
    }
    if ((st = ke_cl_gemm_site_new(cb->gemm, "lm_head", &cb->s_lm)))
        return st;
    size_t kv_rows = (size_t)cb->n_pages * PAGE_TOKENS;
    size_t kv_bytes = kv_rows * (size_t)tc->embed_dim * (cb->kv_half ? 2 : 4);
    for (int l = 0; l < tc->layers; l++) {
        const ke_text_layer *L = &m->text_layers[l];
        cl_tlayer *D = &cb->tl[l];
        const ke_linear *qkv[3] = {&L->q_proj, &L->k_proj, &L->v_proj};
        snprintf(name, sizeof name, "text layer %d", l);
        if ((st = upload_ln(cb, &L->self_attn_layer_norm, name, &D->ln_attn)) ||
            (st = upload_ln(cb, &L->inner_attn_ln, name, &D->ln_inner)) ||
            (st = upload_ln(cb, &L->final_layer_norm, name, &D->ln_final)) ||
            (st = upload_ln(cb, &L->ffn_layernorm, name, &D->ln_ffn)) ||
            (st = upload_lin(cb, qkv, 3, name, &D->qkv)) ||
            (st = upload_one(cb, &L->out_proj, name, &D->out)) ||
            (st = upload_one(cb, &L->fc1, name, &D->fc1)) ||
            (st = upload_one(cb, &L->fc2, name, &D->fc2)) ||
            (st = ke_cl_gemm_site_new(cb->gemm, "q/k/v", &D->s_qkv)) ||
            (st = ke_cl_gemm_site_new(cb->gemm, "out_proj", &D->s_out)) ||
            (st = ke_cl_gemm_site_new(cb->gemm, "fc1", &D->s_fc1)) ||
            (st = ke_cl_gemm_site_new(cb->gemm, "fc2", &D->s_fc2)) ||
            (st = ke_cl_ops_site(cb->ops, ke_cl_ops_paged_attention_kernel(cb->ops), &D->s_att)))
            return st;
        snprintf(name, sizeof name, "text layer %d KV cache (%zu tokens)", l, kv_rows);
        if ((st = new_buffer(cb, CL_MEM_READ_WRITE, kv_bytes, NULL, &D->kpool, name)) ||
            (st = new_buffer(cb, CL_MEM_READ_WRITE, kv_bytes, NULL, &D->vpool, name)))
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
    int slots = cb->base.slots;
    if ((st = new_buffer(cb, CL_MEM_READ_WRITE,
                         (size_t)slots * (size_t)cb->max_pages * sizeof(cl_int), NULL, &cb->pages,
                         "KV page table")) ||
        (st = new_buffer(cb, CL_MEM_READ_WRITE,
                         (size_t)slots * (size_t)cb->base.slot_capacity * sizeof(cl_int), NULL,
                         &cb->hist, "id histories")) ||
        (st = new_buffer(cb, CL_MEM_READ_WRITE, (size_t)slots * sizeof(cl_int), NULL,
                         &cb->slot_next, "next tokens")))
        return st;
    return new_buffer(cb, CL_MEM_READ_ONLY, 16, NULL, &cb->dummy, "placeholder");
}

/* flash_attention.cl for the vision encoder (its head size), and for the resampler and the
 * prefill (the text's), unless the options ask for the kernels of one row per work-group or
 * the device cannot run it: then attention.cl and paged_attention do that work. */
static ks_status prepare_flash(cl_backend *cb, const ke_backend_options *options)
{
    const ke_config *c = &cb->base.model->config;
    const int head_dims[2] = {c->vision.hidden_size / c->vision.heads,
                              c->text.embed_dim / c->text.heads};
    bool *use[2] = {&cb->flash_vision, &cb->flash_text};
    cb->flash_bq = ke_cl_flash_block_q(cb->ops);
    for (int i = 0; i < 2 && !options->no_flash_attention; i++) {
        ks_status st = ke_cl_flash_prepare(cb->ops, head_dims[i]);
        if (st == KS_ERR_UNSUPPORTED)
            ks_error_clear();
        else if (st != KS_OK)
            return st;
        *use[i] = st == KS_OK;
    }
    return KS_OK;
}

/* The page bookkeeping for `kv_tokens` tokens in all, on `device`. */
static ks_status init_pages(cl_backend *cb, size_t kv_tokens, const kc_device_info *device)
{
    int slots = cb->base.slots;
    cb->max_pages = (int)ceil_div((size_t)cb->base.slot_capacity, PAGE_TOKENS);
    size_t pages = ceil_div(kv_tokens, PAGE_TOKENS);
    double layer_bytes = (double)pages * PAGE_TOKENS *
                         (double)cb->base.model->config.text.embed_dim * (cb->kv_half ? 2 : 4);
    if (pages < 1 || pages > (size_t)INT32_MAX / PAGE_TOKENS ||
        layer_bytes > (double)device->max_alloc_bytes)
        return ks_fail(KS_ERR_LIMIT,
                       "a KV cache of %zu tokens needs %.0f bytes per layer for K "
                       "(as many for V), more than the device's largest allocation of %llu bytes "
                       "(fewer --slots or a smaller --context)",
                       kv_tokens, layer_bytes, (unsigned long long)device->max_alloc_bytes);
    cb->n_pages = (int)pages;
    cb->free_pages = malloc(pages * sizeof(int));
    cb->slot_pages = calloc((size_t)slots * (size_t)cb->max_pages, sizeof(int));
    cb->slot_npages = calloc((size_t)slots, sizeof(int));
    cb->slot_dirty = calloc((size_t)slots, sizeof(bool));
    cb->slot_len = calloc((size_t)slots, sizeof(int));
    if (!cb->free_pages || !cb->slot_pages || !cb->slot_npages || !cb->slot_dirty || !cb->slot_len)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    for (int p = 0; p < cb->n_pages; p++)
        cb->free_pages[p] = cb->n_pages - 1 - p; /* page 0 is handed out first */
    cb->n_free = cb->n_pages;
    return KS_OK;
}

/* The GEMM with the tunables ke_cl_gemm_tune_choose picks; the database's may be set aside
 * here too, when this driver refuses to build them (the device's row then). */
static ks_status open_gemm(cl_backend *cb, const kc_device_info *device,
                           const ke_backend_options *options)
{
    ke_cl_gemm_tune_choose(device, options->gemm_tune, options->tune_db, &cb->tune);
    ks_status status = ke_cl_gemm_new(cb->ctx, cb->tune.tune, &cb->gemm);
    if (status != KS_OK && cb->tune.source == KE_TUNE_DB) {
        ke_cl_gemm_tune_fall_back(device, &cb->tune, ks_error_message());
        status = ke_cl_gemm_new(cb->ctx, cb->tune.tune, &cb->gemm);
    }
    return status;
}

ks_status ke_backend_cl_new(const ke_model *model, const kc_device_info *device,
                            const ke_backend_options *options, ke_backend **out)
{
    ks_status status = KS_OK;
    *out = NULL;
    if (model == NULL || device == NULL || options == NULL)
        return ks_fail(KS_ERR_INVALID, "OpenCL backend: no model, device or options");
    if (options->slots < 1 || options->slot_capacity < 1)
        return ks_fail(KS_ERR_INVALID, "OpenCL backend: %d slots of %d tokens", options->slots,
                       options->slot_capacity);
    if ((status = check_config(&model->config)) != KS_OK) {
        ks_error_prefix("OpenCL backend");
        return status;
    }
    if ((status = check_vision_chunk(&model->config, device, options->vision_chunk)) != KS_OK)
        return status;
    if (options->weights_int8 && model->storage != KE_DTYPE_F16) {
        /* the int8 kernels read biases and LayerNorm parameters as half */
        return ks_fail(KS_ERR_UNSUPPORTED, "OpenCL backend: int8 weights need a model stored in "
                                           "f16, not f32");
    }
    cl_backend *cb = calloc(1, sizeof *cb);
    if (cb == NULL)
        return ks_fail(KS_ERR_NOMEM, "OpenCL backend: out of memory");
    cb->base.ops = &cl_ops_table;
    cb->base.model = model;
    cb->base.slots = options->slots;
    cb->base.slot_capacity = options->slot_capacity;
    cb->base.vision_chunk = options->vision_chunk ? options->vision_chunk
                                                  : default_vision_chunk(&model->config, device);
    cb->resampler_full = options->resampler_full_attention;
    cb->kv_half = options->kv_half;
    cb->wdt = model->storage;
    cb->lin_dt = options->weights_int8 ? KE_DTYPE_I8 : cb->wdt;
    cb->vl = calloc((size_t)(model->config.vision.layers ? model->config.vision.layers : 1),
                    sizeof *cb->vl);
    cb->tl = calloc((size_t)(model->config.text.layers ? model->config.text.layers : 1),
                    sizeof *cb->tl);
    /* by default every slot can hold slot_capacity tokens at once (whole pages each) */
    size_t kv_tokens = options->kv_tokens
                           ? options->kv_tokens
                           : (size_t)options->slots *
                                 (ceil_div((size_t)options->slot_capacity, PAGE_TOKENS) *
                                  PAGE_TOKENS);
    if (!cb->vl || !cb->tl) {
        status = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    if ((status = init_pages(cb, kv_tokens, device)) != KS_OK)
        goto cleanup;
    kc_context_params params;
    kc_context_params_init(&params);
    params.profiling = options->profiling;
    if ((status = kc_context_new(device, &params, &cb->ctx)) != KS_OK ||
        (status = open_gemm(cb, device, options)) != KS_OK ||
        (status = ke_cl_ops_new(cb->ctx, cb->wdt, &cb->ops)) != KS_OK ||
        (status = ke_cl_gemm_set_path(cb->gemm, options->gemm)) != KS_OK)
        goto cleanup;
    /* the vision attention on the matrix units wherever the products are (--gemm) */
    ke_cl_flash_use_mma(cb->ops, ke_cl_gemm_mma_variant(cb->gemm));
    if ((status = upload_vision(cb)) != KS_OK || (status = upload_text(cb)) != KS_OK ||
        (status = prepare_flash(cb, options)) != KS_OK ||
        (status = kc_context_finish(cb->ctx)) != KS_OK)
        goto cleanup;
    kc_profile_reset(kc_context_profile(cb->ctx)); /* the profile starts with the first call */
    *out = &cb->base;
    cb = NULL;
cleanup:
    if (status != KS_OK)
        ks_error_prefix("OpenCL backend on device %zu '%s'", device->index, device->name);
    if (cb)
        cl_destroy(&cb->base);
    return status;
}

kc_context *ke_backend_cl_context(ke_backend *b)
{
    return b && b->ops == &cl_ops_table ? ((cl_backend *)b)->ctx : NULL;
}
