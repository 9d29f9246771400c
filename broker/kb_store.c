/* kb_store: see kb_store.h. Statements are prepared once and cached; every call runs inside
 * the caller's transaction. */
#include "kb_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <sqlite3.h>

#include "kosmos.pb-c.h"
#include "ks_sat.h"

/* Migrations: entry i brings the schema from version i to i+1. Append, never edit. */
static const char *const kb_migrations[] = {
    "CREATE TABLE jobs("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  id TEXT NOT NULL UNIQUE,"
    "  client TEXT NOT NULL,"
    "  idem_key TEXT,"
    "  fingerprint BLOB NOT NULL,"
    "  priority INTEGER NOT NULL DEFAULT 0,"
    "  deadline INTEGER NOT NULL DEFAULT 0,"
    "  model_id TEXT, model_hash TEXT,"
    "  min_mem INTEGER NOT NULL DEFAULT 0,"
    "  state INTEGER NOT NULL,"
    "  attempt INTEGER NOT NULL DEFAULT 0,"
    "  crash_count INTEGER NOT NULL DEFAULT 0,"
    "  retry_after INTEGER NOT NULL DEFAULT 0,"
    "  lease_expires INTEGER NOT NULL DEFAULT 0,"
    "  worker TEXT,"
    "  submitted INTEGER NOT NULL,"
    "  finished INTEGER NOT NULL DEFAULT 0,"
    "  n_prompts INTEGER NOT NULL DEFAULT 0,"
    "  result_attempt INTEGER NOT NULL DEFAULT 0,"
    "  label TEXT,"
    "  last_message TEXT,"
    "  job BLOB NOT NULL,"
    "  result BLOB,"
    "  UNIQUE(client, idem_key));"
    "CREATE INDEX jobs_queue ON jobs(state, priority DESC, seq);"
    "CREATE INDEX jobs_client ON jobs(client, state);"
    "CREATE INDEX jobs_finished ON jobs(finished) WHERE finished > 0;"
    "CREATE TABLE images(id TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE totals(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO totals VALUES('submitted',0),('done',0),('failed',0),('dead',0),"
    "  ('expired',0),('cancelled',0);",
    /* The timers look for passed deadlines often; without this they scanned the queue. */
    "CREATE INDEX jobs_deadline ON jobs(deadline) WHERE deadline > 0 AND state IN (1, 3);",
};
_Static_assert(sizeof kb_migrations / sizeof kb_migrations[0] == KB_SCHEMA_VERSION,
               "KB_SCHEMA_VERSION counts the migrations");

enum {
    Q_FIND_KEY,
    Q_INSERT,
    Q_INSERT_IMAGE,
    Q_GET,
    Q_LOAD_JOB,
    Q_LOAD_IMAGE,
    Q_LOAD_RESULT,
    Q_PICK,
    Q_LEASE,
    Q_SET_WORKER,
    Q_REQUEUE,
    Q_FINISH,
    Q_DELETE_IMAGE,
    Q_TOTAL_ADD,
    Q_ACK,
    Q_PROMOTE,
    Q_PAST_DEADLINE,
    Q_RUNNING,
    Q_GC_IMAGES,
    Q_GC,
    Q_COUNTS,
    Q_ACTIVE,
    Q_CLIENT_ACTIVE,
    Q_QUEUE_POS,
    Q_TOTALS,
    Q_BEGIN,
    Q_COMMIT,
    Q_NEXT_RETRY,
    Q_COUNT
};

#define KB_JOB_COLUMNS                                                                             \
    "seq, id, client, idem_key, fingerprint, priority, deadline, model_id, model_hash, min_mem, "  \
    "state, attempt, crash_count, retry_after, lease_expires, worker, submitted, finished, "       \
    "n_prompts, result_attempt, label"

