/* kb_internal: the broker's private state, shared by kb_broker.c (life cycle, poll cycle, job
 * transitions), kb_outbox.c (transaction, outbox, held client replies), kb_dispatch.c (timers,
 * dispatch), kb_clients.c (client requests) and kb_workers.c (worker messages). Not installed,
 * not for tests. */
#ifndef KB_INTERNAL_H
#define KB_INTERNAL_H

#include <stdatomic.h>

#include <zmq.h>

#include "kb_broker.h"
#include "kb_store.h"
#include "kb_syncer.h"
#include "kosmos.pb-c.h"
#include "wire.h"

#define KB_CLIENT_MAX 128
#define KB_IDENTITY_MAX 129 /* client_id <= 128 bytes, or a 40-character Z85 key */

/* A job leased to a worker. The worker extends it while it lists it (§8.4); only a started one
 * is capped by max_job_ms and charged a crash when it lapses (kb_lease_started). */
/* The batch_capacity a worker may announce: the leases it may hold (a continuous-batching
 * worker computes up to 1024 jobs and prefetches more). Counted in the memory bound. */
#define KB_MAX_CAPACITY 2048

typedef struct kb_lease {
    char job_id[KB_JOB_ID_MAX + 1];
    uint32_t attempt;
    uint64_t expires;  /* the compute cap: start + max_job_ms (dispatch + max_job_ms until a
                        * heartbeat reports the start) */
    uint64_t deadline; /* the job's deadline, 0 = none */
    bool seen;         /* listed by a heartbeat at least once */
    bool cancel_sent;
    bool started;   /* a heartbeat (or Ready) reported Lease.started */
    bool confirmed; /* the broker told the worker it knows (Heartbeat.running) */
} kb_lease;

typedef struct kb_worker {
    unsigned char rid[KP_MAX_ROUTING_ID];
    size_t rid_len;
    char *name;
    uint64_t instance;
    char *model_id, *model_hash;
    /* The same two strings interned in the broker's model table (kb_model_intern), so that the
     * dispatcher compares a worker's kind by pointer: with 1,000 workers of one model, comparing
     * the 64-character hash of each in every cycle took 11% of the broker's time. The worker's
     * own strings when the table is full; never freed through these. */
    const char *kind_id, *kind_hash;
    char *device_name, *device_vendor;
    uint64_t memory;
    uint32_t capacity, credit;
    uint64_t connected, last_seen, last_sent, jobs_done;
    bool reports_start; /* its leases carry Lease.started (v1.1); else all count as started */
    bool gone;          /* a send failed: forgotten at the next timer run */
    bool gone_dead;     /* ...because its connection is gone (EHOSTUNREACH): a crash, as death */
    kb_lease *leases;
    size_t n_leases, cap_leases;
} kb_worker;

typedef struct kb_waiter {
    unsigned char rid[KP_MAX_ROUTING_ID];
    size_t rid_len;
    uint64_t request_id;
    char job_id[KB_JOB_ID_MAX + 1];
    char client[KB_IDENTITY_MAX + 1];
    uint64_t until;
    bool wake;
} kb_waiter;

enum kb_post { KB_POST_NONE, KB_POST_WAIT, KB_POST_ADD_LEASE, KB_POST_DROP_LEASE };

/* A message waiting for the current transaction's commit, or an in-memory change that must
 * happen only once the commit succeeded. */
typedef struct kb_out {
    bool to_worker;
    unsigned char rid[KP_MAX_ROUTING_ID];
    size_t rid_len;
    zmq_msg_t body;
    bool has_body;
    zmq_msg_t image;
    bool has_image;
    uint64_t request_id; /* client replies: to substitute an error on rollback */
    bool is_submit;
    enum kb_post post;
    kb_waiter waiter;
    kb_lease lease;
    size_t bytes;
    uint64_t commit; /* a held client reply: sent once this commit is durable */
} kb_out;

typedef struct kb_orphan { /* RUNNING at start-up, waiting for its worker (§8.7) */
    char job_id[KB_JOB_ID_MAX + 1];
    uint32_t attempt;
} kb_orphan;

typedef struct kb_model {
    char *id, *hash;
} kb_model;

/* Admission (--max-queued, --max-client-jobs): non-terminal job counts, kept without a
 * query per submit. A count only grows between queries (accepted jobs are added, finished ones
 * are not subtracted), so it never understates; a submit it would refuse first recounts, at
 * most once per batch and key, so `busy` always rests on an exact count. */
#define KB_ADMIT_SLOTS 4096 /* clients cached (open addressing); emptied when half full */
typedef struct kb_admit_slot {
    char *client; /* NULL = free */
    uint64_t active;
    uint64_t counted_in; /* batch number of the last exact count */
} kb_admit_slot;

/* Workers that can run the same jobs (model id, hash, device memory). Once a pick found no
 * job for one of them, none of them can get one until a job becomes QUEUED again
 * (kb_store_queue_epoch), so dispatch skips them: a farm of 1,000 idle workers cost 1,000
 * queries per cycle. The strings are a worker's kind_id and kind_hash (interned, or its own
 * when the model table is full); the list is emptied whenever a worker is forgotten. */
