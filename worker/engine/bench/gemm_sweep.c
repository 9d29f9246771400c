/* ke_gemm_sweep: see gemm_sweep.h. The operands are random and fixed per shape for the whole
 * sweep; every candidate gets its own ke_cl_gemm (the tunables are fixed when its program is
 * built) and uploads the weights again (their layout is a tunable), one shape at a time so the
 * device holds one shape's buffers at once. */
#include "gemm_sweep.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cl_gemm.h"
#include "model.h"

#define MAX_RUNS 256 /* timed products per measurement at most */

typedef struct host_shape {
    uint16_t *w, *bias, *ln; /* f16: W (n, k), bias (n), LayerNorm weight then bias (2k) */
    float *x, *y0;           /* X (max_m, k); Y before the product (max_m, n), for the residual */
    cl_float2 *ln_stats;     /* X's row statistics (max_m, ln_nb) */
    float *ref_y[KE_GEMM_SWEEP_MAX_M];         /* the row's Y (m, n) per m */
    cl_float2 *ref_stats[KE_GEMM_SWEEP_MAX_M]; /* the row's statistics of Y (m, nb) per m */
} host_shape;

typedef struct sweep {
    kc_context *ctx;
    const ke_gemm_sweep_params *p;
    size_t max_m;
    host_shape hs[KE_GEMM_SWEEP_MAX_SHAPES];
    ke_cl_tunables base;
    char base_text[256];
    double base_ms[KE_GEMM_SWEEP_MAX_SHAPES][KE_GEMM_SWEEP_MAX_M];
    char (*seen)[256]; /* the effective tunables of every candidate considered */
    size_t n_seen, cap_seen;
    json_t *measured, *rejected;
} sweep;

/* What one candidate measured; why it was rejected when it was. */
typedef struct outcome {
    double ms[KE_GEMM_SWEEP_MAX_SHAPES][KE_GEMM_SWEEP_MAX_M];
    double score;
    bool rejected;
    char why[400];
} outcome;

void ke_gemm_sweep_params_default(ke_gemm_sweep_params *p)
{
    *p = (ke_gemm_sweep_params){.seconds = 0.5, .min_gain = 0.02};
}

size_t ke_gemm_sweep_shapes(const ke_config *c, ke_gemm_shape *out, size_t cap)
{
    const size_t e = (size_t)c->text.embed_dim, h = (size_t)c->vision.hidden_size;
    const ke_gemm_shape all[] = {
        {"t_qkv", 3 * e, e, c->text.layers, -1, false},
        {"t_out", e, e, c->text.layers, -1, true},
        {"t_fc1", (size_t)c->text.ffn_dim, e, c->text.layers, (int)c->text.activation, false},
        {"t_fc2", e, (size_t)c->text.ffn_dim, c->text.layers, -1, true},
        {"lm_head", (size_t)c->text.vocab_size, e, 1, -1, false},
        {"v_qkv", 3 * h, h, c->vision.layers, -1, false},
        {"v_out", h, h, c->vision.layers, -1, true},
        {"v_fc1", (size_t)c->vision.intermediate_size, h, c->vision.layers,
         (int)c->vision.activation, false},
        {"v_fc2", h, (size_t)c->vision.intermediate_size, c->vision.layers, -1, true},
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0] && n < cap; i++)
        out[n++] = all[i];
    return n;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t ceil_div(size_t v, size_t d) { return (v + d - 1) / d; }

static float frand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((double)(*s >> 11) * 0x1p-53 - 0.5);
}

static void free_shapes(sweep *sw)
{
    for (size_t s = 0; s < KE_GEMM_SWEEP_MAX_SHAPES; s++) {
        host_shape *h = &sw->hs[s];
        free(h->w), free(h->bias), free(h->ln), free(h->x), free(h->y0), free(h->ln_stats);
        for (size_t mi = 0; mi < KE_GEMM_SWEEP_MAX_M; mi++)
            free(h->ref_y[mi]), free(h->ref_stats[mi]);
    }
    memset(sw->hs, 0, sizeof sw->hs);
}

