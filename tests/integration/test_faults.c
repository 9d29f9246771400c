/* test_faults: fault tests of the farm with real processes - kosmos-broker, kosmos-worker
 * (tiny model, --device ref, 2 new tokens) and C clients over ipc:// in a temporary folder,
 * one scenario per run (`test_faults BROKER WORKER MODEL SCENARIO`), each a CTest test:
 *
 *   worker_kill  kill -9 a worker mid-batch, again and again, during 200 jobs; the other stays up
 *   broker_kill  kill -9 the broker during a submit burst, and with jobs leased; resubmits by key
 *   sigstop      SIGSTOP a worker past its lease, SIGCONT: redelivered, one result, stale ignored
 *   poison       a job that kills its worker is DEAD after 3 deaths, the others finish; a
 *                deadline expires in time; retriable failures are spaced by the backoff
 *   partition    a TCP proxy between worker and broker drops everything for a while: the job is
 *                requeued, the worker reconnects, nothing is lost
 *   reconnect    a client process submits 500 jobs and exits; a new socket collects all 500
 *   same_key     100 concurrent submits with one key from 4 processes: one job; other payload:
 *                CONFLICT
 *   curve        CURVE on: known client and worker keys served; an unknown key, a NULL-mechanism
 *                client and a client key on the worker endpoint get no connection (curve_denied
 *                logged, nothing stored); client B cannot fetch or cancel A's job; a broker
 *                with an unreadable or empty key folder, a missing secret or partial options
 *                refuses to start
 *   bad_input    malformed envelope, wrong frame counts, another version, not ours, unknown
 *                request, frames over the limits (and over ZMQ_MAXMSGSIZE), a Result before
 *                Ready, for an unknown job, for a job never leased, a malformed worker message:
 *                each answered as protocol.md §7 says, a normal client served after each
 *   backpressure 4 clients, 40 submits of 8 MB images, --max-queued 6 --max-client-jobs 2, one
 *                slow worker: every submit answered ACCEPTED or BUSY, memory_bytes under
 *                memory_bound_bytes at every status poll, every accepted job DONE
 *
 * Every scenario ends with the ledger oracle (farm_harness.h): lost 0, unexpected 0, duplicates
 * only as later attempts. No wall-clock thresholds except generous ones stated where the issue
 * asks for a time bound; orderings and counters otherwise. Heartbeats are 200 ms with liveness
 * 5 (1 s) so a fault is noticed quickly but a busy machine does not fake one. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fake_worker_msgs.h"
#include "farm_harness.h"

static fh_farm farm;
static uint8_t *png;
static size_t png_len;
static unsigned rng_state;

static unsigned rnd(unsigned n)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return (rng_state >> 8) % n;
}

static fh_job plain_job(const char *key)
{
    fh_job j = {.image = png, .image_len = png_len, .key = key};
    return j;
}

/* Submits n more jobs into the ledger (sync, retrying BUSY/lost replies); keys are PREFIX-k
 * with k the job's place in the ledger, so a second call adds new keys. */
static void submit_n(fh_client *c, const char *prefix, int n, fh_ledger *l)
{
    for (int i = 0; i < n; i++) {
        char key[64], id[65];
        snprintf(key, sizeof key, "%s-%zu", prefix, l->n);
        fh_job j = plain_job(key);
        int out = -1;
        for (int tries = 0; tries < 50 && out != KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED;
             tries++) {
            out = fh_submit(c, &j, id, NULL, 5000);
            if (out == -1)
                fh_client_reopen(c);
            else if (out != KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED)
                fh_sleep_ms(200);
        }
        if (out != KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED)
            fh_die("submit %s: outcome %d", key, out);
        fh_ledger_add(l, id);
    }
}

static char *worker_log(int i)
{
    static char path[400];
    snprintf(path, sizeof path, "%s/worker%d.log", farm.dir, i);
    return path;
}

static long status_total(fh_client *c, int which)
{
    kp_inbound *in = fh_status(c, 5000);
    if (!in)
        return -1;
    const Kosmos__V1__StatusReply *s = fh_reply(in)->status;
    long v = which == 0   ? (long)s->total_submitted
             : which == 1 ? (long)s->total_done
                          : (long)s->total_dead;
    kp_inbound_destroy(&in);
    return v;
}

/* ---- 2. kill -9 a worker mid-batch, repeatedly --------------------------------------------- */

static void scenario_worker_kill(void)
{
    fh_start_broker(&farm, NULL);
    fh_start_worker(&farm, 0, NULL, NULL, NULL);
    fh_start_worker(&farm, 1, NULL, NULL, NULL);
    fh_client *c = fh_client_new(&farm, "worker-kill", false);
    fh_wait_workers(c, 2, 60000);
    fh_ledger l = {0};
    submit_n(c, "wk", 200, &l);
    int kills = 0;
    size_t seen = fh_log_count(worker_log(0), "\"event\":\"dispatch\"");
    uint64_t end = fh_now_ms() + 240000;
    while (kills < 5 && fh_now_ms() < end) {
        /* mid-batch: right after worker 0 received new work */
        size_t now = fh_log_count(worker_log(0), "\"event\":\"dispatch\"");
        if (now > seen) {
            fh_sleep_ms((long)rnd(150));
            fh_kill9(&farm.worker_pid[0]);
            kills++;
            printf("kill -9 worker 0 (#%d) after %zu dispatches to it\n", kills, now);
            FH_CHECK(fh_alive(farm.worker_pid[1]), "worker 1 died");
            /* The new worker must be up before the loop goes on: a SIGTERM from fh_finish that
             * lands before it installed its handler would kill it by the signal (a harness race
             * the 30-minute soak hit once, not a worker fault). */
            size_t started = fh_log_count(worker_log(0), "\"event\":\"started\"");
            fh_start_worker(&farm, 0, NULL, NULL, NULL);
            uint64_t up_by = fh_now_ms() + 60000;
            while (fh_log_count(worker_log(0), "\"event\":\"started\"") <= started &&
                   fh_now_ms() < up_by)
                fh_sleep_ms(20);
            FH_CHECK(fh_log_count(worker_log(0), "\"event\":\"started\"") > started,
                     "worker 0 did not start again");
            seen = fh_log_count(worker_log(0), "\"event\":\"dispatch\"");
        }
        /* A fast worker 1 can finish the jobs before worker 0 was killed often enough: the
         * kills, not the first wave's size, end the loop, so top the work up (CI once saw the
         * 200 jobs done after 2 kills). */
        kp_inbound *in = fh_status(c, 5000);
        const Kosmos__V1__StatusReply *st = in ? fh_reply(in)->status : NULL;
        long settled = st ? fh_state_count(st, KOSMOS__V1__JOB_STATE__JOB_STATE_DONE) +
                                fh_state_count(st, KOSMOS__V1__JOB_STATE__JOB_STATE_DEAD)
                          : 0;
        kp_inbound_destroy(&in);
        if (settled + 40 >= (long)l.n && l.n < 2000)
            submit_n(c, "wk", 100, &l);
        fh_sleep_ms(20);
    }
    FH_CHECK(kills == 5, "only %d kills happened in 240 s", kills);
    fh_oracle o;
    /* DEAD is legitimate only for a job that crashed 3 times (it met 3 of the kills). */
    fh_oracle_run(c, &l, FH_STATE(DONE) | FH_STATE(DEAD), 300000, &o);
    fh_oracle_assert(&o, "worker_kill");
    FH_CHECK(o.by_state[KOSMOS__V1__JOB_STATE__JOB_STATE_DEAD] <= (size_t)kills * 4 / 3,
             "%zu DEAD jobs for %d kills", o.by_state[KOSMOS__V1__JOB_STATE__JOB_STATE_DEAD],
             kills);
    FH_CHECK(o.max_attempt >= 2, "no job was redelivered (max attempt %u)", o.max_attempt);
    FH_CHECK(fh_alive(farm.worker_pid[1]), "worker 1 died");
    fh_ledger_free(&l);
    fh_client_destroy(&c);
}

/* ---- 3. kill -9 the broker during a submit burst, and with jobs leased ---------------------- */

#define BURST 120

