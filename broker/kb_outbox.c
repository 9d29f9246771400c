/* kb_outbox: the cycle's transaction and its outbox. A message whose meaning depends on a
 * database change is put in the outbox and sent only after that change committed; a rollback
 * turns client replies into errors (busy for submits) and drops the rest. Client replies wait
 * further, until the syncer made every commit before them durable (kb_send_client,
 * docs/broker.md "Durability"). Not the loop (kb_broker.c) nor what the phases do. */
#include "kb_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kb_metrics.h"

kb_out *kb_out_push(kb_broker *b, bool to_worker, const void *rid, size_t rid_len,
                    const ProtobufCMessage *msg)
{
    if (b->n_out == b->cap_out) {
        size_t ncap = b->cap_out ? b->cap_out * 2 : 64;
        kb_out *grown = realloc(b->out, ncap * sizeof *grown);
        if (!grown)
            return NULL;
        b->out = grown;
        b->cap_out = ncap;
    }
    kb_out *o = &b->out[b->n_out];
    memset(o, 0, sizeof *o);
    o->to_worker = to_worker;
    memcpy(o->rid, rid, rid_len);
    o->rid_len = rid_len;
    if (msg) {
        if (kp_pack(msg, &o->body) != KS_OK)
            return NULL;
        o->has_body = true;
        o->bytes = zmq_msg_size(&o->body);
    }
    b->n_out++;
    return o;
}

/* A ClientReply carrying an error (or, for `busy`, a submit's BUSY), packed into *out. */
static ks_status kb_pack_client_error(kb_broker *b, uint64_t request_id, int code,
                                      const char *message, bool busy, zmq_msg_t *out)
{
    Kosmos__V1__ClientReply reply = KOSMOS__V1__CLIENT_REPLY__INIT;
    Kosmos__V1__ErrorReply err = KOSMOS__V1__ERROR_REPLY__INIT;
    Kosmos__V1__SubmitReply sub = KOSMOS__V1__SUBMIT_REPLY__INIT;
    Kosmos__V1__SubmitReply__Busy bz = KOSMOS__V1__SUBMIT_REPLY__BUSY__INIT;
    reply.has_request_id = true;
    reply.request_id = request_id;
    reply.has_broker_instance = true;
    reply.broker_instance = b->instance;
    if (busy) {
        bz.has_retry_after_ms = true;
        bz.retry_after_ms = 5000;
        sub.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_BUSY;
        sub.busy = &bz;
        reply.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT;
        reply.submit = &sub;
    } else {
        err.has_code = true;
        err.code = code;
        err.message = (char *)message;
        reply.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR;
        reply.error = &err;
    }
    return kp_pack(&reply.base, out);
}

static void kb_client_send_now(kb_broker *b, const void *rid, size_t rid_len, zmq_msg_t *body)
{
    if (kp_send_packed(b->client_sock, rid, rid_len, body, NULL, ZMQ_DONTWAIT) != KS_OK) {
        b->stats.send_failures++;
        kb_logf(b, KS_LOG_DEBUG, "client_send_failed", "\"error\":\"%s\"", zmq_strerror(errno));
    }
}

/* Sends `body` (taken) now when every commit is durable, else holds it behind the last one. */
static void kb_client_deliver(kb_broker *b, const void *rid, size_t rid_len, zmq_msg_t *body,
                              uint64_t request_id, bool is_submit)
{
    if (!b->syncer || (b->n_held == 0 && kb_syncer_durable(b->syncer) >= b->commits_written)) {
        kb_client_send_now(b, rid, rid_len, body);
        return;
    }
    if (b->n_held == b->cap_held) {
        size_t ncap = b->cap_held ? b->cap_held * 2 : 64;
        kb_out *grown = realloc(b->held, ncap * sizeof *grown);
        if (!grown) {
            zmq_msg_close(body); /* the client's request times out and it asks again */
            b->stats.send_failures++;
            return;
        }
        b->held = grown;
        b->cap_held = ncap;
    }
    kb_out *h = &b->held[b->n_held++];
    memset(h, 0, sizeof *h);
    memcpy(h->rid, rid, rid_len);
    h->rid_len = rid_len;
    zmq_msg_init(&h->body);
    zmq_msg_move(&h->body, body);
    h->has_body = true;
    h->bytes = zmq_msg_size(&h->body) + sizeof *h; /* the slot too: replies may be tiny */
    h->request_id = request_id;
    h->is_submit = is_submit;
    h->commit = b->commits_written;
    b->held_bytes += h->bytes;
}

