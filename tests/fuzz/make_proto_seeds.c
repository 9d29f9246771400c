/* make_proto_seeds: the sample kosmos.v1 messages (see make_proto_seeds.h) and, unless built with
 * KPS_NO_MAIN, the program that writes them as fuzz seed corpora.
 *
 *   make_proto_seeds CORPUS_ROOT          writes CORPUS_ROOT/fuzz_proto_<message>/<name>.pb
 *   make_proto_seeds --check CORPUS_ROOT  exits 1 if a committed seed differs from the samples
 *
 * Writing only adds or overwrites the files it owns; inputs a fuzzer found and someone committed
 * next to them stay. The samples follow docs/protocol.md and the Kosmos-2 reference example (the
 * snowman caption of docs/protocol.md §12), so the fuzzers start from messages real peers send. */
#include "make_proto_seeds.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kosmos.pb-c.h"

const char *const kps_messages[] = {
    "client_request", "client_reply", "worker_message", "broker_to_worker", "job", "result", NULL};

/* The 67-byte 1x1 PNG: real image bytes, small enough for a seed. */
static const uint8_t tiny_png[] = {0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00,
                                   0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00, 0x01,
                                   0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f,
                                   0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41,
                                   0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00,
                                   0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49,
                                   0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};

#define MODEL_ID "microsoft/kosmos-2-patch14-224"
#define MODEL_HASH "3f1c1a4e2b9d7c6a5e8f0b1d2c3a4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f"

/* ---- Jobs ------------------------------------------------------------------------------- */

/* Storage for one Job and everything it points to. */
typedef struct job_parts {
    Kosmos__V1__Job job;
    Kosmos__V1__Prompt prompt[3];
    Kosmos__V1__Prompt *prompt_ptr[3];
    Kosmos__V1__PhraseBoxes phrase[3];
    Kosmos__V1__PhraseBoxes *phrase_ptr[3];
    Kosmos__V1__Box box[3];
    Kosmos__V1__Box *box_ptr[3];
    Kosmos__V1__NormalizedBox norm[2];
    Kosmos__V1__PatchBox patch;
    Kosmos__V1__GenerationParams gen;
    Kosmos__V1__Requirements req;
} job_parts;

static void parts_init(job_parts *s)
{
    memset(s, 0, sizeof *s);
    kosmos__v1__job__init(&s->job);
    for (int i = 0; i < 3; i++) {
        kosmos__v1__prompt__init(&s->prompt[i]);
        s->prompt_ptr[i] = &s->prompt[i];
        kosmos__v1__phrase_boxes__init(&s->phrase[i]);
        s->phrase_ptr[i] = &s->phrase[i];
        kosmos__v1__box__init(&s->box[i]);
        s->box_ptr[i] = &s->box[i];
    }
    for (int i = 0; i < 2; i++)
        kosmos__v1__normalized_box__init(&s->norm[i]);
    kosmos__v1__patch_box__init(&s->patch);
    kosmos__v1__generation_params__init(&s->gen);
    kosmos__v1__requirements__init(&s->req);
}

static void set_norm(Kosmos__V1__NormalizedBox *b, double x1, double y1, double x2, double y2)
{
    b->has_x1 = b->has_y1 = b->has_x2 = b->has_y2 = 1;
    b->x1 = x1;
    b->y1 = y1;
    b->x2 = x2;
    b->y2 = y2;
}

/* Snowman brief caption, image bytes inline, greedy with max_new_tokens 64; temperature
 * explicitly 0 to show presence (set but 0) apart from unset. */
static void job_inline(job_parts *s)
{
    parts_init(s);
    s->job.idempotency_key = "caption-snowman-0001";
    s->job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_DATA;
    s->job.image_data.data = (uint8_t *)tiny_png;
    s->job.image_data.len = sizeof tiny_png;
    s->prompt[0].text = "<grounding> An image of";
    s->job.n_prompts = 1;
    s->job.prompts = s->prompt_ptr;
    s->gen.has_max_new_tokens = 1;
    s->gen.max_new_tokens = 64;
    s->gen.has_temperature = 1;
    s->gen.temperature = 0.0;
    s->job.generation = &s->gen;
}

/* Image as an attached frame; three prompts: plain, phrase grounding with a normalized box and a
 * patch box, a phrase with no box; sampling parameters; all outputs. */