static void scenario_broker_kill(void)
{
    static char ids[BURST][65];
    static bool accepted[BURST];
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "broker-kill", false);
    /* Part A: no workers. Pipelined submits; kill -9 at a random point; restart; go on. */
    for (int round = 0; round < 3; round++) {
        fh_wait_workers(c, 0, 30000); /* the broker answers */
        fh_client_reopen(c);
        unsigned kill_after = 10 + rnd(BURST / 3);
        unsigned replies = 0;
        uint64_t rid0 = c->next_rid;
        for (int i = 0; i < BURST; i++) {
            char key[32];
            snprintf(key, sizeof key, "bk-%d", i);
            fh_job j = plain_job(key);
            Kosmos__V1__ClientRequest req;
            fh_submit_store st;
            fh_submit_request(&j, &req, &st);
            req.has_request_id = true;
            req.request_id = c->next_rid++;
            req.client_id = c->client_id;
            zmq_msg_t img;
            zmq_msg_init_size(&img, png_len);
            memcpy(zmq_msg_data(&img), png, png_len);
            if (kp_send(c->sock, NULL, 0, &req.base, &img, 0) != KS_OK)
                fh_die("send");
        }
        bool killed = false;
        uint64_t end = fh_now_ms() + 30000;
        while (fh_now_ms() < end && replies < BURST) {
            zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
            if (killed || zmq_poll(&it, 1, 200) <= 0) {
                if (killed)
                    break;
                continue;
            }
            kp_inbound *in = NULL;
            if (kp_recv(c->sock, false, KP_CLIENT_REPLY, NULL, 0, &in) != KS_OK || !in)
                continue;
            uint64_t rid = kp_inbound_request_id(in);
            const Kosmos__V1__ClientReply *r = fh_reply(in);
            if (kp_inbound_verdict(in) == KP_VALID && rid >= rid0 && rid < rid0 + BURST &&
                r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT &&
                r->submit->outcome_case == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED) {
                int i = (int)(rid - rid0);
                const char *id = r->submit->accepted->job_id;
                if (accepted[i])
                    FH_CHECK(strcmp(ids[i], id) == 0, "key bk-%d: id %s, before %s", i, id, ids[i]);
                snprintf(ids[i], 65, "%s", id);
                accepted[i] = true;
                replies++;
            }
            kp_inbound_destroy(&in);
            if (round < 2 && replies == kill_after) {
                fh_kill9(&farm.broker_pid);
                killed = true;
                printf("round %d: kill -9 the broker after %u ACCEPTED\n", round, replies);
            }
        }
        if (!killed)
            printf("round %d: all %u submits answered\n", round, replies);
        if (killed)
            fh_start_broker(&farm, NULL);
    }
    /* Every key now once more, synchronously: the same id, a duplicate, no new row. */
    fh_ledger l = {0};
    for (int i = 0; i < BURST; i++) {
        char key[32], id[65];
        snprintf(key, sizeof key, "bk-%d", i);
        fh_job j = plain_job(key);
        bool dup = false;
        int out = fh_submit(c, &j, id, &dup, 10000);
        FH_CHECK(out == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED && dup,
                 "resubmit bk-%d: outcome %d duplicate %d", i, out, dup);
        FH_CHECK(accepted[i] && strcmp(id, ids[i]) == 0, "resubmit bk-%d: id %s, first %s", i, id,
                 ids[i]);
        fh_ledger_add(&l, id);
    }
    long total = status_total(c, 0);
    FH_CHECK(total == BURST, "%ld jobs stored for %d keys", total, BURST);

    /* Part B: jobs leased at the kill. Slow workers, so that some are RUNNING. */
    const char *slow[] = {"--test-sleep-ms", "300", NULL};
    fh_start_worker(&farm, 0, NULL, NULL, slow);
    fh_start_worker(&farm, 1, NULL, NULL, slow);
    for (int round = 0; round < 2; round++) {
        uint64_t end = fh_now_ms() + 60000;
        long running = 0;
        while (fh_now_ms() < end && running == 0) {
            kp_inbound *in = fh_status(c, 5000);
            running = in ? fh_state_count(fh_reply(in)->status,
                                          KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING)
                         : 0;
            kp_inbound_destroy(&in);
            if (!running)
                fh_sleep_ms(20);
        }
        FH_CHECK(running > 0, "no job ever RUNNING");
        fh_sleep_ms((long)rnd(200));
        fh_kill9(&farm.broker_pid);
        printf("leased round %d: kill -9 the broker with %ld jobs RUNNING\n", round, running);
        fh_start_broker(&farm, NULL);
        fh_client_reopen(c);
    }
    fh_oracle o;
    fh_oracle_run(c, &l, FH_STATE(DONE), 300000, &o);
    fh_oracle_assert(&o, "broker_kill");
    total = status_total(c, 0);
    FH_CHECK(total == BURST, "%ld jobs stored for %d keys at the end", total, BURST);
    char blog[400];
    snprintf(blog, sizeof blog, "%s/broker.log", farm.dir);
    printf("leases re-adopted after restarts: %zu\n",
           fh_log_count(blog, "\"event\":\"lease_adopted\""));
    fh_ledger_free(&l);
    fh_client_destroy(&c);
}

/* ---- 4. SIGSTOP past the lease, SIGCONT ----------------------------------------------------- */

static void scenario_sigstop(void)
{
    fh_start_broker(&farm, NULL);
    const char *slow[] = {"--test-sleep-ms", "1500", NULL};
    fh_start_worker(&farm, 0, NULL, NULL, slow);
    fh_client *c = fh_client_new(&farm, "sigstop", false);
    fh_wait_workers(c, 1, 60000);
    fh_ledger l = {0};
    submit_n(c, "ss", 1, &l);
    uint64_t end = fh_now_ms() + 30000;
    while (fh_now_ms() < end && fh_log_count(worker_log(0), "\"event\":\"dispatch\"") == 0)
        fh_sleep_ms(10);
    kill(farm.worker_pid[0], SIGSTOP);
    printf("SIGSTOP worker 0 holding attempt 1\n");
    fh_start_worker(&farm, 1, NULL, NULL, NULL);
    kp_inbound *in = fh_fetch_final(c, l.ids[0], 60000);
    const Kosmos__V1__FetchReply *f = in ? fh_reply(in)->fetch : NULL;
    FH_CHECK(f && f->state == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE, "state %d",
             f ? (int)f->state : -1);
    FH_CHECK(f && f->result && f->result->attempt == 2 && f->result->worker_name &&
                 strcmp(f->result->worker_name, "test/w1") == 0,
             "result of attempt %u by %s", f && f->result ? f->result->attempt : 0,
             f && f->result && f->result->worker_name ? f->result->worker_name : "?");
    kp_inbound_destroy(&in);
    kill(farm.worker_pid[0], SIGCONT);
    printf("SIGCONT worker 0\n");
    /* The stale attempt ends: its result acknowledged STALE, or a Cancel{STALE} on re-registering. */
    end = fh_now_ms() + 30000;
    size_t stale = 0;
    while (fh_now_ms() < end && (stale = fh_log_count(worker_log(0), "\"disposition\":\"stale\"") +
                                         fh_log_count(worker_log(0), "\"event\":\"cancel\"")) == 0)
        fh_sleep_ms(50);
    FH_CHECK(stale > 0, "worker 0 never learned its attempt was stale");
    fh_sleep_ms(500);
    in = fh_fetch(c, l.ids[0], 5000);
    f = in ? fh_reply(in)->fetch : NULL;
    FH_CHECK(f && f->state == KOSMOS__V1__JOB_STATE__JOB_STATE_DONE && f->result &&
                 f->result->attempt == 2,
             "after SIGCONT: state %d attempt %u", f ? (int)f->state : -1,
             f && f->result ? f->result->attempt : 0);
    kp_inbound_destroy(&in);
    char blog[400];
    snprintf(blog, sizeof blog, "%s/broker.log", farm.dir);
    FH_CHECK(status_total(c, 1) == 1, "%ld results stored", status_total(c, 1));
    printf("stale attempt: %zu result_stale line(s) in the broker log\n",
           fh_log_count(blog, "\"event\":\"result_stale\""));
    /* worker 0 is healthy again and serves */
    fh_wait_workers(c, 2, 30000);
    fh_oracle o;
    fh_oracle_run(c, &l, FH_STATE(DONE), 60000, &o);
    fh_oracle_assert(&o, "sigstop");
    FH_CHECK(o.duplicates == 1, "%zu duplicates (expected the one redelivery)", o.duplicates);
    fh_ledger_free(&l);
    fh_client_destroy(&c);
}

/* ---- 6. poison job, deadline, backoff ------------------------------------------------------- */

