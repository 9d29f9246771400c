/* ke_cl_gemm: the one GEMM seam of the OpenCL engine (kernels/gemm.cl). Every matrix product of
 * the model goes through it, with what comes before and after it fused in:
 *
 *   Y (m, n) = epilogue(LN(X) (m, k) · W)     W held transposed on the device (ke_cl_weight)
 *   epilogue: + bias, activation, + Y (residual); and, for the fused Q/K/V projection, K and V
 *             written into the KV cache rows instead of Y; optionally Y's row statistics for
 *             the next LayerNorm (kernels/common.cl)
 *
 * Every output is computed in one canonical order (gemm.cl): a row's result is the same bits
 * whatever m is and whichever kernel ran, so continuous batching cannot change a sequence's ids.
 * The order depends on the device and the layer's (n, k) only (the chunking, ke_cl_gemm_chunk).
 *
 * X and Y are f32; weights, bias and LayerNorm parameters are of the model's storage dtype, or
 * the weights int8 with a scale per output column (KE_DTYPE_I8, quant.h) and the rest half.
 * Offsets and leading dimensions are in elements. Buffers are borrowed. Not thread-safe (one
 * thread drives a context). */
#ifndef KE_CL_GEMM_H
#define KE_CL_GEMM_H

#include <stdbool.h>
#include <stddef.h>

#include "backend.h"
#include "cl_gemm_mma.h"
#include "kc_context.h"
#include "kc_program.h"
#include "ks_error.h"
#include "model.h"

typedef struct ke_cl_gemm ke_cl_gemm;

/* Columns per statistics block of the rows GEMMs write (STAT_SB of kernels/common.cl). */
#define KE_CL_STAT_SB 32

/* A weight matrix in gemm.cl's layout: Wt (k, ldw), row i holding W[:, i] (ldw >= n, a multiple
 * of 8, zero-padded), row-major (panel 0) or, on devices whose work-items stream their own
 * columns (CPUs), in panels of `panel` columns each stored as a contiguous (k, panel) block;
 * and the bias (n) or NULL, both of `dtype` - except KE_DTYPE_I8: Wt holds int8 codes, `scale`
 * (n) f32 the scale of each column, and the bias is half (as the LayerNorm parameters of the
 * products that use it). Several nn.Linear may be concatenated along n (the fused Q/K/V
 * projection). The buffers belong to the context. */
typedef struct ke_cl_weight {
    cl_mem w, bias;
    cl_mem scale; /* KE_DTYPE_I8 only, else NULL */
    size_t n, k, ldw, panel;
    ke_dtype dtype;
    size_t chunk_len; /* the canonical chunking for this shape on this device (set at upload) */
} ke_cl_weight;

/* Uploads the concatenation (along the output dimension) of n_parts weights, each (n_i, k) row
 * major as nn.Linear stores it, transposed into one ke_cl_weight of `dtype`, with their biases
 * (absent ones are zero; all absent: no bias). The parts may be f32 or f16 whatever `dtype` is:
 * they are converted (KE_DTYPE_I8: quantized per output row, quant.h, the first upload building
 * the int8 kernels) and written through a bounded host buffer (a few MiB whatever the matrix),
 * never a whole host copy. *bytes (may be NULL) gets the device bytes. */
ks_status ke_cl_weight_upload(ke_cl_gemm *g, ke_dtype dtype, const ke_tensor *const *w_parts,
                              const ke_tensor *const *b_parts, int n_parts, const char *name,
                              ke_cl_weight *out, size_t *bytes);

/* Where element (i, c) of a (k, ldw) weight in panels of `panel` columns (0: row-major) lives,
 * in elements: gemm.cl's weight_index. */
static inline size_t ke_cl_weight_index(size_t k, size_t ldw, size_t panel, size_t i, size_t c)
{
    return panel ? (c / panel) * k * panel + i * panel + c % panel : i * ldw + c;
}

/* Converts n elements of src (of src_dtype) to dst (of dst_dtype), f32 and f16 either way, as
 * torch's .half() rounds (not KE_DTYPE_I8, which takes a scale: quant.h). */
void ke_convert(void *dst, ke_dtype dst_dtype, const void *src, ke_dtype src_dtype, size_t n);

