/* kosmos bench: the engine's speed figures (vision images/s, prefill and decode tokens/s,
 * end-to-end jobs/s with forced new tokens, peak memory) at several batch sizes on one device,
 * on a full-size model with seeded random weights (no files needed) or a checkpoint folder.
 * A program, not a test: tests/bench/compare.sh runs it next to tests/bench/hf_baseline.py and
 * prints the ratios. The same function is the slim `kosmos-bench` binary's main (no libvips,
 * no ZeroMQ), so this file uses only the engine and kosmos_common. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "backend_open.h"
#include "bench.h"
#include "cli.h"
#include "cli_args.h"
#include "model.h"
#include "model_random.h"

#define BENCH_MAX_BATCHES 32
#define BENCH_MAX_BATCH (1 << 16)

static const char bench_help[] =
    "usage: kosmos bench [--model DIR | --config full|tiny] [--batch 1,8,...[,max]]\n"
    "                    [--device SPEC] [--precision fp16|fp32|int8] [--kv-cache f32|f16]\n"
    "                    [--gemm-tune ROW[,KEY=VALUE...]] [--tune-db PATH | --no-tune-db]\n"
    "                    [--gemm auto|simt|mma-emulated|mma-ptx] [--repeats N] [--warmup N]\n"
    "                    [--new-tokens N] [--phases vision,prefill,decode,e2e] [--seed S]\n"
    "                    [--json] [--profile] [--attention flash|rows] [--vision-chunk N]\n"
    "\n"
    "Measures, at each batch size B (a fresh backend with B KV slots each time):\n"
    "  vision   images/s   the vision tower + resampler on B images\n"
    "  prefill  tokens/s   one forward of B prompts of 71 tokens (<s><image> 64 image rows\n"
    "                      </image><grounding>An image of)\n"
    "  decode   tokens/s   then N single-token steps of the B sequences (N = --new-tokens)\n"
    "  e2e      jobs/s     B jobs: pixels -> exactly N new tokens (min = max), greedy,\n"
    "                      no_repeat_ngram_size 3\n"
    "  peak     bytes      peak resident memory during the batch (weights included), and the\n"
    "                      device's own peak where the backend reports it\n"
    "Each figure is the median of --repeats timed runs after --warmup untimed ones. One JSON\n"
    "object per batch size on stdout (the keys of tests/bench/hf_baseline.py), a table and\n"
    "progress on stderr.\n"
    "\n"
    "  --model DIR         a Hugging Face checkpoint folder; default: random weights\n"
    "  --config C          the random model's shape: full (default: Kosmos2Config(), 1.66 B\n"
    "                      parameters) or tiny (tests/data/tiny-kosmos2's shape)\n"
    "  --batch LIST        batch sizes, default 1,8; a final 'max' keeps doubling the last\n"
    "                      size until a batch fails (out of memory), the largest that fits\n"
    "  --device SPEC       ref, cpu, gpu, an index or a name (as 'kosmos run')\n"
    "  --precision P       fp16 (default: weights stored as half), fp32, or int8 (the linear\n"
    "                      layers' weights as int8 with a scale per output channel)\n"
    "  --kv-cache T        f32 (default) or f16 (OpenCL devices: keys and values as half)\n"
    "  --gemm-tune T       OpenCL devices, for tuning: the matrix products' tunables from the\n"
    "                      row T names (cpu, nvidia or gpu) instead of the device's own,\n"
    "                      then KEY=VALUE overrides by name (rows_nt, rows_xk, rows_stage,\n"
    "                      rows_split, rows_cw, rows_vpw, w_panel, tile_m, tile_n, tile_k,\n"
    "                      wpt_m, wpt_n, rows_max_m, groups_goal, rows_order,\n"
    "                      ln_apart_m), e.g. cpu,rows_cw=8; docs/gemm.md. Ignored by\n"
    "                      --device ref\n"
    "  --tune-db PATH      OpenCL devices: the tuning database 'kosmos tune' writes; its entry\n"
    "                      for the device and driver replaces the built-in tunables (default:\n"
    "                      gemm-tune.json in the cache folder; --gemm-tune wins). Tuned\n"
    "                      tunables never change results; the JSON's \"tunables\" says which\n"
    "                      were used; docs/gemm.md, 'Tuning'\n"
    "  --no-tune-db        read no tuning database: the built-in tunables\n"
    "  --gemm PATH         OpenCL devices: the engine of the products with many rows (vision,\n"
    "                      prefill): auto (default: simt until the tensor-core engine's\n"
    "                      fidelity is measured on a GPU), simt, mma-emulated (tests: slow)\n"
    "                      or mma-ptx (NVIDIA tensor cores; fails when the device's probe\n"
    "                      does). The JSON's \"gemm\" says which ran and why; docs/gemm.md\n"
    "  --repeats N         timed runs per figure, default 3\n"
    "  --warmup N          untimed runs first, default 1\n"
    "  --new-tokens N      forced new tokens and decode steps, default 64\n"
    "  --phases LIST       what to measure, default vision,prefill,decode,e2e\n"
    "  --seed S            weights and pixels seed, default 0\n"
    "  --json              JSON lines only (no table, no progress)\n"
    "  --profile           OpenCL devices: after each batch, where the last timed run of each\n"
    "                      phase measured spent its device time, a table per phase (vision\n"
    "                      and prefill per pass over the batch, decode per step): per kernel,\n"
    "                      calls, device ms, share of the phase, GB/s and TFLOP/s achieved and\n"
    "                      share of the peaks probed on the device; for decode also launches\n"
    "                      per text layer and step, kernel arguments set, and the waits:\n"
    "                      inside a step (none should be) and for each step's ids (with the\n"
    "                      next step already queued); on stdout\n"
    "  --attention A       OpenCL devices: flash (default: kernels/flash_attention.cl for the\n"
    "                      vision encoder, the resampler and the prefill) or rows (one\n"
    "                      work-group per query row, as before it: for A/B runs)\n"
    "  --vision-chunk N    images one vision pass holds, 1..65536: B images run in passes of\n"
    "                      N, so the activations' memory is N images' (about 22 MB each for\n"
    "                      Kosmos-2) whatever B is (default: the device's, 32 on a GPU, 8 on\n"
    "                      a CPU; 'kosmos-worker --help'); for measuring what a chunk gains\n";

typedef struct bench_options {
    const char *model_dir, *config, *device;
    int batches[BENCH_MAX_BATCHES];
    int n_batches;
    bool batch_max;
    ke_dtype precision;
    ke_bench_params params;
    bool json_only;
} bench_options;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fputs("kosmos bench: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    return CLI_EXIT_USAGE;
}

/* "1,8,64[,max]" */
static bool parse_batches(const char *text, bench_options *o)
{
    char buf[512];
    if (strlen(text) >= sizeof buf)
        return false;
    strcpy(buf, text);
    o->n_batches = 0;
    o->batch_max = false;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->batch_max)
            return false; /* 'max' must come last */
        if (!strcmp(tok, "max")) {
            if (o->n_batches == 0)
                return false;
            o->batch_max = true;
            continue;
        }
        if (o->n_batches == BENCH_MAX_BATCHES ||
            !cli_parse_int(tok, 1, BENCH_MAX_BATCH, &o->batches[o->n_batches]))
            return false;
        o->n_batches++;
    }
    return o->n_batches > 0;
}

