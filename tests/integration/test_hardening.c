/* test_hardening: what a hostile or unlucky world does to the farm (issue 17), with real
 * processes - kosmos-broker, kosmos-worker (tiny model, --device ref) and C clients or raw
 * sockets in a temporary folder - one scenario per run (`test_hardening BROKER WORKER MODEL
 * SCENARIO`), each a CTest test and a scenario of ops/soak-farm.sh:
 *
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
    if (strcmp(s, "two_brokers") == 0)
        scenario_two_brokers();
    else
        fh_die("unknown scenario %s", s);
    free(png);
    int rc = fh_finish(&farm);
    zmq_ctx_term(farm.zctx);
    return rc;
}
