/* wire: see wire.h. Reading is "receive every part, then judge": a message is always drained
 * whole, so a bad message never desynchronizes the socket. */
#include "wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ks_utf8.h"

#define KP_MAX_KEPT_FRAMES 6 /* rid + 4 + one spare to tell "too many" */
#define KP_MAX_DEPTH 100     /* nesting the schema never needs; deeper input is malformed */

struct kp_inbound {
    kp_verdict verdict;
    char reason[160];
    kp_kind kind;
    unsigned char rid[KP_MAX_ROUTING_ID];
    size_t rid_len;
    char user_id[64];
    bool has_user_id;
    ProtobufCMessage *envelope;
    uint64_t request_id;
    zmq_msg_t image;
    bool has_image;
    size_t bytes;
};

static const ProtobufCMessageDescriptor *kp_descriptor(kp_kind kind)
{
    switch (kind) {
    case KP_CLIENT_REQUEST: return &kosmos__v1__client_request__descriptor;
    case KP_CLIENT_REPLY: return &kosmos__v1__client_reply__descriptor;
    case KP_WORKER_MESSAGE: return &kosmos__v1__worker_message__descriptor;
    case KP_BROKER_TO_WORKER: return &kosmos__v1__broker_to_worker__descriptor;
    }
    return NULL;
}

const char *kp_verdict_name(kp_verdict v)
{
    switch (v) {
    case KP_VALID: return "valid";
    case KP_NOT_OURS: return "not ours";
    case KP_BAD_VERSION: return "protocol version";
    case KP_TOO_LARGE: return "too large";
    case KP_MALFORMED: return "malformed";
    case KP_BAD_STRING: return "bad string";
    }
    return "?";
}

/* ---- Checks on unpacked and encoded messages ---------------------------------------------- */

static ks_status kp_check_numbers_at(const ProtobufCMessage *m, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    if (depth > KP_MAX_DEPTH)
        return ks_fail(KS_ERR_FORMAT, "messages nested deeper than %d", KP_MAX_DEPTH);
    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        uint32_t tag = m->unknown_fields[i].tag;
        if (tag < 1 || tag > KP_MAX_FIELD_NUMBER)
            return ks_fail(KS_ERR_FORMAT, "%s holds an invalid field number %u", d->name, tag);
    }
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const void *member = base + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)member;
            for (size_t k = 0; k < n; k++) {
                if (arr[k] && kp_check_numbers_at(arr[k], depth + 1) != KS_OK)
                    return KS_ERR_FORMAT;
            }
            continue;
        }
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)member;
        if (sub && kp_check_numbers_at(sub, depth + 1) != KS_OK)
            return KS_ERR_FORMAT;
    }
    return KS_OK;
}

ks_status kp_check_field_numbers(const ProtobufCMessage *m) { return kp_check_numbers_at(m, 0); }

/* Reads a base-128 varint; false when it runs off the end or past 10 bytes. */
static bool kp_varint(const uint8_t *p, size_t len, size_t *pos, uint64_t *v)
{
    uint64_t r = 0;
    for (unsigned shift = 0; shift < 70; shift += 7) {
        if (*pos >= len)
            return false;
        uint8_t b = p[(*pos)++];
        r |= (uint64_t)(b & 0x7F) << (shift < 64 ? shift : 63);
        if (!(b & 0x80)) {
            *v = r;
            return true;
        }
    }
    return false;
}

static ks_status kp_scan(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len,
                         int depth)
{
    size_t pos = 0;
    if (depth > KP_MAX_DEPTH)
        return ks_fail(KS_ERR_FORMAT, "messages nested deeper than %d", KP_MAX_DEPTH);
    while (pos < len) {
        uint64_t key, n;
        if (!kp_varint(p, len, &pos, &key))
            return ks_fail(KS_ERR_FORMAT, "%s: truncated tag", d->name);
        unsigned wire = (unsigned)(key & 7);
        uint64_t number = key >> 3;
        switch (wire) {
        case 0:
            if (!kp_varint(p, len, &pos, &n))
                return ks_fail(KS_ERR_FORMAT, "%s: truncated varint", d->name);
            break;
        case 1:
        case 5: {
            size_t w = wire == 1 ? 8 : 4;
            if (len - pos < w)
                return ks_fail(KS_ERR_FORMAT, "%s: truncated fixed field", d->name);
            pos += w;
            break;
        }
        case 2: {
            if (!kp_varint(p, len, &pos, &n) || n > len - pos)
                return ks_fail(KS_ERR_FORMAT, "%s: truncated length-delimited field", d->name);
            const ProtobufCFieldDescriptor *f =
                number <= KP_MAX_FIELD_NUMBER
                    ? protobuf_c_message_descriptor_get_field(d, (unsigned)number)
                    : NULL;
            if (f && f->type == PROTOBUF_C_TYPE_STRING) {
                if (memchr(p + pos, 0, (size_t)n))
                    return ks_fail(KS_ERR_INVALID, "%s.%s holds a NUL byte", d->name, f->name);
                if (!ks_utf8_valid((const char *)p + pos, (size_t)n))
                    return ks_fail(KS_ERR_INVALID, "%s.%s is not valid UTF-8", d->name, f->name);
            } else if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                ks_status st = kp_scan(f->descriptor, p + pos, (size_t)n, depth + 1);
                if (st != KS_OK)
                    return st;
            }
            pos += (size_t)n;
            break;
        }
        default: return ks_fail(KS_ERR_FORMAT, "%s: wire type %u not allowed", d->name, wire);
        }
    }
    return KS_OK;
}

