/* kosmos tune: sweeps the GEMM tunables on one OpenCL device (worker/engine/bench/gemm_sweep.h)
 * and records the winner in the tuning database (worker/engine/gemm_tune_db.h) that the OpenCL
 * backend reads at start. This file parses options, opens the device and prints; the sweep and
 * the database are the engine's. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_args.h"

#ifdef KOSMOS_HAVE_OPENCL
#include "gemm_sweep.h"
#include "gemm_tune_db.h"
#include "kc_cache.h"
#include "kc_context.h"
#include "kc_device.h"
#include "model_random.h"
#endif

#define TUNE_MAX_TRY 32

static const char tune_help[] =
    "usage: kosmos tune [--device SPEC] [--config full|tiny] [--m 1,8,64,257] [--seconds S]\n"
    "                   [--max-candidates N] [--try ROW[,KEY=VALUE...]]... [--seed S]\n"
    "                   [--db PATH] [--print]\n"
    "\n"
    "Finds the fastest GEMM tunables for one OpenCL device and records them in the tuning\n"
    "database, whose entry for the device and driver 'kosmos run', 'kosmos bench' and\n"
    "kosmos-worker then use instead of the built-in row (--gemm-tune still wins; --no-tune-db\n"
    "reads none). docs/gemm.md, 'Tuning'.\n"
    "\n"
    "It measures the device's built-in row, then candidates one axis at a time from the best so\n"
    "far (CPUs: rows_cw/rows_vpw/w_panel, rows_nt, rows_order, ln_apart_m, rows_max_m, the\n"
    "tiles; GPUs: rows_nt x\n"
    "rows_cw, rows_xk, rows_split, rows_stage, rows_max_m, the tiles), each with the real GEMM on\n"
    "the model's products (text q/k/v, out_proj, fc1, fc2, lm_head; vision q/k/v, out_proj,\n"
    "fc1, fc2) with random weights, at each m. A candidate runs only if it keeps the row's\n"
    "chunking of k, and is rejected unless every output equals the row's bit for bit: tuned\n"
    "tunables never change a result. Its score is its time over the row's for one forward's\n"
    "products, averaged over the m's; it must win by 2% to replace the best so far. A line per\n"
    "candidate on stderr (its tunables, ms per shape summed over the m's, the score), the\n"
    "result on stdout.\n"
    "\n"
    "  --device SPEC        cpu, gpu, an index or a name, as 'kosmos devices' lists them\n"
    "                       (default: the first GPU, else the first OpenCL device)\n"
    "  --config C           the products' shapes: full (default: Kosmos-2) or tiny\n"
    "                       (tests/data/tiny-kosmos2's, for quick checks)\n"
    "  --m LIST             rows of every product, default 1,8,64,257 (decode at batch 1 and 8,\n"
    "                       a prefill, one image's patches); at most 16 values\n"
    "  --seconds S          timing per candidate, shared by its products (default 0.5; each\n"
    "                       product runs at least 3 times)\n"
    "  --max-candidates N   stop after N candidates besides the row (default: the whole grid)\n"
    "  --try T              measure these tunables (repeatable) instead of the grid\n"
    "  --seed S             the random operands' seed, default 0\n"
    "  --db PATH            the database to update (default: gemm-tune.json in the cache\n"
    "                       folder: $KOSMOS_CACHE_DIR, $XDG_CACHE_HOME/kosmos or\n"
    "                       ~/.cache/kosmos); other devices' entries are kept\n"
    "  --print              only print the result; write nothing\n"
    "\n"
    "Exit status: 0 done, 1 the device or the database failed, 2 usage error.\n";

typedef struct tune_options {
    const char *device, *config, *db;
    size_t m[16];
    size_t n_m;
    double seconds;
    int max_candidates;
    const char *try_list[TUNE_MAX_TRY + 1];
    int n_try;
    unsigned long long seed;
    bool print_only;
} tune_options;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fputs("kosmos tune: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    return CLI_EXIT_USAGE;
}

/* "1,8,64" */
static bool parse_m(const char *text, tune_options *o)
{
    char buf[256];
    if (strlen(text) >= sizeof buf)
        return false;
    strcpy(buf, text);
    o->n_m = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int v;
        if (o->n_m == sizeof o->m / sizeof o->m[0] || !cli_parse_int(tok, 1, 1 << 20, &v))
            return false;
        o->m[o->n_m++] = (size_t)v;
    }
    return o->n_m > 0;
}

