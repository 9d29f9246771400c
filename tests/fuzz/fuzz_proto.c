/* fuzz_proto: libFuzzer target decoding one kosmos.v1 message type from untrusted bytes.
 *
 * Built once per top-level type with -DFUZZ_MESSAGE=<suffix> (client_request, client_reply,
 * worker_message, broker_to_worker, job, result) as fuzz_proto_<suffix>. Per input it:
 *   1. unpacks with the generated <type>__unpack (NULL = rejected, fine);
 *   2. walks it generically through the descriptors (every field, oneof, repeated element and
 *      unknown field, checking protobuf-c's invariants) and refuses it, as our peers must, if an
 *      unknown field has an invalid field number (see fp_walk_generic);
 *   3. walks an accepted message by hand the way the broker/worker will read it (oneof cases,
 *      NULL optional strings, counts, boxes), re-packs it, checks the length equals
 *      get_packed_size, unpacks that again and checks that a second pack gives the same bytes
 *      (pack(unpack(pack(m))) == pack(m));
 *   4. unpacks once more with an allocator that fails at one allocation chosen from the input,
 *      so that protobuf-c's error paths run (LeakSanitizer reports what they leak).
 * Not a test of libprotobuf-c's internals: Debian's library is not instrumented, so coverage
 * comes from the generated descriptors and from the walks here (docs/fuzzing.md).
 * A broken invariant calls __builtin_trap(), which libFuzzer reports as a crash. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kosmos.pb-c.h"

#ifndef FUZZ_MESSAGE
#error "build with -DFUZZ_MESSAGE=client_request (or client_reply, worker_message, ...)"
#endif

#define FP_CAT3_(a, b, c) a##b##c
#define FP_CAT3(a, b, c) FP_CAT3_(a, b, c)
#define FP_UNPACK FP_CAT3(kosmos__v1__, FUZZ_MESSAGE, __unpack)
#define FP_WALK FP_CAT3(fp_walk_, FUZZ_MESSAGE, )

#define FP_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Folds values into a sink so that the compiler keeps every read. */
static volatile uint64_t fp_sink;

static void fp_use(uint64_t v) { fp_sink = fp_sink * 31u + v; }

static void fp_use_double(double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    fp_use(bits);
}

/* A C string from protobuf-c: NULL (unset) or NUL-terminated; touches every byte. */
static size_t fp_str(const char *s)
{
    if (!s)
        return 0;
    size_t n = strlen(s);
    if (n)
        fp_use((uint8_t)s[0] ^ (uint8_t)s[n - 1]);
    return n;
}

/* ---- Generic walk over the descriptors ------------------------------------------------- */

static int fp_walk_generic(const ProtobufCMessage *m, int depth);

/* Returns the number of unknown fields with an invalid field number below `p` (see
 * fp_walk_generic); 0 for non-message values. */
static int fp_walk_value(const ProtobufCFieldDescriptor *f, const void *p, int depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        fp_use(v);
        break;
    }
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t v;
        memcpy(&v, p, sizeof v);
        fp_use(v);
        break;
    }
    case PROTOBUF_C_TYPE_FLOAT: {
        float v;
        memcpy(&v, p, sizeof v);
        fp_use_double(v);
        break;
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        double v;
        memcpy(&v, p, sizeof v);
        fp_use_double(v);
        break;
    }
    case PROTOBUF_C_TYPE_BOOL: {
        protobuf_c_boolean v;
        memcpy(&v, p, sizeof v);
        FP_CHECK(v == 0 || v == 1); /* protobuf-c normalizes bools */
        fp_use((uint64_t)v);
        break;
    }
    case PROTOBUF_C_TYPE_ENUM: {
        int v;
        memcpy(&v, p, sizeof v);
        /* proto2 enums are closed, but protobuf-c keeps unknown numbers: readers must check. */
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        fp_use(ev ? (uint64_t)fp_str(ev->name) : (uint64_t)(uint32_t)v);
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        fp_use(fp_str(s));
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        FP_CHECK(b->len == 0 || b->data != NULL);
        if (b->len)
            fp_use(b->data[0] ^ b->data[b->len - 1]);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        if (sub) {
            FP_CHECK(sub->descriptor == f->descriptor);
            return fp_walk_generic(sub, depth + 1);
        }
        break;
    }
    default: FP_CHECK(0);
    }
    return 0;
}

