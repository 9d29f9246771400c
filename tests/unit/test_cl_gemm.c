/* Unit tests for worker/engine/cl_gemm (ke_cl_gemm): every kernel of kernels/gemm.cl against the
 * plain-C ke_op_linear on random data and edge shapes: m in {1, 3, 64, 257, 321}, odd and even
 * n and k, f16 and f32 weights, with and without bias, accumulate, offsets and leading
 * dimensions, and the canaries around Y left untouched. Each shape runs through the automatic
 * choice and through every variant forced (ke_cl_gemm_force), so the small-m and the tiled
 * kernels are both checked on odd shapes.
 *
 * Needs an OpenCL device (PoCL's CPU device on CI); without one every test skips.
 * KOSMOS_TEST_DEVICE=<spec> picks the device (default: the default rule). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl_gemm.h"
#include "kc_context.h"
#include "kc_device.h"
#include "ref_ops.h"
#include "test_skip.h"

typedef struct fixture {
    kc_device_list *list;
    kc_context *ctx; /* NULL: no device, tests skip */
    ke_cl_gemm *gemm;
} fixture;

#define REQUIRE_DEVICE(fx)                                                                         \
    do {                                                                                           \
        if (!(fx)->gemm)                                                                           \
            KT_CANNOT_RUN("no OpenCL device");                                                     \
    } while (0)

static int group_setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    if (kc_device_list_new(&fx->list) != KS_OK) {
        fprintf(stderr, "kc_device_list_new: %s\n", ks_error_message());
        return -1;
    }
    const kc_device_info *dev = NULL;
    const char *spec = getenv("KOSMOS_TEST_DEVICE");
    size_t index = 0;
    if (spec && *spec) {
        if (kc_device_list_select(fx->list, spec, &index) != KS_OK) {
            fprintf(stderr, "KOSMOS_TEST_DEVICE: %s\n", ks_error_message());
            return -1;
        }
        dev = kc_device_list_get(fx->list, index);
    } else if (kc_device_list_default(fx->list) >= 0) {
        dev = kc_device_list_get(fx->list, (size_t)kc_device_list_default(fx->list));
    }
    if (!dev)
        return 0;
    print_message("device under test: '%s' (%s)\n", dev->name, dev->platform_name);
    if (kc_context_new(dev, NULL, &fx->ctx) != KS_OK) {
        fprintf(stderr, "kc_context_new: %s\n", ks_error_message());
        return -1;
    }
    fx->gemm = ke_cl_gemm_new(fx->ctx);
    if (!fx->gemm) {
        fprintf(stderr, "ke_cl_gemm_new: %s\n", ks_error_message());
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    fixture *fx = *state;
    if (!fx)
        return 0;
    ke_cl_gemm_destroy(&fx->gemm);
    kc_context_destroy(&fx->ctx);
    kc_device_list_destroy(&fx->list);
    free(fx);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) * 0x1p-52 - 1.0);
}

/* f32 -> f16 bits, round to nearest even; finite values of magnitude < 65504 only. */
static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    float a = fabsf(f);
    if (a == 0.0f)
        return (uint16_t)sign;
    int e;
    frexpf(a, &e);
    int exp16 = e - 1 + 15;
    if (exp16 <= 0)
        return (uint16_t)(sign | (uint32_t)nearbyint((double)a * 0x1p24));
    double q = nearbyint(ldexp((double)a, 10 - (e - 1)));
    if (q >= 2048.0) {
        q /= 2;
        exp16++;
    }
    return (uint16_t)(sign | ((uint32_t)exp16 << 10) | ((uint32_t)q - 1024u));
}

/* One product to check: shape, types and where everything sits in its buffer. */
typedef struct gemm_case {
    size_t m, n, k;
    ke_dtype dt;
    bool bias, accumulate;
    size_t x_off, x_pad; /* ldx = k + x_pad */
    size_t w_off, b_off;
    size_t y_off, y_pad; /* ldy = n + y_pad */
} gemm_case;

#define CANARY 1234.5f

/* Runs `c` with the variant `force` (NULL = automatic choice) and checks every output against
 * ke_op_linear, and that nothing outside Y's (m, n) window changed. */
