/* cl_gemm: the GEMM seam of the OpenCL engine (see cl_gemm.h): argument checks, the choice of
 * kernel per shape, and the per-device tunables. The kernels are kernels/gemm.cl; the numbers
 * behind the choices are in docs/gemm.md. CLBlast (optional, KOSMOS_HAVE_CLBLAST) is offered as
 * the variant "clblast" for f32 weights, for comparison; the automatic choice never uses it
 * (see docs/gemm.md for why). */
#include "cl_gemm.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kc_error.h"
#include "kc_program.h"

#ifdef KOSMOS_HAVE_CLBLAST
#include <clblast_c.h>
#endif

#define GEMM_FILE "gemm.cl"

/* Per-device tunables (the -D options of gemm.cl, documented there) and the crossover between
 * the small-m dot kernels and the tiled kernel, chosen from the device type and vendor. */
typedef struct gemm_tune {
    const char *label;
    int dot_vw, dot_lanes, dot_cols, dot_cpi, dot_max_r;
    int tile_m, tile_n, tile_k, wpt_m, wpt_n;
    size_t dot_max_m; /* m <= this: gemm_dot_rR; above: gemm_tiled */
} gemm_tune;

static const gemm_tune tune_table[] = {
    /* PoCL and other CPUs: one work-item streams 4 whole W rows (no lanes, no local memory)
       against up to 4 rows of X, float8 accumulators; the dot kernels for every m (gemm_tiled's
       local-memory tiles and barriers are 10-30x slower on PoCL). */
    {"cpu", 8, 1, 8, 4, 4, 64, 64, 16, 4, 4, SIZE_MAX},
    /* NVIDIA: a warp (32 lanes) per W row, coalesced 16-byte loads; 64x64 tiles, 4x4 per item. */
    {"nvidia", 8, 32, 4, 1, 8, 64, 64, 16, 4, 4, 16},
    /* other GPUs (AMD, Intel): 16 lanes per row. */
    {"gpu", 8, 16, 4, 1, 8, 64, 64, 16, 4, 4, 16},
};

static const gemm_tune *tune_for(const kc_device_info *dev)
{
    if (dev->type & CL_DEVICE_TYPE_CPU)
        return &tune_table[0];
    if (strstr(dev->vendor, "NVIDIA") || strstr(dev->platform_name, "NVIDIA"))
        return &tune_table[1];
    return &tune_table[2];
}

/* The developer switch KOSMOS_GEMM_TUNE="<label>[,key=value...]": the table row named
 * <label> ("cpu", "nvidia", "gpu") whatever the device, with fields overridden by name; for
 * tuning and for testing the GPU rows on PoCL. Bad text is an error (never silently ignored). */
/* The next comma-separated item of *cursor (NUL-terminated in place), or NULL at the end. */
static char *next_item(char **cursor)
{
    char *item = *cursor;
    if (!item)
        return NULL;
    char *comma = strchr(item, ',');
    if (comma)
        *comma = '\0';
    *cursor = comma ? comma + 1 : NULL;
    return item;
}

static ks_status tune_from_env(const char *text, gemm_tune *out)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", text);
    char *next = buf;
    char *tok = next_item(&next);
    bool found = false;
    for (size_t i = 0; tok && i < sizeof tune_table / sizeof tune_table[0]; i++)
        if (strcmp(tok, tune_table[i].label) == 0) {
            *out = tune_table[i];
            found = true;
        }
    if (!found)
        return ks_fail(KS_ERR_INVALID, "KOSMOS_GEMM_TUNE='%s': the first item must be cpu, "
                       "nvidia or gpu", text);
    static const struct {
        const char *key;
        size_t offset;
    } fields[] = {
        {"dot_vw", offsetof(gemm_tune, dot_vw)},       {"dot_lanes", offsetof(gemm_tune, dot_lanes)},
        {"dot_cols", offsetof(gemm_tune, dot_cols)},   {"dot_cpi", offsetof(gemm_tune, dot_cpi)},
        {"dot_max_r", offsetof(gemm_tune, dot_max_r)}, {"tile_m", offsetof(gemm_tune, tile_m)},
        {"tile_n", offsetof(gemm_tune, tile_n)},       {"tile_k", offsetof(gemm_tune, tile_k)},
        {"wpt_m", offsetof(gemm_tune, wpt_m)},         {"wpt_n", offsetof(gemm_tune, wpt_n)},
    };
    while ((tok = next_item(&next)) != NULL) {
        char *eq = strchr(tok, '=');
        char *end = NULL;
        long v = eq ? strtol(eq + 1, &end, 10) : 0;
        if (!eq || end == eq + 1 || *end || v < 1 || v > 4096)
            return ks_fail(KS_ERR_INVALID, "KOSMOS_GEMM_TUNE: bad item '%s'", tok);
        *eq = '\0';
        bool known = false;
        if (strcmp(tok, "dot_max_m") == 0) {
            out->dot_max_m = (size_t)v;
            known = true;
        }
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
            if (strcmp(tok, fields[i].key) == 0) {
                *(int *)((char *)out + fields[i].offset) = (int)v;
                known = true;
            }
        if (!known)
            return ks_fail(KS_ERR_INVALID, "KOSMOS_GEMM_TUNE: unknown tunable '%s'", tok);
    }
    return KS_OK;
}

