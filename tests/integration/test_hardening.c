/* test_hardening: what a hostile or unlucky world does to the farm (issue 17), with real
 * processes - kosmos-broker, kosmos-worker (tiny model, --device ref) and C clients or raw
 * sockets in a temporary folder - one scenario per run (`test_hardening BROKER WORKER MODEL
 * SCENARIO`), each a CTest test and a scenario of ops/soak-farm.sh:
 *
 *   cancel_step  a long job (256 tokens) is cancelled while it computes: it stops within a
 *                decode step, the short job in the same batch and one queued after end DONE
 *   compute_cap  --max-job-seconds shorter than a long job's compute time, a short job queued
 *                behind it on a one-slot worker: the short job ends DONE at its first attempt,
 *                the long one is stopped at the cap each time and ends DEAD (3 crashes)
 *   unstarted    kill -9 a worker computing one job and holding another queued: only the
 *                computing one is charged a crash; both end DONE elsewhere
 *   stop_grace   SIGTERM a worker in the middle of a long job with --stop-grace 1: it stops the
 *                job at the next step, exits 0, and the job goes back without penalty
 *   image_paths  image_uri jobs naming a FIFO and a symlink that leads out of the image root
 *                fail at once (not retriable), and the worker goes on: a job behind the FIFO
 *                on the same one-slot worker ends DONE, a symlink within the root is read
 *   deadline_never  jobs with the deadline 2^64 - 1 ("never") end DONE on a slow worker, the
 *                one running and the one queued behind it (deadline + heartbeat used to wrap
 *                round: the broker sent Cancel{DEADLINE} at once and the job ended EXPIRED)
 *   two_brokers  a second kosmos-broker on the same --db exits 3 at once (database_locked) and
 *                the first goes on serving; after the first stops, a new one starts
 *   raw_zmtp     a broker on a non-loopback TCP endpoint without CURVE warns at start
 *                (curve_off, per endpoint; a broker on ipc:// does not); a raw ZMTP 3 peer (a
 *                plain TCP socket) that sends the worker endpoint a frame bigger than any
 *                worker message is disconnected by libzmq before it is buffered
 *   refusal      a worker refused for now (--max-workers 1) keeps retrying with backoff and
 *                serves once a slot frees; refused for good (Disconnect{REJECTED} from a fake
 *                broker, a CURVE key the broker does not know) it exits with a code that
 *                ops/kosmos-worker@.service's RestartPreventExitStatus keeps down
 *
 * No wall-clock thresholds: orderings, counters and exit codes; the only time limits are
 * generous ones against hangs. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "farm_harness.h"

static fh_farm farm;
static uint8_t *png;
static size_t png_len;

static const char *farm_file(const char *name)
{
    static char path[4][400];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", farm.dir, name);
    return p;
}

/* Submits one job and returns its id (dies when it is not accepted). */
static void submit_ok(fh_client *c, const fh_job *j, char id[65])
{
    int out = fh_submit(c, j, id, NULL, 10000);
    if (out != KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED)
        fh_die("submit (%s): outcome %d", j->key ? j->key : "no key", out);
}

/* The job's final FetchReply state, or -1. */
static int final_state(fh_client *c, const char *id, uint64_t timeout_ms)
{
    kp_inbound *in = fh_fetch_final(c, id, timeout_ms);
    int s = in ? (int)fh_reply(in)->fetch->state : -1;
    kp_inbound_destroy(&in);
    return s;
}

/* The final Result's message (static buffer), "" without one. */
static const char *final_message(fh_client *c, const char *id, int *state)
{
    static char msg[600];
    kp_inbound *in = fh_fetch_final(c, id, 120000);
    const Kosmos__V1__FetchReply *f = in ? fh_reply(in)->fetch : NULL;
    *state = f ? (int)f->state : -1;
    snprintf(msg, sizeof msg, "%s", f && f->result && f->result->message ? f->result->message : "");
    kp_inbound_destroy(&in);
    return msg;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        fh_die("cannot write %s", path);
}

/* ---- failure 3: stops at every decode step, lease accounting ------------------------------ */

/* A long job: its prompt carries the marker that --test-slow-marker names, so that each decode
 * step of it takes --test-step-ms longer on a kosmos-test-worker started with slow_worker, and it
 * generates exactly 256 tokens: over 4 minutes there, fast elsewhere (a worker without
 * slow_worker computes it for real). */
#define LONG_MARKER "LONG-JOB"
static const char *const slow_worker[] = {"--test-slow-marker", LONG_MARKER, "--test-step-ms",
                                          "1000", NULL};

