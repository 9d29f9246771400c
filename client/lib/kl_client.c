/* kl_client: kosmos_client_t - one DEALER socket to the broker's client endpoint and the
 * request/reply discipline of docs/protocol.md §5 and §7: a fresh non-zero request_id per call,
 * replies matched by it (late ones ignored, request_id 0 errors taken as ours: one request is in
 * flight at a time), a reply timeout of min(wait_ms, 30000) + reply_timeout_ms, then a resend of
 * the same bytes on a new socket (LINGER 0 drops what the old one queued), up to `retries`
 * times. Every submit carries an idempotency key, so those resends are safe.
 *
 * Not thread-safe (see kosmos/client.h): one call at a time per client. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "kl_internal.h"
#include "ks_error.h"
#include "wire.h"

#define KL_FETCH_WAIT_CAP_MS 30000
#define KL_DEFAULT_REPLY_TIMEOUT_MS 5000
#define KL_DEFAULT_RETRIES 2
#define KL_JOB_ID_MAX (KOSMOS_JOB_ID_SIZE - 1)

struct kosmos_client {
    void *ctx;
    void *sock;
    char *endpoint;
    char client_id[KOSMOS_KEY_MAX + 1]; /* "" = unset (anonymous) */
    bool curve;
    char curve_public[KOSMOS_Z85_KEY_SIZE];
    char curve_secret[KOSMOS_Z85_KEY_SIZE];
    char curve_server[KOSMOS_Z85_KEY_SIZE];
    int reply_timeout_ms;
    int retries;
    size_t max_message_bytes;
    size_t max_image_bytes;
    uint64_t next_request_id;
    uint64_t broker_instance;
};

KOSMOS_API void kosmos_client_params_init(kosmos_client_params_t *params)
{
    if (!params)
        return;
    memset(params, 0, sizeof *params);
    params->reply_timeout_ms = KL_DEFAULT_REPLY_TIMEOUT_MS;
    params->retries = KL_DEFAULT_RETRIES;
}

static kosmos_error_t kl_zmq_fail(const char *call)
{
    return kl_fail(KOSMOS_ERR_IO, "%s: %s", call, zmq_strerror(zmq_errno()));
}

static void kl_close_socket(kosmos_client_t *c)
{
    if (c->sock) {
        zmq_close(c->sock);
        c->sock = NULL;
    }
}

/* A new DEALER connected to the broker, with protocol.md §1's options and CURVE if set. */
static kosmos_error_t kl_open_socket(kosmos_client_t *c)
{
    kl_close_socket(c);
    void *s = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!s)
        return kl_zmq_fail("zmq_socket");
    int linger = 0, ivl = 100, ivl_max = 5000;
    int sndtimeo = c->reply_timeout_ms;
    int64_t maxmsg = (int64_t)(c->max_message_bytes + ((size_t)64 << 10));
    if (zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(s, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl) != 0 ||
        zmq_setsockopt(s, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max) != 0 ||
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) != 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0) {
        kl_zmq_fail("zmq_setsockopt");
        goto fail;
    }
    if (c->curve && (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, c->curve_server, 40) != 0 ||
                     zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, c->curve_public, 40) != 0 ||
                     zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, c->curve_secret, 40) != 0)) {
        kl_fail(KOSMOS_ERR_INVALID,
                "CURVE keys refused by libzmq (%s): 40-character Z85 keys "
                "expected",
                zmq_strerror(zmq_errno()));
        zmq_close(s);
        return KOSMOS_ERR_INVALID;
    }
    if (zmq_connect(s, c->endpoint) != 0) {
        kl_fail(KOSMOS_ERR_INVALID, "cannot connect to %s: %s", c->endpoint,
                zmq_strerror(zmq_errno()));
        zmq_close(s);
        return KOSMOS_ERR_INVALID;
    }
    c->sock = s;
    return KOSMOS_OK;
fail:
    zmq_close(s);
    return KOSMOS_ERR_IO;
}

static bool kl_z85_ok(const char *k) { return k && strlen(k) == 40; }

