/* kw_cli: see kw_cli.h. kosmos-worker runs one worker process per compute device
 * (docs/protocol.md §8). Exit 0 after SIGTERM/SIGINT (running work finished and acknowledged,
 * the rest handed back), 1 for bad options, a model or device that cannot be opened or a broker
 * that refuses the worker for good, 3 when the device failed at run time. A broker that is full
 * only for now is retried, never an exit. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_open.h"
#include "ks_file.h"
#include "kw_cli.h"
#include "kw_log.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    if (stop_requested < 2)
        stop_requested++;
}

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: kosmos-worker --broker ENDPOINT --model DIR [--device SPEC] [--max-batch N]\n"
        "                     [--name NAME] [options]\n"
        "Runs Kosmos-2 for a kosmos-farm broker on one compute device: registers with the\n"
        "broker's worker endpoint, computes up to --max-batch jobs at once in one continuous\n"
        "batch (a job joins the running ones at the next decode step and leaves as soon as it\n"
        "ends; the prompts of a job share one vision pass) and returns each result until the\n"
        "broker confirms it is stored. Heartbeats come from their own thread, also while the\n"
        "device computes. Logs: one JSON object per line on stderr.\n"
        "SIGTERM/SIGINT: take no new work; the running sequences have --stop-grace seconds to\n"
        "finish, then each stops at its next decode step and its job is handed back with those\n"
        "not started (Disconnect: requeued at once, no penalty); wait for the results' acks,\n"
        "exit 0; a second signal exits at once. Exit 1: bad options, model/device failed to open, or the broker\n"
        "refused this worker for good (another protocol version, an invalid name or capacity,\n"
        "a CURVE key it does not know); 3: the device failed (its jobs are reported retriable\n"
        "and requeued by the broker). A broker that is full (--max-workers) is asked again\n"
        "with a backoff capped at --reconnect-max-ms: the worker never exits for that.\n"
        "\n"
        "  --broker EP              the broker's worker endpoint, tcp://HOST:5556 or ipc://PATH\n"
        "                           (required)\n"
        "  --model DIR              Hugging Face Kosmos-2 checkpoint folder (required)\n"
        "  --device SPEC            ref (plain C), cpu, gpu, an index or a name in 'kosmos devices'\n"
        "                           order (default: the first GPU, else the first OpenCL device,\n"
        "                           else ref)\n"
        "  --max-batch N            jobs computed at once, 1..1024 (default 4)\n"
        "  --prefetch N             jobs held beyond them, waiting for one to end, 0..1024\n"
        "                           (default a quarter of --max-batch, 1..64); the credit\n"
        "                           granted to the broker is --max-batch + --prefetch\n"
        "  --name NAME              worker name, unique per process (default HOSTNAME/DEVICE)\n"
        "  --slots N                KV-cache slots: sequences (beams) computed together; a\n"
        "                           prompt with more beams fails retriably (default 8)\n"
        "  --context N              tokens per slot, prompt + new tokens (default: the model's\n"
        "                           max_position_embeddings)\n"
        "  --kv-tokens N            KV-cache pool in tokens, for all slots together (OpenCL\n"
        "                           devices; default --slots x --context). A sequence reserves\n"
        "                           prompt + max_new_tokens + 1 tokens when it starts and\n"
        "                           waits while they do not fit, so with short outputs more\n"
        "                           slots run in the same memory. Sizing for a device: each\n"
        "                           token costs 2 x layers x embed_dim x 4 bytes (K and V in\n"
        "                           f32; Kosmos-2: 24 x 2048 -> 384 KiB), so N is about\n"
        "                           (free device memory after the weights) / that; then\n"
        "                           --slots about N / (typical prompt + new tokens), and\n"
        "                           --max-batch about --slots / (prompts x beams per job).\n"
        "                           docs/operations.md, 'Sizing a worker'\n"
        "  --kv-cache T             f32 (default) or f16: keys and values cached as half, half\n"
        "                           the bytes per token (192 KiB for Kosmos-2), so twice the\n"
        "                           --kv-tokens in the same memory (OpenCL devices); the same\n"
        "                           ids on every golden test, logits up to ~1e-3 further from\n"
        "                           the reference\n"
        "  --vision-chunk N         images one scheduler step encodes at most, in one pass on\n"
        "                           the device, 1..64 (default: the backend's for the device,\n"
        "                           32 on a GPU, 8 on a CPU, fewer where an eighth of the\n"
        "                           device's memory holds fewer). Larger raises the images/s\n"
        "                           of a burst of arrivals but delays the running sequences by\n"
        "                           one longer pass; each image of the pass holds about 22 MB\n"
        "                           of activations on the device (Kosmos-2), kept between\n"
        "                           passes. docs/operations.md, 'Sizing a worker'\n"
        "  --prefill-tokens N       prompt tokens one step feeds at most, 1..1048576 (default\n"
        "                           512): more lets a burst of new prompts start sooner, fewer\n"
        "                           keeps the running sequences' steps short; a longer prompt\n"
        "                           takes several steps\n"
        "  --gemm-tune T            OpenCL devices, for tuning: the matrix products' tunables\n"
        "                           from the row T names (cpu, nvidia or gpu) instead of the\n"
        "                           device's own, then KEY=VALUE overrides by name (rows_nt,\n"
        "                           rows_xk, rows_stage, rows_split, rows_cw, rows_vpw, w_panel,\n"
        "                           tile_m, tile_n, tile_k, wpt_m, wpt_n, rows_max_m,\n"
        "                           groups_goal, rows_order, ln_apart_m), e.g.\n"
        "                           cpu,rows_cw=8; docs/gemm.md. Ignored by --device ref\n"
        "  --tune-db PATH           OpenCL devices: the tuning database 'kosmos tune' writes;\n"
        "                           its entry for the device and driver replaces the built-in\n"
        "                           tunables (default: gemm-tune.json in the cache folder;\n"
        "                           --gemm-tune wins). Tuned tunables never change results;\n"
        "                           the 'started' log line says which were used. docs/gemm.md\n"
        "  --no-tune-db             read no tuning database: the built-in tunables\n"
        "  --precision P            fp16 (default: weights stored as half), fp32, or int8: the\n"
        "                           linear layers' weights as int8 with a scale per output\n"
        "                           channel, half their memory (about 1.5 GB less for\n"
        "                           Kosmos-2), ids may differ from fp16. docs/operations.md\n"
        "  --autorotate             apply the EXIF orientation (default off, as the reference\n"
        "                           and 'kosmos run')\n"
        "  --max-pixels N           images whose header claims more pixels, or a side over\n"
        "                           65535, fail (default 100000000). One image costs at most\n"
        "                           about 8 bytes per pixel while it is decoded (WebP; PNG and\n"
        "                           JPEG under 3, typically 0.5): docs/operations.md\n"
        "  --max-image-bytes N      largest image frame or image_uri file (default 67108864)\n"
        "  --image-root DIR         read an image_uri only beneath DIR, an absolute path\n"
        "                           (repeatable; default: the roots the broker's Welcome\n"
        "                           sends, its --image-root). The file is opened beneath the\n"
        "                           root by the kernel: a symlink out of it, a FIFO or a\n"
        "                           device fails the job; it never blocks the worker\n"
        "  --model-id ID            model id announced in Ready (default config.json's\n"
        "                           _name_or_path, else the folder's name)\n"
        "  --model-hash HEX         weights hash announced in Ready (default: SHA-256 of the\n"
        "                           safetensors files, computed at start)\n"
        "  --heartbeat-ms N         heartbeat interval until the broker's Welcome sets it\n"
        "                           (default 1000)\n"
        "  --heartbeat-liveness N   missed intervals before the broker counts as gone, until\n"
        "                           Welcome sets it (default 3)\n"
        "  --reconnect-max-ms N     cap of the reconnect backoff and of the wait after a\n"
        "                           broker that is full (default 30000)\n"
        "  --stop-timeout S         SIGTERM: longest wait for the running batch and its\n"
        "                           acknowledgements, seconds (default 120)\n"
        "  --stop-grace S           SIGTERM: how long running sequences may go on, seconds,\n"
        "                           at most --stop-timeout (default 60); then they stop at\n"
        "                           their next decode step and their jobs go back to the\n"
        "                           broker without a result and without penalty\n"
        "  --curve-secret FILE      this worker's secret certificate (CURVE on; with the next)\n"
        "  --curve-server-public FILE  the broker's public certificate\n"
        "  --log-level L            debug, info, warn, error (default info)\n"
        "  --help                   this text\n");
}

static int parse_num(const char *s, unsigned long long min, unsigned long long max,
                     unsigned long long *out)
{
    char *end;
    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

enum {
    O_BROKER = 256,
    O_MODEL,
    O_DEVICE,
    O_BATCH,
    O_NAME,
    O_SLOTS,
    O_CONTEXT,
    O_PREC,
    O_ROTATE,
    O_PIXELS,
    O_IMGB,
    O_MID,
    O_MHASH,
    O_HB,
    O_HL,
    O_RECON,
    O_STOP,
    O_CS,
    O_CP,
    O_LOG,
    O_HELP,
    O_ROOT,
    O_GRACE,
    O_PREFETCH,
    O_KV,
    O_KV_CACHE,
    O_GEMM_TUNE,
    O_VCHUNK,
    O_PREFILL,
    O_TUNE_DB,
    O_NO_TUNE_DB
};
static const struct option worker_options[] = {{"broker", required_argument, 0, O_BROKER},
                                               {"model", required_argument, 0, O_MODEL},
                                               {"device", required_argument, 0, O_DEVICE},
                                               {"max-batch", required_argument, 0, O_BATCH},
                                               {"name", required_argument, 0, O_NAME},
                                               {"slots", required_argument, 0, O_SLOTS},
                                               {"context", required_argument, 0, O_CONTEXT},
                                               {"precision", required_argument, 0, O_PREC},
                                               {"autorotate", no_argument, 0, O_ROTATE},
                                               {"max-pixels", required_argument, 0, O_PIXELS},
                                               {"max-image-bytes", required_argument, 0, O_IMGB},
                                               {"model-id", required_argument, 0, O_MID},
                                               {"model-hash", required_argument, 0, O_MHASH},
                                               {"heartbeat-ms", required_argument, 0, O_HB},
                                               {"heartbeat-liveness", required_argument, 0, O_HL},
                                               {"reconnect-max-ms", required_argument, 0, O_RECON},
                                               {"stop-timeout", required_argument, 0, O_STOP},
                                               {"curve-secret", required_argument, 0, O_CS},
                                               {"curve-server-public", required_argument, 0, O_CP},
                                               {"log-level", required_argument, 0, O_LOG},
                                               {"help", no_argument, 0, O_HELP},
                                               {"image-root", required_argument, 0, O_ROOT},
                                               {"stop-grace", required_argument, 0, O_GRACE},
                                               {"prefetch", required_argument, 0, O_PREFETCH},
                                               {"kv-tokens", required_argument, 0, O_KV},
                                               {"kv-cache", required_argument, 0, O_KV_CACHE},
                                               {"gemm-tune", required_argument, 0, O_GEMM_TUNE},
                                               {"vision-chunk", required_argument, 0, O_VCHUNK},
                                               {"prefill-tokens", required_argument, 0, O_PREFILL},
                                               {"tune-db", required_argument, 0, O_TUNE_DB},
                                               {"no-tune-db", no_argument, 0, O_NO_TUNE_DB},
                                               {0, 0, 0, 0}};

/* What one option did to the parameters. */
enum { OPT_OK, OPT_BAD_VALUE, OPT_HELP, OPT_FAILED };