static fh_job long_job(const char *key)
{
    fh_job j = {.image = png,
                .image_len = png_len,
                .key = key,
                .prompt = "<grounding>" LONG_MARKER " An image of",
                .max_new_tokens = 256,
                .min_new_tokens = 256};
    return j;
}

static fh_job short_job(const char *key)
{
    fh_job j = {.image = png, .image_len = png_len, .key = key, .max_new_tokens = 8};
    return j;
}

/* Lines of `path` holding both needles. */
static size_t log_count2(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    size_t n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, a) && strstr(line, b);
    if (f)
        fclose(f);
    return n;
}

/* Waits (a guard against hangs, not a measure) until `path` has `count` lines holding both
 * needles (b NULL: only a). */
static bool wait_log(const char *path, const char *a, const char *b, size_t count,
                     uint64_t guard_ms)
{
    uint64_t end = fh_now_ms() + guard_ms;
    while ((b ? log_count2(path, a, b) : fh_log_count(path, a)) < count) {
        if (fh_now_ms() > end)
            return false;
        fh_sleep_ms(20);
    }
    return true;
}

static void cancel_job(fh_client *c, const char *id)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__CancelRequest cr = KOSMOS__V1__CANCEL_REQUEST__INIT;
    cr.job_id = (char *)id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_CANCEL;
    req.cancel = &cr;
    kp_inbound *in = fh_call(c, &req, NULL, 0, 10000);
    FH_CHECK(in && fh_reply(in)->cancel && fh_reply(in)->cancel->cancelled, "cancel refused");
    kp_inbound_destroy(&in);
}

/* The final result's attempt, 0 without one. */
static uint32_t final_attempt(fh_client *c, const char *id, int *state)
{
    kp_inbound *in = fh_fetch_final(c, id, 120000);
    const Kosmos__V1__FetchReply *f = in ? fh_reply(in)->fetch : NULL;
    *state = f ? (int)f->state : -1;
    uint32_t a = f && f->result ? f->result->attempt : 0;
    kp_inbound_destroy(&in);
    return a;
}

static void scenario_cancel_step(void)
{
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "cancel-step", false);
    fh_wait_workers(c, 0, 30000);
    /* Both dispatched in the worker's first cycle, so usually one batch; the checks hold
     * either way. Uncancelled, the long job computes 256 steps of 1 s: over 4 minutes. */
    char long_id[65], short_id[65], after_id[65];
    fh_job l = long_job("long");
    submit_ok(c, &l, long_id);
    fh_job j = short_job("short");
    submit_ok(c, &j, short_id);
    const char *two[] = {"--max-batch", "2", NULL};
    fh_start_worker(&farm, 0, NULL, two, slow_worker);
    FH_CHECK(wait_log(farm_file("worker0.log"), "\"event\":\"computing\"", fh_job_field(long_id), 1,
                      120000),
             "the long job never started computing");
    fh_sleep_ms(2500); /* a few steps in */
    cancel_job(c, long_id);
    /* The guards are against the 4-minute hang of a generation that does not stop. */
    FH_CHECK(final_state(c, short_id, 120000) == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE,
             "the short job did not finish while the long one was cancelled");
    FH_CHECK(final_state(c, long_id, 10000) == KOSMOS__V1__JOB_STATE__JOB_STATE_CANCELLED,
             "the long job is not CANCELLED");
    /* The worker stopped computing it: its result came back (STALE: the job was cancelled). */
    FH_CHECK(wait_log(farm_file("worker0.log"), "\"disposition\":\"stale\"", NULL, 1, 120000),
             "the cancelled job's generation never ended");
    fh_job a = short_job("after");
    submit_ok(c, &a, after_id);
    FH_CHECK(final_state(c, after_id, 120000) == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE,
             "a job after the cancel did not run");
    fh_client_destroy(&c);
}

