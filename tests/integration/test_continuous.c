/* test_continuous: the worker's continuous batching (issue 15) with real processes - a broker
 * and one kosmos-worker on the tiny model, on the device named on the command line (ref, or cpu
 * for PoCL's paged KV cache):
 *
 *   1. a long job computes (on kosmos-test-worker, --test-step-ms: each of its steps takes longer);
 *      while it decodes, short jobs (greedy, beam search, seeded sampling) and a second long
 *      job arrive; the second long job is cancelled once it computes
 *   2. the short jobs end before the first long one (the order of the worker's job_done lines,
 *      not a time), the cancelled one ends CANCELLED, every other job DONE
 *   3. the same jobs again, one at a time on a fresh worker (--max-batch 1 --prefetch 0, no
 *      slowing): every job's generated ids and text equal those it got in the crowd
 *
 * No wall-clock thresholds; the time limits are generous guards against hangs. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "farm_harness.h"

static fh_farm farm;
static uint8_t *png[3];
static size_t png_len[3];

static const char *farm_file(const char *name)
{
    static char path[4][400];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", farm.dir, name);
    return p;
}

#define LONG_MARKER "LONG-JOB"
static const char *const slow_worker[] = {"--test-slow-marker", LONG_MARKER, "--test-step-ms",
                                          "150", NULL};

/* One job of the test: what it asks and what it got. */
typedef struct cjob {
    const char *name;
    const char *prompt;
    int image; /* index into png */
    uint32_t max_new, min_new, beams;
    bool sample;
    char id[65]; /* in the crowd */
    int state;
    char *text; /* the crowd's output */
    uint32_t *ids;
    size_t n_ids;
} cjob;

static void submit(fh_client *c, cjob *j, const char *key, char id[65])
{
    fh_job base = {.image = png[j->image],
                   .image_len = png_len[j->image],
                   .prompt = j->prompt,
                   .max_new_tokens = j->max_new,
                   .min_new_tokens = j->min_new,
                   .key = key};
    Kosmos__V1__ClientRequest req;
    fh_submit_store store;
    fh_submit_request(&base, &req, &store);
    store.job.has_outputs = true;
    store.job.outputs = KOSMOS__V1__OUTPUT_FLAG__OUTPUT_DEFAULT |
                        KOSMOS__V1__OUTPUT_FLAG__OUTPUT_GENERATED_IDS;
    if (j->beams > 1) {
        store.gen.has_num_beams = true;
        store.gen.num_beams = j->beams;
    }
    if (j->sample) {
        store.gen.has_do_sample = store.gen.has_seed = store.gen.has_temperature = true;
        store.gen.do_sample = true;
        store.gen.seed = 1234;
        store.gen.temperature = 5.0f; /* flat enough that the draws matter */
    }
    kp_inbound *in = fh_call(c, &req, png[j->image], png_len[j->image], 10000);
    const Kosmos__V1__ClientReply *r = in ? fh_reply(in) : NULL;
    if (!r || r->reply_case != KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT ||
        r->submit->outcome_case != KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED)
        fh_die("submit %s: not accepted", key);
    snprintf(id, 65, "%s", r->submit->accepted->job_id);
    kp_inbound_destroy(&in);
}

/* Waits for the job's end; its state, and (DONE) its first prompt's text and ids (owned). */
static int fetch(fh_client *c, const char *id, char **text, uint32_t **ids, size_t *n_ids)
{
    kp_inbound *in = fh_fetch_final(c, id, 300000);
    const Kosmos__V1__FetchReply *f = in ? fh_reply(in)->fetch : NULL;
    int state = f ? (int)f->state : -1;
    *text = NULL;
    *ids = NULL;
    *n_ids = 0;
    if (f && f->result && f->result->n_prompts == 1) {
        const Kosmos__V1__PromptResult *p = f->result->prompts[0];
        *text = strdup(p->text ? p->text : "");
        *n_ids = p->n_generated_ids;
        *ids = malloc((p->n_generated_ids ? p->n_generated_ids : 1) * sizeof **ids);
        if (!*text || !*ids)
            fh_die("out of memory");
        if (p->n_generated_ids) /* none (NULL) for a job cancelled before its first token */
            memcpy(*ids, p->generated_ids, p->n_generated_ids * sizeof **ids);
    }
    kp_inbound_destroy(&in);
    return state;
}

/* The line number of the first line of `path` holding both needles, or 0. */
static size_t first_line(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    size_t n = 0, at = 0;
    while (f && !at && fgets(line, sizeof line, f)) {
        n++;
        if (strstr(line, a) && strstr(line, b))
            at = n;
    }
    if (f)
        fclose(f);
    return at;
}