static const char *const kb_sql[Q_COUNT] = {
    [Q_FIND_KEY] = "SELECT " KB_JOB_COLUMNS " FROM jobs WHERE client = ?1 AND idem_key = ?2",
    [Q_INSERT] = "INSERT INTO jobs(id, client, idem_key, fingerprint, priority, deadline, model_id,"
                 " model_hash, min_mem, state, submitted, n_prompts, label, job)"
                 " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?11, ?12, ?13)",
    [Q_INSERT_IMAGE] = "INSERT INTO images(id, data) VALUES(?1, ?2)",
    [Q_GET] = "SELECT " KB_JOB_COLUMNS " FROM jobs WHERE id = ?1",
    [Q_LOAD_JOB] = "SELECT job FROM jobs WHERE id = ?1",
    [Q_LOAD_IMAGE] = "SELECT data FROM images WHERE id = ?1",
    [Q_LOAD_RESULT] = "SELECT result FROM jobs WHERE id = ?1",
    [Q_PICK] = "SELECT " KB_JOB_COLUMNS " FROM jobs WHERE state = 1"
               " AND (model_id IS NULL OR model_id = ?1)"
               " AND (model_hash IS NULL OR model_hash = ?2) AND min_mem <= ?3"
               " ORDER BY priority DESC, seq LIMIT 1",
    [Q_LEASE] = "UPDATE jobs SET state = 2, attempt = ?4, worker = ?2,"
                " lease_expires = ?3, retry_after = 0 WHERE id = ?1 AND state = 1",
    [Q_SET_WORKER] = "UPDATE jobs SET worker = ?2 WHERE id = ?1 AND state = 2",
    [Q_REQUEUE] = "UPDATE jobs SET state = CASE WHEN ?2 > 0 THEN 3 ELSE 1 END, retry_after = ?2,"
                  " crash_count = crash_count + ?3, worker = NULL, lease_expires = 0,"
                  " last_message = ?4 WHERE id = ?1 AND state BETWEEN 1 AND 3",
    [Q_FINISH] = "UPDATE jobs SET state = ?2, result = ?3, result_attempt = ?4, finished = ?5,"
                 " worker = NULL, lease_expires = 0 WHERE id = ?1 AND state BETWEEN 1 AND 3",
    [Q_DELETE_IMAGE] = "DELETE FROM images WHERE id = ?1",
    [Q_TOTAL_ADD] = "UPDATE totals SET value = value + 1 WHERE name = ?1",
    [Q_ACK] = "UPDATE jobs SET state = 9, result = NULL WHERE id = ?1 AND state >= 4",
    [Q_PROMOTE] =
        "UPDATE jobs SET state = 1, retry_after = 0 WHERE state = 3 AND retry_after <= ?1",
    [Q_PAST_DEADLINE] = "SELECT " KB_JOB_COLUMNS " FROM jobs INDEXED BY jobs_deadline"
                        " WHERE state IN (1, 3) AND deadline > 0 AND deadline <= ?1"
                        " ORDER BY deadline LIMIT ?2",
    [Q_RUNNING] = "SELECT " KB_JOB_COLUMNS " FROM jobs WHERE state = 2",
    [Q_GC_IMAGES] = "DELETE FROM images WHERE id IN"
                    " (SELECT id FROM jobs WHERE finished > 0 AND finished < ?1)",
    [Q_GC] = "DELETE FROM jobs WHERE finished > 0 AND finished < ?1",
    [Q_COUNTS] = "SELECT state, count(*) FROM jobs GROUP BY state",
    [Q_ACTIVE] = "SELECT count(*) FROM jobs WHERE state BETWEEN 1 AND 3",
    [Q_CLIENT_ACTIVE] = "SELECT count(*) FROM jobs WHERE client = ?1 AND state BETWEEN 1 AND 3",
    [Q_QUEUE_POS] = "SELECT count(*) FROM jobs WHERE state = 1"
                    " AND (priority > ?1 OR (priority = ?1 AND seq < ?2))",
    [Q_TOTALS] = "SELECT name, value FROM totals",
    [Q_BEGIN] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_NEXT_RETRY] = "SELECT min(retry_after) FROM jobs WHERE state = 3",
};
/* Per job, every statement above runs once or more a cycle, so none may open a temporary
 * b-tree (EXPLAIN shows OpenEphemeral): an IN list, RETURNING, or an UPDATE of the indexed
 * column it searches by each allocate one per run (malloc, and the heap grown and trimmed). The
 * states 1 to 3 are QUEUED, RUNNING and RETRY_WAIT, hence BETWEEN instead of IN; the lease
 * writes the attempt it was given; promote runs only when a retry is due (promote_due). */

