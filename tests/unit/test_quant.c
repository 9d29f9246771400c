/* Unit tests for worker/engine/quant (int8 weight-only quantization, --precision int8):
 *   - the round trip: every code within [-127, 127], every value within scale / 2 of its code
 *     times the scale, each row's largest value on ±127, zero rows and f16-rounded f32 rows;
 *   - values no scale represents (NaN, infinity) are an error, not a code;
 *   - ke_op_linear on int8 weights: the codes' dot product times the row's scale, plus bias.
 * Never a golden test: the goldens run fp16 and fp32 only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "quant.h"
#include "ref_ops.h"

static uint64_t rng_state = 0x3c6ef372fe94f82bull;

static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) * 0x1p-52 - 1.0);
}

/* A (rows, in) weight of dtype dt with rows of different magnitudes, row 2 all zero and row 3
 * a single nonzero value; round_f16 marks f32 data of an f16 model. Caller frees ->data. */
static ke_tensor make_weight(ke_dtype dt, bool round_f16, size_t rows, size_t in)
{
    void *data = malloc(rows * in * (dt == KE_DTYPE_F16 ? 2 : 4));
    assert_non_null(data);
    for (size_t r = 0; r < rows; r++)
        for (size_t i = 0; i < in; i++) {
            float v = frand() * powf(10.0f, (float)(r % 5) - 3.0f);
            if (r == 2 || (r == 3 && i != in / 2))
                v = 0.0f;
            if (dt == KE_DTYPE_F16)
                ((uint16_t *)data)[r * in + i] = ke_f32_to_f16(v);
            else
                ((float *)data)[r * in + i] = v;
        }
    return (ke_tensor){.dtype = dt, .round_f16 = round_f16, .ndim = 2,
                       .shape = {(int64_t)rows, (int64_t)in}, .data = data};
}

static void test_round_trip(void **state)
{
    (void)state;
    const size_t rows = 37, in = 53;
    const struct {
        ke_dtype dt;
        bool round_f16;
    } kinds[] = {{KE_DTYPE_F32, false}, {KE_DTYPE_F16, false}, {KE_DTYPE_F32, true}};
    float *w = malloc(rows * in * sizeof *w), *back = malloc(rows * in * sizeof *back);
    assert_true(w && back);
    for (size_t kd = 0; kd < sizeof kinds / sizeof kinds[0]; kd++) {
        ke_tensor t = make_weight(kinds[kd].dt, kinds[kd].round_f16, rows, in), q;
        ke_tensor_read_f32(&t, 0, rows * in, w); /* what the device copy would hold */
        assert_int_equal(ke_q8_tensor_new(&t, &q), KS_OK);
        assert_int_equal(q.dtype, KE_DTYPE_I8);
        assert_int_equal(q.shape[0], rows);
        assert_int_equal(q.shape[1], in);
        ke_tensor_read_f32(&q, 0, rows * in, back);
        const int8_t *codes = q.data;
        for (size_t r = 0; r < rows; r++) {
            const float scale = q.scale[r];
            int top = 0;
            for (size_t i = 0; i < in; i++) {
                const int c = codes[r * in + i];
                assert_true(c >= -127 && c <= 127);
                top = abs(c) > top ? abs(c) : top;
                assert_true(back[r * in + i] == (float)c * scale);
                /* scale / 2, and one rounding of the quotient w / scale on top */
                const double err = fabs((double)back[r * in + i] - (double)w[r * in + i]);
                if (!(err <= (double)scale * (0.5 + 0x1p-20)))
                    fail_msg("kind %zu row %zu column %zu: %g comes back as %g (scale %g)", kd, r,
                             i, (double)w[r * in + i], (double)back[r * in + i], (double)scale);
            }
            if (r == 2) {
                assert_true(scale == 0.0f && top == 0);
            } else {
                assert_true(scale > 0.0f);
                assert_int_equal(top, 127); /* the row's largest value uses the whole range */
            }
        }
        ke_q8_tensor_free(&q);
        assert_null(q.data);
        free((void *)t.data);
    }
    free(w), free(back);
}

static void test_not_finite(void **state)
{
    (void)state;
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        ke_tensor t = make_weight(KE_DTYPE_F32, false, 4, 8), q;
        ((float *)t.data)[2 * 8 + 5] = bad[b];
        assert_int_equal(ke_q8_tensor_new(&t, &q), KS_ERR_INVALID);
        assert_non_null(strstr(ks_error_message(), "row 2"));
        assert_null(q.data);
        free((void *)t.data);
    }
    ke_tensor vec = {.dtype = KE_DTYPE_F32, .ndim = 1, .shape = {3}, .data = bad}, q;
    assert_int_equal(ke_q8_tensor_new(&vec, &q), KS_ERR_INVALID);
}

static void test_linear(void **state)
{
    (void)state;
    const size_t rows = 3, out = 37, in = 53;
    ke_tensor t = make_weight(KE_DTYPE_F16, false, out, in), q;
    assert_int_equal(ke_q8_tensor_new(&t, &q), KS_OK);
    uint16_t bias_h[37];
    float x[3 * 53], y[3 * 37], *scratch = malloc(ke_op_linear_scratch(in) * sizeof *scratch);
    assert_non_null(scratch);
    for (size_t i = 0; i < out; i++)
        bias_h[i] = ke_f32_to_f16(frand());
    for (size_t i = 0; i < rows * in; i++)
        x[i] = frand() * 3.0f;
    ke_tensor bias = {.dtype = KE_DTYPE_F16, .ndim = 1, .shape = {(int64_t)out}, .data = bias_h};
    ke_op_linear(x, rows, &q, &bias, y, scratch);
    const int8_t *codes = q.data;
    for (size_t r = 0; r < rows; r++)
        for (size_t o = 0; o < out; o++) {
            double s = 0, mag = 0;
            for (size_t i = 0; i < in; i++) {
                s += (double)x[r * in + i] * codes[o * in + i];
                mag += fabs((double)x[r * in + i] * codes[o * in + i]);
            }
            const double b = ke_f16_to_f32(bias_h[o]);
            const double want = s * q.scale[o] + b;
            const double tol = ((double)in + 4.0) * 0x1p-24 * (mag * q.scale[o] + fabs(b));
            if (!(fabs((double)y[r * out + o] - want) <= tol))
                fail_msg("row %zu output %zu: %.9g, want %.9g", r, o, (double)y[r * out + o],
                         want);
        }
    ke_q8_tensor_free(&q);
    free((void *)t.data);
    free(scratch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_not_finite),
        cmocka_unit_test(test_linear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