static void scenario_compute_cap(void)
{
    const char *cap[] = {"--max-job-seconds", "2", NULL};
    fh_start_broker(&farm, cap);
    fh_client *c = fh_client_new(&farm, "compute-cap", false);
    const char *one[] = {"--max-batch", "1", NULL};
    fh_start_worker(&farm, 0, NULL, one, slow_worker);
    fh_wait_workers(c, 1, 60000);
    char long_id[65], short_id[65];
    fh_job l = long_job("long");
    submit_ok(c, &l, long_id);
    FH_CHECK(wait_log(farm_file("worker0.log"), "\"event\":\"computing\"", NULL, 1, 120000),
             "the long job never started");
    /* Queued behind it on the one slot: its lease must not lapse while it waits. */
    fh_job j = short_job("short");
    submit_ok(c, &j, short_id);
    int st;
    uint32_t attempt = final_attempt(c, short_id, &st);
    FH_CHECK(st == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE && attempt == 1,
             "the short job: state %d at attempt %u (it must run once, uncharged)", st, attempt);
    const char *msg = final_message(c, long_id, &st);
    FH_CHECK(st == KOSMOS__V1__JOB_STATE__JOB_STATE_DEAD && strstr(msg, "--max-job-seconds"),
             "the long job: state %d, %s", st, msg);
    FH_CHECK(log_count2(farm_file("broker.log"), "\"event\":\"lease_lapsed\"",
                        fh_job_field(short_id)) == 0,
             "the queued short job's lease lapsed");
    FH_CHECK(log_count2(farm_file("broker.log"), "\"crash\":true", fh_job_field(long_id)) == 3,
             "the long job was not charged exactly its 3 capped attempts");
    /* Each capped attempt was stopped by the worker at a step, not run to its end. */
    FH_CHECK(wait_log(farm_file("worker0.log"), "\"event\":\"result\"", fh_job_field(long_id), 3,
                      120000),
             "the worker did not stop each capped attempt");
    fh_client_destroy(&c);
}

static void scenario_unstarted(void)
{
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "unstarted", false);
    /* One job computes, one more is prefetched: the long job computes alone (it came first),
     * the second waits in the worker. */
    const char *two[] = {"--max-batch", "1", "--prefetch", "1", NULL};
    fh_start_worker(&farm, 0, NULL, two, slow_worker);
    fh_wait_workers(c, 1, 60000);
    char long_id[65], queued_id[65];
    fh_job l = long_job("long");
    submit_ok(c, &l, long_id);
    FH_CHECK(wait_log(farm_file("worker0.log"), "\"event\":\"computing\"", NULL, 1, 120000),
             "the long job never started");
    fh_job j = short_job("queued");
    submit_ok(c, &j, queued_id);
    FH_CHECK(wait_log(farm_file("worker0.log"), "\"event\":\"dispatch\"", fh_job_field(queued_id),
                      1, 60000),
             "the second job was not dispatched to the busy worker");
    fh_sleep_ms(600); /* a few heartbeats list it queued */
    fh_kill9(&farm.worker_pid[0]);
    fh_start_worker(&farm, 1, NULL, two, NULL);
    int st;
    uint32_t a = final_attempt(c, queued_id, &st);
    FH_CHECK(st == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE && a == 2, "queued job: %d at %u", st, a);
    a = final_attempt(c, long_id, &st);
    FH_CHECK(st == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE && a == 2, "long job: %d at %u", st, a);
    FH_CHECK(log_count2(farm_file("broker.log"), "\"crash\":true", fh_job_field(long_id)) == 1,
             "the computing job was not charged its crash");
    FH_CHECK(log_count2(farm_file("broker.log"), "\"crash\":false", fh_job_field(queued_id)) == 1 &&
                 log_count2(farm_file("broker.log"), "\"crash\":true", fh_job_field(queued_id)) ==
                     0,
             "the queued job was charged a crash it did not cause");
    fh_client_destroy(&c);
}

static void scenario_stop_grace(void)
{
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "stop-grace", false);
    const char *grace[] = {"--max-batch", "1", "--stop-timeout", "600", "--stop-grace", "1", NULL};
    fh_start_worker(&farm, 0, NULL, grace, slow_worker);
    fh_wait_workers(c, 1, 60000);
    char long_id[65];
    fh_job l = long_job("long");
    submit_ok(c, &l, long_id);
    FH_CHECK(wait_log(farm_file("worker0.log"), "\"event\":\"computing\"", NULL, 1, 120000),
             "the long job never started");
    kill(farm.worker_pid[0], SIGTERM);
    /* A guard against the 4 minutes the batch would take if nothing stopped it. */
    int code = fh_wait_exit(farm.worker_pid[0], 120000);
    farm.worker_pid[0] = 0;
    FH_CHECK(code == 0, "worker exit code %d after SIGTERM", code);
    FH_CHECK(fh_log_count(farm_file("worker0.log"), "\"event\":\"handed_back\"") == 1,
             "the running job was not handed back");
    fh_start_worker(&farm, 1, NULL, NULL, NULL);
    int st;
    uint32_t a = final_attempt(c, long_id, &st);
    FH_CHECK(st == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE && a == 2, "long job: %d at %u", st, a);
    FH_CHECK(log_count2(farm_file("broker.log"), "\"crash\":false", fh_job_field(long_id)) == 1 &&
                 log_count2(farm_file("broker.log"), "\"crash\":true", fh_job_field(long_id)) == 0,
             "the handed-back job was charged a crash");
    fh_client_destroy(&c);
}