typedef enum gemm_variant {
    V_SIMPLE = 0,
    V_DOT,
    V_TILED,
#ifdef KOSMOS_HAVE_CLBLAST
    V_CLBLAST,
#endif
    V_COUNT,
    V_AUTO = -1
} gemm_variant;

static const char *const variant_names[V_COUNT] = {"simple", "dot", "tiled",
#ifdef KOSMOS_HAVE_CLBLAST
                                                   "clblast"
#endif
};

/* The dot kernels by R: gemm_dot_r1, _r2, _r4, _r8 (those up to dot_max_r exist). */
#define DOT_RS 4
static const int dot_r[DOT_RS] = {1, 2, 4, 8};

/* One build of gemm.cl (per weight dtype) and its kernels, owned by the context. */
typedef struct gemm_prog {
    kc_program *prog;
    cl_kernel simple, tiled;
    cl_kernel dot[DOT_RS]; /* NULL above dot_max_r */
} gemm_prog;

struct ke_cl_gemm {
    kc_context *ctx; /* borrowed */
    gemm_tune tune;
    gemm_prog p[2]; /* [ke_dtype] */
    int forced;     /* gemm_variant or V_AUTO */
    char last[48];
};

size_t ke_cl_gemm_variant_count(void)
{
    return V_COUNT;
}

const char *ke_cl_gemm_variant_name(size_t i)
{
    return i < V_COUNT ? variant_names[i] : NULL;
}

ks_status ke_cl_gemm_force(ke_cl_gemm *g, const char *name)
{
    if (!g)
        return ks_fail(KS_ERR_INVALID, "gemm: no gemm");
    if (!name) {
        g->forced = V_AUTO;
        return KS_OK;
    }
    for (int v = 0; v < V_COUNT; v++)
        if (strcmp(name, variant_names[v]) == 0) {
            g->forced = v;
            return KS_OK;
        }
    return ks_fail(KS_ERR_INVALID, "gemm: no variant '%s'", name);
}

static ks_status build(ke_cl_gemm *g, ke_dtype dt)
{
    const gemm_tune *t = &g->tune;
    char opts[512];
    snprintf(opts, sizeof opts,
             "-DWEIGHT_HALF=%d -DDOT_VW=%d -DDOT_LANES=%d -DDOT_COLS=%d -DDOT_CPI=%d "
             "-DDOT_MAX_R=%d -DTILE_M=%d -DTILE_N=%d -DTILE_K=%d -DWPT_M=%d -DWPT_N=%d",
             dt == KE_DTYPE_F16 ? 1 : 0, t->dot_vw, t->dot_lanes, t->dot_cols, t->dot_cpi,
             t->dot_max_r, t->tile_m, t->tile_n, t->tile_k, t->wpt_m, t->wpt_n);
    gemm_prog *p = &g->p[dt];
    ks_status st = kc_program_get(g->ctx, GEMM_FILE, opts, &p->prog);
    if (st == KS_OK)
        st = kc_program_kernel(p->prog, "gemm_simple", &p->simple);
    if (st == KS_OK)
        st = kc_program_kernel(p->prog, "gemm_tiled", &p->tiled);
    for (int i = 0; i < DOT_RS && st == KS_OK && dot_r[i] <= t->dot_max_r; i++) {
        char name[32];
        snprintf(name, sizeof name, "gemm_dot_r%d", dot_r[i]);
        st = kc_program_kernel(p->prog, name, &p->dot[i]);
    }
    return st;
}

