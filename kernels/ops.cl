/* ops.cl: the small operations of the Kosmos-2 forward pass around the GEMMs and attention:
 * activations, the L2 normalisation of the image features, the patch unfolding and the vision
 * input embeddings, the text input embeddings (token or image row, scale, sinusoidal positions),
 * the KV-cache store, and a row gather. Each mirrors one reference op of
 * worker/engine/ref_ops.h (named below) and is tested against it in tests/unit/test_cl_ops.c.
 * Not here: LayerNorm (layer_norm.cl), matrix products (gemm.cl), attention (attention.cl).
 *
 * Activations are f32 row-major; weights (WEIGHT_T) are f32 or IEEE half read with vload_half.
 * Counts and strides are int (the host checks they fit); index arithmetic is size_t.
 * FP_CONTRACT is off so that a*b + c rounds twice, as the C reference (and torch) computes it.
 *
 * Kernels, their NDRange and layout:
 *
 *   activation(x, n, act)                     global (>= n), any local; in place
 *       x (n) f32: x = f(x); act 0 gelu (erf), 1 quick_gelu x*sigmoid(1.702x), 2 gelu_tanh,
 *       3 relu  (ke_activation order; ke_op_activation)
 *
 *   l2_normalize(x, dim, eps)                 global rows*WG_SIZE, local WG_SIZE; in place
 *       x (rows, dim) f32: row / max(||row||_2, eps)   (ke_op_l2_normalize)
 *
 *   unfold_patches(pixels, out, channels, size, patch, total)   global (>= total), any local
 *       pixels (n, channels, size, size) f32 -> out (n*grid*grid, channels*patch*patch):
 *       row img*grid^2 + gy*grid + gx holds the patch in (c, ky, kx) order; total = elements
 *       of out                                  (ke_op_unfold_patches, per image)
 *
 *   vision_embed(patch_out, cls, pos, x, seq, hid, total)       global (>= total), any local
 *       patch_out (n*(seq-1), hid) f32, cls (hid) W, pos (seq, hid) W -> x (n*seq, hid) f32:
 *       x[img, 0] = cls + pos[0];  x[img, t] = patch_out[img*(seq-1) + t-1] + pos[t]
 *
 *   text_embed(table, tok, image_rows, freq, out, dim, n, scale, pad)
 *       global (>= dim, n), any local
 *       table (vocab, dim) W; tok (n) int4 = (id, position, image row or -1, unused);
 *       image_rows (rows, dim) f32; freq (dim/2) f32 -> out (n, dim) f32:
 *       out[t] = (image_rows[tok.z] if tok.z >= 0 else table[tok.x]) * scale
 *                + (pos == pad ? 0 : [sin(pos*freq) | cos(pos*freq) | 0 for an odd dim])
 *       sin/cos are the accurate built-ins (not native_*)   (ke_op_text_embed)
 *
 *   kv_store(qkv, ld, k_col, v_col, kc, vc, dest, width, n)     global (>= width, n)
 *       qkv (n, ld) f32, dest (n) int -> kc, vc (cache rows, width) f32:
 *       kc[dest[t]] = qkv[t, k_col .. k_col+width);  vc[dest[t]] = qkv[t, v_col ..)
 *
 *   gather_rows(src, idx, dst, width, n)      global (>= width, n)
 *       dst[r] = src[idx[r]] (rows of width f32)
 *
 * Tunables (-D):
 *   WG_SIZE      work-items of l2_normalize, a power of two <= the kernel's work-group limit (64)
 *   WEIGHT_HALF  1: weight tensors are half; 0: f32 (0)
 */
#pragma OPENCL FP_CONTRACT OFF

#ifndef WG_SIZE
#define WG_SIZE 64
#endif
#ifndef WEIGHT_HALF
#define WEIGHT_HALF 0
#endif

#if WG_SIZE < 1 || (WG_SIZE & (WG_SIZE - 1)) != 0
#error "WG_SIZE must be a power of two"
#endif

#if WEIGHT_HALF
#define WEIGHT_T half
#define LOAD_W(p, i) vload_half((size_t)(i), (p))
#else
#define WEIGHT_T float
#define LOAD_W(p, i) ((p)[(i)])
#endif

__kernel void activation(__global float *x, const int n, const int act)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)n)
        return;
    const float v = x[i];
    float r;
    if (act == 0) {
        r = 0.5f * v * (1.0f + erf(v * 0.70710678118654752f));
    } else if (act == 1) {
        r = v * (1.0f / (1.0f + exp(-(1.702f * v))));
    } else if (act == 2) {
        const float k = 0.7978845608028654f;
        r = 0.5f * v * (1.0f + tanh(k * (v + 0.044715f * v * v * v)));
    } else {
        r = v > 0.0f ? v : 0.0f;
    }
    x[i] = r;
}

