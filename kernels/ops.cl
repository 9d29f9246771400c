/* ops.cl: the small operations of the vision pass around the GEMMs and attention: activations,
 * the L2 normalisation of the image features, the patch unfolding and the vision input
 * embeddings. Each mirrors one reference op of worker/engine/ref_ops.h (named below) and is
 * tested against it in tests/unit/test_cl_ops.c. Not here: LayerNorm (layer_norm.cl), matrix
 * products (gemm.cl), attention (attention.cl), the text decoder's ops (decoder.cl).
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
 * Tunables (-D):
 *   WG_SIZE      work-items of l2_normalize, a power of two <= the kernel's work-group limit (64)
 *   WEIGHT_HALF  1: weight tensors are half; 0: f32 (0)
 */
#include "common.cl"

#ifndef WG_SIZE
#define WG_SIZE 64
#endif

#if WG_SIZE < 1 || (WG_SIZE & (WG_SIZE - 1)) != 0
#error "WG_SIZE must be a power of two"
#endif

__kernel void activation(__global float *x, const int n, const int act)
{
    const size_t i = get_global_id(0);
    if (i < (size_t)n)
        x[i] = activate(x[i], act);
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