/* Applies option c (of worker_options) with optarg to p; --image-root values go to roots (64). */
static int apply_option(int c, kw_worker_params *p, const char **roots)
{
    unsigned long long v = 0;
    int bad = 0;
    switch (c) {
    case O_BROKER: p->broker = optarg; break;
    case O_MODEL: p->engine.model_dir = optarg; break;
    case O_DEVICE: p->engine.device = optarg; break;
    case O_NAME:
        if (!optarg[0] || strlen(optarg) > 128)
            bad = 1;
        p->name = optarg;
        break;
    case O_BATCH:
        bad = parse_num(optarg, 1, 1024, &v);
        p->max_batch = (int)v;
        break;
    case O_PREFETCH:
        bad = parse_num(optarg, 0, 1024, &v);
        p->prefetch = (int)v;
        break;
    case O_KV:
        bad = parse_num(optarg, 1, 1ull << 32, &v);
        p->engine.kv_tokens = (size_t)v;
        break;
    case O_KV_CACHE: bad = !ke_kv_cache_parse(optarg, &p->engine.kv_half); break;
    case O_GEMM_TUNE:
        /* the parser's own message names the bad item, more than "bad value" would */
        if (ke_backend_gemm_tune_check(optarg) != KS_OK) {
            fprintf(stderr, "kosmos-worker: %s (see --help)\n", ks_error_message());
            return OPT_FAILED;
        }
        p->engine.gemm_tune = optarg;
        break;
    case O_VCHUNK:
        bad = parse_num(optarg, 1, KW_MAX_VISION_CHUNK, &v);
        p->engine.vision_chunk = (int)v;
        break;
    case O_PREFILL:
        bad = parse_num(optarg, 1, 1 << 20, &v);
        p->prefill_tokens = (int)v;
        break;
    case O_TUNE_DB: p->engine.tune_db = optarg; break;
    case O_NO_TUNE_DB: p->engine.tune_db = ""; break;
    case O_SLOTS:
        bad = parse_num(optarg, 1, 1024, &v);
        p->engine.slots = (int)v;
        break;
    case O_CONTEXT:
        bad = parse_num(optarg, 2, 1 << 20, &v);
        p->engine.context = (int)v;
        break;
    case O_PREC:
        bad = !ke_precision_parse(optarg, &p->engine.precision, &p->engine.weights_int8);
        break;
    case O_ROTATE: p->engine.autorotate = true; break;
    case O_PIXELS:
        bad = parse_num(optarg, 1, 1ull << 40, &v);
        p->engine.max_pixels = v;
        break;
    case O_IMGB:
        bad = parse_num(optarg, 1, 1ull << 34, &v);
        p->engine.max_image_bytes = (size_t)v;
        break;
    case O_MID:
        p->model_id = optarg;
        bad = !optarg[0] || strlen(optarg) > 128;
        break;
    case O_MHASH:
        p->model_hash = optarg;
        bad = !optarg[0] || strlen(optarg) > 64;
        break;
    case O_HB:
        bad = parse_num(optarg, 10, 3600000, &v);
        p->heartbeat_ms = (uint32_t)v;
        break;
    case O_HL:
        bad = parse_num(optarg, 1, 100, &v);
        p->heartbeat_liveness = (uint32_t)v;
        break;
    case O_RECON:
        bad = parse_num(optarg, 100, 3600000, &v);
        p->reconnect_max_ms = (uint32_t)v;
        break;
    case O_STOP:
        bad = parse_num(optarg, 0, 86400, &v);
        p->stop_timeout_ms = (uint32_t)(v * 1000);
        break;
    case O_GRACE:
        bad = parse_num(optarg, 0, 86400, &v);
        p->stop_grace_ms = (uint32_t)(v * 1000);
        break;
    case O_CS: p->curve_secret = optarg; break;
    case O_CP: p->curve_server = optarg; break;
    case O_LOG: {
        ks_log_level level;
        bad = !ks_log_level_parse(optarg, &level);
        if (!bad)
            kw_log_set_level(level);
        break;
    }
    case O_ROOT:
        bad = p->engine.n_image_roots == 64 || !ks_path_clean(optarg);
        if (!bad)
            roots[p->engine.n_image_roots++] = optarg;
        p->engine.image_roots = roots;
        break;
    case O_HELP: usage(stdout); return OPT_HELP;
    default: usage(stderr); return OPT_FAILED;
    }
    return bad ? OPT_BAD_VALUE : OPT_OK;
}