#define KB_DISPATCH_CLASSES 16
typedef struct kb_dispatch_class {
    const char *model_id, *model_hash;
    uint64_t memory;
} kb_dispatch_class;

/* A peer refused for now (--max-workers): answered at most once per heartbeat interval, so a
 * worker that does not know CODE_RETRY_LATER (and registers again at once) cannot make the
 * broker answer at network speed. */
#define KB_REFUSED_SLOTS 16
typedef struct kb_refused {
    unsigned char rid[KP_MAX_ROUTING_ID];
    size_t rid_len;
    uint64_t until;
} kb_refused;

struct kb_broker {
    kb_params p;
    kb_refused refused[KB_REFUSED_SLOTS];
    char client_ep[256], worker_ep[256];
    void *zctx, *client_sock, *worker_sock;
    void *zap_sock;    /* CURVE: our ZAP handler (inproc://zeromq.zap.01) */
    void *curve_state; /* kb_auth */
    kb_store *store;
    kb_syncer *syncer;
    uint64_t commits_written; /* commits that wrote, numbered for kb_syncer_request */
    kb_out *held;             /* client replies waiting for durability, in sending order */
    size_t n_held, cap_held, held_bytes;
    uint64_t instance, started, rng;
    kp_limits limits;
    kb_worker **workers;
    size_t n_workers, cap_workers;
    kb_waiter *waiters;
    size_t n_waiters, cap_waiters;
    kb_out *out;
    size_t n_out, cap_out;
    char (*woken)[KB_JOB_ID_MAX + 1];
    size_t n_woken, cap_woken;
    kb_orphan *orphans;
    size_t n_orphans;
    uint64_t grace_until;
    bool need_sweep;
    kb_model *models;
    size_t n_models;
    uint64_t next_gc, next_timer_log;
    struct {
        uint64_t second, jobs, tokens;
    } tput[60];
    kb_stats stats;
    size_t mem_fixed;   /* workers, waiters, models, outbox */
    size_t mem_workers; /* the workers' share of it, summed when mem_workers_stale */
    bool mem_workers_stale;
    atomic_size_t mem_zmq; /* image buffers handed to ZeroMQ, not yet freed */
    size_t mem_batch;      /* received messages held in this cycle */
    kp_inbound **batch;    /* p.batch_max slots: this cycle's messages (kb_batch_read) */
    kb_admit_slot *admit;  /* KB_ADMIT_SLOTS, allocated on first use */
    size_t admit_used;
    uint64_t admit_total; /* all clients; valid when admit_total_known */
    bool admit_total_known;
    uint64_t admit_total_counted_in;
    uint64_t batch_number; /* client batches so far */
    bool in_txn;           /* the cycle's transaction is open (kb_txn_need) */
    kb_dispatch_class empty[KB_DISPATCH_CLASSES]; /* no queued job for these (dispatch) */
    size_t n_empty;
    uint64_t empty_epoch;
    bool fatal;
};

/* The syncer copies the WAL into the database every KB_WAL_CHECKPOINT_FRAMES, in the
 * background. Starting the WAL over takes a checkpoint with no commit after it, which a busy
 * loop never leaves the syncer: the loop checkpoints itself (the frames not copied yet, and two
 * syncs: a stall of a millisecond or so) once the WAL holds KB_WAL_RESTART_FRAMES (256 MiB),
 * and its next commit starts the WAL over. */
#define KB_WAL_CHECKPOINT_FRAMES 1000
#define KB_WAL_RESTART_FRAMES (64 * KB_WAL_CHECKPOINT_FRAMES)

/* kb_broker.c */
uint64_t kb_now(kb_broker *b);
uint64_t kb_random(kb_broker *b);
void kb_logf(kb_broker *b, ks_log_level level, const char *event, const char *fields, ...)
    __attribute__((format(printf, 4, 5)));
void kb_new_job_id(kb_broker *b, char out[27]);
void kb_mem_recount(kb_broker *b);
/* Reads what `sock` holds, up to p.batch_max messages and p.batch_max_bytes, into b->batch
 * (owned by the broker; kb_batch_release destroys them) and returns how many. */
size_t kb_batch_read(kb_broker *b, void *sock, kp_kind kind);
void kb_batch_release(kb_broker *b, size_t n);
/* A broker-made Result (EXPIRED, DEAD, CANCELLED) packed for storage. */
ks_status kb_make_result(const kb_job *job, int status, const char *message, void **blob,
                         size_t *len);
/* Ends a job in a terminal state (EXPIRED, DEAD) with a broker-made result; KS_OK when it was
 * terminal already. Inside a transaction. */
ks_status kb_finish_made(kb_broker *b, const kb_job *job, int state, int status,
                         const char *message);
