/* kb_job: see kb_job.h. */
#include "kb_job.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ks_file.h"
#include "ks_sha256.h"

#define KB_MAX_KEY 128
#define KB_MAX_LABEL 256
#define KB_MAX_URI 4096
#define KB_MAX_PHRASE_BOXES 64
#define KB_MAX_BOXES 64

bool kb_job_root_valid(const char *root) { return ks_path_clean(root); }

bool kb_job_uri_allowed(const char *uri, const char *const *roots, size_t n_roots)
{
    const char *path = uri;
    if (!uri)
        return false;
    if (strncmp(uri, "file://", 7) == 0) {
        path = uri + 7;
        if (strncmp(path, "localhost/", 10) == 0)
            path += 9;
    }
    if (!ks_path_clean(path))
        return false;
    for (size_t i = 0; i < n_roots; i++)
        if (kb_job_root_valid(roots[i]) && ks_path_beneath(path, roots[i]))
            return true;
    return false;
}

size_t kb_count_phrases(const char *s)
{
    size_t n = 0;
    while (s && (s = strstr(s, "<phrase>")) != NULL) {
        n++;
        s += 8;
    }
    return n;
}

static int kb_reject(int code, char *reason, size_t cap, const char *msg)
{
    snprintf(reason, cap, "%s", msg);
    return code;
}

static bool kb_box_ok(const Kosmos__V1__Box *b)
{
    if (!b)
        return false;
    if (b->kind_case == KOSMOS__V1__BOX__KIND_NORMALIZED) {
        const Kosmos__V1__NormalizedBox *n = b->normalized;
        if (!n || !n->has_x1 || !n->has_y1 || !n->has_x2 || !n->has_y2)
            return false;
        return n->x1 >= 0 && n->x1 < n->x2 && n->x2 <= 1 && n->y1 >= 0 && n->y1 < n->y2 &&
               n->y2 <= 1;
    }
    if (b->kind_case == KOSMOS__V1__BOX__KIND_PATCH) {
        const Kosmos__V1__PatchBox *p = b->patch;
        return p && p->has_ul && p->has_lr && p->ul < 1024 && p->lr < 1024;
    }
    return false;
}

