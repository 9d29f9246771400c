/* kosmos submit: bulk annotation. Streams image paths (files, folders, @lists, --jobs lines)
 * into a broker through libkosmos with at most --window jobs in flight, and writes one JSON
 * line per image and prompt as each completes (submit_output.h), optionally drawn pictures
 * (submit_draw.h) and a COCO file (coco.h). With --model instead of --broker, a broker and a
 * worker run in this process (submit_embedded.h).
 *
 * Threads: the main thread reads the inputs, builds each job (reading and hashing the image)
 * and submits it; `waiters` threads, each with its own kosmos_client_t, long-poll the oldest
 * submitted jobs and write their lines; a progress thread draws; a counting thread walks the
 * inputs once more, cheaply, for the total. Memory stays flat: the window bounds the jobs in
 * flight, and a job's image bytes live only until its submit returns.
 *
 * Not here: the wire protocol (libkosmos), the model (the workers). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "cli_args.h"
#include "cli_help.h"
#include "coco.h"
#include "kosmos/client.h"
#include "ks_buf.h"
#include "ks_error.h"
#include "ks_file.h"
#include "ks_sha256.h"
#include "ks_utf8.h"
#include "processor.h"
#include "submit_draw.h"
#include "submit_embedded.h"
#include "submit_key.h"
#include "submit_output.h"
#include "submit_paths.h"
#include "submit_progress.h"
#include "submit_resume.h"

static const char submit_help[] =
    "usage: kosmos submit (--broker ENDPOINT | --model DIR [--device SPEC])\n"
    "         [--prompt TEXT | --task caption|detailed|ground|vqa [--phrase TEXT]\n"
    "         [--question TEXT]] [--jobs FILE.jsonl] [--max-new-tokens N] [-o OUT.jsonl]\n"
    "         [--resume] [--draw DIR] [--coco FILE] [--priority N] [--window N]\n"
    "         [--client-id ID] [--ack] [--quiet] PATH...\n"
    "\n"
    "Annotates many images with Kosmos-2: each image and prompt becomes a job for a\n"
    "kosmos-farm broker, and one JSON line per image and prompt is written as it completes:\n"
    "  {\"path\", \"prompt\", \"status\", \"text\", \"entities\", \"boxes_px\", \"timings\",\n"
    "   \"worker\", \"job_id\", \"width\", \"height\", \"error\" (when status is not \"ok\")}\n"
    "status is ok, failed, expired, dead or cancelled; entities and boxes_px are as\n"
    "'kosmos run' gives them. A failure does not stop the run. \"path\" is readable text: a\n"
    "file name that is not UTF-8 shows U+FFFD for its odd bytes there, and its line also has\n"
    "\"path_bytes\", the exact name in base64, which --resume and --coco go by.\n"
    "\n"
    "PATH is an image file, a folder or @LIST (a file with one such path per line;\n"
    "@- = stdin). Folders are walked recursively, in sorted order, for files ending in\n"
    "  {image-extensions}\n"
    "(any case); hidden entries are skipped, links followed, each folder entered once.\n"
    "\n"
    "  --broker EP             the broker's client endpoint, e.g. tcp://broker:5555\n"
    "  --model DIR             no broker: run a broker and a worker in this process, over\n"
    "                          ipc:// in a temporary folder, with this checkpoint\n"
    "  --device SPEC           with --model: the worker's device (ref, cpu, gpu, an index or\n"
    "                          a name in 'kosmos devices' order; default as kosmos-worker)\n"
    "  --prompt TEXT           the prompt for every image (default \"<grounding>An image of\")\n"
    "  --task T                caption: \"<grounding>An image of\"; detailed: \"<grounding>\n"
    "                          Describe this image in detail:\"; ground (with --phrase P):\n"
    "                          \"<grounding><phrase>P</phrase>\" (referring expression\n"
    "                          comprehension: P is located in every image); vqa (with\n"
    "                          --question Q): \"<grounding> Question: Q Answer:\"\n"
    "  --jobs FILE.jsonl       more jobs, one JSON object per line: {\"path\": ..., \"prompt\":\n"
    "                          ... (default: the prompt above), \"bboxes\": ... (per <phrase>\n"
    "                          of the prompt, as 'kosmos encode' takes them: referring\n"
    "                          expression generation)}\n"
    "  --max-new-tokens N      1..1024 (default: the broker's, 128)\n"
    "  -o, --output FILE       write the lines to FILE (default stdout), flushed per line\n"
    "  --resume                with -o: skip the (path, prompt) pairs already \"ok\" in FILE\n"
    "                          (the exact path: path_bytes when the line has it), retry the\n"
    "                          others, append to FILE\n"
    "  --draw DIR              write each image with its boxes and phrases as a PNG in DIR\n"
    "                          (named after the path, made safe, plus a hash: never clashes)\n"
    "  --coco FILE             write a COCO file at the end: images, annotations in pixels\n"
    "                          [x, y, w, h], the phrases as categories (ids by name order);\n"
    "                          an image whose name is not UTF-8 also has file_name_bytes\n"
    "  --priority N            -100..100, higher runs first (default 0)\n"
    "  --window N              jobs in flight at once, 1..100000 (default 64)\n"
    "  --client-id ID          the identity jobs are stored under at the broker (default\n"
    "                          \"kosmos-submit/USER@HOST\"): a second run with the same one\n"
    "                          gets the results of jobs submitted before instead of computing\n"
    "                          them again\n"
    "  --ack                   let the broker delete each result once its line is written\n"
    "                          (default: kept for the broker's retention, 7 days, so that a\n"
    "                          repeated run costs nothing)\n"
    "  --quiet                 no progress and no summary on stderr\n"
    "\n"
    "Each job's idempotency key is derived from the SHA-256 of the image bytes, the prompt, its\n"
    "boxes and the generation parameters, so submitting twice, or resuming while jobs are\n"
    "still in flight, never computes a job twice. Progress goes to stderr: a bar on a\n"
    "terminal, a line every 5 s otherwise, then a summary.\n"
    "Exit status: 0 every job succeeded, 1 some failed (or the run was interrupted), 2 usage\n"
    "or connection error.\n";

#define DEFAULT_PROMPT "<grounding>An image of"
#define DEFAULT_WINDOW 64
#define MAX_WAITERS 16
#define MAX_IMAGE_BYTES ((size_t)64 << 20) /* protocol.md §10 default */
#define FETCH_WAIT_MS 2000
#define TRANSIENT_TRIES 5 /* reply timeouts in a row (each ~15 s with resends) before giving up */
#define MAX_ROUNDS 16     /* fresh keys tried when results were acked or forgotten */

