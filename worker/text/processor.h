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

#include "ks_error.h"
#include "tokenizer.h"

/* One box: either normalized corners or a patch-index pair. */
typedef struct kt_box {
    bool is_patch_pair;
    double x1, y1, x2, y2; /* normalized to [0,1] when !is_patch_pair */
    int32_t ul, lr;        /* patch indices (0..1023) when is_patch_pair */
} kt_box;

/* The boxes of one <phrase>: count == 0 with is_null means "no box" (JSON null). */
typedef struct kt_phrase_boxes {
    bool is_null;
    kt_box *boxes; /* owned */
    size_t count;
} kt_phrase_boxes;

/* Boxes for every <phrase>...</phrase> of a prompt, in order (value struct; owns `phrases`). */
typedef struct kt_bboxes {
    kt_phrase_boxes *phrases;
    size_t count;
} kt_bboxes;

void kt_bboxes_init(kt_bboxes *b);
void kt_bboxes_fini(kt_bboxes *b);

/* Reads the JSON form: null (no boxes at all) or an array with one entry per phrase, each null,
 * [x1,y1,x2,y2] (four numbers), [ul,lr] (two integers) or an array of such boxes. Fails with
 * KS_ERR_INVALID and a message naming the entry on anything else. `value` is borrowed. */
ks_status kt_bboxes_from_json(const json_t *value, kt_bboxes *out);

/* The processor's outputs (value struct; owns its arrays, all `len` long). */
typedef struct kt_encoding {
    kt_ids input_ids;
    uint8_t *attention_mask;
    uint8_t *image_embeds_position_mask;
    size_t len;
} kt_encoding;

void kt_encoding_init(kt_encoding *e);
void kt_encoding_fini(kt_encoding *e);

/* Builds the inputs for `prompt` (UTF-8, len bytes). bboxes may be NULL (no boxes). Fails with
 * KS_ERR_INVALID when the boxes do not match the phrases or would make nonexistent tokens. */
ks_status kt_processor_encode(const kt_tokenizer *t, const char *prompt, size_t len,
                              const kt_bboxes *bboxes, kt_encoding *out);

#endif