typedef struct ke_cl_gemm_args {
    size_t m;
    const ke_cl_weight *w;
    cl_mem x;
    size_t x_offset, ldx; /* ldx >= k */
    cl_mem gather;        /* (m) cl_int: row r of X is row gather[r] of x; NULL: row r */
    /* LayerNorm in front (ln_stats NULL: none): X's row statistics (blocks of ln_sb columns,
     * indexed by X's row), weight and bias (k) of the storage dtype, eps */
    cl_mem ln_stats, ln_w, ln_b;
    size_t ln_sb;
    float ln_eps;
    cl_mem y;
    size_t y_offset, ldy; /* ldy >= n (or >= split_q) */
    int act;              /* ke_activation, or -1 */
    bool accumulate;      /* Y = Y + result: the residual connection */
    cl_mem stats_out;     /* (m, ceil(n / KE_CL_STAT_SB)) cl_float2, or NULL */
    /* The fused Q/K/V projection: split_q > 0 sends columns [q, 2q) and [2q, 3q) to rows
     * tokrow[r].x (cl_int4) of kpool and vpool (rows of q values; half when kv_half) */
    size_t split_q;
    cl_mem kpool, vpool, tokrow;
    bool kv_half;
} ke_cl_gemm_args;

/* The tunables of gemm.cl (docs/gemm.md, "Tunables"): its -D options, the largest m the rows
 * kernel serves, and the parallelism the chunking aims for. A row of the table in cl_gemm.c by
 * device type and vendor, or one named by --gemm-tune text, with that text's overrides. */
typedef struct ke_cl_tunables {
    const char *label; /* the table row: "cpu", "nvidia" or "gpu" (static storage) */
    int rows_nt, rows_xk, rows_stage, rows_split, rows_cw, rows_vpw, w_panel;
    int tile_m, tile_n, tile_k, wpt_m, wpt_n;
    int rows_max_m;  /* m <= this: gemm_rowsR; above: gemm_tiles */
    int groups_goal; /* GPUs: enough groups per product; 0 = one chunk (CPUs) */
    int rows_order;  /* gemm_rowsR's groups in row blocks first (1, CPUs) or columns first */
    int ln_apart_m;  /* m above this: a LayerNorm prologue runs as a pass of its own */
} ke_cl_tunables;

/* The tunables of `dev`'s row, or, when `tune` is not NULL or "", of the row it names with its
 * overrides (dev may then be NULL). KS_ERR_INVALID as ke_cl_gemm_tune_check. */
ks_status ke_cl_tunables_get(const kc_device_info *dev, const char *tune, ke_cl_tunables *out);

/* `t` as --gemm-tune text that names every tunable ("cpu,rows_nt=8,...,groups_goal=0"), which
 * ke_cl_tunables_get reads back to the same values (truncated to len - 1 characters). */
void ke_cl_tunables_format(const ke_cl_tunables *t, char *buf, size_t len);

/* KS_OK when `t` cuts k into the chunks `base` cuts it into for every (n, k) on any one device
 * (ke_cl_gemm_chunk): then every kernel computes the same canonical sums under both, so the
 * results are the same bits (docs/gemm.md, "One sum, whatever the batch"). KS_ERR_INVALID
 * naming the tunable that changes the chunking (groups_goal, the columns a rows group covers,
 * tile_k) otherwise. A tuner proposes only candidates that pass, against the device's row. */
ks_status ke_cl_tunables_same_sums(const ke_cl_tunables *t, const ke_cl_tunables *base);

/* For tuners: KS_OK when `t` meets gemm.cl's constraints (its #error lines) and its groups fit
 * `max_wg` work-items (0: no limit); else KS_ERR_INVALID naming the constraint. The build
 * checks them again; this only spares a tuner the builds that would fail. */
ks_status ke_cl_tunables_check(const ke_cl_tunables *t, size_t max_wg);

/* Builds (or loads from the program cache) kernels/gemm.cl for both storage dtypes (the int8
 * program waits for the first int8 upload) with the device's tunables (docs/gemm.md), or with
 * those `tune` names when it is not NULL or "": the text of --gemm-tune (ke_cl_gemm_tune_check), borrowed for the call. *out: caller owns.
 * `ctx` is borrowed and must outlive the gemm. KS_ERR_INVALID (no context, a bad `tune`),
 * KS_ERR_DEVICE (a failed build: the message names the file and log), KS_ERR_NOMEM; *out is
 * then NULL. */