typedef struct submit_options {
    const char *broker, *model_dir, *device, *prompt, *task, *phrase, *question, *jobs_path,
        *out_path, *draw_dir, *coco_path, *client_id;
    int max_new_tokens; /* -1 = unset */
    int priority, window;
    bool resume, ack, quiet;
    char *const *paths;
    size_t n_paths;
    char *prompt_owned;
} submit_options;

/* One job: an image and a prompt. */
typedef struct slot {
    struct slot *next;
    char *path; /* as given or walked */
    char *prompt;
    json_t *bboxes; /* the --jobs line's "bboxes", or NULL */
    char *error;    /* set when the item failed before it could be submitted */
    unsigned round; /* submit_key.h */
    char key[SUBMIT_KEY_SIZE];
    char job_id[KOSMOS_JOB_ID_SIZE];
} slot;

/* Shared by the threads; the lock guards the queue, the window and the flags below it. */
typedef struct run_state {
    const submit_options *o;
    const char *endpoint;
    char client_id[KOSMOS_KEY_MAX + 1];
    submit_output *out;
    submit_progress *progress;
    coco *coco;
    submit_embedded *embedded;

    pthread_mutex_t lock;
    pthread_cond_t changed;
    slot *head, *tail; /* submitted, waiting for a waiter */
    int in_flight;     /* submitted and not yet written */
    bool input_done;
    atomic_bool fatal;  /* connection lost, output unwritable: stop everything (exit 2) */
    atomic_bool failed; /* a job or a drawing failed (exit 1) */
    char fatal_message[512];

    atomic_bool count_stop;
} run_state;

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    if (interrupted)
        _exit(CLI_EXIT_FAILED);
    interrupted = 1;
}

static bool stopping(run_state *s) { return interrupted || atomic_load(&s->fatal); }