ks_status kp_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len)
{
    return kp_scan(desc, data, len, 0);
}

/* ---- Receiving ------------------------------------------------------------------------------ */

static void kp_judge(kp_inbound *in, kp_verdict v, const char *reason)
{
    if (in->verdict != KP_VALID)
        return; /* the first finding stands */
    in->verdict = v;
    snprintf(in->reason, sizeof in->reason, "%s", reason);
}

static bool kp_starts_with_kosmos(const zmq_msg_t *m)
{
    return zmq_msg_size((zmq_msg_t *)m) >= 6 &&
           memcmp(zmq_msg_data((zmq_msg_t *)m), "KOSMOS", 6) == 0;
}

/* Frame 3 is announced by a submit (client -> broker) or a dispatch (broker -> worker) whose job
 * has image_attached_size. Returns true and the size when announced. */
static bool kp_announced_image(const kp_inbound *in, uint64_t *size)
{
    const Kosmos__V1__Job *job = NULL;
    if (!in->envelope)
        return false;
    if (in->kind == KP_CLIENT_REQUEST) {
        const Kosmos__V1__ClientRequest *r = (const Kosmos__V1__ClientRequest *)in->envelope;
        if (r->request_case == KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT && r->submit)
            job = r->submit->job;
    } else if (in->kind == KP_BROKER_TO_WORKER) {
        const Kosmos__V1__BrokerToWorker *b = (const Kosmos__V1__BrokerToWorker *)in->envelope;
        if (b->message_case == KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH && b->dispatch)
            job = b->dispatch->job;
    }
    if (!job || job->image_case != KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE)
        return false;
    *size = job->image_attached_size;
    return true;
}

