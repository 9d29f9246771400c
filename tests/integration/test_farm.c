/* test_farm: end to end - the real kosmos-broker, two real kosmos-worker processes (tiny
 * random model, --device ref) and a C client over ipc:// in a temporary folder.
 *
 *   1. every demo image (tests/data/kosmos2/images) with 3 prompts (one with a box for its phrase) as one job each:
 *      every prompt's text, raw caption, entities (spans, normalized and pixel boxes) and new
 *      token ids must be identical to `kosmos run` on the same input;
 *   2. bad images - truncated JPEG, a zero-byte file (image_uri), a PNG header claiming
 *      100,000 x 100,000 pixels - end FAILED, not retriable, with a message; the workers stay up
 *      and serve the next job;
 *   3. the broker restarts: the workers re-register by themselves and serve a new job;
 *   4. SIGTERM: every worker and the broker exit 0.
 * No wall-clock thresholds: orderings, states and counters only (generous deadlines only
 * against hangs). Exit 0 = pass, 1 = failure. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "farm_harness.h"
#include "wire.h"

#define CHECK FH_CHECK
#define die fh_die
#define sleep_ms fh_sleep_ms
#define now_ms fh_now_ms
#define wait_exit fh_wait_exit
#define alive fh_alive

#define N_PROMPTS 3
#define MAX_IMAGES 32
#define MAX_NEW_TOKENS 8

static const char *prompts[N_PROMPTS] = {
    "<grounding>An image of",
    "<grounding><phrase> It</phrase> is",
    "<grounding> Describe this image in detail:",
};
/* The box of prompt 1's phrase, normalized; the same as --bboxes for kosmos run. */
static const double box1[4] = {0.390625, 0.046875, 0.984375, 0.828125};
static const char *box1_json = "[[[0.390625, 0.046875, 0.984375, 0.828125]]]";

static const char *broker_bin, *worker_bin, *kosmos_bin, *model_dir;
static fh_farm farm; /* folder, endpoints, pids, context */
static void *client;
static uint64_t next_request = 1;

/* ---- processes ------------------------------------------------------------------------------ */

static void start_broker(void)
{
    char log[300], root[300];
    snprintf(log, sizeof log, "%s/broker.log", farm.dir);
    snprintf(root, sizeof root, "%s/", farm.dir);
    char *argv[] = {(char *)broker_bin, "--client-endpoint", farm.cep, "--worker-endpoint",
                    farm.wep,
                    /* Heartbeats every 250 ms, dead after 12 missed (3 s): batches still outlast
                     * the window, so attempt 1 everywhere shows heartbeats sent while computing,
                     * and a busy 2-core machine (ASan, parallel tests) has a wide margin. */
                    "--db", farm.db, "--heartbeat-ms", "250", "--heartbeat-liveness", "12",
                    "--image-root", root, "--default-max-new-tokens", "8", NULL};
    farm.broker_pid = fh_spawn(argv, log, NULL);
}

static void start_worker(int i)
{
    char log[300], name[32];
    snprintf(log, sizeof log, "%s/worker%d.log", farm.dir, i);
    snprintf(name, sizeof name, "test/w%d", i);
    char *argv[] = {(char *)worker_bin,
                    "--broker",
                    farm.wep,
                    "--model",
                    (char *)model_dir,
                    "--device",
                    "ref",
                    "--name",
                    name,
                    "--max-batch",
                    "3",
                    "--heartbeat-ms",
                    "250",
                    "--stop-timeout",
                    "60",
                    NULL};
    farm.worker_pid[i] = fh_spawn(argv, log, NULL);
}

/* ---- the client ----------------------------------------------------------------------------- */