static void run_case(fixture *fx, const gemm_case *c, const char *force)
{
    const size_t m = c->m, n = c->n, k = c->k, ldx = k + c->x_pad, ldy = n + c->y_pad;
    const size_t wsz = c->dt == KE_DTYPE_F16 ? 2 : 4;
    const size_t x_len = c->x_off + m * ldx + 2, y_len = c->y_off + m * ldy + 5;
    const size_t w_len = c->w_off + n * k + 3, b_len = c->b_off + n + 1;

    float *x = malloc(x_len * sizeof *x);
    float *xc = malloc((m * k + 1) * sizeof *xc); /* X compacted for the reference */
    float *wf = malloc((n * k + 1) * sizeof *wf);
    void *w = malloc(w_len * wsz);
    void *b = malloc(b_len * wsz);
    float *bf = malloc(n * sizeof *bf);
    float *y0 = malloc(y_len * sizeof *y0);
    float *y = malloc(y_len * sizeof *y);
    float *ref = malloc(m * n * sizeof *ref);
    float *scratch = malloc((ke_op_linear_scratch(k) + 1) * sizeof *scratch);
    assert_true(x && xc && wf && w && b && bf && y0 && y && ref && scratch);

    for (size_t i = 0; i < x_len; i++)
        x[i] = frand();
    for (size_t r = 0; r < m; r++)
        memcpy(xc + r * k, x + c->x_off + r * ldx, k * sizeof *xc);
    /* weights around 1/sqrt(k), as a trained model's; the padding around them is garbage */
    const float ws = 1.0f / sqrtf((float)(k ? k : 1));
    for (size_t i = 0; i < w_len; i++) {
        float v = frand() * ws * 2.0f;
        if (c->dt == KE_DTYPE_F16) {
            uint16_t h = f32_to_f16(v);
            ((uint16_t *)w)[i] = h;
            v = ke_op_f16_to_f32(h);
        } else {
            ((float *)w)[i] = v;
        }
        if (i >= c->w_off && i < c->w_off + n * k)
            wf[i - c->w_off] = v;
    }
    for (size_t i = 0; i < b_len; i++) {
        float v = frand();
        if (c->dt == KE_DTYPE_F16) {
            uint16_t h = f32_to_f16(v);
            ((uint16_t *)b)[i] = h;
            v = ke_op_f16_to_f32(h);
        } else {
            ((float *)b)[i] = v;
        }
        if (i >= c->b_off && i < c->b_off + n)
            bf[i - c->b_off] = v;
    }
    for (size_t i = 0; i < y_len; i++)
        y0[i] = CANARY;
    for (size_t r = 0; r < m; r++)
        for (size_t j = 0; j < n; j++)
            y0[c->y_off + r * ldy + j] = frand();

    /* the reference: the f32 weights (exact f16 values) through ke_op_linear */
    ke_tensor tw = {.dtype = KE_DTYPE_F32, .ndim = 2, .shape = {(int64_t)n, (int64_t)k}, .data = wf};
    ke_tensor tb = {.dtype = KE_DTYPE_F32, .ndim = 1, .shape = {(int64_t)n}, .data = bf};
    ke_op_linear(xc, m, &tw, c->bias ? &tb : NULL, ref, scratch);

    cl_mem bx = NULL, bw = NULL, bb = NULL, by = NULL;
    assert_int_equal(kc_context_buffer(fx->ctx, CL_MEM_READ_ONLY, x_len * 4, x, &bx), KS_OK);
    assert_int_equal(kc_context_buffer(fx->ctx, CL_MEM_READ_ONLY, w_len * wsz, w, &bw), KS_OK);
    assert_int_equal(kc_context_buffer(fx->ctx, CL_MEM_READ_ONLY, b_len * wsz, b, &bb), KS_OK);
    assert_int_equal(kc_context_buffer(fx->ctx, CL_MEM_READ_WRITE, y_len * 4, y0, &by), KS_OK);

    ke_cl_gemm_args a = {.m = m, .n = n, .k = k, .x = bx, .x_offset = c->x_off, .ldx = ldx,
                         .w = bw, .w_offset = c->w_off, .w_dtype = c->dt,
                         .bias = c->bias ? bb : NULL, .bias_offset = c->b_off, .y = by,
                         .y_offset = c->y_off, .ldy = ldy, .accumulate = c->accumulate};
    ks_status st = ke_cl_gemm_force(fx->gemm, force);
    if (st != KS_OK)
        fail_msg("force %s: %s", force ? force : "auto", ks_error_message());
    st = ke_cl_gemm_run(fx->gemm, &a);
    if (st != KS_OK)
        fail_msg("ke_cl_gemm_run: %s", ks_error_message());
    const char *variant = ke_cl_gemm_last_variant(fx->gemm);
    assert_int_equal(clEnqueueReadBuffer(kc_context_queue(fx->ctx), by, CL_TRUE, 0, y_len * 4, y,
                                         0, NULL, NULL),
                     CL_SUCCESS);
    assert_int_equal(ke_cl_gemm_force(fx->gemm, NULL), KS_OK);

    size_t bad = 0;
    for (size_t i = 0; i < y_len; i++) {
        size_t rel = i - c->y_off, r = rel / ldy, j = rel % ldy;
        bool inside = i >= c->y_off && r < m && j < n;
        float want;
        double tol;
        if (inside) {
            /* tolerance relative to the magnitude of the terms (the sum order differs) */
            double mag = fabs(bf[j]) * c->bias + fabs(y0[i]) * c->accumulate;
            for (size_t t = 0; t < k; t++)
                mag += fabs((double)xc[r * k + t] * wf[j * k + t]);
            want = ref[r * n + j] + (c->accumulate ? y0[i] : 0.0f);
            tol = 1e-5 * mag + 1e-6;
        } else {
            want = y0[i];
            tol = 0.0;
        }
        if (!(fabs((double)y[i] - want) <= tol)) {
            if (bad++ < 5)
                print_message("  %s (%s): y[%zu] (row %zu col %zu%s) = %.8g, want %.8g\n",
                              variant, force ? force : "auto", i, r, j,
                              inside ? "" : ", outside Y", (double)y[i], (double)want);
        }
    }
    if (bad)
        fail_msg("m %zu n %zu k %zu %s bias %d acc %d offsets x%zu w%zu b%zu y%zu pads %zu/%zu "
                 "variant %s: %zu wrong", m, n, k, c->dt == KE_DTYPE_F16 ? "f16" : "f32",
                 c->bias, c->accumulate, c->x_off, c->w_off, c->b_off, c->y_off, c->x_pad,
                 c->y_pad, variant, bad);

    kc_context_buffer_free(fx->ctx, &bx);
    kc_context_buffer_free(fx->ctx, &bw);
    kc_context_buffer_free(fx->ctx, &bb);
    kc_context_buffer_free(fx->ctx, &by);
    free(x);
    free(xc);
    free(wf);
    free(w);
    free(b);
    free(bf);
    free(y0);
    free(y);
    free(ref);
    free(scratch);
}

