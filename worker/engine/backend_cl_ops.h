/* ke_cl_ops: the OpenCL kernels of the forward pass (kernels/ops.cl, attention.cl, select.cl,
 * layer_norm.cl, decoder.cl, flash_attention.cl), one enqueue function per op mirroring
 * ref_ops.h, so each can be tested against its reference op (tests/unit/test_cl_ops.c,
 * test_cl_flash.c) and backend_cl.c reads like backend_ref.c. Matrix products are not here:
 * they go through cl_gemm.h.
 *
 * Every function enqueues on the context's in-order queue and returns without waiting.
 * Buffers are borrowed; activations are f32, weight buffers hold the dtype given to
 * ke_cl_ops_new. A failure (KS_ERR_DEVICE, KS_ERR_INVALID) names the kernel and the sizes.
 * Not thread-safe (one thread drives a context). */
#ifndef KE_BACKEND_CL_OPS_H
#define KE_BACKEND_CL_OPS_H

#include <stddef.h>

#include "backend.h"
#include "cl_gemm_mma.h"
#include "kc_context.h"
#include "kc_program.h"
#include "ks_error.h"
#include "model.h"

typedef struct ke_cl_ops ke_cl_ops;

/* Builds (or loads from the binary cache) the programs for weights of `weight_dtype`, with
 * work-group sizes fitted to the device and each kernel's own limit, into *out (caller owns).
 * `ctx` is borrowed and must outlive the ops. KS_ERR_DEVICE (a failed build names the file and
 * log), KS_ERR_NOMEM; *out is then NULL. */
ks_status ke_cl_ops_new(kc_context *ctx, ke_dtype weight_dtype, ke_cl_ops **out);
void ke_cl_ops_destroy(ke_cl_ops **ops);

/* The paged attention kernel these ops run (ke_cl_ops_site's name for ke_cl_paged_attention):
 * "paged_attention_serial" on CPUs, "paged_attention" elsewhere (kernels/decoder.cl). */
const char *ke_cl_ops_paged_attention_kernel(const ke_cl_ops *o);

/* For tests: run the other kernel (sites made before keep theirs: make them after). */
void ke_cl_ops_force_serial_attention(ke_cl_ops *o, bool serial);

/* y (rows, dim) = LayerNorm(x) · w + b; y may be x.   (ke_op_layer_norm) */
ks_status ke_cl_layer_norm(ke_cl_ops *o, cl_mem x, size_t rows, size_t dim, cl_mem w, cl_mem b,
                           float eps, cl_mem y);

/* In place over n values; act is a ke_activation.   (ke_op_activation) */
ks_status ke_cl_activation(ke_cl_ops *o, cl_mem x, size_t n, ke_activation act);

/* In place: rows of x (rows, dim) divided by max(L2 norm, eps).   (ke_op_l2_normalize) */
ks_status ke_cl_l2_normalize(ke_cl_ops *o, cl_mem x, size_t rows, size_t dim, float eps);

/* pixels (n, channels, size, size) -> out (n·grid², channels·patch²).   (ke_op_unfold_patches) */
ks_status ke_cl_unfold_patches(ke_cl_ops *o, cl_mem pixels, int n, int channels, int size,
                               int patch, cl_mem out);

/* x (n·seq, hid): per image, row 0 = cls + pos[0], row t = patch_out[t-1] + pos[t].
 * patch_out (n·(seq-1), hid) f32; cls (hid), pos (seq, hid) weights. */
ks_status ke_cl_vision_embed(ke_cl_ops *o, cl_mem patch_out, cl_mem cls, cl_mem pos, int n, int seq,
                             int hid, cl_mem x);

/* Attention (ke_op_attention, see kernels/attention.cl): rows (n_rows) cl_int4 (q row, first
 * key row, key count, 0) says what each output row sees. Offsets and strides in floats. */
typedef struct ke_cl_attention_args {
    cl_mem q;
    size_t q_off, q_stride;
    cl_mem k, v;
    size_t k_off, v_off, kv_stride;
    cl_mem rows;
    size_t n_rows;
    int heads, head_dim;
    float scale;
    cl_mem out;
    size_t out_stride;
} ke_cl_attention_args;

