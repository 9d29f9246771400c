/* kl_job: kosmos_job_t, the job a caller builds (image, prompts, phrase boxes, generation
 * parameters, priority, deadline, outputs, label, requirements), and its translation into the
 * wire's Job message at submit time. Checks what is cheap to check here (ranges, sizes); the
 * broker checks everything again (protocol.md §5.1). The image bytes live in a
 * reference-counted kl_image so that ZeroMQ sends them as frame 3 without a copy. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "kl_internal.h"

#define KL_MAX_PROMPTS 64
#define KL_MAX_PROMPT_BYTES 4096
#define KL_MAX_PHRASES 64
#define KL_MAX_BOXES 64
#define KL_MAX_LABEL 256
#define KL_MAX_URI 4096
#define KL_MAX_IMAGE ((size_t)64 << 20)

typedef struct kl_phrase {
    kosmos_box_t *boxes;
    size_t n;
} kl_phrase;

typedef struct kl_prompt {
    char *text;
    kl_phrase *phrases;
    size_t n_phrases;
} kl_prompt;

struct kosmos_job {
    kl_image *image; /* attached bytes, or */
    char *uri;       /* image_uri */
    kl_prompt *prompts;
    size_t n_prompts;
    bool has_gen;
    kosmos_generation_t gen;
    bool has_priority;
    int priority;
    uint64_t deadline;
    bool has_outputs;
    unsigned outputs;
    char *label;
    char *model_id, *model_hash;
    uint64_t min_mem;
};

/* ---- image buffer ---- */

void kl_image_unref(kl_image *img)
{
    if (img && atomic_fetch_sub(&img->refs, 1) == 1)
        free(img);
}

static void kl_image_free_fn(void *data, void *hint)
{
    (void)data;
    kl_image_unref(hint);
}

kosmos_error_t kl_image_msg(kl_image *img, void *zmq_msg)
{
    atomic_fetch_add(&img->refs, 1);
    if (zmq_msg_init_data(zmq_msg, img->data, img->len, kl_image_free_fn, img) != 0) {
        kl_image_unref(img);
        return kl_fail(KOSMOS_ERR_IO, "zmq_msg_init_data: %s", zmq_strerror(zmq_errno()));
    }
    return KOSMOS_OK;
}

/* ---- building ---- */

KOSMOS_API void kosmos_generation_init(kosmos_generation_t *gen)
{
    if (!gen)
        return;
    memset(gen, 0, sizeof *gen);
    gen->max_new_tokens = -1;
    gen->min_new_tokens = -1;
    gen->num_beams = -1;
    gen->do_sample = -1;
    gen->temperature = -1.0;
    gen->top_p = -1.0;
    gen->top_k = -1;
    gen->no_repeat_ngram_size = -1;
    gen->has_seed = false;
}

KOSMOS_API kosmos_job_t *kosmos_job_new(void)
{
    kosmos_job_t *job = calloc(1, sizeof *job);
    if (!job) {
        kl_fail(KOSMOS_ERR_NOMEM, "kosmos_job_new: out of memory");
        return NULL;
    }
    kosmos_generation_init(&job->gen);
    return job;
}

static void kl_prompt_fini(kl_prompt *p)
{
    for (size_t i = 0; i < p->n_phrases; i++)
        free(p->phrases[i].boxes);
    free(p->phrases);
    free(p->text);
}

KOSMOS_API void kosmos_job_destroy(kosmos_job_t **job)
{
    if (!job || !*job)
        return;
    kosmos_job_t *j = *job;
    kl_image_unref(j->image);
    free(j->uri);
    for (size_t i = 0; i < j->n_prompts; i++)
        kl_prompt_fini(&j->prompts[i]);
    free(j->prompts);
    free(j->label);
    free(j->model_id);
    free(j->model_hash);
    free(j);
    *job = NULL;
}

static void kl_job_clear_image(kosmos_job_t *job)
{
    kl_image_unref(job->image);
    job->image = NULL;
    free(job->uri);
    job->uri = NULL;
}

static kl_image *kl_image_alloc(size_t len)
{
    kl_image *img = malloc(sizeof *img + len);
    if (!img)
        return NULL;
    atomic_init(&img->refs, 1);
    img->len = len;
    return img;
}

