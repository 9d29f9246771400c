/* common.cl: helpers shared by several kernel files, pulled in with `#include "common.cl"`
 * (kc_kernels.c expands it; it may not include in turn). Nothing here is a kernel.
 *
 *   WEIGHT_T, LOAD_W(p, i)   a weight element as f32: IEEE half through vload_half
 *                            (WEIGHT_HALF 1) or f32 (WEIGHT_HALF 0)
 *   activate(v, act)         the activations of ke_activation: 0 gelu (erf), 1 quick_gelu
 *                            x*sigmoid(1.702x), 2 gelu_tanh, 3 relu; -1 none
 *   block_stats(v, n)        (mean, M2) of n values in local memory, summed in index order:
 *                            M2 = sum (v - mean)^2 (two passes, as LayerNorm computes them)
 *   merge_stats(p, nb, ...)  the mean and 1/sqrt(var + eps) of a row from its nb blocks of
 *                            (mean, M2), merged in block order (Chan et al.'s pairwise update)
 *   STAT_SB                  the block width of the row statistics kernels write (32)
 *   weight_index(i, c, ...)  where element (i, c) of a transposed weight Wt (k, ldw) lives:
 *                            row-major (panel 0), or in panels of `panel` columns, each a
 *                            contiguous (k, panel) block (CPUs: a work-item's columns are one
 *                            sequential stream)
 *   text_embed_value(...)    one value of a text input embedding: the token's (or image row's)
 *                            value times the scale, plus the sinusoidal position
 *                            (ke_op_text_embed)
 *
 * Row statistics travel as blocks so that the kernel that produces a row (which holds a few
 * columns of it per work-group) can hand LayerNorm's mean and variance to the kernel that
 * consumes it, without a LayerNorm launch in between: block j of a row of `dim` values covers
 * columns [j*sb, min(dim, (j+1)*sb)). The merge order is fixed, so every consumer computes the
 * same bits for a row whatever else is in the batch.
 *
 * FP_CONTRACT is off: a*b + c rounds twice, as the C reference computes it; kernels that want a
 * fused multiply-add call fma() explicitly.
 */
#pragma OPENCL FP_CONTRACT OFF

#ifndef WEIGHT_HALF
#define WEIGHT_HALF 0
#endif

#if WEIGHT_HALF
#define WEIGHT_T half
#define LOAD_W(p, i) vload_half((size_t)(i), (p))
#define LOAD_W4(p, i) vload_half4(0, (p) + (i))
#else
#define WEIGHT_T float
#define LOAD_W(p, i) ((p)[(i)])
#define LOAD_W4(p, i) vload4(0, (p) + (i))
#endif

#ifndef STAT_SB
#define STAT_SB 32
#endif

inline size_t weight_index(const int i, const int c, const int k, const int ldw, const int panel)
{
    if (panel > 0)
        return (size_t)(c / panel) * (size_t)k * (size_t)panel + (size_t)i * (size_t)panel +
               (size_t)(c % panel);
    return (size_t)i * (size_t)ldw + (size_t)c;
}

/* activate() and its vector forms activateN (DEFINE_ACTIVATE(N)), written once in plain
 * arithmetic, exp() included (kexp): each lane goes through exactly the operations of the
 * scalar, so a GEMM may run its epilogue on vectors and still give the bits of one output
 * stored alone (test_cl_gemm compares the kernels bit for bit). A builtin would not do: PoCL's
 * vector erf() and exp() differ from its scalars in the last bit for some inputs.
 *
 *   kexp(x)    e^x for x clamped to [-87, 88]: x = n ln2 + r (Cody-Waite, ln2 in two parts),
 *              e^r by Cephes' expf polynomial, 2^n built in the exponent bits; about 1 ulp
 *   gelu       0.5 x erfc(-x/sqrt2), erfc(z) for z >= 0 as t exp(-z^2 + P(t)), t = 1/(1 + z/2)
 *              (Numerical Recipes' erfcc, relative error < 1.2e-7), erfc(-z) = 2 - erfc(z);
 *              no cancellation in 1 + erf(x) for negative x
 *   quick_gelu x / (1 + e^(-1.702x)) as x * (1 / (1 + e^(-1.702 x)))
 *   gelu_tanh  0.5 x (1 + tanh(y)) = x / (1 + e^(-2y)), y = sqrt(2/pi) (x + 0.044715 x^3)
 *   relu       max(x, 0), 0 for -0 and NaN as x > 0 ? x : 0 */