static void job_attached(job_parts *s)
{
    parts_init(s);
    s->job.idempotency_key = "two-dogs/7f3a";
    s->job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE;
    s->job.image_attached_size = 80024; /* two_dogs.jpg */
    s->prompt[0].text = "<grounding> Describe this image in detail:";
    s->prompt[1].text = "<grounding><phrase> Two puppies</phrase> sit in a field of<phrase> grass"
                        "</phrase>";
    set_norm(&s->norm[0], 0.484375, 0.078125, 0.765625, 0.984375);
    s->box[0].kind_case = KOSMOS__V1__BOX__KIND_NORMALIZED;
    s->box[0].normalized = &s->norm[0];
    s->patch.has_ul = s->patch.has_lr = 1;
    s->patch.ul = 135;
    s->patch.lr = 1008;
    s->box[1].kind_case = KOSMOS__V1__BOX__KIND_PATCH;
    s->box[1].patch = &s->patch;
    s->phrase[0].n_boxes = 2; /* "Two puppies": two boxes */
    s->phrase[0].boxes = s->box_ptr;
    s->phrase[1].n_boxes = 0; /* "grass": none */
    s->prompt[1].n_phrase_boxes = 2;
    s->prompt[1].phrase_boxes = s->phrase_ptr;
    s->prompt[2].text = "<grounding><phrase> It</phrase> is";
    set_norm(&s->norm[1], 0.1, 0.2, 0.3, 0.4);
    s->box[2].kind_case = KOSMOS__V1__BOX__KIND_NORMALIZED;
    s->box[2].normalized = &s->norm[1];
    s->phrase[2].n_boxes = 1;
    s->phrase[2].boxes = &s->box_ptr[2];
    s->prompt[2].n_phrase_boxes = 1;
    s->prompt[2].phrase_boxes = &s->phrase_ptr[2];
    s->job.n_prompts = 3;
    s->job.prompts = s->prompt_ptr;
    s->gen.has_max_new_tokens = s->gen.has_min_new_tokens = s->gen.has_num_beams = 1;
    s->gen.max_new_tokens = 128;
    s->gen.min_new_tokens = 4;
    s->gen.num_beams = 1;
    s->gen.has_do_sample = s->gen.has_temperature = s->gen.has_top_p = 1;
    s->gen.do_sample = 1;
    s->gen.temperature = 0.7;
    s->gen.top_p = 0.9;
    s->gen.has_top_k = 1;
    s->gen.top_k = 50;
    s->gen.has_seed = 1;
    s->gen.seed = 0x9e3779b97f4a7c15ull;
    s->gen.has_no_repeat_ngram_size = 1;
    s->gen.no_repeat_ngram_size = 3;
    s->job.generation = &s->gen;
    s->job.has_outputs = 1;
    s->job.outputs = KOSMOS__V1__OUTPUT_FLAG__OUTPUT_RAW_TEXT |
                     KOSMOS__V1__OUTPUT_FLAG__OUTPUT_GENERATED_IDS |
                     KOSMOS__V1__OUTPUT_FLAG__OUTPUT_BOXES_PX |
                     KOSMOS__V1__OUTPUT_FLAG__OUTPUT_TIMINGS;
}

/* Image on shared storage, with requirements, priority, deadline and a label. */
static void job_uri(job_parts *s)
{
    parts_init(s);
    s->job.idempotency_key = "batch-2024-11-26/000123";
    s->job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_URI;
    s->job.image_uri = "file:///srv/shared/images/carnaby_street.jpg";
    s->prompt[0].text = "<grounding> Question: What is special about this street? Answer:";
    s->job.n_prompts = 1;
    s->job.prompts = s->prompt_ptr;
    s->req.model_id = MODEL_ID;
    s->req.model_hash = MODEL_HASH;
    s->req.has_min_device_memory_bytes = 1;
    s->req.min_device_memory_bytes = 8ull << 30;
    s->job.requirements = &s->req;
    s->job.has_priority = 1;
    s->job.priority = -20;
    s->job.has_deadline_unix_ms = 1;
    s->job.deadline_unix_ms = 1732608000000ull;
    s->job.has_outputs = 1;
    s->job.outputs = KOSMOS__V1__OUTPUT_FLAG__OUTPUT_DEFAULT;
    s->job.label = "street-scenes";
}

/* ---- Results ---------------------------------------------------------------------------- */

typedef struct result_parts {
    Kosmos__V1__Result result;
    Kosmos__V1__PromptResult prompt[2];
    Kosmos__V1__PromptResult *prompt_ptr[2];
    Kosmos__V1__Entity entity[3];
    Kosmos__V1__Entity *entity_ptr[3];
    Kosmos__V1__ResultBox rbox[4];
    Kosmos__V1__ResultBox *rbox_ptr[4];
    Kosmos__V1__NormalizedBox norm[4];
    Kosmos__V1__NormalizedBox px[4];
    Kosmos__V1__NormalizedBox *px_ptr[4];
    Kosmos__V1__PatchBox patch[4];
    Kosmos__V1__Timings timings[2];
    uint32_t ids[16];
} result_parts;

static void result_init(result_parts *s)
{
    memset(s, 0, sizeof *s);
    kosmos__v1__result__init(&s->result);
    for (int i = 0; i < 2; i++) {
        kosmos__v1__prompt_result__init(&s->prompt[i]);
        s->prompt_ptr[i] = &s->prompt[i];
        kosmos__v1__timings__init(&s->timings[i]);
    }
    for (int i = 0; i < 3; i++) {
        kosmos__v1__entity__init(&s->entity[i]);
        s->entity_ptr[i] = &s->entity[i];
    }
    for (int i = 0; i < 4; i++) {
        kosmos__v1__result_box__init(&s->rbox[i]);
        s->rbox_ptr[i] = &s->rbox[i];
        kosmos__v1__normalized_box__init(&s->norm[i]);
        kosmos__v1__normalized_box__init(&s->px[i]);
        s->px_ptr[i] = &s->px[i];
        kosmos__v1__patch_box__init(&s->patch[i]);
    }
}

/* Box number `i` of the parts: patch pair (ul, lr) decoded as the reference does (§11 step 5),
 * in pixels for a width x height image. */
