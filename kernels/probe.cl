/* probe.cl: two tiny kernels that measure what a device can do, for the profile's share of the
 * roofline (`kosmos bench --profile`): nothing of the model.
 *
 *   probe_copy(src, dst, n)   dst[i] = src[i] for i < n float4s: memory bandwidth (each float4
 *                             read once, written once). global (>= n), any local.
 *   probe_fma(out, iters)     per work-item 8 independent float4 fma chains of `iters` steps
 *                             (64 flops per step), written out so the compiler keeps them:
 *                             arithmetic throughput. global (many), any local.
 */
__kernel void probe_copy(__global const float4 *src, __global float4 *dst, const int n)
{
    const int i = (int)get_global_id(0);
    if (i < n)
        dst[i] = src[i];
}

__kernel void probe_fma(__global float *out, const int iters)
{
    const float s = (float)get_global_id(0) * 1e-9f;
    float4 a0 = (float4)(s), a1 = a0 + 1.0f, a2 = a0 + 2.0f, a3 = a0 + 3.0f;
    float4 a4 = a0 + 4.0f, a5 = a0 + 5.0f, a6 = a0 + 6.0f, a7 = a0 + 7.0f;
    const float4 m = (float4)(0.999f), c = (float4)(1e-3f);
    for (int i = 0; i < iters; i++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    const float4 t = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    out[get_global_id(0)] = t.x + t.y + t.z + t.w;
}
