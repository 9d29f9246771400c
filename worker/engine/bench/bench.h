/* ke_bench: the engine's speed figures on one device, as `kosmos bench` and the slim
 * `kosmos-bench` print them and tests/bench/hf_baseline.py measures them for transformers:
 *
 *   vision   images/s  encode_images on B images (vision tower + resampler)
 *   prefill  tokens/s  one forward of B prompts of the real prompt length (71 tokens:
 *                      <s><image> 64 image rows </image><grounding>An image of), image rows in
 *   decode   tokens/s  B sequences after that prefill, one token each per step (greedy: on
 *                      the device with select_greedy where the backend has it, else argmax of
 *                      the host logits), new_tokens steps: B * new_tokens / their time
 *   e2e      jobs/s    B jobs from pixels to new_tokens forced new tokens (min = max), greedy
 *                      with no_repeat_ngram 3 as the real model decodes: B / time
 *   memory   bytes     peak resident memory of the process during the batch (host RSS: the
 *                      weights, KV cache and scratch), and the device memory the backend
 *                      holds (ke_backend_stats.device_bytes) where it has any
 *
 * Each figure is the median of `repeats` timed runs on a monotonic clock, after `warmup`
 * untimed ones. Not a test: nothing here checks results beyond the forced token count. */
#ifndef KE_BENCH_H
#define KE_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "ks_error.h"
#include "model.h"

enum {
    KE_BENCH_VISION = 1,
    KE_BENCH_PREFILL = 2,
    KE_BENCH_DECODE = 4,
    KE_BENCH_E2E = 8,
    KE_BENCH_ALL = 15
};

typedef struct ke_bench_params {
    const char *device;       /* --device SPEC for ke_backend_open, borrowed; NULL = default */
    int repeats;              /* timed runs per figure, default 3 (the median is reported) */
    int warmup;               /* untimed runs first, default 1 */
    int new_tokens;           /* forced new tokens (e2e) and decode steps, default 64 */
    int no_repeat_ngram_size; /* e2e, default 3 (the real checkpoint's generation config) */
    unsigned phases;          /* KE_BENCH_* bits, default KE_BENCH_ALL */
    uint64_t seed;            /* the random pixels, default 0 */
    FILE *log;                /* progress lines (one per run), or NULL, default NULL */
    bool profile;          /* OpenCL: profile the last timed run of each phase (ke_bench_profile) */
    bool kv_half;          /* the KV cache in half precision (ke_backend_options.kv_half) */
    const char *gemm_tune; /* ke_backend_options.gemm_tune (--gemm-tune), borrowed; NULL */
    const char *tune_db;   /* ke_backend_options.tune_db (--tune-db), borrowed; NULL: the
                          * default database, "": none */
    bool no_flash_attention; /* ke_backend_options.no_flash_attention (A/B runs) */
    ke_gemm_path gemm;       /* the large products' engine (ke_backend_options.gemm) */
    bool weights_int8;       /* int8 linear weights (ke_backend_options.weights_int8) */
    int vision_chunk;        /* images per vision pass (ke_backend_options.vision_chunk);
                              * 0 = the device's default */
} ke_bench_params;

void ke_bench_params_default(ke_bench_params *p);

/* One row of a profile: a kernel (or a wait) within a scope ("vision", "text layer", ...). */
typedef struct ke_bench_profile_row {
    char scope[24], name[40];
    bool is_wait;
    double calls_per_step;
    double busy_share;  /* waits: the share made with later work queued */
    double ms_per_step; /* device time (0 without a timed queue) */
    double gbytes_per_s, tflops_per_s;
    double roofline; /* the larger of bandwidth and arithmetic share of the probed peaks */
} ke_bench_profile_row;

#define KE_BENCH_PROFILE_ROWS 48