/* ---- failures 1 and 2: a FIFO, a symlink out of the root ----------------------------------- */

static void scenario_image_paths(void)
{
    /* The broker's root is the farm's folder (fh_start_broker); the worker has no root of its
     * own and reads beneath the one Welcome names. The secret lies in a folder beside it. */
    char outside[300], secret[400], fifo[400], escape[400], inside[400], linked[400];
    snprintf(outside, sizeof outside, "%s.outside", farm.dir);
    if (mkdir(outside, 0700) != 0)
        fh_die("mkdir %s: %s", outside, strerror(errno));
    snprintf(secret, sizeof secret, "%s/secret.png", outside);
    write_file(secret, png, png_len);
    snprintf(fifo, sizeof fifo, "%s/fifo.png", farm.dir);
    if (mkfifo(fifo, 0600) != 0)
        fh_die("mkfifo: %s", strerror(errno));
    snprintf(escape, sizeof escape, "%s/escape.png", farm.dir);
    char target[400];
    snprintf(target, sizeof target, "../%s/secret.png", strrchr(outside, '/') + 1);
    snprintf(inside, sizeof inside, "%s/inside.png", farm.dir);
    snprintf(linked, sizeof linked, "%s/linked.png", farm.dir);
    write_file(inside, png, png_len);
    if (symlink(target, escape) != 0 || symlink("inside.png", linked) != 0)
        fh_die("symlink: %s", strerror(errno));
    fh_start_broker(&farm, NULL);
    const char *one[] = {"--max-batch", "1", NULL};
    fh_start_worker(&farm, 0, NULL, one, NULL);
    fh_client *c = fh_client_new(&farm, "image-paths", false);
    fh_wait_workers(c, 1, 60000);
    char fifo_id[65], escape_id[65], linked_id[65], after_id[65];
    fh_job j = {.uri = fifo, .key = "fifo"};
    submit_ok(c, &j, fifo_id);
    j = (fh_job){.uri = escape, .key = "escape"};
    submit_ok(c, &j, escape_id);
    j = (fh_job){.uri = linked, .key = "linked"};
    submit_ok(c, &j, linked_id);
    j = (fh_job){.uri = inside, .key = "after"};
    submit_ok(c, &j, after_id);
    /* Behind the FIFO on a one-slot worker: it runs only if the FIFO did not wedge it. The
     * limit is a guard against the hang, not a measure. */
    FH_CHECK(final_state(c, after_id, 120000) == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE,
             "the job behind the FIFO did not run");
    int st;
    const char *msg = final_message(c, fifo_id, &st);
    FH_CHECK(st == KOSMOS__V1__JOB_STATE__JOB_STATE_FAILED && strstr(msg, "not a regular file"),
             "FIFO job: state %d, %s", st, msg);
    msg = final_message(c, escape_id, &st);
    FH_CHECK(st == KOSMOS__V1__JOB_STATE__JOB_STATE_FAILED && strstr(msg, "out of the image root"),
             "symlink out of the root: state %d, %s", st, msg);
    FH_CHECK(final_state(c, linked_id, 120000) == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE,
             "a symlink within the root was not read");
    /* Not retriable: each ran once. */
    FH_CHECK(fh_log_count(farm_file("worker0.log"), "\"event\":\"dispatch\"") == 4,
             "%zu dispatches for 4 jobs",
             fh_log_count(farm_file("worker0.log"), "\"event\":\"dispatch\""));
    fh_client_destroy(&c);
    unlink(secret);
    rmdir(outside);
}

/* ---- failure 8: a deadline of 2^64 - 1 ---------------------------------------------------- */

