/* kb_syncer: see kb_syncer.h. One thread, one SQLite connection of its own, a mutex and two
 * condition variables for requests and progress, and a pipe that wakes the loop's zmq_poll. */
#include "kb_syncer.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "kb_metrics.h"

struct kb_syncer {
    sqlite3 *db; /* used by the thread only, once it started */
    uint32_t checkpoint_frames;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t requested_cv; /* the loop asked for more, or stop */
    pthread_cond_t progress_cv;  /* durable advanced, or failed */
    uint64_t requested;          /* under mu */
    uint32_t wal_frames;         /* under mu: the WAL's size the loop last reported */
    bool stop;                   /* under mu */
    kb_syncer_stats stats;       /* under mu */
    atomic_uint_fast64_t durable;
    atomic_bool failed;
    char why[256]; /* written before `failed` is set, read only after */
    int wake[2];   /* pipe: [0] polled by the loop, [1] written by the thread */
};

static void kb_syncer_wake(kb_syncer *s)
{
    char one = 1;
    /* A full pipe already wakes the loop; the byte is only a doorbell. */
    while (write(s->wake[1], &one, 1) < 0 && errno == EINTR) {
    }
}

/* The WAL handle of the syncer's own connection: an fdatasync through it covers the frames any
 * connection wrote (the kernel syncs the file, not the descriptor). */
static int kb_syncer_wal_sync(kb_syncer *s)
{
    sqlite3_file *wal = NULL;
    int rc = sqlite3_file_control(s->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
    if (rc != SQLITE_OK)
        return rc;
    if (!wal || !wal->pMethods)
        return SQLITE_IOERR;
    return wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
}

static void kb_syncer_fail(kb_syncer *s, const char *what, int rc)
{
    snprintf(s->why, sizeof s->why, "%s: %s (%d)", what, sqlite3_errstr(rc), rc);
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->failed, true);
    pthread_cond_broadcast(&s->progress_cv);
    pthread_mutex_unlock(&s->mu);
    kb_syncer_wake(s);
}

