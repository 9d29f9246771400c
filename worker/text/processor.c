/* kt_processor: see processor.h.
 *
 * Follows Kosmos2Processor.__call__ -> preprocess_examples -> _preprocess_single_example ->
 * _insert_patch_index_tokens (transformers 5.17.0) step by step, with the reference's checks in
 * the reference's order, so that an input with several problems gets the reference's error:
 * shape of the boxes, then their number against the phrases, then x2 > x1 / y2 > y1 phrase by
 * phrase. Our own check (no token that does not exist) comes last, where the reference would
 * silently tokenize "<patch_index_-001>" or "<patch_index_5000>" as plain text. */
#include "processor.h"

#include <stdlib.h>
#include <string.h>

#include "ks_utf8.h"
#include "patch_grid.h"

/* The reference's messages, verbatim (tests compare them). */
static const char MSG_BBOXES_NOT_LIST[] =
    "`bboxes` (for a single text example) should be `None` or a list.";
static const char MSG_BAD_ELEMENT[] =
    "Each element in `bboxes` (for a single text example) should be either `None`, a tuple "
    "containing 2 integers or 4 float point numbers, or a list containing such tuples. Also make "
    "sure the arguments `texts` and `bboxes` passed to `preprocess_text` are both in batches or "
    "both for a single example.";
static const char MSG_UNORDERED[] =
    "The coordinates in `bbox` should be `(x1, y1, x2, y2)` with `x2 > x1` and `y2 > y1`.";

static const char TAG_PHRASE[] = "<phrase>";
static const char TAG_PHRASE_END[] = "</phrase>";
#define LIT_LEN(lit) (sizeof(lit) - 1)

/* ---- Boxes from JSON ---------------------------------------------------------------------- */

void kt_bboxes_init(kt_bboxes *b)
{
    memset(b, 0, sizeof *b);
    b->is_null = true;
}

void kt_bboxes_fini(kt_bboxes *b)
{
    for (size_t i = 0; i < b->count; i++)
        free(b->phrases[i].boxes);
    free(b->phrases);
    kt_bboxes_init(b);
}

/* One box: two JSON integers (a patch pair; JSON true/false are not integers) or four JSON
 * numbers (read as doubles, as the fixture's JSON -> Python mapping turns them into floats). */
static bool read_box(const json_t *v, kt_box *box)
{
    if (!json_is_array(v))
        return false;
    size_t n = json_array_size(v);
    memset(box, 0, sizeof *box);
    if (n == 2) {
        for (size_t i = 0; i < 2; i++)
            if (!json_is_integer(json_array_get(v, i)))
                return false;
        box->is_patch_pair = true;
        box->ul = (int64_t)json_integer_value(json_array_get(v, 0));
        box->lr = (int64_t)json_integer_value(json_array_get(v, 1));
        return true;
    }
    if (n != 4)
        return false;
    double c[4];
    for (size_t i = 0; i < 4; i++) {
        const json_t *x = json_array_get(v, i);
        if (!json_is_number(x))
            return false;
        c[i] = json_number_value(x);
    }
    box->x1 = c[0], box->y1 = c[1], box->x2 = c[2], box->y2 = c[3];
    return true;
}

/* An entry is a list of boxes when all its elements are arrays (an empty array included),
 * otherwise a single box. */
static bool is_box_list(const json_t *entry)
{
    for (size_t i = 0; i < json_array_size(entry); i++)
        if (!json_is_array(json_array_get(entry, i)))
            return false;
    return true;
}

