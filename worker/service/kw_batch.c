/* kw_batch: see kw_batch.h. */
#include "kw_batch.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_open.h"
#include "ks_file.h"
#include "ks_utf8.h"
#include "processor.h"
#include "wire.h"

#define KW_MAX_PROMPTS 64 /* protocol.md §10 */
#define KW_MAX_BEAMS 8
#define KW_MAX_NEW_TOKENS 1024
#define KW_MAX_NGRAM 65536 /* no protocol limit; keeps the int conversion safe */
#define KW_MESSAGE_MAX 1024
#define KW_KV_BLOCK 64 /* see prompt_params */

uint64_t kw_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- engine --------------------------------------------------------------------------------- */

void kw_engine_params_default(kw_engine_params *p)
{
    memset(p, 0, sizeof *p);
    p->precision = KE_DTYPE_F16;
    p->slots = 8;
    p->max_image_bytes = KP_DEFAULT_MAX_IMAGE_BYTES;
}

ks_status kw_engine_open(kw_engine *e, const kw_engine_params *p)
{
    memset(e, 0, sizeof *e);
    e->params = *p;
    ks_status st = kw_model_load(p->model_dir, p->precision, &e->model);
    if (st != KS_OK)
        return st;
    const ke_config *c = &e->model.model->config;
    ke_backend_options options = {.slots = p->slots,
                                  .slot_capacity = p->context > 0 ? p->context
                                                                  : c->text.max_positions,
                                  .kv_tokens = p->kv_tokens,
                                  .kv_half = p->kv_half,
                                  .gemm_tune = p->gemm_tune,
                                  .tune_db = p->tune_db,
                                  .weights_int8 = p->weights_int8,
                                  .vision_chunk = p->vision_chunk};
    e->params.context = options.slot_capacity;
    if ((st = ke_backend_open(e->model.model, p->device, &options, &e->backend)) != KS_OK) {
        kw_model_fini(&e->model);
        return st;
    }
    return KS_OK;
}

void kw_engine_close(kw_engine *e)
{
    ke_backend_destroy(&e->backend);
    kw_model_fini(&e->model);
}

/* ---- an arena for the protobuf result (freed at once after packing) ------------------------ */

typedef struct kw_arena {
    void **blocks;
    size_t n, cap;
    bool failed;
} kw_arena;

static void *arena_alloc(kw_arena *a, size_t size)
{
    if (a->failed)
        return NULL;
    if (a->n == a->cap) {
        size_t ncap = a->cap ? a->cap * 2 : 64;
        void **grown = realloc(a->blocks, ncap * sizeof *grown);
        if (!grown) {
            a->failed = true;
            return NULL;
        }
        a->blocks = grown;
        a->cap = ncap;
    }
    void *p = calloc(1, size ? size : 1);
    if (!p) {
        a->failed = true;
        return NULL;
    }
    a->blocks[a->n++] = p;
    return p;
}

static void arena_free(kw_arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->blocks[i]);
    free(a->blocks);
    memset(a, 0, sizeof *a);
}

/* A copy of s[0..len) as a protocol string: UTF-8 without NUL (bytes that are neither become
 * '?', so an error message quoting bad input still travels). */
static char *arena_str(kw_arena *a, const char *s, size_t len)
{
    char *out = arena_alloc(a, len + 1);
    if (!out)
        return NULL;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = ks_utf8_decode(s + i, len - i, &cp);
        if (n == 0 || cp == 0) {
            out[i++] = '?';
            continue;
        }
        memcpy(out + i, s + i, n);
        i += n;
    }
    out[len] = '\0';
    return out;
}

/* ---- per-job state -------------------------------------------------------------------------- */

typedef struct prompt_state {
    int status; /* Kosmos__V1__Status; 0 = still running */
    bool retriable;
    char message[KW_MESSAGE_MAX];
    kt_encoding encoding;
    ke_gen_params params;
    bool report_seed;
    double encode_ms;
    bool queued; /* in the scheduler, its result not back yet */
    ke_gen_result result;
    kw_text text;
} prompt_state;

typedef struct job_state {
    int status; /* 0 = running; else the whole job's final status */
    bool retriable;
    char message[KW_MESSAGE_MAX];
    uint64_t started_unix_ms;
    kw_image image;
    double load_ms; /* acquiring + decoding the image */
    prompt_state *prompts;
    size_t n_prompts;
} job_state;

static void job_fail(job_state *j, int status, bool retriable, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void job_fail(job_state *j, int status, bool retriable, const char *fmt, ...)
{
    j->status = status;
    j->retriable = retriable;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->message, sizeof j->message, fmt, ap);
    va_end(ap);
}

static void prompt_fail(prompt_state *p, bool retriable, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void prompt_fail(prompt_state *p, bool retriable, const char *fmt, ...)
{
    p->status = KOSMOS__V1__STATUS__STATUS_FAILED;
    p->retriable = retriable;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->message, sizeof p->message, fmt, ap);
    va_end(ap);
}

static bool status_retriable(ks_status st) { return st == KS_ERR_NOMEM || st == KS_ERR_IO; }

/* ---- inputs --------------------------------------------------------------------------------- */

/* The image bytes of a job: the attached frame, inline data, or a file named by image_uri
 * ("file:///abs/path", "file://localhost/abs/path" or "/abs/path"). *owned is set when the
 * bytes were read here and must be freed. */
