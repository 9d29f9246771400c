/* cl_fixture: the OpenCL fixture of the unit tests (see the header). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cl_fixture.h"

int ts_cl_open(kc_device_list **list, const kc_device_info **dev, kc_context **ctx)
{
    if (dev)
        *dev = NULL;
    if (ctx)
        *ctx = NULL;
    if (kc_device_list_new(list) != KS_OK) {
        fprintf(stderr, "kc_device_list_new: %s\n", ks_error_message());
        return -1;
    }
    const kc_device_info *d = NULL;
    const char *spec = getenv("KOSMOS_TEST_DEVICE");
    size_t index = 0;
    if (spec && *spec) {
        if (kc_device_list_select(*list, spec, &index) != KS_OK) {
            fprintf(stderr, "KOSMOS_TEST_DEVICE: %s\n", ks_error_message());
            return -1;
        }
        d = kc_device_list_get(*list, index);
    } else if (kc_device_list_default(*list) >= 0) {
        d = kc_device_list_get(*list, (size_t)kc_device_list_default(*list));
    }
    if (!d)
        return 0;
    print_message("device under test: %zu '%s' (%s, driver %s)\n", d->index, d->name,
                  d->platform_name, d->driver_version);
    if (dev)
        *dev = d;
    if (ctx && kc_context_new(d, NULL, ctx) != KS_OK) {
        fprintf(stderr, "kc_context_new: %s\n", ks_error_message());
        return -1;
    }
    return 0;
}

void ts_cl_close(kc_device_list **list, kc_context **ctx)
{
    if (ctx)
        kc_context_destroy(ctx);
    kc_device_list_destroy(list);
}

cl_mem ts_cl_upload(kc_context *ctx, const void *host, size_t bytes)
{
    cl_mem m = NULL;
    if (kc_context_buffer(ctx, CL_MEM_READ_WRITE, bytes ? bytes : 4, host, &m) != KS_OK)
        fail_msg("buffer of %zu bytes: %s", bytes, ks_error_message());
    return m;
}

void ts_cl_download(kc_context *ctx, cl_mem m, size_t offset, size_t bytes, void *host)
{
    if (kc_context_read(ctx, m, true, offset, bytes, host, NULL) != KS_OK)
        fail_msg("reading %zu bytes: %s", bytes, ks_error_message());
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

double ts_cl_frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1p-52 - 1.0;
}

void ts_cl_block_stats(const float *v, size_t dim, size_t sb, cl_float2 *out)
{
    for (size_t j = 0; j * sb < dim; j++) {
        size_t c = dim - j * sb < sb ? dim - j * sb : sb;
        float sum = 0.0f;
        for (size_t i = 0; i < c; i++)
            sum += v[j * sb + i];
        float mean = sum / (float)c, m2 = 0.0f;
        for (size_t i = 0; i < c; i++) {
            float d = v[j * sb + i] - mean;
            m2 += d * d;
        }
        out[j].s[0] = mean;
        out[j].s[1] = m2;
    }
}

double ts_cl_act_ref(double v, int act)
{
    switch (act) {
    case 0: return 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
    case 1: return v / (1.0 + exp(-1.702 * v));
    case 2: return 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    case 3: return v > 0 ? v : 0;
    default: return v;
    }
}

void ts_cl_linear_ref(const ts_cl_linear *p, float *want, float *bound)
{
    const size_t k = p->k;
    double *xn = malloc((k ? k : 1) * sizeof *xn);
    assert_non_null(xn);
    for (size_t r = 0; r < p->m; r++) {
        const float *xr = p->x + (p->gather ? (size_t)p->gather[r] : r) * p->ldx;
        double mean = 0, var = 0;
        for (size_t i = 0; i < k; i++)
            mean += xr[i];
        mean /= (double)k;
        for (size_t i = 0; i < k; i++)
            var += (xr[i] - mean) * (xr[i] - mean);
        const double rstd = 1.0 / sqrt(var / (double)k + 1e-5);
        for (size_t i = 0; i < k; i++) {
            double v = p->gamma ? (xr[i] - mean) * rstd * p->gamma[i] + p->beta[i] : xr[i];
            xn[i] = p->round_x ? p->round_x((float)v) : v;
        }
        for (size_t j = 0; j < p->n; j++) {
            double s = 0, b = 0;
            for (size_t i = 0; i < k; i++) {
                s += xn[i] * p->w[j * k + i];
                b += fabs(xn[i] * p->w[j * k + i]);
            }
            s = ts_cl_act_ref(s + (p->bias ? p->bias[j] : 0.0), p->act);
            if (j < p->acc_cols)
                s += p->y0[r * p->ldy + j];
            want[r * p->n + j] = (float)s;
            if (bound)
                bound[r * p->n + j] = (float)b;
        }
    }
    free(xn);
}

double ts_cl_rel_diff(double got, double want)
{
    double d = fabs(got - want) / fmax(1.0, fabs(want));
    return isnan(d) ? INFINITY : d;
}

double ts_cl_max_rel_diff(const float *got, const float *want, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, ts_cl_rel_diff((double)got[i], (double)want[i]));
    return m;
}