int kw_cli_main(int argc, char **argv, const kw_test_seams *test)
{
    const char *roots[64];
    kw_worker_params p;
    kw_worker_params_default(&p);
    if (test)
        p.test = *test;
    int c;
    while ((c = getopt_long(argc, argv, "", worker_options, NULL)) != -1) {
        int r = apply_option(c, &p, roots);
        if (r == OPT_HELP)
            return 0;
        if (r == OPT_FAILED)
            return KW_EXIT_CONFIG;
        if (r == OPT_BAD_VALUE) {
            fprintf(stderr, "kosmos-worker: bad value for --%s: '%s' (see --help)\n",
                    worker_options[c - O_BROKER].name, optarg);
            return KW_EXIT_CONFIG;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kosmos-worker: unexpected argument '%s'\n", argv[optind]);
        return KW_EXIT_CONFIG;
    }
    if (!p.broker || !p.engine.model_dir) {
        fprintf(stderr, "kosmos-worker: --broker and --model are required (see --help)\n");
        return KW_EXIT_CONFIG;
    }
    if ((p.curve_secret != NULL) != (p.curve_server != NULL)) {
        fprintf(stderr, "kosmos-worker: --curve-secret and --curve-server-public go together\n");
        return KW_EXIT_CONFIG;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return kw_worker_run(&p, &stop_requested);
}