static void set_result_box(result_parts *s, int i, uint32_t ul, uint32_t lr, uint32_t width,
                           uint32_t height)
{
    const double c = 1.0 / 32;
    uint32_t ulx = ul % 32, uly = ul / 32, lrx = lr % 32, lry = lr / 32;
    double x1, y1, x2, y2;
    if (ul == lr || ulx == lrx || uly == lry) {
        x1 = ulx * c, y1 = uly * c, x2 = lrx * c + c, y2 = lry * c + c;
    } else {
        x1 = ulx * c + c / 2, y1 = uly * c + c / 2, x2 = lrx * c + c / 2, y2 = lry * c + c / 2;
    }
    set_norm(&s->norm[i], x1, y1, x2, y2);
    set_norm(&s->px[i], x1 * width, y1 * height, x2 * width, y2 * height);
    s->patch[i].has_ul = s->patch[i].has_lr = 1;
    s->patch[i].ul = ul;
    s->patch[i].lr = lr;
    s->rbox[i].box = &s->norm[i];
    s->rbox[i].patch = &s->patch[i];
}

static void set_entity(Kosmos__V1__Entity *e, char *phrase, uint32_t start_cp, uint32_t end_cp,
                       uint32_t start_byte, uint32_t end_byte)
{
    e->phrase = phrase;
    e->has_start_cp = e->has_end_cp = e->has_start_byte = e->has_end_byte = 1;
    e->start_cp = start_cp;
    e->end_cp = end_cp;
    e->start_byte = start_byte;
    e->end_byte = end_byte;
}

static void set_timings(Kosmos__V1__Timings *t, double decode_ms, uint32_t new_tokens)
{
    t->has_load_ms = t->has_preprocess_ms = t->has_vision_ms = 1;
    t->has_prefill_ms = t->has_decode_ms = t->has_new_tokens = t->has_prompt_tokens = 1;
    t->load_ms = 41.25;
    t->preprocess_ms = 6.5;
    t->vision_ms = 88.0;
    t->prefill_ms = 19.75;
    t->decode_ms = decode_ms;
    t->new_tokens = new_tokens;
    t->prompt_tokens = 71;
}

static void result_common(result_parts *s, char *job_id, uint32_t attempt, uint32_t w, uint32_t h)
{
    s->result.job_id = job_id;
    s->result.has_attempt = 1;
    s->result.attempt = attempt;
    s->result.has_status = 1;
    s->result.status = KOSMOS__V1__STATUS__STATUS_OK;
    s->result.has_image_width = s->result.has_image_height = 1;
    s->result.image_width = w;
    s->result.image_height = h;
    s->result.worker_name = "gpu-node-3/gpu0";
    s->result.device_name = "NVIDIA GeForce RTX 4090";
    s->result.has_started_unix_ms = s->result.has_finished_unix_ms = 1;
    s->result.started_unix_ms = 1732600000000ull;
    s->result.finished_unix_ms = 1732600000734ull;
}

/* Snowman (1024x1024): two prompts, both OK; the second is French so that code-point and byte
 * offsets differ ("Voilà"). Everything requested: raw text, ids, pixel boxes, timings. */
static void result_snowman(result_parts *s)
{
    static const uint32_t ids[] = {64007, 10,    21,    14,   8, 64008, 64009,
                                   64057, 64876, 64010, 3771, 4, 2};
    result_init(s);
    result_common(s, "01JDQ7Z9K3M4N5P6Q7R8S9T0VW", 1, 1024, 1024);
    Kosmos__V1__PromptResult *p = &s->prompt[0];
    p->has_prompt_index = 1;
    p->prompt_index = 0;
    p->has_status = 1;
    p->status = KOSMOS__V1__STATUS__STATUS_OK;
    p->text = "An image of a snowman warming himself by a fire.";
    p->raw_text = "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044>"
                  "<patch_index_0863></object> warming himself by<phrase> a fire</phrase><object>"
                  "<patch_index_0005><patch_index_0911></object>.";
    set_entity(&s->entity[0], "a snowman", 12, 21, 12, 21);
    set_result_box(s, 0, 44, 863, 1024, 1024);
    s->entity[0].n_boxes = 1;
    s->entity[0].boxes = &s->rbox_ptr[0];
    s->entity[0].n_boxes_px = 1;
    s->entity[0].boxes_px = &s->px_ptr[0];
    set_entity(&s->entity[1], "a fire", 41, 47, 41, 47);
    set_result_box(s, 1, 5, 911, 1024, 1024);
    s->entity[1].n_boxes = 1;
    s->entity[1].boxes = &s->rbox_ptr[1];
    s->entity[1].n_boxes_px = 1;
    s->entity[1].boxes_px = &s->px_ptr[1];
    p->n_entities = 2;
    p->entities = &s->entity_ptr[0];
    memcpy(s->ids, ids, sizeof ids);
    p->n_generated_ids = sizeof ids / sizeof ids[0];
    p->generated_ids = s->ids;
    set_timings(&s->timings[0], 231.5, 13);
    p->timings = &s->timings[0];

    p = &s->prompt[1];
    p->has_prompt_index = 1;
    p->prompt_index = 1;
    p->has_status = 1;
    p->status = KOSMOS__V1__STATUS__STATUS_OK;
    p->text = "Voil\xc3\xa0 un bonhomme de neige pr\xc3\xa8s du feu.";
    p->raw_text = "<grounding> Voil\xc3\xa0<phrase> un bonhomme de neige</phrase><object>"
                  "<patch_index_0044><patch_index_0863></object> pr\xc3\xa8s du feu.";
    set_entity(&s->entity[2], "un bonhomme de neige", 6, 26, 7, 27);
    set_result_box(s, 2, 44, 863, 1024, 1024);
    s->entity[2].n_boxes = 1;
    s->entity[2].boxes = &s->rbox_ptr[2];
    s->entity[2].n_boxes_px = 1;
    s->entity[2].boxes_px = &s->px_ptr[2];
    p->n_entities = 1;
    p->entities = &s->entity_ptr[2];
    p->has_seed = 1;
    p->seed = 42;
    set_timings(&s->timings[1], 310.0, 17);
    p->timings = &s->timings[1];
    s->result.n_prompts = 2;
    s->result.prompts = s->prompt_ptr;
    s->result.label = "snowman-demo";
}