static ks_status job_image_bytes(const kw_engine *e, const kw_job_in *in, const void **bytes,
                                 size_t *len, char **owned)
{
    const Kosmos__V1__Job *job = in->job;
    *owned = NULL;
    switch (job->image_case) {
    case KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE:
        if (!in->image || in->image_len != job->image_attached_size)
            return ks_fail(KS_ERR_INVALID,
                           "the dispatch announced a %llu-byte image frame "
                           "but carried %zu bytes",
                           (unsigned long long)job->image_attached_size, in->image_len);
        *bytes = in->image;
        *len = in->image_len;
        return KS_OK;
    case KOSMOS__V1__JOB__IMAGE_IMAGE_DATA:
        *bytes = job->image_data.data;
        *len = job->image_data.len;
        return KS_OK;
    case KOSMOS__V1__JOB__IMAGE_IMAGE_URI: {
        const char *uri = job->image_uri ? job->image_uri : "";
        const char *path = uri;
        if (strncmp(uri, "file://localhost/", 17) == 0)
            path = uri + 16;
        else if (strncmp(uri, "file:///", 8) == 0)
            path = uri + 7;
        else if (strstr(uri, "://"))
            return ks_fail(KS_ERR_UNSUPPORTED,
                           "image_uri %.200s: only file:// URIs and "
                           "absolute paths are supported",
                           uri);
        if (path[0] != '/')
            return ks_fail(KS_ERR_UNSUPPORTED, "image_uri %.200s is not an absolute path", uri);
        char *data = NULL;
        ks_status st = ks_file_read_beneath(e->params.image_roots, e->params.n_image_roots, path,
                                            e->params.max_image_bytes, &data, len);
        if (st != KS_OK) {
            ks_error_prefix("image_uri");
            return st;
        }
        *bytes = *owned = data;
        return KS_OK;
    }
    default: return ks_fail(KS_ERR_INVALID, "the job has no image");
    }
}

static ks_status bboxes_from_proto(const Kosmos__V1__Prompt *p, kt_bboxes *out)
{
    kt_bboxes_fini(out);
    if (p->n_phrase_boxes == 0)
        return KS_OK;
    out->phrases = calloc(p->n_phrase_boxes, sizeof *out->phrases);
    if (!out->phrases)
        return ks_fail(KS_ERR_NOMEM, "out of memory for the boxes");
    out->count = p->n_phrase_boxes;
    out->is_null = false;
    for (size_t i = 0; i < p->n_phrase_boxes; i++) {
        const Kosmos__V1__PhraseBoxes *pb = p->phrase_boxes[i];
        kt_phrase_boxes *dst = &out->phrases[i];
        if (!pb || pb->n_boxes == 0) {
            dst->is_null = true; /* no boxes = None for this phrase */
            continue;
        }
        dst->boxes = calloc(pb->n_boxes, sizeof *dst->boxes);
        if (!dst->boxes)
            return ks_fail(KS_ERR_NOMEM, "out of memory for the boxes");
        dst->count = pb->n_boxes;
        for (size_t b = 0; b < pb->n_boxes; b++) {
            const Kosmos__V1__Box *box = pb->boxes[b];
            kt_box *k = &dst->boxes[b];
            if (box && box->kind_case == KOSMOS__V1__BOX__KIND_NORMALIZED && box->normalized) {
                const Kosmos__V1__NormalizedBox *n = box->normalized;
                if (!n->has_x1 || !n->has_y1 || !n->has_x2 || !n->has_y2)
                    return ks_fail(KS_ERR_INVALID, "phrase %zu box %zu: a coordinate is missing", i,
                                   b);
                *k = (kt_box){.x1 = n->x1, .y1 = n->y1, .x2 = n->x2, .y2 = n->y2};
            } else if (box && box->kind_case == KOSMOS__V1__BOX__KIND_PATCH && box->patch) {
                if (!box->patch->has_ul || !box->patch->has_lr)
                    return ks_fail(KS_ERR_INVALID, "phrase %zu box %zu: a patch index is missing",
                                   i, b);
                *k = (kt_box){.is_patch_pair = true, .ul = box->patch->ul, .lr = box->patch->lr};
            } else {
                return ks_fail(KS_ERR_INVALID, "phrase %zu box %zu has no coordinates", i, b);
            }
        }
    }
    return KS_OK;
}

static uint64_t random_seed(void)
{
    uint64_t seed = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&seed, sizeof seed, 1, f) != 1)
            seed = 0;
        fclose(f);
    }
    if (!seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^
               (uint64_t)(uintptr_t)&ts;
    }
    return seed;
}

/* The job's generation parameters on the model's defaults, checked as protocol.md §5.1 and
 * against this engine's slots and context; a failure fails the prompt. */