KOSMOS_API kosmos_client_t *kosmos_client_new(const kosmos_client_params_t *params)
{
    kosmos_client_t *c = NULL;
    if (!params || !params->broker || !params->broker[0]) {
        kl_fail(KOSMOS_ERR_INVALID, "kosmos_client_new: no broker endpoint");
        return NULL;
    }
    const kosmos_client_params_t *p = params;
    if (p->client_id && (!p->client_id[0] || strlen(p->client_id) > KOSMOS_KEY_MAX)) {
        kl_fail(KOSMOS_ERR_INVALID, "client id must be 1..%d bytes", KOSMOS_KEY_MAX);
        return NULL;
    }
    int n_keys = !!p->curve_public_key + !!p->curve_secret_key + !!p->curve_server_key;
    if (n_keys != 0 && n_keys != 3) {
        kl_fail(KOSMOS_ERR_INVALID, "CURVE needs all three keys (public, secret, server) or none");
        return NULL;
    }
    if (n_keys == 3 && (!kl_z85_ok(p->curve_public_key) || !kl_z85_ok(p->curve_secret_key) ||
                        !kl_z85_ok(p->curve_server_key))) {
        kl_fail(KOSMOS_ERR_INVALID, "CURVE keys must be 40-character Z85 strings");
        return NULL;
    }
    if (n_keys == 3 && !zmq_has("curve")) {
        kl_fail(KOSMOS_ERR_UNSUPPORTED, "this libzmq was built without CURVE");
        return NULL;
    }
    if (p->reply_timeout_ms <= 0 || p->retries < 0) {
        kl_fail(KOSMOS_ERR_INVALID, "reply_timeout_ms must be > 0 and retries >= 0 "
                                    "(kosmos_client_params_init sets the defaults)");
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        goto nomem;
    c->endpoint = strdup(p->broker);
    if (!c->endpoint)
        goto nomem;
    if (p->client_id)
        snprintf(c->client_id, sizeof c->client_id, "%s", p->client_id);
    if (n_keys == 3) {
        c->curve = true;
        memcpy(c->curve_public, p->curve_public_key, 41);
        memcpy(c->curve_secret, p->curve_secret_key, 41);
        memcpy(c->curve_server, p->curve_server_key, 41);
    }
    c->reply_timeout_ms = p->reply_timeout_ms;
    c->retries = p->retries;
    c->max_message_bytes = p->max_message_bytes ? p->max_message_bytes
                                                : KP_DEFAULT_MAX_MESSAGE_BYTES;
    c->max_image_bytes = p->max_image_bytes ? p->max_image_bytes : KP_DEFAULT_MAX_IMAGE_BYTES;
    kl_random_bytes(&c->next_request_id, sizeof c->next_request_id);
    c->next_request_id >>= 16; /* random start, far from wrapping; never 0 after ++ */
    c->ctx = zmq_ctx_new();
    if (!c->ctx) {
        kl_zmq_fail("zmq_ctx_new");
        goto fail;
    }
    if (kl_open_socket(c) != KOSMOS_OK)
        goto fail;
    return c;
nomem:
    kl_fail(KOSMOS_ERR_NOMEM, "kosmos_client_new: out of memory");
fail:
    kosmos_client_destroy(&c);
    return NULL;
}

KOSMOS_API void kosmos_client_destroy(kosmos_client_t **client)
{
    if (!client || !*client)
        return;
    kosmos_client_t *c = *client;
    kl_close_socket(c);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    /* the secret key should not linger in freed memory */
    memset(c->curve_secret, 0, sizeof c->curve_secret);
    free(c->endpoint);
    free(c);
    *client = NULL;
}

KOSMOS_API uint64_t kosmos_client_broker_instance(const kosmos_client_t *client)
{
    return client ? client->broker_instance : 0;
}

/* ---- one request, one reply ---- */

static kosmos_error_t kl_map_error(const Kosmos__V1__ErrorReply *e)
{
    int code = (e && e->has_code) ? (int)e->code : 0;
    kosmos_error_t err;
    switch (code) {
    case KOSMOS__V1__ERROR_CODE__ERROR_CODE_NOT_FOUND: err = KOSMOS_ERR_NOT_FOUND; break;
    case KOSMOS__V1__ERROR_CODE__ERROR_CODE_INVALID_STATE: err = KOSMOS_ERR_INVALID_STATE; break;
    case KOSMOS__V1__ERROR_CODE__ERROR_CODE_INVALID_ARGUMENT: err = KOSMOS_ERR_INVALID; break;
    case KOSMOS__V1__ERROR_CODE__ERROR_CODE_TOO_LARGE: err = KOSMOS_ERR_TOO_LARGE; break;
    case KOSMOS__V1__ERROR_CODE__ERROR_CODE_INTERNAL:
    case KOSMOS__V1__ERROR_CODE__ERROR_CODE_UNAVAILABLE: err = KOSMOS_ERR_UNAVAILABLE; break;
    case KOSMOS__V1__ERROR_CODE__ERROR_CODE_UNKNOWN_REQUEST: err = KOSMOS_ERR_UNSUPPORTED; break;
    default: err = KOSMOS_ERR_PROTOCOL; break; /* MALFORMED, PROTOCOL_VERSION, unknown */
    }
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&kosmos__v1__error_code__descriptor, code);
    return kl_fail(err, "broker: %s: %s", v ? v->name : "unknown error code",
                   (e && e->message) ? e->message : "");
}