static size_t fp_value_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM: return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE: return 8;
    case PROTOBUF_C_TYPE_FLOAT: return 4;
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
    }
    return 0;
}

/* Walks every field of `m` and below. Returns how many unknown fields carry a field number
 * outside 1 .. 2^29-1: protobuf-c 1.4.1 accepts field number 0 in its overlong form (0x80 0x00)
 * and numbers >= 2^29 in 5-byte tags, keeps them as unknown fields and then re-encodes bytes
 * that it (and every other protobuf library) rejects. Our peers must refuse such messages as
 * malformed (docs/protocol.md §13); this is that check. */
static int fp_walk_generic(const ProtobufCMessage *m, int depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    int bad = 0;
    FP_CHECK(d->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    /* Nesting is bounded by the input length; a sanity bound catches a runaway walk. */
    FP_CHECK(depth < 1000);

    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *member = base + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            const char *arr = *(char *const *)member;
            FP_CHECK(n == 0 || arr != NULL);
            size_t step = fp_value_size(f->type);
            for (size_t k = 0; k < n; k++) {
                if (f->type == PROTOBUF_C_TYPE_MESSAGE)
                    FP_CHECK(((ProtobufCMessage *const *)arr)[k] != NULL);
                bad += fp_walk_value(f, arr + k * step, depth);
            }
            fp_use(n);
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which = *(const uint32_t *)(base + f->quantifier_offset);
            if (which != f->id)
                continue;
            /* A set oneof member that is a message or string is never NULL. */
            if (f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING)
                FP_CHECK(*(void *const *)member != NULL);
            bad += fp_walk_value(f, member, depth);
            continue;
        }
        if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset) {
            protobuf_c_boolean has = *(const protobuf_c_boolean *)(base + f->quantifier_offset);
            if (!has)
                continue;
        }
        bad += fp_walk_value(f, member, depth);
    }
    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        const ProtobufCMessageUnknownField *u = &m->unknown_fields[i];
        FP_CHECK(u->len == 0 || u->data != NULL);
        /* Unknown tags are never ones the descriptor knows. */
        FP_CHECK(protobuf_c_message_descriptor_get_field(d, u->tag) == NULL);
        fp_use(u->tag ^ (uint64_t)u->wire_type ^ u->len);
        if (u->tag == 0 || u->tag > 0x1fffffffu)
            bad++;
    }
    return bad;
}

/* ---- Typed walk: what the broker/worker will read -------------------------------------- */

/* Declared here so that each build can leave the others unused without a warning. */
void fp_walk_job(const Kosmos__V1__Job *job);
void fp_walk_result(const Kosmos__V1__Result *r);
void fp_walk_client_request(const Kosmos__V1__ClientRequest *rq);
void fp_walk_client_reply(const Kosmos__V1__ClientReply *rp);
void fp_walk_worker_message(const Kosmos__V1__WorkerMessage *w);
void fp_walk_broker_to_worker(const Kosmos__V1__BrokerToWorker *b);

static void fp_norm_box(const Kosmos__V1__NormalizedBox *b, double w, double h)
{
    if (!b)
        return;
    /* What the worker computes: pixel box and patch pair (HF coordinate_to_patch_index). */
    double x1 = b->has_x1 ? b->x1 : 0, y1 = b->has_y1 ? b->y1 : 0;
    double x2 = b->has_x2 ? b->x2 : 0, y2 = b->has_y2 ? b->y2 : 0;
    int valid = x1 >= 0 && y1 >= 0 && x2 <= 1 && y2 <= 1 && x2 > x1 && y2 > y1;
    if (valid) {
        uint32_t ulx = (uint32_t)(x1 * 32), uly = (uint32_t)(y1 * 32);
        double lx = x2 * 32 - 1, ly = y2 * 32 - 1;
        uint32_t lrx = lx <= 0 ? 0 : (uint32_t)lx, lry = ly <= 0 ? 0 : (uint32_t)ly;
        fp_use(uly * 32 + ulx + lry * 32 + lrx);
    }
    fp_use_double(x1 * w + y1 * h + x2 * w + y2 * h);
}

