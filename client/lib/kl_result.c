/* kl_result: kosmos_result_t, a job's result copied out of the wire's Result into plain C
 * (strings, boxes, spans, timings) in one arena, so that callers never see protobuf types and
 * the object is immutable (readable from any thread) once made. */
#include <stdlib.h>
#include <string.h>

#include "kl_internal.h"

typedef struct kl_prompt_result {
    kosmos_result_status_t status;
    bool retriable;
    const char *message, *text, *raw_text;
    const uint32_t *ids;
    size_t n_ids;
    bool has_seed;
    uint64_t seed;
    const kosmos_timings_t *timings;
    kosmos_entity_t *entities;
    size_t n_entities;
} kl_prompt_result;

struct kosmos_result {
    kl_arena arena;
    const char *job_id;
    kosmos_result_status_t status;
    bool retriable;
    const char *message;
    uint32_t attempt;
    const char *worker, *device, *label;
    uint32_t width, height;
    uint64_t started, finished;
    kl_prompt_result *prompts;
    size_t n_prompts;
};

static void kl_box_from_wire(kosmos_box_t *dst, const Kosmos__V1__NormalizedBox *src)
{
    if (!src)
        return;
    dst->x1 = src->x1;
    dst->y1 = src->y1;
    dst->x2 = src->x2;
    dst->y2 = src->y2;
}

static bool kl_entity_from_wire(kl_arena *a, kosmos_entity_t *e, const Kosmos__V1__Entity *w)
{
    e->phrase = kl_arena_strdup(a, w->phrase);
    if (!e->phrase)
        return false;
    e->start_cp = w->start_cp;
    e->end_cp = w->end_cp;
    e->start_byte = w->start_byte;
    e->end_byte = w->end_byte;
    size_t n = w->n_boxes;
    e->box_count = n;
    if (n == 0)
        return true;
    kosmos_box_t *boxes = kl_arena_alloc(a, n * sizeof *boxes);
    uint32_t *ul = kl_arena_alloc(a, n * sizeof *ul);
    uint32_t *lr = kl_arena_alloc(a, n * sizeof *lr);
    if (!boxes || !ul || !lr)
        return false;
    for (size_t k = 0; k < n; k++) {
        const Kosmos__V1__ResultBox *rb = w->boxes[k];
        kl_box_from_wire(&boxes[k], rb ? rb->box : NULL);
        if (rb && rb->patch) {
            ul[k] = rb->patch->ul;
            lr[k] = rb->patch->lr;
        }
    }
    e->boxes = boxes;
    e->patch_ul = ul;
    e->patch_lr = lr;
    if (w->n_boxes_px > 0) {
        /* one pixel box per box; a short list from a peer is padded with zeros */
        kosmos_box_t *px = kl_arena_alloc(a, n * sizeof *px);
        if (!px)
            return false;
        for (size_t k = 0; k < n && k < w->n_boxes_px; k++)
            kl_box_from_wire(&px[k], w->boxes_px[k]);
        e->boxes_px = px;
    }
    return true;
}

static bool kl_prompt_from_wire(kl_arena *a, kl_prompt_result *p, const Kosmos__V1__PromptResult *w)
{
    p->status = kl_result_status_from_wire(w->has_status ? (int)w->status : 0);
    p->retriable = w->has_retriable && w->retriable;
    p->message = kl_arena_strdup(a, w->message);
    p->text = kl_arena_strdup(a, w->text);
    p->raw_text = w->raw_text ? kl_arena_strdup(a, w->raw_text) : NULL;
    if (!p->message || !p->text || (w->raw_text && !p->raw_text))
        return false;
    if (w->n_generated_ids > 0) {
        uint32_t *ids = kl_arena_alloc(a, w->n_generated_ids * sizeof *ids);
        if (!ids)
            return false;
        memcpy(ids, w->generated_ids, w->n_generated_ids * sizeof *ids);
        p->ids = ids;
        p->n_ids = w->n_generated_ids;
    }
    p->has_seed = w->has_seed;
    p->seed = w->seed;
    if (w->timings) {
        const Kosmos__V1__Timings *t = w->timings;
        kosmos_timings_t *tt = kl_arena_alloc(a, sizeof *tt);
        if (!tt)
            return false;
        tt->load_ms = t->has_load_ms ? t->load_ms : -1.0;
        tt->preprocess_ms = t->has_preprocess_ms ? t->preprocess_ms : -1.0;
        tt->vision_ms = t->has_vision_ms ? t->vision_ms : -1.0;
        tt->prefill_ms = t->has_prefill_ms ? t->prefill_ms : -1.0;
        tt->decode_ms = t->has_decode_ms ? t->decode_ms : -1.0;
        tt->new_tokens = t->has_new_tokens ? (int64_t)t->new_tokens : -1;
        tt->prompt_tokens = t->has_prompt_tokens ? (int64_t)t->prompt_tokens : -1;
        p->timings = tt;
    }
    if (w->n_entities > 0) {
        p->entities = kl_arena_alloc(a, w->n_entities * sizeof *p->entities);
        if (!p->entities)
            return false;
        for (size_t j = 0; j < w->n_entities; j++)
            if (w->entities[j] && !kl_entity_from_wire(a, &p->entities[j], w->entities[j]))
                return false;
            else if (!w->entities[j] && !(p->entities[j].phrase = kl_arena_strdup(a, "")))
                return false;
        p->n_entities = w->n_entities;
    }
    return true;
}

