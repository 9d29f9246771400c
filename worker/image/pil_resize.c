/* pil_resize: Pillow's bicubic resize, bit-exact (see pil_resize.h). The names and the order of
 * every floating-point operation follow Pillow's Resample.c, because the coefficients are
 * rounded to 22-bit fixed point and a different order can move a coefficient by one unit. */
#include "pil_resize.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)
#define BICUBIC_SUPPORT 2.0

/* Pillow's bicubic_filter, a = -0.5, written in the same operation order. */
static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) {
        x = -x;
    }
    if (x < 1.0) {
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    }
    if (x < 2.0) {
        return (((x - 5) * x + 8) * x - 4) * a;
    }
    return 0.0;
}

static uint8_t clip8(int in) {
    if (in >= (1 << PRECISION_BITS << 8)) {
        return 255;
    }
    if (in <= 0) {
        return 0;
    }
    return (uint8_t)(in >> PRECISION_BITS);
}

/* One axis: bounds[2*o] = first input index, bounds[2*o+1] = count, kk[o*ksize + j] = 22-bit
 * fixed-point weight. Pillow's precompute_coeffs + normalize_coeffs_8bpc with box
 * (0, in_size). Sets *ksizep; the caller frees *boundsp and *kkp. */
static ks_status precompute_coeffs(int in_size, int out_size, int *ksizep, int **boundsp,
                                   int32_t **kkp) {
    const float in0 = 0.0f, in1 = (float)in_size; /* Pillow passes the box as floats */
    double filterscale, scale, support, center, ww, ss;
    int ksize, xx, x, xmin, xmax;
    double *prekk = NULL;
    int32_t *kk = NULL;
    int *bounds = NULL;

    filterscale = scale = (double)(in1 - in0) / out_size;
    if (filterscale < 1.0) {
        filterscale = 1.0;
    }
    support = BICUBIC_SUPPORT * filterscale;
    ksize = (int)ceil(support) * 2 + 1;
    if ((size_t)out_size > SIZE_MAX / sizeof(double) / (size_t)ksize) {
        return ks_fail(KS_ERR_LIMIT, "resize: %d -> %d is too large", in_size, out_size);
    }
    prekk = malloc((size_t)out_size * (size_t)ksize * sizeof(double));
    kk = malloc((size_t)out_size * (size_t)ksize * sizeof(int32_t));
    bounds = malloc((size_t)out_size * 2 * sizeof(int));
    if (!prekk || !kk || !bounds) {
        free(prekk);
        free(kk);
        free(bounds);
        return ks_fail(KS_ERR_NOMEM, "resize: out of memory for the coefficients");
    }
    for (xx = 0; xx < out_size; xx++) {
        double *k = &prekk[(size_t)xx * (size_t)ksize];
        center = in0 + (xx + 0.5) * scale;
        ww = 0.0;
        ss = 1.0 / filterscale;
        xmin = (int)(center - support + 0.5); /* C truncation, as Pillow */
        if (xmin < 0) {
            xmin = 0;
        }
        xmax = (int)(center + support + 0.5);
        if (xmax > in_size) {
            xmax = in_size;
        }
        xmax -= xmin;
        for (x = 0; x < xmax; x++) {
            double w = bicubic_filter((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++) {
            if (ww != 0.0) {
                k[x] /= ww;
            }
        }
        for (; x < ksize; x++) {
            k[x] = 0;
        }
        bounds[xx * 2 + 0] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    for (size_t i = 0; i < (size_t)out_size * (size_t)ksize; i++) {
        if (prekk[i] < 0) {
            kk[i] = (int32_t)(-0.5 + prekk[i] * (1 << PRECISION_BITS));
        } else {
            kk[i] = (int32_t)(0.5 + prekk[i] * (1 << PRECISION_BITS));
        }
    }
    free(prekk);
    *ksizep = ksize;
    *boundsp = bounds;
    *kkp = kk;
    return KS_OK;
}

/* Output rows [0, out_h) of a horizontal pass read input rows [row0, row0 + out_h). */
static void resample_horizontal(uint8_t *out, int out_w, int out_h, const uint8_t *in, int in_w,
                                int row0, int ch, int ksize, const int *bounds,
                                const int32_t *kk) {
    for (int yy = 0; yy < out_h; yy++) {
        const uint8_t *row = in + ((size_t)(yy + row0) * (size_t)in_w) * (size_t)ch;
        uint8_t *orow = out + (size_t)yy * (size_t)out_w * (size_t)ch;
        for (int xx = 0; xx < out_w; xx++) {
            int xmin = bounds[xx * 2 + 0], xmax = bounds[xx * 2 + 1];
            const int32_t *k = &kk[(size_t)xx * (size_t)ksize];
            for (int c = 0; c < ch; c++) {
                int ss0 = 1 << (PRECISION_BITS - 1);
                for (int x = 0; x < xmax; x++) {
                    ss0 += row[(size_t)(x + xmin) * (size_t)ch + (size_t)c] * k[x];
                }
                orow[(size_t)xx * (size_t)ch + (size_t)c] = clip8(ss0);
            }
        }
    }
}

static void resample_vertical(uint8_t *out, int out_w, int out_h, const uint8_t *in, int ch,
                              int ksize, const int *bounds, const int32_t *kk) {
    size_t stride = (size_t)out_w * (size_t)ch;
    for (int yy = 0; yy < out_h; yy++) {
        int ymin = bounds[yy * 2 + 0], ymax = bounds[yy * 2 + 1];
        const int32_t *k = &kk[(size_t)yy * (size_t)ksize];
        uint8_t *orow = out + (size_t)yy * stride;
        for (size_t i = 0; i < stride; i++) {
            int ss0 = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < ymax; y++) {
                ss0 += in[(size_t)(y + ymin) * stride + i] * k[y];
            }
            orow[i] = clip8(ss0);
        }
    }
}

ks_status ki_pil_resize_bicubic(const uint8_t *src, int sw, int sh, int channels, uint8_t *dst,
                                int dw, int dh) {
    ks_status st = KS_OK;
    int *bh = NULL, *bv = NULL;
    int32_t *kh = NULL, *kv = NULL;
    uint8_t *tmp = NULL;
    int ksh = 0, ksv = 0;

    if (!src || !dst || sw < 1 || sh < 1 || dw < 1 || dh < 1 || channels < 1 || channels > 4) {
        return ks_fail(KS_ERR_INVALID, "resize: bad arguments (%dx%d -> %dx%d, %d channels)", sw,
                       sh, dw, dh, channels);
    }
    if (sw == dw && sh == dh) { /* Image.resize returns a copy */
        memcpy(dst, src, (size_t)sw * (size_t)sh * (size_t)channels);
        return KS_OK;
    }
    st = precompute_coeffs(sw, dw, &ksh, &bh, &kh);
    if (st == KS_OK) {
        st = precompute_coeffs(sh, dh, &ksv, &bv, &kv);
    }
    if (st != KS_OK) {
        goto done;
    }
    if (sw != dw) {
        /* Only the rows the vertical pass reads; shift its bounds to the intermediate. */
        int first = bv[0], last = bv[dh * 2 - 2] + bv[dh * 2 - 1];
        int rows = last - first;
        if (sh == dh) {
            resample_horizontal(dst, dw, dh, src, sw, 0, channels, ksh, bh, kh);
            goto done;
        }
        tmp = malloc((size_t)dw * (size_t)rows * (size_t)channels);
        if (!tmp) {
            st = ks_fail(KS_ERR_NOMEM, "resize: out of memory for the intermediate image");
            goto done;
        }
        for (int i = 0; i < dh; i++) {
            bv[i * 2] -= first;
        }
        resample_horizontal(tmp, dw, rows, src, sw, first, channels, ksh, bh, kh);
        resample_vertical(dst, dw, dh, tmp, channels, ksv, bv, kv);
    } else {
        resample_vertical(dst, dw, dh, src, channels, ksv, bv, kv);
    }
done:
    free(tmp);
    free(bh);
    free(bv);
    free(kh);
    free(kv);
    return st;
}
