/* ke_gemm_sweep: the tuner behind `kosmos tune` (docs/gemm.md, "Tuning"). On one OpenCL
 * device it measures candidate GEMM tunables (cl_gemm.h) on the model's product shapes with
 * the real ke_cl_gemm, and names the fastest, in the manner of CLBlast's tuners:
 *
 *   - the candidates: the device's built-in row first (the reference), then a grid per device
 *     kind (CPUs: columns per work-item and panels, work-items per group, the rows/tiles
 *     crossover; GPUs also the staging depth, the split, the tiles), walked one axis at a time
 *     from the best so far (coordinate descent, one pass);
 *   - a candidate is measured only when gemm.cl accepts it (ke_cl_tunables_check) and it keeps
 *     the row's chunking of k (ke_cl_tunables_same_sums), so that it computes the same
 *     canonical sums; others are skipped with the reason;
 *   - each measured candidate's outputs (Y and Y's row statistics, the decoder's fused
 *     LayerNorm, bias, GELU and residual included) must equal the row's bit for bit on every
 *     shape and m, or it is rejected: the proof, per device and driver, that tuning cannot
 *     change a result;
 *   - its time per (shape, m) is the median wall time of single products (enqueue to finish);
 *     its score is the mean over the m's of (its time / the row's time) for one forward's
 *     products at that m (each shape weighted by how often a forward runs it), so decode (m 1,
 *     8) counts as much as prefill and vision; it replaces the best so far only when faster by
 *     min_gain (timing noise on a shared machine).
 * Not here: the database it fills (gemm_tune_db.h), the command line (client/cli/cmd_tune.c).
 * A program's tool, not the engine's: in kosmos_engine_bench, which the worker does not link. */
#ifndef KE_GEMM_SWEEP_H
#define KE_GEMM_SWEEP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kc_context.h"
#include "ks_error.h"
#include "model_config.h"

/* One product shape of the model: Y (m, n) = epilogue(LN(X) (m, k) W^T). */
typedef struct ke_gemm_shape {
    char name[16];   /* "t_qkv", "t_out", "t_fc1", "t_fc2", "lm_head", "v_qkv", ... */
    size_t n, k;     /* W (n, k) */
    int count;       /* products of this shape in one forward (its layers) */
    int act;         /* ke_activation after the bias (fc1), or -1 */
    bool accumulate; /* Y += ... (the residual after out_proj and fc2) */
} ke_gemm_shape;

#define KE_GEMM_SWEEP_MAX_SHAPES 16
#define KE_GEMM_SWEEP_MAX_M 16

/* The linear products of a model of shape `config`: the text decoder's fused q/k/v, out_proj,
 * fc1, fc2 and the lm_head, the vision encoder's fused q/k/v, out_proj, fc1 and fc2. Returns how
 * many were written (at most cap). */
size_t ke_gemm_sweep_shapes(const ke_config *config, ke_gemm_shape *out, size_t cap);

typedef struct ke_gemm_sweep_params {
    const ke_gemm_shape *shapes; /* borrowed; n_shapes <= KE_GEMM_SWEEP_MAX_SHAPES */
    size_t n_shapes;
    const size_t *m; /* rows to measure each shape at, borrowed; n_m <= KE_GEMM_SWEEP_MAX_M */
    size_t n_m;
    double seconds;     /* timing per candidate, shared by its measurements (default 0.5; each
                        * measurement runs at least 3 times whatever it is) */
    int max_candidates; /* candidates measured besides the row; 0 = the whole grid (default) */
    const char *const *candidates; /* instead of the grid: these texts (--gemm-tune syntax),
                                    * NULL-terminated, borrowed; NULL = the grid */
    double min_gain;   /* share a candidate must gain on the best so far (default 0.02) */
    uint64_t seed;     /* the random operands (default 0) */
    FILE *log;         /* a line per candidate, or NULL */
    size_t test_chunk; /* tests only: candidates (not the row) chunk k by this
                         * (ke_cl_gemm_force_chunk), so that their sums differ; 0 = off */
} ke_gemm_sweep_params;

void ke_gemm_sweep_params_default(ke_gemm_sweep_params *p);

typedef struct ke_gemm_sweep_result {
    char base[256];    /* the device's row, every tunable named */
    char best[256];    /* the winner, every tunable named (base when nothing beat it) */
    double best_score; /* the winner's time relative to the row's (1: the row itself) */
    int measured;      /* candidates measured, the row included */
    int rejected;      /* ... whose build failed or whose outputs differed from the row's */
    int skipped;       /* candidates not measured: refused by a check (reason in the log) */
    json_t *figures;   /* owned: what the database keeps with the entry (shapes, m, each
                        * measured candidate's ms and score, the rejections) */
} ke_gemm_sweep_result;

/* Runs the sweep on ctx's device (borrowed) and fills *out (ke_gemm_sweep_result_fini).
 * Fails (KS_ERR_INVALID for bad params, KS_ERR_DEVICE / KS_ERR_NOMEM when the row itself cannot
 * be built or measured) with *out empty; a candidate's failure only rejects it. */
ks_status ke_gemm_sweep_run(kc_context *ctx, const ke_gemm_sweep_params *p,
                            ke_gemm_sweep_result *out);

void ke_gemm_sweep_result_fini(ke_gemm_sweep_result *r);

#endif