static void set_fatal(run_state *s, const char *message)
{
    pthread_mutex_lock(&s->lock);
    if (!atomic_load(&s->fatal))
        snprintf(s->fatal_message, sizeof s->fatal_message, "%s", message);
    atomic_store(&s->fatal, true);
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

static void sleep_ms(unsigned ms)
{
    nanosleep(&(struct timespec){.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L},
              NULL);
}

/* Sleeps `ms` in short steps, returning early when the run stops. */
static void pause_ms(run_state *s, unsigned ms)
{
    for (unsigned t = 0; t < ms && !stopping(s); t += 100)
        sleep_ms(ms - t < 100 ? ms - t : 100);
}

static void slot_free(slot *sl)
{
    if (!sl)
        return;
    free(sl->path);
    free(sl->prompt);
    json_decref(sl->bboxes);
    free(sl->error);
    free(sl);
}

/* ---- options -------------------------------------------------------------------------------- */

static bool valid_text(const char *s, size_t max)
{
    size_t len = strlen(s);
    return len <= max && ks_utf8_valid(s, len);
}

/* Returns CLI_EXIT_OK, -1 after --help, or CLI_EXIT_USAGE after printing the error. */
static int parse_options(int argc, char **argv, submit_options *o)
{
    enum {
        BROKER = 256,
        MODEL,
        DEVICE,
        PROMPT,
        TASK,
        PHRASE,
        QUESTION,
        JOBS,
        MAX_NEW,
        RESUME,
        DRAW,
        COCO,
        PRIORITY,
        WINDOW,
        CLIENT_ID,
        ACK,
        QUIET
    };
    static const struct option options[] = {
        {"broker", required_argument, NULL, BROKER},
        {"model", required_argument, NULL, MODEL},
        {"device", required_argument, NULL, DEVICE},
        {"prompt", required_argument, NULL, PROMPT},
        {"task", required_argument, NULL, TASK},
        {"phrase", required_argument, NULL, PHRASE},
        {"question", required_argument, NULL, QUESTION},
        {"jobs", required_argument, NULL, JOBS},
        {"max-new-tokens", required_argument, NULL, MAX_NEW},
        {"output", required_argument, NULL, 'o'},
        {"resume", no_argument, NULL, RESUME},
        {"draw", required_argument, NULL, DRAW},
        {"coco", required_argument, NULL, COCO},
        {"priority", required_argument, NULL, PRIORITY},
        {"window", required_argument, NULL, WINDOW},
        {"client-id", required_argument, NULL, CLIENT_ID},
        {"ack", no_argument, NULL, ACK},
        {"quiet", no_argument, NULL, QUIET},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (submit_options){.max_new_tokens = -1, .window = DEFAULT_WINDOW};
    int option;
    while ((option = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
        switch (option) {
        case BROKER: o->broker = optarg; break;
        case MODEL: o->model_dir = optarg; break;
        case DEVICE: o->device = optarg; break;
        case PROMPT: o->prompt = optarg; break;
        case TASK: o->task = optarg; break;
        case PHRASE: o->phrase = optarg; break;
        case QUESTION: o->question = optarg; break;
        case JOBS: o->jobs_path = optarg; break;
        case MAX_NEW:
            if (!cli_parse_int(optarg, 1, 1024, &o->max_new_tokens))
                return cli_usage_error("submit: --max-new-tokens wants an integer in 1..1024, "
                                       "not '%s'",
                                       optarg);
            break;
        case 'o': o->out_path = optarg; break;
        case RESUME: o->resume = true; break;
        case DRAW: o->draw_dir = optarg; break;
        case COCO: o->coco_path = optarg; break;
        case PRIORITY:
            if (!cli_parse_int(optarg, -100, 100, &o->priority))
                return cli_usage_error("submit: --priority wants an integer in -100..100, not "
                                       "'%s'",
                                       optarg);
            break;
        case WINDOW:
            if (!cli_parse_int(optarg, 1, 100000, &o->window))
                return cli_usage_error("submit: --window wants an integer in 1..100000, not "
                                       "'%s'",
                                       optarg);
            break;
        case CLIENT_ID:
            if (!optarg[0] || !valid_text(optarg, KOSMOS_KEY_MAX))
                return cli_usage_error("submit: --client-id wants 1..128 bytes of UTF-8");
            o->client_id = optarg;
            break;
        case ACK: o->ack = true; break;
        case QUIET: o->quiet = true; break;
        case 'h': cli_help_print(submit_help); return -1;
        default: return cli_usage_error("submit: see 'kosmos submit --help'");
        }
    }
    o->paths = argv + optind;
    o->n_paths = (size_t)(argc - optind);

    if (!o->broker == !o->model_dir)
        return cli_usage_error("submit: give --broker ENDPOINT or --model DIR (one of them)");
    if (o->device && !o->model_dir)
        return cli_usage_error("submit: --device goes with --model (a broker's workers choose "
                               "their own devices)");
    if (o->model_dir && !submit_embedded_available())
        return cli_usage_error("submit: --model is not available in this build (no broker or "
                               "worker library); use --broker");
    if (o->prompt && o->task)
        return cli_usage_error("submit: --prompt and --task do not combine");
    if (o->phrase && (!o->task || strcmp(o->task, "ground")))
        return cli_usage_error("submit: --phrase goes with --task ground");
    if (o->question && (!o->task || strcmp(o->task, "vqa")))
        return cli_usage_error("submit: --question goes with --task vqa");
    if (o->task) {
        if (!strcmp(o->task, "caption")) {
            o->prompt = DEFAULT_PROMPT;
        } else if (!strcmp(o->task, "detailed")) {
            o->prompt = "<grounding> Describe this image in detail:";
        } else if (!strcmp(o->task, "ground") || !strcmp(o->task, "vqa")) {
            bool ground = o->task[0] == 'g';
            const char *arg = ground ? o->phrase : o->question;
            if (!arg || !arg[0])
                return cli_usage_error("submit: --task %s needs %s", o->task,
                                       ground ? "--phrase TEXT" : "--question TEXT");
            if (ground &&
                (strstr(arg, "<phrase>") || strstr(arg, "</phrase>") || strchr(arg, '\n')))
                return cli_usage_error("submit: --phrase must not hold phrase tags or newlines");
            size_t len = strlen(arg) + 64;
            if (!(o->prompt_owned = malloc(len)))
                return cli_usage_error("submit: out of memory");
            snprintf(o->prompt_owned, len,
                     ground ? "<grounding><phrase>%s</phrase>" : "<grounding> Question: %s Answer:",
                     arg);
            o->prompt = o->prompt_owned;
        } else {
            return cli_usage_error("submit: --task is caption, detailed, ground or vqa, not '%s'",
                                   o->task);
        }
    }
    if (!o->prompt)
        o->prompt = DEFAULT_PROMPT;
    if (!o->prompt[0] || !valid_text(o->prompt, 4096))
        return cli_usage_error("submit: the prompt must be 1..4096 bytes of UTF-8");
    if (!o->n_paths && !o->jobs_path)
        return cli_usage_error("submit: no images (give PATH... or --jobs FILE)");
    if (o->resume && !o->out_path)
        return cli_usage_error("submit: --resume needs -o OUT.jsonl (the file to resume)");
    if (o->draw_dir && !submit_draw_available())
        return cli_usage_error("submit: --draw is not available in this build (no libvips)");
    ks_error_clear();
    if (!submit_paths_check(o->paths, o->n_paths))
        return cli_usage_error("submit: %s", ks_error_message());
    if (o->jobs_path && access(o->jobs_path, R_OK) != 0)
        return cli_usage_error("submit: --jobs %s: %s", o->jobs_path, strerror(errno));
    if (o->draw_dir) {
        struct stat st;
        if (mkdir(o->draw_dir, 0777) != 0 && errno != EEXIST)
            return cli_usage_error("submit: --draw %s: %s", o->draw_dir, strerror(errno));
        if (stat(o->draw_dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(o->draw_dir, W_OK))
            return cli_usage_error("submit: --draw %s is not a writable folder", o->draw_dir);
    }
    return CLI_EXIT_OK;
}

/* "kosmos-submit/USER@HOST": stable across runs of one user on one machine. */
static void default_client_id(char out[KOSMOS_KEY_MAX + 1])
{
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    const struct passwd *pw = getpwuid(geteuid());
    const char *user = pw && pw->pw_name ? pw->pw_name : getenv("USER");
    char uid[32];
    if (!user || !user[0]) {
        snprintf(uid, sizeof uid, "uid%u", (unsigned)geteuid());
        user = uid;
    }
    int n = snprintf(out, KOSMOS_KEY_MAX + 1, "kosmos-submit/%s@%s", user, host);
    if (n < 0 || n > KOSMOS_KEY_MAX || !ks_utf8_valid(out, strlen(out))) /* cut or odd */
        snprintf(out, KOSMOS_KEY_MAX + 1, "kosmos-submit/uid%u", (unsigned)geteuid());
}

/* ---- inputs --------------------------------------------------------------------------------- */

typedef struct source {
    submit_paths *walker;
    FILE *jobs;
    size_t jobs_line;
    char *line;
    size_t line_cap;
} source;

static ks_status slot_new(const char *path, const char *prompt, slot **out)
{
    slot *sl = calloc(1, sizeof *sl);
    *out = NULL;
    if (!sl || !(sl->path = strdup(path)) || !(sl->prompt = strdup(prompt))) {
        slot_free(sl);
        return ks_fail(KS_ERR_NOMEM, "out of memory for an input");
    }
    *out = sl;
    return KS_OK;
}

/* A jobs line -> a slot (with `error` set when the line is unusable). NULL when out of memory. */
static slot *jobs_item(const submit_options *o, const char *line, size_t len, size_t number)
{
    json_error_t jerr;
    json_t *value = json_loadb(line, len, 0, &jerr);
    const char *path = json_string_value(json_object_get(value, "path"));
    const json_t *jprompt = json_object_get(value, "prompt");
    const char *prompt = jprompt && !json_is_null(jprompt) ? json_string_value(jprompt) : o->prompt;
    const json_t *bboxes = json_object_get(value, "bboxes");
    char where[64];
    snprintf(where, sizeof where, "%s:%zu", o->jobs_path, number);
    slot *sl = NULL;
    if (slot_new(path && path[0] ? path : where, prompt ? prompt : "", &sl) == KS_OK) {
        char message[512] = "";
        if (!value)
            snprintf(message, sizeof message, "--jobs line %zu is not JSON: %s", number, jerr.text);
        else if (!json_is_object(value))
            snprintf(message, sizeof message, "--jobs line %zu is not an object", number);
        else if (!path || !path[0])
            snprintf(message, sizeof message, "--jobs line %zu has no \"path\" string", number);
        else if (!prompt || !prompt[0] || strlen(prompt) > 4096)
            snprintf(message, sizeof message,
                     "--jobs line %zu: \"prompt\" must be a string of "
                     "1..4096 bytes",
                     number);
        if (message[0] && !(sl->error = strdup(message))) {
            slot_free(sl);
            sl = NULL;
        }
        if (sl && !message[0] && bboxes && !json_is_null(bboxes))
            sl->bboxes = json_incref((json_t *)bboxes);
    }
    json_decref(value);
    return sl;
}

/* The next item: 1 with *out (caller owns), 0 at the end, -1 out of memory. */
static int source_next(source *src, const submit_options *o, slot **out)
{
    *out = NULL;
    if (src->walker) {
        const char *path;
        ks_error_clear();
        int r = submit_paths_next(src->walker, &path);
        if (r != 0) {
            slot *sl;
            if (slot_new(path, o->prompt, &sl) != KS_OK)
                return -1;
            if (r < 0 && !(sl->error = strdup(ks_error_message()))) {
                slot_free(sl);
                return -1;
            }
            *out = sl;
            return 1;
        }
        submit_paths_destroy(&src->walker);
    }
    while (src->jobs) {
        ssize_t len = getline(&src->line, &src->line_cap, src->jobs);
        if (len < 0) {
            fclose(src->jobs);
            src->jobs = NULL;
            break;
        }
        src->jobs_line++;
        while (len && (src->line[len - 1] == '\n' || src->line[len - 1] == '\r'))
            src->line[--len] = '\0';
        if (!len)
            continue;
        return (*out = jobs_item(o, src->line, (size_t)len, src->jobs_line)) ? 1 : -1;
    }
    return 0;
}

static ks_status source_open(source *src, const submit_options *o)
{
    ks_status st = KS_OK;
    *src = (source){0};
    if (o->n_paths && (st = submit_paths_new(o->paths, o->n_paths, &src->walker)) != KS_OK)
        return st;
    if (o->jobs_path && !(src->jobs = fopen(o->jobs_path, "r")))
        return ks_fail(KS_ERR_IO, "cannot read --jobs %s: %s", o->jobs_path, strerror(errno));
    return KS_OK;
}

static void source_close(source *src)
{
    submit_paths_destroy(&src->walker);
    if (src->jobs)
        fclose(src->jobs);
    free(src->line);
}

/* The counting thread: the same inputs, without reading any image. */
static void *count_main(void *arg)
{
    run_state *s = arg;
    const submit_options *o = s->o;
    uint64_t n = 0;
    bool complete = true;
    submit_paths *w = NULL;
    /* Without a walker (out of memory) the count stays a lower bound: never claim it final. */
    bool walkable = !o->n_paths || submit_paths_new(o->paths, o->n_paths, &w) == KS_OK;
    const char *path;
    while (w && !atomic_load(&s->count_stop) && submit_paths_next(w, &path) != 0)
        if (++n % 1000 == 0)
            submit_progress_total(s->progress, n, false);
    complete = walkable && !atomic_load(&s->count_stop);
    submit_paths_destroy(&w);
    FILE *jobs = o->jobs_path ? fopen(o->jobs_path, "r") : NULL;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (jobs && !atomic_load(&s->count_stop) && (len = getline(&line, &cap, jobs)) >= 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        n += len > 0;
    }
    complete = complete && !atomic_load(&s->count_stop);
    free(line);
    if (jobs)
        fclose(jobs);
    if (complete)
        submit_progress_total(s->progress, n, true);
    return NULL;
}

/* ---- building and submitting a job ---------------------------------------------------------- */

/* Patch indices (ul, lr) -> a normalized box that the workers turn back into exactly (ul, lr)
 * (coordinate_to_patch_index: floor(x1 * 32), ceil(x2 * 32 - 1)). */
static bool patch_pair_box(int64_t ul, int64_t lr, kosmos_box_t *box)
{
    if (ul < 0 || ul > 1023 || lr < 0 || lr > 1023)
        return false;
    double ux = (double)(ul % 32), uy = (double)(ul / 32), lx = (double)(lr % 32),
           ly = (double)(lr / 32);
    if (lx < ux || ly < uy)
        return false;
    *box = (kosmos_box_t){(ux + 0.25) / 32, (uy + 0.25) / 32, (lx + 0.75) / 32, (ly + 0.75) / 32};
    return true;
}

/* Adds the boxes of `json` (the --jobs "bboxes") to the last prompt of `job`, and their
 * canonical text to `canon`. */
static ks_status add_boxes(kosmos_job_t *job, const json_t *json, ks_buf *canon)
{
    kt_bboxes b;
    kt_bboxes_init(&b);
    ks_status st = kt_bboxes_from_json(json, &b);
    kosmos_box_t *boxes = NULL;
    for (size_t p = 0; !st && !b.is_null && p < b.count; p++) {
        const kt_phrase_boxes *ph = &b.phrases[p];
        size_t n = ph->is_null ? 0 : ph->count;
        free(boxes);
        boxes = calloc(n ? n : 1, sizeof *boxes);
        if (!boxes) {
            st = ks_fail(KS_ERR_NOMEM, "out of memory");
            break;
        }
        ks_buf_append_str(canon, p ? "|" : "");
        for (size_t k = 0; !st && k < n; k++) {
            const kt_box *in = &ph->boxes[k];
            if (in->is_patch_pair) {
                if (!patch_pair_box(in->ul, in->lr, &boxes[k]))
                    st = ks_fail(KS_ERR_INVALID,
                                 "bboxes: the patch pair [%lld, %lld] is not an "
                                 "upper-left, lower-right pair of 0..1023",
                                 (long long)in->ul, (long long)in->lr);
            } else {
                boxes[k] = (kosmos_box_t){in->x1, in->y1, in->x2, in->y2};
            }
            if (!st)
                ks_buf_printf(canon, "%s%.17g,%.17g,%.17g,%.17g", k ? ";" : "", boxes[k].x1,
                              boxes[k].y1, boxes[k].x2, boxes[k].y2);
        }
        if (!st && kosmos_job_add_phrase_boxes(job, boxes, n) != KOSMOS_OK)
            st = ks_fail(KS_ERR_INVALID, "bboxes: %s", kosmos_error_message());
    }
    free(boxes);
    kt_bboxes_fini(&b);
    return st;
}

/* Reads the image, hashes it, builds the job and its key (for sl->round). On failure the
 * message is ks_error's. Safe on any thread. */
static ks_status prepare(const submit_options *o, slot *sl, kosmos_job_t **out)
{
    char *bytes = NULL;
    size_t len = 0;
    ks_buf canon;
    ks_buf_init(&canon);
    kosmos_job_t *job = NULL;
    ks_status st = ks_file_read(sl->path, MAX_IMAGE_BYTES, &bytes, &len);
    if (st)
        goto done;
    if (!len) {
        st = ks_fail(KS_ERR_FORMAT, "%s is empty", sl->path);
        goto done;
    }
    uint8_t sha[KS_SHA256_LEN];
    ks_sha256(bytes, len, sha);
    if (!(job = kosmos_job_new())) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto done;
    }
    kosmos_generation_t gen;
    kosmos_generation_init(&gen);
    gen.max_new_tokens = o->max_new_tokens;
    const unsigned outputs = KOSMOS_OUTPUT_BOXES_PX | KOSMOS_OUTPUT_TIMINGS;
    if (kosmos_job_set_image_data(job, bytes, len) || kosmos_job_add_prompt(job, sl->prompt) ||
        kosmos_job_set_outputs(job, outputs) || kosmos_job_set_priority(job, o->priority) ||
        (o->max_new_tokens > 0 && kosmos_job_set_generation(job, &gen))) {
        st = ks_fail(KS_ERR_INVALID, "%s", kosmos_error_message());
        goto done;
    }
    if (sl->bboxes && (st = add_boxes(job, sl->bboxes, &canon)))
        goto done;
    char params[96];
    snprintf(params, sizeof params, "max_new_tokens=%d;outputs=%u", o->max_new_tokens, outputs);
    submit_key(sha, sl->prompt, canon.data ? canon.data : "", params, sl->round, sl->key);
done:
    if (st)
        kosmos_job_destroy(&job);
    *out = job;
    ks_buf_fini(&canon);
    free(bytes);
    return st;
}

typedef enum { SUBMITTED, REFUSED, FATAL } submit_outcome;

/* Submits `job` under sl->key, riding out BUSY and transient failures. REFUSED: the job can
 * never run (message in *message); FATAL: the broker is unreachable (set_fatal done). */
static submit_outcome submit_job(run_state *s, kosmos_client_t *c, const kosmos_job_t *job,
                                 slot *sl, bool *duplicate, char *message, size_t cap)
{
    int transient = 0;
    while (!stopping(s)) {
        kosmos_submit_info_t info;
        kosmos_error_t err = kosmos_client_submit(c, job, sl->key, sl->job_id, &info);
        switch (err) {
        case KOSMOS_OK: *duplicate = info.duplicate; return SUBMITTED;
        case KOSMOS_ERR_CONFLICT: /* same computation, other priority: follow the first job */
            snprintf(sl->job_id, sizeof sl->job_id, "%s", info.job_id);
            *duplicate = true;
            return SUBMITTED;
        case KOSMOS_ERR_BUSY:
            pause_ms(s, info.retry_after_ms ? info.retry_after_ms : 1000);
            continue;
        case KOSMOS_ERR_TIMEOUT:
        case KOSMOS_ERR_UNAVAILABLE:
        case KOSMOS_ERR_IO:
            if (++transient < TRANSIENT_TRIES) {
                pause_ms(s, 1000u * (unsigned)transient);
                continue;
            }
            break;
        case KOSMOS_ERR_REJECTED:
        case KOSMOS_ERR_INVALID:
        case KOSMOS_ERR_TOO_LARGE:
            snprintf(message, cap, "rejected: %s", kosmos_error_message());
            return REFUSED;
        default: break;
        }
        char fatal[512];
        snprintf(fatal, sizeof fatal, "submitting to %s failed: %s", s->endpoint,
                 kosmos_error_message());
        set_fatal(s, fatal);
        return FATAL;
    }
    return FATAL;
}

/* ---- results -------------------------------------------------------------------------------- */

static void write_line(run_state *s, json_t *line, bool ok)
{
    if (!line) {
        set_fatal(s, "out of memory building an output line");
        return;
    }
    ks_status st = submit_output_write(s->out, line);
    if (st) {
        set_fatal(s, ks_error_message());
        return;
    }
    if (!ok)
        atomic_store(&s->failed, true);
    submit_progress_add(s->progress, &(submit_counts){.ok = ok, .failed = !ok});
}

static void write_error(run_state *s, const slot *sl, const char *status, const char *message)
{
    json_t *line = submit_output_error_line(sl->path, sl->prompt, status,
                                            sl->job_id[0] ? sl->job_id : NULL, message);
    write_line(s, line, false);
    json_decref(line);
}

static void finish_result(run_state *s, kosmos_client_t *c, const slot *sl,
                          const kosmos_result_t *r)
{
    json_t *line = submit_output_result_line(sl->path, sl->prompt, r, 0);
    bool ok = line && !strcmp(json_string_value(json_object_get(line, "status")), "ok");
    if (ok && s->o->draw_dir && submit_draw(s->o->draw_dir, sl->path, sl->prompt, r, 0)) {
        fprintf(stderr, "kosmos submit: %s\n", ks_error_message());
        atomic_store(&s->failed, true);
    }
    if (ok && s->coco && coco_add(s->coco, line))
        set_fatal(s, ks_error_message());
    write_line(s, line, ok);
    json_decref(line);
    if (s->o->ack && !stopping(s))
        kosmos_client_ack(c, sl->job_id); /* best effort: unacked results expire anyway */
}

/* Resubmits sl under the next round's key (its result was acked or forgotten). */
static bool resubmit(run_state *s, kosmos_client_t *c, slot *sl)
{
    if (++sl->round >= MAX_ROUNDS) {
        write_error(s, sl, "failed", "the broker lost the result of every attempt");
        return false;
    }
    kosmos_job_t *job = NULL;
    if (prepare(s->o, sl, &job)) {
        write_error(s, sl, "failed", ks_error_message());
        return false;
    }
    bool duplicate = false;
    char message[512];
    submit_outcome outcome = submit_job(s, c, job, sl, &duplicate, message, sizeof message);
    kosmos_job_destroy(&job);
    if (outcome == REFUSED)
        write_error(s, sl, "failed", message);
    return outcome == SUBMITTED;
}

/* Follows one submitted job to its line. */
static void complete(run_state *s, kosmos_client_t *c, slot *sl)
{
    int transient = 0;
    while (!stopping(s)) {
        kosmos_job_info_t info;
        kosmos_result_t *r = NULL;
        kosmos_error_t err = kosmos_client_fetch(c, sl->job_id, FETCH_WAIT_MS, &info, &r);
        if (err == KOSMOS_OK && r) {
            finish_result(s, c, sl, r);
            kosmos_result_destroy(&r);
            return;
        }
        if (err == KOSMOS_OK && info.state == KOSMOS_STATE_ACKED) {
            if (!resubmit(s, c, sl))
                return;
            continue;
        }
        if (err == KOSMOS_OK) {
            transient = 0;
            continue;
        }
        if (err == KOSMOS_ERR_NOT_FOUND) { /* forgotten after retention: the key is free again */
            sl->round--;
            if (!resubmit(s, c, sl))
                return;
            continue;
        }
        if ((err == KOSMOS_ERR_TIMEOUT || err == KOSMOS_ERR_UNAVAILABLE || err == KOSMOS_ERR_IO) &&
            ++transient < TRANSIENT_TRIES) {
            pause_ms(s, 1000u * (unsigned)transient);
            continue;
        }
        char fatal[512];
        snprintf(fatal, sizeof fatal, "waiting for job %s at %s failed: %s", sl->job_id,
                 s->endpoint, kosmos_error_message());
        set_fatal(s, fatal);
        return;
    }
}

static kosmos_client_t *client_new(run_state *s)
{
    kosmos_client_params_t p;
    kosmos_client_params_init(&p);
    p.broker = s->endpoint;
    p.client_id = s->client_id;
    return kosmos_client_new(&p);
}

static void *waiter_main(void *arg)
{
    run_state *s = arg;
    kosmos_client_t *c = client_new(s);
    if (!c) {
        char fatal[512];
        snprintf(fatal, sizeof fatal, "cannot create a client for %s: %s", s->endpoint,
                 kosmos_error_message());
        set_fatal(s, fatal);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!s->head && !s->input_done && !stopping(s))
            pthread_cond_wait(&s->changed, &s->lock);
        slot *sl = stopping(s) ? NULL : s->head;
        if (sl && !(s->head = sl->next))
            s->tail = NULL;
        pthread_mutex_unlock(&s->lock);
        if (!sl)
            break;
        complete(s, c, sl);
        slot_free(sl);
        pthread_mutex_lock(&s->lock);
        s->in_flight--;
        pthread_cond_broadcast(&s->changed);
        pthread_mutex_unlock(&s->lock);
    }
    kosmos_client_destroy(&c);
    return NULL;
}

/* ---- the run -------------------------------------------------------------------------------- */

static void coco_from_resume(const json_t *line, void *ctx)
{
    coco *c = ctx;
    if (c)
        coco_add(c, line);
}

/* Waits until the window has room; false when the run stops. */
static bool window_acquire(run_state *s)
{
    pthread_mutex_lock(&s->lock);
    while (s->in_flight >= s->o->window && !stopping(s)) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1; /* wake for interrupts and a failed embedded farm */
        pthread_cond_timedwait(&s->changed, &s->lock, &until);
        if (s->embedded && submit_embedded_failed(s->embedded)) {
            pthread_mutex_unlock(&s->lock);
            set_fatal(s, "the embedded broker or worker stopped");
            return false;
        }
    }
    bool ok = !stopping(s);
    if (ok)
        s->in_flight++;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

static void window_release(run_state *s)
{
    pthread_mutex_lock(&s->lock);
    s->in_flight--;
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

static void feed(run_state *s, kosmos_client_t *c, const submit_resume *resume)
{
    source src;
    if (source_open(&src, s->o) != KS_OK) {
        char fatal[512];
        snprintf(fatal, sizeof fatal, "cannot open the inputs: %s", ks_error_message());
        set_fatal(s, fatal);
        source_close(&src);
        return;
    }
    while (!stopping(s)) {
        slot *sl;
        int r = source_next(&src, s->o, &sl);
        if (r < 0) {
            set_fatal(s, "out of memory reading the inputs");
            break;
        }
        if (r == 0)
            break;
        submit_progress_add(s->progress, &(submit_counts){.seen = 1});
        if (sl->error) {
            write_error(s, sl, "failed", sl->error);
        } else if (resume && submit_resume_is_done(resume, sl->path, sl->prompt)) {
            submit_progress_add(s->progress, &(submit_counts){.skipped = 1});
        } else {
            sl->round = resume ? submit_resume_round(resume, sl->path, sl->prompt) : 0;
            kosmos_job_t *job = NULL;
            ks_error_clear();
            if (prepare(s->o, sl, &job)) {
                write_error(s, sl, "failed", ks_error_message());
            } else if (window_acquire(s)) {
                bool duplicate = false;
                char message[512];
                submit_outcome outcome = submit_job(s, c, job, sl, &duplicate, message,
                                                    sizeof message);
                if (outcome == SUBMITTED) {
                    submit_progress_add(s->progress,
                                        &(submit_counts){.submitted = 1, .duplicates = duplicate});
                    pthread_mutex_lock(&s->lock);
                    if (s->tail)
                        s->tail->next = sl;
                    else
                        s->head = sl;
                    s->tail = sl;
                    pthread_cond_broadcast(&s->changed);
                    pthread_mutex_unlock(&s->lock);
                    sl = NULL; /* the waiters' now; they release the window */
                } else {
                    if (outcome == REFUSED)
                        write_error(s, sl, "failed", message);
                    window_release(s);
                }
            }
            kosmos_job_destroy(&job);
        }
        slot_free(sl);
    }
    source_close(&src);
}

/* Waits for the waiters to drain the queue (or the run to stop). */
static void drain(run_state *s)
{
    pthread_mutex_lock(&s->lock);
    s->input_done = true;
    pthread_cond_broadcast(&s->changed);
    while (s->in_flight > 0 && !stopping(s)) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&s->changed, &s->lock, &until);
        if (s->embedded && submit_embedded_failed(s->embedded)) {
            pthread_mutex_unlock(&s->lock);
            set_fatal(s, "the embedded broker or worker stopped");
            pthread_mutex_lock(&s->lock);
        }
    }
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->lock);
}

