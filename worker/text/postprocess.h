/* kt_postprocess: generated text -> cleaned text + grounded entities, exactly as transformers'
 * Kosmos2Processor.post_process_generation does, with Python's string semantics (offsets in
 * code points, str.strip() whitespace, regex `.` stopping only at "\n", `\d` = any Unicode
 * decimal digit, patch indices as arbitrary-size integers). Linear time in the input; no
 * recursion. Not the decoding of ids to text (tokenizer.h). */
#ifndef KT_POSTPROCESS_H
#define KT_POSTPROCESS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ks_buf.h"
#include "ks_error.h"

/* Inputs longer than this fail with KS_ERR_LIMIT (a real output is a few KB). */
#define KT_POSTPROCESS_MAX_BYTES ((size_t)64 << 20)

typedef struct kt_entity {
    char *phrase;      /* owned, NUL-terminated UTF-8 (stripped, as the reference) */
    size_t phrase_len; /* bytes, without the NUL (a phrase may hold a NUL character) */
    /* The span in the cleaned text, in code points, computed as the reference computes it. It
     * can fall outside the text or have end < start (an all-whitespace phrase, an unclosed '<'
     * before a bare object), hence signed. */
    int64_t start, end;
    /* The same span in bytes of `text`, clamped to [0, text_len] with end_byte >= start_byte,
     * so that text[start_byte, end_byte) is always a valid slice. */
    size_t start_byte, end_byte;
    double (*boxes)[4]; /* owned: box_count x (x1, y1, x2, y2), normalized */
    /* owned: box_count x (UL, LR), the patch indices each box came from, as int() parsed them;
     * INT64_MAX stands for an index too large for int64 (only hand-written text has those). */
    int64_t (*patches)[2];
    size_t box_count;
} kt_entity;

/* The result (value struct; owns everything in it). */
typedef struct kt_grounding {
    char *text; /* owned, NUL-terminated cleaned text */
    size_t text_len;
    kt_entity *entities; /* owned */
    size_t entity_count;
} kt_grounding;

void kt_grounding_init(kt_grounding *g);
void kt_grounding_fini(kt_grounding *g); /* frees everything and re-inits; NULL-safe fields */

/* post_process_generation(text): fills `out` (which must be initialized; its old contents are
 * freed). `generated` is borrowed. Fails with KS_ERR_INVALID on malformed UTF-8 and where the
 * reference raises: a patch index of more than 4,300 digits (Python's int() limit) or one whose
 * row is too large for a double (OverflowError); KS_ERR_LIMIT over KT_POSTPROCESS_MAX_BYTES;
 * KS_ERR_NOMEM. On failure `out` is left empty. */
ks_status kt_postprocess(const char *generated, size_t len, kt_grounding *out);

/* post_process_generation(text, cleanup_and_extract=False): appends to `out` the part after the
 * last "</image>" (all of it when there is none). Fails on malformed UTF-8, over the limit, or
 * out of memory. */
ks_status kt_postprocess_raw(const char *generated, size_t len, ks_buf *out);

/* {"text": str, "entities": [[phrase, [start, end], [[x1, y1, x2, y2], ...]], ...]}, the JSON
 * the CLI prints (code-point spans, as the reference). Returns a new reference the caller owns,
 * or NULL when out of memory. */
json_t *kt_grounding_to_json(const kt_grounding *g);

#endif