ks_status kt_bboxes_from_json(const json_t *value, kt_bboxes *out)
{
    kt_bboxes_fini(out);
    if (!value || json_is_null(value))
        return KS_OK;
    if (!json_is_array(value))
        return ks_fail(KS_ERR_INVALID, "bboxes: %s", MSG_BBOXES_NOT_LIST);

    ks_status st = KS_OK;
    size_t n = json_array_size(value), total = 0;
    out->is_null = false;
    out->phrases = n ? calloc(n, sizeof *out->phrases) : NULL;
    if (n && !out->phrases) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory reading bboxes");
        goto cleanup;
    }
    out->count = n;
    for (size_t i = 0; i < n; i++) {
        const json_t *entry = json_array_get(value, i);
        kt_phrase_boxes *pb = &out->phrases[i];
        if (json_is_null(entry)) {
            pb->is_null = true;
            continue;
        }
        bool list = json_is_array(entry) && is_box_list(entry);
        size_t count = list ? json_array_size(entry) : 1;
        if (count > KT_PROCESSOR_MAX_BOXES - total) {
            st = ks_fail(KS_ERR_LIMIT, "bboxes: more than %zu boxes", KT_PROCESSOR_MAX_BOXES);
            goto cleanup;
        }
        total += count;
        pb->boxes = count ? calloc(count, sizeof *pb->boxes) : NULL;
        if (count && !pb->boxes) {
            st = ks_fail(KS_ERR_NOMEM, "out of memory reading bboxes");
            goto cleanup;
        }
        pb->count = count;
        for (size_t j = 0; j < count; j++) {
            if (!read_box(list ? json_array_get(entry, j) : entry, &pb->boxes[j])) {
                if (list)
                    st = ks_fail(KS_ERR_INVALID, "bboxes[%zu][%zu]: %s", i, j, MSG_BAD_ELEMENT);
                else
                    st = ks_fail(KS_ERR_INVALID, "bboxes[%zu]: %s", i, MSG_BAD_ELEMENT);
                goto cleanup;
            }
        }
    }
cleanup:
    if (st)
        kt_bboxes_fini(out);
    return st;
}

/* ---- Finding the phrases: re.finditer(r"<phrase>.+?</phrase>", text) --------------------- */

/* First occurrence of `lit` at or after `from` (len when none), remembering the last answer:
 * callers ask with increasing `from`, so each byte is searched once in total. */
typedef struct find_cache {
    bool valid;
    size_t from, pos;
} find_cache;

static size_t find_from(const char *s, size_t len, size_t from, const char *lit, size_t lit_len,
                        find_cache *c)
{
    if (c->valid && c->from <= from && c->pos >= from)
        return c->pos;
    size_t pos = len;
    for (size_t i = from; i + lit_len <= len; i++) {
        const char *hit = memchr(s + i, lit[0], len - i);
        if (!hit || (size_t)(hit - s) + lit_len > len)
            break;
        i = (size_t)(hit - s);
        if (memcmp(hit, lit, lit_len) == 0) {
            pos = i;
            break;
        }
    }
    c->valid = true;
    c->from = from;
    c->pos = pos;
    return pos;
}

/* A phrase match [from, to) of the text. */
typedef struct phrase_span {
    size_t from, to;
} phrase_span;

/* The lazy `.+?` takes at least one character and no "\n", so a match at p ends at the first
 * "</phrase>" starting after p + 8 + 1, provided no "\n" comes before it. */
static ks_status find_phrases(const char *s, size_t len, phrase_span **spans, size_t *count)
{
    find_cache open = {0}, close = {0}, newline = {0};
    size_t cap = 0, p = 0;
    *spans = NULL;
    *count = 0;
    while (p < len) {
        p = find_from(s, len, p, TAG_PHRASE, LIT_LEN(TAG_PHRASE), &open);
        if (p == len)
            break;
        size_t body = p + LIT_LEN(TAG_PHRASE);
        size_t end = find_from(s, len, body + 1, TAG_PHRASE_END, LIT_LEN(TAG_PHRASE_END), &close);
        size_t nl = find_from(s, len, body, "\n", 1, &newline);
        if (end == len || nl < end) {
            p++;
            continue;
        }
        if (*count == cap) {
            size_t cap2 = cap ? cap * 2 : 8;
            phrase_span *grown = realloc(*spans, cap2 * sizeof *grown);
            if (!grown) {
                free(*spans);
                *spans = NULL;
                return ks_fail(KS_ERR_NOMEM, "out of memory finding phrases");
            }
            *spans = grown;
            cap = cap2;
        }
        (*spans)[(*count)++] = (phrase_span){p, end + LIT_LEN(TAG_PHRASE_END)};
        p = end + LIT_LEN(TAG_PHRASE_END);
    }
    return KS_OK;
}

/* ---- Boxes -> tokens ---------------------------------------------------------------------- */