/* Random operands of every shape: W of magnitude ~1/sqrt(k) as the model's, X and Y in
 * [-0.5, 0.5), LayerNorm blocks with mean 0 and rstd about 1. */
static ks_status make_shapes(sweep *sw)
{
    uint64_t rng = sw->p->seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    for (size_t s = 0; s < sw->p->n_shapes; s++) {
        const ke_gemm_shape *sh = &sw->p->shapes[s];
        host_shape *h = &sw->hs[s];
        const size_t n = sh->n, k = sh->k, m = sw->max_m, ln_nb = ceil_div(k, KE_CL_STAT_SB);
        h->w = malloc(n * k * sizeof *h->w);
        h->bias = malloc(n * sizeof *h->bias);
        h->ln = malloc(2 * k * sizeof *h->ln);
        h->x = malloc(m * k * sizeof *h->x);
        h->y0 = malloc(m * n * sizeof *h->y0);
        h->ln_stats = malloc(m * ln_nb * sizeof *h->ln_stats);
        if (!h->w || !h->bias || !h->ln || !h->x || !h->y0 || !h->ln_stats)
            return ks_fail(KS_ERR_NOMEM, "out of memory for the %s operands", sh->name);
        const float scale = 2.0f / sqrtf((float)k);
        for (size_t i = 0; i < n * k; i++)
            h->w[i] = ke_f32_to_f16(frand(&rng) * scale);
        for (size_t i = 0; i < n; i++)
            h->bias[i] = ke_f32_to_f16(frand(&rng) * 0.2f);
        for (size_t i = 0; i < 2 * k; i++)
            h->ln[i] = ke_f32_to_f16((i < k ? 1.0f : 0.0f) + frand(&rng) * 0.2f);
        for (size_t i = 0; i < m * k; i++)
            h->x[i] = frand(&rng);
        for (size_t i = 0; i < m * n; i++)
            h->y0[i] = frand(&rng);
        for (size_t i = 0; i < m * ln_nb; i++)
            h->ln_stats[i] = (cl_float2){{0.0f, (float)KE_CL_STAT_SB / 12.0f}};
    }
    return KS_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Copies of a shape's W that one product after another cycles through, as many as it takes to
 * outgrow the last-level caches (a 32 MB L3 on EPYC, 50 MB of L2 on an H100), at most
 * MAX_COPIES: the model reads each layer's weights once per step, so a product timed with its
 * W still cached from the run before favours what streams worst (rows_nt=16 won the sweep that
 * way by 10% and lost 10-15% of decode speed in the model on PoCL). */
#define COPIES_BYTES ((size_t)128 << 20)
#define MAX_COPIES 8

/* The median wall time in ms of single products (enqueue to finish) over `budget` seconds, at
 * least 3 of them, run i reading W copies[i % n_copies]. */
static ks_status time_product(sweep *sw, ke_cl_gemm *g, const ke_cl_gemm_args *a,
                              const ke_cl_weight *copies, size_t n_copies, double budget,
                              double *ms)
{
    double t[MAX_RUNS];
    int runs = 0;
    const double start = now_s();
    ks_status st = KS_OK;
    ke_cl_gemm_args run = *a;
    do {
        run.w = &copies[(size_t)runs % n_copies];
        const double t0 = now_s();
        if ((st = ke_cl_gemm_run(g, NULL, &run, "tune")) != KS_OK ||
            (st = kc_context_finish(sw->ctx)) != KS_OK)
            return st;
        t[runs++] = (now_s() - t0) * 1e3;
    } while (runs < 3 || (now_s() - start < budget && runs < MAX_RUNS));
    qsort(t, (size_t)runs, sizeof *t, cmp_double);
    *ms = runs % 2 ? t[runs / 2] : 0.5 * (t[runs / 2 - 1] + t[runs / 2]);
    return KS_OK;
}

/* Where got and want first differ, as text, or false when they are the same bits. */
static bool differs(const void *got, const void *want, size_t floats, size_t row_len,
                    const char *what, char *why, size_t len)
{
    if (memcmp(got, want, floats * sizeof(float)) == 0)
        return false;
    const float *a = got, *b = want;
    size_t i = 0;
    while (i < floats && memcmp(&a[i], &b[i], sizeof(float)) == 0)
        i++;
    snprintf(why, len, "%s[%zu][%zu] = %a, the row's %a", what, i / row_len, i % row_len,
             (double)a[i], (double)b[i]);
    return true;
}

/* One shape under gemm g at every m: the row (is_base) records its outputs, a candidate's are
 * compared with them (o->rejected on the first difference), then each product is timed. */
static ks_status measure_shape(sweep *sw, ke_cl_gemm *g, size_t s, bool is_base, outcome *o)
{
    const ke_gemm_shape *sh = &sw->p->shapes[s];
    host_shape *h = &sw->hs[s];
    const size_t n = sh->n, k = sh->k, mm = sw->max_m, nb = ceil_div(n, KE_CL_STAT_SB);
    const size_t ln_nb = ceil_div(k, KE_CL_STAT_SB);
    const double budget = sw->p->seconds / (double)(sw->p->n_shapes * sw->p->n_m);
    ke_tensor tw = {.dtype = KE_DTYPE_F16,
                    .ndim = 2,
                    .shape = {(int64_t)n, (int64_t)k},
                    .data = h->w};
    ke_tensor tb = {.dtype = KE_DTYPE_F16, .ndim = 1, .shape = {(int64_t)n}, .data = h->bias};
    const ke_tensor *wp[1] = {&tw}, *bp[1] = {&tb};
    ke_cl_weight copies[MAX_COPIES] = {0};
    const size_t w_bytes = n * k * 2;
    size_t n_copies = (COPIES_BYTES + w_bytes - 1) / w_bytes;
    if (n_copies > MAX_COPIES)
        n_copies = MAX_COPIES;
    const ke_cl_weight *wt = &copies[0];
    cl_mem bx = NULL, by = NULL, bst = NULL, blw = NULL, blb = NULL, bso = NULL;
    float *y = malloc(mm * n * sizeof *y);
    cl_float2 *stats = malloc(mm * nb * sizeof *stats);
    ks_status st = KS_OK;
    if (!y || !stats) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory for the %s outputs", sh->name);
        goto cleanup;
    }
    for (size_t c = 0; c < n_copies; c++)
        if ((st = ke_cl_weight_upload(g, KE_DTYPE_F16, wp, bp, 1, sh->name, &copies[c], NULL)))
            goto cleanup;
    if ((st = kc_context_buffer(sw->ctx, CL_MEM_READ_ONLY, mm * k * 4, h->x, &bx)) ||
        (st = kc_context_buffer(sw->ctx, CL_MEM_READ_WRITE, mm * n * 4, NULL, &by)) ||
        (st = kc_context_buffer(sw->ctx, CL_MEM_READ_ONLY, mm * ln_nb * sizeof(cl_float2),
                                h->ln_stats, &bst)) ||
        (st = kc_context_buffer(sw->ctx, CL_MEM_READ_ONLY, k * 2, h->ln, &blw)) ||
        (st = kc_context_buffer(sw->ctx, CL_MEM_READ_ONLY, k * 2, h->ln + k, &blb)) ||
        (st = kc_context_buffer(sw->ctx, CL_MEM_READ_WRITE, mm * nb * sizeof(cl_float2), NULL,
                                &bso)))
        goto cleanup;
    for (size_t mi = 0; mi < sw->p->n_m && !o->rejected; mi++) {
        const size_t m = sw->p->m[mi];
        ke_cl_gemm_args a = {.m = m,
                             .w = wt,
                             .x = bx,
                             .ldx = k,
                             .ln_stats = bst,
                             .ln_w = blw,
                             .ln_b = blb,
                             .ln_sb = KE_CL_STAT_SB,
                             .ln_eps = 1e-5f,
                             .y = by,
                             .ldy = n,
                             .act = sh->act,
                             .accumulate = sh->accumulate,
                             .stats_out = bso};
        if ((st = kc_context_write(sw->ctx, by, true, 0, m * n * 4, h->y0, NULL)) ||
            (st = ke_cl_gemm_run(g, NULL, &a, "tune check")) ||
            (st = kc_context_read(sw->ctx, by, true, 0, m * n * 4, y, NULL)) ||
            (st = kc_context_read(sw->ctx, bso, true, 0, m * nb * sizeof *stats, stats, NULL)))
            goto cleanup;
        if (is_base) {
            h->ref_y[mi] = y, h->ref_stats[mi] = stats;
            y = malloc(mm * n * sizeof *y);
            stats = malloc(mm * nb * sizeof *stats);
            if (!y || !stats) {
                st = ks_fail(KS_ERR_NOMEM, "out of memory for the %s outputs", sh->name);
                goto cleanup;
            }
        } else {
            char what[64];
            snprintf(what, sizeof what, "%s m=%zu: Y", sh->name, m);
            if (differs(y, h->ref_y[mi], m * n, n, what, o->why, sizeof o->why))
                o->rejected = true;
            snprintf(what, sizeof what, "%s m=%zu: Y's statistics", sh->name, m);
            if (!o->rejected &&
                differs(stats, h->ref_stats[mi], 2 * m * nb, 2 * nb, what, o->why, sizeof o->why))
                o->rejected = true;
            if (o->rejected)
                break;
        }
        if ((st = time_product(sw, g, &a, copies, n_copies, budget, &o->ms[s][mi])) != KS_OK)
            goto cleanup;
    }
cleanup:
    if (st != KS_OK)
        ks_error_prefix("%s", sh->name);
    free(y);
    free(stats);
    kc_context_buffer_free(sw->ctx, &bx), kc_context_buffer_free(sw->ctx, &by);
    kc_context_buffer_free(sw->ctx, &bst), kc_context_buffer_free(sw->ctx, &blw);
    kc_context_buffer_free(sw->ctx, &blb), kc_context_buffer_free(sw->ctx, &bso);
    for (size_t c = 0; c < n_copies; c++)
        kc_context_buffer_free(sw->ctx, &copies[c].w),
            kc_context_buffer_free(sw->ctx, &copies[c].bias);
    return st;
}