/* Two dogs (1200x602): one phrase with two boxes; second prompt failed retriably. */
static void result_two_dogs(result_parts *s)
{
    result_init(s);
    result_common(s, "01JDQ80000AAAABBBBCCCCDDDD", 2, 1200, 602);
    Kosmos__V1__PromptResult *p = &s->prompt[0];
    p->has_prompt_index = 1;
    p->prompt_index = 0;
    p->has_status = 1;
    p->status = KOSMOS__V1__STATUS__STATUS_OK;
    p->text = "Two puppies sit in a field of grass.";
    set_entity(&s->entity[0], "Two puppies", 0, 11, 0, 11);
    set_result_box(s, 0, 79, 1016, 1200, 602);
    set_result_box(s, 1, 135, 1008, 1200, 602);
    s->entity[0].n_boxes = 2;
    s->entity[0].boxes = &s->rbox_ptr[0];
    s->entity[0].n_boxes_px = 2;
    s->entity[0].boxes_px = &s->px_ptr[0];
    set_entity(&s->entity[1], "grass", 30, 35, 30, 35);
    set_result_box(s, 2, 480, 1023, 1200, 602);
    s->entity[1].n_boxes = 1;
    s->entity[1].boxes = &s->rbox_ptr[2];
    s->entity[1].n_boxes_px = 1;
    s->entity[1].boxes_px = &s->px_ptr[2];
    p->n_entities = 2;
    p->entities = s->entity_ptr;
    p = &s->prompt[1];
    p->has_prompt_index = 1;
    p->prompt_index = 1;
    p->has_status = 1;
    p->status = KOSMOS__V1__STATUS__STATUS_FAILED;
    p->has_retriable = 1;
    p->retriable = 1;
    p->message = "clEnqueueNDRangeKernel: CL_OUT_OF_RESOURCES";
    s->result.n_prompts = 2;
    s->result.prompts = s->prompt_ptr;
}

/* The whole job failed: the image does not decode. Every prompt carries the job's status. */
static void result_failed(result_parts *s)
{
    result_init(s);
    result_common(s, "01JDQ81111EEEEFFFFGGGGHHHH", 1, 0, 0);
    s->result.status = KOSMOS__V1__STATUS__STATUS_FAILED;
    s->result.has_retriable = 1;
    s->result.retriable = 0;
    s->result.message = "image: VipsForeignLoad: buffer is not in a known format";
    for (int i = 0; i < 2; i++) {
        Kosmos__V1__PromptResult *p = &s->prompt[i];
        p->has_prompt_index = 1;
        p->prompt_index = (uint32_t)i;
        p->has_status = 1;
        p->status = KOSMOS__V1__STATUS__STATUS_FAILED;
        p->has_retriable = 1;
        p->retriable = 0;
        p->message = s->result.message;
    }
    s->result.n_prompts = 2;
    s->result.prompts = s->prompt_ptr;
}

/* ---- Envelopes -------------------------------------------------------------------------- */

static void visit_client_requests(kps_visit_fn fn, void *user)
{
    job_parts jp;
    Kosmos__V1__ClientRequest rq;
    Kosmos__V1__SubmitRequest submit;
    kosmos__v1__submit_request__init(&submit);

    static void (*const jobs[])(job_parts *) = {job_inline, job_attached, job_uri};
    static const char *const names[] = {"submit_inline_image", "submit_attached_image",
                                        "submit_image_uri"};
    for (int i = 0; i < 3; i++) {
        jobs[i](&jp);
        kosmos__v1__client_request__init(&rq);
        rq.has_request_id = 1;
        rq.request_id = 1 + (uint64_t)i;
        rq.client_id = "alice@lab";
        rq.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT;
        submit.job = &jp.job;
        rq.submit = &submit;
        fn("client_request", names[i], &rq.base, user);
    }

    Kosmos__V1__FetchRequest fetch;
    kosmos__v1__fetch_request__init(&fetch);
    fetch.job_id = "01JDQ7Z9K3M4N5P6Q7R8S9T0VW";
    fetch.has_wait_ms = 1;
    fetch.wait_ms = 10000;
    kosmos__v1__client_request__init(&rq);
    rq.has_request_id = 1;
    rq.request_id = 4;
    rq.client_id = "alice@lab";
    rq.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH;
    rq.fetch = &fetch;
    fn("client_request", "fetch_wait", &rq.base, user);

    Kosmos__V1__AckRequest ack;
    kosmos__v1__ack_request__init(&ack);
    ack.job_id = fetch.job_id;
    rq.request_id = 5;
    rq.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_ACK;
    rq.ack = &ack;
    fn("client_request", "ack", &rq.base, user);

    Kosmos__V1__CancelRequest cancel;
    kosmos__v1__cancel_request__init(&cancel);
    cancel.job_id = "01JDQ80000AAAABBBBCCCCDDDD";
    rq.request_id = 6;
    rq.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_CANCEL;
    rq.cancel = &cancel;
    fn("client_request", "cancel", &rq.base, user);

    Kosmos__V1__StatusRequest status;
    kosmos__v1__status_request__init(&status);
    status.has_include_workers = 1;
    status.include_workers = 1;
    rq.request_id = 7;
    rq.client_id = NULL; /* anonymous, as a CURVE client would send */
    rq.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    rq.status = &status;
    fn("client_request", "status", &rq.base, user);
}