struct kb_store {
    sqlite3 *db;
    sqlite3_stmt *stmt[Q_COUNT];
    kb_fault fault;
    uint64_t queue_epoch;           /* kb_store_queue_epoch */
    uint64_t promote_due;           /* no RETRY_WAIT job is due before this; 0: unknown, ask */
    sqlite3_int64 changes_at_begin; /* kb_store_wrote */
    uint32_t wal_frames;            /* the WAL's size after the last commit (kb_store_wal_frames) */
    bool wal;                       /* journal_mode is WAL (not so for ":memory:") */
    int lock_fd;                    /* PATH.lock, flocked for the store's life; -1: none */
};

/* Replaces SQLite's automatic checkpoint (kb_syncer checkpoints instead) and notes the size. */
static int kb_store_wal_hook(void *ctx, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ((kb_store *)ctx)->wal_frames = frames > 0 ? (uint32_t)frames : 0;
    return SQLITE_OK;
}

bool kb_state_terminal(int state) { return state >= KOSMOS__V1__JOB_STATE__JOB_STATE_DONE; }

void kb_job_fini(kb_job *j)
{
    if (!j)
        return;
    free(j->client);
    free(j->idem_key);
    free(j->model_id);
    free(j->model_hash);
    free(j->worker);
    free(j->label);
    memset(j, 0, sizeof *j);
}

kb_fault kb_store_fault(const kb_store *s) { return s->fault; }

/* Records an SQLite failure: class and message. */
static ks_status kb_sqlfail(kb_store *s, int rc, const char *what)
{
    int primary = rc & 0xFF;
    if (primary == SQLITE_FULL)
        s->fault = KB_FAULT_FULL;
    else if (primary == SQLITE_IOERR || primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB)
        s->fault = KB_FAULT_IO;
    else
        s->fault = KB_FAULT_OTHER;
    return ks_fail(s->fault == KB_FAULT_FULL ? KS_ERR_LIMIT : KS_ERR_IO, "sqlite %s: %s (%d)", what,
                   sqlite3_errmsg(s->db), rc);
}

static ks_status kb_exec(kb_store *s, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &err);
    sqlite3_free(err);
    if (rc != SQLITE_OK) {
        char what[80]; /* the statement's start: a whole migration would hide the reason */
        snprintf(what, sizeof what, "%.60s%s", sql, strlen(sql) > 60 ? "..." : "");
        return kb_sqlfail(s, rc, what);
    }
    return KS_OK;
}

/* The cached statement `q`, reset and unbound. */
static sqlite3_stmt *kb_q(kb_store *s, int q)
{
    if (!s->stmt[q]) {
        int rc = sqlite3_prepare_v3(s->db, kb_sql[q], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[q],
                                    NULL);
        if (rc != SQLITE_OK) {
            kb_sqlfail(s, rc, "prepare");
            return NULL;
        }
    }
    sqlite3_reset(s->stmt[q]);
    sqlite3_clear_bindings(s->stmt[q]);
    return s->stmt[q];
}

static void kb_bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

static char *kb_col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? strdup((const char *)t) : NULL;
}

static void kb_read_job(sqlite3_stmt *st, kb_job *j)
{
    memset(j, 0, sizeof *j);
    j->seq = sqlite3_column_int64(st, 0);
    snprintf(j->id, sizeof j->id, "%s", (const char *)sqlite3_column_text(st, 1));
    j->client = kb_col_dup(st, 2);
    j->idem_key = kb_col_dup(st, 3);
    if (sqlite3_column_bytes(st, 4) == 32)
        memcpy(j->fingerprint, sqlite3_column_blob(st, 4), 32);
    j->priority = sqlite3_column_int(st, 5);
    j->deadline = (uint64_t)sqlite3_column_int64(st, 6);
    j->model_id = kb_col_dup(st, 7);
    j->model_hash = kb_col_dup(st, 8);
    j->min_mem = (uint64_t)sqlite3_column_int64(st, 9);
    j->state = sqlite3_column_int(st, 10);
    j->attempt = (uint32_t)sqlite3_column_int(st, 11);
    j->crash_count = (uint32_t)sqlite3_column_int(st, 12);
    j->retry_after = (uint64_t)sqlite3_column_int64(st, 13);
    j->lease_expires = (uint64_t)sqlite3_column_int64(st, 14);
    j->worker = kb_col_dup(st, 15);
    j->submitted = (uint64_t)sqlite3_column_int64(st, 16);
    j->finished = (uint64_t)sqlite3_column_int64(st, 17);
    j->n_prompts = (uint32_t)sqlite3_column_int(st, 18);
    j->result_attempt = (uint32_t)sqlite3_column_int(st, 19);
    j->label = kb_col_dup(st, 20);
}

