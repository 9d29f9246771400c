/* kosmos status: what a kosmos-farm broker is doing now - jobs per state, workers (device,
 * credit, load), totals (done, failed, dead, expired, cancelled) and throughput - as a table, or
 * as one JSON object with --json. Built on libkosmos (kosmos_client_status); it asks once and
 * prints, it does not watch. Exit 0 when the broker answered, 1 when it did not (or refused),
 * 2 for bad arguments. */
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "kosmos/client.h"

static const char status_help[] =
    "usage: kosmos status [--broker ENDPOINT] [--json] [options]\n"
    "\n"
    "Asks a broker for its status and prints it: jobs per state (queued, running, retry_wait,\n"
    "and the records of finished jobs the broker still keeps), each worker with its device,\n"
    "credit (dispatches it can still take), running jobs and batch capacity, totals since the\n"
    "broker's database was created, and throughput over the last 60 s.\n"
    "\n"
    "  --broker ENDPOINT           the broker's client endpoint (default: $KOSMOS_BROKER, else\n"
    "                              tcp://localhost:5555)\n"
    "  --json                      print one JSON object instead of the table\n"
    "  --no-workers                leave the worker list out\n"
    "  --timeout-ms N              how long to wait for the answer, per try (default 5000;\n"
    "                              two more tries on a fresh connection follow)\n"
    "  --client-id ID              identity to ask as (any identity may ask)\n"
    "  --curve-secret FILE         this client's secret certificate (CURVE on)\n"
    "  --curve-server-public FILE  the broker's public certificate (CURVE on)\n"
    "\n"
    "Exit status: 0 the broker answered, 1 it did not (or refused), 2 usage error.\n";

/* States in display order; the index is kosmos_job_state_t. */
static const kosmos_job_state_t status_states[] = {
    KOSMOS_STATE_QUEUED, KOSMOS_STATE_RUNNING,   KOSMOS_STATE_RETRY_WAIT,
    KOSMOS_STATE_DONE,   KOSMOS_STATE_FAILED,    KOSMOS_STATE_EXPIRED,
    KOSMOS_STATE_DEAD,   KOSMOS_STATE_CANCELLED, KOSMOS_STATE_ACKED,
};
#define N_STATES (sizeof status_states / sizeof status_states[0])

static void format_bytes(uint64_t bytes, char *out, size_t cap)
{
    if (bytes >= (1ull << 30))
        snprintf(out, cap, "%.1f GiB", (double)bytes / (1024.0 * 1024.0 * 1024.0));
    else if (bytes >= (1ull << 20))
        snprintf(out, cap, "%.1f MiB", (double)bytes / (1024.0 * 1024.0));
    else
        snprintf(out, cap, "%" PRIu64 " B", bytes);
}

static void format_duration(uint64_t ms, char *out, size_t cap)
{
    uint64_t s = ms / 1000;
    if (s >= 86400)
        snprintf(out, cap, "%" PRIu64 "d %02" PRIu64 "h", s / 86400, (s % 86400) / 3600);
    else if (s >= 3600)
        snprintf(out, cap, "%" PRIu64 "h %02" PRIu64 "m", s / 3600, (s % 3600) / 60);
    else
        snprintf(out, cap, "%" PRIu64 "m %02" PRIu64 "s", s / 60, s % 60);
}