static void reply_init(Kosmos__V1__ClientReply *r, uint64_t request_id)
{
    kosmos__v1__client_reply__init(r);
    r->has_request_id = 1;
    r->request_id = request_id;
    r->has_broker_instance = 1;
    r->broker_instance = 0x5eedf00dcafe1234ull;
}

static void visit_client_replies(kps_visit_fn fn, void *user)
{
    Kosmos__V1__ClientReply r;
    Kosmos__V1__SubmitReply sr;

    Kosmos__V1__SubmitReply__Accepted acc;
    kosmos__v1__submit_reply__accepted__init(&acc);
    acc.job_id = "01JDQ7Z9K3M4N5P6Q7R8S9T0VW";
    acc.has_duplicate = 1;
    acc.duplicate = 0;
    kosmos__v1__submit_reply__init(&sr);
    sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED;
    sr.accepted = &acc;
    reply_init(&r, 1);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT;
    r.submit = &sr;
    fn("client_reply", "submit_accepted", &r.base, user);

    Kosmos__V1__SubmitReply__Busy busy;
    kosmos__v1__submit_reply__busy__init(&busy);
    busy.has_retry_after_ms = busy.has_queue_depth = 1;
    busy.retry_after_ms = 2000;
    busy.queue_depth = 100000;
    kosmos__v1__submit_reply__init(&sr);
    sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_BUSY;
    sr.busy = &busy;
    reply_init(&r, 2);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT;
    r.submit = &sr;
    fn("client_reply", "submit_busy", &r.base, user);

    Kosmos__V1__SubmitReply__Conflict conflict;
    kosmos__v1__submit_reply__conflict__init(&conflict);
    conflict.job_id = "01JDQ7Z9K3M4N5P6Q7R8S9T0VW";
    kosmos__v1__submit_reply__init(&sr);
    sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_CONFLICT;
    sr.conflict = &conflict;
    reply_init(&r, 3);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT;
    r.submit = &sr;
    fn("client_reply", "submit_conflict", &r.base, user);

    Kosmos__V1__SubmitReply__Rejected rej;
    kosmos__v1__submit_reply__rejected__init(&rej);
    rej.has_code = 1;
    rej.code = KOSMOS__V1__REJECT_CODE__REJECT_CODE_INVALID;
    rej.reason = "prompts[1]: 2 phrases but 1 phrase_boxes entries";
    kosmos__v1__submit_reply__init(&sr);
    sr.outcome_case = KOSMOS__V1__SUBMIT_REPLY__OUTCOME_REJECTED;
    sr.rejected = &rej;
    reply_init(&r, 4);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT;
    r.submit = &sr;
    fn("client_reply", "submit_rejected", &r.base, user);

    Kosmos__V1__FetchReply fr;
    kosmos__v1__fetch_reply__init(&fr);
    fr.job_id = "01JDQ80000AAAABBBBCCCCDDDD";
    fr.has_state = fr.has_attempt = fr.has_queue_position = fr.has_submitted_unix_ms = 1;
    fr.state = KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED;
    fr.attempt = 0;
    fr.queue_position = 17;
    fr.submitted_unix_ms = 1732599999000ull;
    reply_init(&r, 5);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH;
    r.fetch = &fr;
    fn("client_reply", "fetch_queued", &r.base, user);

    result_parts rp;
    result_snowman(&rp);
    kosmos__v1__fetch_reply__init(&fr);
    fr.job_id = rp.result.job_id;
    fr.has_state = fr.has_attempt = fr.has_submitted_unix_ms = 1;
    fr.state = KOSMOS__V1__JOB_STATE__JOB_STATE_DONE;
    fr.attempt = 1;
    fr.submitted_unix_ms = 1732599999000ull;
    fr.result = &rp.result;
    reply_init(&r, 6);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH;
    r.fetch = &fr;
    fn("client_reply", "fetch_done", &r.base, user);

    Kosmos__V1__AckReply ar;
    kosmos__v1__ack_reply__init(&ar);
    ar.job_id = rp.result.job_id;
    ar.has_state = 1;
    ar.state = KOSMOS__V1__JOB_STATE__JOB_STATE_ACKED;
    reply_init(&r, 7);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_ACK;
    r.ack = &ar;
    fn("client_reply", "ack", &r.base, user);

    Kosmos__V1__CancelReply cr;
    kosmos__v1__cancel_reply__init(&cr);
    cr.job_id = "01JDQ80000AAAABBBBCCCCDDDD";
    cr.has_cancelled = cr.has_state = 1;
    cr.cancelled = 1;
    cr.state = KOSMOS__V1__JOB_STATE__JOB_STATE_CANCELLED;
    reply_init(&r, 8);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_CANCEL;
    r.cancel = &cr;
    fn("client_reply", "cancel", &r.base, user);

    Kosmos__V1__StatusReply st;
    Kosmos__V1__StateCount sc[3], *sc_ptr[3];
    static const Kosmos__V1__JobState states[3] = {KOSMOS__V1__JOB_STATE__JOB_STATE_QUEUED,
                                                   KOSMOS__V1__JOB_STATE__JOB_STATE_RUNNING,
                                                   KOSMOS__V1__JOB_STATE__JOB_STATE_DONE};
    for (int i = 0; i < 3; i++) {
        kosmos__v1__state_count__init(&sc[i]);
        sc[i].has_state = sc[i].has_count = 1;
        sc[i].state = states[i];
        sc[i].count = (uint64_t)(42 >> i);
        sc_ptr[i] = &sc[i];
    }
    Kosmos__V1__DeviceInfo dev;
    kosmos__v1__device_info__init(&dev);
    dev.vendor = "NVIDIA Corporation";
    dev.name = "NVIDIA GeForce RTX 4090";
    dev.has_memory_bytes = dev.has_compute_units = 1;
    dev.memory_bytes = 25393692672ull;
    dev.compute_units = 128;
    dev.driver_version = "550.54.14";
    dev.platform = "NVIDIA CUDA";
    Kosmos__V1__WorkerInfo wi, *wi_ptr = &wi;
    kosmos__v1__worker_info__init(&wi);
    wi.worker_name = "gpu-node-3/gpu0";
    wi.model_id = MODEL_ID;
    wi.model_hash = MODEL_HASH;
    wi.device = &dev;
    wi.has_batch_capacity = wi.has_credit = wi.has_running = wi.has_connected_unix_ms = 1;
    wi.batch_capacity = 4;
    wi.credit = 1;
    wi.running = 3;
    wi.connected_unix_ms = 1732590000000ull;
    wi.has_last_heartbeat_ms_ago = wi.has_jobs_done = 1;
    wi.last_heartbeat_ms_ago = 412;
    wi.jobs_done = 10233;
    kosmos__v1__status_reply__init(&st);
    st.broker_version = "0.1.0";
    st.has_broker_instance = st.has_uptime_ms = 1;
    st.broker_instance = 0x5eedf00dcafe1234ull;
    st.uptime_ms = 86400000;
    st.n_queue = 3;
    st.queue = sc_ptr;
    st.n_workers = 1;
    st.workers = &wi_ptr;
    st.has_total_submitted = st.has_total_done = st.has_total_failed = 1;
    st.has_total_dead = st.has_total_expired = st.has_total_cancelled = 1;
    st.total_submitted = 10300;
    st.total_done = 10233;
    st.total_failed = 12;
    st.total_dead = 1;
    st.total_expired = 3;
    st.total_cancelled = 9;
    st.has_jobs_per_second = st.has_tokens_per_second = 1;
    st.jobs_per_second = 3.25;
    st.tokens_per_second = 412.5;
    reply_init(&r, 9);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS;
    r.status = &st;
    fn("client_reply", "status", &r.base, user);

    Kosmos__V1__ErrorReply er;
    kosmos__v1__error_reply__init(&er);
    er.has_code = 1;
    er.code = KOSMOS__V1__ERROR_CODE__ERROR_CODE_NOT_FOUND;
    er.message = "no job 01JDQ7ZZZZ for client alice@lab";
    reply_init(&r, 10);
    r.reply_case = KOSMOS__V1__CLIENT_REPLY__REPLY_ERROR;
    r.error = &er;
    fn("client_reply", "error_not_found", &r.base, user);
}

