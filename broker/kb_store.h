/* kb_store: the broker's durable state in SQLite (WAL; a commit reaches the kernel, kb_syncer
 * makes it durable, and the broker holds client replies until then): jobs, their images,
 * results and lifetime totals, with a versioned schema. What it is not: policy. The broker core
 * decides transitions; the store runs them inside the transaction the core opened, so that a
 * batch of submits is one commit (group commit) and no reply leaves before that commit.
 *
 * Failures are classified (kb_store_fault): KB_FAULT_FULL (disk full: the caller rolls back and
 * answers busy, the broker keeps running), KB_FAULT_IO (an fsync or I/O error: the caller stops,
 * docs/broker.md "fail-stop"), KB_FAULT_OTHER (anything else). */
#ifndef KB_STORE_H
#define KB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"

#define KB_JOB_ID_MAX 64
#define KB_SCHEMA_VERSION 2 /* = the number of migrations in kb_store.c */

typedef enum kb_fault { KB_FAULT_NONE = 0, KB_FAULT_FULL, KB_FAULT_IO, KB_FAULT_OTHER } kb_fault;

typedef struct kb_store kb_store;

/* One job row without its blobs. Strings are owned by the struct (kb_job_fini frees them). */
typedef struct kb_job {
    int64_t seq; /* FIFO order within a priority */
    char id[KB_JOB_ID_MAX + 1];
    char *client;
    char *idem_key; /* NULL: no deduplication */
    uint8_t fingerprint[32];
    int32_t priority;
    uint64_t deadline;           /* unix ms, 0 = none */
    char *model_id, *model_hash; /* NULL = any */
    uint64_t min_mem;
    int state;        /* Kosmos__V1__JobState */
    uint32_t attempt; /* attempts started */
    uint32_t crash_count;
    uint64_t retry_after;   /* with RETRY_WAIT */
    uint64_t lease_expires; /* with RUNNING */
    char *worker;           /* with RUNNING: worker name */
    uint64_t submitted, finished;
    uint32_t n_prompts;
    uint32_t result_attempt; /* attempt whose result is stored (0 none) */
    char *label;
} kb_job;

void kb_job_fini(kb_job *j);

/* Opens (creating if needed) the database at `path` with the SQLite VFS `vfs` (NULL = the
 * default; tests pass a fault-injecting one), sets WAL and synchronous=NORMAL (kb_syncer makes
 * the commits durable), and migrates the schema. Caller owns *out.
 * One broker per database: the store holds an exclusive flock on `path`.lock (beside it,
 * holding the owner's pid) until kb_store_destroy, and fails with KS_ERR_BUSY at once when
 * another process holds it (SQLite's own locks let two WAL writers take turns, which would
 * have two brokers lease the same jobs). ":memory:" has no lock. */
ks_status kb_store_open(const char *path, const char *vfs, kb_store **out);
void kb_store_destroy(kb_store **s);

/* The class of the last failure of this store (reset by kb_store_begin). */
kb_fault kb_store_fault(const kb_store *s);

/* Changes whenever a job may have become QUEUED (insert, requeue, promote, rollback): a
 * dispatcher that found no job for some workers need not ask again until it changes. */
uint64_t kb_store_queue_epoch(const kb_store *s);

ks_status kb_store_begin(kb_store *s);
ks_status kb_store_commit(kb_store *s);
/* The WAL's size in frames after the last commit. SQLite's automatic checkpoints are off: the
 * syncer checkpoints (kb_syncer.h), and kb_store_checkpoint (passive) is the loop's own, after
 * which its next commit starts the WAL over (kb_internal.h, KB_WAL_RESTART_FRAMES). */
uint32_t kb_store_wal_frames(const kb_store *s);
/* Whether the database is in WAL mode: any file is; ":memory:" (tests, fuzzing) is not, and
 * has nothing to sync. */
bool kb_store_is_wal(const kb_store *s);
ks_status kb_store_checkpoint(kb_store *s);
/* Whether the open transaction changed a row (one that did not commits without a write). */
bool kb_store_wrote(const kb_store *s);
void kb_store_rollback(kb_store *s);