/* Steps a statement that returns no rows (or whose rows are ignored). */
static ks_status kb_step_done(kb_store *s, sqlite3_stmt *st, const char *what)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    if (rc != SQLITE_DONE)
        return kb_sqlfail(s, rc, what);
    return KS_OK;
}

/* Steps a statement that returns at most one job row. */
static ks_status kb_step_job(kb_store *s, sqlite3_stmt *st, bool *found, kb_job *job,
                             const char *what)
{
    int rc = sqlite3_step(st);
    *found = false;
    if (rc == SQLITE_ROW) {
        kb_read_job(st, job);
        *found = true;
        rc = sqlite3_step(st);
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return kb_sqlfail(s, rc, what);
    sqlite3_reset(st);
    return KS_OK;
}

static ks_status kb_migrate(kb_store *s)
{
    ks_status st = KS_OK;
    sqlite3_stmt *q = NULL;
    int version = 0;
    if ((st = kb_exec(s, "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)")) !=
        KS_OK)
        goto cleanup;
    int rc = sqlite3_prepare_v2(s->db, "SELECT max(version) FROM schema_version", -1, &q, NULL);
    if (rc != SQLITE_OK || sqlite3_step(q) != SQLITE_ROW) {
        st = kb_sqlfail(s, rc == SQLITE_OK ? sqlite3_errcode(s->db) : rc, "schema_version");
        goto cleanup;
    }
    version = sqlite3_column_int(q, 0);
    sqlite3_finalize(q); /* an open read would lock the tables a migration drops */
    q = NULL;
    int known = (int)(sizeof kb_migrations / sizeof kb_migrations[0]);
    if (version > known) {
        st = ks_fail(KS_ERR_UNSUPPORTED,
                     "database schema version %d is newer than this broker (%d)", version, known);
        goto cleanup;
    }
    for (int v = version; v < known; v++) {
        char bump[96];
        snprintf(bump, sizeof bump, "INSERT INTO schema_version VALUES(%d)", v + 1);
        if ((st = kb_exec(s, "BEGIN IMMEDIATE")) != KS_OK)
            goto cleanup;
        if ((st = kb_exec(s, kb_migrations[v])) != KS_OK || (st = kb_exec(s, bump)) != KS_OK ||
            (st = kb_exec(s, "COMMIT")) != KS_OK) {
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            ks_error_prefix("migrating the schema to version %d", v + 1);
            goto cleanup;
        }
    }
cleanup:
    sqlite3_finalize(q);
    return st;
}

/* Takes PATH.lock for the store's life (see kb_store_open), writing our pid into it for the
 * message a second broker prints. */
static ks_status kb_store_lock(kb_store *s, const char *path)
{
    char lock[4200];
    if (snprintf(lock, sizeof lock, "%s.lock", path) >= (int)sizeof lock)
        return ks_fail(KS_ERR_INVALID, "database path too long: %.100s...", path);
    s->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (s->lock_fd < 0)
        return ks_fail(KS_ERR_IO, "cannot open the lock file %s: %s", lock, strerror(errno));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        char pid[32] = "";
        ssize_t n = pread(s->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        close(s->lock_fd);
        s->lock_fd = -1;
        if (err == EWOULDBLOCK)
            return ks_fail(KS_ERR_BUSY,
                           "another kosmos-broker (pid %s) holds the database %s "
                           "(lock file %s): one broker per database",
                           pid[0] ? pid : "?", path, lock);
        return ks_fail(KS_ERR_IO, "cannot lock %s: %s", lock, strerror(err));
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(s->lock_fd, 0) != 0 || pwrite(s->lock_fd, pid, (size_t)len, 0) != len) {
        /* The pid is only for the message; the lock is what counts. */
    }
    return KS_OK;
}

ks_status kb_store_open(const char *path, const char *vfs, kb_store **out)
{
    ks_status st = KS_OK;
    kb_store *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    s->lock_fd = -1;
    if (strcmp(path, ":memory:") != 0 && (st = kb_store_lock(s, path)) != KS_OK) {
        free(s);
        return st;
    }
    int rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs);
    if (rc != SQLITE_OK) {
        st = s->db ? kb_sqlfail(s, rc, "open") : ks_fail(KS_ERR_NOMEM, "sqlite open");
        goto cleanup;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, 5000);
    /* The pragma answers the mode it got: WAL for any file, not for ":memory:". */
    sqlite3_stmt *mode = NULL;
    rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode=WAL", -1, &mode, NULL);
    if (rc == SQLITE_OK && sqlite3_step(mode) == SQLITE_ROW && sqlite3_column_text(mode, 0))
        s->wal = strcmp((const char *)sqlite3_column_text(mode, 0), "wal") == 0;
    else if (rc == SQLITE_OK)
        rc = sqlite3_errcode(s->db);
    sqlite3_finalize(mode);
    if (rc != SQLITE_OK) {
        st = kb_sqlfail(s, rc, "PRAGMA journal_mode=WAL");
        goto cleanup;
    }
    /* NORMAL: a commit writes the WAL without waiting for the disk; kb_syncer fdatasyncs it
     * and the broker holds client replies until then (kb_syncer.h). Without a WAL no syncer
     * runs, and each commit syncs by itself. */
    if ((st = kb_exec(s, s->wal ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL")) !=
            KS_OK ||
        /* 64 MiB of page cache: the job indexes of a busy queue stay in memory (SQLite's
         * default, 2 MiB, made every submit read pages back); docs/broker.md "Memory bound". */
        (st = kb_exec(s, "PRAGMA cache_size=-65536")) != KS_OK ||
        (st = kb_exec(s, "PRAGMA foreign_keys=ON")) != KS_OK || (st = kb_migrate(s)) != KS_OK)
        goto cleanup;
    sqlite3_wal_hook(s->db, kb_store_wal_hook, s);
    *out = s;
    s = NULL;
cleanup:
    if (s && st != KS_OK)
        ks_error_prefix("opening the database %s", path);
    kb_store_destroy(&s);
    return st;
}

void kb_store_destroy(kb_store **ps)
{
    if (!ps || !*ps)
        return;
    kb_store *s = *ps;
    for (int i = 0; i < Q_COUNT; i++)
        sqlite3_finalize(s->stmt[i]);
    sqlite3_close_v2(s->db);
    if (s->lock_fd >= 0)
        close(s->lock_fd); /* releases the flock */
    free(s);
    *ps = NULL;
}

ks_status kb_store_begin(kb_store *s)
{
    s->fault = KB_FAULT_NONE;
    s->changes_at_begin = sqlite3_total_changes64(s->db);
    sqlite3_stmt *st = kb_q(s, Q_BEGIN);
    return st ? kb_step_done(s, st, "BEGIN IMMEDIATE") : KS_ERR_IO;
}

bool kb_store_wrote(const kb_store *s)
{
    return sqlite3_total_changes64(s->db) != s->changes_at_begin;
}

ks_status kb_store_commit(kb_store *s)
{
    sqlite3_stmt *st = kb_q(s, Q_COMMIT);
    return st ? kb_step_done(s, st, "COMMIT") : KS_ERR_IO;
}

uint64_t kb_store_queue_epoch(const kb_store *s) { return s->queue_epoch; }

uint32_t kb_store_wal_frames(const kb_store *s) { return s->wal_frames; }

bool kb_store_is_wal(const kb_store *s) { return s->wal; }

ks_status kb_store_checkpoint(kb_store *s)
{
    int rc = sqlite3_wal_checkpoint_v2(s->db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED)
        return KS_OK;
    return rc == SQLITE_OK ? KS_OK : kb_sqlfail(s, rc, "checkpoint");
}

void kb_store_rollback(kb_store *s)
{
    s->queue_epoch++;   /* leases undone: their jobs are queued again */
    s->promote_due = 0; /* a promotion may be undone too */
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

ks_status kb_store_find_key(kb_store *s, const char *client, const char *key, bool *found,
                            kb_job *job)
{
    sqlite3_stmt *st = kb_q(s, Q_FIND_KEY);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, client);
    kb_bind_text(st, 2, key);
    return kb_step_job(s, st, found, job, "find key");
}

ks_status kb_store_insert(kb_store *s, const kb_job *j, const void *job_blob, size_t job_len,
                          const void *image, size_t image_len)
{
    s->queue_epoch++;
    ks_status rc;
    sqlite3_stmt *st = kb_q(s, Q_INSERT);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, j->id);
    kb_bind_text(st, 2, j->client);
    kb_bind_text(st, 3, j->idem_key);
    sqlite3_bind_blob(st, 4, j->fingerprint, 32, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, j->priority);
    /* Saturated: a deadline past INT64_MAX ("never") stays the latest time, not a negative one. */
    sqlite3_bind_int64(st, 6, ks_sat_i64(j->deadline));
    kb_bind_text(st, 7, j->model_id);
    kb_bind_text(st, 8, j->model_hash);
    sqlite3_bind_int64(st, 9, (sqlite3_int64)j->min_mem);
    sqlite3_bind_int64(st, 10, (sqlite3_int64)j->submitted);
    sqlite3_bind_int(st, 11, (int)j->n_prompts);
    kb_bind_text(st, 12, j->label);
    sqlite3_bind_blob64(st, 13, job_blob ? job_blob : "", job_len, SQLITE_STATIC);
    if ((rc = kb_step_done(s, st, "insert job")) != KS_OK)
        return rc;
    if ((st = kb_q(s, Q_TOTAL_ADD)) == NULL)
        return KS_ERR_IO;
    kb_bind_text(st, 1, "submitted");
    if ((rc = kb_step_done(s, st, "count submit")) != KS_OK)
        return rc;
    if (!image)
        return KS_OK;
    if ((st = kb_q(s, Q_INSERT_IMAGE)) == NULL)
        return KS_ERR_IO;
    kb_bind_text(st, 1, j->id);
    sqlite3_bind_blob64(st, 2, image, image_len, SQLITE_STATIC);
    return kb_step_done(s, st, "insert image");
}

ks_status kb_store_get(kb_store *s, const char *id, bool *found, kb_job *job)
{
    sqlite3_stmt *st = kb_q(s, Q_GET);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, id);
    return kb_step_job(s, st, found, job, "get job");
}

