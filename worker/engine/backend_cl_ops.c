/* ke_cl_ops: see backend_cl_ops.h. Four programs, one option set each per weight dtype:
 * layer_norm.cl, ops.cl, attention.cl and select.cl. Work-group sizes start from a preference
 * capped by the device's limit, and are halved (a rebuild) while any kernel of the program
 * reports a smaller CL_KERNEL_WORK_GROUP_SIZE, so nothing assumes a particular driver. */
#include "backend_cl_ops.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <string.h>

#include "cl_gemm.h"
#include "kc_error.h"
#include "kc_program.h"

enum {
    K_LAYER_NORM,
    K_ACTIVATION,
    K_L2,
    K_UNFOLD,
    K_VISION_EMBED,
    K_ATTENTION,
    K_NGRAM_BAN,
    K_ARGMAX,
    K_TOPK,
    K_COUNT
};

/* The text decoder's kernels run every step from one call site each: kernel objects of their
 * own that keep their arguments (kc_bound), so a step sets only what changed. */
enum { B_EMBED, B_PAGED_ATTENTION, B_PAGED_ATTENTION_SERIAL, B_SELECT_SLOTS, B_COUNT };
static const char *const bound_names[B_COUNT] = {"decoder_embed", "paged_attention",
                                                 "paged_attention_serial", "select_greedy_slots"};

typedef struct prog_spec {
    const char *file;
    size_t preferred_wg;
    bool weights;     /* has WEIGHT_HALF */
    int first, count; /* kernels [first, first + count) */
} prog_spec;

static const char *const kernel_names[K_COUNT] = {"layer_norm",     "activation",   "l2_normalize",
                                                  "unfold_patches", "vision_embed", "attention",
                                                  "ngram_ban",      "argmax_rows",  "topk_rows"};

enum { P_LAYER_NORM, P_OPS, P_ATTENTION, P_SELECT, P_DECODER, P_COUNT };

static const prog_spec programs[P_COUNT] = {
    {"layer_norm.cl", 256, true, K_LAYER_NORM, 1},
    {"ops.cl", 64, true, K_ACTIVATION, 4},
    {"attention.cl", 64, false, K_ATTENTION, 1},
    {"select.cl", 64, false, K_NGRAM_BAN, 3},
    {"decoder.cl", 64, true, 0, 0},
};

/* A build of flash_attention.cl: its head size, order (KEY_CHUNK, DOT_ORDER) and tiles. */
typedef struct flash_build {
    int head_dim, chunk, order, block_q, block_k;
    cl_kernel k, paged; /* flash_attention, flash_attention_paged */
} flash_build;

/* A build of attention_wide.cl (CPUs: its head size and largest block) or of
 * flash_attention_mma.cl (its head size; block 0). */
typedef struct wide_build {
    int head_dim, block_q;
    cl_kernel k;
} wide_build;

struct ke_cl_ops {
    kc_context *ctx; /* borrowed */
    ke_dtype weight_dtype;
    cl_command_queue queue;
    cl_kernel k[K_COUNT];
    kc_bound *bound[B_COUNT];
    size_t wg[P_COUNT];
    uint64_t local_mem;
    bool serial_attention; /* paged_attention_serial: CPUs (ke_cl_ops_paged_attention_kernel) */
    flash_build *flash;    /* [n_flash], made on demand (flash_get) */
    int n_flash;
    int flash_bq, flash_bk; /* ke_cl_flash_force_tiles; 0: the device's choice */
    wide_build *wide;       /* [n_wide], made on demand (wide_get) */
    int n_wide;
    bool mma_on; /* ke_cl_flash_use_mma */
    ke_mma_variant mma;
    wide_build *fmma; /* flash_attention_mma.cl by head size (block_q unused), on demand */
    int n_fmma;
    int wide_mode; /* ke_cl_flash_force_wide: -1 CPUs (default), 0 never, 1 every device */
};

static size_t floor_pow2(size_t v)
{
    size_t p = 1;
    while (p * 2 <= v)
        p *= 2;
    return p;
}

static size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

/* Lowers *fit to the work-group size the device allows for kernel k. */
static ks_status kernel_limit(const kc_device_info *dev, cl_kernel k, const char *name, size_t *fit)
{
    size_t kmax = 0;
    cl_int err = clGetKernelWorkGroupInfo(k, dev->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof kmax,
                                          &kmax, NULL);
    if (err != CL_SUCCESS)
        return ks_fail(KS_ERR_DEVICE, "clGetKernelWorkGroupInfo(%s) failed: %s (%d)", name,
                       kc_error_name(err), (int)err);
    if (kmax < *fit)
        *fit = kmax;
    return KS_OK;
}