static void visit_worker_messages(kps_visit_fn fn, void *user)
{
    Kosmos__V1__WorkerMessage w;
    Kosmos__V1__Lease lease[2], *lease_ptr[2];
    for (int i = 0; i < 2; i++) {
        kosmos__v1__lease__init(&lease[i]);
        lease[i].has_attempt = 1;
        lease_ptr[i] = &lease[i];
    }
    lease[0].job_id = "01JDQ7Z9K3M4N5P6Q7R8S9T0VW";
    lease[0].attempt = 1;
    lease[1].job_id = "01JDQ80000AAAABBBBCCCCDDDD";
    lease[1].attempt = 2;

    Kosmos__V1__DeviceInfo dev;
    kosmos__v1__device_info__init(&dev);
    dev.vendor = "Advanced Micro Devices, Inc.";
    dev.name = "gfx1100";
    dev.has_memory_bytes = dev.has_compute_units = 1;
    dev.memory_bytes = 25753026560ull;
    dev.compute_units = 48;
    dev.driver_version = "3602.0 (HSA1.1,LC)";
    dev.platform = "AMD Accelerated Parallel Processing";
    Kosmos__V1__Ready ready;
    kosmos__v1__ready__init(&ready);
    ready.has_protocol_version = ready.has_worker_instance = ready.has_batch_capacity = 1;
    ready.protocol_version = 1;
    ready.worker_name = "gpu-node-7/gpu1";
    ready.worker_instance = 0x0123456789abcdefull;
    ready.model_id = MODEL_ID;
    ready.model_hash = MODEL_HASH;
    ready.device = &dev;
    ready.batch_capacity = 4;
    ready.software_version = "0.1.0";
    kosmos__v1__worker_message__init(&w);
    w.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_READY;
    w.ready = &ready;
    fn("worker_message", "ready", &w.base, user);
    ready.n_running = 2; /* after a broker restart, still computing two jobs */
    ready.running = lease_ptr;
    fn("worker_message", "ready_reconnect", &w.base, user);

    Kosmos__V1__Credit credit;
    kosmos__v1__credit__init(&credit);
    credit.has_slots = 1;
    credit.slots = 4;
    kosmos__v1__worker_message__init(&w);
    w.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_CREDIT;
    w.credit = &credit;
    fn("worker_message", "credit", &w.base, user);

    Kosmos__V1__Heartbeat hb;
    kosmos__v1__heartbeat__init(&hb);
    hb.has_sent_unix_ms = 1;
    hb.sent_unix_ms = 1732600000500ull;
    hb.n_running = 2;
    hb.running = lease_ptr;
    kosmos__v1__worker_message__init(&w);
    w.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_HEARTBEAT;
    w.heartbeat = &hb;
    fn("worker_message", "heartbeat", &w.base, user);
    /* v1.1: the first lease computing, the second queued behind it */
    lease[0].has_started = lease[1].has_started = 1;
    lease[0].started = 1;
    fn("worker_message", "heartbeat_started", &w.base, user);
    lease[0].has_started = lease[1].has_started = 0;
    lease[0].started = 0;

    static void (*const results[])(result_parts *) = {result_snowman, result_two_dogs,
                                                      result_failed};
    static const char *const names[] = {"result_ok", "result_retriable", "result_failed"};
    for (int i = 0; i < 3; i++) {
        result_parts rp;
        results[i](&rp);
        rp.result.label = NULL; /* the broker adds the label, the worker does not know it */
        kosmos__v1__worker_message__init(&w);
        w.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_RESULT;
        w.result = &rp.result;
        fn("worker_message", names[i], &w.base, user);
    }

    Kosmos__V1__Disconnect dis;
    kosmos__v1__disconnect__init(&dis);
    dis.has_code = 1;
    dis.code = KOSMOS__V1__DISCONNECT__CODE__CODE_SHUTDOWN;
    dis.message = "SIGTERM";
    kosmos__v1__worker_message__init(&w);
    w.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_DISCONNECT;
    w.disconnect = &dis;
    fn("worker_message", "disconnect", &w.base, user);
}

