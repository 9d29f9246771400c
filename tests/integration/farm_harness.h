/* farm_harness: what the integration tests share - real kosmos-broker and kosmos-worker
 * processes in a temporary folder (ipc:// endpoints, logs beside them), a C client on a DEALER
 * socket, small generated PNG images, and the ledger oracle of the fault tests:
 *
 *   lost        accepted by the broker (the client's ledger) and never terminal   must be 0
 *   unexpected  a terminal state other than the one expected, or a dispatch in a worker's
 *               log of a job that is not in the ledger                               must be 0
 *   duplicates  jobs dispatched more than once; allowed only as distinct attempts with the
 *               later ones > 1 (bad_duplicates counts the others)                   must be 0
 *
 * Not a library for production: it dies (FATAL, exit 1, processes killed, logs kept) on
 * anything that makes a test meaningless. Prefix fh_. */
#ifndef FARM_HARNESS_H
#define FARM_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kosmos.pb-c.h"
#include "wire.h"

#define FH_MAX_WORKERS 4

extern int fh_failures;

#define FH_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            fh_failures++;                                                                         \
        }                                                                                          \
    } while (0)

typedef struct fh_farm {
    const char *broker_bin, *worker_bin, *model_dir;
    char dir[256]; /* the temporary folder: endpoints, database, logs */
    char cep[300]; /* client endpoint */
    char wep[300]; /* worker endpoint */
    char db[300];
    pid_t broker_pid;
    pid_t worker_pid[FH_MAX_WORKERS];
    void *zctx;
} fh_farm;

/* The running farm fh_die cleans up after (one per process). */
extern fh_farm *fh_current;

void fh_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fh_sleep_ms(long ms);
uint64_t fh_now_ms(void);  /* monotonic */
uint64_t fh_unix_ms(void); /* CLOCK_REALTIME, the broker's clock */

/* Starts argv[0] with stdout+stderr appended to `log`, `env` (NULL-terminated "K=V", may be
 * NULL) added to the environment, no core dumps; returns its pid. */
pid_t fh_spawn(char *const argv[], const char *log, const char *const *env);
/* Waits at most timeout_ms for pid to exit; its exit code, or -1 (signal or timeout: then it is
 * killed). */
int fh_wait_exit(pid_t pid, uint64_t timeout_ms);
bool fh_alive(pid_t pid);
/* SIGKILL + reap. */
void fh_kill9(pid_t *pid);

/* Makes the temporary folder and the endpoints; creates the ZeroMQ context. */
void fh_init(fh_farm *f, const char *broker_bin, const char *worker_bin, const char *model_dir);
/* kosmos-broker on the farm's endpoints and database, with --heartbeat-ms 200,
 * --heartbeat-liveness 5, --image-root DIR, then `extra` (NULL-terminated, may be NULL). */
void fh_start_broker(fh_farm *f, const char *const *extra);
/* kosmos-worker i (name test/wI, --device ref, --max-batch 4, log DIR/workerI.log); `ep` NULL =
 * the farm's worker endpoint; `extra` then `test` (NULL-terminated, may be NULL) follow. `test`
 * holds kosmos-test-worker's --test-* options: the farm's worker_bin must then be that. */
void fh_start_worker(fh_farm *f, int i, const char *ep, const char *const *extra,
                     const char *const *test);
/* SIGTERM everything, check the exit codes (0), remove the folder when no check failed.
 * Returns the process exit code: 0 pass, 1 fail. */
int fh_finish(fh_farm *f);

/* ---- client ---- */

typedef struct fh_client {
    fh_farm *farm;
    void *sock;
    void *zctx; /* own context when made in a child process, else the farm's */
    char client_id[129];
    uint64_t next_rid;
    /* CURVE: Z85 keys (40 chars) or empty */
    char curve_public[41], curve_secret[41], curve_server[41];
} fh_client;

/* A DEALER on the client endpoint. `own_ctx`: a new ZeroMQ context (for forked children). */
fh_client *fh_client_new(fh_farm *f, const char *client_id, bool own_ctx);
void fh_client_set_curve(fh_client *c, const char *pub, const char *sec, const char *server);
/* Closes the socket and opens a new one (LINGER 0: what was queued is dropped). */
void fh_client_reopen(fh_client *c);
void fh_client_destroy(fh_client **c);
/* Sends req (+ image frame) and returns the reply with its request_id (caller destroys), or
 * NULL after timeout_ms. Sets request_id and client_id. */
kp_inbound *fh_call(fh_client *c, Kosmos__V1__ClientRequest *req, const void *image,
                    size_t image_len, int timeout_ms);
const Kosmos__V1__ClientReply *fh_reply(const kp_inbound *in);