static bool prompt_params(const kw_engine *e, const Kosmos__V1__GenerationParams *g,
                          prompt_state *p)
{
    const ke_config *c = &e->model.model->config;
    kw_gen_overrides o = {0};
    if (g) {
        if ((g->has_max_new_tokens &&
             (g->max_new_tokens < 1 || g->max_new_tokens > KW_MAX_NEW_TOKENS)) ||
            (g->has_min_new_tokens && g->min_new_tokens > KW_MAX_NEW_TOKENS)) {
            prompt_fail(p, false, "max_new_tokens must be 1..%d and min_new_tokens at most that",
                        KW_MAX_NEW_TOKENS);
            return false;
        }
        if (g->has_num_beams && (g->num_beams < 1 || g->num_beams > KW_MAX_BEAMS)) {
            prompt_fail(p, false, "num_beams %u is outside 1..%d", g->num_beams, KW_MAX_BEAMS);
            return false;
        }
        if (g->has_no_repeat_ngram_size && g->no_repeat_ngram_size > KW_MAX_NGRAM) {
            prompt_fail(p, false, "no_repeat_ngram_size %u is over %d", g->no_repeat_ngram_size,
                        KW_MAX_NGRAM);
            return false;
        }
        o.has_max_new_tokens = g->has_max_new_tokens;
        o.max_new_tokens = (int)g->max_new_tokens;
        o.has_min_new_tokens = g->has_min_new_tokens;
        o.min_new_tokens = (int)g->min_new_tokens;
        o.has_num_beams = g->has_num_beams;
        o.num_beams = (int)g->num_beams;
        o.has_no_repeat_ngram_size = g->has_no_repeat_ngram_size;
        o.no_repeat_ngram_size = (int)g->no_repeat_ngram_size;
        o.do_sample = g->has_do_sample && g->do_sample;
        if (o.do_sample) {
            if (g->has_temperature && !(g->temperature > 0 && isfinite(g->temperature))) {
                prompt_fail(p, false, "temperature must be > 0");
                return false;
            }
            if (g->has_top_p && !(g->top_p > 0 && g->top_p <= 1)) {
                prompt_fail(p, false, "top_p must be in (0, 1]");
                return false;
            }
            o.has_temperature = g->has_temperature;
            o.temperature = g->temperature;
            o.has_top_p = g->has_top_p;
            o.top_p = g->top_p;
            o.has_top_k = g->has_top_k;
            o.top_k = g->top_k > (uint32_t)c->text.vocab_size ? c->text.vocab_size : (int)g->top_k;
            o.has_seed = true;
            o.seed = g->has_seed ? g->seed : random_seed();
            p->report_seed = true;
        }
    }
    kw_gen_params(c, &o, &p->params);
    const ke_gen_params *q = &p->params;
    if (q->min_new_tokens > q->max_new_tokens) {
        prompt_fail(p, false, "min_new_tokens %d is larger than max_new_tokens %d",
                    q->min_new_tokens, q->max_new_tokens);
        return false;
    }
    if (q->do_sample && q->num_beams > 1) {
        prompt_fail(p, false, "sampling (do_sample) with num_beams %d is not supported",
                    q->num_beams);
        return false;
    }
    if (q->num_beams > e->backend->slots) {
        prompt_fail(p, true,
                    "num_beams %d needs more KV slots than this worker has (%d, "
                    "--slots)",
                    q->num_beams, e->backend->slots);
        return false;
    }
    size_t need = p->encoding.len + (size_t)q->max_new_tokens;
    if (need > (size_t)e->backend->slot_capacity) {
        /* Retriable only when this worker's context is smaller than the model's own. */
        prompt_fail(p, e->backend->slot_capacity < c->text.max_positions,
                    "the prompt's %zu tokens + max_new_tokens %d exceed the context of %d tokens",
                    p->encoding.len, q->max_new_tokens, e->backend->slot_capacity);
        return false;
    }
    /* The scheduler reserves each beam's tokens (and one more) before it starts; a request the
     * whole pool could never hold would wait for ever. Each beam is counted in whole blocks of
     * KW_KV_BLOCK tokens, a multiple of any backend's page, so it errs on the safe side. */
    size_t per_beam = (need + 1 + KW_KV_BLOCK - 1) / KW_KV_BLOCK * KW_KV_BLOCK;
    if (e->params.kv_tokens > 0 && per_beam * (size_t)q->num_beams > e->params.kv_tokens) {
        prompt_fail(p, true,
                    "the prompt's %zu tokens + max_new_tokens %d x %d beams do not fit "
                    "in this worker's KV cache of %zu tokens (--kv-tokens)",
                    p->encoding.len, q->max_new_tokens, q->num_beams, e->params.kv_tokens);
        return false;
    }
    return true;
}

/* Decodes the image and encodes every prompt of one job; failures stay in the job's state. */
static void job_prepare(kw_engine *e, const kw_job_in *in, job_state *j)
{
    const Kosmos__V1__Job *job = in->job;
    const ke_config *c = &e->model.model->config;
    if (!job) {
        job_fail(j, KOSMOS__V1__STATUS__STATUS_FAILED, false, "the dispatch carries no job");
        return;
    }
    if (job->n_prompts == 0 || job->n_prompts > KW_MAX_PROMPTS) {
        job_fail(j, KOSMOS__V1__STATUS__STATUS_FAILED, false, "a job has 1..%d prompts, not %zu",
                 KW_MAX_PROMPTS, job->n_prompts);
        return;
    }
    if (job->has_deadline_unix_ms && job->deadline_unix_ms <= kw_unix_ms()) {
        job_fail(j, KOSMOS__V1__STATUS__STATUS_EXPIRED, false, "the deadline passed before it ran");
        return;
    }
    const void *bytes = NULL;
    size_t len = 0;
    char *owned = NULL;
    double t0 = kw_now_ms();
    ks_status st = job_image_bytes(e, in, &bytes, &len, &owned);
    if (st == KS_OK) {
        kw_image_params ip = {.autorotate = e->params.autorotate,
                              .max_pixels = e->params.max_pixels};
        st = kw_image_decode(&j->image, bytes, len, &ip, c);
        if (st != KS_OK)
            ks_error_prefix("the image does not decode");
    }
    free(owned);
    if (st != KS_OK) {
        job_fail(j, KOSMOS__V1__STATUS__STATUS_FAILED, status_retriable(st), "%s",
                 ks_error_message());
        return;
    }
    j->load_ms = kw_now_ms() - t0 - j->image.preprocess_ms;

    kt_bboxes bboxes;
    kt_bboxes_init(&bboxes);
    for (size_t i = 0; i < j->n_prompts; i++) {
        prompt_state *p = &j->prompts[i];
        const Kosmos__V1__Prompt *pr = job->prompts[i];
        double te = kw_now_ms();
        if (!pr || !pr->text) {
            prompt_fail(p, false, "prompt %zu has no text", i);
            continue;
        }
        ks_error_clear();
        st = bboxes_from_proto(pr, &bboxes);
        if (st == KS_OK)
            st = kt_processor_encode(e->model.tokenizer, pr->text, strlen(pr->text),
                                     pr->n_phrase_boxes ? &bboxes : NULL, &p->encoding);
        if (st != KS_OK) {
            prompt_fail(p, status_retriable(st), "prompt %zu: %s", i, ks_error_message());
            continue;
        }
        p->encode_ms = kw_now_ms() - te;
        if (!prompt_params(e, job->generation, p))
            continue;
    }
    kt_bboxes_fini(&bboxes);
}