/* Time of one forward's products at m (index mi) by the shapes' counts. */
static double forward_ms(const sweep *sw, const double ms[][KE_GEMM_SWEEP_MAX_M], size_t mi)
{
    double t = 0;
    for (size_t s = 0; s < sw->p->n_shapes; s++)
        t += ms[s][mi] * (double)sw->p->shapes[s].count;
    return t;
}

/* Measures the tunables `text` into *o: KS_OK also for a rejected candidate (o->rejected, a
 * build that fails or outputs that differ); a failure of the row itself is the sweep's. */
static ks_status evaluate(sweep *sw, const char *text, bool is_base, outcome *o)
{
    memset(o, 0, sizeof *o);
    ke_cl_gemm *g = NULL;
    ks_status st = ke_cl_gemm_new(sw->ctx, text, &g);
    if (st != KS_OK) {
        if (is_base)
            return st;
        o->rejected = true;
        snprintf(o->why, sizeof o->why, "%s", ks_error_message());
        return KS_OK;
    }
    if (!is_base && sw->p->test_chunk)
        ke_cl_gemm_force_chunk(g, sw->p->test_chunk);
    for (size_t s = 0; s < sw->p->n_shapes && st == KS_OK && !o->rejected; s++)
        st = measure_shape(sw, g, s, is_base, o);
    ke_cl_gemm_destroy(&g);
    if (st != KS_OK && !is_base) {
        o->rejected = true; /* a candidate the device refuses to run (its groups, its memory) */
        snprintf(o->why, sizeof o->why, "%s", ks_error_message());
        st = KS_OK;
    }
    if (st == KS_OK && !o->rejected) {
        for (size_t mi = 0; mi < sw->p->n_m; mi++)
            o->score += is_base ? 1.0 : forward_ms(sw, o->ms, mi) / forward_ms(sw, sw->base_ms, mi);
        o->score /= (double)sw->p->n_m;
    }
    return st;
}