static void scenario_poison(void)
{
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "poison", false);
    fh_wait_workers(c, 0, 30000);
    /* Deadline, with no worker: EXPIRED within the deadline + 1 s (margin 1.5 s for a busy
     * machine, reported), never before it. */
    {
        char id[65];
        uint64_t deadline = fh_unix_ms() + 1000;
        fh_job j = plain_job("deadline");
        j.deadline_unix_ms = deadline;
        FH_CHECK(fh_submit(c, &j, id, NULL, 5000) == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED,
                 "deadline job not accepted");
        kp_inbound *in = fh_fetch_final(c, id, 20000);
        uint64_t at = fh_unix_ms();
        const Kosmos__V1__FetchReply *f = in ? fh_reply(in)->fetch : NULL;
        FH_CHECK(f && f->state == KOSMOS__V1__JOB_STATE__JOB_STATE_EXPIRED, "deadline job state %d",
                 f ? (int)f->state : -1);
        printf("deadline: EXPIRED seen %lld ms after the deadline\n",
               (long long)at - (long long)deadline);
        FH_CHECK(at >= deadline, "EXPIRED before the deadline");
        FH_CHECK(at <= deadline + 1000 + 1500, "EXPIRED %llu ms after the deadline",
                 (unsigned long long)(at - deadline));
        kp_inbound_destroy(&in);
    }
    const char *poisoned[] = {"--test-abort-marker", "POISON-PILL", NULL};
    /* One job per worker, none prefetched: a poison job's death takes no other job with it, so
     * every attempt of the retried job is its own (and fails, with its retry time). */
    const char *one[] = {"--max-batch", "1", "--prefetch", "0", NULL};
    fh_start_worker(&farm, 0, NULL, one, poisoned);
    fh_start_worker(&farm, 1, NULL, one, poisoned);
    fh_wait_workers(c, 2, 60000);
    fh_ledger l = {0}, poison = {0}, retry = {0}, all = {0};
    char id[65];
    fh_job pj = plain_job("poison");
    pj.prompt = "<grounding>POISON-PILL An image of";
    FH_CHECK(fh_submit(c, &pj, id, NULL, 5000) == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED,
             "poison");
    fh_ledger_add(&poison, id);
    /* A retriable failure on every attempt: an image_uri under the root that does not exist. */
    char uri[400];
    snprintf(uri, sizeof uri, "%s/missing.png", farm.dir);
    fh_job rj = {.uri = uri, .key = "retry"};
    FH_CHECK(fh_submit(c, &rj, id, NULL, 5000) == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED,
             "retry");
    fh_ledger_add(&retry, id);
    submit_n(c, "ok", 10, &l);
    fh_ledger_add(&all, poison.ids[0]);
    fh_ledger_add(&all, retry.ids[0]);
    for (size_t i = 0; i < l.n; i++)
        fh_ledger_add(&all, l.ids[i]);
    /* Supervise: restart dead workers; watch the retried job's attempts. */
    uint64_t next_at[8] = {0}; /* next_attempt_unix_ms recorded after attempt n */
    uint64_t seen_at[8] = {0}; /* first time attempt n was seen RUNNING (unix ms) */
    int restarts = 0;
    bool retry_done = false, poison_done = false;
    uint64_t end = fh_now_ms() + 120000;
    while (fh_now_ms() < end && !(retry_done && poison_done)) {
        for (int w = 0; w < 2; w++) {
            if (!fh_alive(farm.worker_pid[w])) {
                waitpid(farm.worker_pid[w], NULL, WNOHANG);
                fh_start_worker(&farm, w, NULL, one, poisoned);
                restarts++;
            }
        }
        kp_inbound *in = fh_fetch(c, retry.ids[0], 5000);
        const Kosmos__V1__FetchReply *f = in ? fh_reply(in)->fetch : NULL;
        uint64_t now = fh_unix_ms();
        if (f && f->attempt < 8) {
            if (f->state == KOSMOS__V1__JOB_STATE__JOB_STATE_RETRY_WAIT &&
                f->has_next_attempt_unix_ms)
                next_at[f->attempt] = f->next_attempt_unix_ms;
            if (f->state == KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING && !seen_at[f->attempt])
                seen_at[f->attempt] = now;
            retry_done = f->state >= KOSMOS__V1__JOB_STATE__JOB_STATE_DONE;
        }
        kp_inbound_destroy(&in);
        in = fh_fetch(c, poison.ids[0], 5000);
        f = in ? fh_reply(in)->fetch : NULL;
        poison_done = f && f->state >= KOSMOS__V1__JOB_STATE__JOB_STATE_DONE;
        kp_inbound_destroy(&in);
        fh_sleep_ms(30);
    }
    printf("poison: %d worker restarts\n", restarts);
    fh_oracle o;
    fh_oracle_run_in(c, &poison, &all, FH_STATE(DEAD), 60000, &o);
    fh_oracle_assert(&o, "poison job");
    FH_CHECK(o.max_attempt == 3, "poison job DEAD at attempt %u", o.max_attempt);
    size_t aborts = fh_log_count(worker_log(0), "\"event\":\"test_abort\"") +
                    fh_log_count(worker_log(1), "\"event\":\"test_abort\"");
    FH_CHECK(aborts == 3, "%zu worker deaths for the poison job", aborts);
    fh_oracle_run_in(c, &l, &all, FH_STATE(DONE), 120000, &o);
    fh_oracle_assert(&o, "the other jobs");
    fh_oracle_run_in(c, &retry, &all, FH_STATE(FAILED), 60000, &o);
    fh_oracle_assert(&o, "retried job");
    FH_CHECK(o.max_attempt == 5, "retried job FAILED at attempt %u", o.max_attempt);
    /* Backoff from the broker's own retry times: after failure n the next attempt waits
     * 1 s * 2^(n-1) + [0, 1 s), so next[n+1] - next[n] >= 1 s * 2^n and < that + 1 s + the run
     * time of attempt n+1; and no attempt starts before its retry time. */
    for (uint32_t n = 1; n <= 4; n++) {
        FH_CHECK(next_at[n] != 0, "retry time after attempt %u not seen", n);
        if (n < 4 && next_at[n] && next_at[n + 1]) {
            uint64_t gap = next_at[n + 1] - next_at[n];
            printf("backoff: retry %u at +%llu ms after retry %u\n", n + 1, (unsigned long long)gap,
                   n);
            FH_CHECK(gap >= 1000ull << n, "retry %u only %llu ms after retry %u", n + 1,
                     (unsigned long long)gap, n);
        }
        if (next_at[n] && seen_at[n + 1])
            FH_CHECK(seen_at[n + 1] >= next_at[n],
                     "attempt %u running %llu ms before its retry time", n + 1,
                     (unsigned long long)(next_at[n] - seen_at[n + 1]));
    }
    fh_ledger_free(&l);
    fh_ledger_free(&poison);
    fh_ledger_free(&retry);
    fh_ledger_free(&all);
    fh_client_destroy(&c);
}

/* ---- 5. partition: a TCP proxy that can drop traffic --------------------------------------- */

typedef struct proxy_conn {
    int down, up; /* worker side, broker side (-1: none) */
    bool doomed;  /* saw the partition: its bytes are dropped, closed when it heals */
} proxy_conn;

static struct {
    int listen_fd;
    uint16_t upstream_port;
    atomic_bool dropping, stop;
    atomic_ulong dropped_bytes;
    proxy_conn conns[64];
    size_t n;
} px;

static pthread_t px_thread;
static bool px_running;

