/* kb_syncer: makes the broker's commits durable on a thread of its own, so that the loop never
 * waits for the disk.
 *
 * The loop's connection commits with synchronous=NORMAL: COMMIT returns once the WAL frames are
 * written to the kernel, which a crash of the broker's process (kill -9) does not lose. The
 * syncer then fdatasyncs the WAL, through a SQLite connection of its own (the same VFS, so a
 * fault shim sees its syncs), and checkpoints the WAL into the database when it grew. The loop
 * sends dispatches to workers as soon as COMMIT returns and holds every reply to a client until
 * the commits before it are durable (docs/broker.md "Durability"): no client hears ACCEPTED,
 * or reads a result, that a power loss could take back.
 *
 * Commits are numbered by the loop (1, 2, ...). kb_syncer_request(n) asks for every commit up to
 * n; kb_syncer_durable tells how far the disk has it. The syncer is an actor (proto/actor.h):
 * requests and its reports travel on its pipe, which the loop polls (kb_syncer_socket), and
 * the loop's view is the last report it read (kb_syncer_drain, kb_syncer_wait). A failed
 * fdatasync or checkpoint (an I/O error) is final: the broker stops (fail-stop) and recovers at
 * its next start. All calls are for the loop's thread. */
#ifndef KB_SYNCER_H
#define KB_SYNCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kb_broker.h"
#include "ks_error.h"

typedef struct kb_syncer kb_syncer;

/* What the syncer did so far (a snapshot, for the broker's stats). */
typedef struct kb_syncer_stats {
    kb_durations syncs;   /* fdatasyncs of the WAL */
    uint64_t checkpoints; /* passive checkpoints run */
} kb_syncer_stats;

/* Starts the thread in `zctx` (borrowed; it outlives the syncer), which opens its connection
 * to `db_path` (already a WAL database: kb_store_open made it) with the SQLite VFS `vfs` (NULL
 * = default; both borrowed until this returns) and syncs what an earlier process left unsynced;
 * returns once that is done, or with the thread's failure. `checkpoint_frames`: how many frames
 * the WAL grows by between two checkpoints. Caller owns *out. */
ks_status kb_syncer_new(void *zctx, const char *db_path, const char *vfs,
                        uint32_t checkpoint_frames, kb_syncer **out);
/* Syncs what was requested, stops the thread and closes its connection. */
void kb_syncer_destroy(kb_syncer **s);

/* Asks for commits up to `commit` to be made durable; `wal_frames` is the WAL's size after it
 * (kb_store_wal_frames), which decides whether a checkpoint follows the sync. */
void kb_syncer_request(kb_syncer *s, uint64_t commit, uint32_t wal_frames);
/* The highest commit known durable, as of the last report read. */
uint64_t kb_syncer_durable(kb_syncer *s);
/* Blocks until commit `commit` is durable or the syncer failed (kb_syncer_failed tells). */
void kb_syncer_wait(kb_syncer *s, uint64_t commit);
/* The loop's end of the pipe, for zmq_poll only (borrowed until destroy): readable when a
 * report came; kb_syncer_drain reads every report waiting. */
void *kb_syncer_socket(kb_syncer *s);
void kb_syncer_drain(kb_syncer *s);
/* Whether the syncer failed; *why (may be NULL) then names the failure. Final. */
bool kb_syncer_failed(kb_syncer *s, const char **why);
void kb_syncer_stats_get(kb_syncer *s, kb_syncer_stats *out);

#endif
