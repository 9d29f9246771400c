/* fake_worker_msgs: the worker messages of the tests' fake workers (see the header). */
#include "fake_worker_msgs.h"

#include <stdbool.h>
#include <time.h>

#include "wire.h"

static ks_status send_msg(void *sock, Kosmos__V1__WorkerMessage *m, int flags)
{
    return kp_send(sock, NULL, 0, &m->base, NULL, flags);
}

Kosmos__V1__Ready *ts_fw_ready_init(ts_fw_ready *r, const char *name, uint64_t instance,
                                    uint32_t capacity, const char *model_id)
{
    kosmos__v1__ready__init(&r->ready);
    kosmos__v1__device_info__init(&r->device);
    r->ready.has_protocol_version = r->ready.has_worker_instance = true;
    r->ready.has_batch_capacity = true;
    r->ready.protocol_version = 1;
    r->ready.worker_name = (char *)name;
    r->ready.worker_instance = instance;
    r->ready.batch_capacity = capacity;
    r->ready.model_id = (char *)model_id;
    return &r->ready;
}

void ts_fw_ready_device(ts_fw_ready *r, const char *name, const char *vendor, uint64_t memory_bytes)
{
    r->device.name = (char *)name;
    r->device.vendor = (char *)vendor;
    r->device.has_memory_bytes = true;
    r->device.memory_bytes = memory_bytes;
    r->ready.device = &r->device;
}

ks_status ts_fw_send_ready(void *sock, Kosmos__V1__Ready *ready)
{
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_READY;
    m.ready = ready;
    return send_msg(sock, &m, 0);
}

ks_status ts_fw_send_credit(void *sock, uint32_t slots)
{
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    Kosmos__V1__Credit c = KOSMOS__V1__CREDIT__INIT;
    c.has_slots = true;
    c.slots = slots;
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_CREDIT;
    m.credit = &c;
    return send_msg(sock, &m, 0);
}

ks_status ts_fw_send_heartbeat(void *sock, Kosmos__V1__Lease **running, size_t n_running)
{
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    Kosmos__V1__Heartbeat hb = KOSMOS__V1__HEARTBEAT__INIT;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    hb.has_sent_unix_ms = true;
    hb.sent_unix_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    hb.n_running = n_running;
    hb.running = running;
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_HEARTBEAT;
    m.heartbeat = &hb;
    return send_msg(sock, &m, 0);
}

Kosmos__V1__Result *ts_fw_result_init(ts_fw_result *r, const char *job_id, uint32_t attempt,
                                      int status, const char *text)
{
    kosmos__v1__result__init(&r->result);
    kosmos__v1__prompt_result__init(&r->prompt);
    r->result.job_id = (char *)job_id;
    r->result.has_attempt = r->result.has_status = true;
    r->result.attempt = attempt;
    r->result.status = status;
    if (text) {
        r->prompt.has_prompt_index = r->prompt.has_status = true;
        r->prompt.prompt_index = 0;
        r->prompt.status = status;
        r->prompt.text = (char *)text;
        r->prompts[0] = &r->prompt;
        r->result.n_prompts = 1;
        r->result.prompts = r->prompts;
    }
    return &r->result;
}

ks_status ts_fw_send_result(void *sock, Kosmos__V1__Result *result)
{
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_RESULT;
    m.result = result;
    return send_msg(sock, &m, 0);
}

ks_status ts_fw_send_disconnect(void *sock, int code, int flags)
{
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    Kosmos__V1__Disconnect d = KOSMOS__V1__DISCONNECT__INIT;
    d.has_code = true;
    d.code = code;
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_DISCONNECT;
    m.disconnect = &d;
    return send_msg(sock, &m, flags);
}