ks_status ke_cl_attention(ke_cl_ops *o, const ke_cl_attention_args *a);

/* Greedy selection over rows of logits (rows, vocab), see kernels/select.cl: info (n_sel, 5)
 * cl_int (row, history offset, history length, ngram size, ban_eos), hist the histories,
 * max_len the longest history; out (n_sel) cl_int. Bans are written into logits. */
ks_status ke_cl_select_greedy(ke_cl_ops *o, cl_mem logits, int vocab, cl_mem info, cl_mem hist,
                              int n_sel, int max_len, int eos, cl_mem out);

/* Sampling's selection (backend.h select_sample, kernels/select.cl topk_rows): the bans and
 * argmax of ke_cl_select_greedy over all n_sel rows (out gets every row's argmax), then for
 * n_cand rows a candidate list: cinfo (n_cand, 4) cl_int (logits row, want, list offset,
 * tail temperature as f32 bits or 0), lists into cval (f32) / cid (int), per list cstat (n_cand,
 * 4) cl_ulong, which ke_cl_sample_stat_decode turns into a ke_select_out. */
typedef struct ke_cl_select_sample_args {
    cl_mem logits;
    int vocab;
    cl_mem info, hist;
    int n_sel, max_len, eos;
    cl_mem out;
    cl_mem cinfo;
    int n_cand;
    cl_mem cval, cid, cstat;
} ke_cl_select_sample_args;

ks_status ke_cl_select_sample(ke_cl_ops *o, const ke_cl_select_sample_args *a);

/* One list's cstat (asked with tail_temperature) into out's n, rest_max, tail_lo/hi and valid
 * (values/ids untouched). */
void ke_cl_sample_stat_decode(const cl_ulong stat[4], int vocab, float tail_temperature,
                              ke_select_out *out);

/* ---- the text decoder over the paged KV cache (kernels/decoder.cl) ----------------------- */

/* The step's input rows (ke_op_text_embed from the step plan), their LayerNorm statistics
 * (blocks of KE_CL_STAT_SB), each token's cache row (tokrow) and the slots' id histories. */
typedef struct ke_cl_decoder_embed_args {
    cl_mem plan; /* (n_tokens) cl_int8, kernels/decoder.cl */
    size_t n_tokens;
    cl_mem table; /* the transposed embedding Wt (dim, ldv), in ke_cl_weight's layout */
    size_t ldv, panel;
    cl_mem image_rows; /* (rows, dim) f32; any valid buffer when no token uses it */
    cl_mem freq;       /* (dim / 2) ke_op_sinusoid_freqs */
    float scale;
    int pad, dim;
    cl_mem slot_next, pages;
    int max_pages, page_tokens;
    cl_mem hist;
    int hist_cap;
    cl_mem x, x_stats, tokrow; /* outputs */
} ke_cl_decoder_embed_args;

ks_status ke_cl_decoder_embed(ke_cl_ops *o, const ke_cl_decoder_embed_args *a);

/* Attention of n_tokens new tokens over their slots' cached keys (ke_op_attention with the
 * decoder's causal rows), and per head the statistics of the output for inner_attn_ln. `site`
 * (may be NULL) is a kernel object of the caller's (ke_cl_ops_site: one per layer keeps the
 * arguments set across steps). */
typedef struct ke_cl_paged_attention_args {
    cl_mem q;            /* (n_tokens, heads * head_dim) */
    cl_mem kpool, vpool; /* the layer's cache rows, f32 or half */
    bool kv_half;
    cl_mem tokrow, pages;
    int max_pages, page_tokens;
    cl_mem out, out_stats; /* (n_tokens, heads * head_dim) f32, (n_tokens, heads) cl_float2 */
    size_t n_tokens;
    int heads, head_dim;
    float scale;
} ke_cl_paged_attention_args;

ks_status ke_cl_paged_attention(ke_cl_ops *o, kc_bound *site, const ke_cl_paged_attention_args *a);

/* ---- flash attention (kernels/flash_attention.cl) ----------------------------------------- */

