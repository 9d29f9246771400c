/* ref_ops: the plain-C reference operations of the Kosmos-2 forward pass, one function per op,
 * each written to reproduce what transformers 5.17.0 computes in float32. They are the oracle
 * every OpenCL kernel is tested against, and what backend_ref.c composes into the model.
 *
 * Not fast and not parallel: straightforward loops with f32 accumulation (reductions that
 * normalise - LayerNorm statistics, softmax and L2 sums - accumulate in double). Activations are
 * f32 row-major (rows, width); weights are ke_tensor views in f16 or f32 (ke_op_linear's also
 * int8, quant.h). The ops never allocate
 * and never fail: shapes are the caller's responsibility (asserted). */
#ifndef KE_REF_OPS_H
#define KE_REF_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

/* Exact IEEE 754 binary16 -> binary32 (subnormals, infinities and NaN payloads included). */
float ke_op_f16_to_f32(uint16_t h);

/* Element i of a f16 or f32 tensor as f32 (not for KE_DTYPE_I8: ke_tensor_read_f32). */
float ke_op_tensor_get(const ke_tensor *t, size_t i);

/* Number of floats of scratch ke_op_linear needs for a weight with `in` columns. */
size_t ke_op_linear_scratch(size_t in);

/* y (rows, out) = x (rows, in) · Wᵀ + b, as nn.Linear. W is (out, in...) - trailing dimensions
 * are flattened, so a conv weight (out, C, k, k) is (out, C·k·k). bias may be NULL or absent
 * (data NULL). Each output is one f32 dot product (8 interleaved partial sums in a fixed
 * order), then (an int8 W, quant.h: the dot product of the codes) · the row's scale, then
 * + bias; a row's result never depends on the other rows, so batching sequences together
 * changes no value. scratch: at least ke_op_linear_scratch(in) floats. x and y must not
 * overlap. */
void ke_op_linear(const float *x, size_t rows, const ke_tensor *w, const ke_tensor *bias, float *y,
                  float *scratch);

/* LayerNorm over the last dimension, in place allowed (y == x): biased variance, eps inside
 * the square root, y = (x - mean) · rstd · w + b. */
void ke_op_layer_norm(const float *x, size_t rows, size_t dim, const ke_tensor *weight,
                      const ke_tensor *bias, float eps, float *y);

/* In-place activation over n values (ke_activation from the config). */
void ke_op_activation(float *x, size_t n, ke_activation act);

/* In place: each row x / max(‖x‖₂, eps), as torch.nn.functional.normalize (eps 1e-12). */
void ke_op_l2_normalize(float *x, size_t rows, size_t dim, float eps);

/* Multi-head scaled dot-product attention of one sequence.
 * q: n_q rows of stride q_stride; k, v: n_kv rows of stride kv_stride; head h owns the columns
 * [h·head_dim, (h+1)·head_dim) of each. Scores are (q·k) · scale (the scale multiplies the
 * scores, as HF's eager attention does), softmax over the allowed keys, then A·v.
 * causal_offset < 0: every query sees all n_kv keys (encoder). causal_offset >= 0: query i sees
 * keys j <= causal_offset + i (decoder; causal_offset = tokens already cached before these
 * queries). Keys at or beyond n_kv do not exist (they are a slot's unused capacity).
 * Masked keys are skipped, which equals HF's finite-minimum additive mask exactly (their
 * exp() is 0) and never yields NaN. out: n_q rows of stride out_stride, heads merged.
 * scratch: n_kv floats. */
void ke_op_attention(const float *q, size_t q_stride, const float *k, const float *v,
                     size_t kv_stride, int n_q, int n_kv, int heads, int head_dim, float scale,
                     int causal_offset, float *out, size_t out_stride, float *scratch);

/* The half = dim / 2 frequencies of the table, in f32 as HF computes them:
 * freq[i] = exp((float)i · -(float)(ln(10000) / (half - 1))). dim >= 4. */
void ke_op_sinusoid_freqs(int dim, float *freq);

/* Row `pos` of HF's sinusoidal position table (Kosmos2TextSinusoidalPositionalEmbedding,
 * built in float32): sin(pos·freq) in [0, half), cos(pos·freq) in [half, 2·half), 0 in the last
 * column when dim is odd, all zero when pos == padding_idx. Any pos >= 0 (HF grows the table on
 * demand, and a row does not depend on the table size). freq from ke_op_sinusoid_freqs. */
void ke_op_sinusoid_position(int64_t pos, int dim, int padding_idx, const float *freq, float *out);

/* Text input embeddings for n tokens: row t = E[ids[t]], or the next unused row of image_rows
 * when image_mask != NULL and image_mask[t] (rows consumed in token order; returns how many
 * were used), times `scale`, plus the sinusoid row of positions[t]. E: (vocab, dim).
 * (E's pad row is zero: the loader zeroes it as transformers 5.17 does.) ids must be in
 * [0, vocab). out: (n, dim). */
size_t ke_op_text_embed(const ke_tensor *table, const int32_t *ids, size_t n,
                        const uint8_t *image_mask, const float *image_rows, float scale,
                        const int32_t *positions, int padding_idx, const float *freq, float *out);

/* Unfolds an image (channels, size, size) into patches (grid², channels·patch·patch), patch
 * p = row·grid + col, each flattened in (channel, ky, kx) order: the conv-as-matmul input. */
void ke_op_unfold_patches(const float *pixels, int channels, int size, int patch, float *out);

#endif