/* Copies column 0 of a one-row blob query into a malloc'd buffer (NULL when no row/NULL). */
static ks_status kb_blob_query(kb_store *s, int q, const char *id, void **out, size_t *len)
{
    sqlite3_stmt *st = kb_q(s, q);
    *out = NULL;
    *len = 0;
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        void *buf = malloc(n ? n : 1);
        if (!buf) {
            sqlite3_reset(st);
            return ks_fail(KS_ERR_NOMEM, "out of memory loading %zu bytes", n);
        }
        if (n)
            memcpy(buf, sqlite3_column_blob(st, 0), n);
        *out = buf;
        *len = n;
    } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        return kb_sqlfail(s, rc, "load blob");
    }
    sqlite3_reset(st);
    return KS_OK;
}

ks_status kb_store_load_job(kb_store *s, const char *id, void **blob, size_t *blob_len,
                            void **image, size_t *image_len)
{
    ks_status st = kb_blob_query(s, Q_LOAD_JOB, id, blob, blob_len);
    if (st != KS_OK || !image)
        return st;
    st = kb_blob_query(s, Q_LOAD_IMAGE, id, image, image_len);
    if (st != KS_OK) {
        free(*blob);
        *blob = NULL;
    }
    return st;
}

ks_status kb_store_load_result(kb_store *s, const char *id, void **blob, size_t *len)
{
    return kb_blob_query(s, Q_LOAD_RESULT, id, blob, len);
}

