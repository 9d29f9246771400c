/* kosmos-broker: the command line around kb_broker (options, signals, exit codes). Exit 0
 * after SIGTERM/SIGINT, 1 for bad options or a failed start, 2 when the store failed at run
 * time (fail-stop; the next start recovers), 3 when another broker holds the database (its
 * lock file, kb_store.h). */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kb_broker.h"
#include "kb_job.h"
#include "kb_metrics.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: kosmos-broker [options]\n"
        "The kosmos-farm job broker: durable queue (SQLite), ZeroMQ endpoints for clients\n"
        "and workers, credit-based dispatch, leases fenced by attempt numbers.\n"
        "Logs: one JSON object per line on stderr. SIGTERM/SIGINT: stop intake, exit 0.\n"
        "Exit 1: bad options or a failed start; 2: the database failed at run time;\n"
        "3: another kosmos-broker holds the database (one broker per --db: an exclusive\n"
        "lock on PATH.lock, held for the broker's life).\n"
        "\n"
        "  --client-endpoint EP     client ROUTER endpoint (default tcp://*:5555)\n"
        "  --worker-endpoint EP     worker ROUTER endpoint (default tcp://*:5556)\n"
        "  --db PATH                SQLite database (default kosmos-broker.db; WAL files and\n"
        "                           the lock file PATH.lock beside it)\n"
        "  --max-message-bytes N    protobuf frame limit (default 8388608)\n"
        "  --max-image-bytes N      image frame / inline image limit (default 67108864)\n"
        "  --max-queued N           non-terminal jobs before submits get busy (default 100000)\n"
        "  --max-client-jobs N      non-terminal jobs per client identity (default 10000)\n"
        "  --heartbeat-ms N         heartbeat interval, both ways (default 1000)\n"
        "  --heartbeat-liveness N   missed heartbeats before a worker is dead (default 3)\n"
        "  --max-job-seconds N      cap on one attempt's compute time, from the heartbeat that\n"
        "                           reports it started: then Cancel and a crash (default 600);\n"
        "                           a job queued in a live worker is not capped\n"
        "  --max-waiters N          long polls held at once (default 10000)\n"
        "  --max-workers N          worker registrations (default 1024)\n"
        "  --batch N                messages per endpoint per cycle, one commit (default 256)\n"
        "  --retention-days N       job records, keys, unacked results kept (default 7)\n"
        "  --default-max-new-tokens N  set on dispatch when a job leaves it unset (default 128)\n"
        "  --image-root DIR         allow image_uri under the absolute path DIR, by whole\n"
        "                           components (repeatable; default none: image_uri refused)\n"
        "  --curve-secret FILE      broker secret certificate (CURVE on; needs both below)\n"
        "  --client-keys DIR        public certificates of allowed clients\n"
        "  --worker-keys DIR        public certificates of allowed workers\n"
        "  --metrics HOST:PORT      serve Prometheus metrics on http://HOST:PORT/metrics\n"
        "                           (IPv4 address or name, * = all; port 0 = any free;\n"
        "                           default off; needs a build with libmicrohttpd)\n"
        "  --log-level L            debug, info, warn, error (default info)\n"
        "  --help                   this text\n");
}

static int parse_u64(const char *s, unsigned long long *out)
{
    char *end;
    if (!s || !*s || *s == '-')
        return -1;
    *out = strtoull(s, &end, 10);
    return *end ? -1 : 0;
}