static json_t *status_json(const char *broker, const kosmos_broker_status_t *s, bool workers)
{
    json_t *queue = json_object();
    uint64_t unfinished = 0;
    for (size_t i = 0; i < N_STATES; i++) {
        json_object_set_new(queue, kosmos_job_state_name(status_states[i]),
                            json_integer((json_int_t)s->queue[status_states[i]]));
        if (!kosmos_job_state_is_terminal(status_states[i]))
            unfinished += s->queue[status_states[i]];
    }
    if (s->queue[KOSMOS_STATE_UNKNOWN])
        json_object_set_new(queue, "unknown",
                            json_integer((json_int_t)s->queue[KOSMOS_STATE_UNKNOWN]));
    char instance[17];
    snprintf(instance, sizeof instance, "%016" PRIx64, s->broker_instance);
    json_t *root =
        json_pack("{s:s, s:s, s:s, s:I, s:o, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I}, "
                  "s:{s:f, s:f}, s:{s:I, s:I}}",
                  "broker", broker, "broker_version", s->broker_version, "broker_instance",
                  instance, "uptime_ms", (json_int_t)s->uptime_ms, "queue", queue, "unfinished",
                  (json_int_t)unfinished, "totals", "submitted", (json_int_t)s->total_submitted,
                  "done", (json_int_t)s->total_done, "failed", (json_int_t)s->total_failed, "dead",
                  (json_int_t)s->total_dead, "expired", (json_int_t)s->total_expired, "cancelled",
                  (json_int_t)s->total_cancelled, "throughput", "jobs_per_second",
                  s->jobs_per_second, "tokens_per_second", s->tokens_per_second, "memory", "bytes",
                  (json_int_t)s->memory_bytes, "bound_bytes", (json_int_t)s->memory_bound_bytes);
    if (!root)
        return NULL;
    if (workers) {
        json_t *list = json_array();
        for (size_t i = 0; i < s->worker_count; i++) {
            const kosmos_worker_info_t *w = &s->workers[i];
            json_t *o = json_pack(
                "{s:s, s:s, s:s, s:{s:s, s:s, s:s, s:s, s:I, s:i}, s:i, s:i, s:i, s:f, s:I, "
                "s:i, s:I}",
                "name", w->name, "model_id", w->model_id, "model_hash", w->model_hash, "device",
                "name", w->device_name, "vendor", w->device_vendor, "platform", w->device_platform,
                "driver_version", w->device_driver, "memory_bytes",
                (json_int_t)w->device_memory_bytes, "compute_units", (int)w->device_compute_units,
                "batch_capacity", (int)w->batch_capacity, "credit", (int)w->credit, "running",
                (int)w->running, "load",
                w->batch_capacity ? (double)w->running / (double)w->batch_capacity : 0.0,
                "jobs_done", (json_int_t)w->jobs_done, "last_heartbeat_ms_ago",
                (int)w->last_heartbeat_ms_ago, "connected_unix_ms",
                (json_int_t)w->connected_unix_ms);
            if (o)
                json_array_append_new(list, o);
        }
        json_object_set_new(root, "workers", list);
    }
    return root;
}

static void status_table(const char *broker, const kosmos_broker_status_t *s, bool workers)
{
    char up[32], mem[32], bound[32];
    format_duration(s->uptime_ms, up, sizeof up);
    format_bytes(s->memory_bytes, mem, sizeof mem);
    format_bytes(s->memory_bound_bytes, bound, sizeof bound);
    printf("broker     %s  (version %s, up %s, instance %016" PRIx64 ")\n", broker,
           s->broker_version[0] ? s->broker_version : "?", up, s->broker_instance);
    printf("memory     %s of a %s bound\n", mem, bound);
    printf("\njobs now   ");
    for (size_t i = 0; i < N_STATES; i++)
        printf("%s%s %" PRIu64, i ? ", " : "", kosmos_job_state_name(status_states[i]),
               s->queue[status_states[i]]);
    printf("\ntotals     submitted %" PRIu64 ", done %" PRIu64 ", failed %" PRIu64 ", dead %" PRIu64
           ", expired %" PRIu64 ", cancelled %" PRIu64 "\n",
           s->total_submitted, s->total_done, s->total_failed, s->total_dead, s->total_expired,
           s->total_cancelled);
    printf("throughput %.2f jobs/s, %.1f tokens/s (last 60 s)\n", s->jobs_per_second,
           s->tokens_per_second);
    if (!workers)
        return;
    printf("\nworkers    %zu\n", s->worker_count);
    if (s->worker_count == 0)
        return;
    printf("  %-20s %-28s %9s %6s %7s %5s %9s %8s\n", "NAME", "DEVICE", "MEMORY", "CREDIT",
           "RUNNING", "LOAD", "DONE", "HEARTBT");
    for (size_t i = 0; i < s->worker_count; i++) {
        const kosmos_worker_info_t *w = &s->workers[i];
        char dmem[32];
        format_bytes(w->device_memory_bytes, dmem, sizeof dmem);
        double load = w->batch_capacity ? 100.0 * w->running / w->batch_capacity : 0.0;
        printf("  %-20s %-28.28s %9s %6u %3u/%-3u %4.0f%% %9" PRIu64 " %6ums\n", w->name,
               w->device_name[0] ? w->device_name : "?", w->device_memory_bytes ? dmem : "-",
               w->credit, w->running, w->batch_capacity, load, w->jobs_done,
               w->last_heartbeat_ms_ago);
    }
}