static bool wait_line(const char *path, const char *a, const char *b, uint64_t guard_ms)
{
    uint64_t end = fh_now_ms() + guard_ms;
    while (!first_line(path, a, b)) {
        if (fh_now_ms() > end)
            return false;
        fh_sleep_ms(20);
    }
    return true;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: test_continuous BROKER WORKER MODEL_DIR DEVICE\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *device = argv[4];
    fh_init(&farm, argv[1], argv[2], argv[3]);
    printf("continuous batching on --device %s in %s\n", device, farm.dir);
    for (int i = 0; i < 3; i++)
        png[i] = fh_make_png(40 + 8 * (uint32_t)i, 30, 11 + (uint32_t)i, &png_len[i]);

    /* The long ones generate exactly max_new tokens (min_new = max_new); the short ones stop at
     * </s> or their few max_new. */
    cjob jobs[] = {
        {.name = "long",
         .prompt = "<grounding>" LONG_MARKER " An image of",
         .image = 0,
         .max_new = 48,
         .min_new = 48},
        {.name = "cancelled",
         .prompt = "<grounding>" LONG_MARKER " A picture of",
         .image = 1,
         .max_new = 48,
         .min_new = 48},
        {.name = "greedy", .prompt = "<grounding>An image of", .image = 1, .max_new = 12},
        {.name = "ngram",
         .prompt = "<grounding>Describe this image in detail:",
         .image = 2,
         .max_new = 16,
         .min_new = 10},
        {.name = "beams",
         .prompt = "<grounding>An image of",
         .image = 2,
         .max_new = 10,
         .beams = 3},
        {.name = "sampled",
         .prompt = "<grounding>A photo of",
         .image = 0,
         .max_new = 12,
         .sample = true},
    };
    const size_t n = sizeof jobs / sizeof jobs[0];

    /* 1. the crowd */
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "continuous", false);
    const char *crowd[] = {"--device", device, "--max-batch", "8", "--slots", "16", NULL};
    fh_start_worker(&farm, 0, NULL, crowd, slow_worker);
    fh_wait_workers(c, 1, 120000);
    const char *log = farm_file("worker0.log");
    submit(c, &jobs[0], "crowd-long", jobs[0].id);
    if (!wait_line(log, "\"event\":\"computing\"", fh_job_field(jobs[0].id), 300000))
        fh_die("the long job never started computing");
    for (size_t i = 1; i < n; i++) {
        char key[64];
        snprintf(key, sizeof key, "crowd-%s", jobs[i].name);
        submit(c, &jobs[i], key, jobs[i].id);
    }
    if (!wait_line(log, "\"event\":\"computing\"", fh_job_field(jobs[1].id), 300000))
        fh_die("the second long job never started computing");
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__CancelRequest cr = KOSMOS__V1__CANCEL_REQUEST__INIT;
    cr.job_id = jobs[1].id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_CANCEL;
    req.cancel = &cr;
    kp_inbound *in = fh_call(c, &req, NULL, 0, 10000);
    FH_CHECK(in && fh_reply(in)->cancel && fh_reply(in)->cancel->cancelled, "cancel refused");
    kp_inbound_destroy(&in);

    /* 2. states and the order the jobs ended in */
    for (size_t i = 0; i < n; i++) {
        jobs[i].state = fetch(c, jobs[i].id, &jobs[i].text, &jobs[i].ids, &jobs[i].n_ids);
        int want = i == 1 ? KOSMOS__V1__JOB_STATE__JOB_STATE_CANCELLED
                          : KOSMOS__V1__JOB_STATE__JOB_STATE_DONE;
        FH_CHECK(jobs[i].state == want, "%s: state %d, not %d", jobs[i].name, jobs[i].state, want);
        printf("%-9s %s: %zu ids, \"%s\"\n", jobs[i].name, jobs[i].id, jobs[i].n_ids,
               jobs[i].text ? jobs[i].text : "");
    }
    FH_CHECK(jobs[0].n_ids == 48, "the long job has %zu ids, not 48", jobs[0].n_ids);
    size_t long_done = first_line(log, "\"event\":\"job_done\"", fh_job_field(jobs[0].id));
    FH_CHECK(long_done > 0, "no job_done line for the long job");
    for (size_t i = 2; i < n; i++) {
        size_t at = first_line(log, "\"event\":\"job_done\"", fh_job_field(jobs[i].id));
        FH_CHECK(at > 0 && at < long_done,
                 "%s ended at log line %zu, not before the long job "
                 "(line %zu)",
                 jobs[i].name, at, long_done);
    }
    /* the cancelled job stopped at a step: its result came back (and was stale) */
    FH_CHECK(first_line(log, "\"event\":\"job_done\"", fh_job_field(jobs[1].id)) > 0,
             "the cancelled job's generation never ended");
    kill(farm.worker_pid[0], SIGTERM);
    FH_CHECK(fh_wait_exit(farm.worker_pid[0], 120000) == 0, "the crowd's worker did not stop");
    farm.worker_pid[0] = 0;

    /* 3. each job alone, full speed */
    const char *alone[] = {"--device", device,    "--max-batch", "1", "--prefetch",
                           "0",        "--slots", "16",          NULL};
    fh_start_worker(&farm, 1, NULL, alone, NULL);
    fh_wait_workers(c, 1, 120000);
    for (size_t i = 0; i < n; i++) {
        if (i == 1)
            continue; /* cancelled: nothing to compare */
        char key[64], id[65];
        snprintf(key, sizeof key, "alone-%s", jobs[i].name);
        submit(c, &jobs[i], key, id);
        char *text;
        uint32_t *ids;
        size_t n_ids;
        int st = fetch(c, id, &text, &ids, &n_ids);
        FH_CHECK(st == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE, "%s alone: state %d", jobs[i].name,
                 st);
        FH_CHECK(n_ids == jobs[i].n_ids && jobs[i].ids &&
                     memcmp(ids, jobs[i].ids, n_ids * sizeof *ids) == 0,
                 "%s: %zu ids alone, %zu in the crowd, not the same", jobs[i].name, n_ids,
                 jobs[i].n_ids);
        FH_CHECK(text && jobs[i].text && strcmp(text, jobs[i].text) == 0,
                 "%s: \"%s\" alone, \"%s\" in the crowd", jobs[i].name, text ? text : "",
                 jobs[i].text ? jobs[i].text : "");
        free(text);
        free(ids);
    }
    fh_client_destroy(&c);
    for (size_t i = 0; i < n; i++) {
        free(jobs[i].text);
        free(jobs[i].ids);
    }
    for (int i = 0; i < 3; i++)
        free(png[i]);
    int rc = fh_finish(&farm);
    zmq_ctx_term(farm.zctx);
    return rc;
}