static void fp_patch_box(const Kosmos__V1__PatchBox *p)
{
    if (!p)
        return;
    uint32_t ul = p->has_ul ? p->ul : 0, lr = p->has_lr ? p->lr : 0;
    if (ul < 1024 && lr < 1024)
        fp_use((ul % 32) + (ul / 32) * 7 + (lr % 32) * 13 + (lr / 32) * 17);
}

void fp_walk_job(const Kosmos__V1__Job *job)
{
    if (!job)
        return;
    fp_use(fp_str(job->idempotency_key));
    switch (job->image_case) {
    case KOSMOS__V1__JOB__IMAGE_IMAGE_DATA: fp_use(job->image_data.len); break;
    case KOSMOS__V1__JOB__IMAGE_IMAGE_URI:
        FP_CHECK(job->image_uri != NULL);
        fp_use(strncmp(job->image_uri, "file://", 7) == 0);
        break;
    case KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE: fp_use(job->image_attached_size); break;
    case KOSMOS__V1__JOB__IMAGE__NOT_SET: break;
    default: FP_CHECK(0); /* protobuf-c only sets known members */
    }
    FP_CHECK(job->n_prompts == 0 || job->prompts != NULL);
    for (size_t i = 0; i < job->n_prompts; i++) {
        const Kosmos__V1__Prompt *p = job->prompts[i];
        FP_CHECK(p != NULL);
        fp_use(fp_str(p->text));
        for (size_t k = 0; k < p->n_phrase_boxes; k++) {
            const Kosmos__V1__PhraseBoxes *pb = p->phrase_boxes[k];
            FP_CHECK(pb != NULL);
            for (size_t j = 0; j < pb->n_boxes; j++) {
                const Kosmos__V1__Box *b = pb->boxes[j];
                FP_CHECK(b != NULL);
                if (b->kind_case == KOSMOS__V1__BOX__KIND_NORMALIZED)
                    fp_norm_box(b->normalized, 1, 1);
                else if (b->kind_case == KOSMOS__V1__BOX__KIND_PATCH)
                    fp_patch_box(b->patch);
                else
                    FP_CHECK(b->kind_case == KOSMOS__V1__BOX__KIND__NOT_SET);
            }
        }
    }
    const Kosmos__V1__GenerationParams *g = job->generation;
    if (g) {
        fp_use(g->has_max_new_tokens ? g->max_new_tokens : 128);
        fp_use(g->has_min_new_tokens ? g->min_new_tokens : 0);
        fp_use(g->has_num_beams ? g->num_beams : 1);
        fp_use(g->has_do_sample && g->do_sample);
        fp_use_double(g->has_temperature ? g->temperature : 1.0);
        fp_use_double(g->has_top_p ? g->top_p : 1.0);
        fp_use(g->has_top_k ? g->top_k : 0);
        fp_use(g->has_seed ? g->seed : 0);
        fp_use(g->has_no_repeat_ngram_size ? g->no_repeat_ngram_size : 3);
    }
    if (job->requirements) {
        fp_use(fp_str(job->requirements->model_id) + fp_str(job->requirements->model_hash));
        fp_use(job->requirements->has_min_device_memory_bytes);
    }
    fp_use(job->has_priority ? (uint64_t)(int64_t)job->priority : 0);
    fp_use(job->has_deadline_unix_ms ? job->deadline_unix_ms : UINT64_MAX);
    fp_use(job->has_outputs ? job->outputs : KOSMOS__V1__OUTPUT_FLAG__OUTPUT_DEFAULT);
    fp_use(fp_str(job->label));
}