/* Runs `c` automatically and with each variant forced. */
static void run_all_variants(fixture *fx, const gemm_case *c)
{
    run_case(fx, c, NULL);
    for (size_t v = 0; v < ke_cl_gemm_variant_count(); v++) {
        const char *name = ke_cl_gemm_variant_name(v);
        /* CLBlast (where built) serves f32 weights without bias only: see test_invalid */
        if (strcmp(name, "clblast") == 0 && (c->dt == KE_DTYPE_F16 || c->bias))
            continue;
        run_case(fx, c, name);
    }
}

/* ---- tests -------------------------------------------------------------------------------- */

/* Edge shapes: tiny, odd, not multiples of any tile or vector width, both dtypes. */
static void test_edge_shapes(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    static const size_t ms[] = {1, 3, 64, 257};
    static const size_t nks[][2] = {{1, 1}, {7, 1}, {1, 7}, {7, 48}, {48, 7}, {33, 100},
                                    {100, 257}, {257, 33}, {64, 64}, {5, 1024}};
    for (int dt = 0; dt < 2; dt++)
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
            for (size_t j = 0; j < sizeof nks / sizeof nks[0]; j++) {
                gemm_case c = {.m = ms[i], .n = nks[j][0], .k = nks[j][1], .dt = (ke_dtype)dt,
                               .bias = (i + j) % 2 == 0};
                run_all_variants(fx, &c);
            }
}