/* "row,key=value" for the keys whose value differs from the row's: the log's short name of a
 * candidate (both texts as ke_cl_tunables_format writes them, in the same order). */
static void short_name(const char *base, const char *text, char *out, size_t len)
{
    const char *b = base, *t = text;
    size_t at = (size_t)snprintf(out, len, "%.*s", (int)strcspn(t, ","), t);
    while (*t && at < len) {
        const size_t bl = strcspn(b, ","), tl = strcspn(t, ",");
        if (at > 0 && (bl != tl || strncmp(b, t, tl) != 0) && t != text)
            at += (size_t)snprintf(out + at, len - at, ",%.*s", (int)tl, t);
        b += bl + (b[bl] == ',');
        t += tl + (t[tl] == ',');
    }
}

static void log_line(const sweep *sw, int index, const char *text, const outcome *o,
                     const char *note)
{
    if (!sw->p->log)
        return;
    char name[256];
    short_name(sw->base_text, text, name, sizeof name);
    fprintf(sw->p->log, "tune: [%d] %s:", index, name);
    if (o->rejected) {
        fprintf(sw->p->log, " REJECTED: %s\n", o->why);
        return;
    }
    for (size_t s = 0; s < sw->p->n_shapes; s++) {
        double t = 0;
        for (size_t mi = 0; mi < sw->p->n_m; mi++)
            t += o->ms[s][mi];
        fprintf(sw->p->log, " %s %.3g", sw->p->shapes[s].name, t);
    }
    double total = 0;
    for (size_t mi = 0; mi < sw->p->n_m; mi++)
        total += forward_ms(sw, o->ms, mi);
    fprintf(sw->p->log, " ms; forward %.4g ms; score %.3f%s\n", total, o->score, note);
    fflush(sw->p->log);
}