/* Sends `req` (request_id and client_id are set here) with `image` as frame 3 if not NULL, and
 * waits for its reply, resending as protocol.md §7 says. On KOSMOS_OK *out is the reply
 * (caller destroys), valid and of the `expect` case. */
static kosmos_error_t kl_call(kosmos_client_t *c, Kosmos__V1__ClientRequest *req, kl_image *image,
                              int wait_ms, Kosmos__V1__ClientReply__ReplyCase expect,
                              kp_inbound **out)
{
    *out = NULL;
    kosmos_error_t err = KOSMOS_OK;
    zmq_msg_t body;
    bool have_body = false;

    if (++c->next_request_id == 0)
        ++c->next_request_id;
    uint64_t rid = c->next_request_id;
    req->has_request_id = true;
    req->request_id = rid;
    req->client_id = c->client_id[0] ? c->client_id : NULL;

    if (image && image->len > c->max_image_bytes)
        return kl_fail(KOSMOS_ERR_TOO_LARGE, "image of %zu bytes is over the limit of %zu",
                       image->len, c->max_image_bytes);
    if (kp_pack(&req->base, &body) != KS_OK)
        return kl_fail(KOSMOS_ERR_NOMEM, "packing the request: %s", ks_error_message());
    have_body = true;
    if (zmq_msg_size(&body) > c->max_message_bytes) {
        err = kl_fail(KOSMOS_ERR_TOO_LARGE, "request of %zu bytes is over the limit of %zu",
                      zmq_msg_size(&body), c->max_message_bytes);
        goto cleanup;
    }
    kp_limits limits = {c->max_message_bytes > KP_DEFAULT_MAX_MESSAGE_BYTES
                            ? c->max_message_bytes
                            : KP_DEFAULT_MAX_MESSAGE_BYTES,
                        0};
    int wait = wait_ms > 0 ? (wait_ms < KL_FETCH_WAIT_CAP_MS ? wait_ms : KL_FETCH_WAIT_CAP_MS) : 0;

    for (int attempt = 0;; attempt++) {
        if (!c->sock && (err = kl_open_socket(c)) != KOSMOS_OK)
            goto cleanup;
        zmq_msg_t copy, img;
        zmq_msg_init(&copy);
        if (zmq_msg_copy(&copy, &body) != 0) {
            zmq_msg_close(&copy);
            err = kl_zmq_fail("zmq_msg_copy");
            goto cleanup;
        }
        if (image && (err = kl_image_msg(image, &img)) != KOSMOS_OK) {
            zmq_msg_close(&copy);
            goto cleanup;
        }
        bool sent = kp_send_packed(c->sock, NULL, 0, &copy, image ? &img : NULL, 0) == KS_OK;
        if (!sent && zmq_errno() != EAGAIN) {
            err = kl_fail(KOSMOS_ERR_IO, "sending to %s: %s", c->endpoint,
                          zmq_strerror(zmq_errno()));
            goto cleanup;
        }
        uint64_t deadline = kl_now_ms() + (uint64_t)wait + (uint64_t)c->reply_timeout_ms;
        while (sent) {
            uint64_t now = kl_now_ms();
            if (now >= deadline)
                break;
            zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
            long left = (long)(deadline - now);
            int rc = zmq_poll(&item, 1, left);
            if (rc < 0) {
                if (zmq_errno() == EINTR)
                    continue;
                err = kl_zmq_fail("zmq_poll");
                goto cleanup;
            }
            if (rc == 0)
                break;
            kp_inbound *in = NULL;
            if (kp_recv(c->sock, false, KP_CLIENT_REPLY, &limits, ZMQ_DONTWAIT, &in) != KS_OK) {
                err = kl_fail(KOSMOS_ERR_IO, "receiving from %s: %s", c->endpoint,
                              ks_error_message());
                goto cleanup;
            }
            if (!in)
                continue;
            kp_verdict v = kp_inbound_verdict(in);
            if (v == KP_BAD_VERSION || v == KP_NOT_OURS) {
                err = kl_fail(KOSMOS_ERR_PROTOCOL,
                              "%s speaks a different protocol (%s); "
                              "this client speaks " KP_VERSION,
                              c->endpoint, kp_inbound_reason(in));
                kp_inbound_destroy(&in);
                goto cleanup;
            }
            const Kosmos__V1__ClientReply *rep =
                (const Kosmos__V1__ClientReply *)kp_inbound_envelope(in);
            uint64_t got = rep ? rep->request_id : 0;
            if (rep && got != rid && got != 0) {
                kp_inbound_destroy(&in); /* a late reply to a request we gave up on */
                continue;
            }
            if (v != KP_VALID) {
                err = kl_fail(KOSMOS_ERR_PROTOCOL, "malformed reply from %s: %s", c->endpoint,
                              kp_inbound_reason(in));
                kp_inbound_destroy(&in);
                goto cleanup;
            }
            if (rep->has_broker_instance)
                c->broker_instance = rep->broker_instance;
            if (rep->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR) {
                err = kl_map_error(rep->error);
                kp_inbound_destroy(&in);
                goto cleanup;
            }
            if (got == 0 || rep->reply_case != expect) {
                err = kl_fail(KOSMOS_ERR_PROTOCOL,
                              "the broker answered with an unexpected reply "
                              "(request_id %" PRIu64 ", reply %d)",
                              got, (int)rep->reply_case);
                kp_inbound_destroy(&in);
                goto cleanup;
            }
            *out = in;
            err = KOSMOS_OK;
            goto cleanup;
        }
        /* No reply in time (or the send itself timed out): a fresh socket drops whatever the
         * old one still queued, then the same bytes go again (protocol.md §7). */
        kl_close_socket(c);
        if (attempt >= c->retries) {
            err = kl_fail(KOSMOS_ERR_TIMEOUT, "no reply from %s after %d tries of %d ms",
                          c->endpoint, attempt + 1, wait + c->reply_timeout_ms);
            goto cleanup;
        }
    }
cleanup:
    if (have_body)
        zmq_msg_close(&body);
    return err;
}

