/* actor: a thread that talks to its owner over a ZeroMQ PAIR pipe, with a start handshake, a
 * stop message and a join (CZMQ's zactor, without CZMQ). The broker's ZAP handler (kb_auth),
 * its WAL syncer (kb_syncer) and the worker's compute thread (kw_compute) are actors.
 *
 * Start: kp_actor_new makes the pipe, starts the thread and returns only once the thread said it
 * is ready (kp_actor_ready), or with the thread's own failure status and message when it could
 * not set itself up: a caller never talks to a thread that is still starting, or to one that
 * never will. Stop: one empty frame on the pipe; every other message on an actor's pipe must be
 * non-empty, and an actor that reads the empty one finishes what it must (the syncer, the syncs
 * already asked for) and returns. Join: waiting for the thread's end.
 *
 * Not here: what the messages mean (each actor has its own) and threads without a pipe.
 * Module prefix: kp_actor_. Library: kosmos_wire. */
#ifndef KP_ACTOR_H
#define KP_ACTOR_H

#include <stdbool.h>
#include <stddef.h>

#include "ks_error.h"

typedef struct kp_actor kp_actor;

/* An actor's body, run on its own thread with SIGTERM and SIGINT blocked (they belong to the
 * owner's loop). `pipe` is the thread's end (owned by the actor: closed when the body returns,
 * after what it sent was delivered or a second passed). The body sets itself up, sending
 * nothing, then calls kp_actor_ready once; a failure before that is returned as a status with
 * ks_fail's message, which kp_actor_new reports on the owner's thread (a body that returns
 * KS_OK without calling it counts as ready). After ready, the status returned is ignored: an
 * actor that fails later tells its owner in its own messages. */
typedef ks_status (*kp_actor_fn)(void *pipe, void *arg);

/* Makes the pipe in `zctx` (borrowed; it outlives the actor), starts `fn(pipe, arg)` and waits
 * for its kp_actor_ready. On the body's failure: its status and message, the thread joined, and
 * *out NULL. `name` (static storage) names the actor in messages. Caller owns *out. */
ks_status kp_actor_new(void *zctx, const char *name, kp_actor_fn fn, void *arg, kp_actor **out);

/* From the body, once: the owner's kp_actor_new returns KS_OK. KS_ERR_IO if the pipe failed. */
ks_status kp_actor_ready(void *pipe);

/* The owner's end of the pipe: for zmq_send/zmq_recv/zmq_poll on the owner's thread only.
 * Borrowed until kp_actor_destroy. */
void *kp_actor_pipe(kp_actor *a);

/* Sends the stop message without blocking. A body that already returned never reads it; that
 * is not an error (there is nothing left to stop). */
void kp_actor_stop(kp_actor *a);

/* Waits for the thread to end (a stop message, or the body returning by itself). Idempotent. */
void kp_actor_join(kp_actor *a);

/* Stop, join, then closes the owner's end. Accepts NULL; sets *a to NULL. */
void kp_actor_destroy(kp_actor **a);

#endif