ke_cl_gemm *ke_cl_gemm_new(kc_context *ctx)
{
    if (!ctx) {
        ks_fail(KS_ERR_INVALID, "ke_cl_gemm_new: no context");
        return NULL;
    }
    ke_cl_gemm *g = calloc(1, sizeof *g);
    if (!g) {
        ks_fail(KS_ERR_NOMEM, "ke_cl_gemm_new: out of memory");
        return NULL;
    }
    g->ctx = ctx;
    g->tune = *tune_for(kc_context_device(ctx));
    g->forced = V_AUTO;
    snprintf(g->last, sizeof g->last, "none");
    const char *env = getenv("KOSMOS_GEMM_TUNE");
    if ((env && *env && tune_from_env(env, &g->tune) != KS_OK) || build(g, KE_DTYPE_F32) != KS_OK ||
        build(g, KE_DTYPE_F16) != KS_OK) {
        ks_error_prefix("ke_cl_gemm_new");
        free(g);
        return NULL;
    }
    return g;
}

void ke_cl_gemm_destroy(ke_cl_gemm **g)
{
    if (!g || !*g)
        return;
    /* programs and kernels belong to the context */
    free(*g);
    *g = NULL;
}

const char *ke_cl_gemm_last_variant(const ke_cl_gemm *g)
{
    return g ? g->last : "none";
}

/* True when elements [off, off + count) of `elem` bytes lie inside `buf`. */
static bool fits(cl_mem buf, size_t off, size_t count, size_t elem)
{
    size_t bytes = 0;
    if (clGetMemObjectInfo(buf, CL_MEM_SIZE, sizeof bytes, &bytes, NULL) != CL_SUCCESS)
        return false;
    size_t cap = bytes / elem;
    return off <= cap && count <= cap - off;
}

static ks_status check(const ke_cl_gemm_args *a)
{
    if (!a->x || !a->w || !a->y)
        return ks_fail(KS_ERR_INVALID, "gemm: x, w and y are required");
    if (a->w_dtype != KE_DTYPE_F32 && a->w_dtype != KE_DTYPE_F16)
        return ks_fail(KS_ERR_INVALID, "gemm: unknown weight dtype %d", (int)a->w_dtype);
    if (a->ldx < a->k || a->ldy < a->n)
        return ks_fail(KS_ERR_INVALID, "gemm: ldx %zu < k %zu or ldy %zu < n %zu", a->ldx, a->k,
                       a->ldy, a->n);
    if (a->m > INT32_MAX || a->n > INT32_MAX || a->k > INT32_MAX || a->ldx > INT32_MAX ||
        a->ldy > INT32_MAX)
        return ks_fail(KS_ERR_INVALID, "gemm: sizes above 2^31 (m %zu n %zu k %zu)", a->m, a->n,
                       a->k);
    const size_t wsz = a->w_dtype == KE_DTYPE_F16 ? 2 : 4;
    /* extents: the last row needs only its own k (or n) elements, not a full stride */
    if (!fits(a->x, a->x_offset, (a->m - 1) * a->ldx + a->k, sizeof(float)))
        return ks_fail(KS_ERR_INVALID, "gemm: x (m %zu, k %zu, ldx %zu, offset %zu) exceeds its "
                       "buffer", a->m, a->k, a->ldx, a->x_offset);
    if (!fits(a->w, a->w_offset, a->n * a->k, wsz))
        return ks_fail(KS_ERR_INVALID, "gemm: w (n %zu, k %zu, offset %zu) exceeds its buffer",
                       a->n, a->k, a->w_offset);
    if (a->bias && !fits(a->bias, a->bias_offset, a->n, wsz))
        return ks_fail(KS_ERR_INVALID, "gemm: bias (n %zu, offset %zu) exceeds its buffer", a->n,
                       a->bias_offset);
    if (!fits(a->y, a->y_offset, (a->m - 1) * a->ldy + a->n, sizeof(float)))
        return ks_fail(KS_ERR_INVALID, "gemm: y (m %zu, n %zu, ldy %zu, offset %zu) exceeds its "
                       "buffer", a->m, a->n, a->ldy, a->y_offset);
    return KS_OK;
}

/* Sets the arguments common to every kernel of gemm.cl (GEMM_ARGS there). */
static ks_status set_args(cl_kernel kern, const ke_cl_gemm_args *a)
{
    ks_status status = KS_OK;
    cl_int m = (cl_int)a->m, n = (cl_int)a->n, k = (cl_int)a->k;
    cl_int ldx = (cl_int)a->ldx, ldy = (cl_int)a->ldy;
    cl_ulong xo = a->x_offset, wo = a->w_offset, bo = a->bias_offset, yo = a->y_offset;
    cl_int has_bias = a->bias != NULL, acc = a->accumulate;
    cl_mem bias = a->bias; /* NULL: the kernel sees a NULL pointer and has_bias 0 */
    cl_uint i = 0;
    KC_CHECK(clSetKernelArg(kern, i++, sizeof m, &m));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof n, &n));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof k, &k));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof(cl_mem), &a->x));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof xo, &xo));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof ldx, &ldx));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof(cl_mem), &a->w));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof wo, &wo));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof(cl_mem), bias ? &bias : NULL));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof bo, &bo));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof has_bias, &has_bias));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof(cl_mem), &a->y));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof yo, &yo));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof ldy, &ldy));
    KC_CHECK(clSetKernelArg(kern, i++, sizeof acc, &acc));