static void client_open(void)
{
    if (client)
        zmq_close(client);
    client = zmq_socket(farm.zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(client, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_connect(client, farm.cep) != 0)
        die("connect %s: %s", farm.cep, zmq_strerror(errno));
}

/* Sends `req` (+ image) and returns the reply with the same request_id (caller destroys), or
 * NULL after timeout_ms. */
static kp_inbound *call(Kosmos__V1__ClientRequest *req, const void *image, size_t image_len,
                        int timeout_ms)
{
    req->has_request_id = true;
    req->request_id = next_request++;
    req->client_id = "test_farm";
    zmq_msg_t img;
    if (image) {
        zmq_msg_init_size(&img, image_len);
        memcpy(zmq_msg_data(&img), image, image_len);
    }
    if (kp_send(client, NULL, 0, &req->base, image ? &img : NULL, 0) != KS_OK)
        die("send: %s", zmq_strerror(errno));
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    while (now_ms() < end) {
        zmq_pollitem_t it = {client, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        kp_inbound *in = NULL;
        if (kp_recv(client, false, KP_CLIENT_REPLY, NULL, 0, &in) != KS_OK || !in)
            continue;
        if (kp_inbound_verdict(in) == KP_VALID && kp_inbound_request_id(in) == req->request_id)
            return in;
        kp_inbound_destroy(&in);
    }
    return NULL;
}

static const Kosmos__V1__ClientReply *reply_of(const kp_inbound *in)
{
    return (const Kosmos__V1__ClientReply *)kp_inbound_envelope(in);
}

/* Number of workers the broker lists now, or -1 without an answer. */
static int worker_count(void)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__StatusRequest s = KOSMOS__V1__STATUS_REQUEST__INIT;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    req.status = &s;
    kp_inbound *in = call(&req, NULL, 0, 2000);
    if (!in)
        return -1;
    const Kosmos__V1__ClientReply *r = reply_of(in);
    int n = r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS ? (int)r->status->n_workers
                                                                    : -1;
    kp_inbound_destroy(&in);
    return n;
}

static void wait_workers(int n, uint64_t timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;
    while (now_ms() < end) {
        if (worker_count() == n)
            return;
        sleep_ms(100);
    }
    die("the broker never listed %d workers", n);
}

typedef struct job_spec {
    const void *image; /* attached frame, or NULL */
    size_t image_len;
    const char *uri; /* or an image_uri */
    int n_prompts;
    const char *const *texts;
    bool box_on_1; /* prompt 1 carries box1 for its phrase */
} job_spec;

/* Submits a job; returns its id (caller frees). */
static char *submit(const job_spec *js, const char *key)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__SubmitRequest sub = KOSMOS__V1__SUBMIT_REQUEST__INIT;
    Kosmos__V1__Job job;
    kosmos__v1__job__init(&job);
    Kosmos__V1__GenerationParams gen = KOSMOS__V1__GENERATION_PARAMS__INIT;
    Kosmos__V1__Prompt p[N_PROMPTS];
    Kosmos__V1__Prompt *pp[N_PROMPTS];
    Kosmos__V1__PhraseBoxes phrase = KOSMOS__V1__PHRASE_BOXES__INIT;
    Kosmos__V1__PhraseBoxes *phrases[1] = {&phrase};
    Kosmos__V1__Box box = KOSMOS__V1__BOX__INIT;
    Kosmos__V1__Box *boxes[1] = {&box};
    Kosmos__V1__NormalizedBox nb = KOSMOS__V1__NORMALIZED_BOX__INIT;
    nb.has_x1 = nb.has_y1 = nb.has_x2 = nb.has_y2 = true;
    nb.x1 = box1[0];
    nb.y1 = box1[1];
    nb.x2 = box1[2];
    nb.y2 = box1[3];
    box.kind_case = KOSMOS__V1__BOX__KIND_NORMALIZED;
    box.normalized = &nb;
    phrase.n_boxes = 1;
    phrase.boxes = boxes;
    for (int i = 0; i < js->n_prompts; i++) {
        kosmos__v1__prompt__init(&p[i]);
        p[i].text = (char *)js->texts[i];
        if (i == 1 && js->box_on_1) {
            p[i].n_phrase_boxes = 1;
            p[i].phrase_boxes = phrases;
        }
        pp[i] = &p[i];
    }
    job.idempotency_key = (char *)key;
    if (js->uri) {
        job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_URI;
        job.image_uri = (char *)js->uri;
    } else {
        job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE;
        job.image_attached_size = js->image_len;
    }
    job.n_prompts = (size_t)js->n_prompts;
    job.prompts = pp;
    gen.has_max_new_tokens = true;
    gen.max_new_tokens = MAX_NEW_TOKENS;
    job.generation = &gen;
    job.has_outputs = true;
    job.outputs = KOSMOS__V1__OUTPUT_FLAG__OUTPUT_DEFAULT |
                  KOSMOS__V1__OUTPUT_FLAG__OUTPUT_GENERATED_IDS;
    sub.job = &job;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT;
    req.submit = &sub;
    kp_inbound *in = call(&req, js->uri ? NULL : js->image, js->image_len, 10000);
    if (!in)
        die("no reply to submit %s", key);
    const Kosmos__V1__ClientReply *r = reply_of(in);
    if (r->reply_case != KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT ||
        r->submit->outcome_case != KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED)
        die("submit %s not accepted (reply %d, outcome %d: %s)", key, r->reply_case,
            r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT ? (int)r->submit->outcome_case
                                                                    : -1,
            r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT &&
                    r->submit->outcome_case == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_REJECTED
                ? r->submit->rejected->reason
                : "");
    char *id = strdup(r->submit->accepted->job_id);
    kp_inbound_destroy(&in);
    return id;
}