static json_t *ms_json(const sweep *sw, const double ms[][KE_GEMM_SWEEP_MAX_M])
{
    json_t *rows = json_array();
    for (size_t s = 0; rows && s < sw->p->n_shapes; s++) {
        json_t *row = json_array();
        for (size_t mi = 0; row && mi < sw->p->n_m; mi++)
            json_array_append_new(row, json_real(round(ms[s][mi] * 1e4) / 1e4));
        json_array_append_new(rows, row);
    }
    return rows;
}

/* ---- the candidates ------------------------------------------------------------------------ */

/* The grid, one axis at a time: each option is applied to the best tunables so far. Options a
 * check refuses (gemm.cl's constraints, the chunking) are skipped with the reason. */
#define AXIS_MAX 8
static const char *const tiles_axis[AXIS_MAX] = {
    "tile_m=64,tile_n=64,wpt_m=4,wpt_n=4",   "tile_m=32,tile_n=64,wpt_m=2,wpt_n=4",
    "tile_m=64,tile_n=32,wpt_m=4,wpt_n=2",   "tile_m=128,tile_n=64,wpt_m=8,wpt_n=4",
    "tile_m=64,tile_n=128,wpt_m=4,wpt_n=8",  "tile_m=32,tile_n=32,wpt_m=2,wpt_n=2",
    "tile_m=128,tile_n=128,wpt_m=8,wpt_n=4", NULL};
/* CPUs: the columns a work-item streams (vectors of rows_cw, rows_vpw of them, in panels), the
 * work-items per group, the order of the groups, and whether gemm_tiles takes the large m (the row never does) */
static const char *const cpu_axes[][AXIS_MAX] = {
    {"rows_cw=16,rows_vpw=2,w_panel=16", "rows_cw=16,rows_vpw=1,w_panel=16",
     "rows_cw=8,rows_vpw=2,w_panel=8", "rows_cw=8,rows_vpw=2,w_panel=16",
     "rows_cw=8,rows_vpw=1,w_panel=8", "rows_cw=16,rows_vpw=2,w_panel=32", NULL},
    {"rows_nt=8", "rows_nt=4", "rows_nt=16", "rows_nt=32", NULL},
    {"rows_order=1", "rows_order=0", NULL},
    {"ln_apart_m=8", "ln_apart_m=1073741824", "ln_apart_m=64", NULL},
    {"rows_max_m=1073741824", "rows_max_m=64", "rows_max_m=16", NULL},
    {NULL}, /* tiles_axis */
};
/* GPUs: the rows kernel's group shape at the same columns per group (other widths change the
 * chunking), its staging depth, split and staging, the crossover to gemm_tiles and its tiles */