ks_status ke_cl_gemm_new(kc_context *ctx, const char *tune, ke_cl_gemm **out);

/* Checks a tunables text "<row>[,key=value...]" without a device: row cpu, nvidia or gpu (a
 * row of the table whatever the device), then tunables by name (docs/gemm.md). KS_OK for NULL
 * or "" (the device's own row); KS_ERR_INVALID with a message naming the bad item. */
ks_status ke_cl_gemm_tune_check(const char *tune);
void ke_cl_gemm_destroy(ke_cl_gemm **g);

/* Chooses the engine of the products with more than KE_CL_MMA_MIN_M rows (docs/gemm.md,
 * "Paths"): auto runs the device probe on NVIDIA GPUs and takes mma-ptx, with f16 weights, when
 * it passes (elsewhere, and for f32 weights, gemm.cl's SIMT kernels); simt, mma-emulated and
 * mma-ptx force theirs (the matrix-unit engine then serves both weight dtypes). Without a call:
 * simt. Fails only for a forced path that cannot run: KS_ERR_UNSUPPORTED with the probe's
 * report, KS_ERR_DEVICE when the engine does not build. Either way ke_cl_gemm_path_report
 * says what runs and why. */
ks_status ke_cl_gemm_set_path(ke_cl_gemm *g, ke_gemm_path path);

/* The matrix-unit engine's variant while a path has it on, else NULL: what the vision
 * attention's matrix-unit kernel is built as (ke_cl_flash_use_mma). Borrowed. */
const ke_mma_variant *ke_cl_gemm_mma_variant(const ke_cl_gemm *g);

/* The path in use and why, one line for logs and `kosmos bench` ("simt: ...", "mma-ptx: the
 * 16x8x16 probe matched with ..."). Borrowed until the next ke_cl_gemm_set_path. */
const char *ke_cl_gemm_path_report(const ke_cl_gemm *g);

/* For tests and benchmarks: the matrix-unit engine built as `variant`, without a probe, serving
 * the products above KE_CL_MMA_MIN_M rows of both dtypes (NULL: off, the SIMT kernels). */
ks_status ke_cl_gemm_use_mma(ke_cl_gemm *g, const ke_mma_variant *variant);

/* The canonical chunk length of the products with this (n, k) on this device. */
size_t ke_cl_gemm_chunk(const ke_cl_gemm *g, size_t n, size_t k);

/* A launch site: its own kernel objects with their arguments remembered, for a product that
 * runs again and again (a decoder layer's projections, every step): a launch then sets only
 * what changed (usually just m). Owned by the gemm's context. */
typedef struct ke_cl_gemm_site ke_cl_gemm_site;

ks_status ke_cl_gemm_site_new(ke_cl_gemm *g, const char *name, ke_cl_gemm_site **out);

/* Enqueues the product on the context's queue (no wait), profiled under `name` (a literal).
 * m = 0 enqueues nothing. Buffer extents are checked. KS_ERR_INVALID on inconsistent sizes,
 * KS_ERR_DEVICE with the kernel name and sizes when the device refuses. */
ks_status ke_cl_gemm_run(ke_cl_gemm *g, ke_cl_gemm_site *site, const ke_cl_gemm_args *args,
                         const char *name);

/* Which kernel ran last ("rows4", "tiles", "rows8 x4 chunks"; "none" before the first run), for
 * benchmarks and notes. Borrowed until the next run. */
const char *ke_cl_gemm_last_variant(const ke_cl_gemm *g);

/* For tests and benchmarks: the kernel families ("rows", "tiles"), by index < count (static
 * storage; NULL out of range). */
size_t ke_cl_gemm_variant_count(void);
const char *ke_cl_gemm_variant_name(size_t i);

/* For tests and benchmarks: later runs use the family `name` whatever m is, until called again
 * (NULL: the automatic choice); `split` (when >= 0) forces chunks to run in groups of their own
 * (1) or in one group (0) where the rows kernel runs. "mma", not among the families, names the
 * matrix-unit engine while a path has it on. KS_ERR_INVALID for an unknown name. */
ks_status ke_cl_gemm_force(ke_cl_gemm *g, const char *name, int split);

/* For tests: the chunk length of later uploads (0: the device's own rule). */
void ke_cl_gemm_force_chunk(ke_cl_gemm *g, size_t chunk_len);

#endif