__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void l2_normalize(__global float *x, const int dim, const float eps)
{
    __local float scratch[WG_SIZE];
    const int lid = (int)get_local_id(0);
    __global float *xr = x + get_group_id(0) * (size_t)dim;
    float ss = 0.0f;
    for (int i = lid; i < dim; i += WG_SIZE)
        ss += xr[i] * xr[i];
    scratch[lid] = ss;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG_SIZE / 2; s > 0; s >>= 1) {
        if (lid < s)
            scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float norm = sqrt(scratch[0]);
    if (norm < eps)
        norm = eps;
    for (int i = lid; i < dim; i += WG_SIZE)
        xr[i] = xr[i] / norm;
}

__kernel void unfold_patches(__global const float *pixels, __global float *out, const int channels,
                             const int size, const int patch, const int total)
{
    const size_t e = get_global_id(0);
    if (e >= (size_t)total)
        return;
    const size_t grid = (size_t)(size / patch);
    const size_t width = (size_t)channels * (size_t)patch * (size_t)patch;
    const size_t row = e / width, col = e % width;
    const size_t img = row / (grid * grid), p = row % (grid * grid);
    const size_t gy = p / grid, gx = p % grid;
    const size_t c = col / ((size_t)patch * (size_t)patch);
    const size_t kk = col % ((size_t)patch * (size_t)patch);
    const size_t ky = kk / (size_t)patch, kx = kk % (size_t)patch;
    const size_t plane = (size_t)size * (size_t)size;
    out[e] = pixels[(img * (size_t)channels + c) * plane + (gy * (size_t)patch + ky) * (size_t)size +
                    gx * (size_t)patch + kx];
}

__kernel void vision_embed(__global const float *patch_out, __global const WEIGHT_T *cls,
                           __global const WEIGHT_T *pos, __global float *x, const int seq,
                           const int hid, const int total)
{
    const size_t e = get_global_id(0);
    if (e >= (size_t)total)
        return;
    const size_t row = e / (size_t)hid, i = e % (size_t)hid;
    const size_t img = row / (size_t)seq, t = row % (size_t)seq;
    const float v = t == 0 ? LOAD_W(cls, i)
                           : patch_out[(img * (size_t)(seq - 1) + t - 1) * (size_t)hid + i];
    x[e] = v + LOAD_W(pos, t * (size_t)hid + i);
}

__kernel void text_embed(__global const WEIGHT_T *table, __global const int4 *tok,
                         __global const float *image_rows, __global const float *freq,
                         __global float *out, const int dim, const int n, const float scale,
                         const int pad)
{
    const int i = (int)get_global_id(0);
    const int t = (int)get_global_id(1);
    if (i >= dim || t >= n)
        return;
    const int4 info = tok[t];
    float v = info.z >= 0 ? image_rows[(size_t)info.z * (size_t)dim + (size_t)i]
                          : LOAD_W(table, (size_t)info.x * (size_t)dim + (size_t)i);
    v = v * scale;
    const int half_dim = dim / 2;
    if (info.y != pad) {
        const float p = (float)info.y;
        if (i < half_dim) {
            const float a = p * freq[i];
            v = v + sin(a);
        } else if (i < 2 * half_dim) {
            const float a = p * freq[i - half_dim];
            v = v + cos(a);
        }
    }
    out[(size_t)t * (size_t)dim + (size_t)i] = v;
}

__kernel void kv_store(__global const float *qkv, const int ld, const int k_col, const int v_col,
                       __global float *kc, __global float *vc, __global const int *dest,
                       const int width, const int n)
{
    const int i = (int)get_global_id(0);
    const int t = (int)get_global_id(1);
    if (i >= width || t >= n)
        return;
    const size_t src = (size_t)t * (size_t)ld + (size_t)i;
    const size_t dst = (size_t)dest[t] * (size_t)width + (size_t)i;
    kc[dst] = qkv[src + (size_t)k_col];
    vc[dst] = qkv[src + (size_t)v_col];
}

__kernel void gather_rows(__global const float *src, __global const int *idx, __global float *dst,
                          const int width, const int n)
{
    const int i = (int)get_global_id(0);
    const int r = (int)get_global_id(1);
    if (i >= width || r >= n)
        return;
    dst[(size_t)r * (size_t)width + (size_t)i] = src[(size_t)idx[r] * (size_t)width + (size_t)i];
}