/* Offsets (odd, so nothing is vector-aligned), leading dimensions, bias offsets, accumulate. */
static void test_offsets_strides_accumulate(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    static const size_t ms[] = {1, 3, 64, 321};
    for (int dt = 0; dt < 2; dt++)
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
            gemm_case c = {.m = ms[i], .n = 97, .k = 130, .dt = (ke_dtype)dt, .bias = true,
                           .accumulate = true, .x_off = 3, .x_pad = 5, .w_off = 1, .b_off = 7,
                           .y_off = 11, .y_pad = 3};
            run_all_variants(fx, &c);
            c.accumulate = false;
            c.bias = false;
            c.w_off = 8;
            c.n = 256;
            c.k = 1024;
            run_all_variants(fx, &c);
            c.accumulate = true;
            c.x_off = 0;
            c.x_pad = 1024; /* a column slice of a wider buffer */
            c.w_off = 5;
            run_all_variants(fx, &c);
        }
}

/* The model's shapes, scaled: even sizes and the lm_head's odd n (65037 -> 1037). */
static void test_model_like(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    static const size_t shapes[][3] = {{1, 1037, 2048}, {8, 2048, 512}, {71, 512, 2048},
                                       {257, 256, 1024}, {321, 100, 588}, {3, 1024, 2048}};
    for (int dt = 0; dt < 2; dt++)
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            gemm_case c = {.m = shapes[i][0], .n = shapes[i][1], .k = shapes[i][2],
                           .dt = (ke_dtype)dt, .bias = i % 2 == 1, .accumulate = i % 3 == 2};
            run_case(fx, &c, NULL);
        }
}

/* k = 0: Y = bias (or Y + bias); m = 0 / n = 0: nothing happens. */
static void test_degenerate(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    for (int dt = 0; dt < 2; dt++) {
        gemm_case c = {.m = 3, .n = 9, .k = 0, .dt = (ke_dtype)dt, .bias = true};
        run_all_variants(fx, &c);
        c.accumulate = true;
        run_all_variants(fx, &c);
    }
    cl_mem buf = NULL;
    assert_int_equal(kc_context_buffer(fx->ctx, CL_MEM_READ_WRITE, 64, NULL, &buf), KS_OK);
    ke_cl_gemm_args a = {.m = 0, .n = 4, .k = 4, .x = buf, .ldx = 4, .w = buf,
                         .w_dtype = KE_DTYPE_F32, .y = buf, .ldy = 4};
    assert_int_equal(ke_cl_gemm_run(fx->gemm, &a), KS_OK);
    a.m = 2;
    a.n = 0;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, &a), KS_OK);
    kc_context_buffer_free(fx->ctx, &buf);
}

/* Inconsistent arguments are KS_ERR_INVALID with a message, never a device fault. */
static void test_invalid(void **state)
{
    fixture *fx = *state;
    REQUIRE_DEVICE(fx);
    cl_mem buf = NULL;
    assert_int_equal(kc_context_buffer(fx->ctx, CL_MEM_READ_WRITE, 64 * 4, NULL, &buf), KS_OK);
    ke_cl_gemm_args a = {.m = 2, .n = 4, .k = 4, .x = buf, .ldx = 4, .w = buf,
                         .w_dtype = KE_DTYPE_F32, .y = buf, .ldy = 4};
    a.ldx = 3;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, &a), KS_ERR_INVALID);
    a.ldx = 4;
    a.ldy = 2;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, &a), KS_ERR_INVALID);
    a.ldy = 4;
    a.w_offset = 60; /* 16 weights from 60 in a 64-float buffer */
    assert_int_equal(ke_cl_gemm_run(fx->gemm, &a), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "w "));
    a.w_offset = 0;
    a.x = NULL;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, &a), KS_ERR_INVALID);
    a.x = buf;
    a.w_dtype = (ke_dtype)7;
    assert_int_equal(ke_cl_gemm_run(fx->gemm, &a), KS_ERR_INVALID);
    if (ke_cl_gemm_force(fx->gemm, "clblast") == KS_OK) { /* built with CLBlast */
        a.w_dtype = KE_DTYPE_F16;
        assert_int_equal(ke_cl_gemm_run(fx->gemm, &a), KS_ERR_UNSUPPORTED);
    }
    assert_int_equal(ke_cl_gemm_force(fx->gemm, "no-such-kernel"), KS_ERR_INVALID);
    assert_int_equal(ke_cl_gemm_force(fx->gemm, NULL), KS_OK);
    kc_context_buffer_free(fx->ctx, &buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_shapes),
        cmocka_unit_test(test_offsets_strides_accumulate),
        cmocka_unit_test(test_model_like),
        cmocka_unit_test(test_degenerate),
        cmocka_unit_test(test_invalid),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