kosmos_result_t *kl_result_from_wire(const Kosmos__V1__Result *w)
{
    kosmos_result_t *r = calloc(1, sizeof *r);
    if (!r)
        goto nomem;
    kl_arena *a = &r->arena;
    r->job_id = kl_arena_strdup(a, w->job_id);
    r->message = kl_arena_strdup(a, w->message);
    r->worker = kl_arena_strdup(a, w->worker_name);
    r->device = kl_arena_strdup(a, w->device_name);
    r->label = kl_arena_strdup(a, w->label);
    if (!r->job_id || !r->message || !r->worker || !r->device || !r->label)
        goto nomem;
    r->status = kl_result_status_from_wire(w->has_status ? (int)w->status : 0);
    r->retriable = w->has_retriable && w->retriable;
    r->attempt = w->attempt;
    r->width = w->image_width;
    r->height = w->image_height;
    r->started = w->started_unix_ms;
    r->finished = w->finished_unix_ms;
    if (w->n_prompts > 0) {
        r->prompts = kl_arena_alloc(a, w->n_prompts * sizeof *r->prompts);
        if (!r->prompts)
            goto nomem;
        for (size_t i = 0; i < w->n_prompts; i++) {
            static const Kosmos__V1__PromptResult empty = KOSMOS__V1__PROMPT_RESULT__INIT;
            if (!kl_prompt_from_wire(a, &r->prompts[i], w->prompts[i] ? w->prompts[i] : &empty))
                goto nomem;
        }
        r->n_prompts = w->n_prompts;
    }
    return r;
nomem:
    kosmos_result_destroy(&r);
    kl_fail(KOSMOS_ERR_NOMEM, "out of memory copying a result");
    return NULL;
}

KOSMOS_API void kosmos_result_destroy(kosmos_result_t **result)
{
    if (!result || !*result)
        return;
    kl_arena_free(&(*result)->arena);
    free(*result);
    *result = NULL;
}

/* ---- accessors ---- */

static const kl_prompt_result *kl_prompt(const kosmos_result_t *r, size_t i)
{
    return (r && i < r->n_prompts) ? &r->prompts[i] : NULL;
}

KOSMOS_API const char *kosmos_result_job_id(const kosmos_result_t *r) { return r ? r->job_id : ""; }
KOSMOS_API kosmos_result_status_t kosmos_result_status(const kosmos_result_t *r)
{
    return r ? r->status : KOSMOS_RESULT_UNKNOWN;
}
KOSMOS_API bool kosmos_result_retriable(const kosmos_result_t *r) { return r && r->retriable; }
KOSMOS_API const char *kosmos_result_message(const kosmos_result_t *r)
{
    return r ? r->message : "";
}
KOSMOS_API uint32_t kosmos_result_attempt(const kosmos_result_t *r) { return r ? r->attempt : 0; }
KOSMOS_API const char *kosmos_result_worker(const kosmos_result_t *r) { return r ? r->worker : ""; }
KOSMOS_API const char *kosmos_result_device(const kosmos_result_t *r) { return r ? r->device : ""; }
KOSMOS_API uint32_t kosmos_result_image_width(const kosmos_result_t *r) { return r ? r->width : 0; }
KOSMOS_API uint32_t kosmos_result_image_height(const kosmos_result_t *r)
{
    return r ? r->height : 0;
}
KOSMOS_API uint64_t kosmos_result_started_unix_ms(const kosmos_result_t *r)
{
    return r ? r->started : 0;
}
KOSMOS_API uint64_t kosmos_result_finished_unix_ms(const kosmos_result_t *r)
{
    return r ? r->finished : 0;
}
KOSMOS_API const char *kosmos_result_label(const kosmos_result_t *r) { return r ? r->label : ""; }
KOSMOS_API size_t kosmos_result_prompt_count(const kosmos_result_t *r)
{
    return r ? r->n_prompts : 0;
}

KOSMOS_API kosmos_result_status_t kosmos_result_prompt_status(const kosmos_result_t *r, size_t i)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    return p ? p->status : KOSMOS_RESULT_UNKNOWN;
}

KOSMOS_API bool kosmos_result_prompt_retriable(const kosmos_result_t *r, size_t i)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    return p && p->retriable;
}

KOSMOS_API const char *kosmos_result_prompt_message(const kosmos_result_t *r, size_t i)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    return p ? p->message : "";
}

KOSMOS_API const char *kosmos_result_text(const kosmos_result_t *r, size_t i)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    return p ? p->text : "";
}

KOSMOS_API const char *kosmos_result_raw_text(const kosmos_result_t *r, size_t i)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    return p ? p->raw_text : NULL;
}

KOSMOS_API const uint32_t *kosmos_result_generated_ids(const kosmos_result_t *r, size_t i,
                                                       size_t *n)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    if (n)
        *n = p ? p->n_ids : 0;
    return p ? p->ids : NULL;
}

KOSMOS_API bool kosmos_result_seed(const kosmos_result_t *r, size_t i, uint64_t *seed)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    if (!p || !p->has_seed)
        return false;
    if (seed)
        *seed = p->seed;
    return true;
}

KOSMOS_API const kosmos_timings_t *kosmos_result_timings(const kosmos_result_t *r, size_t i)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    return p ? p->timings : NULL;
}

KOSMOS_API size_t kosmos_result_entity_count(const kosmos_result_t *r, size_t i)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    return p ? p->n_entities : 0;
}

KOSMOS_API const kosmos_entity_t *kosmos_result_entity(const kosmos_result_t *r, size_t i, size_t j)
{
    const kl_prompt_result *p = kl_prompt(r, i);
    return (p && j < p->n_entities) ? &p->entities[j] : NULL;
}