KOSMOS_API kosmos_error_t kosmos_job_set_image_data(kosmos_job_t *job, const void *data, size_t len)
{
    if (!job || !data || len == 0)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_set_image_data: no job or no bytes");
    if (len > KL_MAX_IMAGE)
        return kl_fail(KOSMOS_ERR_TOO_LARGE, "image of %zu bytes is over the 64 MiB limit", len);
    kl_image *img = kl_image_alloc(len);
    if (!img)
        return kl_fail(KOSMOS_ERR_NOMEM, "out of memory for a %zu-byte image", len);
    memcpy(img->data, data, len);
    kl_job_clear_image(job);
    job->image = img;
    return KOSMOS_OK;
}

KOSMOS_API kosmos_error_t kosmos_job_set_image_file(kosmos_job_t *job, const char *path)
{
    if (!job || !path)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_set_image_file: no job or no path");
    kosmos_error_t err = KOSMOS_OK;
    kl_image *img = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return kl_fail(KOSMOS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        err = kl_fail(KOSMOS_ERR_IO, "cannot size %s: %s", path, strerror(errno));
        goto cleanup;
    }
    if (size == 0) {
        err = kl_fail(KOSMOS_ERR_INVALID, "%s is empty", path);
        goto cleanup;
    }
    if ((unsigned long)size > KL_MAX_IMAGE) {
        err = kl_fail(KOSMOS_ERR_TOO_LARGE, "%s: %ld bytes is over the 64 MiB image limit", path,
                      size);
        goto cleanup;
    }
    img = kl_image_alloc((size_t)size);
    if (!img) {
        err = kl_fail(KOSMOS_ERR_NOMEM, "out of memory for %s (%ld bytes)", path, size);
        goto cleanup;
    }
    if (fread(img->data, 1, (size_t)size, f) != (size_t)size) {
        err = kl_fail(KOSMOS_ERR_IO, "cannot read %s", path);
        goto cleanup;
    }
    kl_job_clear_image(job);
    job->image = img;
    img = NULL;
cleanup:
    kl_image_unref(img);
    fclose(f);
    return err;
}

static kosmos_error_t kl_set_str(char **dst, const char *s, size_t max, const char *what)
{
    char *copy = NULL;
    if (s) {
        size_t n = strlen(s);
        if (n > max)
            return kl_fail(KOSMOS_ERR_TOO_LARGE, "%s of %zu bytes is over its %zu-byte limit", what,
                           n, max);
        copy = malloc(n + 1);
        if (!copy)
            return kl_fail(KOSMOS_ERR_NOMEM, "out of memory");
        memcpy(copy, s, n + 1);
    }
    free(*dst);
    *dst = copy;
    return KOSMOS_OK;
}

KOSMOS_API kosmos_error_t kosmos_job_set_image_uri(kosmos_job_t *job, const char *uri)
{
    if (!job || !uri || !uri[0])
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_set_image_uri: no job or empty uri");
    char *copy = NULL;
    kosmos_error_t err = kl_set_str(&copy, uri, KL_MAX_URI, "image uri");
    if (err != KOSMOS_OK)
        return err;
    kl_job_clear_image(job);
    job->uri = copy;
    return KOSMOS_OK;
}

KOSMOS_API kosmos_error_t kosmos_job_add_prompt(kosmos_job_t *job, const char *text)
{
    if (!job || !text)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_add_prompt: no job or no text");
    if (job->n_prompts >= KL_MAX_PROMPTS)
        return kl_fail(KOSMOS_ERR_TOO_LARGE, "a job has at most %d prompts", KL_MAX_PROMPTS);
    kl_prompt *grown = realloc(job->prompts, (job->n_prompts + 1) * sizeof *grown);
    if (!grown)
        return kl_fail(KOSMOS_ERR_NOMEM, "out of memory");
    job->prompts = grown;
    kl_prompt *p = &job->prompts[job->n_prompts];
    memset(p, 0, sizeof *p);
    kosmos_error_t err = kl_set_str(&p->text, text, KL_MAX_PROMPT_BYTES, "prompt");
    if (err != KOSMOS_OK)
        return err;
    job->n_prompts++;
    return KOSMOS_OK;
}

static bool kl_box_ok(const kosmos_box_t *b)
{
    return b->x1 >= 0.0 && b->x1 < b->x2 && b->x2 <= 1.0 && b->y1 >= 0.0 && b->y1 < b->y2 &&
           b->y2 <= 1.0;
}

