/* fake_worker_msgs: the worker's side of the protocol (docs/protocol.md) as the tests' and the
 * benchmarks' fake workers send it: test_broker's step-driven worker, test_client's worker
 * thread, test_faults' bad_input worker and bench-farm's echo workers. Each ts_fw_send_* wraps
 * one message in a WorkerMessage and sends it with kp_send on a DEALER connected to the broker's
 * worker endpoint, returning kp_send's status.
 *
 * Not a worker: what a fake does with the broker's messages (leases, timing, answers) stays with
 * it. Ready and Result come as stores that the caller fills further before sending, since each
 * fake says different things in them; Credit, Heartbeat and Disconnect say the same everywhere.
 * No assertions, so that a benchmark can link it as well as a cmocka test. Prefix ts_fw_. */
#ifndef TS_FAKE_WORKER_MSGS_H
#define TS_FAKE_WORKER_MSGS_H

#include <stddef.h>
#include <stdint.h>

#include "kosmos.pb-c.h"
#include "ks_error.h"

/* A Ready and the DeviceInfo it may point at: storage that outlives the send. */
typedef struct ts_fw_ready {
    Kosmos__V1__Ready ready;
    Kosmos__V1__DeviceInfo device;
} ts_fw_ready;

/* A Ready of protocol version 1 from worker `name`, process `instance`, taking `capacity` jobs
 * at once, serving `model_id` (NULL: unset, as an older worker might). Strings are borrowed
 * until the send. Returns &r->ready, for the fields only some fakes set (model_hash, running). */
Kosmos__V1__Ready *ts_fw_ready_init(ts_fw_ready *r, const char *name, uint64_t instance,
                                    uint32_t capacity, const char *model_id);
/* Makes r's Ready describe a device (strings borrowed until the send). */
void ts_fw_ready_device(ts_fw_ready *r, const char *name, const char *vendor,
                        uint64_t memory_bytes);
ks_status ts_fw_send_ready(void *sock, Kosmos__V1__Ready *ready);

/* `slots` more dispatches (credit is incremental). */
ks_status ts_fw_send_credit(void *sock, uint32_t slots);

/* The leases the worker holds (borrowed; may be 0 of them), stamped with the wall clock as
 * kosmos-worker stamps its heartbeats. */
ks_status ts_fw_send_heartbeat(void *sock, Kosmos__V1__Lease **running, size_t n_running);

/* A Result and its one PromptResult: storage that outlives the send. */
typedef struct ts_fw_result {
    Kosmos__V1__Result result;
    Kosmos__V1__PromptResult prompt;
    Kosmos__V1__PromptResult *prompts[1];
} ts_fw_result;

/* The Result of `attempt` of job `job_id` with `status`; with `text`, one prompt (index 0) of
 * that status and text, else none. Strings are borrowed until the send. Returns &r->result, for
 * the fields only some fakes set (retriable, worker_name, times). */
Kosmos__V1__Result *ts_fw_result_init(ts_fw_result *r, const char *job_id, uint32_t attempt,
                                      int status, const char *text);
/* Sends any Result, also one a fake built itself. */
ks_status ts_fw_send_result(void *sock, Kosmos__V1__Result *result);

/* Disconnect with `code` (KOSMOS__V1__DISCONNECT__CODE__*). `flags`: 0 or ZMQ_DONTWAIT, for a
 * goodbye on a socket about to close, which must not wait for a broker that has gone. */
ks_status ts_fw_send_disconnect(void *sock, int code, int flags);

#endif