/* ---- results -------------------------------------------------------------------------------- */

static Kosmos__V1__NormalizedBox *nbox(kw_arena *a, double x1, double y1, double x2, double y2)
{
    Kosmos__V1__NormalizedBox *b = arena_alloc(a, sizeof *b);
    if (!b)
        return NULL;
    kosmos__v1__normalized_box__init(b);
    b->has_x1 = b->has_y1 = b->has_x2 = b->has_y2 = true;
    b->x1 = x1;
    b->y1 = y1;
    b->x2 = x2;
    b->y2 = y2;
    return b;
}

static bool has_nul(const char *s, size_t len) { return memchr(s, '\0', len) != NULL; }

/* Fills one PromptResult with the outputs the job asked for. */
static void fill_prompt_ok(kw_arena *a, const prompt_state *p, const job_state *j, uint32_t outputs,
                           double vision_ms, const ke_gen_stats *stats, Kosmos__V1__PromptResult *r)
{
    const kt_grounding *g = &p->text.grounding;
    r->text = arena_str(a, g->text ? g->text : "", g->text_len);
    if (outputs & KOSMOS__V1__OUTPUT_FLAG__OUTPUT_RAW_TEXT)
        r->raw_text = arena_str(a, p->text.raw.data ? p->text.raw.data : "", p->text.raw.len);
    r->entities = arena_alloc(a, (g->entity_count ? g->entity_count : 1) * sizeof *r->entities);
    for (size_t i = 0; r->entities && i < g->entity_count; i++) {
        const kt_entity *ke = &g->entities[i];
        Kosmos__V1__Entity *en = arena_alloc(a, sizeof *en);
        if (!en)
            return;
        kosmos__v1__entity__init(en);
        en->phrase = arena_str(a, ke->phrase, ke->phrase_len);
        en->has_start_cp = en->has_end_cp = en->has_start_byte = en->has_end_byte = true;
        en->start_cp = ke->start;
        en->end_cp = ke->end;
        en->start_byte = (uint32_t)ke->start_byte;
        en->end_byte = (uint32_t)ke->end_byte;
        en->boxes = arena_alloc(a, (ke->box_count ? ke->box_count : 1) * sizeof *en->boxes);
        bool px = outputs & KOSMOS__V1__OUTPUT_FLAG__OUTPUT_BOXES_PX;
        if (px)
            en->boxes_px = arena_alloc(a,
                                       (ke->box_count ? ke->box_count : 1) * sizeof *en->boxes_px);
        for (size_t b = 0; en->boxes && b < ke->box_count; b++) {
            const double *bx = ke->boxes[b];
            Kosmos__V1__ResultBox *rb = arena_alloc(a, sizeof *rb);
            Kosmos__V1__PatchBox *pb = arena_alloc(a, sizeof *pb);
            if (!rb || !pb)
                return;
            kosmos__v1__result_box__init(rb);
            kosmos__v1__patch_box__init(pb);
            rb->box = nbox(a, bx[0], bx[1], bx[2], bx[3]);
            int64_t ul = ke->patches[b][0], lr = ke->patches[b][1];
            pb->has_ul = ul >= 0 && ul <= UINT32_MAX;
            pb->ul = pb->has_ul ? (uint32_t)ul : 0;
            pb->has_lr = lr >= 0 && lr <= UINT32_MAX;
            pb->lr = pb->has_lr ? (uint32_t)lr : 0;
            rb->patch = pb;
            en->boxes[en->n_boxes++] = rb;
            if (px && en->boxes_px)
                en->boxes_px[en->n_boxes_px++] = nbox(a, bx[0] * j->image.width,
                                                      bx[1] * j->image.height,
                                                      bx[2] * j->image.width,
                                                      bx[3] * j->image.height);
        }
        r->entities[r->n_entities++] = en;
    }
    size_t new_tokens = p->result.new_tokens;
    if (outputs & KOSMOS__V1__OUTPUT_FLAG__OUTPUT_GENERATED_IDS) {
        const int32_t *ids = p->result.ids + (p->result.len - new_tokens);
        r->generated_ids = arena_alloc(a, (new_tokens ? new_tokens : 1) * sizeof *r->generated_ids);
        for (size_t i = 0; r->generated_ids && i < new_tokens; i++)
            r->generated_ids[r->n_generated_ids++] = (uint32_t)ids[i];
    }
    if (outputs & KOSMOS__V1__OUTPUT_FLAG__OUTPUT_TIMINGS) {
        Kosmos__V1__Timings *t = arena_alloc(a, sizeof *t);
        if (t) {
            kosmos__v1__timings__init(t);
            t->has_load_ms = t->has_preprocess_ms = t->has_vision_ms = true;
            t->has_prefill_ms = t->has_decode_ms = t->has_new_tokens = t->has_prompt_tokens = true;
            t->load_ms = j->load_ms;
            t->preprocess_ms = j->image.preprocess_ms + p->encode_ms;
            t->vision_ms = vision_ms;
            t->prefill_ms = stats->prefill_ms;
            t->decode_ms = stats->decode_ms;
            t->new_tokens = (uint32_t)new_tokens;
            t->prompt_tokens = (uint32_t)p->encoding.len;
            r->timings = t;
        }
    }
}