#define DEFINE_KEXP_(N)                                                                            \
    inline float##N kexp##N(float##N x)                                                            \
    {                                                                                              \
        x = clamp(x, -87.0f, 88.0f);                                                               \
        const float##N n = rint(x * 1.44269504088896341f);                                        \
        float##N r = x - n * 0.693359375f;                                                         \
        r = r - n * -2.12194440e-4f;                                                               \
        float##N p = (float##N)(1.9875691500e-4f);                                                             \
        p = p * r + 1.3981999507e-3f;                                                              \
        p = p * r + 8.3334519073e-3f;                                                              \
        p = p * r + 4.1665795894e-2f;                                                              \
        p = p * r + 1.6666665459e-1f;                                                              \
        p = p * r + 5.0000001201e-1f;                                                              \
        p = p * (r * r) + r + 1.0f;                                                                \
        return p * as_float##N((convert_int##N(n) + 127) << 23);                                  \
    }
#define DEFINE_ACTIVATE_(N)                                                                        \
    DEFINE_KEXP_(N)                                                                                \
    inline float##N activate##N(const float##N v, const int act)                                   \
    {                                                                                              \
        if (act == 0) {                                                                            \
            const float##N z = v * 0.70710678118654752f, a = fabs(z);                              \
            const float##N t = 1.0f / (a * 0.5f + 1.0f);                                           \
            float##N p = (float##N)(0.17087277f);                                                              \
            p = p * t - 0.82215223f;                                                               \
            p = p * t + 1.48851587f;                                                               \
            p = p * t - 1.13520398f;                                                               \
            p = p * t + 0.27886807f;                                                               \
            p = p * t - 0.18628806f;                                                               \
            p = p * t + 0.09678418f;                                                               \
            p = p * t + 0.37409196f;                                                               \
            p = p * t + 1.00002368f;                                                               \
            p = p * t - 1.26551223f;                                                               \
            const float##N e = t * kexp##N(p - a * a); /* erfc(|z|) */                             \
            return 0.5f * v * select(e, 2.0f - e, z > 0.0f);                                       \
        }                                                                                          \
        if (act == 1)                                                                              \
            return v * (1.0f / (1.0f + kexp##N(-(1.702f * v))));                                   \
        if (act == 2) {                                                                            \
            const float##N y = 0.7978845608028654f * (v + 0.044715f * v * v * v);                 \
            return v * (1.0f / (1.0f + kexp##N(-2.0f * y)));                                       \
        }                                                                                          \
        if (act == 3)                                                                              \
            return select((float##N)(0.0f), v, v > 0.0f);                                         \
        return v;                                                                                  \
    }
#define DEFINE_ACTIVATE(N) DEFINE_ACTIVATE_(N)

DEFINE_ACTIVATE_()

inline float2 block_stats(__local const float *v, const int n)
{
    float sum = 0.0f;
    for (int i = 0; i < n; i++)
        sum += v[i];
    const float mean = sum / (float)n;
    float m2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const float d = v[i] - mean;
        m2 += d * d;
    }
    return (float2)(mean, m2);
}

/* mean and rstd of a row of `dim` values from its blocks p[0 .. nb) of sb columns. */
inline float2 merge_stats(__global const float2 *p, const int nb, const int sb, const int dim,
                          const float eps)
{
    float cnt = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (int j = 0; j < nb; j++) {
        const float c = (float)min(sb, dim - j * sb);
        const float2 s = p[j];
        if (j == 0) {
            cnt = c;
            mean = s.x;
            m2 = s.y;
            continue;
        }
        const float tot = cnt + c;
        const float delta = s.x - mean;
        mean = mean + delta * (c / tot);
        m2 = m2 + s.y + delta * delta * (cnt * c / tot);
        cnt = tot;
    }
    const float var = m2 / (float)dim;
    return (float2)(mean, 1.0f / sqrt(var + eps));
}

/* Column i of a text input embedding: `v` (the token's table value or the image row's value)
 * times `scale`, plus sin(pos * freq[i]) in the first half and cos in the second (0 for an odd
 * dim's last column), nothing for a pad position. sin/cos are the accurate built-ins. */
inline float text_embed_value(float v, const float scale, const int pos, const int pad, const int i,
                              const int dim, __global const float *freq)
{
    v = v * scale;
    const int half_dim = dim / 2;
    if (pos != pad) {
        const float p = (float)pos;
        if (i < half_dim)
            v = v + sin(p * freq[i]);
        else if (i < 2 * half_dim)
            v = v + cos(p * freq[i - half_dim]);
    }
    return v;
}
