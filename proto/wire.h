/* wire: KOSMOS1 framing on ZeroMQ sockets (docs/protocol.md §2, §3, §7, §13), shared by the
 * broker, the worker and the C client.
 *
 * kp_recv reads one whole multipart message and classifies it (valid, not ours, wrong version,
 * malformed, too large, bad string), unpacking frame 2 into the envelope type of the endpoint and
 * checking it the way protocol.md requires of every peer: frame counts, the version frame, size
 * limits, unknown field numbers outside 1 .. 2^29-1 (recursively) and UTF-8 without NUL in every
 * string field. kp_send packs an envelope straight into a zmq_msg_t and sends it, with an image
 * frame handed over without a copy. Not here: what a message means (the broker and the worker
 * decide), and the job-content checks of protocol.md §5.1 (the broker's validator).
 *
 * Module prefix: kp_. Library: kosmos_wire. */
#ifndef KP_WIRE_H
#define KP_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>
#include <zmq.h>

#include "kosmos.pb-c.h"
#include "ks_error.h"

#define KP_VERSION "KOSMOS1"
#define KP_VERSION_LEN 7
#define KP_DEFAULT_MAX_MESSAGE_BYTES ((size_t)8 << 20) /* frame 2, protocol.md §10 */
#define KP_DEFAULT_MAX_IMAGE_BYTES ((size_t)64 << 20)  /* frame 3 */
#define KP_MAX_ROUTING_ID 255                          /* libzmq's limit */
#define KP_MAX_FIELD_NUMBER ((1u << 29) - 1)

/* Which envelope frame 2 carries; fixed by the endpoint and the direction (§1). */
typedef enum kp_kind {
    KP_CLIENT_REQUEST,  /* client -> broker: Kosmos__V1__ClientRequest */
    KP_CLIENT_REPLY,    /* broker -> client: Kosmos__V1__ClientReply */
    KP_WORKER_MESSAGE,  /* worker -> broker: Kosmos__V1__WorkerMessage */
    KP_BROKER_TO_WORKER /* broker -> worker: Kosmos__V1__BrokerToWorker */
} kp_kind;

/* What kp_recv made of a message, in the order the checks run. */
typedef enum kp_verdict {
    KP_VALID = 0,
    KP_NOT_OURS,    /* no version frame starting with "KOSMOS": drop and log (§3, §7) */
    KP_BAD_VERSION, /* "KOSMOS<n>" other than KOSMOS1: answer PROTOCOL_VERSION (§3) */
    KP_TOO_LARGE,   /* frame 2 or 3 over its limit: answer TOO_LARGE (§7, §10) */
    KP_MALFORMED,   /* framing wrong, frame 2 did not decode, or an invalid field number */
    KP_BAD_STRING   /* decoded and framed right, but a string is not UTF-8 or holds a NUL */
} kp_verdict;

typedef struct kp_limits {
    size_t max_message_bytes; /* frame 2; 0 = KP_DEFAULT_MAX_MESSAGE_BYTES */
    size_t max_image_bytes;   /* frame 3; 0 = KP_DEFAULT_MAX_IMAGE_BYTES */
} kp_limits;

/* One received message: routing id (ROUTER sockets), CURVE User-Id, the unpacked envelope and
 * the image frame. Opaque; read it with the accessors below. */
typedef struct kp_inbound kp_inbound;

/* Receives one whole multipart message from `socket` (all its parts, whatever their number)
 * and classifies it. `router`: the socket is a ROUTER, so a routing-id frame comes first.
 * `flags`: 0 or ZMQ_DONTWAIT. Returns KS_OK with *out set (caller owns; destroy with
 * kp_inbound_destroy) for every message received, valid or not; KS_OK with *out NULL when
 * ZMQ_DONTWAIT found nothing (or EINTR); KS_ERR_IO/KS_ERR_NOMEM when the socket failed. */
ks_status kp_recv(void *socket, bool router, kp_kind kind, const kp_limits *limits, int flags,
                  kp_inbound **out);

void kp_inbound_destroy(kp_inbound **in);

kp_verdict kp_inbound_verdict(const kp_inbound *in);
/* Why it is not KP_VALID, for logs ("" when valid). Borrowed until destroy. */
const char *kp_inbound_reason(const kp_inbound *in);
/* The routing id (ROUTER only; len 0 otherwise). Borrowed until destroy. */
const void *kp_inbound_routing_id(const kp_inbound *in, size_t *len);
/* The CURVE User-Id of the message (ZAP's answer), or NULL. Borrowed until destroy. */
const char *kp_inbound_user_id(const kp_inbound *in);
/* The unpacked envelope when frame 2 decoded (with any verdict except NOT_OURS, BAD_VERSION
 * and TOO_LARGE), else NULL. Its type follows `kind`. Borrowed until destroy. */
const ProtobufCMessage *kp_inbound_envelope(const kp_inbound *in);
/* request_id of a decoded ClientRequest/ClientReply, else 0. */
uint64_t kp_inbound_request_id(const kp_inbound *in);
/* Frame 3 when valid and present (len 0 and NULL otherwise). Borrowed until destroy. */
const void *kp_inbound_image(const kp_inbound *in, size_t *len);
/* Bytes this message holds in memory (frames and the unpacked envelope, estimated from the
 * frame sizes); for the holder's memory accounting. */
size_t kp_inbound_bytes(const kp_inbound *in);

/* Checks an unpacked message the way protocol.md §13 requires: KS_ERR_FORMAT when it or any
 * sub-message keeps an unknown field whose number is outside 1 .. 2^29-1. */
ks_status kp_check_field_numbers(const ProtobufCMessage *m);

/* Checks every string field of the encoded message `data` (of type `desc`), recursively:
 * KS_ERR_INVALID when one is not UTF-8 or holds a NUL (the C API would cut it there);
 * KS_ERR_FORMAT when the bytes do not parse. */
ks_status kp_check_strings(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len);

/* Sends [routing id][empty][KOSMOS1][envelope]([image]) on `socket` (no routing-id frame when
 * rid_len is 0). The envelope is packed straight into the ZeroMQ message. `image`, if not NULL,
 * is an initialized message that the call takes over in every case (sent or closed). `flags`:
 * 0 or ZMQ_DONTWAIT. On failure returns KS_ERR_IO and leaves errno as ZeroMQ set it:
 * EHOSTUNREACH = the peer is gone (ROUTER_MANDATORY), EAGAIN = its queue is full. */
ks_status kp_send(void *socket, const void *rid, size_t rid_len, const ProtobufCMessage *envelope,
                  zmq_msg_t *image, int flags);

/* Packs `envelope` into *out (uninitialized; the caller then owns it): size, then pack straight
 * into the message buffer. */
ks_status kp_pack(const ProtobufCMessage *envelope, zmq_msg_t *out);

/* As kp_send, with frame 2 already packed: takes over *body (and *image if not NULL) in every
 * case. */
ks_status kp_send_packed(void *socket, const void *rid, size_t rid_len, zmq_msg_t *body,
                         zmq_msg_t *image, int flags);

/* Wraps `data` (len bytes) in *msg without copying; ZeroMQ calls ffn(data, hint) on its I/O
 * thread once the bytes are sent or dropped. Takes ownership of data on success only. */
ks_status kp_frame_wrap(zmq_msg_t *msg, void *data, size_t len, zmq_free_fn *ffn, void *hint);

/* Name of a verdict, e.g. "malformed". Static storage. */
const char *kp_verdict_name(kp_verdict v);

#endif