/* Packs WorkerMessage{result} into out->data. */
static ks_status pack_result(const Kosmos__V1__Result *res, kw_packed *out)
{
    Kosmos__V1__WorkerMessage m = KOSMOS__V1__WORKER_MESSAGE__INIT;
    m.message_case = KOSMOS__V1__WORKER_MESSAGE__MESSAGE_RESULT;
    m.result = (Kosmos__V1__Result *)res;
    size_t len = kosmos__v1__worker_message__get_packed_size(&m);
    uint8_t *data = malloc(len ? len : 1);
    if (!data)
        return ks_fail(KS_ERR_NOMEM, "out of memory packing a result");
    kosmos__v1__worker_message__pack(&m, data);
    out->data = data;
    out->len = len;
    return KS_OK;
}

static void result_head(Kosmos__V1__Result *r, kw_arena *a, const kw_job_in *in,
                        const kw_result_meta *meta)
{
    kosmos__v1__result__init(r);
    r->job_id = arena_str(a, in->job_id ? in->job_id : "", in->job_id ? strlen(in->job_id) : 0);
    r->has_attempt = true;
    r->attempt = in->attempt;
    if (meta && meta->worker_name)
        r->worker_name = arena_str(a, meta->worker_name, strlen(meta->worker_name));
    if (meta && meta->device_name)
        r->device_name = arena_str(a, meta->device_name, strlen(meta->device_name));
}

ks_status kw_result_simple(const kw_job_in *in, const kw_result_meta *meta, int status,
                           bool retriable, const char *message, kw_packed *out)
{
    kw_arena a = {0};
    Kosmos__V1__Result r;
    result_head(&r, &a, in, meta);
    uint64_t now = kw_unix_ms();
    r.has_status = true;
    r.status = status;
    r.has_retriable = status == KOSMOS__V1__STATUS__STATUS_FAILED;
    r.retriable = retriable;
    r.message = arena_str(&a, message, strlen(message));
    r.has_image_width = r.has_image_height = true;
    r.has_started_unix_ms = r.has_finished_unix_ms = true;
    r.started_unix_ms = r.finished_unix_ms = now;
    size_t n = in->job ? in->job->n_prompts : 0;
    r.prompts = arena_alloc(&a, (n ? n : 1) * sizeof *r.prompts);
    for (size_t i = 0; r.prompts && i < n; i++) {
        Kosmos__V1__PromptResult *p = arena_alloc(&a, sizeof *p);
        if (!p)
            break;
        kosmos__v1__prompt_result__init(p);
        p->has_prompt_index = p->has_status = true;
        p->prompt_index = (uint32_t)i;
        p->status = status;
        p->has_retriable = r.has_retriable;
        p->retriable = retriable;
        p->message = r.message;
        r.prompts[r.n_prompts++] = p;
    }
    ks_status st = a.failed ? ks_fail(KS_ERR_NOMEM, "out of memory building a result")
                            : pack_result(&r, out);
    arena_free(&a);
    return st;
}

/* Builds the Result of one job from its state. */
static ks_status build_result(const kw_job_in *in, const job_state *j, const kw_result_meta *meta,
                              double vision_ms, const ke_gen_stats *stats, kw_packed *out)
{
    kw_arena a = {0};
    Kosmos__V1__Result r;
    result_head(&r, &a, in, meta);
    uint32_t outputs = in->job && in->job->has_outputs ? in->job->outputs
                                                       : KOSMOS__V1__OUTPUT_FLAG__OUTPUT_DEFAULT;
    int status = j->status ? j->status : KOSMOS__V1__STATUS__STATUS_OK;
    r.has_status = true;
    r.status = status;
    if (status == KOSMOS__V1__STATUS__STATUS_FAILED) {
        r.has_retriable = true;
        r.retriable = j->retriable;
    }
    if (status != KOSMOS__V1__STATUS__STATUS_OK)
        r.message = arena_str(&a, j->message, strlen(j->message));
    r.has_image_width = r.has_image_height = true;
    r.image_width = (uint32_t)(j->image.width > 0 ? j->image.width : 0);
    r.image_height = (uint32_t)(j->image.height > 0 ? j->image.height : 0);
    r.has_started_unix_ms = r.has_finished_unix_ms = true;
    r.started_unix_ms = j->started_unix_ms;
    r.finished_unix_ms = kw_unix_ms();
    size_t n = in->job ? in->job->n_prompts : 0;
    r.prompts = arena_alloc(&a, (n ? n : 1) * sizeof *r.prompts);
    for (size_t i = 0; r.prompts && i < n; i++) {
        Kosmos__V1__PromptResult *pr = arena_alloc(&a, sizeof *pr);
        if (!pr)
            break;
        kosmos__v1__prompt_result__init(pr);
        pr->has_prompt_index = pr->has_status = true;
        pr->prompt_index = (uint32_t)i;
        const prompt_state *p = i < j->n_prompts ? &j->prompts[i] : NULL;
        if (status != KOSMOS__V1__STATUS__STATUS_OK || !p) {
            pr->status = status;
            pr->has_retriable = r.has_retriable;
            pr->retriable = r.retriable;
            pr->message = r.message;
        } else if (p->status != KOSMOS__V1__STATUS__STATUS_OK) {
            pr->status = p->status;
            pr->has_retriable = p->status == KOSMOS__V1__STATUS__STATUS_FAILED;
            pr->retriable = p->retriable;
            pr->message = arena_str(&a, p->message, strlen(p->message));
        } else {
            pr->status = KOSMOS__V1__STATUS__STATUS_OK;
            fill_prompt_ok(&a, p, j, outputs, vision_ms, stats, pr);
            if (p->report_seed) {
                pr->has_seed = true;
                pr->seed = p->params.seed;
            }
        }
        r.prompts[r.n_prompts++] = pr;
    }
    ks_status st = a.failed ? ks_fail(KS_ERR_NOMEM, "out of memory building a result")
                            : pack_result(&r, out);
    arena_free(&a);
    /* protocol.md §7: a worker validates its output; this cannot fail for text that came
     * through the post-processor, but a result the broker would refuse must never go out. */
    if (st == KS_OK &&
        kp_check_strings(&kosmos__v1__worker_message__descriptor, out->data, out->len) != KS_OK) {
        free(out->data);
        out->data = NULL;
        out->len = 0;
        st = kw_result_simple(in, meta, KOSMOS__V1__STATUS__STATUS_FAILED, false,
                              "the result held a string that is not UTF-8", out);
    }
    return st;
}

