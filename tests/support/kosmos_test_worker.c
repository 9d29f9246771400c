/* kosmos-test-worker: kosmos-worker with test seams (kw_test_seams), for the integration tests
 * (tests/integration/test_faults.c, test_hardening.c, test_continuous.c) and cli_submit. It
 * takes every kosmos-worker option plus these, which it removes before kosmos-worker's parser
 * sees the rest:
 *   --test-sleep-ms N      sleep N ms before ready jobs join the batch: a slow device
 *   --test-abort-marker S  abort() the process when a job whose prompt contains S joins the
 *                          batch (after a "test_abort" log line): a poison job
 *   --test-slow-marker S   with --test-step-ms N: each step of each prompt of a job whose
 *   --test-step-ms N       prompt contains S takes N ms more, as long as the engine holds it:
 *                          a long job (on the tiny model real ones take milliseconds)
 * Not installed; no deployment has a reason to run it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kw_cli.h"
#include "kw_log.h"

typedef struct test_options {
    long sleep_ms;
    const char *abort_marker;
    const char *slow_marker;
    long step_ms;
} test_options;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (ms > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static bool job_has_marker(const kw_job_in *in, const char *marker)
{
    const Kosmos__V1__Job *job = in ? in->job : NULL;
    for (size_t k = 0; marker && *marker && job && k < job->n_prompts; k++)
        if (job->prompts[k]->text && strstr(job->prompts[k]->text, marker))
            return true;
    return false;
}

static void before_join(void *ctx)
{
    const test_options *o = ctx;
    sleep_ms(o->sleep_ms);
}

static void on_join(void *ctx, const kw_job_in *job)
{
    const test_options *o = ctx;
    if (job_has_marker(job, o->abort_marker)) {
        kw_log(KS_LOG_ERROR, "test_abort", "\"job\":\"%s\",\"attempt\":%u", job->job_id,
               job->attempt);
        abort();
    }
}

static void on_step(void *ctx, const kw_job_in *job)
{
    const test_options *o = ctx;
    if (o->step_ms > 0 && job_has_marker(job, o->slow_marker))
        sleep_ms(o->step_ms);
}

/* A number of milliseconds, 0 .. 1 hour; -1 when it is not one. */
static long parse_ms(const char *s)
{
    char *end;
    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    return errno || *end || v > 3600000 ? -1 : v;
}

int main(int argc, char **argv)
{
    static test_options o;
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest)
        return KW_EXIT_CONFIG;
    int n = 0;
    rest[n++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool is_test = !strcmp(a, "--test-sleep-ms") || !strcmp(a, "--test-abort-marker") ||
                       !strcmp(a, "--test-slow-marker") || !strcmp(a, "--test-step-ms");
        if (!is_test) {
            rest[n++] = argv[i];
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        bool bad = !v;
        if (!bad && !strcmp(a, "--test-sleep-ms"))
            bad = (o.sleep_ms = parse_ms(v)) < 0;
        else if (!bad && !strcmp(a, "--test-step-ms"))
            bad = (o.step_ms = parse_ms(v)) < 0;
        else if (!bad && !strcmp(a, "--test-abort-marker"))
            o.abort_marker = v;
        else if (!bad)
            o.slow_marker = v;
        if (bad) {
            fprintf(stderr, "kosmos-test-worker: bad value for %s: '%s'\n", a, v ? v : "");
            free(rest);
            return KW_EXIT_CONFIG;
        }
    }
    rest[n] = NULL;
    kw_test_seams seams = {.before_join = before_join,
                           .on_join = on_join,
                           .on_step = on_step,
                           .ctx = &o};
    int code = kw_cli_main(n, rest, &seams);
    free(rest);
    return code;
}