ks_status kp_recv(void *socket, bool router, kp_kind kind, const kp_limits *limits, int flags,
                  kp_inbound **out)
{
    zmq_msg_t frames[KP_MAX_KEPT_FRAMES];
    size_t nkept = 0, nframes = 0;
    ks_status st = KS_OK;
    kp_inbound *in = NULL;
    size_t max_msg = limits && limits->max_message_bytes ? limits->max_message_bytes
                                                         : KP_DEFAULT_MAX_MESSAGE_BYTES;
    size_t max_img = limits && limits->max_image_bytes ? limits->max_image_bytes
                                                       : KP_DEFAULT_MAX_IMAGE_BYTES;
    *out = NULL;

    /* Drain every part; keep the first few. */
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, socket, nframes == 0 ? flags : 0) < 0) {
            int e = errno;
            zmq_msg_close(&m);
            if (nframes == 0 && (e == EAGAIN || e == EINTR))
                goto cleanup;
            st = ks_fail(KS_ERR_IO, "zmq_msg_recv: %s (%s:%d)", zmq_strerror(e), __FILE__,
                         __LINE__);
            goto cleanup;
        }
        nframes++;
        int more = zmq_msg_more(&m);
        if (nkept < KP_MAX_KEPT_FRAMES)
            frames[nkept++] = m;
        else
            zmq_msg_close(&m);
        if (!more)
            break;
    }

    in = calloc(1, sizeof *in);
    if (!in) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory receiving a message");
        goto cleanup;
    }
    in->kind = kind;
    in->bytes = sizeof *in;
    for (size_t i = 0; i < nkept; i++)
        in->bytes += zmq_msg_size(&frames[i]);

    size_t first = 0; /* index of the delimiter */
    if (router) {
        size_t n = zmq_msg_size(&frames[0]);
        if (n > sizeof in->rid)
            n = sizeof in->rid;
        memcpy(in->rid, zmq_msg_data(&frames[0]), n);
        in->rid_len = n;
        first = 1;
    }
    size_t count = nframes - first; /* frames after the routing id */
    bool framing_ok = count >= 3 && count <= 4 && zmq_msg_size(&frames[first]) == 0;

    /* Locate the version frame: normally right after the delimiter. A peer that forgot the
     * delimiter, or sent a non-empty one, still gets MALFORMED when its envelope decodes (§7):
     * only a message with no KOSMOS frame in either place is not ours. */
    size_t ver = first + 1;
    if (nkept > first && zmq_msg_size(&frames[first]) != 0 &&
        (first + 1 >= nkept || !kp_starts_with_kosmos(&frames[first + 1])))
        ver = first;
    if (ver >= nkept || !kp_starts_with_kosmos(&frames[ver])) {
        kp_judge(in, KP_NOT_OURS, "no KOSMOS version frame");
        goto done;
    }
    if (zmq_msg_size(&frames[ver]) != KP_VERSION_LEN ||
        memcmp(zmq_msg_data(&frames[ver]), KP_VERSION, KP_VERSION_LEN) != 0) {
        char got[32];
        size_t n = zmq_msg_size(&frames[ver]);
        if (n > sizeof got - 1)
            n = sizeof got - 1;
        memcpy(got, zmq_msg_data(&frames[ver]), n);
        got[n] = '\0';
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)got[i] < 0x20 || (unsigned char)got[i] > 0x7E)
                got[i] = '?';
        char why[96];
        snprintf(why, sizeof why, "speaks %s, got %s", KP_VERSION, got);
        kp_judge(in, KP_BAD_VERSION, why);
        goto done;
    }
    size_t pb = ver + 1;
    if (pb >= nkept) {
        kp_judge(in, KP_MALFORMED, "no protobuf frame");
        goto done;
    }
    size_t pb_len = zmq_msg_size(&frames[pb]);
    if (pb_len > max_msg) {
        kp_judge(in, KP_TOO_LARGE, "protobuf frame over --max-message-bytes");
        goto done;
    }
    const uint8_t *pb_data = zmq_msg_data(&frames[pb]);
    const char *uid = zmq_msg_gets(&frames[pb], "User-Id");
    if (uid) {
        snprintf(in->user_id, sizeof in->user_id, "%s", uid);
        in->has_user_id = true;
    }
    in->envelope = protobuf_c_message_unpack(kp_descriptor(kind), NULL, pb_len, pb_data);
    if (!in->envelope) {
        kp_judge(in, KP_MALFORMED, "protobuf frame does not decode");
        goto done;
    }
    in->bytes += pb_len * 2; /* unpacked structures: about the encoded size again */
    if (kind == KP_CLIENT_REQUEST)
        in->request_id = ((Kosmos__V1__ClientRequest *)in->envelope)->request_id;
    else if (kind == KP_CLIENT_REPLY)
        in->request_id = ((Kosmos__V1__ClientReply *)in->envelope)->request_id;
    if (kp_check_field_numbers(in->envelope) != KS_OK) {
        kp_judge(in, KP_MALFORMED, ks_error_message());
        goto done;
    }
    uint64_t announced = 0;
    bool has_announce = kp_announced_image(in, &announced);
    size_t img = pb + 1;
    bool has_frame3 = img < nkept;
    if (!framing_ok || ver != first + 1) {
        kp_judge(in, KP_MALFORMED, count > 4 ? "too many frames" : "bad delimiter or frame count");
        goto done;
    }
    if (has_announce != has_frame3) {
        kp_judge(in, KP_MALFORMED,
                 has_frame3 ? "image frame without image_attached_size"
                            : "announced image frame missing");
        goto done;
    }
    if (has_frame3) {
        size_t n = zmq_msg_size(&frames[img]);
        if (n > max_img) {
            kp_judge(in, KP_TOO_LARGE, "image frame over --max-image-bytes");
            goto done;
        }
        if ((uint64_t)n != announced) {
            kp_judge(in, KP_MALFORMED, "image frame size differs from image_attached_size");
            goto done;
        }
    }
    if (kp_check_strings(kp_descriptor(kind), pb_data, pb_len) != KS_OK) {
        kp_judge(in, KP_BAD_STRING, ks_error_message());
        goto done;
    }
    if (has_frame3) {
        zmq_msg_init(&in->image);
        zmq_msg_move(&in->image, &frames[img]); /* frames[img] is left empty */
        in->has_image = true;
    }

done:
    *out = in;
    in = NULL;
cleanup:
    for (size_t i = 0; i < nkept; i++)
        zmq_msg_close(&frames[i]);
    kp_inbound_destroy(&in);
    return st;
}