static uint16_t free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        fh_die("free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

static int connect_up(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons(px.upstream_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static void conn_close(size_t i)
{
    if (px.conns[i].down >= 0)
        close(px.conns[i].down);
    if (px.conns[i].up >= 0)
        close(px.conns[i].up);
    px.conns[i] = px.conns[--px.n];
}

static bool write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static void *proxy_main(void *arg)
{
    (void)arg;
    char buf[65536];
    bool was_dropping = false;
    while (!atomic_load(&px.stop)) {
        bool dropping = atomic_load(&px.dropping);
        if (was_dropping && !dropping) { /* healed: the connections that saw it are reset */
            for (size_t i = 0; i < px.n;) {
                if (px.conns[i].doomed)
                    conn_close(i);
                else
                    i++;
            }
        }
        was_dropping = dropping;
        struct pollfd fds[1 + 2 * 64];
        size_t nf = 0;
        fds[nf++] = (struct pollfd){px.listen_fd, POLLIN, 0};
        for (size_t i = 0; i < px.n; i++) {
            if (dropping)
                px.conns[i].doomed = true;
            fds[nf++] = (struct pollfd){px.conns[i].down, POLLIN, 0};
            fds[nf++] = (struct pollfd){px.conns[i].up, POLLIN, 0};
        }
        if (poll(fds, nf, 20) <= 0)
            continue;
        if ((fds[0].revents & POLLIN) && px.n < 64) {
            int fd = accept(px.listen_fd, NULL, NULL);
            if (fd >= 0) {
                int up = dropping ? -1 : connect_up();
                if (!dropping && up < 0)
                    close(fd);
                else
                    px.conns[px.n++] = (proxy_conn){fd, up, dropping};
            }
        }
        size_t n_polled = (nf - 1) / 2;
        for (size_t i = n_polled; i-- > 0;) {
            if (i >= px.n)
                continue;
            for (int side = 0; side < 2; side++) {
                struct pollfd *p = &fds[1 + 2 * i + (size_t)side];
                if (p->fd < 0 || !(p->revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                ssize_t r = read(p->fd, buf, sizeof buf);
                if (r <= 0) {
                    conn_close(i);
                    break;
                }
                if (px.conns[i].doomed) {
                    atomic_fetch_add(&px.dropped_bytes, (unsigned long)r);
                    continue;
                }
                int to = side == 0 ? px.conns[i].up : px.conns[i].down;
                if (!write_all(to, buf, (size_t)r)) {
                    conn_close(i);
                    break;
                }
            }
        }
    }
    while (px.n)
        conn_close(0);
    return NULL;
}

static void scenario_partition(void)
{
    uint16_t broker_port = free_port();
    px.upstream_port = broker_port;
    px.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (px.listen_fd < 0 || bind(px.listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(px.listen_fd, 16) != 0 ||
        getsockname(px.listen_fd, (struct sockaddr *)&a, &alen) != 0)
        fh_die("proxy: %s", strerror(errno));
    char proxy_ep[64];
    snprintf(proxy_ep, sizeof proxy_ep, "tcp://127.0.0.1:%u", ntohs(a.sin_port));
    snprintf(farm.wep, sizeof farm.wep, "tcp://127.0.0.1:%u", broker_port);
    pthread_t th;
    if (pthread_create(&th, NULL, proxy_main, NULL) != 0)
        fh_die("pthread_create");
    /* liveness 3 here: the partition lasts well beyond 3 heartbeats (200 ms each) */
    const char *live3[] = {"--heartbeat-liveness", "3", NULL};
    fh_start_broker(&farm, live3);
    const char *slow[] = {"--test-sleep-ms", "800", NULL};
    fh_start_worker(&farm, 0, proxy_ep, NULL, slow);
    fh_client *c = fh_client_new(&farm, "partition", false);
    fh_wait_workers(c, 1, 60000);
    fh_ledger l = {0};
    submit_n(c, "pt", 12, &l);
    char blog[400];
    snprintf(blog, sizeof blog, "%s/broker.log", farm.dir);
    for (int round = 0; round < 2; round++) {
        size_t seen = fh_log_count(worker_log(0), "\"event\":\"dispatch\"");
        uint64_t end = fh_now_ms() + 30000;
        while (fh_now_ms() < end && fh_log_count(worker_log(0), "\"event\":\"dispatch\"") == seen)
            fh_sleep_ms(10);
        size_t gone0 = fh_log_count(blog, "\"event\":\"worker_gone\"");
        atomic_store(&px.dropping, true);
        printf("partition %d: dropping worker<->broker traffic\n", round);
        /* until the broker has given the worker up (3 heartbeats), plus 3 more */
        end = fh_now_ms() + 30000;
        while (fh_now_ms() < end && fh_log_count(blog, "\"event\":\"worker_gone\"") == gone0)
            fh_sleep_ms(20);
        FH_CHECK(fh_log_count(blog, "\"event\":\"worker_gone\"") > gone0,
                 "the broker never gave the worker up");
        fh_sleep_ms(600);
        atomic_store(&px.dropping, false);
        printf("partition %d healed (%lu bytes dropped)\n", round, atomic_load(&px.dropped_bytes));
        fh_wait_workers(c, 1, 30000);
    }
    fh_oracle o;
    fh_oracle_run(c, &l, FH_STATE(DONE), 120000, &o);
    fh_oracle_assert(&o, "partition");
    FH_CHECK(fh_log_count(blog, "\"event\":\"lease_lapsed\"") >= 1, "no lease was requeued");
    FH_CHECK(fh_log_count(worker_log(0), "\"event\":\"registered\"") >= 3,
             "the worker did not register again");
    FH_CHECK(o.max_attempt >= 2, "no job was redelivered");
    fh_ledger_free(&l);
    fh_client_destroy(&c);
    px_thread = th; /* stopped after fh_finish: the worker says goodbye through it */
    px_running = true;
}

/* ---- 7. submit 500, exit, collect from a new socket ----------------------------------------- */

static void scenario_reconnect(void)
{
    fh_start_broker(&farm, NULL);
    const char *eight[] = {"--max-batch", "8", NULL};
    fh_start_worker(&farm, 0, NULL, eight, NULL);
    fh_start_worker(&farm, 1, NULL, eight, NULL);
    char idfile[400];
    snprintf(idfile, sizeof idfile, "%s/ids.txt", farm.dir);
    pid_t pid = fork();
    if (pid == 0) {
        fh_current = NULL;
        fh_client *c = fh_client_new(&farm, "reconnect", true);
        fh_ledger l = {0};
        submit_n(c, "rc", 500, &l);
        FILE *out = fopen(idfile, "w");
        for (size_t i = 0; out && i < l.n; i++)
            fprintf(out, "%s\n", l.ids[i]);
        if (out)
            fclose(out);
        fh_client_destroy(&c);
        _exit(out ? 0 : 1);
    }
    FH_CHECK(fh_wait_exit(pid, 120000) == 0, "the submitting client failed");
    fh_ledger l = {0};
    FILE *in = fopen(idfile, "r");
    char line[128];
    while (in && fgets(line, sizeof line, in)) {
        line[strcspn(line, "\n")] = 0;
        fh_ledger_add(&l, line);
    }
    if (in)
        fclose(in);
    FH_CHECK(l.n == 500, "the client recorded %zu ids", l.n);
    fh_client *c = fh_client_new(&farm, "reconnect", false);
    fh_oracle o;
    fh_oracle_run(c, &l, FH_STATE(DONE), 300000, &o);
    fh_oracle_assert(&o, "reconnect");
    FH_CHECK(o.terminal == 500, "collected %zu of 500", o.terminal);
    /* another identity sees none of them */
    fh_client *other = fh_client_new(&farm, "someone-else", false);
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__FetchRequest fr = KOSMOS__V1__FETCH_REQUEST__INIT;
    fr.job_id = l.ids[0];
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH;
    req.fetch = &fr;
    kp_inbound *r = fh_call(other, &req, NULL, 0, 5000);
    FH_CHECK(r && fh_reply(r)->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR &&
                 fh_reply(r)->error->code == KOSMOS__V1__ERROR_CODE__ERROR_CODE_NOT_FOUND,
             "another client could fetch job %s", l.ids[0]);
    kp_inbound_destroy(&r);
    fh_client_destroy(&other);
    fh_ledger_free(&l);
    fh_client_destroy(&c);
}

/* ---- 8. the same key from 4 processes at once ----------------------------------------------- */

static void scenario_same_key(void)
{
    fh_start_broker(&farm, NULL);
    fh_client *c = fh_client_new(&farm, "same-key", false);
    fh_wait_workers(c, 0, 30000);
    int gate[2];
    if (pipe(gate) != 0)
        fh_die("pipe");
    pid_t kids[4];
    char outs[4][400];
    for (int k = 0; k < 4; k++) {
        snprintf(outs[k], sizeof outs[k], "%s/same-key-%d.txt", farm.dir, k);
        kids[k] = fork();
        if (kids[k] == 0) {
            fh_current = NULL;
            close(gate[1]);
            fh_client *kc = fh_client_new(&farm, "same-key", true);
            char b;
            if (read(gate[0], &b, 1) < 0) /* EOF when the parent opens the gate */
                _exit(2);
            fh_job j = plain_job("the-key");
            Kosmos__V1__ClientRequest req;
            fh_submit_store st;
            fh_submit_request(&j, &req, &st);
            req.client_id = kc->client_id;
            req.has_request_id = true;
            for (int i = 0; i < 25; i++) { /* all 25 in flight at once */
                req.request_id = (uint64_t)i + 1;
                zmq_msg_t img;
                zmq_msg_init_size(&img, png_len);
                memcpy(zmq_msg_data(&img), png, png_len);
                if (kp_send(kc->sock, NULL, 0, &req.base, &img, 0) != KS_OK)
                    _exit(3);
            }
            FILE *out = fopen(outs[k], "w");
            int got = 0;
            uint64_t end = fh_now_ms() + 30000;
            while (got < 25 && fh_now_ms() < end) {
                zmq_pollitem_t it = {kc->sock, 0, ZMQ_POLLIN, 0};
                if (zmq_poll(&it, 1, 100) <= 0)
                    continue;
                kp_inbound *in = NULL;
                if (kp_recv(kc->sock, false, KP_CLIENT_REPLY, NULL, 0, &in) != KS_OK || !in)
                    continue;
                const Kosmos__V1__ClientReply *r = fh_reply(in);
                if (kp_inbound_verdict(in) == KP_VALID &&
                    r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT) {
                    if (r->submit->outcome_case == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED)
                        fprintf(out, "%s %d\n", r->submit->accepted->job_id,
                                (int)r->submit->accepted->duplicate);
                    else
                        fprintf(out, "outcome-%d 0\n", (int)r->submit->outcome_case);
                    got++;
                }
                kp_inbound_destroy(&in);
            }
            fclose(out);
            fh_client_destroy(&kc);
            _exit(got == 25 ? 0 : 4);
        }
    }
    close(gate[0]);
    fh_sleep_ms(300); /* every child connected */
    close(gate[1]);
    for (int k = 0; k < 4; k++)
        FH_CHECK(fh_wait_exit(kids[k], 60000) == 0, "client process %d failed", k);
    char first[65] = "";
    int n = 0, fresh = 0;
    for (int k = 0; k < 4; k++) {
        FILE *in = fopen(outs[k], "r");
        char id[65];
        int dup;
        while (in && fscanf(in, "%64s %d", id, &dup) == 2) {
            n++;
            fresh += !dup;
            if (!first[0])
                snprintf(first, sizeof first, "%s", id);
            FH_CHECK(strcmp(id, first) == 0, "two answers for one key: %s and %s", id, first);
        }
        if (in)
            fclose(in);
    }
    FH_CHECK(n == 100, "%d replies", n);
    FH_CHECK(fresh == 1, "%d submits created a job", fresh);
    FH_CHECK(status_total(c, 0) == 1, "%ld jobs stored", status_total(c, 0));
    fh_job other = plain_job("the-key");
    other.prompt = "<grounding>Something else";
    char id[65] = "";
    FH_CHECK(fh_submit(c, &other, id, NULL, 5000) == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_CONFLICT,
             "a different payload was not CONFLICT");
    FH_CHECK(strcmp(id, first) == 0, "CONFLICT names %s, not %s", id, first);
    FH_CHECK(status_total(c, 0) == 1, "%ld jobs stored after the conflict", status_total(c, 0));
    printf("100 submits from 4 processes: 1 job %s, 99 duplicates; other payload: CONFLICT\n",
           first);
    fh_client_destroy(&c);
}

/* ---- curve: CURVE on both endpoints --------------------------------------------------------- */

static void cv_mkdir(const char *path)
{
    if (mkdir(path, 0700) != 0)
        fh_die("mkdir %s: %s", path, strerror(errno));
}

/* Waits until `path` has a line holding both needles (at most timeout_ms). */
static bool cv_log_has(const char *path, const char *a, const char *b, uint64_t timeout_ms)
{
    uint64_t end = fh_now_ms() + timeout_ms;
    do {
        FILE *f = fopen(path, "r");
        char line[4096];
        while (f && fgets(line, sizeof line, f))
            if (strstr(line, a) && strstr(line, b)) {
                fclose(f);
                return true;
            }
        if (f)
            fclose(f);
        fh_sleep_ms(100);
    } while (fh_now_ms() < end);
    return false;
}

/* A reply to a cancel or fetch that must be ERROR_CODE_NOT_FOUND. */
static bool cv_not_found(kp_inbound *in)
{
    const Kosmos__V1__ClientReply *r = in ? fh_reply(in) : NULL;
    return r && r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR && r->error->has_code &&
           r->error->code == KOSMOS__V1__ERROR_CODE__ERROR_CODE_NOT_FOUND;
}

/* One fetch, whatever the reply (fh_fetch keeps only FetchReply). */
static kp_inbound *cv_fetch(fh_client *c, const char *job_id)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__FetchRequest f = KOSMOS__V1__FETCH_REQUEST__INIT;
    f.job_id = (char *)job_id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH;
    req.fetch = &f;
    return fh_call(c, &req, NULL, 0, 10000);
}

/* A status call retried while the CURVE handshake completes (fh_call sends DONTWAIT). */
static kp_inbound *cv_status(fh_client *c, uint64_t timeout_ms)
{
    uint64_t end = fh_now_ms() + timeout_ms;
    kp_inbound *in = NULL;
    while (!in && fh_now_ms() < end)
        if (!(in = fh_status(c, 2000))) {
            fh_sleep_ms(100);
            fh_client_reopen(c); /* a fresh connection (and handshake) each try */
        }
    return in;
}

/* A broker that must refuse to start (exit 1, start_failed in its log). */
static void cv_refuses(const char *what, const char *secret, const char *clients,
                       const char *workers)
{
    char log[400], db[400], cep[400], wep[400];
    snprintf(log, sizeof log, "%s/broker-refused.log", farm.dir);
    snprintf(db, sizeof db, "%s/refused.db", farm.dir);
    snprintf(cep, sizeof cep, "ipc://%s/refused-c", farm.dir);
    snprintf(wep, sizeof wep, "ipc://%s/refused-w", farm.dir);
    char *argv[16] = {
        (char *)farm.broker_bin, "--client-endpoint", cep, "--worker-endpoint", wep, "--db", db};
    int n = 7;
    if (secret) {
        argv[n++] = "--curve-secret";
        argv[n++] = (char *)secret;
    }
    if (clients) {
        argv[n++] = "--client-keys";
        argv[n++] = (char *)clients;
    }
    if (workers) {
        argv[n++] = "--worker-keys";
        argv[n++] = (char *)workers;
    }
    argv[n] = NULL;
    size_t before = fh_log_count(log, "start_failed");
    pid_t pid = fh_spawn(argv, log, NULL);
    int code = fh_wait_exit(pid, 60000);
    FH_CHECK(code == 1, "broker with %s: exit code %d, not 1 (refused)", what, code);
    FH_CHECK(fh_log_count(log, "start_failed") == before + 1, "broker with %s: no start_failed",
             what);
    printf("broker with %s: refused to start (exit %d)\n", what, code);
}

static void scenario_curve(void)
{
    char keys[300], clients[300], workers[300], empty[300], sec[400], pub[400], wsec[400];
    snprintf(keys, sizeof keys, "%s/keys", farm.dir); /* secrets, not a key folder */
    snprintf(clients, sizeof clients, "%s/clients", farm.dir);
    snprintf(workers, sizeof workers, "%s/workers", farm.dir);
    snprintf(empty, sizeof empty, "%s/empty", farm.dir);
    cv_mkdir(keys);
    cv_mkdir(clients);
    cv_mkdir(workers);
    cv_mkdir(empty);
    fh_key broker = fh_cert(keys, keys, "broker");
    fh_key a = fh_cert(clients, keys, "client-a");
    fh_key b = fh_cert(clients, keys, "client-b");
    fh_key w = fh_cert(workers, keys, "worker");
    fh_key stranger = fh_cert(keys, NULL, "stranger"); /* in no allowed folder */
    (void)w;
    snprintf(sec, sizeof sec, "%s/broker.key_secret", keys);
    snprintf(pub, sizeof pub, "%s/broker.key", keys);
    snprintf(wsec, sizeof wsec, "%s/worker.key_secret", keys);

    /* Fail closed at start: a folder that cannot be read, a folder without a certificate, a
     * missing secret, CURVE options given only in part. (The handler thread dying at run time
     * stops the broker too; nothing outside the process can provoke it, so test_broker does,
     * in process: test_curve_handler_death_stops_broker.) */
    char missing[300], bad[400];
    snprintf(missing, sizeof missing, "%s/no-such-folder", farm.dir);
    snprintf(bad, sizeof bad, "%s/bad.key", empty);
    FILE *f = fopen(bad, "w");
    if (!f)
        fh_die("cannot write %s", bad);
    fputs("curve\n    public-key = \"not a key\"\n", f);
    fclose(f);
    cv_refuses("an unreadable client key folder", sec, missing, workers);
    cv_refuses("an unreadable worker key folder", sec, clients, missing);
    cv_refuses("a key folder without a valid certificate", sec, empty, workers);
    cv_refuses("a missing secret certificate", missing, clients, workers);
    cv_refuses("--curve-secret alone", sec, NULL, NULL);
    cv_refuses("no --worker-keys", sec, clients, NULL);

    const char *extra[] = {"--curve-secret", sec, "--client-keys", clients, "--worker-keys",
                           workers,          NULL};
    fh_start_broker(&farm, extra);
    const char *wextra[] = {"--curve-secret", wsec, "--curve-server-public", pub, NULL};
    fh_start_worker(&farm, 0, NULL, wextra, NULL);
    char blog[400];
    snprintf(blog, sizeof blog, "%s/broker.log", farm.dir);

    /* A known client key: accepted; a known worker key: the job is computed. */
    fh_client *ca = fh_client_new(&farm, "ignored-with-curve", false);
    fh_client_set_curve(ca, a.pub, a.sec, broker.pub);
    kp_inbound *in = cv_status(ca, 60000);
    if (!in)
        fh_die("a known client key got no status reply");
    kp_inbound_destroy(&in);
    fh_wait_workers(ca, 1, 60000);
    fh_job j = plain_job("curve-a");
    char id[65] = "";
    int out = -1;
    for (int tries = 0; tries < 20 && out == -1; tries++)
        out = fh_submit(ca, &j, id, NULL, 5000);
    FH_CHECK(out == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED, "known key: submit outcome %d",
             out);
    fh_ledger l = {0};
    fh_ledger_add(&l, id);
    fh_oracle o;
    fh_oracle_run(ca, &l, FH_STATE(DONE), 120000, &o);
    fh_oracle_assert(&o, "curve");
    FH_CHECK(o.by_state[KOSMOS__V1__JOB_STATE__JOB_STATE_DONE] == 1, "client A's job is not DONE");
    FH_CHECK(fh_log_count(worker_log(0), "\"event\":\"dispatch\"") >= 1, "the worker ran nothing");

    /* Identity = public key: client B (allowed) cannot fetch or cancel A's job. */
    fh_client *cb = fh_client_new(&farm, "ignored-with-curve", false);
    fh_client_set_curve(cb, b.pub, b.sec, broker.pub);
    in = cv_status(cb, 60000);
    FH_CHECK(in != NULL, "client B got no status reply");
    kp_inbound_destroy(&in);
    in = cv_fetch(cb, id);
    FH_CHECK(cv_not_found(in), "client B fetched client A's job");
    kp_inbound_destroy(&in);
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__CancelRequest cr = KOSMOS__V1__CANCEL_REQUEST__INIT;
    cr.job_id = id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_CANCEL;
    req.cancel = &cr;
    in = fh_call(cb, &req, NULL, 0, 10000);
    FH_CHECK(cv_not_found(in), "client B cancelled client A's job");
    kp_inbound_destroy(&in);
    /* ...even naming A's key as its client_id (ignored with CURVE on) */
    snprintf(cb->client_id, sizeof cb->client_id, "%s", a.pub);
    in = cv_fetch(cb, id);
    FH_CHECK(cv_not_found(in), "client B fetched client A's job with A's key as client_id");
    kp_inbound_destroy(&in);
    in = fh_fetch(ca, id, 10000); /* A still can */
    FH_CHECK(in && fh_reply(in)->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH,
             "client A cannot fetch its own job");
    kp_inbound_destroy(&in);

    /* An unknown client key: no connection, no reply, nothing stored; the broker logs it. */
    fh_client *cu = fh_client_new(&farm, "stranger", false);
    fh_client_set_curve(cu, stranger.pub, stranger.sec, broker.pub);
    fh_job ju = plain_job("curve-stranger");
    for (int i = 0; i < 3; i++)
        FH_CHECK(fh_submit(cu, &ju, NULL, NULL, 3000) == -1, "an unknown key got a reply");
    FH_CHECK(cv_log_has(blog, "\"curve_denied\"", stranger.pub, 60000),
             "no curve_denied for the unknown key in the broker's log");

    /* A NULL-mechanism client (no CURVE at all): no connection, no reply. */
    fh_client *cn = fh_client_new(&farm, "plain", false);
    for (int i = 0; i < 3; i++)
        FH_CHECK(fh_submit(cn, &ju, NULL, NULL, 3000) == -1, "a NULL-mechanism client got a reply");

    /* A client key on the worker endpoint: refused in the kosmos-worker domain. */
    void *ws = zmq_socket(farm.zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(ws, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(ws, ZMQ_CURVE_PUBLICKEY, a.pub, 40);
    zmq_setsockopt(ws, ZMQ_CURVE_SECRETKEY, a.sec, 40);
    zmq_setsockopt(ws, ZMQ_CURVE_SERVERKEY, broker.pub, 40);
    if (zmq_connect(ws, farm.wep) != 0)
        fh_die("connect %s: %s", farm.wep, zmq_strerror(errno));
    FH_CHECK(cv_log_has(blog, "\"domain\":\"kosmos-worker\"", a.pub, 60000),
             "a client key on the worker endpoint was not denied");
    zmq_close(ws);

    /* Counters: only A's job was ever stored, one worker registered. */
    in = cv_status(ca, 30000);
    FH_CHECK(in != NULL, "no status reply at the end");
    if (in) {
        const Kosmos__V1__StatusReply *s = fh_reply(in)->status;
        FH_CHECK(s->total_submitted == 1, "%llu jobs stored, expected 1",
                 (unsigned long long)s->total_submitted);
        FH_CHECK(s->n_workers == 1, "%zu workers registered, expected 1", s->n_workers);
        kp_inbound_destroy(&in);
    }
    FH_CHECK(!cv_log_has(blog, "\"curve_denied\"", a.pub, 0) ||
                 cv_log_has(blog, "\"kosmos-worker\"", a.pub, 0),
             "client A's key was denied on the client endpoint");
    printf("curve: known key served (job %s DONE), B cannot fetch/cancel it, unknown key and "
           "NULL mechanism unanswered, client key refused on the worker endpoint\n",
           id);
    fh_ledger_free(&l);
    fh_client_destroy(&cn);
    fh_client_destroy(&cu);
    fh_client_destroy(&cb);
    fh_client_destroy(&ca);
}

static char *blog_path(void)
{
    static char path[400];
    snprintf(path, sizeof path, "%s/broker.log", farm.dir);
    return path;
}

/* ---- bad_input: malformed traffic against a running broker ---------------------------------- */

/* A raw DEALER on `ep` (LINGER 0). */
static void *bi_socket(const char *ep)
{
    void *s = zmq_socket(farm.zctx, ZMQ_DEALER);
    int zero = 0;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) != 0 || zmq_connect(s, ep) != 0)
        fh_die("raw socket on %s: %s", ep, zmq_strerror(errno));
    return s;
}

/* Sends frames as given (no framing added). */
static void bi_send(void *s, const void *const *frames, const size_t *lens, int n)
{
    for (int i = 0; i < n; i++)
        if (zmq_send(s, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            fh_die("zmq_send: %s", zmq_strerror(errno));
}

/* The next message on a raw socket, classified as `kind`, or NULL after timeout_ms. */
static kp_inbound *bi_recv(void *s, kp_kind kind, int timeout_ms)
{
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return NULL;
    kp_inbound *in = NULL;
    if (kp_recv(s, false, kind, NULL, 0, &in) != KS_OK || !in)
        fh_die("kp_recv on a raw socket failed");
    return in;
}

/* Expects an ErrorReply with `code` and `request_id` on the raw client socket. */
static void bi_expect_error(void *s, const char *what, int code, uint64_t request_id)
{
    kp_inbound *in = bi_recv(s, KP_CLIENT_REPLY, 30000);
    const Kosmos__V1__ClientReply *r =
        in && kp_inbound_verdict(in) == KP_VALID
            ? (const Kosmos__V1__ClientReply *)kp_inbound_envelope(in)
            : NULL;
    FH_CHECK(r && r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR &&
                 (int)r->error->code == code && r->request_id == request_id,
             "%s: expected error %d for request %llu, got %s (case %d, code %d, request %llu)",
             what, code, (unsigned long long)request_id, r ? "a reply" : "no reply",
             r ? (int)r->reply_case : -1,
             r && r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR ? (int)r->error->code : -1,
             r ? (unsigned long long)r->request_id : 0ull);
    kp_inbound_destroy(&in);
}

/* A well-behaved client is served right after each bad input. */
static void bi_served(fh_client *c, const char *after)
{
    kp_inbound *in = fh_status(c, 30000);
    FH_CHECK(in != NULL, "no status reply for a normal client after %s", after);
    kp_inbound_destroy(&in);
}

/* A packed envelope (caller frees). */
static uint8_t *bi_pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(*len ? *len : 1);
    if (!p)
        fh_die("out of memory");
    protobuf_c_message_pack(m, p);
    return p;
}

/* The BrokerToWorker the fake worker gets next (skipping heartbeats), or NULL. */
static kp_inbound *bi_worker_next(void *s)
{
    uint64_t end = fh_now_ms() + 30000;
    while (fh_now_ms() < end) {
        kp_inbound *in = bi_recv(s, KP_BROKER_TO_WORKER, 1000);
        if (!in)
            continue;
        const Kosmos__V1__BrokerToWorker *m =
            kp_inbound_verdict(in) == KP_VALID
                ? (const Kosmos__V1__BrokerToWorker *)kp_inbound_envelope(in)
                : NULL;
        if (m && m->message_case != KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_HEARTBEAT)
            return in;
        kp_inbound_destroy(&in);
    }
    return NULL;
}

static const Kosmos__V1__BrokerToWorker *bi_b2w(const kp_inbound *in)
{
    return in ? (const Kosmos__V1__BrokerToWorker *)kp_inbound_envelope(in) : NULL;
}

/* A Result for job_id/attempt from the fake worker; returns the disposition of the ResultAck,
 * 100 + the code of a Disconnect, or -1 for anything else. */
static int bi_fake_result(void *s, const char *job_id, uint32_t attempt)
{
    ts_fw_result res;
    if (ts_fw_send_result(s, ts_fw_result_init(&res, job_id, attempt, KOSMOS__V1__STATUS__STATUS_OK,
                                               NULL)) != KS_OK)
        fh_die("fake worker send failed");
    kp_inbound *in = bi_worker_next(s);
    const Kosmos__V1__BrokerToWorker *m = bi_b2w(in);
    int d = m && m->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_RESULT_ACK
                ? (int)m->result_ack->disposition
            : m && m->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT
                ? 100 + (int)m->disconnect->code
                : -1;
    kp_inbound_destroy(&in);
    return d;
}

static void scenario_bad_input(void)
{
    /* Small limits so that frames over them stay under ZMQ_MAXMSGSIZE (max of both + 64 KiB). */
    const char *extra[] = {"--max-message-bytes", "65536", "--max-image-bytes", "1048576", NULL};
    fh_start_broker(&farm, extra);
    fh_client *c = fh_client_new(&farm, "bad-input-normal", false);
    kp_inbound *st = NULL;
    for (int i = 0; i < 60 && !st; i++)
        if (!(st = fh_status(c, 1000)))
            fh_client_reopen(c); /* a fresh connection each try */
    if (!st)
        fh_die("the broker does not answer");
    kp_inbound_destroy(&st);
    void *raw = bi_socket(farm.cep);
    static const char ver[] = KP_VERSION;
    static const uint8_t garbage[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

    /* Malformed protobuf: MALFORMED, request_id 0. */
    {
        const void *f[] = {"", ver, garbage};
        size_t l[] = {0, KP_VERSION_LEN, sizeof garbage};
        bi_send(raw, f, l, 3);
        bi_expect_error(raw, "malformed protobuf", KOSMOS__V1__ERROR_CODE__ERROR_CODE_MALFORMED, 0);
        bi_served(c, "malformed protobuf");
    }
    /* A valid status request, packed, for the framing cases. */
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__StatusRequest sr = KOSMOS__V1__STATUS_REQUEST__INIT;
    req.has_request_id = true;
    req.request_id = 41;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    req.status = &sr;
    size_t status_len;
    uint8_t *status = bi_pack(&req.base, &status_len);
    /* Wrong frame counts: MALFORMED (request_id once the envelope decodes). */
    {
        const void *f[] = {"", ver};
        size_t l[] = {0, KP_VERSION_LEN};
        bi_send(raw, f, l, 2);
        bi_expect_error(raw, "2 frames", KOSMOS__V1__ERROR_CODE__ERROR_CODE_MALFORMED, 0);
        bi_served(c, "2 frames");
        const void *g[] = {"", ver, status, garbage};
        size_t m[] = {0, KP_VERSION_LEN, status_len, sizeof garbage};
        bi_send(raw, g, m, 4);
        bi_expect_error(raw, "an unannounced frame 3", KOSMOS__V1__ERROR_CODE__ERROR_CODE_MALFORMED,
                        41);
        bi_served(c, "an unannounced frame 3");
        const void *h[] = {ver, status};
        size_t n[] = {KP_VERSION_LEN, status_len};
        bi_send(raw, h, n, 2);
        bi_expect_error(raw, "no delimiter", KOSMOS__V1__ERROR_CODE__ERROR_CODE_MALFORMED, 41);
        bi_served(c, "no delimiter");
    }
    /* Another protocol version: PROTOCOL_VERSION. Not ours at all: dropped, no reply. */
    {
        const void *f[] = {"", "KOSMOS2", status};
        size_t l[] = {0, 7, status_len};
        bi_send(raw, f, l, 3);
        bi_expect_error(raw, "KOSMOS2", KOSMOS__V1__ERROR_CODE__ERROR_CODE_PROTOCOL_VERSION, 0);
        bi_served(c, "KOSMOS2");
        const void *g[] = {"", "HTTP/1.1", status};
        size_t m[] = {0, 8, status_len};
        bi_send(raw, g, m, 3);
        bi_served(c, "a message not ours");
        kp_inbound *in = bi_recv(raw, KP_CLIENT_REPLY, 2000);
        FH_CHECK(in == NULL, "a message that is not ours was answered");
        kp_inbound_destroy(&in);
    }
    /* An unknown request (oneof member 29, a later version's): UNKNOWN_REQUEST. */
    {
        static const uint8_t unknown[] = {0x08, 0x07, 0xea, 0x01, 0x00}; /* id 7, field 29 {} */
        const void *f[] = {"", ver, unknown};
        size_t l[] = {0, KP_VERSION_LEN, sizeof unknown};
        bi_send(raw, f, l, 3);
        bi_expect_error(raw, "unknown request", KOSMOS__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_REQUEST,
                        7);
        bi_served(c, "an unknown request");
    }
    /* Frame 2 over --max-message-bytes: TOO_LARGE, request_id 0. Frame 3 over
     * --max-image-bytes: TOO_LARGE. */
    size_t big_len = 2u << 20;
    uint8_t *big = calloc(1, big_len);
    if (!big)
        fh_die("out of memory");
    {
        const void *f[] = {"", ver, big};
        size_t l[] = {0, KP_VERSION_LEN, 100000};
        bi_send(raw, f, l, 3);
        bi_expect_error(raw, "frame 2 over the limit", KOSMOS__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE,
                        0);
        bi_served(c, "frame 2 over the limit");
        fh_job j = {.image = big, .image_len = (1u << 20) + 4096, .key = "too-large"};
        Kosmos__V1__ClientRequest sub;
        fh_submit_store store;
        fh_submit_request(&j, &sub, &store);
        sub.has_request_id = true;
        sub.request_id = 42;
        size_t sub_len;
        uint8_t *packed = bi_pack(&sub.base, &sub_len);
        const void *g[] = {"", ver, packed, big};
        size_t m[] = {0, KP_VERSION_LEN, sub_len, j.image_len};
        bi_send(raw, g, m, 4);
        bi_expect_error(raw, "frame 3 over the limit", KOSMOS__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE,
                        42);
        bi_served(c, "frame 3 over the limit");
        free(packed);
    }
    /* A frame over ZMQ_MAXMSGSIZE: libzmq drops the connection, no reply (protocol.md §7). */
    {
        void *raw2 = bi_socket(farm.cep);
        const void *f[] = {"", ver, big};
        size_t l[] = {0, KP_VERSION_LEN, big_len};
        bi_send(raw2, f, l, 3);
        bi_served(c, "a frame over ZMQ_MAXMSGSIZE");
        kp_inbound *in = bi_recv(raw2, KP_CLIENT_REPLY, 3000);
        FH_CHECK(in == NULL, "a frame over ZMQ_MAXMSGSIZE was answered");
        kp_inbound_destroy(&in);
        zmq_close(raw2);
    }
    free(big);
    free(status);

    /* Worker endpoint. A queued job (no worker yet) for the never-leased result. */
    char queued[65];
    fh_job j = plain_job("bad-input-queued");
    FH_CHECK(fh_submit(c, &j, queued, NULL, 30000) == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED,
             "normal submit not accepted");
    void *fw = bi_socket(farm.wep);
    int d;
    /* A Result before Ready: Disconnect{NOT_REGISTERED}. */
    d = bi_fake_result(fw, queued, 1);
    FH_CHECK(d == 100 + KOSMOS__V1__DISCONNECT__CODE__CODE_NOT_REGISTERED,
             "a Result before Ready: %d, not Disconnect{NOT_REGISTERED}", d);
    bi_served(c, "a result before Ready");
    ts_fw_ready store;
    Kosmos__V1__Ready *ready = ts_fw_ready_init(&store, "fake-worker", 12345, 1, "fake");
    ready->model_hash = "0000";
    if (ts_fw_send_ready(fw, ready) != KS_OK)
        fh_die("fake worker send failed");
    kp_inbound *in = bi_worker_next(fw);
    FH_CHECK(bi_b2w(in) &&
                 bi_b2w(in)->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_WELCOME,
             "the fake worker's Ready was not welcomed");
    kp_inbound_destroy(&in);
    /* A Result for a job that does not exist: UNKNOWN_JOB; for a queued job never leased:
     * STALE. Nothing stored either way. */
    d = bi_fake_result(fw, "01NOSUCHJOB0000000000000000", 1);
    FH_CHECK(d == KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_UNKNOWN_JOB,
             "result for an unknown job: disposition %d", d);
    bi_served(c, "a result for an unknown job");
    d = bi_fake_result(fw, queued, 1);
    FH_CHECK(d == KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STALE,
             "result for a job never leased: disposition %d", d);
    bi_served(c, "a result for a job never leased");
    in = fh_fetch(c, queued, 30000);
    FH_CHECK(in && fh_reply(in)->fetch->state == KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED,
             "the never-leased job is no longer QUEUED");
    kp_inbound_destroy(&in);
    /* A malformed worker message: Disconnect{PROTOCOL_ERROR}. */
    {
        static const uint8_t junk[] = {0xff, 0xff, 0xff};
        const void *f[] = {"", ver, junk};
        size_t l[] = {0, KP_VERSION_LEN, sizeof junk};
        bi_send(fw, f, l, 3);
        in = bi_worker_next(fw);
        const Kosmos__V1__BrokerToWorker *m = bi_b2w(in);
        FH_CHECK(m && m->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT &&
                     m->disconnect->code == KOSMOS__V1__DISCONNECT__CODE__CODE_PROTOCOL_ERROR,
                 "a malformed worker message was not answered Disconnect{PROTOCOL_ERROR}");
        kp_inbound_destroy(&in);
        bi_served(c, "a malformed worker message");
    }
    zmq_close(fw);
    zmq_close(raw);

    /* Counters, then the real work still runs: a real worker computes both jobs. */
    kp_inbound *s = fh_status(c, 30000);
    FH_CHECK(s && fh_reply(s)->status->total_submitted == 1, "jobs stored: expected 1");
    kp_inbound_destroy(&s);
    fh_start_worker(&farm, 0, NULL, NULL, NULL);
    fh_ledger l = {0};
    fh_ledger_add(&l, queued);
    submit_n(c, "bad-input-after", 2, &l);
    fh_oracle o;
    fh_oracle_run(c, &l, FH_STATE(DONE), 300000, &o);
    fh_oracle_assert(&o, "bad_input");
    FH_CHECK(o.by_state[KOSMOS__V1__JOB_STATE__JOB_STATE_DONE] == 3, "%zu of 3 jobs DONE",
             o.by_state[KOSMOS__V1__JOB_STATE__JOB_STATE_DONE]);
    FH_CHECK(fh_log_count(blog_path(), "protocol_violation") >= 5,
             "fewer than 5 protocol_violation lines in the broker's log");
    printf("bad_input: every bad message refused as protocol.md says; a normal client served "
           "after each; 3 jobs DONE afterwards\n");
    fh_ledger_free(&l);
    fh_client_destroy(&c);
}

/* ---- backpressure: 4 clients, 8 MB images, 1 slow worker, small limits ---------------------- */

#define BP_CLIENTS 4
#define BP_PER_CLIENT 10

typedef struct bp_state {
    fh_client *c[BP_CLIENTS];
    fh_client *watch; /* polls status throughout */
    int sent[BP_CLIENTS], inflight[BP_CLIENTS];
    int accepted, busy, other, replies;
    uint64_t mem_max, bound;
    int polls;
    fh_ledger l, lc[BP_CLIENTS]; /* accepted jobs: all, per client (identity = client_id) */
    const uint8_t *img;
    size_t img_len;
} bp_state;

/* Polls the broker's own accounting: memory_bytes must stay under memory_bound_bytes. */
static void bp_watch(bp_state *s)
{
    kp_inbound *in = fh_status(s->watch, 30000);
    FH_CHECK(in != NULL, "no status reply during the run");
    if (!in)
        return;
    const Kosmos__V1__StatusReply *r = fh_reply(in)->status;
    FH_CHECK(r->has_memory_bytes && r->has_memory_bound_bytes && r->memory_bound_bytes > 0,
             "status without memory accounting");
    FH_CHECK(r->memory_bytes <= r->memory_bound_bytes, "memory %llu over the bound %llu",
             (unsigned long long)r->memory_bytes, (unsigned long long)r->memory_bound_bytes);
    if (r->memory_bytes > s->mem_max)
        s->mem_max = r->memory_bytes;
    s->bound = r->memory_bound_bytes;
    s->polls++;
    kp_inbound_destroy(&in);
}

/* Sends client i's next submit (its own key) without waiting for the reply. */
static void bp_send(bp_state *s, int i)
{
    char key[64];
    snprintf(key, sizeof key, "bp-%d-%d", i, s->sent[i]);
    fh_job j = {.image = s->img, .image_len = s->img_len, .key = key};
    Kosmos__V1__ClientRequest req;
    fh_submit_store store;
    fh_submit_request(&j, &req, &store);
    fh_client *c = s->c[i];
    req.has_request_id = true;
    req.request_id = c->next_rid++;
    req.client_id = c->client_id;
    zmq_msg_t img;
    zmq_msg_init_size(&img, s->img_len);
    memcpy(zmq_msg_data(&img), s->img, s->img_len);
    if (kp_send(c->sock, NULL, 0, &req.base, &img, 0) != KS_OK) /* blocking: nothing dropped here */
        fh_die("client %d: send failed", i);
    s->sent[i]++;
    s->inflight[i]++;
}

/* Reads every reply that is there (waiting up to wait_ms for the first). */
static void bp_collect(bp_state *s, int wait_ms)
{
    zmq_pollitem_t it[BP_CLIENTS];
    for (int i = 0; i < BP_CLIENTS; i++)
        it[i] = (zmq_pollitem_t){s->c[i]->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(it, BP_CLIENTS, wait_ms) <= 0)
        return;
    for (int i = 0; i < BP_CLIENTS; i++) {
        kp_inbound *in = NULL;
        while (kp_recv(s->c[i]->sock, false, KP_CLIENT_REPLY, NULL, ZMQ_DONTWAIT, &in) == KS_OK &&
               in) {
            const Kosmos__V1__ClientReply *r = kp_inbound_verdict(in) == KP_VALID ? fh_reply(in)
                                                                                  : NULL;
            s->replies++;
            s->inflight[i]--;
            if (r && r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT &&
                r->submit->outcome_case == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED) {
                s->accepted++;
                fh_ledger_add(&s->l, r->submit->accepted->job_id);
                fh_ledger_add(&s->lc[i], r->submit->accepted->job_id);
            } else if (r && r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT &&
                       r->submit->outcome_case == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_BUSY) {
                s->busy++;
            } else {
                s->other++;
                fprintf(stderr, "client %d: reply case %d outcome %d\n", i,
                        r ? (int)r->reply_case : -1,
                        r && r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT
                            ? (int)r->submit->outcome_case
                            : -1);
            }
            kp_inbound_destroy(&in);
        }
    }
}

/* Until every client has `target` replies (each within a generous time), `window` in flight
 * per client, watching memory all along. */
static void bp_run(bp_state *s, int target, int window)
{
    uint64_t end = fh_now_ms() + 300000;
    for (;;) {
        int open = 0;
        for (int i = 0; i < BP_CLIENTS; i++) {
            while (s->sent[i] < target && s->inflight[i] < window)
                bp_send(s, i);
            open += s->inflight[i] + (target - s->sent[i]);
        }
        if (open == 0)
            break;
        if (fh_now_ms() > end)
            fh_die("backpressure: %d submits unanswered after 300 s", open);
        bp_collect(s, 100);
        bp_watch(s);
    }
}

static void scenario_backpressure(void)
{
    /* At most 6 jobs not yet terminal, 2 per client. */
    const char *extra[] = {"--max-queued", "6", "--max-client-jobs", "2", NULL};
    fh_start_broker(&farm, extra);
    bp_state s = {0};
    s.img = fh_make_png(1632, 1632, 11, &s.img_len); /* 8 MB: a stored-deflate RGB PNG */
    printf("image %zu bytes\n", s.img_len);
    s.watch = fh_client_new(&farm, "bp-watch", false);
    kp_inbound *in = NULL;
    for (int i = 0; i < 60 && !in; i++)
        if (!(in = fh_status(s.watch, 1000)))
            fh_client_reopen(s.watch); /* a fresh connection each try */
    if (!in)
        fh_die("the broker does not answer");
    kp_inbound_destroy(&in);
    for (int i = 0; i < BP_CLIENTS; i++) {
        char id[32];
        snprintf(id, sizeof id, "bp-client-%d", i);
        s.c[i] = fh_client_new(&farm, id, false);
    }
    /* Wave 1, no worker yet: 3 submits per client at once. Nothing can finish, so with 2 per
     * client (and 6 in all) at least 4 must be answered BUSY - an ordering, not a timing. */
    bp_run(&s, 3, 3);
    printf("wave 1: %d accepted, %d busy\n", s.accepted, s.busy);
    FH_CHECK(s.accepted <= 6 && s.busy >= 12 - 6, "wave 1: %d accepted, %d busy", s.accepted,
             s.busy);
    int busy1 = s.busy;
    /* Wave 2: a slow worker, the remaining 28 submits, 2 in flight per client. */
    const char *slow[] = {"--test-sleep-ms", "300", NULL};
    fh_start_worker(&farm, 0, NULL, NULL, slow);
    bp_run(&s, BP_PER_CLIENT, 2);
    printf("40 submits: %d replies, %d accepted, %d busy, %d other; memory max %llu of bound "
           "%llu over %d status polls\n",
           s.replies, s.accepted, s.busy, s.other, (unsigned long long)s.mem_max,
           (unsigned long long)s.bound, s.polls);
    FH_CHECK(s.replies == BP_CLIENTS * BP_PER_CLIENT, "%d replies to %d submits", s.replies,
             BP_CLIENTS * BP_PER_CLIENT);
    FH_CHECK(s.accepted + s.busy == s.replies && s.other == 0,
             "%d replies neither ACCEPTED nor BUSY", s.other);
    FH_CHECK(busy1 >= 6 && s.accepted >= 1, "no backpressure seen or nothing accepted");
    /* Every accepted job is computed (each client fetches its own); the broker stored exactly
     * those. */
    size_t done = 0;
    for (int i = 0; i < BP_CLIENTS; i++) {
        fh_oracle o;
        fh_oracle_run_in(s.c[i], &s.lc[i], &s.l, FH_STATE(DONE), 300000, &o);
        fh_oracle_assert(&o, "backpressure");
        done += o.by_state[KOSMOS__V1__JOB_STATE__JOB_STATE_DONE];
        fh_ledger_free(&s.lc[i]);
    }
    FH_CHECK(done == (size_t)s.accepted, "%zu of %d accepted jobs DONE", done, s.accepted);
    FH_CHECK(status_total(s.watch, 0) == s.accepted, "the broker stored %ld jobs, %d accepted",
             status_total(s.watch, 0), s.accepted);
    bp_watch(&s);
    fh_ledger_free(&s.l);
    for (int i = 0; i < BP_CLIENTS; i++)
        fh_client_destroy(&s.c[i]);
    fh_client_destroy(&s.watch);
    free((void *)s.img);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: test_faults BROKER WORKER MODEL_DIR SCENARIO\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    fh_init(&farm, argv[1], argv[2], argv[3]);
    const char *seed = getenv("FH_SEED");
    rng_state = seed ? (unsigned)strtoul(seed, NULL, 10) : (unsigned)fh_unix_ms();
    printf("%s in %s (FH_SEED=%u)\n", argv[4], farm.dir, rng_state);
    png = fh_make_png(32, 24, 7, &png_len);
    const char *s = argv[4];
    if (strcmp(s, "worker_kill") == 0)
        scenario_worker_kill();
    else if (strcmp(s, "broker_kill") == 0)
        scenario_broker_kill();
    else if (strcmp(s, "sigstop") == 0)
        scenario_sigstop();
    else if (strcmp(s, "poison") == 0)
        scenario_poison();
    else if (strcmp(s, "partition") == 0)
        scenario_partition();
    else if (strcmp(s, "reconnect") == 0)
        scenario_reconnect();
    else if (strcmp(s, "same_key") == 0)
        scenario_same_key();
    else if (strcmp(s, "curve") == 0)
        scenario_curve();
    else if (strcmp(s, "bad_input") == 0)
        scenario_bad_input();
    else if (strcmp(s, "backpressure") == 0)
        scenario_backpressure();
    else
        fh_die("unknown scenario %s", s);
    free(png);
    int rc = fh_finish(&farm);
    if (px_running) {
        atomic_store(&px.stop, true);
        pthread_join(px_thread, NULL);
    }
    zmq_ctx_term(farm.zctx);
    return rc;
}
