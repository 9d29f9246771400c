/* quant: int8 weight-only quantization of the linear layers (--precision int8).
 *
 * Each output channel (row) o of a weight W (out, in) gets its own scale, symmetric:
 *
 *   scale[o] = max_i |W[o, i]| / 127        q[o, i] = round(W[o, i] / scale[o]) in [-127, 127]
 *
 * (round half to even; an all-zero row has scale 0 and codes 0). A product sums the codes
 * against f32 activations and multiplies once at the end: y[o] = (sum_i x[i] · q[o, i]) ·
 * scale[o] + bias[o]. |q · scale - W| <= scale / 2 per element, so a row's error is relative to
 * its largest weight: about 0.4 % of it at most. The values quantized are the weights as the
 * device copy would hold them in the model's storage dtype (ke_tensor_read_f32: f16 roundings
 * for an f16 model), so the reference backend and the OpenCL upload quantize the same numbers.
 *
 * Which weights: the matrices of every nn.Linear of the vision layers, the resampler and the
 * text layers (all but 0.2 % of the parameters outside the embedding), where the memory and the
 * decode time go. The patch embedding, the token embedding, the tied lm_head, biases and
 * LayerNorms keep the storage dtype: the embedding table is also the lm_head, whose logits
 * decide every id, and the decoder's lookup reads it as half. Both backends quantize this same
 * list (backend_ref.c, backend_cl.c). */
#ifndef KE_QUANT_H
#define KE_QUANT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"
#include "model.h"

/* The scale of row `row` of w (rows shape[0], the trailing dimensions flattened), its values
 * read as ke_tensor_read_f32 gives them; buf: scratch for one row's floats. KS_ERR_INVALID for a
 * row holding a value that is not finite (no scale represents it). */
ks_status ke_q8_row_scale(const ke_tensor *w, size_t row, float *buf, float *scale);

/* The code of value v in a row of scale `scale` (0 for a zero scale). */
static inline int8_t ke_q8_code(float v, float scale)
{
    if (scale == 0.0f)
        return 0;
    float r = nearbyintf(v / scale);
    return (int8_t)(r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r);
}

/* A KE_DTYPE_I8 copy of w (out, in...), shape kept: *out's data and scale are one allocation
 * the caller frees with ke_q8_tensor_free. KS_ERR_NOMEM, or KS_ERR_INVALID as
 * ke_q8_row_scale. */
ks_status ke_q8_tensor_new(const ke_tensor *w, ke_tensor *out);

/* Frees what ke_q8_tensor_new allocated and zeroes *t; accepts a zeroed tensor. */
void ke_q8_tensor_free(ke_tensor *t);

#endif