static const char *const gpu_axes[][AXIS_MAX] = {
    {"rows_nt=32,rows_cw=4", "rows_nt=16,rows_cw=8", "rows_nt=8,rows_cw=16", NULL},
    {"rows_xk=64", "rows_xk=32", "rows_xk=128", "rows_xk=256", NULL},
    {"rows_split=1", "rows_split=0", NULL},
    {"rows_stage=1", "rows_stage=0", NULL},
    {"rows_max_m=64", "rows_max_m=8", "rows_max_m=16", "rows_max_m=32", "rows_max_m=128",
     "rows_max_m=256", NULL},
    {NULL}, /* tiles_axis */
};

/* The tunables as they act at these m: values that cannot matter are the row's, so that two
 * candidates differing only there are measured once. */
static void effective_text(const sweep *sw, const ke_cl_tunables *t, char *out, size_t len)
{
    ke_cl_tunables e = *t;
    if ((size_t)e.rows_max_m >= sw->max_m) { /* gemm_tiles never runs */
        e.rows_max_m = (int)sw->max_m;
        e.tile_m = sw->base.tile_m, e.tile_n = sw->base.tile_n;
        e.wpt_m = sw->base.wpt_m, e.wpt_n = sw->base.wpt_n;
    }
    if (!e.rows_stage)
        e.rows_xk = sw->base.rows_xk; /* X is not staged */
    if (e.groups_goal <= 0)
        e.rows_split = sw->base.rows_split; /* one chunk: nothing to split */
    ke_cl_tunables_format(&e, out, len);
}

/* true (and remembered) when no candidate with these effective tunables was considered yet */
static bool first_time(sweep *sw, const ke_cl_tunables *t)
{
    char text[256];
    effective_text(sw, t, text, sizeof text);
    for (size_t i = 0; i < sw->n_seen; i++)
        if (strcmp(sw->seen[i], text) == 0)
            return false;
    if (sw->n_seen == sw->cap_seen) {
        size_t cap = sw->cap_seen ? 2 * sw->cap_seen : 32;
        char(*more)[256] = realloc(sw->seen, cap * sizeof *more);
        if (!more)
            return true; /* measured twice at worst */
        sw->seen = more, sw->cap_seen = cap;
    }
    snprintf(sw->seen[sw->n_seen++], sizeof sw->seen[0], "%s", text);
    return true;
}

typedef struct walk {
    ke_cl_tunables best;
    char best_text[256];
    outcome best_o;
    int index; /* candidates considered */
} walk;

/* Considers the tunables `t` (reached by the override `how`, for messages): checks, measures,
 * and makes it the best when it wins by min_gain. */
/* The most a winner may lose at any one m against the best so far: the score averages the m's
 * ratios, and decode's short products are the noisiest, so a candidate could "win" on noise at
 * m = 1 while the LayerNorm pass it skips cost 16% at m = 257 (seen on PoCL). */
#define MAX_LOSS_AT_ONE_M 0.05

/* The first m at which o is slower than best by more than MAX_LOSS_AT_ONE_M, or -1. */
static int loses_at(const sweep *sw, const outcome *o, const outcome *best)
{
    for (size_t mi = 0; mi < sw->p->n_m; mi++)
        if (forward_ms(sw, o->ms, mi) > forward_ms(sw, best->ms, mi) * (1.0 + MAX_LOSS_AT_ONE_M))
            return (int)mi;
    return -1;
}