static void visit_broker_to_worker(kps_visit_fn fn, void *user)
{
    Kosmos__V1__BrokerToWorker b;

    Kosmos__V1__Welcome wel;
    kosmos__v1__welcome__init(&wel);
    wel.has_broker_instance = wel.has_heartbeat_interval_ms = 1;
    wel.has_heartbeat_liveness = wel.has_max_job_ms = 1;
    wel.broker_instance = 0x5eedf00dcafe1234ull;
    wel.heartbeat_interval_ms = 1000;
    wel.heartbeat_liveness = 3;
    wel.max_job_ms = 600000;
    kosmos__v1__broker_to_worker__init(&b);
    b.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_WELCOME;
    b.welcome = &wel;
    fn("broker_to_worker", "welcome", &b.base, user);
    char *roots[] = {"/srv/kosmos/images", "/mnt/shared"};
    wel.image_roots = roots; /* v1.1 */
    wel.n_image_roots = 2;
    wel.has_confirms_start = wel.confirms_start = 1;
    fn("broker_to_worker", "welcome_roots_confirms", &b.base, user);

    Kosmos__V1__Heartbeat hb;
    kosmos__v1__heartbeat__init(&hb);
    hb.has_sent_unix_ms = 1;
    hb.sent_unix_ms = 1732600000501ull;
    kosmos__v1__broker_to_worker__init(&b);
    b.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_HEARTBEAT;
    b.heartbeat = &hb;
    fn("broker_to_worker", "heartbeat", &b.base, user);
    Kosmos__V1__Lease started, *started_ptr[1] = {&started};
    kosmos__v1__lease__init(&started);
    started.job_id = "01JDQ7Z9K3M4N5P6Q7R8S9T0VW";
    started.has_attempt = started.has_started = started.started = 1;
    started.attempt = 1;
    hb.n_running = 1; /* v1.1: the start confirmation */
    hb.running = started_ptr;
    fn("broker_to_worker", "heartbeat_confirms_start", &b.base, user);

    static void (*const jobs[])(job_parts *) = {job_attached, job_uri};
    static const char *const names[] = {"dispatch_attached_image", "dispatch_image_uri"};
    for (int i = 0; i < 2; i++) {
        job_parts jp;
        jobs[i](&jp);
        Kosmos__V1__Dispatch d;
        kosmos__v1__dispatch__init(&d);
        d.job_id = "01JDQ80000AAAABBBBCCCCDDDD";
        d.has_attempt = d.has_lease_expires_unix_ms = 1;
        d.attempt = 2 + (uint32_t)i;
        d.job = &jp.job;
        d.lease_expires_unix_ms = 1732600600000ull;
        kosmos__v1__broker_to_worker__init(&b);
        b.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISPATCH;
        b.dispatch = &d;
        fn("broker_to_worker", names[i], &b.base, user);
    }

    Kosmos__V1__Cancel c;
    kosmos__v1__cancel__init(&c);
    c.job_id = "01JDQ80000AAAABBBBCCCCDDDD";
    c.has_attempt = c.has_reason = 1;
    c.attempt = 2;
    c.reason = KOSMOS__V1__CANCEL__REASON__REASON_CLIENT;
    kosmos__v1__broker_to_worker__init(&b);
    b.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_CANCEL;
    b.cancel = &c;
    fn("broker_to_worker", "cancel", &b.base, user);

    Kosmos__V1__ResultAck ra;
    kosmos__v1__result_ack__init(&ra);
    ra.job_id = "01JDQ7Z9K3M4N5P6Q7R8S9T0VW";
    ra.has_attempt = ra.has_disposition = 1;
    ra.attempt = 1;
    ra.disposition = KOSMOS__V1__RESULT_ACK__DISPOSITION__DISPOSITION_STORED;
    kosmos__v1__broker_to_worker__init(&b);
    b.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_RESULT_ACK;
    b.result_ack = &ra;
    fn("broker_to_worker", "result_ack", &b.base, user);

    Kosmos__V1__Disconnect dis;
    kosmos__v1__disconnect__init(&dis);
    dis.has_code = 1;
    dis.code = KOSMOS__V1__DISCONNECT__CODE__CODE_NOT_REGISTERED;
    dis.message = "unknown worker: send Ready";
    kosmos__v1__broker_to_worker__init(&b);
    b.message_case = KOSMOS__V1__BROKER_TO_WORKER__MESSAGE_DISCONNECT;
    b.disconnect = &dis;
    fn("broker_to_worker", "disconnect_not_registered", &b.base, user);
    dis.code = KOSMOS__V1__DISCONNECT__CODE__CODE_RETRY_LATER; /* v1.1 */
    dis.message = "too many workers (--max-workers): retry later";
    dis.has_retry_after_ms = 1;
    dis.retry_after_ms = 3000;
    fn("broker_to_worker", "disconnect_retry_later", &b.base, user);
}