void kp_inbound_destroy(kp_inbound **pin)
{
    if (!pin || !*pin)
        return;
    kp_inbound *in = *pin;
    if (in->envelope)
        protobuf_c_message_free_unpacked(in->envelope, NULL);
    if (in->has_image)
        zmq_msg_close(&in->image);
    free(in);
    *pin = NULL;
}

kp_verdict kp_inbound_verdict(const kp_inbound *in) { return in->verdict; }

const char *kp_inbound_reason(const kp_inbound *in) { return in->reason; }

const void *kp_inbound_routing_id(const kp_inbound *in, size_t *len)
{
    *len = in->rid_len;
    return in->rid;
}

const char *kp_inbound_user_id(const kp_inbound *in)
{
    return in->has_user_id ? in->user_id : NULL;
}

const ProtobufCMessage *kp_inbound_envelope(const kp_inbound *in) { return in->envelope; }

uint64_t kp_inbound_request_id(const kp_inbound *in) { return in->request_id; }

const void *kp_inbound_image(const kp_inbound *in, size_t *len)
{
    if (!in->has_image) {
        *len = 0;
        return NULL;
    }
    *len = zmq_msg_size((zmq_msg_t *)&in->image);
    return zmq_msg_data((zmq_msg_t *)&in->image);
}

size_t kp_inbound_bytes(const kp_inbound *in) { return in->bytes; }

/* ---- Sending -------------------------------------------------------------------------------- */

static ks_status kp_send_frame(void *socket, zmq_msg_t *m, int flags, const char *what)
{
    if (zmq_msg_send(m, socket, flags) < 0) {
        int e = errno;
        zmq_msg_close(m);
        ks_status st = ks_fail(KS_ERR_IO, "sending %s: %s (%s:%d)", what, zmq_strerror(e), __FILE__,
                               __LINE__);
        errno = e;
        return st;
    }
    return KS_OK;
}

ks_status kp_pack(const ProtobufCMessage *envelope, zmq_msg_t *out)
{
    size_t n = protobuf_c_message_get_packed_size(envelope);
    if (zmq_msg_init_size(out, n) != 0) {
        zmq_msg_init(out);
        errno = ENOMEM;
        return ks_fail(KS_ERR_NOMEM, "zmq_msg_init_size(%zu) failed", n);
    }
    protobuf_c_message_pack(envelope, zmq_msg_data(out));
    return KS_OK;
}

ks_status kp_send_packed(void *socket, const void *rid, size_t rid_len, zmq_msg_t *body,
                         zmq_msg_t *image, int flags)
{
    ks_status st = KS_OK;
    zmq_msg_t m;
    bool body_live = true;
    int sflags = flags | ZMQ_SNDMORE;
    if (rid_len) {
        zmq_msg_init_size(&m, rid_len);
        memcpy(zmq_msg_data(&m), rid, rid_len);
        if ((st = kp_send_frame(socket, &m, sflags, "routing id")) != KS_OK)
            goto cleanup;
    }
    zmq_msg_init(&m);
    if ((st = kp_send_frame(socket, &m, sflags, "delimiter")) != KS_OK)
        goto cleanup;
    zmq_msg_init_size(&m, KP_VERSION_LEN);
    memcpy(zmq_msg_data(&m), KP_VERSION, KP_VERSION_LEN);
    if ((st = kp_send_frame(socket, &m, sflags, "version")) != KS_OK)
        goto cleanup;
    body_live = false; /* sent or closed by kp_send_frame */
    if ((st = kp_send_frame(socket, body, image ? sflags : flags, "envelope")) != KS_OK)
        goto cleanup;
    if (image) {
        zmq_msg_t *img = image;
        image = NULL;
        st = kp_send_frame(socket, img, flags, "image");
    }

cleanup : {
    int e = errno;
    if (body_live)
        zmq_msg_close(body);
    if (image)
        zmq_msg_close(image);
    errno = e;
}
    return st;
}

ks_status kp_send(void *socket, const void *rid, size_t rid_len, const ProtobufCMessage *envelope,
                  zmq_msg_t *image, int flags)
{
    zmq_msg_t body;
    ks_status st = kp_pack(envelope, &body);
    if (st != KS_OK) {
        int e = errno;
        zmq_msg_close(&body);
        if (image)
            zmq_msg_close(image);
        errno = e;
        return st;
    }
    return kp_send_packed(socket, rid, rid_len, &body, image, flags);
}

ks_status kp_frame_wrap(zmq_msg_t *msg, void *data, size_t len, zmq_free_fn *ffn, void *hint)
{
    if (zmq_msg_init_data(msg, data, len, ffn, hint) != 0)
        return ks_fail(KS_ERR_NOMEM, "zmq_msg_init_data: %s", zmq_strerror(errno));
    return KS_OK;
}