/* Returns CLI_EXIT_OK, -1 after --help, or the exit code of a usage error after printing it. */
static int parse_tune_options(int argc, char **argv, tune_options *o)
{
    enum { DEVICE = 256, CONFIG, M, SECONDS, MAX_CANDIDATES, TRY, SEED, DB, PRINT };
    static const struct option options[] = {
        {"device", required_argument, NULL, DEVICE},
        {"config", required_argument, NULL, CONFIG},
        {"m", required_argument, NULL, M},
        {"seconds", required_argument, NULL, SECONDS},
        {"max-candidates", required_argument, NULL, MAX_CANDIDATES},
        {"try", required_argument, NULL, TRY},
        {"seed", required_argument, NULL, SEED},
        {"db", required_argument, NULL, DB},
        {"print", no_argument, NULL, PRINT},
        {"dry-run", no_argument, NULL, PRINT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (tune_options){.config = "full", .seconds = 0.5, .m = {1, 8, 64, 257}, .n_m = 4};
    int option;
    optind = 1;
    while ((option = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
        switch (option) {
        case DEVICE: o->device = optarg; break;
        case CONFIG:
            if (strcmp(optarg, "full") && strcmp(optarg, "tiny"))
                return usage_error("--config is full or tiny, not '%s'", optarg);
            o->config = optarg;
            break;
        case M:
            if (!parse_m(optarg, o))
                return usage_error("--m wants 1 to 16 row counts in 1..%d separated by commas, "
                                   "not '%s'",
                                   1 << 20, optarg);
            break;
        case SECONDS:
            if (!cli_parse_double(optarg, &o->seconds) || o->seconds < 0 || o->seconds > 3600)
                return usage_error("--seconds wants a number in 0..3600, not '%s'", optarg);
            break;
        case MAX_CANDIDATES:
            if (!cli_parse_int(optarg, 1, 100000, &o->max_candidates))
                return usage_error("--max-candidates wants an integer >= 1, not '%s'", optarg);
            break;
        case TRY:
            if (o->n_try == TUNE_MAX_TRY)
                return usage_error("at most %d --try", TUNE_MAX_TRY);
            o->try_list[o->n_try++] = optarg;
            break;
        case SEED: {
            char *end;
            errno = 0;
            o->seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-')
                return usage_error("--seed wants a non-negative integer, not '%s'", optarg);
            break;
        }
        case DB:
            if (!*optarg)
                return usage_error("--db wants a path");
            o->db = optarg;
            break;
        case PRINT: o->print_only = true; break;
        case 'h': fputs(tune_help, stdout); return -1;
        default: return usage_error("see 'kosmos tune --help'");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (o->device && !strcmp(o->device, "ref"))
        return usage_error("--device ref has no GEMM tunables: tune an OpenCL device");
    return CLI_EXIT_OK;
}

#ifdef KOSMOS_HAVE_OPENCL

/* The database path (caller frees), and the database itself when it will be written: a
 * database that cannot be read is an error here, before the sweep, never overwritten. */
static int open_db(const tune_options *o, char **path, ke_tune_db **db)
{
    char *root = NULL;
    *db = NULL;
    if (o->db) {
        *path = strdup(o->db);
    } else if (kc_cache_root(&root) == KS_OK) {
        *path = ke_tune_db_default_path(root);
        free(root);
    } else {
        fprintf(stderr, "kosmos tune: %s; name one with --db\n", ks_error_message());
        return CLI_EXIT_FAILED;
    }
    if (!*path) {
        fprintf(stderr, "kosmos tune: out of memory\n");
        return CLI_EXIT_FAILED;
    }
    if (!o->print_only && ke_tune_db_load(*path, db, NULL) != KS_OK) {
        fprintf(stderr, "kosmos tune: %s; not overwritten (move it away or pick --db)\n",
                ks_error_message());
        return CLI_EXIT_FAILED;
    }
    return CLI_EXIT_OK;
}

static int run_tune(const tune_options *o)
{
    kc_device_list *list = NULL;
    kc_context *ctx = NULL;
    ke_tune_db *db = NULL;
    char *path = NULL;
    ke_gemm_sweep_result result = {0};
    int rc = CLI_EXIT_FAILED;
    size_t index = 0;
    if (open_db(o, &path, &db) != CLI_EXIT_OK)
        goto done;
    ks_error_clear();
    if (kc_device_list_new(&list) != KS_OK ||
        (o->device ? kc_device_list_select(list, o->device, &index) != KS_OK
                   : kc_device_list_default(list) < 0)) {
        fprintf(stderr, "kosmos tune: %s\n",
                *ks_error_message() ? ks_error_message() : "no OpenCL device");
        goto done;
    }
    if (!o->device)
        index = (size_t)kc_device_list_default(list);
    const kc_device_info *dev = kc_device_list_get(list, index);
    kc_context_params cp;
    kc_context_params_init(&cp);
    if (kc_context_new(dev, &cp, &ctx) != KS_OK) {
        fprintf(stderr, "kosmos tune: %s\n", ks_error_message());
        goto done;
    }
    ke_config config;
    if (!strcmp(o->config, "tiny"))
        ke_config_default_tiny(&config);
    else
        ke_config_default_full(&config);
    ke_gemm_shape shapes[KE_GEMM_SWEEP_MAX_SHAPES];
    ke_gemm_sweep_params p;
    ke_gemm_sweep_params_default(&p);
    p.shapes = shapes;
    p.n_shapes = ke_gemm_sweep_shapes(&config, shapes, KE_GEMM_SWEEP_MAX_SHAPES);
    p.m = o->m, p.n_m = o->n_m;
    p.seconds = o->seconds;
    p.max_candidates = o->max_candidates;
    p.candidates = o->n_try ? o->try_list : NULL;
    p.seed = o->seed;
    p.log = stderr;
    char m_text[200] = "";
    for (size_t i = 0, at = 0; i < o->n_m && at < sizeof m_text; i++)
        at += (size_t)snprintf(m_text + at, sizeof m_text - at, "%s%zu", i ? "," : "", o->m[i]);
    fprintf(stderr, "tune: device %zu '%s' (%s, driver %s), config %s, m %s\n", index, dev->name,
            dev->platform_name, dev->driver_version, o->config, m_text);
    if (ke_gemm_sweep_run(ctx, &p, &result) != KS_OK) {
        fprintf(stderr, "kosmos tune: %s\n", ks_error_message());
        goto done;
    }
    printf("device: %s (%s, driver %s)\n", dev->name, dev->platform_name, dev->driver_version);
    printf("measured %d, rejected %d, skipped %d\n", result.measured, result.rejected,
           result.skipped);
    printf("row:  %s\n", result.base);
    printf("best: %s (%.3f of the row's time)\n", result.best, result.best_score);
    if (o->print_only) {
        printf("not written (--print)\n");
        rc = CLI_EXIT_OK;
        goto done;
    }
    json_object_set_new(result.figures, "config", json_string(o->config));
    const ke_tune_key key = {dev->platform_name, dev->name, dev->driver_version};
    json_t *figures = result.figures;
    result.figures = NULL; /* the database takes it */
    if (ke_tune_db_set(db, &key, result.best, NULL, figures) != KS_OK ||
        ke_tune_db_save(db, path) != KS_OK) {
        fprintf(stderr, "kosmos tune: %s\n", ks_error_message());
        goto done;
    }
    printf("written: %s (entry for %s)\n", path, dev->name);
    rc = CLI_EXIT_OK;
done:
    ke_gemm_sweep_result_fini(&result);
    ke_tune_db_destroy(&db);
    free(path);
    kc_context_destroy(&ctx);
    kc_device_list_destroy(&list);
    return rc;
}

#endif

int cmd_tune(int argc, char **argv)
{
    tune_options o;
    int rc = parse_tune_options(argc, argv, &o);
    if (rc != CLI_EXIT_OK)
        return rc < 0 ? CLI_EXIT_OK : rc;
#ifdef KOSMOS_HAVE_OPENCL
    return run_tune(&o);
#else
    fprintf(stderr, "kosmos tune: this build has no OpenCL, whose GEMM it tunes\n");
    return CLI_EXIT_FAILED;
#endif
}