static ks_status box_indices(const kt_box *box, int32_t *ul, int32_t *lr)
{
    if (box->is_patch_pair) {
        int64_t v[2] = {box->ul, box->lr};
        for (int i = 0; i < 2; i++)
            if (v[i] < 0 || v[i] >= (int64_t)KT_PATCH_GRID * KT_PATCH_GRID)
                return ks_fail(KS_ERR_INVALID,
                               "patch index %lld is outside 0..%d: <patch_index_%lld> is not a "
                               "token",
                               (long long)v[i], KT_PATCH_GRID * KT_PATCH_GRID - 1, (long long)v[i]);
        *ul = (int32_t)box->ul;
        *lr = (int32_t)box->lr;
        return KS_OK;
    }
    double c[4] = {box->x1, box->y1, box->x2, box->y2};
    return kt_patch_box_to_indices(c, ul, lr);
}

/* The reference's checks and ours over every box, in the order the reference would raise. */
static ks_status check_boxes(const kt_bboxes *b)
{
    for (size_t i = 0; i < b->count; i++)
        for (size_t j = 0; j < b->phrases[i].count; j++) {
            const kt_box *box = &b->phrases[i].boxes[j];
            double c[4] = {box->x1, box->y1, box->x2, box->y2};
            if (!box->is_patch_pair && !kt_patch_box_is_ordered(c))
                return ks_fail(KS_ERR_INVALID, "bboxes[%zu] box %zu: %s", i, j, MSG_UNORDERED);
        }
    for (size_t i = 0; i < b->count; i++)
        for (size_t j = 0; j < b->phrases[i].count; j++) {
            int32_t ul, lr;
            ks_status st = box_indices(&b->phrases[i].boxes[j], &ul, &lr);
            if (st) {
                ks_error_prefix("bboxes[%zu] box %zu", i, j);
                return st;
            }
        }
    return KS_OK;
}

/* "<object> <patch_index_UL> <patch_index_LR> </delimiter_of_multi_objects/> ... </object>" */
static ks_status append_object(const kt_phrase_boxes *pb, ks_buf *out)
{
    ks_status st = ks_buf_append_str(out, "<object> ");
    for (size_t j = 0; st == KS_OK && j < pb->count; j++) {
        int32_t ul, lr;
        if ((st = box_indices(&pb->boxes[j], &ul, &lr)))
            break;
        if (j && (st = ks_buf_append_str(out, " </delimiter_of_multi_objects/> ")))
            break;
        st = ks_buf_printf(out, "<patch_index_%04d> <patch_index_%04d>", (int)ul, (int)lr);
    }
    return st ? st : ks_buf_append_str(out, " </object>");
}

/* ---- Building the text and the ids --------------------------------------------------------- */

/* str.strip(): the bytes of s without leading and trailing Python whitespace. */
static void python_strip(const char *s, size_t len, size_t *from, size_t *to)
{
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = ks_utf8_decode(s + i, len - i, &cp);
        if (!ks_unicode_is_space(cp))
            break;
        i += n;
    }
    size_t j = len;
    while (j > i) {
        size_t k = j - 1;
        while (k > i && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--;
        uint32_t cp;
        ks_utf8_decode(s + k, j - k, &cp);
        if (!ks_unicode_is_space(cp))
            break;
        j = k;
    }
    *from = i;
    *to = j;
}

/* " ".join(["<image>"] + ["<image>"] * 64 + ["</image>"]) + " " */
static ks_status append_image_block(ks_buf *out)
{
    ks_status st = ks_buf_append_str(out, "<image>");
    for (int i = 0; st == KS_OK && i < KT_IMAGE_TOKENS; i++)
        st = ks_buf_append_str(out, " <image>");
    return st ? st : ks_buf_append_str(out, " </image> ");
}