/* ---- the continuous batch --------------------------------------------------------------- */

static int cancel_status(int reason)
{
    return reason == KOSMOS__V1__CANCEL__REASON__REASON_DEADLINE
               ? KOSMOS__V1__STATUS__STATUS_EXPIRED
               : KOSMOS__V1__STATUS__STATUS_CANCELLED;
}

typedef enum held_phase {
    HELD_VISION = 0, /* its image waits for a vision pass */
    HELD_RUNNING,    /* its prompts are in the scheduler (or all ended) */
} held_phase;

/* One job in the batch. Its address is stable: its prompts' stop hook points at it. */
typedef struct held_job {
    kw_batch *b;
    kw_job_in *in; /* the caller's, borrowed */
    job_state js;
    held_phase phase;
    uint64_t serial;       /* its prompts' scheduler tags: serial * KW_MAX_PROMPTS + prompt */
    size_t queued;         /* prompts in the scheduler */
    double vision_ms;      /* its image's share of its vision pass */
    bool scheduled;        /* its prompts went into the scheduler */
    ke_gen_stats at_start; /* the scheduler's totals then */
} held_job;

struct kw_batch {
    kw_engine *e;
    kw_result_meta meta;
    kw_batch_params p;
    ke_sched *sched;
    held_job **jobs; /* in arrival order */
    size_t n_jobs, cap_jobs;
    uint64_t next_serial;
    float *pixels, *embeds; /* vision_chunk images each */
    kw_batch_done *done;
    size_t n_done, cap_done;
    bool failed; /* the device failed: nothing more runs */
};

void kw_batch_params_default(kw_batch_params *p)
{
    memset(p, 0, sizeof *p);
    p->vision_chunk = 0; /* the backend's */
    p->prefill_tokens = 512;
}

ks_status kw_batch_new(kw_engine *e, const kw_result_meta *meta, const kw_batch_params *params,
                       kw_batch **out)
{
    *out = NULL;
    kw_batch *b = calloc(1, sizeof *b);
    if (!b)
        return ks_fail(KS_ERR_NOMEM, "out of memory for a batch");
    b->e = e;
    if (meta)
        b->meta = *meta;
    if (params)
        b->p = *params;
    else
        kw_batch_params_default(&b->p);
    if (b->p.vision_chunk < 1)
        b->p.vision_chunk = e->backend->vision_chunk > 0 ? e->backend->vision_chunk : 1;
    if (b->p.vision_chunk > KW_MAX_VISION_CHUNK)
        b->p.vision_chunk = KW_MAX_VISION_CHUNK;
    const ke_config *c = &e->model.model->config;
    size_t image_floats = (size_t)c->vision.channels * (size_t)c->vision.image_size *
                          (size_t)c->vision.image_size;
    size_t embed_floats = (size_t)c->latent_query_num * (size_t)c->text.embed_dim;
    b->pixels = malloc((size_t)b->p.vision_chunk * image_floats * sizeof *b->pixels);
    b->embeds = malloc((size_t)b->p.vision_chunk * embed_floats * sizeof *b->embeds);
    ke_sched_params sp = {.prefill_tokens = b->p.prefill_tokens};
    ks_status st = KS_OK;
    if (!b->pixels || !b->embeds)
        st = ks_fail(KS_ERR_NOMEM, "out of memory for a batch");
    else
        st = ke_sched_new(e->backend, &sp, &b->sched);
    if (st != KS_OK) {
        kw_batch_destroy(&b);
        return st;
    }
    *out = b;
    return KS_OK;
}

static void held_free(held_job *h)
{
    if (!h)
        return;
    for (size_t k = 0; k < h->js.n_prompts; k++) {
        kt_encoding_fini(&h->js.prompts[k].encoding);
        ke_gen_result_fini(&h->js.prompts[k].result);
        kw_text_fini(&h->js.prompts[k].text);
    }
    free(h->js.prompts);
    kw_image_fini(&h->js.image);
    free(h);
}

static void done_clear(kw_batch *b)
{
    for (size_t i = 0; i < b->n_done; i++)
        free(b->done[i].packed.data);
    b->n_done = 0;
}

void kw_batch_destroy(kw_batch **pb)
{
    if (!pb || !*pb)
        return;
    kw_batch *b = *pb;
    ke_sched_destroy(&b->sched); /* first: its requests borrow the jobs' encodings */
    for (size_t i = 0; i < b->n_jobs; i++)
        held_free(b->jobs[i]);
    done_clear(b);
    free(b->done);
    free(b->jobs);
    free(b->pixels);
    free(b->embeds);
    free(b);
    *pb = NULL;
}

size_t kw_batch_jobs(const kw_batch *b) { return b->n_jobs; }