void fp_walk_result(const Kosmos__V1__Result *r)
{
    if (!r)
        return;
    fp_use(fp_str(r->job_id) + (r->has_attempt ? r->attempt : 0));
    fp_use((uint64_t)r->status);
    fp_use(fp_str(r->message) + fp_str(r->worker_name) + fp_str(r->device_name));
    double w = r->has_image_width ? r->image_width : 0;
    double h = r->has_image_height ? r->image_height : 0;
    for (size_t i = 0; i < r->n_prompts; i++) {
        const Kosmos__V1__PromptResult *p = r->prompts[i];
        FP_CHECK(p != NULL);
        size_t text_len = fp_str(p->text);
        fp_use(fp_str(p->raw_text) + fp_str(p->message) + (uint64_t)p->status);
        for (size_t k = 0; k < p->n_entities; k++) {
            const Kosmos__V1__Entity *e = p->entities[k];
            FP_CHECK(e != NULL);
            fp_use(fp_str(e->phrase));
            /* A client slicing the text by byte offsets must bounds-check them first. */
            if (p->text && e->has_start_byte && e->has_end_byte && e->start_byte <= e->end_byte &&
                e->end_byte <= text_len)
                fp_use((uint8_t)p->text[e->start_byte]);
            for (size_t j = 0; j < e->n_boxes; j++) {
                FP_CHECK(e->boxes[j] != NULL);
                fp_norm_box(e->boxes[j]->box, w, h);
                fp_patch_box(e->boxes[j]->patch);
            }
            for (size_t j = 0; j < e->n_boxes_px; j++) {
                FP_CHECK(e->boxes_px[j] != NULL);
                fp_norm_box(e->boxes_px[j], 1, 1);
            }
        }
        FP_CHECK(p->n_generated_ids == 0 || p->generated_ids != NULL);
        uint64_t sum = 0;
        for (size_t k = 0; k < p->n_generated_ids; k++)
            sum += p->generated_ids[k];
        fp_use(sum);
        if (p->timings)
            fp_use_double(p->timings->decode_ms + (double)p->timings->new_tokens);
    }
}

static void fp_walk_lease(const Kosmos__V1__Lease *l)
{
    FP_CHECK(l != NULL);
    fp_use(fp_str(l->job_id) + (l->has_attempt ? l->attempt : 0));
}

static void fp_walk_device(const Kosmos__V1__DeviceInfo *d)
{
    if (d)
        fp_use(fp_str(d->vendor) + fp_str(d->name) + d->memory_bytes + fp_str(d->platform));
}

void fp_walk_client_request(const Kosmos__V1__ClientRequest *rq)
{
    fp_use(rq->has_request_id ? rq->request_id : 0);
    fp_use(fp_str(rq->client_id));
    switch (rq->request_case) {
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT:
        FP_CHECK(rq->submit != NULL);
        fp_walk_job(rq->submit->job);
        break;
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH:
        FP_CHECK(rq->fetch != NULL);
        fp_use(fp_str(rq->fetch->job_id) + rq->fetch->wait_ms);
        break;
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_ACK:
        FP_CHECK(rq->ack != NULL);
        fp_use(fp_str(rq->ack->job_id));
        break;
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_CANCEL:
        FP_CHECK(rq->cancel != NULL);
        fp_use(fp_str(rq->cancel->job_id));
        break;
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS:
        FP_CHECK(rq->status != NULL);
        fp_use(rq->status->has_include_workers ? rq->status->include_workers : 1);
        break;
    case KOSMOS__V1__CLIENT_REQUEST__REQUEST__NOT_SET:
        fp_use(0xE5); /* the broker answers ERROR_CODE_UNKNOWN_REQUEST */
        break;
    default: FP_CHECK(0);
    }
}