/* Long-polls until the job is terminal; returns the reply (caller destroys). */
static kp_inbound *fetch_final(const char *job_id, uint64_t timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;
    while (now_ms() < end) {
        Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
        Kosmos__V1__FetchRequest f = KOSMOS__V1__FETCH_REQUEST__INIT;
        f.job_id = (char *)job_id;
        f.has_wait_ms = true;
        f.wait_ms = 5000;
        req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH;
        req.fetch = &f;
        kp_inbound *in = call(&req, NULL, 0, 10000);
        if (!in) {
            client_open(); /* a lost reply (broker restart): resend on a fresh socket */
            continue;
        }
        const Kosmos__V1__ClientReply *r = reply_of(in);
        if (r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH && r->fetch->result &&
            r->fetch->state >= KOSMOS__V1__JOB_STATE__JOB_STATE_DONE)
            return in;
        kp_inbound_destroy(&in);
    }
    die("job %s never finished", job_id);
}

/* ---- files ---------------------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot read %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)n + 1);
    if (!data || fread(data, 1, (size_t)n, f) != (size_t)n)
        die("cannot read %s", path);
    fclose(f);
    *len = (size_t)n;
    return data;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len)
        die("cannot write %s", path);
    fclose(f);
}

static uint32_t crc32_png(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

static size_t png_chunk(uint8_t *out, const char *type, const uint8_t *data, uint32_t len)
{
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    memcpy(out + 4, type, 4);
    if (len)
        memcpy(out + 8, data, len);
    uint32_t crc = crc32_png(out + 4, len + 4);
    out[8 + len] = (uint8_t)(crc >> 24);
    out[9 + len] = (uint8_t)(crc >> 16);
    out[10 + len] = (uint8_t)(crc >> 8);
    out[11 + len] = (uint8_t)crc;
    return 12 + len;
}

/* A valid PNG header claiming 100,000 x 100,000 RGB pixels, with a token IDAT. */
static size_t make_bomb(uint8_t *out)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    const uint32_t side = 100000;
    uint8_t ihdr[13] = {(uint8_t)(side >> 24),
                        (uint8_t)(side >> 16),
                        (uint8_t)(side >> 8),
                        (uint8_t)side,
                        (uint8_t)(side >> 24),
                        (uint8_t)(side >> 16),
                        (uint8_t)(side >> 8),
                        (uint8_t)side,
                        8,
                        2,
                        0,
                        0,
                        0};
    static const uint8_t idat[] = {0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01};
    size_t n = 0;
    memcpy(out, sig, 8);
    n += 8;
    n += png_chunk(out + n, "IHDR", ihdr, sizeof ihdr);
    n += png_chunk(out + n, "IDAT", idat, sizeof idat);
    n += png_chunk(out + n, "IEND", NULL, 0);
    return n;
}