static void scenario_deadline_never(void)
{
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "deadline-never", false);
    /* A slow device: the broker's timers run many times while the jobs are held. */
    const char *slow[] = {"--test-sleep-ms", "1500", NULL};
    const char *one[] = {"--max-batch", "1", NULL};
    fh_start_worker(&farm, 0, NULL, one, slow);
    fh_wait_workers(c, 1, 60000);
    char ids[2][65];
    for (int i = 0; i < 2; i++) {
        char key[32];
        snprintf(key, sizeof key, "never-%d", i);
        fh_job j = {.image = png, .image_len = png_len, .key = key, .deadline_unix_ms = UINT64_MAX};
        submit_ok(c, &j, ids[i]);
    }
    for (int i = 0; i < 2; i++) {
        int st = final_state(c, ids[i], 120000);
        FH_CHECK(st == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE,
                 "job %d with the deadline 2^64-1: "
                 "state %d, not DONE",
                 i, st);
    }
    FH_CHECK(fh_log_count(farm_file("worker0.log"), "\"reason\":4") == 0,
             "the broker sent Cancel{DEADLINE} for a deadline that never comes");
    fh_client_destroy(&c);
}

/* ---- failure 4: two brokers on one database ------------------------------------------------- */

static void scenario_two_brokers(void)
{
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "two-brokers", false);
    fh_wait_workers(c, 0, 30000);
    char id[65];
    fh_job j = {.image = png, .image_len = png_len, .key = "tb-1"};
    submit_ok(c, &j, id);
    /* The second broker: same database, its own endpoints. It must refuse at once. */
    char cep[400], wep[400];
    snprintf(cep, sizeof cep, "ipc://%s/client2", farm.dir);
    snprintf(wep, sizeof wep, "ipc://%s/worker2", farm.dir);
    char *argv[] = {(char *)farm.broker_bin,
                    "--client-endpoint",
                    cep,
                    "--worker-endpoint",
                    wep,
                    "--db",
                    farm.db,
                    NULL};
    pid_t second = fh_spawn(argv, farm_file("broker2.log"), NULL);
    int code = fh_wait_exit(second, 30000); /* a broker that starts never exits: a hang guard */
    FH_CHECK(code == 3, "second broker on the same --db: exit code %d, not 3", code);
    FH_CHECK(fh_log_count(farm_file("broker2.log"), "\"event\":\"database_locked\"") == 1 &&
                 fh_log_count(farm_file("broker2.log"), "another kosmos-broker") == 1,
             "the second broker did not say why it stopped");
    /* The first one never noticed: it serves, and the job runs once, there. */
    fh_start_worker(&farm, 0, NULL, NULL, NULL);
    FH_CHECK(final_state(c, id, 120000) == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE, "job not DONE");
    FH_CHECK(fh_log_count(farm_file("worker0.log"), "\"event\":\"dispatch\"") == 1,
             "the job was dispatched more than once");
    /* The lock is the broker's life: once it stops, the next one starts on the database. */
    kill(farm.broker_pid, SIGTERM);
    FH_CHECK(fh_wait_exit(farm.broker_pid, 30000) == 0, "first broker did not stop");
    farm.broker_pid = 0;
    fh_start_broker(&farm, NULL);
    fh_client_reopen(c);
    kp_inbound *in = fh_fetch(c, id, 30000);
    FH_CHECK(in && fh_reply(in)->fetch &&
                 fh_reply(in)->fetch->state == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE,
             "the restarted broker does not serve the job");
    kp_inbound_destroy(&in);
    fh_client_destroy(&c);
}

/* ---- failure 5: a hostile peer, CURVE off ------------------------------------------------- */

static bool send_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        b += w;
        n -= (size_t)w;
    }
    return true;
}

static bool recv_all(int fd, void *p, size_t n)
{
    uint8_t *b = p;
    while (n) {
        ssize_t r = recv(fd, b, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        b += r;
        n -= (size_t)r;
    }
    return true;
}

/* A raw ZMTP 3.0 DEALER on a plain TCP socket (RFC 23): greeting with the NULL mechanism, then
 * its READY command; reads the broker's greeting and READY. Returns the socket. */
static int zmtp_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        fh_die("connect to port %u: %s", port, strerror(errno));
    uint8_t greeting[64] = {0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0, 'N', 'U', 'L', 'L'};
    static const uint8_t ready[] = {0x04, 28,  5,   'R', 'E', 'A', 'D', 'Y', 11,  'S',
                                    'o',  'c', 'k', 'e', 't', '-', 'T', 'y', 'p', 'e',
                                    0,    0,   0,   6,   'D', 'E', 'A', 'L', 'E', 'R'};
    uint8_t peer[64], head[2], body[256];
    if (!send_all(fd, greeting, sizeof greeting) || !recv_all(fd, peer, sizeof peer) ||
        peer[0] != 0xFF || peer[10] != 3 || !send_all(fd, ready, sizeof ready) ||
        !recv_all(fd, head, 2) || head[0] != 0x04 || !recv_all(fd, body, head[1]))
        fh_die("ZMTP handshake with port %u failed", port);
    return fd;
}