cleanup:
    return status;
}

static size_t ceil_div(size_t v, size_t d)
{
    return (v + d - 1) / d;
}

#ifdef KOSMOS_HAVE_CLBLAST
/* Y = X·Wᵀ (+ Y) through CLBlastSgemm (f32 W only); a bias is not supported by Sgemm and is
 * refused (the comparison in bench_cl_gemm runs without bias). */
static ks_status run_clblast(ke_cl_gemm *g, const ke_cl_gemm_args *a)
{
    if (a->w_dtype != KE_DTYPE_F32 || a->bias)
        return ks_fail(KS_ERR_UNSUPPORTED,
                       "gemm: the clblast variant takes f32 weights and no bias");
    cl_command_queue q = kc_context_queue(g->ctx);
    CLBlastStatusCode s = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo,
                                       CLBlastTransposeYes, a->m, a->n, a->k, 1.0f, a->x,
                                       a->x_offset, a->ldx, a->w, a->w_offset, a->k,
                                       a->accumulate ? 1.0f : 0.0f, a->y, a->y_offset, a->ldy,
                                       &q, NULL);
    if (s != CLBlastSuccess)
        return ks_fail(KS_ERR_DEVICE, "CLBlastSgemm (m %zu, n %zu, k %zu) failed: status %d",
                       a->m, a->n, a->k, (int)s);
    snprintf(g->last, sizeof g->last, "clblast");
    return KS_OK;
}
#endif

ks_status ke_cl_gemm_run(ke_cl_gemm *g, const ke_cl_gemm_args *a)
{
    if (!g || !a)
        return ks_fail(KS_ERR_INVALID, "gemm: no gemm or arguments");
    if (a->m == 0 || a->n == 0)
        return KS_OK;
    ks_status status = check(a);
    if (status != KS_OK)
        return status;
    const gemm_tune *t = &g->tune;
    const gemm_prog *p = &g->p[a->w_dtype];
    int v = g->forced;
    if (v == V_AUTO)
        v = a->m <= t->dot_max_m ? V_DOT : V_TILED;
#ifdef KOSMOS_HAVE_CLBLAST
    if (v == V_CLBLAST)
        return run_clblast(g, a);
#endif

    cl_kernel kern = NULL;
    char name[32];
    size_t global[2], local[2];
    if (v == V_DOT) {
        /* the smallest R that covers m in one pass, else the largest (several passes) */
        int ri = 0;
        while (ri + 1 < DOT_RS && p->dot[ri + 1] && (size_t)dot_r[ri] < a->m)
            ri++;
        const size_t cols = (size_t)(t->dot_cpi * t->dot_cols);
        kern = p->dot[ri];
        snprintf(name, sizeof name, "gemm_dot_r%d", dot_r[ri]);
        local[0] = (size_t)(t->dot_lanes * t->dot_cols);
        local[1] = 1;
        global[0] = ceil_div(a->n, cols) * local[0];
        global[1] = ceil_div(a->m, (size_t)dot_r[ri]);
    } else if (v == V_TILED) {
        kern = p->tiled;
        snprintf(name, sizeof name, "gemm_tiled");
        local[0] = (size_t)(t->tile_n / t->wpt_n);
        local[1] = (size_t)(t->tile_m / t->wpt_m);
        global[0] = ceil_div(a->n, (size_t)t->tile_n) * local[0];
        global[1] = ceil_div(a->m, (size_t)t->tile_m) * local[1];
    } else {
        kern = p->simple;
        snprintf(name, sizeof name, "gemm_simple");
        local[0] = 16;
        local[1] = 4;
        global[0] = ceil_div(a->n, local[0]) * local[0];
        global[1] = ceil_div(a->m, local[1]) * local[1];
    }
    status = set_args(kern, a);
    if (status != KS_OK)
        goto cleanup;
    KC_CHECK(clEnqueueNDRangeKernel(kc_context_queue(g->ctx), kern, 2, NULL, global, local, 0,
                                    NULL, NULL));
    snprintf(g->last, sizeof g->last, "ours:%s", name + strlen("gemm_"));
cleanup:
    if (status != KS_OK)
        ks_error_prefix("%s (m %zu, n %zu, k %zu, %s)", name, a->m, a->n, a->k,
                        a->w_dtype == KE_DTYPE_F16 ? "f16" : "f32");
    return status;
}
