/* kb_syncer: see kb_syncer.h. An actor (proto/actor.h) with a SQLite connection of its own:
 * the loop sends it requests on the pipe, and it answers each sync and checkpoint with a
 * report of where it stands. Nothing else is shared: the loop knows what the reports told it. */
#include "kb_syncer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>
#include <zmq.h>

#include "actor.h"
#include "kb_metrics.h"

/* loop -> syncer: make commits up to `commit` durable (the empty stop message ends it). */
typedef struct kb_sync_request {
    uint64_t commit;
    uint32_t wal_frames;
} kb_sync_request;

/* syncer -> loop: where it stands, after each sync and checkpoint, and when it failed (its
 * last report). */
typedef struct kb_sync_report {
    uint64_t durable;
    bool failed;
    kb_syncer_stats stats;
    char why[256];
} kb_sync_report;

struct kb_syncer {
    kp_actor *actor;
    /* For the thread's start only (read before it is ready). */
    const char *db_path, *vfs;
    uint32_t checkpoint_frames;
    /* The loop's side: the last report read. */
    kb_sync_report last;
};

/* The thread's own state; never seen by the loop. */
typedef struct kb_sync_state {
    sqlite3 *db;
    void *pipe;
    uint32_t checkpoint_frames;
    kb_sync_report report;
} kb_sync_state;

static void kb_sync_send(kb_sync_state *t)
{
    /* The pipe has no high-water mark: this never waits for the loop. A failure means the loop
     * is gone, and then nobody needs the report. */
    while (zmq_send(t->pipe, &t->report, sizeof t->report, 0) < 0 && errno == EINTR) {
    }
}

/* The WAL handle of the syncer's own connection: an fdatasync through it covers the frames any
 * connection wrote (the kernel syncs the file, not the descriptor). */
static int kb_syncer_wal_sync(sqlite3 *db)
{
    sqlite3_file *wal = NULL;
    int rc = sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
    if (rc != SQLITE_OK)
        return rc;
    if (!wal || !wal->pMethods)
        return SQLITE_IOERR;
    return wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
}

static void kb_syncer_fail(kb_sync_state *t, const char *what, int rc)
{
    snprintf(t->report.why, sizeof t->report.why, "%s: %s (%d)", what, sqlite3_errstr(rc), rc);
    t->report.failed = true;
    kb_sync_send(t);
}

/* Opens the connection and makes durable what an earlier process committed but did not live to
 * sync (it died after COMMIT): that is served from now on, so it is synced before anything
 * else happens. */