static int run(const submit_options *o)
{
    run_state s = {.o = o};
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.changed, NULL);
    if (o->client_id)
        snprintf(s.client_id, sizeof s.client_id, "%s", o->client_id);
    else
        default_client_id(s.client_id);

    int code = CLI_EXIT_USAGE;
    submit_resume resume;
    submit_resume_init(&resume);
    kosmos_client_t *c = NULL;
    pthread_t waiters[MAX_WAITERS], counter;
    int n_waiters = 0;
    bool counting = false, fed = false;
    submit_embedded_stats stats = {0};
    FILE *out = stdout;

    if (o->coco_path && coco_new(&s.coco) != KS_OK) {
        cli_usage_error("submit: %s", ks_error_message());
        goto done;
    }
    if (o->resume && submit_resume_load(&resume, o->out_path, coco_from_resume, s.coco)) {
        cli_usage_error("submit: --resume: %s", ks_error_message());
        goto done;
    }
    if (o->out_path && !(out = fopen(o->out_path, o->resume ? "a" : "w"))) {
        cli_usage_error("submit: cannot write %s: %s", o->out_path, strerror(errno));
        goto done;
    }
    if (submit_output_new(out, out != stdout, resume.partial_last_line, &s.out) != KS_OK) {
        cli_usage_error("submit: %s", ks_error_message());
        goto done;
    }

    s.endpoint = o->broker;
    if (o->model_dir) {
        if (!o->quiet)
            fprintf(stderr, "kosmos submit: starting a broker and a worker in-process (%s)\n",
                    o->model_dir);
        if (submit_embedded_start(o->model_dir, o->device, 0, &s.embedded)) {
            cli_usage_error("submit: %s", ks_error_message());
            goto done;
        }
        s.endpoint = submit_embedded_endpoint(s.embedded);
    }
    /* One status round trip, with short timeouts: a broker that does not answer is a
     * connection error (exit 2) before anything is written. */
    kosmos_client_params_t probe_params;
    kosmos_client_params_init(&probe_params);
    probe_params.broker = s.endpoint;
    probe_params.client_id = s.client_id;
    probe_params.reply_timeout_ms = 3000;
    probe_params.retries = 1;
    kosmos_client_t *probe = kosmos_client_new(&probe_params);
    kosmos_broker_status_t *status = NULL;
    kosmos_error_t err = probe ? kosmos_client_status(probe, false, &status) : KOSMOS_ERR_INVALID;
    kosmos_broker_status_destroy(&status);
    if (err != KOSMOS_OK) {
        cli_usage_error("submit: the broker at %s does not answer: %s", s.endpoint,
                        kosmos_error_message());
        kosmos_client_destroy(&probe);
        goto done;
    }
    kosmos_client_destroy(&probe);
    if (!(c = client_new(&s))) {
        cli_usage_error("submit: --broker %s: %s", s.endpoint, kosmos_error_message());
        goto done;
    }
    if (submit_progress_new(stderr, o->quiet, &s.progress) != KS_OK) {
        cli_usage_error("submit: %s", ks_error_message());
        goto done;
    }

    bool stdin_list = false;
    for (size_t i = 0; i < o->n_paths; i++)
        stdin_list |= !strcmp(o->paths[i], "@-");
    if (!stdin_list && pthread_create(&counter, NULL, count_main, &s) == 0)
        counting = true;
    int want = o->window < MAX_WAITERS ? o->window : MAX_WAITERS;
    for (; n_waiters < want; n_waiters++)
        if (pthread_create(&waiters[n_waiters], NULL, waiter_main, &s) != 0)
            break;
    if (!n_waiters) {
        cli_usage_error("submit: cannot start threads");
        goto done;
    }

    fed = true;
    feed(&s, c, o->resume ? &resume : NULL);
    drain(&s);
    code = atomic_load(&s.fatal)                   ? CLI_EXIT_USAGE
           : interrupted || atomic_load(&s.failed) ? CLI_EXIT_FAILED
                                                   : CLI_EXIT_OK;