void kps_for_each_sample(kps_visit_fn fn, void *user)
{
    visit_client_requests(fn, user);
    visit_client_replies(fn, user);
    visit_worker_messages(fn, user);
    visit_broker_to_worker(fn, user);

    job_parts jp;
    job_inline(&jp);
    fn("job", "inline_image", &jp.job.base, user);
    job_attached(&jp);
    fn("job", "attached_image_three_prompts", &jp.job.base, user);
    job_uri(&jp);
    fn("job", "image_uri_requirements", &jp.job.base, user);

    result_parts rp;
    result_snowman(&rp);
    fn("result", "snowman_two_prompts", &rp.result.base, user);
    result_two_dogs(&rp);
    fn("result", "two_dogs_multi_box", &rp.result.base, user);
    result_failed(&rp);
    fn("result", "image_unreadable", &rp.result.base, user);
}

#ifndef KPS_NO_MAIN

typedef struct seed_writer {
    const char *root;
    int check;
    int failures;
    int count;
} seed_writer;

/* Reads a whole file into a malloc'd buffer; NULL if it cannot. */
static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long size;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto cleanup;
    buf = malloc((size_t)size + 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        buf = NULL;
        goto cleanup;
    }
    *len = (size_t)size;
cleanup:
    fclose(f);
    return buf;
}

static void write_seed(const char *message, const char *name, const ProtobufCMessage *msg,
                       void *user)
{
    seed_writer *w = user;
    char path[4096];
    size_t size = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(size + 1);
    if (!buf) {
        fprintf(stderr, "make_proto_seeds: out of memory\n");
        w->failures++;
        return;
    }
    if (protobuf_c_message_pack(msg, buf) != size) {
        fprintf(stderr, "make_proto_seeds: %s/%s: pack size mismatch\n", message, name);
        w->failures++;
        goto cleanup;
    }
    snprintf(path, sizeof path, "%s/fuzz_proto_%s/%s.pb", w->root, message, name);
    w->count++;
    if (w->check) {
        size_t have_len = 0;
        uint8_t *have = read_all(path, &have_len);
        if (!have || have_len != size || memcmp(have, buf, size) != 0) {
            fprintf(stderr, "make_proto_seeds: %s is %s; rerun make_proto_seeds %s\n", path,
                    have ? "out of date" : "missing", w->root);
            w->failures++;
        }
        free(have);
    } else {
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, size, f) != size || fclose(f) != 0) {
            fprintf(stderr, "make_proto_seeds: cannot write %s (does the folder exist?)\n", path);
            w->failures++;
        }
    }
cleanup:
    free(buf);
}

int main(int argc, char **argv)
{
    seed_writer w = {0};
    int arg = 1;
    if (arg < argc && strcmp(argv[arg], "--check") == 0) {
        w.check = 1;
        arg++;
    }
    if (arg + 1 != argc) {
        fprintf(stderr, "usage: make_proto_seeds [--check] CORPUS_ROOT\n"
                        "  writes (or checks) CORPUS_ROOT/fuzz_proto_<message>/<name>.pb\n");
        return 2;
    }
    w.root = argv[arg];
    kps_for_each_sample(write_seed, &w);
    printf("make_proto_seeds: %d seeds %s, %d problems\n", w.count, w.check ? "checked" : "written",
           w.failures);
    return w.failures ? 1 : 0;
}

#endif