ks_status kb_store_pick(kb_store *s, const char *model_id, const char *model_hash, uint64_t memory,
                        bool *found, kb_job *job)
{
    sqlite3_stmt *st = kb_q(s, Q_PICK);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, model_id ? model_id : "");
    kb_bind_text(st, 2, model_hash ? model_hash : "");
    sqlite3_bind_int64(st, 3, (sqlite3_int64)(memory > INT64_MAX ? INT64_MAX : memory));
    return kb_step_job(s, st, found, job, "pick");
}

ks_status kb_store_lease(kb_store *s, const kb_job *job, const char *worker, uint64_t lease_expires,
                         uint32_t *attempt)
{
    sqlite3_stmt *st = kb_q(s, Q_LEASE);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, job->id);
    kb_bind_text(st, 2, worker);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)lease_expires);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)job->attempt + 1);
    ks_status rc = kb_step_done(s, st, "lease");
    if (rc != KS_OK)
        return rc;
    if (sqlite3_changes(s->db) != 1)
        return ks_fail(KS_ERR_INVALID, "job %s is not queued", job->id);
    *attempt = job->attempt + 1;
    return KS_OK;
}

ks_status kb_store_set_worker(kb_store *s, const char *id, const char *worker)
{
    sqlite3_stmt *st = kb_q(s, Q_SET_WORKER);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, id);
    kb_bind_text(st, 2, worker);
    return kb_step_done(s, st, "set worker");
}

