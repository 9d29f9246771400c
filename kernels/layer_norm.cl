/* layer_norm.cl: LayerNorm over the last dimension, one work-group per row.
 *
 *   y[r, i] = (x[r, i] - mean_r) * rstd_r * weight[i] + bias[i]
 *   mean_r  = sum_i x[r, i] / dim
 *   var_r   = sum_i (x[r, i] - mean_r)^2 / dim        (population variance, two passes)
 *   rstd_r  = 1 / sqrt(var_r + eps)                   (eps inside the square root, as torch)
 *
 * Shapes and memory layout (row-major, contiguous, element offsets):
 *
 *            <------------- dim ------------->
 *   x, y   | x[0*dim + 0] ... x[0*dim + dim-1] |  row 0    <- work-group 0
 *   f32    | x[1*dim + 0] ... x[1*dim + dim-1] |  row 1    <- work-group 1
 *   (rows, |              ...                  |
 *    dim)  | x[(rows-1)*dim + 0] ...           |  row rows-1
 *
 *   weight, bias: (dim), f32, or IEEE half read with vload_half when WEIGHT_HALF is 1.
 *
 *   Within a row, work-item l handles columns l, l + WG_SIZE, l + 2*WG_SIZE, ... so any dim
 *   works (no multiple of anything); sums are reduced in local memory as a tree of WG_SIZE.
 *
 * NDRange: global = rows * WG_SIZE, local = WG_SIZE (one dimension).
 * Arguments: x, weight, bias, y, dim (int), eps (float). y may equal x (in place): each value is
 * read and written by the same work-item, and every read of a pass precedes the barrier.
 * All arithmetic is f32. OpenCL 1.2 core only: vload_half needs no cl_khr_fp16.
 *
 * Tunables (-D):
 *   WG_SIZE      work-items per row, a power of two <= the device's work-group limit (256)
 *   WEIGHT_HALF  1: weight and bias are half; 0: f32 (0)
 */

#ifndef WG_SIZE
#define WG_SIZE 256
#endif
#ifndef WEIGHT_HALF
#define WEIGHT_HALF 0
#endif

#if (WG_SIZE & (WG_SIZE - 1)) != 0 || WG_SIZE < 1
#error "WG_SIZE must be a power of two"
#endif

#if WEIGHT_HALF
#define WEIGHT_T half
#define LOAD_WEIGHT(p, i) vload_half((size_t)(i), (p))
#else
#define WEIGHT_T float
#define LOAD_WEIGHT(p, i) ((p)[(i)])
#endif

/* Sum of `v` over the work-group; every work-item gets the total. Must be reached by all. */
static float group_sum(__local float *scratch, float v)
{
    const int lid = (int)get_local_id(0);
    scratch[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG_SIZE / 2; s > 0; s >>= 1) {
        if (lid < s)
            scratch[lid] += scratch[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float total = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE); /* scratch is reused by the next call */
    return total;
}

__kernel __attribute__((reqd_work_group_size(WG_SIZE, 1, 1)))
void layer_norm(__global const float *x, __global const WEIGHT_T *weight,
                __global const WEIGHT_T *bias, __global float *y, const int dim, const float eps)
{
    __local float scratch[WG_SIZE];
    const int lid = (int)get_local_id(0);
    const size_t row = get_group_id(0);
    __global const float *xr = x + row * (size_t)dim;
    __global float *yr = y + row * (size_t)dim;

    float sum = 0.0f;
    for (int i = lid; i < dim; i += WG_SIZE)
        sum += xr[i];
    const float mean = group_sum(scratch, sum) / (float)dim;

    float sq = 0.0f;
    for (int i = lid; i < dim; i += WG_SIZE) {
        const float d = xr[i] - mean;
        sq += d * d;
    }
    const float var = group_sum(scratch, sq) / (float)dim;
    const float rstd = 1.0f / sqrt(var + eps);

    for (int i = lid; i < dim; i += WG_SIZE)
        yr[i] = (xr[i] - mean) * rstd * LOAD_WEIGHT(weight, i) + LOAD_WEIGHT(bias, i);
}