/* Attention of many query rows that share their keys (the vision encoder, the resampler, the
 * text prefill) a block of rows per work-group, K and V staged in local memory once per block.
 * A row gets the bits that the paged attention kernel these ops run
 * (ke_cl_ops_paged_attention_kernel) gives it: the two may share a sequence's tokens. */

/* Builds, or finds, the program for heads of head_dim (one per head size and order). The
 * launches build on demand as well; calling this at start-up moves the build and its failure
 * there. KS_ERR_UNSUPPORTED when the device cannot run it (local memory, work-group size): the
 * caller keeps attention.cl / paged_attention. */
ks_status ke_cl_flash_prepare(ke_cl_ops *o, int head_dim);

/* Query rows per block (the kernel's BLOCK_Q): what ke_cl_flash_blocks is given. */
int ke_cl_flash_block_q(const ke_cl_ops *o);

/* Cuts rows (n_rows x 4 cl_int: query row or token, key base or slot, key count, unused) into
 * blocks (room for n_rows x 4 cl_int: first row, rows, key base, largest key count): each run
 * of consecutive rows with one key base into ceil(n / block_q) blocks of nearly equal size.
 * Returns the number of blocks. */
size_t ke_cl_flash_blocks(const cl_int *rows, size_t n_rows, int block_q, cl_int *blocks);

/* ke_cl_attention through flash_attention: blocks (n_blocks cl_int4) from ke_cl_flash_blocks
 * on the rows of a->rows. On CPUs, for heads of 16 to 64 columns (a multiple of 16), through
 * kernels/attention_wide.cl instead: register-blocked vector code that rescales its softmax once
 * per 128 keys, in an order of its own (a row's bits still do not depend on its block; nothing
 * this serves shares bits with a decode kernel: the vision encoder, the resampler). */
ks_status ke_cl_flash_attention(ke_cl_ops *o, const ke_cl_attention_args *a, cl_mem blocks,
                                size_t n_blocks);

/* ke_cl_paged_attention through flash_attention_paged: blocks from ke_cl_flash_blocks on the
 * step's tokens as rows (token, slot, keys it sees). The same outputs, the same bits. */
ks_status ke_cl_flash_attention_paged(ke_cl_ops *o, const ke_cl_paged_attention_args *a,
                                      cl_mem blocks, size_t n_blocks);

/* ke_cl_flash_attention through kernels/flash_attention_mma.cl (both tile products on the
 * matrix units, f16 operands: not flash_attention.cl's bits) built as v, for heads of 16 to 64
 * columns; NULL: off (the default). The backend turns it on with the GEMM's matrix-unit path. */
void ke_cl_flash_use_mma(ke_cl_ops *o, const ke_mma_variant *v);
bool ke_cl_flash_uses_mma(const ke_cl_ops *o, int head_dim);

/* Whether ke_cl_flash_attention runs attention_wide.cl for heads of head_dim. */
bool ke_cl_flash_uses_wide(const ke_cl_ops *o, int head_dim);

/* For tests: ke_cl_flash_attention's attention_wide.cl on CPUs where it fits (mode < 0, the
 * default), never (0), or on every device where it fits (> 0). */
void ke_cl_flash_force_wide(ke_cl_ops *o, int mode);

/* For tests: blocks of block_q rows and tiles of block_k keys (0: the device's choice), which
 * change no result bit. Blocks cut before must be cut again. */
void ke_cl_flash_force_tiles(ke_cl_ops *o, int block_q, int block_k);

/* Greedy selection of n rows from the device histories: info (n) cl_int8 (logits row, slot,
 * length, ngram size, ban_eos, 0, 0, 0); bans written into logits; ids into out (n) and into
 * slot_next[slot]. */
ks_status ke_cl_select_greedy_slots(ke_cl_ops *o, cl_mem logits, int vocab, cl_mem info, int n,
                                    cl_mem hist, int hist_cap, int eos, cl_mem out,
                                    cl_mem slot_next);

/* A kernel object of the decoder program for a call site of the caller's ("paged_attention"),
 * owned by the context. */
ks_status ke_cl_ops_site(ke_cl_ops *o, const char *kernel_name, kc_bound **out);

/* The work-group size chosen for each family (for notes and tests). */
size_t ke_cl_ops_wg_size(const ke_cl_ops *o);

#endif