/* Sends one data frame of `size` zero bytes (a long frame: flag 0x02, 8-byte size); false as
 * soon as the peer closed the connection. */
static bool zmtp_send_frame(int fd, uint64_t size, bool more)
{
    uint8_t head[9] = {(uint8_t)(0x02 | (more ? 0x01 : 0))};
    for (int i = 0; i < 8; i++)
        head[1 + i] = (uint8_t)(size >> (56 - 8 * i));
    static uint8_t chunk[65536];
    if (!send_all(fd, head, sizeof head))
        return false;
    while (size) {
        size_t n = size < sizeof chunk ? (size_t)size : sizeof chunk;
        if (!send_all(fd, chunk, n))
            return false;
        size -= n;
    }
    return true;
}

/* Whether the peer closes `fd` within guard_ms (a guard against waiting for ever). */
static bool closed_by_peer(int fd, uint64_t guard_ms)
{
    uint64_t end = fh_now_ms() + guard_ms;
    uint8_t buf[4096];
    while (fh_now_ms() < end) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
            return true;
    }
    return false;
}

/* The port of `"key":"tcp://0.0.0.0:PORT"` in the log's "started" line, 0 if none. */
static uint16_t log_port(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    uint16_t port = 0;
    while (f && !port && fgets(line, sizeof line, f)) {
        const char *at = strstr(line, "\"event\":\"started\"") ? strstr(line, key) : NULL;
        const char *colon = at ? strchr(at + strlen(key) + 6, ':') : NULL; /* after tcp:/ */
        if (colon)
            port = (uint16_t)atoi(colon + 1);
    }
    if (f)
        fclose(f);
    return port;
}

static void scenario_raw_zmtp(void)
{
    /* A broker bound on every address, CURVE off: it says so at start, per endpoint. */
    char db[400];
    snprintf(db, sizeof db, "%s/open.db", farm.dir);
    char *argv[] = {(char *)farm.broker_bin,
                    "--client-endpoint",
                    "tcp://*:*",
                    "--worker-endpoint",
                    "tcp://*:*",
                    "--db",
                    db,
                    "--max-message-bytes",
                    "1048576",
                    NULL};
    pid_t open_broker = fh_spawn(argv, farm_file("open-broker.log"), NULL);
    FH_CHECK(wait_log(farm_file("open-broker.log"), "\"event\":\"started\"", NULL, 1, 60000),
             "the broker did not start");
    uint16_t wport = log_port(farm_file("open-broker.log"), "\"worker_endpoint\"");
    uint16_t cport = log_port(farm_file("open-broker.log"), "\"client_endpoint\"");
    if (!wport || !cport)
        fh_die("no ports in the broker's log");
    FH_CHECK(fh_log_count(farm_file("open-broker.log"), "\"event\":\"curve_off\"") == 2,
             "no start-up warning for the endpoints without CURVE");
    /* A broker on ipc:// only (the farm's) reaches no other host: no warning. */
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "raw-zmtp", false);
    fh_wait_workers(c, 0, 30000);
    FH_CHECK(fh_log_count(farm_file("broker.log"), "\"event\":\"curve_off\"") == 0,
             "a warning for ipc:// endpoints");

    /* The bound: a frame bigger than any worker message (1 MiB protobuf limit here) on the
     * worker endpoint, announced in its header, makes libzmq drop the connection before it
     * buffers the body. */
    int fd = zmtp_connect(wport);
    zmtp_send_frame(fd, 0, true);                     /* the empty delimiter */
    bool sent = zmtp_send_frame(fd, 2u << 20, false); /* 2 MiB: over 1 MiB + 64 KiB */
    FH_CHECK(!sent || closed_by_peer(fd, 30000),
             "the broker kept a connection that sent a 2 MiB frame to the worker endpoint");
    close(fd);
    /* Frames within the limit, all marked "more": libzmq holds the incomplete message where
     * the broker cannot count it (docs/broker.md); a healthy peer is still served. */
    fd = zmtp_connect(cport);
    for (int i = 0; i < 8; i++)
        FH_CHECK(zmtp_send_frame(fd, 1u << 20, true),
                 "a 1 MiB frame on the client endpoint refused");
    fh_farm tcp = farm;
    snprintf(tcp.cep, sizeof tcp.cep, "tcp://127.0.0.1:%u", cport);
    fh_client *tc = fh_client_new(&tcp, "beside-the-hostile-peer", false);
    kp_inbound *in = fh_status(tc, 30000);
    FH_CHECK(in != NULL, "the broker did not serve a client beside the hostile peer");
    kp_inbound_destroy(&in);
    fh_client_destroy(&tc);
    close(fd);
    kill(open_broker, SIGTERM);
    FH_CHECK(fh_wait_exit(open_broker, 30000) == 0, "the open broker did not stop");
    fh_client_destroy(&c);
}