ks_status kw_batch_add(kw_batch *b, kw_job_in *in)
{
    if (b->failed)
        return ks_fail(KS_ERR_DEVICE, "the batch's device failed");
    if (b->n_jobs == b->cap_jobs) {
        size_t ncap = b->cap_jobs ? b->cap_jobs * 2 : 16;
        held_job **grown = realloc(b->jobs, ncap * sizeof *grown);
        if (!grown)
            return ks_fail(KS_ERR_NOMEM, "out of memory for a job");
        b->jobs = grown;
        b->cap_jobs = ncap;
    }
    held_job *h = calloc(1, sizeof *h);
    size_t np = in->job ? in->job->n_prompts : 0;
    if (np > KW_MAX_PROMPTS)
        np = 0; /* job_prepare fails it */
    if (h)
        h->js.prompts = calloc(np ? np : 1, sizeof *h->js.prompts);
    if (!h || !h->js.prompts) {
        free(h);
        return ks_fail(KS_ERR_NOMEM, "out of memory for a job");
    }
    h->b = b;
    h->in = in;
    h->serial = b->next_serial++;
    job_state *j = &h->js;
    j->started_unix_ms = kw_unix_ms();
    kw_image_init(&j->image);
    j->n_prompts = np;
    for (size_t k = 0; k < np; k++) {
        kt_encoding_init(&j->prompts[k].encoding);
        kw_text_init(&j->prompts[k].text);
    }
    if (in->cancel_reason)
        job_fail(j, cancel_status(in->cancel_reason), false,
                 "cancelled by the broker before it ran");
    else
        job_prepare(b->e, in, j);
    b->jobs[b->n_jobs++] = h;
    return KS_OK;
}

/* ke_gen_request.stop of a job's prompts: asked by the scheduler once a step. */
static bool held_stop(void *ctx)
{
    held_job *h = ctx;
    if (h->b->p.poll)
        h->b->p.poll(h->b->p.poll_ctx, h->in);
    return h->in->cancel_reason != 0;
}

/* Whether a job still needs its image encoded: not failed, one prompt at least still good. */
static bool held_wants_vision(const held_job *h)
{
    if (h->js.status)
        return false;
    for (size_t k = 0; k < h->js.n_prompts; k++)
        if (h->js.prompts[k].status == 0)
            return true;
    return false;
}

/* Hands a job's good prompts to the scheduler, on the image at row `row` of b->embeds. */
static ks_status held_start(kw_batch *b, held_job *h, size_t row)
{
    const ke_config *c = &b->e->model.model->config;
    size_t embed_floats = (size_t)c->latent_query_num * (size_t)c->text.embed_dim;
    int image = -1;
    ks_status st = ke_sched_add_image(b->sched, b->embeds + row * embed_floats, &image);
    if (st != KS_OK) {
        job_fail(&h->js, KOSMOS__V1__STATUS__STATUS_FAILED, true, "%s", ks_error_message());
        return KS_OK;
    }
    ke_sched_stats(b->sched, &h->at_start);
    h->scheduled = true;
    for (size_t k = 0; k < h->js.n_prompts; k++) {
        prompt_state *p = &h->js.prompts[k];
        if (p->status)
            continue;
        ke_gen_request r = {.input_ids = p->encoding.input_ids.v,
                            .image_embeds_position_mask = p->encoding.image_embeds_position_mask,
                            .len = p->encoding.len,
                            .image = image,
                            .params = p->params,
                            .stop = held_stop,
                            .stop_ctx = h};
        ks_error_clear();
        st = ke_sched_add(b->sched, &r, h->serial * KW_MAX_PROMPTS + k);
        if (st == KS_OK) {
            p->queued = true;
            h->queued++;
        } else {
            /* a check above let it through (request errors), or no memory: this prompt only */
            prompt_fail(p, status_retriable(st), "%s", ks_error_message());
        }
    }
    ke_sched_drop_image(b->sched, image); /* its prompts hold it now */
    return KS_OK;
}

/* One vision pass over the next jobs waiting for one (at most vision_chunk images). */
static ks_status vision_pass(kw_batch *b)
{
    const ke_config *c = &b->e->model.model->config;
    size_t image_floats = (size_t)c->vision.channels * (size_t)c->vision.image_size *
                          (size_t)c->vision.image_size;
    held_job *chunk[KW_MAX_VISION_CHUNK];
    size_t n = 0, limit = (size_t)b->p.vision_chunk; /* <= KW_MAX_VISION_CHUNK (kw_batch_new) */
    for (size_t i = 0; i < b->n_jobs && n < limit; i++) {
        held_job *h = b->jobs[i];
        if (h->phase != HELD_VISION)
            continue;
        h->phase = HELD_RUNNING; /* from here it ends when its queued prompts have */
        if (h->in->cancel_reason || !held_wants_vision(h))
            continue;
        memcpy(b->pixels + n * image_floats, h->js.image.pixels, image_floats * sizeof(float));
        chunk[n++] = h;
    }
    if (n == 0)
        return KS_OK;
    double t0 = kw_now_ms();
    ks_error_clear();
    ks_status st = b->e->backend->ops->encode_images(b->e->backend, b->pixels, (int)n, b->embeds,
                                                     NULL);
    double share = (kw_now_ms() - t0) / (double)n; /* each image's share of the pass */
    b->e->batches++;
    b->e->images_encoded += n;
    if (st != KS_OK)
        return ks_fail(st, "device failure in the vision tower: %s", ks_error_message());
    for (size_t i = 0; i < n; i++) {
        chunk[i]->vision_ms = share;
        held_start(b, chunk[i], i);
    }
    return KS_OK;
}

