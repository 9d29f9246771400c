/* kw_internal: what the worker's I/O thread (kw_worker.c) and compute thread (kw_compute.c)
 * pass over their inproc:// PAIR pipe. Each message is one kw_msg struct sent by value; the
 * pointers in it transfer ownership to the receiver (same process). Private to worker/service. */
#ifndef KW_INTERNAL_H
#define KW_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "actor.h"
#include "kw_batch.h"
#include "kw_worker.h"
#include "wire.h"

#define KW_JOB_ID_MAX 64

typedef enum kw_msg_type {
    KW_MSG_TASK = 1, /* io -> compute: a dispatch to run (task) */
    KW_MSG_CANCEL,   /* io -> compute: stop (job_id, attempt) if it is held (reason) */
    KW_MSG_STOP,     /* io -> compute: finish the running jobs (grace until `at`), drop the
                      * others, then STOPPED */
    KW_MSG_RESULT,   /* compute -> io: the packed Result of one task (done) */
    KW_MSG_STOPPED,  /* compute -> io: the thread is about to exit; nothing more will come */
    KW_MSG_FATAL,    /* compute -> io: the device failed (message); STOPPED follows */
    KW_MSG_ROOTS,    /* io -> compute: the image roots the broker's Welcome named (roots) */
    KW_MSG_STARTED,  /* compute -> io: about to compute (job_id, attempt); wait for START_OK */
    KW_MSG_START_OK  /* io -> compute: the broker knows (job_id, attempt) started, or need not */
} kw_msg_type;

/* cancel_reason of a job the worker stopped because it is shutting down (its --stop-grace ran
 * out): no Result is sent; the Disconnect hands the job back (protocol.md §8.8). Outside the
 * range of Kosmos__V1__Cancel__Reason. */
#define KW_REASON_HANDBACK 1000

/* A dispatch: the received message (it owns the Dispatch and the image frame) and the batch
 * input pointing into it. */
typedef struct kw_task {
    kp_inbound *in;
    kw_job_in job;
    char job_id[KW_JOB_ID_MAX + 1];
} kw_task;

typedef struct kw_done {
    char job_id[KW_JOB_ID_MAX + 1];
    uint32_t attempt;
    kw_packed packed; /* WorkerMessage{result} */
} kw_done;

/* A list of image roots (kw_engine_params.image_roots) that travels between the threads. */
typedef struct kw_roots {
    char **paths;
    size_t n;
} kw_roots;

void kw_roots_destroy(kw_roots **r);

typedef struct kw_msg {
    kw_msg_type type;
    kw_task *task;
    kw_done *done;
    kw_roots *roots;
    char job_id[KW_JOB_ID_MAX + 1];
    uint32_t attempt;
    int reason;
    uint64_t at; /* STOP: unix ms when the running sequences' grace ends */
    char message[512];
} kw_msg;

void kw_task_destroy(kw_task **t);

/* The compute thread's state; kw_compute_start creates the thread. */
typedef struct kw_compute {
    kw_engine *engine;     /* borrowed; driven only by the compute thread once started */
    int max_batch;         /* jobs computed at once */
    kw_batch_params batch; /* vision chunk, prefill budget; poll = test.on_step */
    kw_test_seams test;    /* kw_worker_params.test */
    kw_result_meta meta;
    kp_actor *actor; /* the thread (proto/actor.h); its pipe is the io thread's end */
} kw_compute;

/* Starts the thread in `zmq_ctx` (borrowed, outlives it) and returns once it is ready to take
 * messages on kp_actor_pipe(c->actor), or with the status and message of its failure to start
 * (KS_ERR_NOMEM: no memory for the batch, KS_ERR_IO: the pipe). */
ks_status kw_compute_start(kw_compute *c, void *zmq_ctx);
/* Sends the actor's stop message (KW_MSG_STOP without a grace) unless the thread already ended,
 * waits for it to end and closes the pipe. A thread inside a batch step ends after it. */
void kw_compute_stop(kw_compute *c);

/* Sends one message on a PAIR socket (blocking); KS_ERR_IO when the socket failed. */
ks_status kw_msg_send(void *pair, const kw_msg *m);
/* Receives one message; KS_OK with *got false when flags had ZMQ_DONTWAIT and nothing came.
 * The actor's stop message (an empty frame, kw_compute_stop) reads as KW_MSG_STOP at 0. */
ks_status kw_msg_recv(void *pair, kw_msg *m, int flags, bool *got);

#endif