/* ---- comparing with `kosmos run` ------------------------------------------------------------ */

static json_t *kosmos_run(const char *image, const char *prompt, bool with_box)
{
    char out[300], log[300];
    snprintf(out, sizeof out, "%s/run.json", farm.dir);
    snprintf(log, sizeof log, "%s/run.err", farm.dir);
    char mnt[16];
    snprintf(mnt, sizeof mnt, "%d", MAX_NEW_TOKENS);
    char *argv[16] = {(char *)kosmos_bin,
                      "run",
                      "--model",
                      (char *)model_dir,
                      "--image",
                      (char *)image,
                      "--prompt",
                      (char *)prompt,
                      "--max-new-tokens",
                      mnt,
                      "--device",
                      "ref",
                      NULL};
    if (with_box) {
        argv[12] = "--bboxes";
        argv[13] = (char *)box1_json;
        argv[14] = NULL;
    }
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fe, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    if (wait_exit(pid, 120000) != 0)
        die("kosmos run failed on %s (see %s)", image, log);
    json_error_t err;
    json_t *j = json_load_file(out, 0, &err);
    if (!j)
        die("kosmos run printed no JSON: %s", err.text);
    return j;
}

/* One prompt's result against kosmos run's JSON for the same input. */
static void compare(const char *what, const Kosmos__V1__PromptResult *p,
                    const Kosmos__V1__Result *r, json_t *run)
{
    CHECK(p->has_status && p->status == KOSMOS__V1__STATUS__STATUS_OK, "%s: status %d (%s)", what,
          (int)p->status, p->message ? p->message : "");
    if (p->status != KOSMOS__V1__STATUS__STATUS_OK)
        return;
    const char *text = json_string_value(json_object_get(run, "text"));
    const char *raw = json_string_value(json_object_get(run, "raw"));
    CHECK(p->text && text && strcmp(p->text, text) == 0, "%s: text '%s' vs '%s'", what,
          p->text ? p->text : "(null)", text ? text : "(null)");
    CHECK(p->raw_text && raw && strcmp(p->raw_text, raw) == 0, "%s: raw '%s' vs '%s'", what,
          p->raw_text ? p->raw_text : "(null)", raw ? raw : "(null)");
    json_t *ents = json_object_get(run, "entities"), *px = json_object_get(run, "boxes_px");
    CHECK(p->n_entities == json_array_size(ents), "%s: %zu entities vs %zu", what, p->n_entities,
          json_array_size(ents));
    for (size_t i = 0; i < p->n_entities && i < json_array_size(ents); i++) {
        const Kosmos__V1__Entity *e = p->entities[i];
        json_t *je = json_array_get(ents, i);
        json_t *span = json_array_get(je, 1), *jb = json_array_get(je, 2);
        CHECK(e->phrase && strcmp(e->phrase, json_string_value(json_array_get(je, 0))) == 0,
              "%s: entity %zu phrase '%s'", what, i, e->phrase ? e->phrase : "(null)");
        CHECK(e->start_cp == json_integer_value(json_array_get(span, 0)) &&
                  e->end_cp == json_integer_value(json_array_get(span, 1)),
              "%s: entity %zu span", what, i);
        CHECK(e->n_boxes == json_array_size(jb) && e->n_boxes_px == e->n_boxes,
              "%s: entity %zu boxes %zu/%zu vs %zu", what, i, e->n_boxes, e->n_boxes_px,
              json_array_size(jb));
        for (size_t b = 0; b < e->n_boxes && b < json_array_size(jb) && b < e->n_boxes_px; b++) {
            const Kosmos__V1__NormalizedBox *n = e->boxes[b]->box, *q = e->boxes_px[b];
            json_t *jn = json_array_get(jb, b), *jq = json_array_get(json_array_get(px, i), b);
            double nv[4] = {n->x1, n->y1, n->x2, n->y2}, qv[4] = {q->x1, q->y1, q->x2, q->y2};
            for (size_t k = 0; k < 4; k++) {
                CHECK(nv[k] == json_real_value(json_array_get(jn, k)), "%s: box %zu.%zu", what, i,
                      b);
                CHECK(qv[k] == json_real_value(json_array_get(jq, k)), "%s: box_px %zu.%zu", what,
                      i, b);
            }
        }
    }
    json_t *ids = json_object_get(run, "generated_ids");
    size_t n_ids = json_array_size(ids);
    CHECK(p->n_generated_ids >= 1 && p->n_generated_ids <= n_ids, "%s: %zu new ids", what,
          p->n_generated_ids);
    for (size_t i = 0; i < p->n_generated_ids && p->n_generated_ids <= n_ids; i++)
        CHECK((json_int_t)p->generated_ids[i] ==
                  json_integer_value(json_array_get(ids, n_ids - p->n_generated_ids + i)),
              "%s: new id %zu", what, i);
    CHECK(p->timings && p->timings->has_new_tokens && p->timings->new_tokens == p->n_generated_ids,
          "%s: timings", what);
    CHECK(r->image_width > 0 && r->image_height > 0, "%s: image size", what);
}