void kb_send_client(kb_broker *b, const void *rid, size_t rid_len, const ProtobufCMessage *msg,
                    uint64_t request_id, bool is_submit)
{
    zmq_msg_t body;
    if (kp_pack(msg, &body) != KS_OK) {
        b->stats.send_failures++;
        return;
    }
    kb_client_deliver(b, rid, rid_len, &body, request_id, is_submit);
}

void kb_send_client_error(kb_broker *b, const void *rid, size_t rid_len, uint64_t request_id,
                          int code, const char *message, bool busy)
{
    zmq_msg_t body;
    if (kb_pack_client_error(b, request_id, code, message, busy, &body) != KS_OK) {
        b->stats.send_failures++;
        return;
    }
    kb_client_deliver(b, rid, rid_len, &body, request_id, false);
}

void kb_held_release(kb_broker *b)
{
    if (!b->syncer)
        return;
    const char *why = NULL;
    bool failed = kb_syncer_failed(b->syncer, &why);
    if (failed && !b->fatal) {
        b->fatal = true;
        char esc[300];
        kb_logf(b, KS_LOG_ERROR, "store_io_error", "\"error\":%s,\"action\":\"fail-stop\"",
                ks_log_str(esc, sizeof esc, why));
    }
    uint64_t durable = kb_syncer_durable(b->syncer);
    size_t i = 0;
    for (; i < b->n_held && (failed || b->held[i].commit <= durable); i++) {
        kb_out *h = &b->held[i];
        if (h->commit <= durable)
            kb_client_send_now(b, h->rid, h->rid_len, &h->body);
        else if (h->request_id) {
            zmq_msg_t err;
            if (kb_pack_client_error(b, h->request_id, KOSMOS__V1__ERROR_CODE__ERROR_CODE_INTERNAL,
                                     "database sync failed; retry later", false, &err) == KS_OK)
                kb_client_send_now(b, h->rid, h->rid_len, &err);
        }
        zmq_msg_close(&h->body);
        b->held_bytes -= h->bytes;
    }
    if (i) {
        memmove(b->held, b->held + i, (b->n_held - i) * sizeof *b->held);
        b->n_held -= i;
    }
}

void kb_held_drain(kb_broker *b)
{
    if (b->syncer && b->n_held)
        kb_syncer_wait(b->syncer, b->commits_written);
    kb_held_release(b);
}

void kb_flush(kb_broker *b, bool committed)
{
    for (size_t i = 0; i < b->n_out; i++) {
        kb_out *o = &b->out[i];
        kb_worker *w = o->to_worker ? kb_worker_by_rid(b, o->rid, o->rid_len) : NULL;
        if (!committed) {
            if (o->post == KB_POST_ADD_LEASE && w)
                w->credit++; /* the dispatch never happened */
            if (!o->to_worker && o->request_id)
                kb_send_client_error(b, o->rid, o->rid_len, o->request_id,
                                     KOSMOS__V1__ERROR_CODE__ERROR_CODE_INTERNAL,
                                     "database write failed; retry later",
                                     o->is_submit && kb_store_fault(b->store) == KB_FAULT_FULL);
            goto next;
        }
        switch (o->post) {
        case KB_POST_WAIT:
            if (b->n_waiters == b->cap_waiters) {
                size_t ncap = b->cap_waiters ? b->cap_waiters * 2 : 16;
                kb_waiter *grown = realloc(b->waiters, ncap * sizeof *grown);
                if (!grown)
                    break; /* the client's long poll times out and it asks again */
                b->waiters = grown;
                b->cap_waiters = ncap;
            }
            b->waiters[b->n_waiters++] = o->waiter;
            break;
        case KB_POST_ADD_LEASE:
            if (w)
                kb_worker_add_lease(b, w, &o->lease);
            break;
        case KB_POST_DROP_LEASE:
            for (size_t k = 0; k < b->n_workers; k++)
                kb_worker_drop_lease(b->workers[k], o->lease.job_id, o->lease.attempt);
            break;
        case KB_POST_NONE: break;
        }
        if (o->has_body && o->to_worker) {
            if (w) {
                kb_send_worker_packed(b, w, &o->body, o->has_image ? &o->image : NULL);
                o->has_body = o->has_image = false;
            } else if (o->post == KB_POST_ADD_LEASE) {
                b->need_sweep = true; /* leased to a worker that vanished meanwhile */
            }
        } else if (o->has_body) {
            o->has_body = false;
            kb_client_deliver(b, o->rid, o->rid_len, &o->body, o->request_id, o->is_submit);
        }
    next:
        if (o->has_body)
            zmq_msg_close(&o->body);
        if (o->has_image)
            zmq_msg_close(&o->image);
    }
    b->n_out = 0;
}