/* The phases with a profile, the index into ke_bench_result.profiles. */
typedef enum ke_bench_profiled {
    KE_BENCH_PROFILE_VISION,
    KE_BENCH_PROFILE_PREFILL,
    KE_BENCH_PROFILE_DECODE,
    KE_BENCH_PROFILED
} ke_bench_profiled;

/* What a phase's last timed run did (kosmos bench --profile), per unit: per decode step for
 * decode (`steps` of them), per pass (steps = 1) for vision and prefill, where one pass over
 * the batch is what is timed. The launch and wait figures below are per unit too; the decode
 * ones are what issue 15's acceptance reads. */
typedef struct ke_bench_profile {
    bool valid;
    ke_bench_profiled phase;
    int steps, layers;
    double device_ms;                             /* all launches' device time per unit */
    double launches_per_step, launches_per_layer; /* per text layer and step */
    double args_set_per_step;                     /* clSetKernelArg calls */
    double waits_in_steps;   /* blocking calls made while a step was being enqueued */
    double waits_between;    /* waits for a step's ids (outside the enqueueing) */
    double waits_busy_share; /* ... of which the device had the next step queued */
    double peak_gbytes_per_s, peak_tflops;
    int n_rows;
    ke_bench_profile_row rows[KE_BENCH_PROFILE_ROWS];
} ke_bench_profile;

/* One batch size's figures. A phase left out has its seconds and rate < 0. */
typedef struct ke_bench_result {
    int batch;
    int prompt_tokens;
    int new_tokens;
    char device_name[128];
    double vision_s, prefill_s, decode_s, e2e_s; /* median seconds of one run over the batch */
    double vision_images_per_s, prefill_tokens_per_s, decode_tokens_per_s, e2e_jobs_per_s;
    size_t peak_host_bytes;   /* peak RSS during this batch (weights included) */
    bool peak_host_per_batch; /* false: the process's peak so far (could not reset it) */
    size_t peak_device_bytes; /* device memory the backend holds at the end (its stats);
                               * 0: none or the backend cannot tell */
    char gemm[1024];          /* the large products' engine and why (ke_backend_stats.gemm) */
    char tunables[768];       /* where the GEMM's tunables came from (ke_backend_stats) */
    int vision_chunk;         /* images per vision pass (ke_backend.vision_chunk) */
    ke_bench_profile profiles[KE_BENCH_PROFILED]; /* params.profile on an OpenCL device */
} ke_bench_result;

/* The benchmark prompt for `config` (len = latent_query_num + 7, 71 for Kosmos-2): the ids the
 * processor gives "<grounding>An image of" and its image mask. ids and mask hold len entries;
 * returns len. */
size_t ke_bench_prompt(const ke_config *config, int32_t *ids, uint8_t *mask, size_t cap);

/* Runs the phases of `p` at batch size `batch` on a backend opened for it (batch slots) and
 * fills *out. Fails with the backend's status and message (a device that cannot be opened,
 * out of memory at that batch size, ...). `model` is borrowed. */
ks_status ke_bench_run(const ke_model *model, const ke_bench_params *p, int batch,
                       ke_bench_result *out);

/* Labels for the output lines, borrowed. */
typedef struct ke_bench_labels {
    const char *impl;      /* "kosmos" */
    const char *config;    /* "full", "tiny" or the --model folder */
    const char *precision; /* "fp16" / "fp32" / "int8" (ke_precision_name) */
    const char *device;    /* the --device spec as given ("" = default) */
    uint64_t params;       /* parameter count */
} ke_bench_labels;

/* One JSON object on one line, the keys tests/bench/hf_baseline.py prints too. */
void ke_bench_print_json(FILE *out, const ke_bench_labels *labels, const ke_bench_params *p,
                         const ke_bench_result *r);

/* The profiles of one result as tables, a phase each; nothing for a phase without one. */
void ke_bench_print_profile(FILE *out, const ke_bench_result *r);

/* A human table of all results (header included). */
void ke_bench_print_table(FILE *out, const ke_bench_labels *labels, const ke_bench_result *r,
                          int n);

#endif