ks_status kb_store_requeue(kb_store *s, const char *id, uint64_t retry_after, bool crash,
                           const char *message)
{
    sqlite3_stmt *st = kb_q(s, Q_REQUEUE);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, id);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)retry_after);
    sqlite3_bind_int(st, 3, crash ? 1 : 0);
    kb_bind_text(st, 4, message);
    s->queue_epoch++;
    if (retry_after && retry_after < s->promote_due)
        s->promote_due = retry_after;
    return kb_step_done(s, st, "requeue");
}

ks_status kb_store_finish(kb_store *s, const char *id, int state, const void *result,
                          size_t result_len, uint32_t result_attempt, uint64_t now)
{
    static const char *const names[] = {
        [4] = "done", [5] = "failed", [6] = "expired", [7] = "dead", [8] = "cancelled"};
    ks_status rc;
    sqlite3_stmt *st = kb_q(s, Q_FINISH);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, id);
    sqlite3_bind_int(st, 2, state);
    if (result)
        sqlite3_bind_blob64(st, 3, result, result_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int(st, 4, (int)result_attempt);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)now);
    if ((rc = kb_step_done(s, st, "finish")) != KS_OK)
        return rc;
    if (sqlite3_changes(s->db) == 0)
        return ks_fail(KS_ERR_INVALID, "job %s is already terminal", id);
    if ((st = kb_q(s, Q_DELETE_IMAGE)) == NULL)
        return KS_ERR_IO;
    kb_bind_text(st, 1, id);
    if ((rc = kb_step_done(s, st, "delete image")) != KS_OK)
        return rc;
    if (state < 4 || state > 8)
        return KS_OK;
    if ((st = kb_q(s, Q_TOTAL_ADD)) == NULL)
        return KS_ERR_IO;
    kb_bind_text(st, 1, names[state]);
    return kb_step_done(s, st, "count");
}

ks_status kb_store_ack(kb_store *s, const char *id)
{
    sqlite3_stmt *st = kb_q(s, Q_ACK);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, id);
    return kb_step_done(s, st, "ack");
}

ks_status kb_store_promote(kb_store *s, uint64_t now, int *n)
{
    *n = 0;
    if (s->promote_due && now < s->promote_due)
        return KS_OK;
    sqlite3_stmt *st = kb_q(s, Q_PROMOTE);
    if (!st)
        return KS_ERR_IO;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)now);
    ks_status rc = kb_step_done(s, st, "promote");
    if (rc != KS_OK)
        return rc;
    *n = sqlite3_changes(s->db);
    if (*n)
        s->queue_epoch++;
    if (!(st = kb_q(s, Q_NEXT_RETRY)))
        return KS_ERR_IO;
    int r = sqlite3_step(st);
    if (r != SQLITE_ROW)
        return kb_sqlfail(s, r, "next retry");
    s->promote_due = sqlite3_column_type(st, 0) == SQLITE_NULL
                         ? UINT64_MAX
                         : (uint64_t)sqlite3_column_int64(st, 0);
    return kb_step_done(s, st, "next retry");
}

/* Runs a job-row query into a growing array. */
static ks_status kb_collect(kb_store *s, sqlite3_stmt *st, kb_job **jobs, size_t *n)
{
    ks_status rc = KS_OK;
    size_t cap = 0;
    int r;
    *jobs = NULL;
    *n = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            kb_job *grown = realloc(*jobs, ncap * sizeof *grown);
            if (!grown) {
                rc = ks_fail(KS_ERR_NOMEM, "out of memory");
                goto cleanup;
            }
            *jobs = grown;
            cap = ncap;
        }
        kb_read_job(st, &(*jobs)[(*n)++]);
    }
    if (r != SQLITE_DONE)
        rc = kb_sqlfail(s, r, "select jobs");
