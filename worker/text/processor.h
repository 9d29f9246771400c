/* kt_processor: prompt text (+ optional boxes per phrase) -> the model inputs, exactly as
 * transformers' Kosmos2Processor(text=..., images=<an image>, bboxes=...) builds them:
 * <s> <image> 4..67 </image> text, with each phrase's boxes spliced in after its </phrase> as
 * <object><patch_index_UL><patch_index_LR>[</delimiter_of_multi_objects/>...]</object>. */
#ifndef KT_PROCESSOR_H
#define KT_PROCESSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ks_buf.h"
#include "ks_error.h"
#include "tokenizer.h"

/* Inputs larger than these fail with KS_ERR_LIMIT: far beyond what the model can take (2,048
 * positions), small enough that nothing downstream has to think about size overflows. */
#define KT_PROCESSOR_MAX_PROMPT_BYTES ((size_t)1 << 20)
#define KT_PROCESSOR_MAX_BOXES ((size_t)1 << 16)

/* One box: either normalized corners or a patch-index pair. */
typedef struct kt_box {
    bool is_patch_pair;
    double x1, y1, x2, y2; /* normalized (valid: [0,1], x2 > x1, y2 > y1) when !is_patch_pair */
    int64_t ul, lr;        /* patch indices (valid: 0..1023, any order) when is_patch_pair */
} kt_box;

/* The boxes of one <phrase>: is_null for JSON null (no box); otherwise `count` boxes, possibly
 * none (an empty list, which the reference also accepts and inserts nothing for). */
typedef struct kt_phrase_boxes {
    bool is_null;
    kt_box *boxes; /* owned */
    size_t count;
} kt_phrase_boxes;

/* Boxes for every <phrase>...</phrase> of a prompt, in order (value struct; owns `phrases`).
 * is_null (JSON null, the state after init) and an empty list both mean "no boxes": like the
 * reference, neither is checked against the number of phrases. */
typedef struct kt_bboxes {
    bool is_null;
    kt_phrase_boxes *phrases;
    size_t count;
} kt_bboxes;

void kt_bboxes_init(kt_bboxes *b);
void kt_bboxes_fini(kt_bboxes *b); /* frees everything and re-inits */

/* Reads the JSON form into `out` (initialized; old contents freed): null, or an array with one
 * entry per phrase, each null, [x1,y1,x2,y2] (four numbers), [ul,lr] (two integers) or an array
 * of such boxes. Only the shape is checked here, as the reference's _check_bboxes_for_single_text
 * does first; values are checked by kt_processor_encode. Fails with KS_ERR_INVALID and a message
 * naming the entry and holding the reference's wording; KS_ERR_LIMIT over
 * KT_PROCESSOR_MAX_BOXES boxes. `value` is borrowed. */
ks_status kt_bboxes_from_json(const json_t *value, kt_bboxes *out);

/* The processor's outputs (value struct; owns its arrays, all `len` long). */
typedef struct kt_encoding {
    kt_ids input_ids;
    uint8_t *attention_mask;             /* all ones (a single, unpadded sequence) */
    uint8_t *image_embeds_position_mask; /* 1 at the 64 image positions 2..65 */
    size_t len;
} kt_encoding;

void kt_encoding_init(kt_encoding *e);
void kt_encoding_fini(kt_encoding *e); /* frees everything and re-inits */

/* Appends to `out` the text the reference hands its tokenizer after the "<s>":
 * "<image> <image>x64 </image> " + prompt.strip(), with each phrase's boxes spliced in after
 * its </phrase>. `prompt` (UTF-8, len bytes) and `bboxes` (NULL = none) are borrowed.
 * Fails with KS_ERR_INVALID when the boxes do not match the phrases (the reference's message),
 * when a box is not ordered (x2 <= x1 or y2 <= y1, the reference's message), or when a box would
 * make a token that does not exist (a coordinate outside [0,1], a patch index outside 0..1023);
 * KS_ERR_INVALID on malformed UTF-8; KS_ERR_LIMIT over KT_PROCESSOR_MAX_PROMPT_BYTES. */
ks_status kt_processor_build_text(const char *prompt, size_t len, const kt_bboxes *bboxes,
                                  ks_buf *out);

/* Builds the inputs for `prompt` as Kosmos2Processor(text=prompt, images=<an image>,
 * bboxes=...) does with its defaults (<s> first, no </s>): the tokens of
 * kt_processor_build_text's text after id 0, with the 64 placeholder ids at 2..65 set to 4..67.
 * `out` must be initialized; its old contents are freed, and it is left empty on failure. The
 * errors of kt_processor_build_text and kt_tokenizer_encode. */
ks_status kt_processor_encode(const kt_tokenizer *t, const char *prompt, size_t len,
                              const kt_bboxes *bboxes, kt_encoding *out);

#endif