/* Builds program `p` with the largest work-group size every one of its kernels accepts. */
static ks_status build(ke_cl_ops *o, int p, ke_dtype dt)
{
    const prog_spec *s = &programs[p];
    const kc_device_info *dev = kc_context_device(o->ctx);
    size_t wg = s->preferred_wg;
    if (dev->max_work_group_size > 0 && dev->max_work_group_size < wg)
        wg = floor_pow2(dev->max_work_group_size);
    for (;;) {
        char opts[160];
        int half = dt == KE_DTYPE_F16 ? 1 : 0;
        if (p == P_DECODER)
            snprintf(opts, sizeof opts,
                     "-DEMB_NT=%zu -DAT_NT=%zu -DSEL_NT=%zu -DWEIGHT_HALF=%d -DSTAT_SB=%d", wg, wg,
                     wg, half, KE_CL_STAT_SB);
        else if (s->weights)
            snprintf(opts, sizeof opts, "-DWG_SIZE=%zu -DWEIGHT_HALF=%d", wg, half);
        else
            snprintf(opts, sizeof opts, "-DWG_SIZE=%zu", wg);
        kc_program *prog = NULL;
        ks_status st = kc_program_get(o->ctx, s->file, opts, &prog);
        if (st != KS_OK)
            return st;
        size_t fit = wg;
        for (int i = s->first; i < s->first + s->count; i++) {
            if ((st = kc_program_kernel(prog, kernel_names[i], &o->k[i])) != KS_OK ||
                (st = kernel_limit(dev, o->k[i], kernel_names[i], &fit)) != KS_OK)
                return st;
        }
        for (int b = 0; p == P_DECODER && b < B_COUNT; b++) {
            if ((st = kc_bound_new(prog, bound_names[b], &o->bound[b])) != KS_OK ||
                (st = kernel_limit(dev, kc_bound_kernel(o->bound[b]), bound_names[b], &fit)) !=
                    KS_OK)
                return st;
        }
        if (fit >= wg) {
            o->wg[p] = wg;
            return KS_OK;
        }
        if (fit < 1)
            return ks_fail(KS_ERR_DEVICE, "%s: the device runs no work-group of its kernels",
                           s->file);
        wg = floor_pow2(fit);
    }
}

ks_status ke_cl_ops_new(kc_context *ctx, ke_dtype weight_dtype, ke_cl_ops **out)
{
    ks_status status = KS_OK;
    *out = NULL;
    ke_cl_ops *o = calloc(1, sizeof *o);
    if (!o)
        return ks_fail(KS_ERR_NOMEM, "OpenCL ops: out of memory");
    o->ctx = ctx;
    o->weight_dtype = weight_dtype;
    o->queue = kc_context_queue(ctx);
    o->local_mem = kc_context_device(ctx)->local_mem_bytes;
    o->serial_attention = (kc_context_device(ctx)->type & CL_DEVICE_TYPE_CPU) != 0;
    o->wide_mode = -1;
    for (int p = 0; p < P_COUNT; p++) {
        if ((status = build(o, p, weight_dtype)) != KS_OK) {
            ks_error_prefix("OpenCL ops");
            free(o);
            return status;
        }
    }
    *out = o;
    return KS_OK;
}

void ke_cl_ops_destroy(ke_cl_ops **ops)
{
    if (!ops || !*ops)
        return;
    free((*ops)->flash);
    free((*ops)->wide);
    free((*ops)->fmma);
    free(*ops); /* kernels and programs belong to the context */
    *ops = NULL;
}

const char *ke_cl_ops_paged_attention_kernel(const ke_cl_ops *o)
{
    return o->serial_attention ? "paged_attention_serial" : "paged_attention";
}

void ke_cl_ops_force_serial_attention(ke_cl_ops *o, bool serial) { o->serial_attention = serial; }

size_t ke_cl_ops_wg_size(const ke_cl_ops *o) { return o->wg[P_OPS]; }

#define ARG(kern, i, value)                                                                        \
    do {                                                                                           \
        __typeof__(value) arg_ = (value);                                                          \
        KC_CHECK(clSetKernelArg((kern), (i), sizeof arg_, &arg_));                                 \
    } while (0)

#define FITS_INT(v) ((v) <= (size_t)INT_MAX)

static ks_status run(ke_cl_ops *o, cl_kernel k, const char *name, cl_uint dims,
                     const size_t *global, const size_t *local, const kc_cost *cost)
{
    return kc_context_launch(o->ctx, k, name, dims, global, local, cost);
}