static void *kb_syncer_main(void *arg)
{
    kb_syncer *s = arg;
    uint64_t done = 0;
    /* The WAL's size at the last checkpoint. A checkpoint during which the loop committed
     * cannot restart the WAL, which then keeps its size: the next one waits until another
     * threshold's worth of frames came, instead of copying a handful after every sync. */
    uint32_t checkpointed_at = 0;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && s->requested == done)
            pthread_cond_wait(&s->requested_cv, &s->mu);
        if (s->requested == done)
            break; /* stopping, and everything asked for is durable */
        uint64_t target = s->requested;
        uint32_t frames = s->wal_frames;
        if (frames < checkpointed_at)
            checkpointed_at = 0; /* the WAL restarted */
        bool checkpoint = frames >= checkpointed_at + s->checkpoint_frames;
        pthread_mutex_unlock(&s->mu);

        uint64_t started = kb_mono_ns() / 1000;
        int rc = kb_syncer_wal_sync(s);
        uint64_t synced = kb_mono_ns() / 1000;
        if (rc != SQLITE_OK) {
            kb_syncer_fail(s, "fdatasync of the WAL", rc);
            return NULL;
        }
        pthread_mutex_lock(&s->mu);
        done = target;
        atomic_store(&s->durable, target);
        kb_durations_add(&s->stats.syncs, synced - started);
        pthread_cond_broadcast(&s->progress_cv);
        pthread_mutex_unlock(&s->mu);
        kb_syncer_wake(s);

        if (checkpoint) {
            /* PASSIVE: never waits for the loop, which keeps appending meanwhile; the WAL
             * restarts from its beginning at the loop's first commit after a checkpoint that
             * copied every frame. A full disk leaves the WAL as it is, to be copied later. */
            rc = sqlite3_wal_checkpoint_v2(s->db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
            int primary = rc & 0xff;
            if (primary != SQLITE_OK && primary != SQLITE_BUSY && primary != SQLITE_LOCKED &&
                primary != SQLITE_FULL) {
                kb_syncer_fail(s, "checkpoint of the WAL", rc);
                return NULL;
            }
            checkpointed_at = frames;
            pthread_mutex_lock(&s->mu);
            s->stats.checkpoints++;
            pthread_mutex_unlock(&s->mu);
        }
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

ks_status kb_syncer_new(const char *db_path, const char *vfs, uint32_t checkpoint_frames,
                        kb_syncer **out)
{
    ks_status st = KS_OK;
    *out = NULL;
    kb_syncer *s = calloc(1, sizeof *s);
    if (!s)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    s->wake[0] = s->wake[1] = -1;
    s->checkpoint_frames = checkpoint_frames ? checkpoint_frames : 1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->requested_cv, NULL);
    pthread_cond_init(&s->progress_cv, NULL);
    if (pipe(s->wake) != 0) {
        st = ks_fail(KS_ERR_IO, "pipe: %s", strerror(errno));
        goto cleanup;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(s->wake[i], F_SETFL, fcntl(s->wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(s->wake[i], F_SETFD, FD_CLOEXEC);
    }
    int rc = sqlite3_open_v2(db_path, &s->db, SQLITE_OPEN_READWRITE, vfs);
    sqlite3_stmt *q = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->db, "PRAGMA synchronous=FULL", NULL, NULL, NULL);
    /* One read opens this connection's handle on the WAL, which every sync goes through. */
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(s->db, "SELECT count(*) FROM schema_version", -1, &q, NULL);
    if (rc == SQLITE_OK && sqlite3_step(q) != SQLITE_ROW)
        rc = sqlite3_errcode(s->db);
    sqlite3_finalize(q);
    sqlite3_file *wal = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_file_control(s->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
    if (rc == SQLITE_OK && (!wal || !wal->pMethods))
        rc = SQLITE_CANTOPEN; /* not a WAL database */
    /* What an earlier process committed but did not live to sync (it died after COMMIT) is
     * served from now on: it becomes durable before anything else happens. */
    sqlite3_file *main_db = NULL;
    if (rc == SQLITE_OK)
        rc = sqlite3_file_control(s->db, "main", SQLITE_FCNTL_FILE_POINTER, &main_db);
    if (rc == SQLITE_OK && main_db && main_db->pMethods)
        rc = main_db->pMethods->xSync(main_db, SQLITE_SYNC_NORMAL);
    if (rc == SQLITE_OK)
        rc = kb_syncer_wal_sync(s);
    if (rc != SQLITE_OK) {
        st = ks_fail(KS_ERR_IO, "the WAL sync connection to %s: %s", db_path,
                     s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto cleanup;
    }
    if (pthread_create(&s->thread, NULL, kb_syncer_main, s) != 0) {
        st = ks_fail(KS_ERR_IO, "cannot start the WAL sync thread");
        goto cleanup;
    }
    s->started = true;
    *out = s;
    s = NULL;
cleanup:
    kb_syncer_destroy(&s);
    return st;
}

void kb_syncer_destroy(kb_syncer **ps)
{
    if (!ps || !*ps)
        return;
    kb_syncer *s = *ps;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->requested_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    sqlite3_close_v2(s->db);
    for (int i = 0; i < 2; i++)
        if (s->wake[i] >= 0)
            close(s->wake[i]);
    pthread_cond_destroy(&s->progress_cv);
    pthread_cond_destroy(&s->requested_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    *ps = NULL;
}

void kb_syncer_request(kb_syncer *s, uint64_t commit, uint32_t wal_frames)
{
    pthread_mutex_lock(&s->mu);
    if (commit > s->requested) {
        s->requested = commit;
        s->wal_frames = wal_frames;
        pthread_cond_signal(&s->requested_cv);
    }
    pthread_mutex_unlock(&s->mu);
}

uint64_t kb_syncer_durable(kb_syncer *s) { return atomic_load(&s->durable); }

void kb_syncer_wait(kb_syncer *s, uint64_t commit)
{
    pthread_mutex_lock(&s->mu);
    while (atomic_load(&s->durable) < commit && !atomic_load(&s->failed))
        pthread_cond_wait(&s->progress_cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

int kb_syncer_fd(const kb_syncer *s) { return s->wake[0]; }

void kb_syncer_drain(kb_syncer *s)
{
    char buf[64];
    while (read(s->wake[0], buf, sizeof buf) > 0) {
    }
}

bool kb_syncer_failed(kb_syncer *s, const char **why)
{
    bool failed = atomic_load(&s->failed);
    if (why)
        *why = failed ? s->why : NULL;
    return failed;
}

void kb_syncer_stats_get(kb_syncer *s, kb_syncer_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    pthread_mutex_unlock(&s->mu);
}