/* Ends `attempt` of a RUNNING job without a result: a crash (counts toward DEAD, backoff) or
 * not (restart, orderly worker stop: straight back to QUEUED). Inside a transaction. */
ks_status kb_lapse(kb_broker *b, const char *job_id, uint32_t attempt, bool crash, const char *why);
ks_status kb_retry_or_fail(kb_broker *b, const kb_job *job, const void *result, size_t len,
                           const char *why);
uint64_t kb_backoff(kb_broker *b, uint32_t n);
void kb_throughput_add(kb_broker *b, uint64_t jobs, uint64_t tokens);

/* kb_outbox.c */
kb_out *kb_out_push(kb_broker *b, bool to_worker, const void *rid, size_t rid_len,
                    const ProtobufCMessage *msg);
/* Wakes the long polls on `job_id` once the transaction commits (its job became terminal). */
void kb_note_terminal(kb_broker *b, const char *job_id);
/* The cycle's transaction: every phase of kb_broker_step (client requests, worker messages,
 * timers, dispatch) works in one transaction, committed once at the end of the cycle, so a
 * cycle costs one WAL write and a job is accepted and dispatched by the same commit. The outbox
 * waits for that commit; its client replies then wait for the fdatasync (kb_send_client).
 * kb_txn_need opens it unless it is open (false: the store failed, the broker is stopping);
 * kb_txn_end commits (st KS_OK) or rolls back, then sends or discards the outbox (client
 * replies become errors, busy for submits when the disk is full). A phase that fails ends it
 * at once; the next phase opens a new one. */
bool kb_txn_need(kb_broker *b);
void kb_txn_end(kb_broker *b, ks_status st);
/* Sends a reply to a client once every commit so far is durable (at once when it is): no
 * client reads state that a power loss could take back. Takes `msg` packed. */
void kb_send_client(kb_broker *b, const void *rid, size_t rid_len, const ProtobufCMessage *msg,
                    uint64_t request_id, bool is_submit);
/* An error reply (through kb_send_client); `busy`: a submit answered busy (disk full) instead. */
void kb_send_client_error(kb_broker *b, const void *rid, size_t rid_len, uint64_t request_id,
                          int code, const char *message, bool busy);
/* Sends (committed) or discards (rolled back) the outbox; kb_txn_end calls it, and
 * kb_broker_destroy discards what is left. */
void kb_flush(kb_broker *b, bool committed);
/* Sends the held client replies whose commit is durable. When the syncer failed, the rest can
 * never be: requests become errors, and the broker stops (fail-stop). */
void kb_held_release(kb_broker *b);
/* Waits until every commit is durable or the syncer failed, then releases every held reply:
 * sent, or answered with an error. For stopping. */
void kb_held_drain(kb_broker *b);
/* After a store call failed: an I/O fault (not a full disk) stops the broker. True once it
 * is stopping. */
bool kb_store_fatal(kb_broker *b);

/* kb_dispatch.c: the cycle's last two phases, each in the cycle's transaction (opened if need
 * be; a failure rolls it back). */
/* Retry promotion, deadlines, dead workers and lapsed leases, restart grace, hourly GC. */
void kb_timers(kb_broker *b);
/* Leases queued jobs to workers with credit, round robin, into the outbox. */
void kb_dispatch(kb_broker *b);

/* kb_clients.c */
void kb_admit_free(kb_broker *b);
void kb_clients_batch(kb_broker *b);
ks_status kb_fetch_reply(kb_broker *b, const char *job_id, const char *client, uint64_t request_id,
                         const void *rid, size_t rid_len, bool *sent);
void kb_waiters_run(kb_broker *b);
void kb_status_fill_workers(kb_broker *b, Kosmos__V1__StatusReply *r);

/* kb_workers.c */
void kb_workers_batch(kb_broker *b);
kb_worker *kb_worker_by_name(kb_broker *b, const char *name);
kb_worker *kb_worker_by_rid(kb_broker *b, const void *rid, size_t len);
void kb_worker_forget(kb_broker *b, kb_worker *w, bool crash, const char *why);
/* Whether the lease counts as computing: reported started, or held by a worker that does not
 * report starts (an older one: then every lease counts as started at dispatch, as in v1.0). */
bool kb_lease_started(const kb_worker *w, const kb_lease *l);
bool kb_worker_drop_lease(kb_worker *w, const char *job_id, uint32_t attempt);
ks_status kb_worker_add_lease(kb_broker *b, kb_worker *w, const kb_lease *l);
/* True when a worker has offered a model matching a job's (id, hash) since the broker started;
 * either may be NULL (any), as in dispatch. */
bool kb_model_known(kb_broker *b, const char *id, const char *hash);
void kb_workers_timers(kb_broker *b, uint64_t now);
/* Sends to a worker now; a failed send (peer gone, queue full) marks it gone. */
void kb_send_worker(kb_broker *b, kb_worker *w, const ProtobufCMessage *msg);
void kb_send_worker_packed(kb_broker *b, kb_worker *w, zmq_msg_t *body, zmq_msg_t *image);

#endif