static kosmos_error_t kl_check_job_id(const char *job_id)
{
    if (!job_id || !job_id[0] || strlen(job_id) > KL_JOB_ID_MAX)
        return kl_fail(KOSMOS_ERR_INVALID, "a job id is 1..%d bytes", KL_JOB_ID_MAX);
    return KOSMOS_OK;
}

/* Copies a job id from the wire; PROTOCOL when missing or too long. */
static kosmos_error_t kl_copy_job_id(char dst[KOSMOS_JOB_ID_SIZE], const char *src)
{
    if (!src || !src[0] || strlen(src) > KL_JOB_ID_MAX)
        return kl_fail(KOSMOS_ERR_PROTOCOL, "the broker sent no valid job id");
    snprintf(dst, KOSMOS_JOB_ID_SIZE, "%s", src);
    return KOSMOS_OK;
}

/* ---- submit ---- */

static void kl_random_key(char *out, size_t size)
{
    unsigned char r[16];
    kl_random_bytes(r, sizeof r);
    int n = snprintf(out, size, "kl-");
    for (size_t i = 0; i < sizeof r && (size_t)n + 2 < size; i++)
        n += snprintf(out + n, size - (size_t)n, "%02x", r[i]);
}

KOSMOS_API kosmos_error_t kosmos_client_submit(kosmos_client_t *client, const kosmos_job_t *job,
                                               const char *idempotency_key,
                                               char job_id[KOSMOS_JOB_ID_SIZE],
                                               kosmos_submit_info_t *info)
{
    kosmos_submit_info_t local;
    kosmos_submit_info_t *si = info ? info : &local;
    memset(si, 0, sizeof *si);
    if (job_id)
        job_id[0] = '\0';
    if (!client || !job)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_client_submit: no client or no job");
    if (idempotency_key) {
        size_t n = strlen(idempotency_key);
        if (n == 0 || n > KOSMOS_KEY_MAX)
            return kl_fail(KOSMOS_ERR_INVALID, "an idempotency key is 1..%d bytes", KOSMOS_KEY_MAX);
        memcpy(si->idempotency_key, idempotency_key, n + 1);
    } else {
        kl_random_key(si->idempotency_key, sizeof si->idempotency_key);
    }

    Kosmos__V1__Job *wj = NULL;
    kl_image *image = NULL;
    kp_inbound *in = NULL;
    kosmos_error_t err = kl_wire_job(job, si->idempotency_key, &wj, &image);
    if (err != KOSMOS_OK)
        return err;
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__SubmitRequest sub = KOSMOS__V1__SUBMIT_REQUEST__INIT;
    sub.job = wj;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT;
    req.submit = &sub;
    err = kl_call(client, &req, image, 0, KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT, &in);
    if (err != KOSMOS_OK)
        goto cleanup;
    const Kosmos__V1__SubmitReply *r =
        ((const Kosmos__V1__ClientReply *)kp_inbound_envelope(in))->submit;
    switch (r ? (int)r->outcome_case : 0) {
    case KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED:
        err = kl_copy_job_id(si->job_id, r->accepted->job_id);
        si->duplicate = r->accepted->has_duplicate && r->accepted->duplicate;
        if (err == KOSMOS_OK && job_id)
            memcpy(job_id, si->job_id, KOSMOS_JOB_ID_SIZE);
        break;
    case KOSMOS__V1__SUBMIT_REPLY__OUTCOME_BUSY:
        si->retry_after_ms = r->busy->retry_after_ms;
        si->queue_depth = r->busy->queue_depth;
        err = kl_fail(KOSMOS_ERR_BUSY, "broker busy (%" PRIu64 " jobs queued); retry in %u ms",
                      si->queue_depth, si->retry_after_ms);
        break;
    case KOSMOS__V1__SUBMIT_REPLY__OUTCOME_CONFLICT:
        if (r->conflict->job_id)
            snprintf(si->job_id, sizeof si->job_id, "%s", r->conflict->job_id);
        err = kl_fail(KOSMOS_ERR_CONFLICT,
                      "idempotency key %s was used for job %s with other contents",
                      si->idempotency_key, si->job_id);
        break;
    case KOSMOS__V1__SUBMIT_REPLY__OUTCOME_REJECTED: {
        int code = r->rejected->has_code ? (int)r->rejected->code : 0;
        si->reject_code = (code >= 1 && code <= 5) ? (kosmos_reject_code_t)code
                                                   : KOSMOS_REJECT_UNKNOWN;
        const ProtobufCEnumValue *v =
            protobuf_c_enum_descriptor_get_value(&kosmos__v1__reject_code__descriptor, code);
        err = kl_fail(KOSMOS_ERR_REJECTED, "job rejected (%s): %s", v ? v->name : "unknown code",
                      r->rejected->reason ? r->rejected->reason : "");
        break;
    }
    default:
        err = kl_fail(KOSMOS_ERR_PROTOCOL, "a submit reply without an outcome this client knows");
        break;
    }
cleanup:
    kp_inbound_destroy(&in);
    kl_wire_job_free(wj);
    return err;
}