/* images_encoded from a worker's "stopped" log line (the vision passes it ran), or -1. */
static long images_encoded(int worker)
{
    char path[300], line[4096];
    snprintf(path, sizeof path, "%s/worker%d.log", farm.dir, worker);
    FILE *f = fopen(path, "r");
    long n = -1;
    while (f && fgets(line, sizeof line, f)) {
        const char *at = strstr(line, "\"event\":\"stopped\"");
        const char *count = at ? strstr(at, "\"images_encoded\":") : NULL;
        if (count)
            n = strtol(count + strlen("\"images_encoded\":"), NULL, 10);
    }
    if (f)
        fclose(f);
    return n;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- main ----------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: test_farm BROKER WORKER KOSMOS MODEL_DIR IMAGES_DIR\n");
        return 1;
    }
    broker_bin = argv[1];
    worker_bin = argv[2];
    kosmos_bin = argv[3];
    model_dir = argv[4];
    const char *images_dir = argv[5];
    char *images[MAX_IMAGES];
    int n_images = 0;
    DIR *d = opendir(images_dir);
    if (!d) {
        printf("FAIL: cannot open the demo images folder %s\n", images_dir);
        return 1;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n_images < MAX_IMAGES) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", images_dir, e->d_name);
        images[n_images++] = strdup(path);
    }
    closedir(d);
    qsort(images, (size_t)n_images, sizeof *images, name_cmp);
    if (n_images == 0) {
        printf("FAIL: no demo images in %s\n", images_dir);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    fh_init(&farm, broker_bin, worker_bin, model_dir);
    start_broker();
    start_worker(0);
    start_worker(1);
    client_open();
    wait_workers(2, 60000);
    printf("broker and 2 workers up (%s)\n", farm.dir);

    /* 1. every demo image, 3 prompts each, as one job */
    char *ids[MAX_IMAGES];
    size_t lens[MAX_IMAGES];
    char *data[MAX_IMAGES];
    for (int i = 0; i < n_images; i++) {
        data[i] = read_file(images[i], &lens[i]);
        job_spec js = {.image = data[i],
                       .image_len = lens[i],
                       .n_prompts = N_PROMPTS,
                       .texts = prompts,
                       .box_on_1 = true};
        char key[64];
        snprintf(key, sizeof key, "demo-%d", i);
        ids[i] = submit(&js, key);
    }
    /* 2. bad images, between and after the good ones */
    size_t half = lens[0] / 2;
    char empty_path[400];
    snprintf(empty_path, sizeof empty_path, "%s/empty.png", farm.dir);
    write_file(empty_path, "", 0);
    uint8_t bomb[128];
    size_t bomb_len = make_bomb(bomb);
    const char *one_prompt[1] = {prompts[0]};
    job_spec bad[3] = {
        {.image = data[0], .image_len = half, .n_prompts = 1, .texts = one_prompt},
        {.uri = empty_path, .n_prompts = 1, .texts = one_prompt},
        {.image = bomb, .image_len = bomb_len, .n_prompts = 1, .texts = one_prompt},
    };
    const char *bad_names[3] = {"truncated", "zero bytes", "100000x100000 PNG"};
    char *bad_ids[3];
    for (int i = 0; i < 3; i++) {
        char key[64];
        snprintf(key, sizeof key, "bad-%d", i);
        bad_ids[i] = submit(&bad[i], key);
    }

    /* the expected outputs, computed while the farm works */
    json_t *expected[MAX_IMAGES][N_PROMPTS];
    for (int i = 0; i < n_images; i++)
        for (int k = 0; k < N_PROMPTS; k++)
            expected[i][k] = kosmos_run(images[i], prompts[k], k == 1);

    int per_worker[2] = {0, 0};
    for (int i = 0; i < n_images; i++) {
        kp_inbound *in = fetch_final(ids[i], 120000);
        const Kosmos__V1__FetchReply *f = reply_of(in)->fetch;
        const Kosmos__V1__Result *r = f->result;
        CHECK(f->state == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE, "%s: state %d (%s)", images[i],
              (int)f->state, r->message ? r->message : "");
        CHECK(r->n_prompts == N_PROMPTS, "%s: %zu prompts", images[i], r->n_prompts);
        CHECK(r->has_attempt && r->attempt == 1, "%s: attempt %u", images[i], r->attempt);
        CHECK(r->worker_name && strncmp(r->worker_name, "test/w", 6) == 0, "%s: worker", images[i]);
        CHECK(r->device_name && strcmp(r->device_name, "ref") == 0, "%s: device", images[i]);
        if (r->worker_name && strncmp(r->worker_name, "test/w", 6) == 0)
            per_worker[r->worker_name[6] == '1']++;
        for (size_t k = 0; k < r->n_prompts && k < N_PROMPTS; k++) {
            char what[700];
            snprintf(what, sizeof what, "%s prompt %zu", images[i], k);
            CHECK(r->prompts[k]->prompt_index == k, "%s: index", what);
            compare(what, r->prompts[k], r, expected[i][k]);
        }
        kp_inbound_destroy(&in);
    }
    printf("%d images x %d prompts identical to kosmos run (jobs per worker: %d, %d)\n", n_images,
           N_PROMPTS, per_worker[0], per_worker[1]);

    for (int i = 0; i < 3; i++) {
        kp_inbound *in = fetch_final(bad_ids[i], 60000);
        const Kosmos__V1__FetchReply *f = reply_of(in)->fetch;
        const Kosmos__V1__Result *r = f->result;
        CHECK(f->state == KOSMOS__V1__JOB_STATE__JOB_STATE_FAILED, "%s: state %d", bad_names[i],
              (int)f->state);
        CHECK(r->status == KOSMOS__V1__STATUS__STATUS_FAILED && r->has_retriable && !r->retriable,
              "%s: status %d retriable %d", bad_names[i], (int)r->status, (int)r->retriable);
        CHECK(r->message && r->message[0], "%s: no message", bad_names[i]);
        CHECK(f->attempt == 1, "%s: %u attempts", bad_names[i], f->attempt);
        CHECK(r->n_prompts == 1 && r->prompts[0]->status == KOSMOS__V1__STATUS__STATUS_FAILED,
              "%s: prompt status", bad_names[i]);
        printf("%s: FAILED, not retriable: %s\n", bad_names[i], r->message ? r->message : "");
        kp_inbound_destroy(&in);
    }
    CHECK(alive(farm.worker_pid[0]) && alive(farm.worker_pid[1]), "a worker died");

    /* the workers still serve */
    job_spec after = {.image = data[n_images - 1],
                      .image_len = lens[n_images - 1],
                      .n_prompts = 1,
                      .texts = one_prompt};
    char *after_id = submit(&after, "after-bad");
    kp_inbound *in = fetch_final(after_id, 60000);
    CHECK(reply_of(in)->fetch->state == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE,
          "job after the bad images: state %d", (int)reply_of(in)->fetch->state);
    compare("job after the bad images", reply_of(in)->fetch->result->prompts[0],
            reply_of(in)->fetch->result, expected[n_images - 1][0]);
    kp_inbound_destroy(&in);

    /* 3. the broker restarts; the workers come back by themselves */
    kill(farm.broker_pid, SIGTERM);
    CHECK(wait_exit(farm.broker_pid, 30000) == 0, "broker exit after SIGTERM");
    start_broker();
    client_open();
    wait_workers(2, 60000);
    char *restart_id = submit(&after, "after-restart");
    in = fetch_final(restart_id, 60000);
    CHECK(reply_of(in)->fetch->state == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE,
          "job after the broker restart: state %d", (int)reply_of(in)->fetch->state);
    compare("job after the broker restart", reply_of(in)->fetch->result->prompts[0],
            reply_of(in)->fetch->result, expected[n_images - 1][0]);
    kp_inbound_destroy(&in);
    printf("broker restart: both workers re-registered and served\n");

    /* 4. SIGTERM */
    for (int i = 0; i < 2; i++)
        kill(farm.worker_pid[i], SIGTERM);
    for (int i = 0; i < 2; i++) {
        int code = wait_exit(farm.worker_pid[i], 60000);
        CHECK(code == 0, "worker %d exit code %d after SIGTERM", i, code);
        farm.worker_pid[i] = 0;
    }
    /* One vision pass per job that reached the device (the demo jobs and the two after the
     * bad images), not one per prompt; the bad images never reach it. */
    long passes = images_encoded(0) + images_encoded(1);
    CHECK(passes == n_images + 2, "%ld vision passes for %d jobs", passes, n_images + 2);
    /* their Disconnect: the broker forgets them at once */
    uint64_t end = now_ms() + 10000;
    int left = -1;
    while (now_ms() < end && (left = worker_count()) != 0)
        sleep_ms(50);
    CHECK(left == 0, "the broker still lists %d workers after their SIGTERM", left);
    kill(farm.broker_pid, SIGTERM);
    CHECK(wait_exit(farm.broker_pid, 30000) == 0, "broker exit after SIGTERM");
    farm.broker_pid = 0;

    zmq_close(client);
    zmq_ctx_term(farm.zctx);
    for (int i = 0; i < n_images; i++) {
        for (int k = 0; k < N_PROMPTS; k++)
            json_decref(expected[i][k]);
        free(data[i]);
        free(ids[i]);
        free(images[i]);
    }
    for (int i = 0; i < 3; i++)
        free(bad_ids[i]);
    free(after_id);
    free(restart_id);
    if (fh_failures) {
        fprintf(stderr, "%d check(s) failed; logs kept in %s\n", fh_failures, farm.dir);
        return 1;
    }
    char *rm[] = {"/bin/rm", "-rf", farm.dir, NULL};
    pid_t pid = fork();
    if (pid == 0) {
        execv(rm[0], rm);
        _exit(127);
    }
    wait_exit(pid, 30000);
    printf("PASS\n");
    return 0;
}