typedef struct fh_job {
    const void *image; /* attached frame, or */
    size_t image_len;
    const char *uri;         /* image_uri */
    const char *prompt;      /* default "<grounding>An image of" */
    uint32_t max_new_tokens; /* 0 = 2 */
    uint32_t min_new_tokens; /* 0 = unset */
    uint64_t deadline_unix_ms;
    const char *key; /* idempotency key or NULL */
} fh_job;

/* Builds the submit request of `j` into *req (storage in *store, which must outlive req). */
typedef struct fh_submit_store {
    Kosmos__V1__SubmitRequest sub;
    Kosmos__V1__Job job;
    Kosmos__V1__GenerationParams gen;
    Kosmos__V1__Prompt prompt;
    Kosmos__V1__Prompt *pp[1];
} fh_submit_store;
void fh_submit_request(const fh_job *j, Kosmos__V1__ClientRequest *req, fh_submit_store *store);

/* Submits; returns the outcome case (KOSMOS__V1__SUBMIT_REPLY__OUTCOME_*), -1 without a reply,
 * -2 for an error reply. job_id (65 bytes) gets the accepted or conflicting id. */
int fh_submit(fh_client *c, const fh_job *j, char *job_id, bool *duplicate, int timeout_ms);
/* Long-polls until terminal or timeout (reopening the socket when a reply is lost); returns the
 * last FetchReply seen (caller destroys), NULL if none. */
kp_inbound *fh_fetch_final(fh_client *c, const char *job_id, uint64_t timeout_ms);
/* One fetch, wait_ms 0. NULL without a reply. */
kp_inbound *fh_fetch(fh_client *c, const char *job_id, int timeout_ms);
/* StatusReply (caller destroys) or NULL. */
kp_inbound *fh_status(fh_client *c, int timeout_ms);
int fh_worker_count(fh_client *c);
void fh_wait_workers(fh_client *c, int n, uint64_t timeout_ms);
/* Count of jobs in `state` now per the broker's status, or -1. */
long fh_state_count(const Kosmos__V1__StatusReply *s, int state);

/* A valid w x h RGB PNG (stored deflate), content varied by seed. Caller frees. */
uint8_t *fh_make_png(uint32_t w, uint32_t h, uint32_t seed, size_t *len);

/* ---- CURVE certificates ---- */

typedef struct fh_key {
    char pub[41], sec[41]; /* Z85 */
} fh_key;

/* A new key pair; its certificate in CZMQ's ZPL format (zcert_save): DIR/NAME.key (public) and,
 * when secret_dir is set, SECRET_DIR/NAME.key_secret. */
fh_key fh_cert(const char *dir, const char *secret_dir, const char *name);

/* ---- ledger + oracle ---- */

typedef struct fh_ledger {
    char (*ids)[65];
    size_t n, cap;
} fh_ledger;

void fh_ledger_add(fh_ledger *l, const char *id);
bool fh_ledger_has(const fh_ledger *l, const char *id);
void fh_ledger_free(fh_ledger *l);

typedef struct fh_oracle {
    size_t lost, unexpected, duplicates, bad_duplicates;
    size_t terminal;      /* ledger jobs seen terminal */
    size_t dispatches;    /* dispatch lines in the worker logs */
    uint32_t max_attempt; /* highest attempt of a stored result */
    size_t by_state[16];  /* ledger jobs per final JobState */
} fh_oracle;

/* Fetches every ledger job until terminal (at most timeout_ms in all) and reads every worker
 * log of the farm. expect_mask: the terminal states expected, as bits 1u << JOB_STATE (0: any).
 * Prints a summary line. */
void fh_oracle_run(fh_client *c, const fh_ledger *l, unsigned expect_mask, uint64_t timeout_ms,
                   fh_oracle *o);
/* As fh_oracle_run for the jobs of `l`, when the farm also ran the jobs of `all` (a superset
 * of l): a dispatch of a job outside `all` is unexpected, duplicates are counted over `l`. */
void fh_oracle_run_in(fh_client *c, const fh_ledger *l, const fh_ledger *all, unsigned expect_mask,
                      uint64_t timeout_ms, fh_oracle *o);
#define FH_STATE(s) (1u << KOSMOS__V1__JOB_STATE__JOB_STATE_##s)
/* FH_CHECKs lost == unexpected == bad_duplicates == 0. */
void fh_oracle_assert(const fh_oracle *o, const char *what);

/* Lines of a log file containing `needle` (0 if the file is missing). */
size_t fh_log_count(const char *path, const char *needle);

/* `"job":"ID"`, to find a job's lines in a log (one of two static buffers, so two may be used
 * in one call). */
const char *fh_job_field(const char *id);

#endif