KOSMOS_API kosmos_error_t kosmos_job_add_phrase_boxes(kosmos_job_t *job, const kosmos_box_t *boxes,
                                                      size_t n)
{
    if (!job || (n > 0 && !boxes))
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_add_phrase_boxes: no job or no boxes");
    if (job->n_prompts == 0)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_add_phrase_boxes: add a prompt first");
    kl_prompt *p = &job->prompts[job->n_prompts - 1];
    if (p->n_phrases >= KL_MAX_PHRASES || n > KL_MAX_BOXES)
        return kl_fail(KOSMOS_ERR_TOO_LARGE, "at most %d phrases per prompt and %d boxes each",
                       KL_MAX_PHRASES, KL_MAX_BOXES);
    for (size_t i = 0; i < n; i++)
        if (!kl_box_ok(&boxes[i]))
            return kl_fail(KOSMOS_ERR_INVALID,
                           "box %zu (%g %g %g %g) is not 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1", i,
                           boxes[i].x1, boxes[i].y1, boxes[i].x2, boxes[i].y2);
    kl_phrase *grown = realloc(p->phrases, (p->n_phrases + 1) * sizeof *grown);
    if (!grown)
        return kl_fail(KOSMOS_ERR_NOMEM, "out of memory");
    p->phrases = grown;
    kosmos_box_t *copy = NULL;
    if (n > 0) {
        copy = malloc(n * sizeof *copy);
        if (!copy)
            return kl_fail(KOSMOS_ERR_NOMEM, "out of memory");
        memcpy(copy, boxes, n * sizeof *copy);
    }
    p->phrases[p->n_phrases].boxes = copy;
    p->phrases[p->n_phrases].n = n;
    p->n_phrases++;
    return KOSMOS_OK;
}

KOSMOS_API kosmos_error_t kosmos_job_set_generation(kosmos_job_t *job,
                                                    const kosmos_generation_t *gen)
{
    if (!job)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_set_generation: no job");
    if (!gen) {
        job->has_gen = false;
        kosmos_generation_init(&job->gen);
        return KOSMOS_OK;
    }
    const kosmos_generation_t *g = gen;
    if (g->max_new_tokens >= 0 && (g->max_new_tokens < 1 || g->max_new_tokens > 1024))
        return kl_fail(KOSMOS_ERR_INVALID, "max_new_tokens %d is not in 1..1024",
                       g->max_new_tokens);
    if (g->min_new_tokens >= 0 && g->max_new_tokens >= 0 && g->min_new_tokens > g->max_new_tokens)
        return kl_fail(KOSMOS_ERR_INVALID, "min_new_tokens %d > max_new_tokens %d",
                       g->min_new_tokens, g->max_new_tokens);
    if (g->num_beams >= 0 && (g->num_beams < 1 || g->num_beams > 8))
        return kl_fail(KOSMOS_ERR_INVALID, "num_beams %d is not in 1..8", g->num_beams);
    if (g->do_sample > 1)
        return kl_fail(KOSMOS_ERR_INVALID, "do_sample is 0, 1 or unset (-1)");
    if (g->temperature == 0.0)
        return kl_fail(KOSMOS_ERR_INVALID, "temperature must be > 0 (or < 0 for unset)");
    if (g->top_p == 0.0 || g->top_p > 1.0)
        return kl_fail(KOSMOS_ERR_INVALID, "top_p %g is not in (0, 1]", g->top_p);
    job->gen = *g;
    job->has_gen = true;
    return KOSMOS_OK;
}

KOSMOS_API kosmos_error_t kosmos_job_set_priority(kosmos_job_t *job, int priority)
{
    if (!job || priority < -100 || priority > 100)
        return kl_fail(KOSMOS_ERR_INVALID, "priority %d is not in -100..100", priority);
    job->has_priority = true;
    job->priority = priority;
    return KOSMOS_OK;
}

KOSMOS_API kosmos_error_t kosmos_job_set_deadline(kosmos_job_t *job, uint64_t deadline_unix_ms)
{
    if (!job)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_set_deadline: no job");
    job->deadline = deadline_unix_ms;
    return KOSMOS_OK;
}

KOSMOS_API kosmos_error_t kosmos_job_set_outputs(kosmos_job_t *job, unsigned outputs)
{
    if (!job)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_set_outputs: no job");
    job->has_outputs = true;
    job->outputs = outputs;
    return KOSMOS_OK;
}