/* ---- fetch / poll / wait ---- */

KOSMOS_API kosmos_error_t kosmos_client_fetch(kosmos_client_t *client, const char *job_id,
                                              int wait_ms, kosmos_job_info_t *info,
                                              kosmos_result_t **result)
{
    if (info)
        memset(info, 0, sizeof *info);
    if (result)
        *result = NULL;
    if (!client)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_client_fetch: no client");
    kosmos_error_t err = kl_check_job_id(job_id);
    if (err != KOSMOS_OK)
        return err;
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__FetchRequest fr = KOSMOS__V1__FETCH_REQUEST__INIT;
    fr.job_id = (char *)job_id;
    if (wait_ms > 0) {
        fr.has_wait_ms = true;
        fr.wait_ms = (uint32_t)(wait_ms < KL_FETCH_WAIT_CAP_MS ? wait_ms : KL_FETCH_WAIT_CAP_MS);
    }
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH;
    req.fetch = &fr;
    kp_inbound *in = NULL;
    err = kl_call(client, &req, NULL, wait_ms, KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH, &in);
    if (err != KOSMOS_OK)
        return err;
    const Kosmos__V1__FetchReply *f =
        ((const Kosmos__V1__ClientReply *)kp_inbound_envelope(in))->fetch;
    kosmos_job_state_t state = kl_state_from_wire(f->has_state ? (int)f->state : 0);
    if (info) {
        snprintf(info->job_id, sizeof info->job_id, "%s", f->job_id ? f->job_id : job_id);
        info->state = state;
        info->attempt = f->attempt;
        info->queue_position = f->queue_position;
        info->submitted_unix_ms = f->submitted_unix_ms;
        info->next_attempt_unix_ms = f->next_attempt_unix_ms;
    }
    if (result && f->result && kosmos_job_state_is_terminal(state) && state != KOSMOS_STATE_ACKED) {
        *result = kl_result_from_wire(f->result);
        if (!*result)
            err = KOSMOS_ERR_NOMEM;
    }
    kp_inbound_destroy(&in);
    return err;
}