/* ---- failure 6: a temporary refusal stopped a worker for good ------------------------------ */

/* Whether ops/kosmos-worker@.service's RestartPreventExitStatus= lists `code`: systemd then
 * leaves the unit down after that exit. */
static bool unit_prevents_restart(int code)
{
    const char *path = KOSMOS_SOURCE_DIR "/ops/kosmos-worker@.service";
    FILE *f = fopen(path, "r");
    if (!f)
        fh_die("cannot read %s", path);
    char line[512];
    bool listed = false;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "RestartPreventExitStatus=", 25) != 0)
            continue;
        for (char *t = strtok(line + 25, " \t\n"); t; t = strtok(NULL, " \t\n"))
            listed = listed || atoi(t) == code;
    }
    fclose(f);
    return listed;
}

static void scenario_refusal(void)
{
    const char *one_worker[] = {"--max-workers", "1", NULL};
    fh_start_broker(&farm, one_worker);
    fh_client *c = fh_client_new(&farm, "refusal", false);
    fh_start_worker(&farm, 0, NULL, NULL, NULL);
    fh_wait_workers(c, 1, 60000);
    /* Refused for now: it stays up and asks again, backing off. */
    fh_start_worker(&farm, 1, NULL, NULL, NULL);
    uint64_t end = fh_now_ms() + 60000;
    while (fh_now_ms() < end && fh_alive(farm.worker_pid[1]) &&
           fh_log_count(farm_file("worker1.log"), "\"event\":\"refused_for_now\"") < 2)
        fh_sleep_ms(50);
    FH_CHECK(fh_log_count(farm_file("worker1.log"), "\"event\":\"refused_for_now\"") >= 2,
             "the refused worker did not retry");
    FH_CHECK(fh_alive(farm.worker_pid[1]), "a worker refused for now exited");
    FH_CHECK(fh_log_count(farm_file("broker.log"), "\"event\":\"worker_refused_for_now\"") >= 2,
             "the broker did not refuse for now");
    /* A slot frees: the refused worker registers and serves. */
    kill(farm.worker_pid[0], SIGTERM);
    FH_CHECK(fh_wait_exit(farm.worker_pid[0], 60000) == 0, "worker 0 did not stop cleanly");
    farm.worker_pid[0] = 0;
    char id[65];
    fh_job j = {.image = png, .image_len = png_len, .key = "after-refusal"};
    submit_ok(c, &j, id);
    kp_inbound *in = fh_fetch_final(c, id, 120000);
    const Kosmos__V1__FetchReply *f = in ? fh_reply(in)->fetch : NULL;
    FH_CHECK(f && f->state == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE && f->result &&
                 f->result->worker_name && strcmp(f->result->worker_name, "test/w1") == 0,
             "the once-refused worker did not compute the job");
    kp_inbound_destroy(&in);
    FH_CHECK(!unit_prevents_restart(0), "the unit would keep a cleanly stopped worker down");

    /* Refused for good by a broker (a fake one here: a real one refuses only what a real worker
     * never sends, e.g. another protocol version): the exit code keeps the unit down. */
    char ep[400];
    snprintf(ep, sizeof ep, "ipc://%s/fake-broker", farm.dir);
    void *fake = zmq_socket(farm.zctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(fake, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(fake, ep) != 0)
        fh_die("bind %s: %s", ep, zmq_strerror(errno));
    fh_start_worker(&farm, 2, ep, NULL, NULL);
    kp_inbound *ready = NULL;
    zmq_pollitem_t it = {fake, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 60000) <= 0 ||
        kp_recv(fake, true, KP_WORKER_MESSAGE, NULL, 0, &ready) != KS_OK || !ready)
        fh_die("no Ready at the fake broker");
    size_t rid_len;
    const void *rid = kp_inbound_routing_id(ready, &rid_len);
    Kosmos__V1__Disconnect dc = KOSMOS__V1__DISCONNECT__INIT;
    Kosmos__V1__BrokerToWorker env = KOSMOS__V1__BROKER_TO_WORKER__INIT;
    dc.has_code = true;
    dc.code = KOSMOS__V1__DISCONNECT__CODE__CODE_REJECTED;
    dc.message = "protocol_version must be 1";
    env.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT;
    env.disconnect = &dc;
    if (kp_send(fake, rid, rid_len, &env.base, NULL, 0) != KS_OK)
        fh_die("fake broker: send");
    kp_inbound_destroy(&ready);
    int code = fh_wait_exit(farm.worker_pid[2], 60000);
    farm.worker_pid[2] = 0;
    FH_CHECK(code > 0 && unit_prevents_restart(code),
             "refused for good: exit code %d, which the unit %s", code,
             unit_prevents_restart(code) ? "keeps down" : "restarts");
    zmq_close(fake);

    /* A CURVE key the broker does not know: refused for good too (ZAP status 400). */
    char keys[300], clients[300], workers[300], sec[400], pub[400], wsec[400];
    snprintf(keys, sizeof keys, "%s/keys", farm.dir);
    snprintf(clients, sizeof clients, "%s/clients", farm.dir);
    snprintf(workers, sizeof workers, "%s/workers", farm.dir);
    if (mkdir(keys, 0700) || mkdir(clients, 0700) || mkdir(workers, 0700))
        fh_die("mkdir: %s", strerror(errno));
    fh_cert(keys, keys, "broker");
    fh_cert(clients, keys, "client");
    fh_cert(workers, keys, "known-worker");
    fh_cert(keys, keys, "stranger"); /* in no allowed folder */
    snprintf(sec, sizeof sec, "%s/broker.key_secret", keys);
    snprintf(pub, sizeof pub, "%s/broker.key", keys);
    snprintf(wsec, sizeof wsec, "%s/stranger.key_secret", keys);
    char cep[400], wep[400], db[400];
    snprintf(cep, sizeof cep, "ipc://%s/curve-client", farm.dir);
    snprintf(wep, sizeof wep, "ipc://%s/curve-worker", farm.dir);
    snprintf(db, sizeof db, "%s/curve.db", farm.dir);
    char *argv[] = {(char *)farm.broker_bin,
                    "--client-endpoint",
                    cep,
                    "--worker-endpoint",
                    wep,
                    "--db",
                    db,
                    "--curve-secret",
                    sec,
                    "--client-keys",
                    clients,
                    "--worker-keys",
                    workers,
                    NULL};
    pid_t curve_broker = fh_spawn(argv, farm_file("curve-broker.log"), NULL);
    const char *wextra[] = {"--curve-secret", wsec, "--curve-server-public", pub, NULL};
    fh_start_worker(&farm, 2, wep, wextra, NULL);
    code = fh_wait_exit(farm.worker_pid[2], 60000);
    farm.worker_pid[2] = 0;
    FH_CHECK(code > 0 && unit_prevents_restart(code), "unknown CURVE key: exit code %d", code);
    FH_CHECK(fh_log_count(farm_file("worker2.log"), "CURVE key") >= 1,
             "the worker did not say its key was refused");
    kill(curve_broker, SIGTERM);
    FH_CHECK(fh_wait_exit(curve_broker, 30000) == 0, "the CURVE broker did not stop");
    fh_client_destroy(&c);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: test_hardening BROKER WORKER MODEL_DIR SCENARIO\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    fh_init(&farm, argv[1], argv[2], argv[3]);
    printf("%s in %s\n", argv[4], farm.dir);
    png = fh_make_png(32, 24, 7, &png_len);
    const char *s = argv[4];
    if (strcmp(s, "image_paths") == 0)
        scenario_image_paths();
    else if (strcmp(s, "cancel_step") == 0)
        scenario_cancel_step();
    else if (strcmp(s, "compute_cap") == 0)
        scenario_compute_cap();
    else if (strcmp(s, "unstarted") == 0)
        scenario_unstarted();
    else if (strcmp(s, "stop_grace") == 0)
        scenario_stop_grace();
    else if (strcmp(s, "deadline_never") == 0)
        scenario_deadline_never();
    else if (strcmp(s, "two_brokers") == 0)
        scenario_two_brokers();
    else if (strcmp(s, "refusal") == 0)
        scenario_refusal();
    else if (strcmp(s, "raw_zmtp") == 0)
        scenario_raw_zmtp();
    else
        fh_die("unknown scenario %s", s);
    free(png);
    int rc = fh_finish(&farm);
    zmq_ctx_term(farm.zctx);
    return rc;
}