cleanup:
    sqlite3_reset(st);
    if (rc != KS_OK) {
        for (size_t i = 0; i < *n; i++)
            kb_job_fini(&(*jobs)[i]);
        free(*jobs);
        *jobs = NULL;
        *n = 0;
    }
    return rc;
}

ks_status kb_store_past_deadline(kb_store *s, uint64_t now, size_t max, kb_job **jobs, size_t *n)
{
    sqlite3_stmt *st = kb_q(s, Q_PAST_DEADLINE);
    if (!st)
        return KS_ERR_IO;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)now);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
    return kb_collect(s, st, jobs, n);
}

ks_status kb_store_running(kb_store *s, kb_job **jobs, size_t *n)
{
    sqlite3_stmt *st = kb_q(s, Q_RUNNING);
    if (!st)
        return KS_ERR_IO;
    return kb_collect(s, st, jobs, n);
}

ks_status kb_store_gc(kb_store *s, uint64_t before, int *n)
{
    ks_status rc;
    sqlite3_stmt *st = kb_q(s, Q_GC_IMAGES);
    *n = 0;
    if (!st)
        return KS_ERR_IO;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)before);
    if ((rc = kb_step_done(s, st, "gc images")) != KS_OK)
        return rc;
    if ((st = kb_q(s, Q_GC)) == NULL)
        return KS_ERR_IO;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)before);
    rc = kb_step_done(s, st, "gc");
    *n = rc == KS_OK ? sqlite3_changes(s->db) : 0;
    return rc;
}

ks_status kb_store_counts(kb_store *s, uint64_t counts[10])
{
    sqlite3_stmt *st = kb_q(s, Q_COUNTS);
    int r;
    memset(counts, 0, 10 * sizeof counts[0]);
    if (!st)
        return KS_ERR_IO;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        int state = sqlite3_column_int(st, 0);
        if (state >= 0 && state < 10)
            counts[state] = (uint64_t)sqlite3_column_int64(st, 1);
    }
    if (r != SQLITE_DONE)
        return kb_sqlfail(s, r, "counts");
    return KS_OK;
}

static ks_status kb_count_query(kb_store *s, sqlite3_stmt *st, uint64_t *n, const char *what)
{
    int r = sqlite3_step(st);
    if (r != SQLITE_ROW)
        return kb_sqlfail(s, r, what);
    *n = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return KS_OK;
}

ks_status kb_store_active(kb_store *s, uint64_t *n)
{
    sqlite3_stmt *st = kb_q(s, Q_ACTIVE);
    if (!st)
        return KS_ERR_IO;
    return kb_count_query(s, st, n, "active");
}

ks_status kb_store_client_active(kb_store *s, const char *client, uint64_t *n)
{
    sqlite3_stmt *st = kb_q(s, Q_CLIENT_ACTIVE);
    if (!st)
        return KS_ERR_IO;
    kb_bind_text(st, 1, client);
    return kb_count_query(s, st, n, "client active");
}

ks_status kb_store_queue_position(kb_store *s, const kb_job *job, uint64_t *n)
{
    sqlite3_stmt *st = kb_q(s, Q_QUEUE_POS);
    if (!st)
        return KS_ERR_IO;
    sqlite3_bind_int(st, 1, job->priority);
    sqlite3_bind_int64(st, 2, job->seq);
    return kb_count_query(s, st, n, "queue position");
}

ks_status kb_store_totals(kb_store *s, uint64_t totals[6])
{
    static const char *const names[6] = {"submitted", "done",    "failed",
                                         "dead",      "expired", "cancelled"};
    sqlite3_stmt *st = kb_q(s, Q_TOTALS);
    int r;
    memset(totals, 0, 6 * sizeof totals[0]);
    if (!st)
        return KS_ERR_IO;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        for (int i = 0; i < 6; i++)
            if (name && strcmp(name, names[i]) == 0)
                totals[i] = (uint64_t)sqlite3_column_int64(st, 1);
    }
    if (r != SQLITE_DONE)
        return kb_sqlfail(s, r, "totals");
    return KS_OK;
}