static ks_status kb_syncer_open(kb_syncer *s, kb_sync_state *t)
{
    int rc = sqlite3_open_v2(s->db_path, &t->db, SQLITE_OPEN_READWRITE, s->vfs);
    sqlite3_stmt *q = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(t->db, "PRAGMA synchronous=FULL", NULL, NULL, NULL);
    /* One read opens this connection's handle on the WAL, which every sync goes through. */
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(t->db, "SELECT count(*) FROM schema_version", -1, &q, NULL);
    if (rc == SQLITE_OK && sqlite3_step(q) != SQLITE_ROW)
        rc = sqlite3_errcode(t->db);
    sqlite3_finalize(q);
    sqlite3_file *wal = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_file_control(t->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
    if (rc == SQLITE_OK && (!wal || !wal->pMethods))
        rc = SQLITE_CANTOPEN; /* not a WAL database */
    sqlite3_file *main_db = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_file_control(t->db, "main", SQLITE_FCNTL_FILE_POINTER, &main_db);
    if (rc == SQLITE_OK && main_db && main_db->pMethods)
        rc = main_db->pMethods->xSync(main_db, SQLITE_SYNC_NORMAL);
    if (rc == SQLITE_OK)
        rc = kb_syncer_wal_sync(t->db);
    if (rc != SQLITE_OK)
        return ks_fail(KS_ERR_IO, "the WAL sync connection to %s: %s", s->db_path,
                       t->db ? sqlite3_errmsg(t->db) : sqlite3_errstr(rc));
    return KS_OK;
}

static ks_status kb_syncer_main(void *pipe, void *arg)
{
    kb_syncer *s = arg;
    kb_sync_state t = {.pipe = pipe, .checkpoint_frames = s->checkpoint_frames};
    ks_status st = kb_syncer_open(s, &t);
    if (st == KS_OK)
        st = kp_actor_ready(pipe);
    if (st != KS_OK) {
        sqlite3_close_v2(t.db);
        return st;
    }
    uint64_t requested = 0;
    uint32_t frames = 0;
    bool stopping = false;
    /* The WAL's size at the last checkpoint. A checkpoint during which the loop committed
     * cannot restart the WAL, which then keeps its size: the next one waits until another
     * threshold's worth of frames came, instead of copying a handful after every sync. */
    uint32_t checkpointed_at = 0;
    for (;;) {
        /* Every request waiting is read before a sync: one fdatasync covers them all. */
        bool block = !stopping && requested == t.report.durable;
        for (;;) {
            kb_sync_request r;
            int n = zmq_recv(pipe, &r, sizeof r, block ? 0 : ZMQ_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                break;
            if (n < 0) {
                snprintf(t.report.why, sizeof t.report.why, "the syncer's pipe: %s",
                         zmq_strerror(errno));
                t.report.failed = true;
                kb_sync_send(&t);
                goto done;
            }
            if (n == 0) {
                stopping = true;
            } else if ((size_t)n == sizeof r && r.commit > requested) {
                requested = r.commit;
                frames = r.wal_frames;
            }
            block = false;
        }
        if (requested == t.report.durable) {
            if (stopping)
                break; /* everything asked for is durable */
            continue;
        }
        if (frames < checkpointed_at)
            checkpointed_at = 0; /* the WAL restarted */
        bool checkpoint = frames >= checkpointed_at + t.checkpoint_frames;

        uint64_t started = kb_mono_ns() / 1000;
        int rc = kb_syncer_wal_sync(t.db);
        uint64_t synced = kb_mono_ns() / 1000;
        if (rc != SQLITE_OK) {
            kb_syncer_fail(&t, "fdatasync of the WAL", rc);
            goto done;
        }
        t.report.durable = requested;
        kb_durations_add(&t.report.stats.syncs, synced - started);
        kb_sync_send(&t);

        if (checkpoint) {
            /* PASSIVE: never waits for the loop, which keeps appending meanwhile; the WAL
             * restarts from its beginning at the loop's first commit after a checkpoint that
             * copied every frame. A full disk leaves the WAL as it is, to be copied later. */
            rc = sqlite3_wal_checkpoint_v2(t.db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
            int primary = rc & 0xff;
            if (primary != SQLITE_OK && primary != SQLITE_BUSY && primary != SQLITE_LOCKED &&
                primary != SQLITE_FULL) {
                kb_syncer_fail(&t, "checkpoint of the WAL", rc);
                goto done;
            }
            checkpointed_at = frames;
            t.report.stats.checkpoints++;
            kb_sync_send(&t);
        }
    }
done:
    sqlite3_close_v2(t.db);
    return KS_OK;
}

ks_status kb_syncer_new(void *zctx, const char *db_path, const char *vfs,
                        uint32_t checkpoint_frames, kb_syncer **out)
{
    *out = NULL;
    kb_syncer *s = calloc(1, sizeof *s);
    if (!s)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    s->db_path = db_path;
    s->vfs = vfs;
    s->checkpoint_frames = checkpoint_frames ? checkpoint_frames : 1;
    ks_status st = kp_actor_new(zctx, "the WAL syncer", kb_syncer_main, s, &s->actor);
    s->db_path = s->vfs = NULL; /* the thread is done with them */
    if (st != KS_OK) {
        free(s);
        return st;
    }
    *out = s;
    return KS_OK;
}

/* Takes in one report; `n` is what zmq_recv returned. */
static void kb_syncer_apply(kb_syncer *s, const kb_sync_report *r, int n)
{
    if ((size_t)n == sizeof *r)
        s->last = *r;
}

void kb_syncer_destroy(kb_syncer **ps)
{
    if (!ps || !*ps)
        return;
    kp_actor_destroy(&(*ps)->actor);
    free(*ps);
    *ps = NULL;
}

void kb_syncer_request(kb_syncer *s, uint64_t commit, uint32_t wal_frames)
{
    kb_sync_request r = {.commit = commit, .wal_frames = wal_frames};
    /* No high-water mark: this waits for nothing. It fails only when the thread is gone,
     * after a failure that the next report already told. */
    while (zmq_send(kp_actor_pipe(s->actor), &r, sizeof r, ZMQ_DONTWAIT) < 0 && errno == EINTR) {
    }
}

uint64_t kb_syncer_durable(kb_syncer *s) { return s->last.durable; }

void kb_syncer_wait(kb_syncer *s, uint64_t commit)
{
    while (s->last.durable < commit && !s->last.failed) {
        kb_sync_report r;
        int n = zmq_recv(kp_actor_pipe(s->actor), &r, sizeof r, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return; /* the context is going away: nothing more will come */
        kb_syncer_apply(s, &r, n);
    }
}

void *kb_syncer_socket(kb_syncer *s) { return kp_actor_pipe(s->actor); }

void kb_syncer_drain(kb_syncer *s)
{
    for (;;) {
        kb_sync_report r;
        int n = zmq_recv(kp_actor_pipe(s->actor), &r, sizeof r, ZMQ_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return;
        kb_syncer_apply(s, &r, n);
    }
}

bool kb_syncer_failed(kb_syncer *s, const char **why)
{
    if (why)
        *why = s->last.failed ? s->last.why : NULL;
    return s->last.failed;
}

void kb_syncer_stats_get(kb_syncer *s, kb_syncer_stats *out) { *out = s->last.stats; }
