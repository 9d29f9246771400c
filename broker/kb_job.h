/* kb_job: the broker's checks and transforms of a submitted Job (docs/protocol.md §4, §5.1):
 * content validation in the documented order, the idempotency fingerprint, and the stored form
 * (image bytes taken out). Not here: checks that need broker state (known models, image roots,
 * queue limits); kb_broker does those. */
#ifndef KB_JOB_H
#define KB_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kosmos.pb-c.h"
#include "ks_error.h"

typedef struct kb_job_limits {
    size_t max_image_bytes;  /* inline image_data and the attached frame */
    uint32_t max_prompts;    /* 64 */
    size_t max_prompt_bytes; /* 4096 */
} kb_job_limits;

/* Checks `job` against §5.1 and §10 (strings were already checked for UTF-8 by kp_recv).
 * Returns 0 when acceptable, else a Kosmos__V1__RejectCode with a reason in `reason`. */
int kb_job_validate(const Kosmos__V1__Job *job, const kb_job_limits *lim, uint64_t now_ms,
                    char *reason, size_t cap);

/* SHA-256 over the Job as protobuf-c re-encodes it with idempotency_key cleared and the image
 * replaced: image_data := SHA-256(image bytes) for inline and attached images alike, image_uri
 * kept as it is (§4). `image` is the attached frame or NULL. */
void kb_job_fingerprint(const Kosmos__V1__Job *job, const void *image, size_t image_len,
                        uint8_t out[32]);

/* Packs the Job for storage without its image bytes (image_uri kept). Caller frees *blob. */
ks_status kb_job_pack_stored(const Kosmos__V1__Job *job, void **blob, size_t *len);

/* Whether `uri` may be used as an image_uri under `roots` (§5.1): `/abs/path`, `file:///abs/path`
 * or `file://localhost/abs/path`; no `.` or `..` component; equal to a root or continuing it
 * with `/` (whole path components: root /x/img allows /x/img/a.png, not /x/imgx/a.png). Roots
 * are absolute paths (trailing `/` ignored; kb_job_root_valid checks them). No roots: false. */
bool kb_job_uri_allowed(const char *uri, const char *const *roots, size_t n_roots);

/* Whether `root` is usable as --image-root: absolute, no `.` or `..` component. */
bool kb_job_root_valid(const char *root);

/* Counts "<phrase>" in s. */
size_t kb_count_phrases(const char *s);

#endif