KOSMOS_API kosmos_error_t kosmos_job_set_label(kosmos_job_t *job, const char *label)
{
    if (!job)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_set_label: no job");
    return kl_set_str(&job->label, label, KL_MAX_LABEL, "label");
}

KOSMOS_API kosmos_error_t kosmos_job_set_model(kosmos_job_t *job, const char *model_id,
                                               const char *model_hash)
{
    if (!job)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_set_model: no job");
    kosmos_error_t err = kl_set_str(&job->model_id, model_id, 256, "model id");
    if (err == KOSMOS_OK)
        err = kl_set_str(&job->model_hash, model_hash, 256, "model hash");
    return err;
}

KOSMOS_API kosmos_error_t kosmos_job_set_min_device_memory(kosmos_job_t *job, uint64_t bytes)
{
    if (!job)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_job_set_min_device_memory: no job");
    job->min_mem = bytes;
    return KOSMOS_OK;
}

/* ---- to the wire ---- */

/* Everything one wire Job needs, in one allocation-tracked bundle. */
typedef struct kl_wire_bundle {
    Kosmos__V1__Job job;
    Kosmos__V1__GenerationParams gen;
    Kosmos__V1__Requirements req;
    Kosmos__V1__Prompt *prompts;
    Kosmos__V1__Prompt **prompt_ptrs;
    /* per prompt: phrase entries, and per phrase its boxes (flattened) */
    Kosmos__V1__PhraseBoxes *phrases;
    Kosmos__V1__PhraseBoxes **phrase_ptrs;
    Kosmos__V1__Box *boxes;
    Kosmos__V1__Box **box_ptrs;
    Kosmos__V1__NormalizedBox *norms;
} kl_wire_bundle;

void kl_wire_job_free(Kosmos__V1__Job *job)
{
    if (!job)
        return;
    kl_wire_bundle *b = (kl_wire_bundle *)job; /* job is the bundle's first member */
    free(b->prompts);
    free(b->prompt_ptrs);
    free(b->phrases);
    free(b->phrase_ptrs);
    free(b->boxes);
    free(b->box_ptrs);
    free(b->norms);
    free(b);
}