/* The text of a prompt whose ids came back. */
static void prompt_finish(kw_engine *e, prompt_state *p, ke_gen_result *r)
{
    p->queued = false;
    p->result = *r;
    memset(r, 0, sizeof *r);
    ks_error_clear();
    ks_status ts = kw_text_from_ids(e->model.tokenizer, p->result.ids, p->result.len, &p->text);
    if (ts != KS_OK) {
        prompt_fail(p, status_retriable(ts), "post-processing the output: %s", ks_error_message());
        return;
    }
    const kt_grounding *g = &p->text.grounding;
    bool nul = has_nul(g->text ? g->text : "", g->text_len) ||
               has_nul(p->text.raw.data ? p->text.raw.data : "", p->text.raw.len);
    for (size_t k = 0; k < g->entity_count; k++)
        nul |= has_nul(g->entities[k].phrase, g->entities[k].phrase_len);
    if (nul)
        prompt_fail(p, false,
                    "the generated text holds a NUL character, which the protocol "
                    "cannot carry");
    else
        p->status = KOSMOS__V1__STATUS__STATUS_OK;
}

/* Moves job i to the done list with its Result, and forgets it. */
static ks_status held_retire(kw_batch *b, size_t i)
{
    if (b->n_done == b->cap_done) {
        size_t ncap = b->cap_done ? b->cap_done * 2 : 16;
        kw_batch_done *grown = realloc(b->done, ncap * sizeof *grown);
        if (!grown)
            return ks_fail(KS_ERR_NOMEM, "out of memory for a result");
        b->done = grown;
        b->cap_done = ncap;
    }
    held_job *h = b->jobs[i];
    job_state *j = &h->js;
    const Kosmos__V1__Job *job = h->in->job;
    if (!j->status && h->in->cancel_reason)
        job_fail(j, cancel_status(h->in->cancel_reason), false,
                 "cancelled by the broker (reason %d)", h->in->cancel_reason);
    if (!j->status && job && job->has_deadline_unix_ms && job->deadline_unix_ms <= kw_unix_ms())
        job_fail(j, KOSMOS__V1__STATUS__STATUS_EXPIRED, false, "the deadline passed while it ran");
    /* prefill and decode: the scheduler's time while the job's prompts were in it */
    ke_gen_stats now, stats = {0};
    if (h->scheduled && b->sched) {
        ke_sched_stats(b->sched, &now);
        stats.prefill_ms = now.prefill_ms - h->at_start.prefill_ms;
        stats.decode_ms = now.decode_ms - h->at_start.decode_ms;
    }
    kw_batch_done *d = &b->done[b->n_done++];
    d->in = h->in;
    memset(&d->packed, 0, sizeof d->packed);
    ks_status st = build_result(h->in, j, &b->meta, h->vision_ms, &stats, &d->packed);
    held_free(h);
    memmove(b->jobs + i, b->jobs + i + 1, (b->n_jobs - i - 1) * sizeof *b->jobs);
    b->n_jobs--;
    return st;
}

/* Retires every job with nothing left to compute: failed or cancelled before its vision pass,
 * or all its prompts back. */
static ks_status retire_ended(kw_batch *b)
{
    ks_status st = KS_OK;
    for (size_t i = 0; i < b->n_jobs;) {
        held_job *h = b->jobs[i];
        bool ended = h->phase == HELD_RUNNING ? h->queued == 0
                                              : h->in->cancel_reason || !held_wants_vision(h);
        if (!ended) {
            i++;
            continue;
        }
        ks_status rs = held_retire(b, i);
        if (rs != KS_OK && st == KS_OK)
            st = rs;
    }
    return st;
}

/* The device failed: every job held ends FAILED, retriable, with `message`. */
static void fail_all(kw_batch *b, const char *message)
{
    b->failed = true;
    ke_sched_destroy(&b->sched); /* first: its requests borrow the jobs' encodings */
    for (size_t i = 0; i < b->n_jobs; i++) {
        held_job *h = b->jobs[i];
        h->queued = 0;
        h->phase = HELD_RUNNING;
        job_fail(&h->js, KOSMOS__V1__STATUS__STATUS_FAILED, true, "%s", message);
    }
    while (b->n_jobs > 0)
        if (held_retire(b, 0) != KS_OK)
            ks_error_clear(); /* that job's Result stays empty; the caller answers for it */
}

ks_status kw_batch_step(kw_batch *b, kw_batch_done **done, size_t *n_done)
{
    done_clear(b);
    *done = b->done;
    *n_done = 0;
    if (b->failed)
        return ks_fail(KS_ERR_DEVICE, "the batch's device failed");
    ks_status st = retire_ended(b);
    ks_status device = vision_pass(b);
    char message[KW_MESSAGE_MAX];
    if (device == KS_OK && ke_sched_pending(b->sched) > 0) {
        ke_sched_done *sd = NULL;
        int n_sd = 0;
        ks_error_clear();
        device = ke_sched_step(b->sched, &sd, &n_sd);
        if (device != KS_OK)
            ks_error_prefix("device failure while generating");
        for (int d = 0; d < n_sd; d++) {
            uint64_t serial = sd[d].tag / KW_MAX_PROMPTS;
            size_t k = (size_t)(sd[d].tag % KW_MAX_PROMPTS);
            for (size_t i = 0; i < b->n_jobs; i++) {
                held_job *h = b->jobs[i];
                if (h->serial != serial || k >= h->js.n_prompts || !h->js.prompts[k].queued)
                    continue;
                prompt_finish(b->e, &h->js.prompts[k], &sd[d].result);
                h->queued--;
                break;
            }
        }
    }
    if (device != KS_OK) {
        snprintf(message, sizeof message, "%s", ks_error_message());
        fail_all(b, message);
        *done = b->done; /* fail_all may have grown it */
        *n_done = b->n_done;
        return ks_fail(device, "%s", message);
    }
    ks_status rs = retire_ended(b);
    if (st == KS_OK)
        st = rs;
    *done = b->done;
    *n_done = b->n_done;
    return st;
}