ks_status kt_processor_build_text(const char *prompt, size_t len, const kt_bboxes *bboxes,
                                  ks_buf *out)
{
    if (len > KT_PROCESSOR_MAX_PROMPT_BYTES)
        return ks_fail(KS_ERR_LIMIT, "prompt of %zu bytes is over the %zu-byte limit", len,
                       KT_PROCESSOR_MAX_PROMPT_BYTES);
    if (len && !prompt)
        return ks_fail(KS_ERR_INVALID, "prompt is NULL");
    if (!ks_utf8_valid(prompt, len))
        return ks_fail(KS_ERR_INVALID, "prompt is not valid UTF-8");

    size_t from, to;
    python_strip(prompt, len, &from, &to);
    ks_buf text;
    ks_buf_init(&text);
    phrase_span *spans = NULL;
    size_t span_count = 0;
    ks_status st = append_image_block(&text);
    if (!st)
        st = ks_buf_append(&text, prompt + from, to - from);
    if (st)
        goto cleanup;

    /* `if bboxes is None or len(bboxes) == 0: return text` -- no count check then. */
    if (!bboxes || bboxes->is_null || bboxes->count == 0) {
        st = ks_buf_append(out, text.data, text.len);
        goto cleanup;
    }
    if ((st = find_phrases(text.data, text.len, &spans, &span_count)))
        goto cleanup;
    if (span_count != bboxes->count) {
        st = ks_fail(KS_ERR_INVALID,
                     "The number of elements in `bboxes` should be the same as the number of "
                     "`<phrase> ... </phrase>` pairs in `text`. Got %zu v.s. %zu instead.",
                     span_count, bboxes->count);
        goto cleanup;
    }
    if ((st = check_boxes(bboxes)))
        goto cleanup;

    size_t mark = out->len, done = 0;
    for (size_t i = 0; i < span_count; i++) {
        const kt_phrase_boxes *pb = &bboxes->phrases[i];
        if ((st = ks_buf_append(out, text.data + done, spans[i].to - done)))
            break;
        done = spans[i].to;
        if (pb->is_null || pb->count == 0)
            continue;
        if ((st = append_object(pb, out)))
            break;
    }
    if (!st)
        st = ks_buf_append(out, text.data + done, text.len - done);
    if (st) { /* leave `out` as it was */
        out->len = mark;
        if (out->data)
            out->data[mark] = '\0';
    }
cleanup:
    free(spans);
    ks_buf_fini(&text);
    return st;
}

void kt_encoding_init(kt_encoding *e)
{
    memset(e, 0, sizeof *e);
    kt_ids_init(&e->input_ids);
}

void kt_encoding_fini(kt_encoding *e)
{
    kt_ids_fini(&e->input_ids);
    free(e->attention_mask);
    free(e->image_embeds_position_mask);
    kt_encoding_init(e);
}

ks_status kt_processor_encode(const kt_tokenizer *t, const char *prompt, size_t len,
                              const kt_bboxes *bboxes, kt_encoding *out)
{
    kt_encoding_fini(out);
    ks_buf text;
    ks_buf_init(&text);
    ks_status st = kt_processor_build_text(prompt, len, bboxes, &text);
    if (st)
        goto cleanup;
    /* The reference tokenizes "<s>" + text; "<s>" is a token of its own and the text starts
     * with the <image> tag, so encoding the two apart gives the same ids. */
    if ((st = kt_ids_push(&out->input_ids, KT_ID_BOS)) ||
        (st = kt_tokenizer_encode(t, text.data, text.len, &out->input_ids)))
        goto cleanup;
    size_t n = out->input_ids.len;
    /* <s> <image> 64 placeholders </image>: anything shorter means the tokenizer did not see
     * the image block as tags, and the positions below would be meaningless. */
    if (n < 3 + KT_IMAGE_TOKENS) {
        st = ks_fail(KS_ERR_INVALID, "prompt encoded to %zu ids, fewer than the image block", n);
        goto cleanup;
    }
    out->attention_mask = malloc(n);
    out->image_embeds_position_mask = calloc(n, 1);
    if (!out->attention_mask || !out->image_embeds_position_mask) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory encoding a prompt of %zu ids", n);
        goto cleanup;
    }
    memset(out->attention_mask, 1, n);
    /* text_ids[:2] + [4..67] + text_ids[66:], and the mask [0, 0] + [1] * 64 + [0, ...]. */
    for (int i = 0; i < KT_IMAGE_TOKENS; i++) {
        out->input_ids.v[2 + i] = KT_FIRST_IMAGE_ID + i;
        out->image_embeds_position_mask[2 + i] = 1;
    }
    out->len = n;
cleanup:
    if (st)
        kt_encoding_fini(out);
    ks_buf_fini(&text);
    return st;
}
