/* kt_postprocess: generated text -> cleaned text + grounded entities, exactly as transformers'
 * Kosmos2Processor.post_process_generation does, with Python's string semantics (offsets in
 * code points, str.strip() whitespace, regex `.` stopping only at "\n"). */
#ifndef KT_POSTPROCESS_H
#define KT_POSTPROCESS_H

#include <stddef.h>

#include <jansson.h>

#include "ks_buf.h"
#include "ks_error.h"

typedef struct kt_entity {
    char *phrase;      /* owned, NUL-terminated UTF-8 */
    size_t start, end; /* span in the cleaned text, in code points (as the reference) */
    size_t start_byte, end_byte; /* the same span in UTF-8 bytes */
    double (*boxes)[4];          /* owned: box_count x (x1, y1, x2, y2), normalized */
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
void kt_grounding_fini(kt_grounding *g);

/* post_process_generation(text): fills `out`. Fails only on malformed UTF-8 or no memory. */
ks_status kt_postprocess(const char *generated, size_t len, kt_grounding *out);

/* post_process_generation(text, cleanup_and_extract=False): appends to `out` the part after the
 * last "</image>". */
ks_status kt_postprocess_raw(const char *generated, size_t len, ks_buf *out);

/* {"text": str, "entities": [[phrase, [start, end], [[x1, y1, x2, y2], ...]], ...]}, the JSON
 * the CLI prints. Returns a new reference the caller owns, or NULL when out of memory. */
json_t *kt_grounding_to_json(const kt_grounding *g);

#endif