int main(int argc, char **argv)
{
    enum {
        O_CEP = 256,
        O_WEP,
        O_DB,
        O_MSG,
        O_IMG,
        O_MQ,
        O_MC,
        O_HB,
        O_HL,
        O_MJ,
        O_MW,
        O_MWK,
        O_BATCH,
        O_RET,
        O_DMNT,
        O_ROOT,
        O_CS,
        O_CK,
        O_WK,
        O_LOG,
        O_HELP,
        O_METRICS
    };
    static const struct option opts[] = {{"client-endpoint", required_argument, 0, O_CEP},
                                         {"worker-endpoint", required_argument, 0, O_WEP},
                                         {"db", required_argument, 0, O_DB},
                                         {"max-message-bytes", required_argument, 0, O_MSG},
                                         {"max-image-bytes", required_argument, 0, O_IMG},
                                         {"max-queued", required_argument, 0, O_MQ},
                                         {"max-client-jobs", required_argument, 0, O_MC},
                                         {"heartbeat-ms", required_argument, 0, O_HB},
                                         {"heartbeat-liveness", required_argument, 0, O_HL},
                                         {"max-job-seconds", required_argument, 0, O_MJ},
                                         {"max-waiters", required_argument, 0, O_MW},
                                         {"max-workers", required_argument, 0, O_MWK},
                                         {"batch", required_argument, 0, O_BATCH},
                                         {"retention-days", required_argument, 0, O_RET},
                                         {"default-max-new-tokens", required_argument, 0, O_DMNT},
                                         {"image-root", required_argument, 0, O_ROOT},
                                         {"curve-secret", required_argument, 0, O_CS},
                                         {"client-keys", required_argument, 0, O_CK},
                                         {"worker-keys", required_argument, 0, O_WK},
                                         {"log-level", required_argument, 0, O_LOG},
                                         {"help", no_argument, 0, O_HELP},
                                         {"metrics", required_argument, 0, O_METRICS},
                                         {0, 0, 0, 0}};
    kb_params p;
    kb_params_init(&p);
    const char *roots[64];
    size_t nroots = 0;
    const char *metrics_address = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        unsigned long long v = 0;
        int numeric = c >= O_MSG && c <= O_DMNT;
        if (numeric && (parse_u64(optarg, &v) != 0 || v == 0 || v > 0xFFFFFFFFull * 1024)) {
            fprintf(stderr, "kosmos-broker: bad number for --%s: %s\n", opts[c - O_CEP].name,
                    optarg);
            return 1;
        }
        switch (c) {
        case O_CEP: p.client_endpoint = optarg; break;
        case O_WEP: p.worker_endpoint = optarg; break;
        case O_DB: p.db_path = optarg; break;
        case O_MSG: p.max_message_bytes = v; break;
        case O_IMG: p.max_image_bytes = v; break;
        case O_MQ: p.max_queued = v; break;
        case O_MC: p.max_client_jobs = v; break;
        case O_HB: p.heartbeat_ms = (uint32_t)v; break;
        case O_HL: p.heartbeat_liveness = (uint32_t)v; break;
        case O_MJ: p.max_job_ms = (uint32_t)(v * 1000); break;
        case O_MW: p.max_waiters = (uint32_t)v; break;
        case O_MWK: p.max_workers = (uint32_t)v; break;
        case O_BATCH: p.batch_max = (uint32_t)v; break;
        case O_RET: p.retention_ms = v * 24 * 3600 * 1000; break;
        case O_DMNT: p.default_max_new_tokens = (uint32_t)v; break;
        case O_ROOT:
            if (nroots == 64) {
                fprintf(stderr, "kosmos-broker: at most 64 --image-root\n");
                return 1;
            }
            if (!kb_job_root_valid(optarg)) {
                fprintf(stderr,
                        "kosmos-broker: --image-root must be an absolute path without . or .. "
                        "components: %s\n",
                        optarg);
                return 1;
            }
            roots[nroots++] = optarg;
            break;
        case O_CS: p.curve_secret = optarg; break;
        case O_CK: p.curve_clients = optarg; break;
        case O_WK: p.curve_workers = optarg; break;
        case O_LOG:
            if (!ks_log_level_parse(optarg, &p.log_level)) {
                fprintf(stderr, "kosmos-broker: bad --log-level %s\n", optarg);
                return 1;
            }
            break;
        case O_METRICS: {
            char host[256];
            uint16_t port;
            if (!kb_metrics_available()) {
                fprintf(stderr, "kosmos-broker: --metrics: this kosmos-broker was built without "
                                "libmicrohttpd; install libmicrohttpd-dev and rebuild\n");
                return 1;
            }
            if (kb_metrics_parse_address(optarg, host, sizeof host, &port) != KS_OK) {
                fprintf(stderr, "kosmos-broker: bad --metrics: %s\n", ks_error_message());
                return 1;
            }
            metrics_address = optarg;
            break;
        }
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 1;
    }
    p.image_roots = roots;
    p.n_image_roots = nroots;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    kb_broker *b = NULL;
    kb_metrics *metrics = NULL;
    /* The metrics port first: a taken port fails the start before the store is opened. */
    ks_status st = metrics_address ? kb_metrics_new(metrics_address, &metrics) : KS_OK;
    p.metrics = metrics;
    if (st == KS_OK)
        st = kb_broker_new(&p, &b);
    if (st != KS_OK) {
        char esc[1200];
        const char *why = ks_error_message();
        ks_log(NULL, KS_LOG_ERROR, ks_log_unix_ms(),
               st == KS_ERR_BUSY ? "database_locked" : "start_failed", "\"error\":%s",
               ks_log_str(esc, sizeof esc, why));
        kb_metrics_destroy(&metrics);
        return st == KS_ERR_BUSY ? 3 : 1;
    }
    if (metrics) {
        char esc[300];
        if (p.log_level <= KS_LOG_INFO)
            ks_log(NULL, KS_LOG_INFO, ks_log_unix_ms(), "metrics_listening",
                   "\"address\":%s,\"path\":\"/metrics\"",
                   ks_log_str(esc, sizeof esc, kb_metrics_address(metrics)));
    }
    st = kb_broker_run(b, &stop_requested);
    kb_broker_destroy(&b);
    kb_metrics_destroy(&metrics);
    if (st != KS_OK) {
        char esc[1200];
        ks_log(NULL, KS_LOG_ERROR, ks_log_unix_ms(), "stopped", "\"error\":%s",
               ks_log_str(esc, sizeof esc, ks_error_message()));
        return 2;
    }
    return 0;
}