/* Looks up (client, key): *found false when absent; else *job filled (caller finis it). */
ks_status kb_store_find_key(kb_store *s, const char *client, const char *key, bool *found,
                            kb_job *job);
/* Inserts a QUEUED job with its packed Job blob (image removed) and image bytes (may be NULL). */
ks_status kb_store_insert(kb_store *s, const kb_job *job, const void *job_blob, size_t job_len,
                          const void *image, size_t image_len);
/* Reads a job by id: *found false when absent. */
ks_status kb_store_get(kb_store *s, const char *id, bool *found, kb_job *job);
/* Reads the packed Job (and image when `image` is not NULL; *image NULL when none). The caller
 * frees the buffers with free(). */
ks_status kb_store_load_job(kb_store *s, const char *id, void **blob, size_t *blob_len,
                            void **image, size_t *image_len);
/* The stored packed Result, *blob NULL when none (caller frees). */
ks_status kb_store_load_result(kb_store *s, const char *id, void **blob, size_t *len);

/* Highest-priority, oldest QUEUED job a worker with this model and memory can run. */
ks_status kb_store_pick(kb_store *s, const char *model_id, const char *model_hash, uint64_t memory,
                        bool *found, kb_job *job);
/* QUEUED -> RUNNING with job->attempt + 1, worker and lease expiry; *attempt gets the new
 * attempt. `job` must come from kb_store_pick in the same transaction (its attempt is current). */
ks_status kb_store_lease(kb_store *s, const kb_job *job, const char *worker, uint64_t lease_expires,
                         uint32_t *attempt);
/* RUNNING: records a re-adopting worker's name. */
ks_status kb_store_set_worker(kb_store *s, const char *id, const char *worker);
/* Any non-terminal state -> RETRY_WAIT (retry_after) or QUEUED (retry_after 0); crash adds to
 * crash_count. */
ks_status kb_store_requeue(kb_store *s, const char *id, uint64_t retry_after, bool crash,
                           const char *message);
/* -> terminal `state` with the packed Result (may be NULL), finished time, image deleted,
 * lifetime totals counted. */
ks_status kb_store_finish(kb_store *s, const char *id, int state, const void *result,
                          size_t result_len, uint32_t result_attempt, uint64_t now);
/* Terminal -> ACKED, result deleted. */
ks_status kb_store_ack(kb_store *s, const char *id);

/* RETRY_WAIT jobs whose retry_after <= now -> QUEUED; *n how many. */
ks_status kb_store_promote(kb_store *s, uint64_t now, int *n);
/* Up to `max` ids of QUEUED/RETRY_WAIT jobs whose deadline <= now (caller frees *ids). */
ks_status kb_store_past_deadline(kb_store *s, uint64_t now, size_t max, kb_job **jobs, size_t *n);
/* All RUNNING jobs (restart recovery); caller finis each and frees the array. */
ks_status kb_store_running(kb_store *s, kb_job **jobs, size_t *n);
/* Deletes terminal jobs finished before `before`; *n how many. */
ks_status kb_store_gc(kb_store *s, uint64_t before, int *n);

/* Jobs per state (counts[state], states 0..9); reads every row. */
ks_status kb_store_counts(kb_store *s, uint64_t counts[10]);
/* Non-terminal jobs (queued, running, retry-wait): an index range, O(their number). */
ks_status kb_store_active(kb_store *s, uint64_t *n);
/* Non-terminal jobs of one client: an index range, O(their number). */
ks_status kb_store_client_active(kb_store *s, const char *client, uint64_t *n);
/* QUEUED jobs ahead of `job`. */
ks_status kb_store_queue_position(kb_store *s, const kb_job *job, uint64_t *n);
/* Lifetime totals: submitted, done, failed, dead, expired, cancelled. */
ks_status kb_store_totals(kb_store *s, uint64_t totals[6]);

/* A job state the broker treats as terminal (DONE..ACKED). */
bool kb_state_terminal(int state);

#endif