static ks_status consider(sweep *sw, walk *w, const ke_cl_tunables *t, const char *how,
                          ke_gemm_sweep_result *out)
{
    const kc_device_info *dev = kc_context_device(sw->ctx);
    char text[256];
    ke_cl_tunables_format(t, text, sizeof text);
    if (!first_time(sw, t))
        return KS_OK;
    w->index++;
    if (ke_cl_tunables_check(t, dev->max_work_group_size) != KS_OK ||
        ke_cl_tunables_same_sums(t, &sw->base) != KS_OK) {
        out->skipped++;
        if (sw->p->log)
            fprintf(sw->p->log, "tune: [%d] %s: skipped: %s\n", w->index, how, ks_error_message());
        return KS_OK;
    }
    outcome *o = malloc(sizeof *o);
    if (!o)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    ks_status st = evaluate(sw, text, false, o);
    if (st == KS_OK) {
        out->measured++;
        const bool faster = !o->rejected && o->score < w->best_o.score * (1.0 - sw->p->min_gain);
        const int lost = faster ? loses_at(sw, o, &w->best_o) : -1;
        const bool wins = faster && lost < 0;
        char note[64] = "";
        if (wins)
            snprintf(note, sizeof note, " (best so far)");
        else if (lost >= 0)
            snprintf(note, sizeof note, " (not taken: %.0f%% slower at m = %zu)",
                     (forward_ms(sw, o->ms, (size_t)lost) /
                          forward_ms(sw, w->best_o.ms, (size_t)lost) -
                      1.0) *
                         100.0,
                     sw->p->m[lost]);
        log_line(sw, w->index, text, o, note);
        if (o->rejected) {
            out->rejected++;
            json_array_append_new(sw->rejected,
                                  json_pack("{s:s, s:s}", "tune", text, "why", o->why));
        } else {
            json_array_append_new(sw->measured, json_pack("{s:s, s:f}", "tune", text, "score",
                                                          round(o->score * 1e4) / 1e4));
        }
        if (wins) {
            w->best = *t;
            w->best_o = *o;
            snprintf(w->best_text, sizeof w->best_text, "%s", text);
        }
    }
    free(o);
    return st;
}

/* The candidates: p->candidates, or the device's grid axis by axis from the best so far. */
static ks_status walk_candidates(sweep *sw, walk *w, ke_gemm_sweep_result *out)
{
    const ke_gemm_sweep_params *p = sw->p;
    ks_status st = KS_OK;
    if (p->candidates) {
        for (size_t i = 0; p->candidates[i] && st == KS_OK; i++) {
            ke_cl_tunables t;
            if (p->max_candidates > 0 && out->measured > p->max_candidates)
                break;
            if (ke_cl_tunables_get(NULL, p->candidates[i], &t) != KS_OK) {
                out->skipped++;
                if (p->log)
                    fprintf(p->log, "tune: %s: skipped: %s\n", p->candidates[i],
                            ks_error_message());
                continue;
            }
            st = consider(sw, w, &t, p->candidates[i], out);
        }
        return st;
    }
    const bool cpu = kc_context_device(sw->ctx)->type & CL_DEVICE_TYPE_CPU;
    const size_t n_axes = cpu ? sizeof cpu_axes / sizeof cpu_axes[0]
                              : sizeof gpu_axes / sizeof gpu_axes[0];
    for (size_t a = 0; a < n_axes && st == KS_OK; a++) {
        const char *const *axis = cpu ? cpu_axes[a] : gpu_axes[a];
        if (!axis[0])
            axis = tiles_axis;
        char from[256];
        ke_cl_tunables_format(&w->best, from, sizeof from); /* this axis starts here */
        for (size_t i = 0; axis[i] && st == KS_OK; i++) {
            if (p->max_candidates > 0 && out->measured > p->max_candidates)
                return KS_OK;
            char text[512];
            ke_cl_tunables t;
            snprintf(text, sizeof text, "%s,%s", from, axis[i]);
            if (ke_cl_tunables_get(NULL, text, &t) != KS_OK)
                return ks_fail(KS_ERR_INVALID, "the tuner's own grid: %s", ks_error_message());
            st = consider(sw, w, &t, axis[i], out);
        }
    }
    return st;
}