kosmos_error_t kl_wire_job(const kosmos_job_t *job, const char *key, Kosmos__V1__Job **out,
                           kl_image **image)
{
    *out = NULL;
    *image = NULL;
    if (!job)
        return kl_fail(KOSMOS_ERR_INVALID, "no job");
    if (!job->image && !job->uri)
        return kl_fail(KOSMOS_ERR_INVALID, "the job has no image");
    if (job->n_prompts == 0)
        return kl_fail(KOSMOS_ERR_INVALID, "the job has no prompt");

    size_t n_phrases = 0, n_boxes = 0;
    for (size_t i = 0; i < job->n_prompts; i++) {
        n_phrases += job->prompts[i].n_phrases;
        for (size_t k = 0; k < job->prompts[i].n_phrases; k++)
            n_boxes += job->prompts[i].phrases[k].n;
    }
    kl_wire_bundle *b = calloc(1, sizeof *b);
    if (!b)
        return kl_fail(KOSMOS_ERR_NOMEM, "out of memory");
    b->prompts = calloc(job->n_prompts, sizeof *b->prompts);
    b->prompt_ptrs = calloc(job->n_prompts, sizeof *b->prompt_ptrs);
    b->phrases = calloc(n_phrases + 1, sizeof *b->phrases);
    b->phrase_ptrs = calloc(n_phrases + 1, sizeof *b->phrase_ptrs);
    b->boxes = calloc(n_boxes + 1, sizeof *b->boxes);
    b->box_ptrs = calloc(n_boxes + 1, sizeof *b->box_ptrs);
    b->norms = calloc(n_boxes + 1, sizeof *b->norms);
    if (!b->prompts || !b->prompt_ptrs || !b->phrases || !b->phrase_ptrs || !b->boxes ||
        !b->box_ptrs || !b->norms) {
        kl_wire_job_free(&b->job);
        return kl_fail(KOSMOS_ERR_NOMEM, "out of memory");
    }

    Kosmos__V1__Job *j = &b->job;
    kosmos__v1__job__init(j);
    j->idempotency_key = (char *)key;
    if (job->image) {
        j->image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE;
        j->image_attached_size = job->image->len;
        *image = job->image;
    } else {
        j->image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_URI;
        j->image_uri = job->uri;
    }
    size_t ph = 0, bx = 0;
    for (size_t i = 0; i < job->n_prompts; i++) {
        const kl_prompt *src = &job->prompts[i];
        Kosmos__V1__Prompt *p = &b->prompts[i];
        kosmos__v1__prompt__init(p);
        p->text = src->text;
        p->n_phrase_boxes = src->n_phrases;
        p->phrase_boxes = &b->phrase_ptrs[ph];
        for (size_t k = 0; k < src->n_phrases; k++, ph++) {
            Kosmos__V1__PhraseBoxes *pb = &b->phrases[ph];
            kosmos__v1__phrase_boxes__init(pb);
            b->phrase_ptrs[ph] = pb;
            pb->n_boxes = src->phrases[k].n;
            pb->boxes = &b->box_ptrs[bx];
            for (size_t m = 0; m < src->phrases[k].n; m++, bx++) {
                Kosmos__V1__NormalizedBox *nb = &b->norms[bx];
                kosmos__v1__normalized_box__init(nb);
                const kosmos_box_t *sb = &src->phrases[k].boxes[m];
                nb->has_x1 = nb->has_y1 = nb->has_x2 = nb->has_y2 = true;
                nb->x1 = sb->x1;
                nb->y1 = sb->y1;
                nb->x2 = sb->x2;
                nb->y2 = sb->y2;
                Kosmos__V1__Box *box = &b->boxes[bx];
                kosmos__v1__box__init(box);
                box->kind_case = KOSMOS__V1__BOX__KIND_NORMALIZED;
                box->normalized = nb;
                b->box_ptrs[bx] = box;
            }
        }
        b->prompt_ptrs[i] = p;
    }
    j->n_prompts = job->n_prompts;
    j->prompts = b->prompt_ptrs;

    if (job->has_gen) {
        const kosmos_generation_t *g = &job->gen;
        Kosmos__V1__GenerationParams *gp = &b->gen;
        kosmos__v1__generation_params__init(gp);
        if (g->max_new_tokens >= 0) {
            gp->has_max_new_tokens = true;
            gp->max_new_tokens = (uint32_t)g->max_new_tokens;
        }
        if (g->min_new_tokens >= 0) {
            gp->has_min_new_tokens = true;
            gp->min_new_tokens = (uint32_t)g->min_new_tokens;
        }
        if (g->num_beams >= 0) {
            gp->has_num_beams = true;
            gp->num_beams = (uint32_t)g->num_beams;
        }
        if (g->do_sample >= 0) {
            gp->has_do_sample = true;
            gp->do_sample = g->do_sample != 0;
        }
        if (g->temperature >= 0.0) {
            gp->has_temperature = true;
            gp->temperature = g->temperature;
        }
        if (g->top_p >= 0.0) {
            gp->has_top_p = true;
            gp->top_p = g->top_p;
        }
        if (g->top_k >= 0) {
            gp->has_top_k = true;
            gp->top_k = (uint32_t)g->top_k;
        }
        if (g->no_repeat_ngram_size >= 0) {
            gp->has_no_repeat_ngram_size = true;
            gp->no_repeat_ngram_size = (uint32_t)g->no_repeat_ngram_size;
        }
        if (g->has_seed) {
            gp->has_seed = true;
            gp->seed = g->seed;
        }
        j->generation = gp;
    }
    if (job->model_id || job->model_hash || job->min_mem) {
        Kosmos__V1__Requirements *rq = &b->req;
        kosmos__v1__requirements__init(rq);
        rq->model_id = job->model_id;
        rq->model_hash = job->model_hash;
        if (job->min_mem) {
            rq->has_min_device_memory_bytes = true;
            rq->min_device_memory_bytes = job->min_mem;
        }
        j->requirements = rq;
    }
    if (job->has_priority) {
        j->has_priority = true;
        j->priority = job->priority;
    }
    if (job->deadline) {
        j->has_deadline_unix_ms = true;
        j->deadline_unix_ms = job->deadline;
    }
    if (job->has_outputs) {
        j->has_outputs = true;
        j->outputs = job->outputs;
    }
    j->label = job->label;
    *out = j;
    return KOSMOS_OK;
}
