/* quant: int8 weight-only quantization, per output channel (see quant.h). The OpenCL upload
 * (cl_gemm.c) quantizes with the same two functions while it transposes, without a host copy;
 * ke_q8_tensor_new is for the reference backend and tests. */
#include "quant.h"

#include <stdlib.h>
#include <string.h>

ks_status ke_q8_row_scale(const ke_tensor *w, size_t row, float *buf, float *scale)
{
    size_t rows = (size_t)w->shape[0], in = rows ? ke_tensor_numel(w) / rows : 0;
    ke_tensor_read_f32(w, row * in, in, buf);
    float amax = 0.0f;
    for (size_t i = 0; i < in; i++) {
        if (!isfinite(buf[i]))
            return ks_fail(KS_ERR_INVALID,
                           "int8: row %zu holds %g at column %zu, which no "
                           "scale represents",
                           row, (double)buf[i], i);
        amax = fmaxf(amax, fabsf(buf[i]));
    }
    *scale = amax / 127.0f;
    return KS_OK;
}

ks_status ke_q8_tensor_new(const ke_tensor *w, ke_tensor *out)
{
    memset(out, 0, sizeof *out);
    if (!w->data || w->ndim < 2 || w->shape[0] < 1)
        return ks_fail(KS_ERR_INVALID, "int8: a weight must be a matrix");
    size_t rows = (size_t)w->shape[0], in = ke_tensor_numel(w) / rows;
    float *block = malloc(rows * sizeof(float) + rows * in + in * sizeof(float));
    if (!block)
        return ks_fail(KS_ERR_NOMEM, "int8: out of memory for a (%zu, %zu) weight", rows, in);
    float *buf = block + rows; /* a row of floats; not kept */
    int8_t *q = (int8_t *)(buf + in);
    ks_status st = KS_OK;
    for (size_t r = 0; r < rows && st == KS_OK; r++) {
        if ((st = ke_q8_row_scale(w, r, buf, &block[r])) != KS_OK)
            break;
        for (size_t i = 0; i < in; i++)
            q[r * in + i] = ke_q8_code(buf[i], block[r]);
    }
    if (st != KS_OK) {
        free(block);
        return st;
    }
    *out = *w;
    out->dtype = KE_DTYPE_I8;
    out->round_f16 = false;
    out->data = q;
    out->scale = block;
    return KS_OK;
}

void ke_q8_tensor_free(ke_tensor *t)
{
    free((void *)t->scale);
    memset(t, 0, sizeof *t);
}