static bool parse_phases(const char *text, unsigned *out)
{
    char buf[128];
    if (strlen(text) >= sizeof buf)
        return false;
    strcpy(buf, text);
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {{"vision", KE_BENCH_VISION},
                 {"prefill", KE_BENCH_PREFILL},
                 {"decode", KE_BENCH_DECODE},
                 {"e2e", KE_BENCH_E2E},
                 {"all", KE_BENCH_ALL}};
    *out = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < sizeof names / sizeof names[0] && strcmp(tok, names[i].name))
            i++;
        if (i == sizeof names / sizeof names[0])
            return false;
        *out |= names[i].bit;
    }
    return *out != 0;
}

/* Returns CLI_EXIT_OK, -1 after --help, or the exit code of a usage error after printing it. */
static int parse_bench_options(int argc, char **argv, bench_options *o)
{
    enum {
        CONFIG = 256,
        BATCH,
        DEVICE,
        PRECISION,
        KV_CACHE,
        GEMM_TUNE,
        TUNE_DB,
        NO_TUNE_DB,
        GEMM,
        REPEATS,
        WARMUP,
        NEW_TOKENS,
        PHASES,
        SEED,
        JSON,
        PROFILE,
        ATTENTION,
        VISION_CHUNK
    };
    static const struct option options[] = {
        {"model", required_argument, NULL, 'm'},
        {"config", required_argument, NULL, CONFIG},
        {"batch", required_argument, NULL, BATCH},
        {"device", required_argument, NULL, DEVICE},
        {"precision", required_argument, NULL, PRECISION},
        {"kv-cache", required_argument, NULL, KV_CACHE},
        {"gemm-tune", required_argument, NULL, GEMM_TUNE},
        {"tune-db", required_argument, NULL, TUNE_DB},
        {"no-tune-db", no_argument, NULL, NO_TUNE_DB},
        {"gemm", required_argument, NULL, GEMM},
        {"repeats", required_argument, NULL, REPEATS},
        {"warmup", required_argument, NULL, WARMUP},
        {"new-tokens", required_argument, NULL, NEW_TOKENS},
        {"min-new-tokens", required_argument, NULL, NEW_TOKENS},
        {"phases", required_argument, NULL, PHASES},
        {"seed", required_argument, NULL, SEED},
        {"json", no_argument, NULL, JSON},
        {"profile", no_argument, NULL, PROFILE},
        {"attention", required_argument, NULL, ATTENTION},
        {"vision-chunk", required_argument, NULL, VISION_CHUNK},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (bench_options){.config = "full", .precision = KE_DTYPE_F16};
    o->batches[0] = 1;
    o->batches[1] = 8;
    o->n_batches = 2;
    ke_bench_params_default(&o->params);
    bool config_set = false;
    int option;
    optind = 1;
    while ((option = getopt_long(argc, argv, "+m:h", options, NULL)) != -1) {
        switch (option) {
        case 'm': o->model_dir = optarg; break;
        case CONFIG:
            if (strcmp(optarg, "full") && strcmp(optarg, "tiny"))
                return usage_error("--config is full or tiny, not '%s'", optarg);
            o->config = optarg;
            config_set = true;
            break;
        case BATCH:
            if (!parse_batches(optarg, o))
                return usage_error("--batch wants sizes in 1..%d separated by commas, "
                                   "optionally ending in 'max', not '%s'",
                                   BENCH_MAX_BATCH, optarg);
            break;
        case DEVICE: o->device = optarg; break;
        case PRECISION:
            if (!ke_precision_parse(optarg, &o->precision, &o->params.weights_int8))
                return usage_error("--precision is fp16, fp32 or int8, not '%s'", optarg);
            break;
        case KV_CACHE:
            if (!ke_kv_cache_parse(optarg, &o->params.kv_half))
                return usage_error("--kv-cache is f32 or f16, not '%s'", optarg);
            break;
        case GEMM_TUNE:
            if (ke_backend_gemm_tune_check(optarg) != KS_OK)
                return usage_error("%s", ks_error_message());
            o->params.gemm_tune = optarg;
            break;
        case TUNE_DB: o->params.tune_db = optarg; break;
        case NO_TUNE_DB: o->params.tune_db = ""; break;
        case GEMM:
            if (!ke_gemm_path_parse(optarg, &o->params.gemm))
                return usage_error("--gemm is auto, simt, mma-emulated or mma-ptx, not '%s'",
                                   optarg);
            break;
        case REPEATS:
            if (!cli_parse_int(optarg, 1, 1000, &o->params.repeats))
                return usage_error("--repeats wants an integer in 1..1000, not '%s'", optarg);
            break;
        case WARMUP:
            if (!cli_parse_int(optarg, 0, 1000, &o->params.warmup))
                return usage_error("--warmup wants an integer in 0..1000, not '%s'", optarg);
            break;
        case NEW_TOKENS:
            if (!cli_parse_int(optarg, 1, 1 << 16, &o->params.new_tokens))
                return usage_error("--new-tokens wants an integer >= 1, not '%s'", optarg);
            break;
        case PHASES:
            if (!parse_phases(optarg, &o->params.phases))
                return usage_error("--phases wants vision,prefill,decode,e2e (any of them), "
                                   "not '%s'",
                                   optarg);
            break;
        case SEED: {
            char *end;
            errno = 0;
            o->params.seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-')
                return usage_error("--seed wants a non-negative integer, not '%s'", optarg);
            break;
        }
        case JSON: o->json_only = true; break;
        case PROFILE: o->params.profile = true; break;
        case ATTENTION:
            if (strcmp(optarg, "flash") && strcmp(optarg, "rows"))
                return usage_error("--attention is flash or rows, not '%s'", optarg);
            o->params.no_flash_attention = !strcmp(optarg, "rows");
            break;
        case VISION_CHUNK:
            if (!cli_parse_int(optarg, 1, BENCH_MAX_BATCH, &o->params.vision_chunk))
                return usage_error("--vision-chunk wants an integer in 1..%d, not '%s'",
                                   BENCH_MAX_BATCH, optarg);
            break;
        case 'h': fputs(bench_help, stdout); return -1;
        default: return usage_error("see 'kosmos bench --help'");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (o->model_dir && config_set)
        return usage_error("--model and --config exclude each other");
    o->params.device = o->device;
    o->params.log = o->json_only ? NULL : stderr;
    return CLI_EXIT_OK;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int cmd_bench(int argc, char **argv)
{
    bench_options o;
    int rc = parse_bench_options(argc, argv, &o);
    if (rc != CLI_EXIT_OK)
        return rc < 0 ? CLI_EXIT_OK : rc;

    ke_model_options mo;
    ke_model_options_default(&mo);
    mo.storage = o.precision;
    ke_model *model = NULL;
    ke_config config;
    ks_status made;
    double t0 = now_s();
    if (o.model_dir) {
        made = ke_model_load(o.model_dir, &mo, &model);
    } else {
        if (!strcmp(o.config, "tiny"))
            ke_config_default_tiny(&config);
        else
            ke_config_default_full(&config);
        made = ke_model_new_random(&config, o.params.seed, &mo, &model);
    }
    if (made != KS_OK) {
        fprintf(stderr, "kosmos bench: %s\n", ks_error_message());
        return CLI_EXIT_USAGE;
    }
    ke_bench_labels labels = {.impl = "kosmos",
                              .config = o.model_dir ? o.model_dir : o.config,
                              .precision = ke_precision_name(o.precision, o.params.weights_int8),
                              .device = o.device ? o.device : "",
                              .params = ke_config_param_count(&model->config)};
    if (!o.json_only)
        fprintf(stderr, "bench: model %s ready in %.1f s (%llu parameters, %s weights)\n",
                labels.config, now_s() - t0, (unsigned long long)labels.params, labels.precision);

    ke_bench_result results[BENCH_MAX_BATCHES + 32];
    int n_results = 0;
    rc = CLI_EXIT_OK;
    for (int i = 0; i < o.n_batches + (o.batch_max ? 32 : 0); i++) {
        bool probing = i >= o.n_batches;
        int batch = probing ? results[n_results - 1].batch * 2 : o.batches[i];
        if (probing && (n_results == 0 || batch > BENCH_MAX_BATCH))
            break;
        ks_status st = ke_bench_run(model, &o.params, batch, &results[n_results]);
        if (st != KS_OK) {
            fprintf(stderr, "kosmos bench: %s%s\n", ks_error_message(),
                    probing ? " (the previous batch size is the largest that fits)" : "");
            if (!probing)
                rc = CLI_EXIT_FAILED;
            break;
        }
        ke_bench_print_json(stdout, &labels, &o.params, &results[n_results]);
        if (o.params.profile)
            ke_bench_print_profile(stdout, &results[n_results]);
        n_results++;
    }
    if (!o.json_only && n_results > 0)
        ke_bench_print_table(stderr, &labels, results, n_results);
    ke_model_destroy(&model);
    return rc;
}