KOSMOS_API kosmos_error_t kosmos_client_poll(kosmos_client_t *client, const char *job_id,
                                             kosmos_job_info_t *info, kosmos_result_t **result)
{
    return kosmos_client_fetch(client, job_id, 0, info, result);
}

KOSMOS_API kosmos_error_t kosmos_client_wait(kosmos_client_t *client, const char *job_id,
                                             int timeout_ms, kosmos_result_t **result)
{
    if (result)
        *result = NULL;
    if (!result)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_client_wait: no result pointer");
    uint64_t start = kl_now_ms();
    uint64_t pause = 500;
    for (;;) {
        int wait = KL_FETCH_WAIT_CAP_MS;
        if (timeout_ms >= 0) {
            uint64_t spent = kl_now_ms() - start;
            uint64_t left = spent < (uint64_t)timeout_ms ? (uint64_t)timeout_ms - spent : 0;
            wait = left < (uint64_t)wait ? (int)left : wait;
        }
        kosmos_job_info_t info;
        kosmos_error_t err = kosmos_client_fetch(client, job_id, wait, &info, result);
        if (err == KOSMOS_ERR_UNAVAILABLE) {
            /* broker shutting down or a database hiccup: the fetch had no effect; pause and
             * ask again while time is left (protocol.md §7) */
            uint64_t spent = kl_now_ms() - start;
            if (timeout_ms >= 0 && spent + pause >= (uint64_t)timeout_ms)
                return err;
            kl_sleep_ms(pause);
            pause = pause * 2 < 5000 ? pause * 2 : 5000;
            continue;
        }
        if (err != KOSMOS_OK)
            return err;
        if (info.state == KOSMOS_STATE_ACKED)
            return kl_fail(KOSMOS_ERR_INVALID_STATE, "job %s was acked: its result is deleted",
                           job_id);
        if (*result)
            return KOSMOS_OK;
        if (kosmos_job_state_is_terminal(info.state))
            return kl_fail(KOSMOS_ERR_PROTOCOL, "job %s is %s but the broker sent no result",
                           job_id, kosmos_job_state_name(info.state));
        if (timeout_ms >= 0 && kl_now_ms() - start >= (uint64_t)timeout_ms)
            return kl_fail(KOSMOS_ERR_PENDING, "job %s is still %s after %d ms", job_id,
                           kosmos_job_state_name(info.state), timeout_ms);
    }
}

/* ---- ack / cancel / status ---- */

KOSMOS_API kosmos_error_t kosmos_client_ack(kosmos_client_t *client, const char *job_id)
{
    if (!client)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_client_ack: no client");
    kosmos_error_t err = kl_check_job_id(job_id);
    if (err != KOSMOS_OK)
        return err;
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__AckRequest ar = KOSMOS__V1__ACK_REQUEST__INIT;
    ar.job_id = (char *)job_id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_ACK;
    req.ack = &ar;
    kp_inbound *in = NULL;
    err = kl_call(client, &req, NULL, 0, KOSMOS__V1__CLIENT_REPLY__REPLY_ACK, &in);
    kp_inbound_destroy(&in);
    return err;
}

