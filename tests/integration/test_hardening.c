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
 *   refusal      a worker refused for now (--max-workers 1) keeps retrying with backoff and
 *                serves once a slot frees; refused for good (Disconnect{REJECTED} from a fake
 *                broker, a CURVE key the broker does not know) it exits with a code that
 *                ops/kosmos-worker@.service's RestartPreventExitStatus keeps down
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
    char *argv[] = {(char *)farm.broker_bin, "--client-endpoint", cep, "--worker-endpoint", wep,
                    "--db", db, "--curve-secret", sec, "--client-keys", clients, "--worker-keys",
                    workers, NULL};
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
    else if (strcmp(s, "two_brokers") == 0)
        scenario_two_brokers();
    else if (strcmp(s, "refusal") == 0)
        scenario_refusal();
    else
        fh_die("unknown scenario %s", s);
    free(png);
    int rc = fh_finish(&farm);
    zmq_ctx_term(farm.zctx);
    return rc;
}