done:
    if (n_waiters || counting) {
        pthread_mutex_lock(&s.lock);
        s.input_done = true;
        if (code == CLI_EXIT_USAGE)
            atomic_store(&s.fatal, true);
        pthread_cond_broadcast(&s.changed);
        pthread_mutex_unlock(&s.lock);
    }
    atomic_store(&s.count_stop, true);
    if (counting)
        pthread_join(counter, NULL);
    for (int i = 0; i < n_waiters; i++)
        pthread_join(waiters[i], NULL);
    while (s.head) { /* left by a stopped run: still at the broker, resumable */
        slot *next = s.head->next;
        slot_free(s.head);
        s.head = next;
    }
    kosmos_client_destroy(&c);
    if (s.coco && code != CLI_EXIT_USAGE && coco_write(s.coco, o->coco_path)) {
        fprintf(stderr, "kosmos submit: --coco: %s\n", ks_error_message());
        code = CLI_EXIT_FAILED;
    }
    if (s.out) { /* it owns `out` */
        if (submit_output_destroy(&s.out) && code == CLI_EXIT_OK) {
            fprintf(stderr, "kosmos submit: %s\n", ks_error_message());
            code = CLI_EXIT_FAILED;
        }
    } else if (out && out != stdout) {
        fclose(out);
    }
    submit_embedded_stop(&s.embedded, interrupted || code == CLI_EXIT_USAGE, &stats);
    if (s.progress) {
        char extra[600] = "";
        if (atomic_load(&s.fatal) && s.fatal_message[0])
            snprintf(extra, sizeof extra, "stopped: %s", s.fatal_message);
        else if (interrupted)
            snprintf(extra, sizeof extra, "interrupted (resume with --resume)");
        else if (o->model_dir)
            snprintf(extra, sizeof extra, "the embedded worker computed %llu",
                     (unsigned long long)stats.results_stored);
        if (fed && (!o->quiet || atomic_load(&s.fatal)))
            submit_progress_finish(s.progress, extra[0] ? extra : NULL);
        submit_progress_destroy(&s.progress);
    }
    coco_destroy(&s.coco);
    submit_resume_fini(&resume);
    pthread_cond_destroy(&s.changed);
    pthread_mutex_destroy(&s.lock);
    return code;
}

int cmd_submit(int argc, char **argv)
{
    submit_options options;
    int code = parse_options(argc, argv, &options);
    if (code == CLI_EXIT_OK) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        code = run(&options);
    } else if (code < 0) {
        code = CLI_EXIT_OK;
    }
    free(options.prompt_owned);
    return code;
}