bool kb_store_fatal(kb_broker *b)
{
    if (kb_store_fault(b->store) == KB_FAULT_IO && !b->fatal) {
        b->fatal = true;
        kb_logf(b, KS_LOG_ERROR, "store_io_error", "\"error\":\"%s\",\"action\":\"fail-stop\"",
                ks_error_message());
    }
    return b->fatal;
}

static bool kb_begin(kb_broker *b)
{
    if (kb_store_begin(b->store) == KS_OK)
        return true;
    b->stats.commit_failures++;
    kb_logf(b, KS_LOG_ERROR, "store_begin_failed", "\"error\":\"%s\"", ks_error_message());
    kb_store_fatal(b);
    kb_flush(b, false);
    return false;
}

bool kb_txn_need(kb_broker *b)
{
    if (b->in_txn)
        return true;
    b->in_txn = kb_begin(b);
    return b->in_txn;
}

/* Commits (when st is KS_OK) or rolls back, then flushes the outbox accordingly. The commit's
 * duration is measured on the real clock (never the injected one): it is the disk's. */
static void kb_commit_or_rollback(kb_broker *b, ks_status st)
{
    if (st == KS_OK) {
        bool wrote = kb_store_wrote(b->store);
        uint64_t started = kb_mono_ns();
        st = kb_store_commit(b->store);
        if (st == KS_OK && wrote) {
            kb_durations_add(&b->stats.commit_durations, (kb_mono_ns() - started) / 1000);
            uint32_t frames = kb_store_wal_frames(b->store);
            if (b->syncer)
                kb_syncer_request(b->syncer, ++b->commits_written, frames);
            if (frames >= KB_WAL_RESTART_FRAMES && kb_store_checkpoint(b->store) != KS_OK) {
                kb_logf(b, KS_LOG_WARN, "checkpoint_failed", "\"wal_frames\":%u", frames);
                kb_store_fatal(b);
            }
        }
    }
    if (st != KS_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", ks_error_message());
        kb_store_rollback(b->store);
        b->stats.commit_failures++;
        b->need_sweep = true;
        b->n_woken = 0;
        char esc[300];
        kb_logf(b, kb_store_fault(b->store) == KB_FAULT_FULL ? KS_LOG_WARN : KS_LOG_ERROR,
                "transaction_rolled_back", "\"fault\":%d,\"error\":%s",
                (int)kb_store_fault(b->store), ks_log_str(esc, sizeof esc, why));
        kb_store_fatal(b);
        kb_flush(b, false);
        return;
    }
    b->stats.commits++;
    kb_flush(b, true);
    for (size_t i = 0; i < b->n_woken; i++)
        for (size_t k = 0; k < b->n_waiters; k++)
            if (strcmp(b->waiters[k].job_id, b->woken[i]) == 0)
                b->waiters[k].wake = true;
    b->n_woken = 0;
}

void kb_txn_end(kb_broker *b, ks_status st)
{
    if (!b->in_txn)
        return;
    b->in_txn = false;
    kb_commit_or_rollback(b, st);
}

void kb_note_terminal(kb_broker *b, const char *job_id)
{
    if (b->n_woken == b->cap_woken) {
        size_t ncap = b->cap_woken ? b->cap_woken * 2 : 32;
        void *grown = realloc(b->woken, ncap * sizeof *b->woken);
        if (!grown)
            return; /* the waiter then answers at its timeout */
        b->woken = grown;
        b->cap_woken = ncap;
    }
    snprintf(b->woken[b->n_woken++], KB_JOB_ID_MAX + 1, "%s", job_id);
}