void fp_walk_client_reply(const Kosmos__V1__ClientReply *rp)
{
    fp_use(rp->request_id + rp->broker_instance);
    switch (rp->reply_case) {
    case KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT: {
        const Kosmos__V1__SubmitReply *s = rp->submit;
        FP_CHECK(s != NULL);
        switch (s->outcome_case) {
        case KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED:
            fp_use(fp_str(s->accepted->job_id) + s->accepted->duplicate);
            break;
        case KOSMOS__V1__SUBMIT_REPLY__OUTCOME_BUSY:
            fp_use(s->busy->retry_after_ms + s->busy->queue_depth);
            break;
        case KOSMOS__V1__SUBMIT_REPLY__OUTCOME_CONFLICT: fp_use(fp_str(s->conflict->job_id)); break;
        case KOSMOS__V1__SUBMIT_REPLY__OUTCOME_REJECTED:
            fp_use((uint64_t)s->rejected->code + fp_str(s->rejected->reason));
            break;
        case KOSMOS__V1__SUBMIT_REPLY__OUTCOME__NOT_SET: break;
        default: FP_CHECK(0);
        }
        break;
    }
    case KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH:
        FP_CHECK(rp->fetch != NULL);
        fp_use(fp_str(rp->fetch->job_id) + (uint64_t)rp->fetch->state + rp->fetch->attempt);
        fp_walk_result(rp->fetch->result);
        break;
    case KOSMOS__V1__CLIENT_REPLY__REPLY_ACK:
        FP_CHECK(rp->ack != NULL);
        fp_use(fp_str(rp->ack->job_id) + (uint64_t)rp->ack->state);
        break;
    case KOSMOS__V1__CLIENT_REPLY__REPLY_CANCEL:
        FP_CHECK(rp->cancel != NULL);
        fp_use(fp_str(rp->cancel->job_id) + rp->cancel->cancelled);
        break;
    case KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS: {
        const Kosmos__V1__StatusReply *s = rp->status;
        FP_CHECK(s != NULL);
        fp_use(fp_str(s->broker_version));
        for (size_t i = 0; i < s->n_queue; i++)
            fp_use((uint64_t)s->queue[i]->state + s->queue[i]->count);
        for (size_t i = 0; i < s->n_workers; i++) {
            fp_use(fp_str(s->workers[i]->worker_name) + s->workers[i]->credit);
            fp_walk_device(s->workers[i]->device);
        }
        fp_use_double(s->jobs_per_second + s->tokens_per_second);
        break;
    }
    case KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR:
        FP_CHECK(rp->error != NULL);
        fp_use((uint64_t)rp->error->code + fp_str(rp->error->message));
        break;
    case KOSMOS__V1__CLIENT_REPLY__REPLY__NOT_SET: break;
    default: FP_CHECK(0);
    }
}

void fp_walk_worker_message(const Kosmos__V1__WorkerMessage *w)
{
    switch (w->message_case) {
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE_READY: {
        const Kosmos__V1__Ready *r = w->ready;
        FP_CHECK(r != NULL);
        fp_use(r->protocol_version + fp_str(r->worker_name) + fp_str(r->model_id) +
               fp_str(r->model_hash) + r->batch_capacity + fp_str(r->software_version));
        fp_walk_device(r->device);
        for (size_t i = 0; i < r->n_running; i++)
            fp_walk_lease(r->running[i]);
        break;
    }
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE_CREDIT:
        FP_CHECK(w->credit != NULL);
        fp_use(w->credit->has_slots ? w->credit->slots : 0);
        break;
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE_HEARTBEAT:
        FP_CHECK(w->heartbeat != NULL);
        fp_use(w->heartbeat->sent_unix_ms);
        for (size_t i = 0; i < w->heartbeat->n_running; i++)
            fp_walk_lease(w->heartbeat->running[i]);
        break;
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE_RESULT:
        FP_CHECK(w->result != NULL);
        fp_walk_result(w->result);
        break;
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE_DISCONNECT:
        FP_CHECK(w->disconnect != NULL);
        fp_use((uint64_t)w->disconnect->code + fp_str(w->disconnect->message));
        break;
    case KOSMOS__V1__WORKER_MESSAGE__MESSAGE__NOT_SET: break;
    default: FP_CHECK(0);
    }
}