ks_status ke_cl_layer_norm(ke_cl_ops *o, cl_mem x, size_t rows, size_t dim, cl_mem w, cl_mem b,
                           float eps, cl_mem y)
{
    ks_status status = KS_OK;
    cl_kernel k = o->k[K_LAYER_NORM];
    if (rows == 0)
        return KS_OK;
    if (!FITS_INT(dim) || !w || !b) {
        status = ks_fail(KS_ERR_INVALID, "bad arguments");
        goto cleanup;
    }
    ARG(k, 0, x);
    ARG(k, 1, w);
    ARG(k, 2, b);
    ARG(k, 3, y);
    ARG(k, 4, (cl_int)dim);
    ARG(k, 5, (cl_float)eps);
    size_t local = o->wg[P_LAYER_NORM], global = rows * local;
    status = run(o, k, "layer_norm", 1, &global, &local, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel layer_norm (rows %zu, dim %zu)", rows, dim);
    return status;
}

ks_status ke_cl_activation(ke_cl_ops *o, cl_mem x, size_t n, ke_activation act)
{
    ks_status status = KS_OK;
    cl_kernel k = o->k[K_ACTIVATION];
    if (n == 0)
        return KS_OK;
    if (!FITS_INT(n)) {
        status = ks_fail(KS_ERR_LIMIT, "more than 2^31 values");
        goto cleanup;
    }
    ARG(k, 0, x);
    ARG(k, 1, (cl_int)n);
    ARG(k, 2, (cl_int)act);
    size_t global = round_up(n, 64);
    status = run(o, k, "activation", 1, &global, NULL, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel activation (n %zu, act %d)", n, (int)act);
    return status;
}

ks_status ke_cl_l2_normalize(ke_cl_ops *o, cl_mem x, size_t rows, size_t dim, float eps)
{
    ks_status status = KS_OK;
    cl_kernel k = o->k[K_L2];
    if (rows == 0)
        return KS_OK;
    if (!FITS_INT(dim)) {
        status = ks_fail(KS_ERR_LIMIT, "dim above 2^31");
        goto cleanup;
    }
    ARG(k, 0, x);
    ARG(k, 1, (cl_int)dim);
    ARG(k, 2, (cl_float)eps);
    size_t local = o->wg[P_OPS], global = rows * local;
    status = run(o, k, "l2_normalize", 1, &global, &local, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel l2_normalize (rows %zu, dim %zu)", rows, dim);
    return status;
}

ks_status ke_cl_unfold_patches(ke_cl_ops *o, cl_mem pixels, int n, int channels, int size,
                               int patch, cl_mem out)
{
    ks_status status = KS_OK;
    cl_kernel k = o->k[K_UNFOLD];
    size_t grid = patch > 0 ? (size_t)(size / patch) : 0;
    size_t total = (size_t)n * grid * grid * (size_t)channels * (size_t)patch * (size_t)patch;
    if (total == 0)
        return KS_OK;
    if (!FITS_INT(total)) {
        status = ks_fail(KS_ERR_LIMIT, "more than 2^31 values");
        goto cleanup;
    }
    ARG(k, 0, pixels);
    ARG(k, 1, out);
    ARG(k, 2, (cl_int)channels);
    ARG(k, 3, (cl_int)size);
    ARG(k, 4, (cl_int)patch);
    ARG(k, 5, (cl_int)total);
    size_t global = round_up(total, 64);
    status = run(o, k, "unfold_patches", 1, &global, NULL, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel unfold_patches (%d images, %d channels, size %d, patch %d)", n,
                        channels, size, patch);
    return status;
}

ks_status ke_cl_vision_embed(ke_cl_ops *o, cl_mem patch_out, cl_mem cls, cl_mem pos, int n, int seq,
                             int hid, cl_mem x)
{
    ks_status status = KS_OK;
    cl_kernel k = o->k[K_VISION_EMBED];
    size_t total = (size_t)n * (size_t)seq * (size_t)hid;
    if (total == 0)
        return KS_OK;
    if (!FITS_INT(total)) {
        status = ks_fail(KS_ERR_LIMIT, "more than 2^31 values");
        goto cleanup;
    }
    ARG(k, 0, patch_out);
    ARG(k, 1, cls);
    ARG(k, 2, pos);
    ARG(k, 3, x);
    ARG(k, 4, (cl_int)seq);
    ARG(k, 5, (cl_int)hid);
    ARG(k, 6, (cl_int)total);
    size_t global = round_up(total, 64);
    status = run(o, k, "vision_embed", 1, &global, NULL, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel vision_embed (%d images, seq %d, hidden %d)", n, seq, hid);
    return status;
}

ks_status ke_cl_attention(ke_cl_ops *o, const ke_cl_attention_args *a)
{
    ks_status status = KS_OK;
    cl_kernel k = o->k[K_ATTENTION];
    size_t wg = o->wg[P_ATTENTION];
    if (a->n_rows == 0)
        return KS_OK;
    if (a->heads < 1 || a->head_dim < 1 || !FITS_INT(a->q_off) || !FITS_INT(a->q_stride) ||
        !FITS_INT(a->k_off) || !FITS_INT(a->v_off) || !FITS_INT(a->kv_stride) ||
        !FITS_INT(a->out_stride) || a->n_rows > (size_t)INT_MAX / (size_t)a->heads) {
        status = ks_fail(KS_ERR_INVALID, "sizes out of range");
        goto cleanup;
    }
    size_t local_bytes = (2 * wg + 2 * (size_t)a->head_dim) * sizeof(float);
    if (o->local_mem > 0 && local_bytes > o->local_mem) {
        status = ks_fail(KS_ERR_UNSUPPORTED, "needs %zu bytes of local memory, the device has %llu",
                         local_bytes, (unsigned long long)o->local_mem);
        goto cleanup;
    }
    ARG(k, 0, a->q);
    ARG(k, 1, (cl_int)a->q_off);
    ARG(k, 2, (cl_int)a->q_stride);
    ARG(k, 3, a->k);
    ARG(k, 4, (cl_int)a->k_off);
    ARG(k, 5, a->v);
    ARG(k, 6, (cl_int)a->v_off);
    ARG(k, 7, (cl_int)a->kv_stride);
    ARG(k, 8, a->rows);
    ARG(k, 9, a->out);
    ARG(k, 10, (cl_int)a->out_stride);
    ARG(k, 11, (cl_int)a->heads);
    ARG(k, 12, (cl_int)a->head_dim);
    ARG(k, 13, (cl_float)a->scale);
    KC_CHECK(clSetKernelArg(k, 14, (size_t)a->head_dim * sizeof(float), NULL));
    KC_CHECK(clSetKernelArg(k, 15, (size_t)a->head_dim * sizeof(float), NULL));
    size_t global = a->n_rows * (size_t)a->heads * wg;
    status = run(o, k, "attention", 1, &global, &wg, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel attention (%zu rows, %d heads, head_dim %d, work-group %zu)",
                        a->n_rows, a->heads, a->head_dim, wg);
    return status;
}

ks_status ke_cl_select_greedy(ke_cl_ops *o, cl_mem logits, int vocab, cl_mem info, cl_mem hist,
                              int n_sel, int max_len, int eos, cl_mem out)
{
    ks_status status = KS_OK;
    const char *which = "ngram_ban";
    cl_kernel k = o->k[K_NGRAM_BAN];
    if (n_sel <= 0)
        return KS_OK;
    ARG(k, 0, logits);
    ARG(k, 1, (cl_int)vocab);
    ARG(k, 2, info);
    ARG(k, 3, hist);
    ARG(k, 4, (cl_int)n_sel);
    ARG(k, 5, (cl_int)eos);
    size_t g2[2] = {round_up(max_len > 0 ? (size_t)max_len : 1, 16), (size_t)n_sel};
    if ((status = run(o, k, "ngram_ban", 2, g2, NULL, NULL)) != KS_OK)
        goto cleanup;
    which = "argmax_rows";
    k = o->k[K_ARGMAX];
    ARG(k, 0, logits);
    ARG(k, 1, (cl_int)vocab);
    ARG(k, 2, info);
    ARG(k, 3, out);
    size_t local = o->wg[P_SELECT], global = (size_t)n_sel * local;
    status = run(o, k, "argmax_rows", 1, &global, &local, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel %s (%d sequences, vocab %d, longest %d ids)", which, n_sel, vocab,
                        max_len);
    return status;
}

ks_status ke_cl_select_sample(ke_cl_ops *o, const ke_cl_select_sample_args *a)
{
    ks_status status = KS_OK;
    const char *which = "topk_rows";
    if (a->n_sel > 0 &&
        (status = ke_cl_select_greedy(o, a->logits, a->vocab, a->info, a->hist, a->n_sel,
                                      a->max_len, a->eos, a->out)) != KS_OK)
        return status;
    if (a->n_cand <= 0)
        return KS_OK;
    cl_kernel k = o->k[K_TOPK];
    ARG(k, 0, a->logits);
    ARG(k, 1, (cl_int)a->vocab);
    ARG(k, 2, a->cinfo);
    ARG(k, 3, a->cval);
    ARG(k, 4, a->cid);
    ARG(k, 5, a->cstat);
    size_t local = o->wg[P_SELECT], global = (size_t)a->n_cand * local;
    status = run(o, k, "topk_rows", 1, &global, &local, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel %s (%d lists, vocab %d)", which, a->n_cand, a->vocab);
    return status;
}

/* ---- the text decoder --------------------------------------------------------------------- */

#define BARG(b, i, value)                                                                          \
    do {                                                                                           \
        __typeof__(value) barg_ = (value);                                                         \
        if ((status = kc_bound_arg((b), (i), sizeof barg_, &barg_)) != KS_OK)                      \
            goto cleanup;                                                                          \
    } while (0)

ks_status ke_cl_ops_site(ke_cl_ops *o, const char *kernel_name, kc_bound **out)
{
    kc_program *prog = NULL;
    char opts[160];
    size_t wg = o->wg[P_DECODER];
    snprintf(opts, sizeof opts,
             "-DEMB_NT=%zu -DAT_NT=%zu -DSEL_NT=%zu -DWEIGHT_HALF=%d -DSTAT_SB=%d", wg, wg, wg,
             o->weight_dtype == KE_DTYPE_F16 ? 1 : 0, KE_CL_STAT_SB);
    ks_status st = kc_program_get(o->ctx, "decoder.cl", opts, &prog);
    if (st == KS_OK)
        st = kc_bound_new(prog, kernel_name, out);
    return st;
}

ks_status ke_cl_decoder_embed(ke_cl_ops *o, const ke_cl_decoder_embed_args *a)
{
    ks_status status = KS_OK;
    kc_bound *b = o->bound[B_EMBED];
    if (a->n_tokens == 0)
        return KS_OK;
    if (!FITS_INT(a->n_tokens) || a->dim < 1 || !FITS_INT(a->ldv) || !FITS_INT(a->panel)) {
        status = ks_fail(KS_ERR_INVALID, "bad sizes");
        goto cleanup;
    }
    cl_int stats_nb = (a->dim + KE_CL_STAT_SB - 1) / KE_CL_STAT_SB;
    BARG(b, 0, a->plan);
    BARG(b, 1, a->table);
    BARG(b, 2, (cl_int)a->ldv);
    BARG(b, 3, (cl_int)a->panel);
    BARG(b, 4, a->image_rows);
    BARG(b, 5, a->freq);
    BARG(b, 6, (cl_float)a->scale);
    BARG(b, 7, (cl_int)a->pad);
    BARG(b, 8, (cl_int)a->dim);
    BARG(b, 9, a->slot_next);
    BARG(b, 10, a->pages);
    BARG(b, 11, (cl_int)a->max_pages);
    BARG(b, 12, (cl_int)a->page_tokens);
    BARG(b, 13, a->hist);
    BARG(b, 14, (cl_int)a->hist_cap);
    BARG(b, 15, a->x);
    BARG(b, 16, a->x_stats);
    BARG(b, 17, stats_nb);
    BARG(b, 18, a->tokrow);
    if ((status = kc_bound_arg(b, 19, (size_t)a->dim * sizeof(float), NULL)) != KS_OK)
        goto cleanup;
    size_t local = o->wg[P_DECODER], global = a->n_tokens * local;
    kc_cost cost = {.bytes = (double)a->n_tokens * (double)a->dim * 12.0};
    status = run(o, kc_bound_kernel(b), "decoder_embed", 1, &global, &local, &cost);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel decoder_embed (%zu tokens, dim %d)", a->n_tokens, a->dim);
    return status;
}

ks_status ke_cl_paged_attention(ke_cl_ops *o, kc_bound *site, const ke_cl_paged_attention_args *a)
{
    ks_status status = KS_OK;
    const bool serial = o->serial_attention;
    kc_bound *b = site ? site : o->bound[serial ? B_PAGED_ATTENTION_SERIAL : B_PAGED_ATTENTION];
    /* serial: groups of a few heads, enough of them for every core even at batch 1 */
    size_t wg = o->wg[P_DECODER];
    if (serial)
        for (wg = 8; a->heads % (int)wg != 0; wg--)
            ;
    if (a->n_tokens == 0)
        return KS_OK;
    if (a->heads < 1 || a->head_dim < 1 || a->n_tokens > (size_t)INT_MAX / (size_t)a->heads) {
        status = ks_fail(KS_ERR_INVALID, "sizes out of range");
        goto cleanup;
    }
    const kc_device_info *dev = kc_context_device(o->ctx);
    if (serial && dev->max_work_group_size > 0 && wg > dev->max_work_group_size) {
        status = ks_fail(KS_ERR_UNSUPPORTED, "%d heads in one work-group, the device allows %zu",
                         a->heads, (size_t)dev->max_work_group_size);
        goto cleanup;
    }
    size_t per_group = serial ? wg * (size_t)a->head_dim : (size_t)a->head_dim;
    size_t local_bytes = ((serial ? 0 : 3 * wg) + 2 * per_group) * sizeof(float);
    if (o->local_mem > 0 && local_bytes > o->local_mem) {
        status = ks_fail(KS_ERR_UNSUPPORTED, "needs %zu bytes of local memory, the device has %llu",
                         local_bytes, (unsigned long long)o->local_mem);
        goto cleanup;
    }
    BARG(b, 0, a->q);
    BARG(b, 1, a->kpool);
    BARG(b, 2, a->vpool);
    BARG(b, 3, (cl_int)a->kv_half);
    BARG(b, 4, a->tokrow);
    BARG(b, 5, a->pages);
    BARG(b, 6, (cl_int)a->max_pages);
    BARG(b, 7, (cl_int)a->page_tokens);
    BARG(b, 8, a->out);
    BARG(b, 9, a->out_stats);
    BARG(b, 10, (cl_int)a->heads);
    BARG(b, 11, (cl_int)a->head_dim);
    BARG(b, 12, (cl_float)a->scale);
    if ((status = kc_bound_arg(b, 13, per_group * sizeof(float), NULL)) != KS_OK ||
        (status = kc_bound_arg(b, 14, per_group * sizeof(float), NULL)) != KS_OK)
        goto cleanup;
    size_t global = a->n_tokens * (serial ? (size_t)a->heads : (size_t)a->heads * wg);
    status = run(o, kc_bound_kernel(b), "paged_attention", 1, &global, &wg, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel paged_attention (%zu tokens, %d heads, head_dim %d)", a->n_tokens,
                        a->heads, a->head_dim);
    return status;
}

ks_status ke_cl_select_greedy_slots(ke_cl_ops *o, cl_mem logits, int vocab, cl_mem info, int n,
                                    cl_mem hist, int hist_cap, int eos, cl_mem out,
                                    cl_mem slot_next)
{
    ks_status status = KS_OK;
    kc_bound *b = o->bound[B_SELECT_SLOTS];
    if (n <= 0)
        return KS_OK;
    BARG(b, 0, logits);
    BARG(b, 1, (cl_int)vocab);
    BARG(b, 2, info);
    BARG(b, 3, hist);
    BARG(b, 4, (cl_int)hist_cap);
    BARG(b, 5, (cl_int)eos);
    BARG(b, 6, out);
    BARG(b, 7, slot_next);
    size_t local = o->wg[P_DECODER], global = (size_t)n * local;
    kc_cost cost = {.bytes = (double)n * (double)vocab * 4.0};
    status = run(o, kc_bound_kernel(b), "select_greedy_slots", 1, &global, &local, &cost);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel select_greedy_slots (%d sequences, vocab %d)", n, vocab);
    return status;
}

void ke_cl_sample_stat_decode(const cl_ulong stat[4], int vocab, float tail_temperature,
                              ke_select_out *out)
{
    const double unit = 0x1p-46;
    cl_ulong n = stat[0] & 0xffffffffu, flags = stat[0] >> 32;
    out->n = (int)n;
    out->valid = (flags & 1) == 0 && n <= (cl_ulong)vocab;
    uint32_t key = (uint32_t)stat[1];
    if (key == 0) {
        out->rest_max = -INFINITY;
    } else {
        uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
        memcpy(&out->rest_max, &u, sizeof u);
    }
    double left = (double)vocab - (double)n;
    if ((flags & 2) || !(tail_temperature > 0.0f)) {
        out->tail_lo = 0.0;
        out->tail_hi = INFINITY;
        return;
    }
    /* sum of e' in [d, d + left) units, |e_host - e'| summed below r units; the conversions
     * to double and a subnormal exp's absolute error within the margins */
    cl_ulong d = stat[2], r = stat[3];
    out->tail_lo = d > r ? (double)(d - r) * unit * (1.0 - 0x1p-40) - left * 0x1p-100 : 0.0;
    if (out->tail_lo < 0.0)
        out->tail_lo = 0.0;
    out->tail_hi = ((double)d + (double)r + left) * unit * (1.0 + 0x1p-40) + left * 0x1p-100;
}

/* ---- flash attention ---------------------------------------------------------------------- */

/* Tiles on CPUs: PoCL runs a group's work-items as loops split at each barrier, and its local
 * memory is ordinary cached memory, so smaller groups and longer tiles (fewer barriers) do
 * better there; GPUs want enough rows per group to share each tile. */
enum { FLASH_BQ_GPU = 64, FLASH_BK_GPU = 64, FLASH_BQ_CPU = 16, FLASH_BK_CPU = 64 };

static bool on_cpu(const ke_cl_ops *o)
{
    return (kc_context_device(o->ctx)->type & CL_DEVICE_TYPE_CPU) != 0;
}

static int flash_bq(const ke_cl_ops *o)
{
    size_t bq = o->flash_bq > 0 ? (size_t)o->flash_bq : on_cpu(o) ? FLASH_BQ_CPU : FLASH_BQ_GPU;
    size_t max = kc_context_device(o->ctx)->max_work_group_size;
    if (o->flash_bq <= 0 && max > 0 && bq > max)
        bq = floor_pow2(max);
    return (int)bq;
}

int ke_cl_flash_block_q(const ke_cl_ops *o) { return flash_bq(o); }

void ke_cl_flash_force_tiles(ke_cl_ops *o, int block_q, int block_k)
{
    o->flash_bq = block_q;
    o->flash_bk = block_k;
}

/* Local memory of a tile of block_k keys (K and V, f32) and its rows. */
static uint64_t flash_local_bytes(int block_k, int head_dim)
{
    return (uint64_t)block_k * ((uint64_t)head_dim * 8u + 4u);
}

/* The build for head_dim in the order of the paged attention kernel in use (the header of
 * kernels/flash_attention.cl), made on first use. */
static ks_status flash_get(ke_cl_ops *o, int head_dim, const flash_build **out)
{
    flash_build b = {.head_dim = head_dim, .chunk = 1, .order = 0, .block_q = flash_bq(o)};
    if (!o->serial_attention) {
        int at = (int)o->wg[P_DECODER];
        b.chunk = head_dim % 4 == 0 ? at / 4 : at;
        b.order = 1;
    }
    if (b.chunk < 1)
        b.chunk = 1;
    /* tiles of whole chunks, halved until they fit in local memory */
    int bk = o->flash_bk > 0 ? o->flash_bk : on_cpu(o) ? FLASH_BK_CPU : FLASH_BK_GPU;
    b.block_k = (bk + b.chunk - 1) / b.chunk * b.chunk;
    while (o->local_mem > 0 && flash_local_bytes(b.block_k, head_dim) > o->local_mem &&
           b.block_k / 2 >= b.chunk && (b.block_k / 2) % b.chunk == 0)
        b.block_k /= 2;
    if (o->local_mem > 0 && flash_local_bytes(b.block_k, head_dim) > o->local_mem)
        return ks_fail(KS_ERR_UNSUPPORTED,
                       "flash_attention.cl (head_dim %d): a tile of %d keys "
                       "needs %llu bytes of local memory, the device has %llu",
                       head_dim, b.block_k,
                       (unsigned long long)flash_local_bytes(b.block_k, head_dim),
                       (unsigned long long)o->local_mem);
    for (int i = 0; i < o->n_flash; i++) {
        const flash_build *f = &o->flash[i];
        if (f->head_dim == b.head_dim && f->chunk == b.chunk && f->order == b.order &&
            f->block_q == b.block_q && f->block_k == b.block_k) {
            *out = f;
            return KS_OK;
        }
    }
    char opts[160];
    snprintf(opts, sizeof opts,
             "-DHEAD_DIM=%d -DBLOCK_Q=%d -DBLOCK_K=%d -DKEY_CHUNK=%d -DDOT_ORDER=%d", head_dim,
             b.block_q, b.block_k, b.chunk, b.order);
    const kc_device_info *dev = kc_context_device(o->ctx);
    kc_program *prog = NULL;
    size_t fit = (size_t)b.block_q;
    ks_status st = kc_program_get(o->ctx, "flash_attention.cl", opts, &prog);
    if (st != KS_OK || (st = kc_program_kernel(prog, "flash_attention", &b.k)) != KS_OK ||
        (st = kc_program_kernel(prog, "flash_attention_paged", &b.paged)) != KS_OK ||
        (st = kernel_limit(dev, b.k, "flash_attention", &fit)) != KS_OK ||
        (st = kernel_limit(dev, b.paged, "flash_attention_paged", &fit)) != KS_OK)
        return st;
    if (fit < (size_t)b.block_q)
        return ks_fail(KS_ERR_UNSUPPORTED,
                       "flash_attention.cl (head_dim %d): blocks of %d rows, "
                       "the device runs work-groups of %zu of its work-items",
                       head_dim, b.block_q, fit);
    flash_build *grown = realloc(o->flash, (size_t)(o->n_flash + 1) * sizeof *grown);
    if (!grown)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    o->flash = grown;
    o->flash[o->n_flash] = b;
    *out = &o->flash[o->n_flash++];
    return KS_OK;
}

/* attention_wide.cl's keys per tile (KEY_TILE): where its softmax rescales, so part of its
 * order; 128 keeps the transposed tile (32 KiB at head_dim 64) in a core's L1. */
enum { WIDE_KEY_TILE = 128, WIDE_ROWS = 4 };

static uint64_t wide_local_bytes(int block_q, int head_dim)
{
    return 4u * ((uint64_t)head_dim * WIDE_KEY_TILE + (uint64_t)WIDE_ROWS * WIDE_KEY_TILE +
                 (uint64_t)block_q * ((uint64_t)head_dim + 2u));
}

/* Whether ke_cl_flash_attention runs attention_wide.cl for heads of head_dim (its header). */
static bool wide_wanted(const ke_cl_ops *o, int head_dim)
{
    if (o->wide_mode == 0 || (o->wide_mode < 0 && !on_cpu(o)))
        return false;
    return head_dim % 16 == 0 && head_dim <= 64 &&
           (o->local_mem == 0 || wide_local_bytes(flash_bq(o), head_dim) <= o->local_mem);
}

bool ke_cl_flash_uses_wide(const ke_cl_ops *o, int head_dim) { return wide_wanted(o, head_dim); }

void ke_cl_flash_force_wide(ke_cl_ops *o, int mode) { o->wide_mode = mode < 0 ? -1 : mode > 0; }

/* The build of attention_wide.cl for head_dim and the current blocks, made on first use. */
/* The kernel `name` of `file` built with `opts` for (head_dim, block_q), from the builds in
 * *list (n of them) or made and added there: attention_wide.cl and flash_attention_mma.cl keep
 * one per head size (and block). */
static ks_status kernel_build_get(ke_cl_ops *o, wide_build **list, int *n, int head_dim,
                                  int block_q, const char *file, const char *name, const char *opts,
                                  cl_kernel *out)
{
    for (int i = 0; i < *n; i++)
        if ((*list)[i].head_dim == head_dim && (*list)[i].block_q == block_q) {
            *out = (*list)[i].k;
            return KS_OK;
        }
    kc_program *prog = NULL;
    wide_build b = {.head_dim = head_dim, .block_q = block_q};
    ks_status st = kc_program_get(o->ctx, file, opts, &prog);
    if (st != KS_OK || (st = kc_program_kernel(prog, name, &b.k)) != KS_OK)
        return st;
    wide_build *grown = realloc(*list, (size_t)(*n + 1) * sizeof *grown);
    if (!grown)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    *list = grown;
    (*list)[(*n)++] = b;
    *out = b.k;
    return KS_OK;
}

static ks_status wide_get(ke_cl_ops *o, int head_dim, cl_kernel *out)
{
    int bq = flash_bq(o);
    char opts[96];
    snprintf(opts, sizeof opts, "-DHEAD_DIM=%d -DBLOCK_Q=%d -DKEY_TILE=%d", head_dim, bq,
             WIDE_KEY_TILE);
    return kernel_build_get(o, &o->wide, &o->n_wide, head_dim, bq, "attention_wide.cl",
                            "attention_wide", opts, out);
}

/* flash_attention_mma.cl's local memory: Q, K, V and P tiles of f16, the scores, four rows of
 * state, and the emulation's exchange (kernels/mma.cl: 192 words per warp, 4 warps). */
enum { FMMA_BQ = 64, FMMA_BK = 32 };

static uint64_t fmma_local_bytes(int head_dim, bool emulated)
{
    uint64_t tiles = 2u * ((uint64_t)(FMMA_BQ + 2 * FMMA_BK) * (uint64_t)(head_dim + 8) +
                           (uint64_t)FMMA_BQ * (FMMA_BK + 8));
    return tiles + 4u * (uint64_t)FMMA_BQ * (FMMA_BK + 1 + 4) + (emulated ? 4u * 192u * 4u : 0);
}

void ke_cl_flash_use_mma(ke_cl_ops *o, const ke_mma_variant *v)
{
    o->mma_on = v != NULL;
    if (v)
        o->mma = *v;
    o->n_fmma = 0; /* kernels built for another variant: their programs stay in the context */
}

bool ke_cl_flash_uses_mma(const ke_cl_ops *o, int head_dim)
{
    return o->mma_on && head_dim % 16 == 0 && head_dim >= 16 && head_dim <= 64 &&
           flash_bq(o) <= FMMA_BQ &&
           (o->local_mem == 0 || fmma_local_bytes(head_dim, !o->mma.ptx) <= o->local_mem);
}

static ks_status fmma_get(ke_cl_ops *o, int head_dim, cl_kernel *out)
{
    char opts[224], mma[160];
    snprintf(opts, sizeof opts, "-DHD=%d %s", head_dim,
             ke_mma_variant_options(&o->mma, mma, sizeof mma));
    return kernel_build_get(o, &o->fmma, &o->n_fmma, head_dim, 0, "flash_attention_mma.cl",
                            "flash_attention_mma", opts, out);
}

ks_status ke_cl_flash_prepare(ke_cl_ops *o, int head_dim)
{
    const flash_build *b = NULL;
    if (head_dim < 1)
        return ks_fail(KS_ERR_INVALID, "flash attention: head_dim %d", head_dim);
    return flash_get(o, head_dim, &b);
}

size_t ke_cl_flash_blocks(const cl_int *rows, size_t n_rows, int block_q, cl_int *blocks)
{
    size_t bq = block_q > 0 ? (size_t)block_q : 1, nb = 0;
    for (size_t r0 = 0, r1; r0 < n_rows; r0 = r1) {
        const cl_int base = rows[4 * r0 + 1];
        for (r1 = r0 + 1; r1 < n_rows && rows[4 * r1 + 1] == base; r1++)
            ;
        /* equal shares: 257 rows in blocks of 64 are 52, 52, 51, 51, 51, not 64 x 4 + 1 */
        size_t n = r1 - r0, parts = (n + bq - 1) / bq;
        for (size_t p = 0; p < parts; p++, nb++) {
            size_t a = r0 + n * p / parts, b = r0 + n * (p + 1) / parts;
            cl_int most = 0;
            for (size_t r = a; r < b; r++)
                if (rows[4 * r + 2] > most)
                    most = rows[4 * r + 2];
            blocks[4 * nb] = (cl_int)a;
            blocks[4 * nb + 1] = (cl_int)(b - a);
            blocks[4 * nb + 2] = base;
            blocks[4 * nb + 3] = most;
        }
    }
    return nb;
}

ks_status ke_cl_flash_attention(ke_cl_ops *o, const ke_cl_attention_args *a, cl_mem blocks,
                                size_t n_blocks)
{
    ks_status status = KS_OK;
    const flash_build *b = NULL;
    size_t local = 0;
    if (n_blocks == 0)
        return KS_OK;
    if (a->heads < 1 || a->head_dim < 1 || !FITS_INT(a->q_off) || !FITS_INT(a->q_stride) ||
        !FITS_INT(a->k_off) || !FITS_INT(a->v_off) || !FITS_INT(a->kv_stride) ||
        !FITS_INT(a->out_stride) || n_blocks > (size_t)INT_MAX / (size_t)a->heads) {
        status = ks_fail(KS_ERR_INVALID, "sizes out of range");
        goto cleanup;
    }
    bool on_mma = ke_cl_flash_uses_mma(o, a->head_dim);
    bool wide = !on_mma && wide_wanted(o, a->head_dim);
    cl_kernel k = NULL;
    if (on_mma)
        status = fmma_get(o, a->head_dim, &k);
    else if (wide)
        status = wide_get(o, a->head_dim, &k);
    else if ((status = flash_get(o, a->head_dim, &b)) == KS_OK)
        k = b->k;
    if (status != KS_OK)
        goto cleanup;
    ARG(k, 0, a->q);
    ARG(k, 1, (cl_int)a->q_off);
    ARG(k, 2, (cl_int)a->q_stride);
    ARG(k, 3, a->k);
    ARG(k, 4, (cl_int)a->k_off);
    ARG(k, 5, a->v);
    ARG(k, 6, (cl_int)a->v_off);
    ARG(k, 7, (cl_int)a->kv_stride);
    ARG(k, 8, a->rows);
    ARG(k, 9, blocks);
    ARG(k, 10, a->out);
    ARG(k, 11, (cl_int)a->out_stride);
    ARG(k, 12, (cl_int)a->heads);
    ARG(k, 13, (cl_float)a->scale);
    if (on_mma) {
        size_t global2[2] = {n_blocks * (size_t)a->heads * 32, 4}, local2[2] = {32, 4};
        status = run(o, k, "flash_attention_mma", 2, global2, local2, NULL);
        goto cleanup;
    }
    local = wide ? 1 : (size_t)b->block_q;
    size_t global = n_blocks * (size_t)a->heads * local;
    status = run(o, k, wide ? "attention_wide" : "flash_attention", 1, &global, &local, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel flash_attention (%zu rows in %zu blocks, %d heads, head_dim %d, "
                        "work-group %zu)",
                        a->n_rows, n_blocks, a->heads, a->head_dim, local);
    return status;
}

ks_status ke_cl_flash_attention_paged(ke_cl_ops *o, const ke_cl_paged_attention_args *a,
                                      cl_mem blocks, size_t n_blocks)
{
    ks_status status = KS_OK;
    const flash_build *b = NULL;
    size_t local = 0;
    if (n_blocks == 0)
        return KS_OK;
    if (a->heads < 1 || a->head_dim < 1 || a->n_tokens > (size_t)INT_MAX / (size_t)a->heads ||
        n_blocks > a->n_tokens) {
        status = ks_fail(KS_ERR_INVALID, "sizes out of range");
        goto cleanup;
    }
    if ((status = flash_get(o, a->head_dim, &b)) != KS_OK)
        goto cleanup;
    cl_kernel k = b->paged;
    ARG(k, 0, a->q);
    ARG(k, 1, a->kpool);
    ARG(k, 2, a->vpool);
    ARG(k, 3, (cl_int)a->kv_half);
    ARG(k, 4, a->tokrow);
    ARG(k, 5, a->pages);
    ARG(k, 6, (cl_int)a->max_pages);
    ARG(k, 7, (cl_int)a->page_tokens);
    ARG(k, 8, blocks);
    ARG(k, 9, a->out);
    ARG(k, 10, a->out_stats);
    ARG(k, 11, (cl_int)a->heads);
    ARG(k, 12, (cl_float)a->scale);
    local = (size_t)b->block_q;
    size_t global = n_blocks * (size_t)a->heads * local;
    status = run(o, k, "flash_attention_paged", 1, &global, &local, NULL);
cleanup:
    if (status != KS_OK)
        ks_error_prefix("kernel flash_attention_paged (%zu tokens in %zu blocks, %d heads, "
                        "head_dim %d, work-group %zu)",
                        a->n_tokens, n_blocks, a->heads, a->head_dim, local);
    return status;
}