int kb_job_validate(const Kosmos__V1__Job *job, const kb_job_limits *lim, uint64_t now_ms,
                    char *reason, size_t cap)
{
    const int INVALID = KOSMOS__V1__REJECT_CODE__REJECT_CODE_INVALID;
    const int TOO_LARGE = KOSMOS__V1__REJECT_CODE__REJECT_CODE_TOO_LARGE;
    if (!job)
        return kb_reject(INVALID, reason, cap, "submit without a job");
    switch (job->image_case) {
    case KOSMOS__V1__JOB__IMAGE_IMAGE_DATA:
        if (job->image_data.len == 0)
            return kb_reject(INVALID, reason, cap, "image_data is empty");
        if (job->image_data.len > lim->max_image_bytes)
            return kb_reject(TOO_LARGE, reason, cap, "image_data over --max-image-bytes");
        break;
    case KOSMOS__V1__JOB__IMAGE_IMAGE_URI:
        if (!job->image_uri || !job->image_uri[0])
            return kb_reject(INVALID, reason, cap, "image_uri is empty");
        if (strlen(job->image_uri) > KB_MAX_URI)
            return kb_reject(TOO_LARGE, reason, cap, "image_uri over 4096 bytes");
        break;
    case KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE:
        if (job->image_attached_size == 0)
            return kb_reject(INVALID, reason, cap, "image_attached_size is 0");
        break;
    default: return kb_reject(INVALID, reason, cap, "no image");
    }
    if (job->idempotency_key &&
        (!job->idempotency_key[0] || strlen(job->idempotency_key) > KB_MAX_KEY))
        return kb_reject(job->idempotency_key[0] ? TOO_LARGE : INVALID, reason, cap,
                         "idempotency_key must be 1..128 bytes");
    if (job->label && strlen(job->label) > KB_MAX_LABEL)
        return kb_reject(TOO_LARGE, reason, cap, "label over 256 bytes");
    if (job->n_prompts == 0)
        return kb_reject(INVALID, reason, cap, "no prompts");
    if (job->n_prompts > lim->max_prompts)
        return kb_reject(TOO_LARGE, reason, cap, "more than 64 prompts");
    for (size_t i = 0; i < job->n_prompts; i++) {
        const Kosmos__V1__Prompt *p = job->prompts[i];
        if (!p || !p->text)
            return kb_reject(INVALID, reason, cap, "a prompt has no text");
        if (strlen(p->text) > lim->max_prompt_bytes)
            return kb_reject(TOO_LARGE, reason, cap, "prompt text over 4096 bytes");
        if (p->n_phrase_boxes > KB_MAX_PHRASE_BOXES)
            return kb_reject(TOO_LARGE, reason, cap, "more than 64 phrase_boxes");
        if (p->n_phrase_boxes && p->n_phrase_boxes != kb_count_phrases(p->text))
            return kb_reject(INVALID, reason, cap,
                             "phrase_boxes count differs from the <phrase> count");
        for (size_t k = 0; k < p->n_phrase_boxes; k++) {
            const Kosmos__V1__PhraseBoxes *pb = p->phrase_boxes[k];
            if (!pb)
                return kb_reject(INVALID, reason, cap, "empty phrase_boxes entry");
            if (pb->n_boxes > KB_MAX_BOXES)
                return kb_reject(TOO_LARGE, reason, cap, "more than 64 boxes for a phrase");
            for (size_t b = 0; b < pb->n_boxes; b++)
                if (!kb_box_ok(pb->boxes[b]))
                    return kb_reject(INVALID, reason, cap,
                                     "a box is out of range (0 <= x1 < x2 <= 1, patch < 1024)");
        }
    }
    const Kosmos__V1__GenerationParams *g = job->generation;
    if (g) {
        if (g->has_num_beams && (g->num_beams < 1 || g->num_beams > 8))
            return kb_reject(INVALID, reason, cap, "num_beams must be 1..8");
        if (g->has_max_new_tokens && (g->max_new_tokens < 1 || g->max_new_tokens > 1024))
            return kb_reject(INVALID, reason, cap, "max_new_tokens must be 1..1024");
        uint32_t max_new = g->has_max_new_tokens ? g->max_new_tokens : 128;
        if (g->has_min_new_tokens && g->min_new_tokens > max_new)
            return kb_reject(INVALID, reason, cap, "min_new_tokens over max_new_tokens");
        if (g->has_temperature && !(g->temperature > 0 && isfinite(g->temperature)))
            return kb_reject(INVALID, reason, cap, "temperature must be > 0");
        if (g->has_top_p && !(g->top_p > 0 && g->top_p <= 1))
            return kb_reject(INVALID, reason, cap, "top_p must be in (0, 1]");
    }
    if (job->has_priority && (job->priority < -100 || job->priority > 100))
        return kb_reject(INVALID, reason, cap, "priority must be -100..100");
    if (job->has_deadline_unix_ms && job->deadline_unix_ms <= now_ms)
        return kb_reject(KOSMOS__V1__REJECT_CODE__REJECT_CODE_EXPIRED, reason, cap,
                         "deadline already passed");
    return 0;
}

void kb_job_fingerprint(const Kosmos__V1__Job *job, const void *image, size_t image_len,
                        uint8_t out[32])
{
    Kosmos__V1__Job copy = *job;
    uint8_t digest[32];
    copy.idempotency_key = NULL;
    if (job->image_case == KOSMOS__V1__JOB__IMAGE_IMAGE_DATA) {
        ks_sha256(job->image_data.data, job->image_data.len, digest);
    } else if (job->image_case == KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE) {
        ks_sha256(image, image ? image_len : 0, digest);
    }
    if (job->image_case != KOSMOS__V1__JOB__IMAGE_IMAGE_URI) {
        copy.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_DATA;
        copy.image_data.data = digest;
        copy.image_data.len = sizeof digest;
    }
    size_t n = kosmos__v1__job__get_packed_size(&copy);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        /* Out of memory: a fingerprint that can match nothing but itself is still safe. */
        memset(out, 0xFF, 32);
        return;
    }
    kosmos__v1__job__pack(&copy, buf);
    ks_sha256(buf, n, out);
    free(buf);
}

ks_status kb_job_pack_stored(const Kosmos__V1__Job *job, void **blob, size_t *len)
{
    Kosmos__V1__Job copy = *job;
    if (copy.image_case != KOSMOS__V1__JOB__IMAGE_IMAGE_URI)
        copy.image_case = KOSMOS__V1__JOB__IMAGE__NOT_SET;
    size_t n = kosmos__v1__job__get_packed_size(&copy);
    void *buf = malloc(n ? n : 1);
    if (!buf)
        return ks_fail(KS_ERR_NOMEM, "out of memory packing a job");
    kosmos__v1__job__pack(&copy, buf);
    *blob = buf;
    *len = n;
    return KS_OK;
}
