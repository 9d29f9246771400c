/* test_hardening: what a hostile or unlucky world does to the farm (issue 17), with real
 * processes - kosmos-broker, kosmos-worker (tiny model, --device ref) and C clients or raw
 * sockets in a temporary folder - one scenario per run (`test_hardening BROKER WORKER MODEL
 * SCENARIO`), each a CTest test and a scenario of ops/soak-farm.sh:
 *
 *   image_paths  image_uri jobs naming a FIFO and a symlink that leads out of the image root
 *                fail at once (not retriable), and the worker goes on: a job behind the FIFO
 *                on the same one-slot worker ends DONE, a symlink within the root is read
 *   two_brokers  a second kosmos-broker on the same --db exits 3 at once (database_locked) and
 *                the first goes on serving; after the first stops, a new one starts
 *
 * No wall-clock thresholds: orderings, counters and exit codes; the only time limits are
 * generous ones against hangs. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
             "%zu dispatches for 4 jobs", fh_log_count(farm_file("worker0.log"), "\"event\":\"dispatch\""));
    fh_client_destroy(&c);
    unlink(secret);
    rmdir(outside);
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
    char *argv[] = {(char *)farm.broker_bin, "--client-endpoint", cep, "--worker-endpoint", wep,
                    "--db", farm.db, NULL};
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
    else if (strcmp(s, "two_brokers") == 0)
        scenario_two_brokers();
    else
        fh_die("unknown scenario %s", s);
    free(png);
    int rc = fh_finish(&farm);
    zmq_ctx_term(farm.zctx);
    return rc;
}