void fp_walk_broker_to_worker(const Kosmos__V1__BrokerToWorker *b)
{
    switch (b->message_case) {
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_WELCOME:
        FP_CHECK(b->welcome != NULL);
        fp_use(b->welcome->broker_instance + b->welcome->heartbeat_interval_ms +
               b->welcome->heartbeat_liveness + b->welcome->max_job_ms);
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_HEARTBEAT:
        FP_CHECK(b->heartbeat != NULL);
        fp_use(b->heartbeat->sent_unix_ms + b->heartbeat->n_running);
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH:
        FP_CHECK(b->dispatch != NULL);
        fp_use(fp_str(b->dispatch->job_id) + b->dispatch->attempt +
               b->dispatch->lease_expires_unix_ms);
        fp_walk_job(b->dispatch->job);
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_CANCEL:
        FP_CHECK(b->cancel != NULL);
        fp_use(fp_str(b->cancel->job_id) + b->cancel->attempt + (uint64_t)b->cancel->reason);
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_RESULT_ACK:
        FP_CHECK(b->result_ack != NULL);
        fp_use(fp_str(b->result_ack->job_id) + (uint64_t)b->result_ack->disposition);
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT:
        FP_CHECK(b->disconnect != NULL);
        fp_use((uint64_t)b->disconnect->code + fp_str(b->disconnect->message));
        break;
    case KOSMOS__V1__BROKER_TO_WORKER__MESSAGE__NOT_SET: break;
    default: FP_CHECK(0);
    }
}

/* ---- Re-pack and allocation failure ---------------------------------------------------- */

static void fp_repack(const ProtobufCMessage *m)
{
    size_t size = protobuf_c_message_get_packed_size(m);
    uint8_t *first = malloc(size + 1);
    uint8_t *second = NULL;
    FP_CHECK(first != NULL);
    FP_CHECK(protobuf_c_message_pack(m, first) == size);

    /* The canonical bytes must decode, and encode again to themselves. */
    ProtobufCMessage *again = protobuf_c_message_unpack(m->descriptor, NULL, size, first);
    FP_CHECK(again != NULL);
    size_t size2 = protobuf_c_message_get_packed_size(again);
    FP_CHECK(size2 == size);
    second = malloc(size2 + 1);
    FP_CHECK(second != NULL);
    FP_CHECK(protobuf_c_message_pack(again, second) == size2);
    FP_CHECK(memcmp(first, second, size) == 0);
    protobuf_c_message_free_unpacked(again, NULL);
    free(second);
    free(first);
}

typedef struct fp_alloc_state {
    size_t calls;
    size_t fail_at; /* 1-based; 0 = never fail */
} fp_alloc_state;

static void *fp_alloc(void *data, size_t size)
{
    fp_alloc_state *s = data;
    if (++s->calls == s->fail_at)
        return NULL;
    return malloc(size);
}

static void fp_free(void *data, void *p)
{
    (void)data;
    free(p);
}

/* Unpacks with the k-th allocation failing, k derived from the input; must then fail cleanly. */
static void fp_unpack_with_failing_alloc(const uint8_t *data, size_t size)
{
    fp_alloc_state count = {0, 0};
    ProtobufCAllocator counting = {fp_alloc, fp_free, &count};
    ProtobufCMessage *m = (ProtobufCMessage *)FP_UNPACK(&counting, size, data);
    if (!m)
        return;
    protobuf_c_message_free_unpacked(m, &counting);
    if (count.calls == 0)
        return;

    uint32_t h = 2166136261u; /* FNV-1a: a stable choice of which allocation fails */
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 16777619u;
    fp_alloc_state failing = {0, 1 + h % count.calls};
    ProtobufCAllocator alloc = {fp_alloc, fp_free, &failing};
    m = (ProtobufCMessage *)FP_UNPACK(&alloc, size, data);
    FP_CHECK(m == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ProtobufCMessage *m = (ProtobufCMessage *)FP_UNPACK(NULL, size, data);
    if (!m)
        return 0;
    if (fp_walk_generic(m, 0) == 0) {
        /* Accepted: what a peer goes on to read, store and re-encode. */
        FP_WALK((const void *)m);
        fp_repack(m);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    fp_unpack_with_failing_alloc(data, size);
    return 0;
}