int cmd_status(int argc, char **argv)
{
    static const struct option options[] = {
        {"broker", required_argument, NULL, 'b'},
        {"json", no_argument, NULL, 'j'},
        {"no-workers", no_argument, NULL, 'W'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"client-id", required_argument, NULL, 'c'},
        {"curve-secret", required_argument, NULL, 's'},
        {"curve-server-public", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *broker = getenv("KOSMOS_BROKER");
    const char *client_id = NULL, *curve_secret = NULL, *curve_server = NULL;
    bool json = false, workers = true;
    long timeout_ms = 5000;
    int option;
    optind = 1;
    while ((option = getopt_long(argc, argv, "+b:jWt:c:s:p:h", options, NULL)) != -1) {
        switch (option) {
        case 'b': broker = optarg; break;
        case 'j': json = true; break;
        case 'W': workers = false; break;
        case 't': {
            char *end = NULL;
            timeout_ms = strtol(optarg, &end, 10);
            if (!end || *end || timeout_ms <= 0 || timeout_ms > 600000)
                return cli_usage_error("status: --timeout-ms takes 1..600000, not '%s'", optarg);
            break;
        }
        case 'c': client_id = optarg; break;
        case 's': curve_secret = optarg; break;
        case 'p': curve_server = optarg; break;
        case 'h': fputs(status_help, stdout); return CLI_EXIT_OK;
        default: return CLI_EXIT_USAGE;
        }
    }
    if (optind < argc)
        return cli_usage_error("status: unexpected argument '%s'", argv[optind]);
    if (!broker || !broker[0])
        broker = "tcp://localhost:5555";
    if (!curve_secret != !curve_server)
        return cli_usage_error("status: CURVE needs both --curve-secret and "
                               "--curve-server-public");

    kosmos_client_params_t params;
    kosmos_client_params_init(&params);
    params.broker = broker;
    params.client_id = client_id;
    params.reply_timeout_ms = (int)timeout_ms;
    char pub[KOSMOS_Z85_KEY_SIZE], sec[KOSMOS_Z85_KEY_SIZE], srv[KOSMOS_Z85_KEY_SIZE];
    if (curve_secret) {
        if (kosmos_curve_load_cert(curve_secret, pub, sec) != KOSMOS_OK ||
            kosmos_curve_load_cert(curve_server, srv, NULL) != KOSMOS_OK)
            return cli_usage_error("status: %s", kosmos_error_message());
        params.curve_public_key = pub;
        params.curve_secret_key = sec;
        params.curve_server_key = srv;
    }
    kosmos_client_t *client = kosmos_client_new(&params);
    memset(sec, 0, sizeof sec);
    if (!client)
        return cli_usage_error("status: %s", kosmos_error_message());
    kosmos_broker_status_t *s = NULL;
    kosmos_error_t err = kosmos_client_status(client, workers, &s);
    kosmos_client_destroy(&client);
    if (err != KOSMOS_OK) {
        fprintf(stderr, "kosmos: status: %s\n", kosmos_error_message());
        return CLI_EXIT_FAILED;
    }
    int rc = CLI_EXIT_OK;
    if (json) {
        json_t *root = status_json(broker, s, workers);
        if (!root || json_dumpf(root, stdout, JSON_COMPACT) != 0) {
            fprintf(stderr, "kosmos: status: cannot format JSON\n");
            rc = CLI_EXIT_FAILED;
        } else {
            fputc('\n', stdout);
        }
        json_decref(root);
    } else {
        status_table(broker, s, workers);
    }
    kosmos_broker_status_destroy(&s);
    return rc;
}