static json_t *figures_json(const sweep *sw, const walk *w, const ke_gemm_sweep_result *out)
{
    json_t *shapes = json_array(), *ms = json_array();
    for (size_t s = 0; shapes && s < sw->p->n_shapes; s++) {
        const ke_gemm_shape *sh = &sw->p->shapes[s];
        json_array_append_new(shapes, json_pack("{s:s, s:I, s:I, s:i}", "name", sh->name, "n",
                                                (json_int_t)sh->n, "k", (json_int_t)sh->k, "count",
                                                sh->count));
    }
    for (size_t mi = 0; ms && mi < sw->p->n_m; mi++)
        json_array_append_new(ms, json_integer((json_int_t)sw->p->m[mi]));
    const kc_device_info *dev = kc_context_device(sw->ctx);
    return json_pack("{s:s, s:o, s:o, s:f, s:{s:s, s:o}, s:{s:s, s:f, s:o}, s:i, s:i, s:O, s:O}",
                     "device_type", kc_device_type_name(dev->type), "shapes", shapes, "m", ms,
                     "seconds", sw->p->seconds, "row", "tune", sw->base_text, "ms",
                     ms_json(sw, sw->base_ms), "best", "tune", w->best_text, "score",
                     round(w->best_o.score * 1e4) / 1e4, "ms", ms_json(sw, w->best_o.ms),
                     "measured", out->measured, "skipped", out->skipped, "scores", sw->measured,
                     "rejected", sw->rejected);
}

ks_status ke_gemm_sweep_run(kc_context *ctx, const ke_gemm_sweep_params *p,
                            ke_gemm_sweep_result *out)
{
    memset(out, 0, sizeof *out);
    if (!ctx || !p || !p->shapes || p->n_shapes == 0 || p->n_shapes > KE_GEMM_SWEEP_MAX_SHAPES ||
        !p->m || p->n_m == 0 || p->n_m > KE_GEMM_SWEEP_MAX_M || !(p->seconds >= 0))
        return ks_fail(KS_ERR_INVALID, "gemm sweep: no context, or 1..%d shapes and 1..%d m",
                       KE_GEMM_SWEEP_MAX_SHAPES, KE_GEMM_SWEEP_MAX_M);
    sweep *sw = calloc(1, sizeof *sw);
    walk *w = calloc(1, sizeof *w);
    ks_status st = KS_OK;
    if (!sw || !w) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    sw->ctx = ctx, sw->p = p;
    for (size_t mi = 0; mi < p->n_m; mi++) {
        if (p->m[mi] == 0 || p->m[mi] > (1u << 20)) {
            st = ks_fail(KS_ERR_INVALID, "gemm sweep: m %zu is not in 1..%u", p->m[mi], 1u << 20);
            goto cleanup;
        }
        sw->max_m = p->m[mi] > sw->max_m ? p->m[mi] : sw->max_m;
    }
    sw->measured = json_array(), sw->rejected = json_array();
    if (!sw->measured || !sw->rejected) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    ke_cl_tunables_get(kc_context_device(ctx), NULL, &sw->base);
    ke_cl_tunables_format(&sw->base, sw->base_text, sizeof sw->base_text);
    first_time(sw, &sw->base);
    if ((st = make_shapes(sw)) != KS_OK || (st = evaluate(sw, sw->base_text, true, &w->best_o)))
        goto cleanup;
    memcpy(sw->base_ms, w->best_o.ms, sizeof sw->base_ms);
    w->best = sw->base;
    snprintf(w->best_text, sizeof w->best_text, "%s", sw->base_text);
    out->measured = 1;
    log_line(sw, 0, sw->base_text, &w->best_o, " (the device's row)");
    if ((st = walk_candidates(sw, w, out)) != KS_OK)
        goto cleanup;
    snprintf(out->base, sizeof out->base, "%s", sw->base_text);
    snprintf(out->best, sizeof out->best, "%s", w->best_text);
    out->best_score = w->best_o.score;
    if (!(out->figures = figures_json(sw, w, out)))
        st = ks_fail(KS_ERR_NOMEM, "out of memory for the figures");
cleanup:
    if (sw) {
        free_shapes(sw);
        free(sw->seen);
        json_decref(sw->measured);
        json_decref(sw->rejected);
    }
    free(sw);
    free(w);
    if (st != KS_OK) {
        ke_gemm_sweep_result_fini(out);
        ks_error_prefix("gemm sweep");
    }
    return st;
}

void ke_gemm_sweep_result_fini(ke_gemm_sweep_result *r)
{
    json_decref(r->figures);
    memset(r, 0, sizeof *r);
}