KOSMOS_API kosmos_error_t kosmos_client_cancel(kosmos_client_t *client, const char *job_id,
                                               bool *cancelled, kosmos_job_state_t *state)
{
    if (cancelled)
        *cancelled = false;
    if (state)
        *state = KOSMOS_STATE_UNKNOWN;
    if (!client)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_client_cancel: no client");
    kosmos_error_t err = kl_check_job_id(job_id);
    if (err != KOSMOS_OK)
        return err;
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__CancelRequest cr = KOSMOS__V1__CANCEL_REQUEST__INIT;
    cr.job_id = (char *)job_id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_CANCEL;
    req.cancel = &cr;
    kp_inbound *in = NULL;
    err = kl_call(client, &req, NULL, 0, KOSMOS__V1__CLIENT_REPLY__REPLY_CANCEL, &in);
    if (err != KOSMOS_OK)
        return err;
    const Kosmos__V1__CancelReply *r =
        ((const Kosmos__V1__ClientReply *)kp_inbound_envelope(in))->cancel;
    if (cancelled)
        *cancelled = r->has_cancelled && r->cancelled;
    if (state)
        *state = kl_state_from_wire(r->has_state ? (int)r->state : 0);
    kp_inbound_destroy(&in);
    return KOSMOS_OK;
}

KOSMOS_API kosmos_error_t kosmos_client_status(kosmos_client_t *client, bool include_workers,
                                               kosmos_broker_status_t **status)
{
    if (status)
        *status = NULL;
    if (!client || !status)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_client_status: no client or no status pointer");
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__StatusRequest sr = KOSMOS__V1__STATUS_REQUEST__INIT;
    sr.has_include_workers = true;
    sr.include_workers = include_workers;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    req.status = &sr;
    kp_inbound *in = NULL;
    kosmos_error_t err = kl_call(client, &req, NULL, 0, KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS,
                                 &in);
    if (err != KOSMOS_OK)
        return err;
    *status =
        kl_status_from_wire(((const Kosmos__V1__ClientReply *)kp_inbound_envelope(in))->status);
    kp_inbound_destroy(&in);
    return *status ? KOSMOS_OK : KOSMOS_ERR_NOMEM;
}

/* ---- the one-call helper ---- */

KOSMOS_API kosmos_error_t kosmos_ground_file(kosmos_client_t *client, const char *image_path,
                                             const char *prompt, int timeout_ms,
                                             kosmos_result_t **result)
{
    if (result)
        *result = NULL;
    if (!client || !image_path || !result)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_ground_file: no client, image or result");
    uint64_t start = kl_now_ms();
    char key[KOSMOS_KEY_MAX + 1];
    char job_id[KOSMOS_JOB_ID_SIZE];
    kl_random_key(key, sizeof key);
    kosmos_job_t *job = kosmos_job_new();
    if (!job)
        return KOSMOS_ERR_NOMEM;
    kosmos_error_t err = kosmos_job_set_image_file(job, image_path);
    if (err == KOSMOS_OK)
        err = kosmos_job_add_prompt(job, prompt ? prompt : "<grounding> An image of");
    uint64_t pause = 500;
    while (err == KOSMOS_OK) {
        kosmos_submit_info_t info;
        err = kosmos_client_submit(client, job, key, job_id, &info);
        if (err != KOSMOS_ERR_BUSY && err != KOSMOS_ERR_UNAVAILABLE)
            break;
        uint64_t sleep_ms = err == KOSMOS_ERR_BUSY && info.retry_after_ms ? info.retry_after_ms
                                                                          : pause;
        pause = pause * 2 < 5000 ? pause * 2 : 5000;
        uint64_t spent = kl_now_ms() - start;
        if (timeout_ms >= 0 && spent + sleep_ms >= (uint64_t)timeout_ms)
            break; /* keeps BUSY/UNAVAILABLE and its message */
        kl_sleep_ms(sleep_ms);
        err = KOSMOS_OK;
    }
    kosmos_job_destroy(&job);
    if (err != KOSMOS_OK)
        return err;
    int left = -1;
    if (timeout_ms >= 0) {
        uint64_t spent = kl_now_ms() - start;
        left = spent < (uint64_t)timeout_ms ? (int)((uint64_t)timeout_ms - spent) : 0;
    }
    err = kosmos_client_wait(client, job_id, left, result);
    if (err == KOSMOS_ERR_PENDING) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", kosmos_error_message());
        kosmos_client_cancel(client, job_id, NULL, NULL); /* best effort */
        return kl_fail(KOSMOS_ERR_PENDING, "%s (cancelled)", msg);
    }
    if (err == KOSMOS_OK)
        kosmos_client_ack(client, job_id); /* best effort: unacked results expire anyway */
    return err;
}
