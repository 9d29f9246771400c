/* libFuzzer target: post-processing. Any bytes go through post_process_generation with and
 * without cleanup; valid UTF-8 must always succeed, and every entity's span must lie inside
 * the cleaned text with byte offsets that agree with the code-point offsets. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ks_utf8.h"
#include "postprocess.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_spans(const kt_grounding *g)
{
    size_t chars = ks_utf8_count(g->text, g->text_len);
    for (size_t i = 0; i < g->entity_count; i++) {
        const kt_entity *e = &g->entities[i];
        /* Byte offsets are clamped into the text even where the reference's code-point span
         * is degenerate (negative, reversed or past the end). */
        if (e->start_byte > g->text_len || e->end_byte > g->text_len || e->start_byte > e->end_byte)
            abort();
        if (e->start >= 0 && (size_t)e->start <= chars &&
            ks_utf8_count(g->text, e->start_byte) != (size_t)e->start)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    bool valid = ks_utf8_valid(text, size);

    kt_grounding grounding;
    kt_grounding_init(&grounding);
    ks_status st = kt_postprocess(text, size, &grounding);
    /* Valid text always succeeds, except where Python itself raises: a patch index of over
     * 4,300 digits (int() limit) or one too large for a float. */
    if (valid && st != KS_OK && !strstr(ks_error_message(), "integer string conversion") &&
        !strstr(ks_error_message(), "int too large to convert to float"))
        abort();
    if (st == KS_OK) {
        check_spans(&grounding);
        json_t *json = kt_grounding_to_json(&grounding);
        if (!json)
            abort();
        json_decref(json);
    }
    kt_grounding_fini(&grounding);

    ks_buf raw;
    ks_buf_init(&raw);
    st = kt_postprocess_raw(text, size, &raw);
    if (valid && st != KS_OK)
        abort();
    ks_buf_fini(&raw);
    return 0;
}
