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
static double bicubic_filter(double x)
{
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

static uint8_t clip8(int in)
{
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
                                   int32_t **kkp)
{
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
                                int row0, int ch, int ksize, const int *bounds, const int32_t *kk)
{
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

struct ki_resizer {
    int sw, sh, ch, dw, dh;
    uint8_t *dst; /* borrowed: (dh, dw, ch) */
    int ksh, ksv;
    int *bh, *bv;     /* bounds of the horizontal and vertical passes */
    int32_t *kh, *kv; /* their 22-bit weights */
    uint8_t *ring;    /* (cap, dw, ch): intermediate rows, row y at y % cap */
    int cap;
    int next_in, next_out; /* the next source row expected, the next output row to make */
};

void ki_resizer_destroy(ki_resizer **pr)
{
    if (!pr || !*pr) {
        return;
    }
    ki_resizer *r = *pr;
    free(r->bh);
    free(r->bv);
    free(r->kh);
    free(r->kv);
    free(r->ring);
    free(r);
    *pr = NULL;
}

ks_status ki_resizer_new(int sw, int sh, int channels, uint8_t *dst, int dw, int dh,
                         ki_resizer **out)
{
    *out = NULL;
    if (!dst || sw < 1 || sh < 1 || dw < 1 || dh < 1 || channels < 1 || channels > 4) {
        return ks_fail(KS_ERR_INVALID, "resize: bad arguments (%dx%d -> %dx%d, %d channels)", sw,
                       sh, dw, dh, channels);
    }
    ki_resizer *r = calloc(1, sizeof *r);
    if (!r) {
        return ks_fail(KS_ERR_NOMEM, "resize: out of memory");
    }
    *r = (ki_resizer){.sw = sw, .sh = sh, .ch = channels, .dw = dw, .dh = dh, .dst = dst};
    ks_status st = KS_OK;
    if (sw != dw) {
        st = precompute_coeffs(sw, dw, &r->ksh, &r->bh, &r->kh);
    }
    if (st == KS_OK && sh != dh) {
        st = precompute_coeffs(sh, dh, &r->ksv, &r->bv, &r->kv);
    }
    if (st == KS_OK && sh != dh) {
        /* While output row o waits, the rows kept are those from its first one on, and no
         * output reads more than its own count: the largest count is the ring's size. */
        for (int o = 0; o < dh; o++) {
            if (r->bv[o * 2 + 1] > r->cap) {
                r->cap = r->bv[o * 2 + 1];
            }
        }
        if (r->cap < 1) {
            r->cap = 1;
        }
        r->ring = malloc((size_t)r->cap * (size_t)dw * (size_t)channels);
        if (!r->ring) {
            st = ks_fail(KS_ERR_NOMEM, "resize: out of memory for the intermediate rows");
        }
    }
    if (st != KS_OK) {
        ki_resizer_destroy(&r);
        return st;
    }
    *out = r;
    return KS_OK;
}

/* Output row o of the vertical pass, from the ring. */
static void resample_vertical_row(ki_resizer *r, int o)
{
    size_t stride = (size_t)r->dw * (size_t)r->ch;
    int ymin = r->bv[o * 2 + 0], ymax = r->bv[o * 2 + 1];
    const int32_t *k = &r->kv[(size_t)o * (size_t)r->ksv];
    uint8_t *orow = r->dst + (size_t)o * stride;
    for (size_t i = 0; i < stride; i++) {
        int ss0 = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < ymax; y++) {
            ss0 += r->ring[(size_t)((y + ymin) % r->cap) * stride + i] * k[y];
        }
        orow[i] = clip8(ss0);
    }
}

ks_status ki_resizer_push(ki_resizer *r, int y, const uint8_t *row)
{
    if (y != r->next_in || y >= r->sh || !row) {
        return ks_fail(KS_ERR_INVALID, "resize: row %d pushed, row %d expected", y, r->next_in);
    }
    r->next_in++;
    size_t stride = (size_t)r->dw * (size_t)r->ch;
    /* Without a vertical pass the horizontal one writes the output row itself. */
    uint8_t *h = r->sh == r->dh ? r->dst + (size_t)y * stride
                                : r->ring + (size_t)(y % r->cap) * stride;
    if (r->sw != r->dw) {
        resample_horizontal(h, r->dw, 1, row, r->sw, 0, r->ch, r->ksh, r->bh, r->kh);
    } else {
        memcpy(h, row, stride); /* Image.resize returns a copy when nothing changes */
    }
    if (r->sh == r->dh) {
        return KS_OK;
    }
    while (r->next_out < r->dh && r->bv[r->next_out * 2] + r->bv[r->next_out * 2 + 1] <= y + 1) {
        resample_vertical_row(r, r->next_out++);
    }
    return KS_OK;
}

ks_status ki_pil_resize_bicubic(const uint8_t *src, int sw, int sh, int channels, uint8_t *dst,
                                int dw, int dh)
{
    if (!src) {
        return ks_fail(KS_ERR_INVALID, "resize: no source");
    }
    ki_resizer *r = NULL;
    ks_status st = ki_resizer_new(sw, sh, channels, dst, dw, dh, &r);
    size_t stride = (size_t)sw * (size_t)channels;
    for (int y = 0; st == KS_OK && y < sh; y++) {
        st = ki_resizer_push(r, y, src + (size_t)y * stride);
    }
    ki_resizer_destroy(&r);
    return st;
}
