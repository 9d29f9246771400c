/* ref_ops: the reference math of the forward pass (see ref_ops.h). Plain loops, no threads, no
 * allocation; the only concession to speed is the blocked, 8-lane dot product of ke_op_linear
 * (the real model has 1.6e9 weights, and this must stay runnable). */
#include "ref_ops.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <threads.h>

/* Output rows of W converted to f32 at once; each x row is then read once per block. */
#define LINEAR_BLOCK 4

float ke_op_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, NaN (payload kept) */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13); /* normal: rebias 15 -> 127 */
    } else if (man == 0) {
        bits = sign; /* signed zero */
    } else {
        /* subnormal: man · 2^-24, exact in binary32 */
        float f = (float)man * 0x1p-24f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

float ke_op_tensor_get(const ke_tensor *t, size_t i)
{
    if (t->dtype == KE_DTYPE_F16)
        return ke_op_f16_to_f32(((const uint16_t *)t->data)[i]);
    float v = ((const float *)t->data)[i];
    return t->round_f16 ? ke_op_f16_to_f32(ke_f32_to_f16(v)) : v;
}

/* Every f16 value as f32, built once: weight rows convert by table lookup (the conversion
 * would otherwise dominate decoding, which streams all weights per token). */
static float f16_table[65536];
static once_flag f16_table_once = ONCE_FLAG_INIT;

static void f16_table_build(void)
{
    for (uint32_t h = 0; h < 65536; h++)
        f16_table[h] = ke_op_f16_to_f32((uint16_t)h);
}

static void read_row(const ke_tensor *t, size_t offset, size_t n, float *out)
{
    if (t->dtype == KE_DTYPE_F32 && !t->round_f16) {
        memcpy(out, (const float *)t->data + offset, n * sizeof(float));
        return;
    }
    if (t->dtype == KE_DTYPE_F32) {
        ke_tensor_read_f32(t, offset, n, out);
        return;
    }
    if (t->dtype == KE_DTYPE_I8) { /* the codes: ke_op_linear applies the scales at the end */
        const int8_t *q = (const int8_t *)t->data + offset;
        for (size_t i = 0; i < n; i++)
            out[i] = (float)q[i];
        return;
    }
    call_once(&f16_table_once, f16_table_build);
    const uint16_t *h = (const uint16_t *)t->data + offset;
    for (size_t i = 0; i < n; i++)
        out[i] = f16_table[h[i]];
}

/* f32 dot product: 8 interleaved partial sums (vectorisable, and a fixed order), then a fixed
 * pairwise combination and the tail. */
static float dot(const float *a, const float *b, size_t n)
{
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += a[i + (size_t)l] * b[i + (size_t)l];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

size_t ke_op_linear_scratch(size_t in) { return LINEAR_BLOCK * in; }

void ke_op_linear(const float *x, size_t rows, const ke_tensor *w, const ke_tensor *bias, float *y,
                  float *scratch)
{
    assert(w->ndim >= 2 && w->data != NULL);
    size_t out = (size_t)w->shape[0];
    size_t in = 1;
    for (int d = 1; d < w->ndim; d++)
        in *= (size_t)w->shape[d];
    bool has_bias = bias != NULL && bias->data != NULL;
    assert(!has_bias || (bias->ndim == 1 && (size_t)bias->shape[0] == out));

    for (size_t o0 = 0; o0 < out; o0 += LINEAR_BLOCK) {
        size_t nb = out - o0 < LINEAR_BLOCK ? out - o0 : LINEAR_BLOCK;
        read_row(w, o0 * in, nb * in, scratch);
        float b[LINEAR_BLOCK] = {0};
        for (size_t j = 0; j < nb; j++)
            b[j] = has_bias ? ke_op_tensor_get(bias, o0 + j) : 0.0f;
        for (size_t r = 0; r < rows; r++) {
            const float *xr = x + r * in;
            float *yr = y + r * out + o0;
            for (size_t j = 0; j < nb; j++) {
                float s = dot(xr, scratch + j * in, in);
                if (w->dtype == KE_DTYPE_I8)
                    s = s * w->scale[o0 + j];
                yr[j] = s + b[j];
            }
        }
    }
}

void ke_op_layer_norm(const float *x, size_t rows, size_t dim, const ke_tensor *weight,
                      const ke_tensor *bias, float eps, float *y)
{
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        double sum = 0.0;
        for (size_t i = 0; i < dim; i++)
            sum += xr[i];
        double mean = sum / (double)dim;
        double var = 0.0;
        for (size_t i = 0; i < dim; i++) {
            double d = (double)xr[i] - mean;
            var += d * d;
        }
        var /= (double)dim;
        float rstd = (float)(1.0 / sqrt(var + (double)eps));
        float m = (float)mean;
        for (size_t i = 0; i < dim; i++) {
            float w = weight && weight->data ? ke_op_tensor_get(weight, i) : 1.0f;
            float b = bias && bias->data ? ke_op_tensor_get(bias, i) : 0.0f;
            yr[i] = (xr[i] - m) * rstd * w + b;
        }
    }
}

void ke_op_activation(float *x, size_t n, ke_activation act)
{
    switch (act) {
    case KE_ACT_GELU: /* ACT2FN["gelu"]: 0.5·x·(1 + erf(x/√2)) */
        for (size_t i = 0; i < n; i++)
            x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
        break;
    case KE_ACT_QUICK_GELU: /* x · sigmoid(1.702·x) */
        for (size_t i = 0; i < n; i++)
            x[i] = x[i] * (1.0f / (1.0f + expf(-(1.702f * x[i]))));
        break;
    case KE_ACT_GELU_TANH: { /* 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) */
        const float k = 0.7978845608028654f;
        for (size_t i = 0; i < n; i++) {
            float v = x[i];
            x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
        }
        break;
    }
    case KE_ACT_RELU:
        for (size_t i = 0; i < n; i++)
            x[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    }
}

void ke_op_l2_normalize(float *x, size_t rows, size_t dim, float eps)
{
    for (size_t r = 0; r < rows; r++) {
        float *xr = x + r * dim;
        double ss = 0.0;
        for (size_t i = 0; i < dim; i++)
            ss += (double)xr[i] * (double)xr[i];
        float norm = (float)sqrt(ss);
        if (norm < eps)
            norm = eps;
        for (size_t i = 0; i < dim; i++)
            xr[i] = xr[i] / norm;
    }
}

void ke_op_attention(const float *q, size_t q_stride, const float *k, const float *v,
                     size_t kv_stride, int n_q, int n_kv, int heads, int head_dim, float scale,
                     int causal_offset, float *out, size_t out_stride, float *scratch)
{
    size_t hd = (size_t)head_dim;
    for (int i = 0; i < n_q; i++) {
        int n_keys = n_kv;
        if (causal_offset >= 0 && causal_offset + i + 1 < n_keys)
            n_keys = causal_offset + i + 1;
        assert(n_keys > 0);
        for (int h = 0; h < heads; h++) {
            const float *qh = q + (size_t)i * q_stride + (size_t)h * hd;
            float max = -INFINITY;
            for (int j = 0; j < n_keys; j++) {
                float s = dot(qh, k + (size_t)j * kv_stride + (size_t)h * hd, hd) * scale;
                scratch[j] = s;
                if (s > max)
                    max = s;
            }
            double sum = 0.0;
            for (int j = 0; j < n_keys; j++) {
                scratch[j] = expf(scratch[j] - max);
                sum += scratch[j];
            }
            float inv = (float)(1.0 / sum);
            float *oh = out + (size_t)i * out_stride + (size_t)h * hd;
            for (size_t d = 0; d < hd; d++)
                oh[d] = 0.0f;
            for (int j = 0; j < n_keys; j++) {
                float p = scratch[j] * inv;
                const float *vj = v + (size_t)j * kv_stride + (size_t)h * hd;
                for (size_t d = 0; d < hd; d++)
                    oh[d] += p * vj[d];
            }
        }
    }
}

void ke_op_sinusoid_freqs(int dim, float *freq)
{
    int half = dim / 2;
    assert(half >= 2);
    /* HF: emb = math.log(10000) / (half_dim - 1) in double; arange(half).float() * -emb runs in
     * float32 with the scalar rounded to float; exp in float32. */
    float c = (float)(-(log(10000.0) / (double)(half - 1)));
    for (int i = 0; i < half; i++)
        freq[i] = expf((float)i * c);
}

void ke_op_sinusoid_position(int64_t pos, int dim, int padding_idx, const float *freq, float *out)
{
    int half = dim / 2;
    if (pos == padding_idx) {
        memset(out, 0, (size_t)dim * sizeof(float));
        return;
    }
    float p = (float)pos;
    for (int i = 0; i < half; i++) {
        float a = p * freq[i];
        out[i] = sinf(a);
        out[half + i] = cosf(a);
    }
    if (dim % 2)
        out[dim - 1] = 0.0f;
}

size_t ke_op_text_embed(const ke_tensor *table, const int32_t *ids, size_t n,
                        const uint8_t *image_mask, const float *image_rows, float scale,
                        const int32_t *positions, int padding_idx, const float *freq, float *out)
{
    size_t dim = (size_t)table->shape[1];
    size_t used = 0;
    for (size_t t = 0; t < n; t++) {
        float *row = out + t * dim;
        if (image_mask != NULL && image_mask[t]) {
            memcpy(row, image_rows + used * dim, dim * sizeof(float));
            used++;
        } else {
            assert(ids[t] >= 0 && ids[t] < table->shape[0]);
            read_row(table, (size_t)ids[t] * dim, dim, row);
        }
        /* HF: (embeds * embed_scale) + positions, each a separate f32 op; the position row
         * (zero for padding_idx, and in an odd dim's last column) is added in place. */
        for (size_t i = 0; i < dim; i++)
            row[i] *= scale;
        int half = (int)dim / 2;
        if (positions[t] != padding_idx) {
            float p = (float)positions[t];
            for (int i = 0; i < half; i++) {
                float a = p * freq[i];
                row[i] += sinf(a);
                row[half + i] += cosf(a);
            }
        }
    }
    return used;
}

void ke_op_unfold_patches(const float *pixels, int channels, int size, int patch, float *out)
{
    int grid = size / patch;
    size_t width = (size_t)channels * (size_t)patch * (size_t)patch;
    for (int gy = 0; gy < grid; gy++) {
        for (int gx = 0; gx < grid; gx++) {
            float *row = out + ((size_t)gy * (size_t)grid + (size_t)gx) * width;
            for (int c = 0; c < channels; c++)
                for (int ky = 0; ky < patch; ky++)
                    for (int kx = 0; kx < patch; kx++) {
                        size_t src = ((size_t)c * (size_t)size + (size_t)(gy * patch + ky)) *
                                         (size_t)size +
                                     (size_t)(gx * patch + kx);
                        *row++ = pixels[src];
                    }
        }
    }
}
