/* kt_postprocess: see postprocess.h.
 *
 * The reference (processing_kosmos2.py) works on a Python str with three regular expressions.
 * Here they become hand-written scanners over UTF-8 bytes, which is safe because every character
 * the patterns look at ('<', '>', '\n', ASCII tag text) is ASCII and never part of a multi-byte
 * sequence; code-point counts are taken only where the reference measures len(). Each scanner
 * is linear: the regexes' backtracking cannot change their results (argued at each one). */
#include "postprocess.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ks_utf8.h"
#include "patch_grid.h"
#include "unicode_digit.h"

/* CPython 3.11's default sys.get_int_max_str_digits(): int() of a longer digit string raises. */
#define PY_INT_MAX_STR_DIGITS 4300

static const char TAG_IMAGE_END[] = "</image>";
static const char TAG_PHRASE[] = "<phrase>";
static const char TAG_PHRASE_END_OBJECT[] = "</phrase><object>";
static const char TAG_OBJECT[] = "<object>";
static const char TAG_OBJECT_END[] = "</object>";
static const char TAG_DELIMITER[] = "</delimiter_of_multi_objects/>";
static const char TAG_PATCH[] = "<patch_index_";

#define LIT_LEN(lit) (sizeof(lit) - 1)

static bool has_at(const char *s, size_t len, size_t i, const char *lit, size_t lit_len)
{
    return len - i >= lit_len && memcmp(s + i, lit, lit_len) == 0;
}

static bool is_continuation(char c) { return ((unsigned char)c & 0xC0) == 0x80; }

static size_t count_cp(const char *s, size_t from, size_t to)
{
    size_t n = 0;
    for (size_t i = from; i < to; i++)
        n += !is_continuation(s[i]);
    return n;
}

/* text.split("</image>")[-1]: the tag cannot overlap itself, so this is what follows the last
 * occurrence. Returns the offset of the caption in s. */
static size_t caption_offset(const char *s, size_t len)
{
    size_t tag = LIT_LEN(TAG_IMAGE_END);
    if (len < tag)
        return 0;
    for (size_t i = len - tag + 1; i-- > 0;)
        if (s[i] == '<' && memcmp(s + i, TAG_IMAGE_END, tag) == 0)
            return i + tag;
    return 0;
}

/* ---- Entity extraction: extract_entities_with_patch_indices ------------------------------- */

/* Digits of one patch index, as they stand in the caption (any Unicode decimal digits). */
typedef struct digit_run {
    size_t from, to; /* byte offsets in the caption */
    size_t count;    /* code points */
} digit_run;

typedef struct raw_pair {
    digit_run ul, lr;
} raw_pair;

/* A match of the entity pattern, before positions are adjusted. */
typedef struct raw_entity {
    bool bare;                 /* no <phrase> group: one entity per pair, named by its indices */
    size_t span_from, span_to; /* phrase text (or the <object> position, twice) in the caption */
    size_t first_pair, pair_count;
} raw_entity;

typedef struct extraction {
    raw_pair *pairs;
    size_t pair_len, pair_cap;
    raw_entity *entities;
    size_t entity_len, entity_cap;
} extraction;

static void extraction_fini(extraction *x)
{
    free(x->pairs);
    free(x->entities);
    memset(x, 0, sizeof *x);
}

static ks_status grow(void **items, size_t *cap, size_t len, size_t size)
{
    if (len < *cap)
        return KS_OK;
    size_t cap2 = *cap ? *cap * 2 : 16;
    void *grown = realloc(*items, cap2 * size);
    if (!grown)
        return ks_fail(KS_ERR_NOMEM, "out of memory extracting entities");
    *items = grown;
    *cap = cap2;
    return KS_OK;
}

/* `<patch_index_\d+>` at s[i]: returns the offset after it, or 0 when it does not match (a
 * match never ends at 0). `\d+` is greedy and must be followed by '>', which is no digit, so
 * backtracking into it cannot help. */
static size_t match_patch(const char *s, size_t len, size_t i, digit_run *run)
{
    if (!has_at(s, len, i, TAG_PATCH, LIT_LEN(TAG_PATCH)))
        return 0;
    size_t j = i + LIT_LEN(TAG_PATCH), count = 0;
    run->from = j;
    while (j < len) {
        uint32_t cp;
        size_t n = ks_utf8_decode(s + j, len - j, &cp);
        if (kt_unicode_digit_value(cp) < 0)
            break;
        j += n;
        count++;
    }
    if (count == 0 || j >= len || s[j] != '>')
        return 0;
    run->to = j;
    run->count = count;
    return j + 1;
}

/* The reference calls int() on each index; over Python's digit limit that raises ValueError. */
static ks_status check_int_limit(const digit_run *run)
{
    if (run->count > PY_INT_MAX_STR_DIGITS)
        return ks_fail(KS_ERR_INVALID,
                       "Exceeds the limit (%d digits) for integer string conversion: value has "
                       "%zu digits; use sys.set_int_max_str_digits() to increase the limit",
                       PY_INT_MAX_STR_DIGITS, run->count);
    return KS_OK;
}

/* The object body `(?:PP</delimiter_of_multi_objects/>)*PP</object>` from s[i] (just after
 * <object>), where P = <patch_index_\d+>. Greedy `*` with backtracking accepts exactly the
 * strings this loop accepts: after a pair, only "</object>" ends and only the delimiter goes
 * on, and giving back repetitions would leave a delimiter where </object> must stand.
 * Appends the pairs and returns the offset after </object>, or 0 (pairs rolled back). */
static size_t match_object_body(const char *s, size_t len, size_t i, extraction *x, ks_status *st)
{
    size_t rollback = x->pair_len;
    for (;;) {
        raw_pair pair;
        size_t j = match_patch(s, len, i, &pair.ul);
        if (j)
            j = match_patch(s, len, j, &pair.lr);
        if (!j)
            break;
        if ((*st = grow((void **)&x->pairs, &x->pair_cap, x->pair_len, sizeof *x->pairs)))
            return 0;
        x->pairs[x->pair_len++] = pair;
        if (has_at(s, len, j, TAG_OBJECT_END, LIT_LEN(TAG_OBJECT_END)))
            return j + LIT_LEN(TAG_OBJECT_END);
        if (!has_at(s, len, j, TAG_DELIMITER, LIT_LEN(TAG_DELIMITER)))
            break;
        i = j + LIT_LEN(TAG_DELIMITER);
    }
    x->pair_len = rollback;
    return 0;
}

static ks_status add_entity(extraction *x, bool bare, size_t from, size_t to, size_t first_pair)
{
    ks_status st = grow((void **)&x->entities, &x->entity_cap, x->entity_len, sizeof *x->entities);
    if (st)
        return st;
    raw_entity *e = &x->entities[x->entity_len++];
    e->bare = bare;
    e->span_from = from;
    e->span_to = to;
    e->first_pair = first_pair;
    e->pair_count = x->pair_len - first_pair;
    /* int() runs on every index of the match, in order, before anything else can fail. */
    for (size_t k = first_pair; k < x->pair_len; k++)
        if ((st = check_int_limit(&x->pairs[k].ul)) || (st = check_int_limit(&x->pairs[k].lr)))
            return st;
    return KS_OK;
}

/* re.finditer of
 *   (?:(<phrase>([^<]+)</phrase>))?<object>(BODY)</object>
 * Left to right, non-overlapping. At a '<': with "<phrase>", the phrase is the whole run of
 * non-'<' characters (`[^<]+` can only give back characters, after which "</phrase>" cannot
 * start), and if the rest fails the empty alternative needs "<object>" here, which it is not.
 * Without "<phrase>", only a bare "<object>" can match. */
static ks_status extract_entities(const char *s, size_t len, extraction *x)
{
    ks_status st = KS_OK;
    size_t p = 0;
    while (p < len) {
        const char *lt = memchr(s + p, '<', len - p);
        if (!lt)
            break;
        p = (size_t)(lt - s);
        if (has_at(s, len, p, TAG_PHRASE, LIT_LEN(TAG_PHRASE))) {
            size_t q = p + LIT_LEN(TAG_PHRASE), r = q;
            while (r < len && s[r] != '<')
                r++;
            if (r > q && has_at(s, len, r, TAG_PHRASE_END_OBJECT, LIT_LEN(TAG_PHRASE_END_OBJECT))) {
                size_t first = x->pair_len;
                size_t end = match_object_body(s, len, r + LIT_LEN(TAG_PHRASE_END_OBJECT), x, &st);
                if (st)
                    return st;
                if (end) {
                    if ((st = add_entity(x, false, q, r, first)))
                        return st;
                    p = end;
                    continue;
                }
            }
        } else if (has_at(s, len, p, TAG_OBJECT, LIT_LEN(TAG_OBJECT))) {
            size_t first = x->pair_len;
            size_t end = match_object_body(s, len, p + LIT_LEN(TAG_OBJECT), x, &st);
            if (st)
                return st;
            if (end) {
                if ((st = add_entity(x, true, p, p, first)))
                    return st;
                p = end;
                continue;
            }
        }
        p++;
    }
    return KS_OK;
}

/* ---- Tag removal: re.sub("<.*?>", "", ...) and adjust_entity_positions ------------------- */

/* First '>' or '\n' at or after `from` (len when none), remembering the last answer: the
 * queries come with increasing `from`, so every byte is looked at once in total. */
typedef struct stop_cache {
    bool valid;
    size_t from, pos;
} stop_cache;

static size_t next_stop(const char *s, size_t len, size_t from, stop_cache *c)
{
    if (c->valid && c->from <= from && c->pos >= from)
        return c->pos;
    size_t j = from;
    while (j < len && s[j] != '>' && s[j] != '\n')
        j++;
    c->valid = true;
    c->from = from;
    c->pos = j;
    return j;
}

/* Removes every `<.*?>` match from s into `out` and answers the position queries: query k
 * (non-decreasing byte offsets) gets len(re.sub("<.*?>", "", s[:k])) in code points.
 *
 * That prefix result follows from the full scan: the prefix loses exactly the matches that end
 * at or before k. A match [a, b) with a < k < b stays in the prefix, since no '>' lies in
 * (a, k); for the same reason no other '<' in (a, k) can match inside the prefix. */
static ks_status remove_tags(const char *s, size_t len, const size_t *queries, int64_t *answers,
                             size_t query_count, ks_buf *out)
{
    ks_status st = KS_OK;
    stop_cache cache = {0};
    size_t i = 0, q = 0;              /* scan position; next query */
    size_t cursor = 0, cursor_cp = 0; /* code points of s[:cursor] */
    size_t removed_cp = 0;            /* code points in the matches so far */
    for (;;) {
        /* The next match: the first '<' whose next '>' comes before any '\n'. */
        size_t a = i, b = len;
        bool found = false;
        while (a < len) {
            const char *lt = memchr(s + a, '<', len - a);
            if (!lt)
                break;
            a = (size_t)(lt - s);
            size_t stop = next_stop(s, len, a + 1, &cache);
            if (stop < len && s[stop] == '>') {
                b = stop + 1;
                found = true;
                break;
            }
            a++;
        }
        size_t limit = found ? b : (size_t)-1;
        for (; q < query_count && queries[q] < limit; q++) {
            cursor_cp += count_cp(s, cursor, queries[q]);
            cursor = queries[q];
            answers[q] = (int64_t)(cursor_cp - removed_cp);
        }
        if (!found)
            break;
        if ((st = ks_buf_append(out, s + i, a - i)))
            return st;
        removed_cp += count_cp(s, a, b);
        i = b;
    }
    return ks_buf_append(out, s + i, len - i);
}

/* ---- Whitespace cleanup and assembly: _cleanup_spaces ------------------------------------- */

/* Code points and bytes of str.isspace() characters at the start (or end) of s[0..len). */
static void leading_space(const char *s, size_t len, size_t *cps, size_t *bytes)
{
    size_t i = 0, n = 0;
    while (i < len) {
        uint32_t cp;
        size_t step = ks_utf8_decode(s + i, len - i, &cp);
        if (!ks_unicode_is_space(cp))
            break;
        i += step;
        n++;
    }
    *cps = n;
    *bytes = i;
}

static void trailing_space(const char *s, size_t len, size_t *cps, size_t *bytes)
{
    size_t i = len, n = 0;
    while (i > 0) {
        size_t start = i - 1;
        while (start > 0 && is_continuation(s[start]))
            start--;
        uint32_t cp;
        ks_utf8_decode(s + start, i - start, &cp);
        if (!ks_unicode_is_space(cp))
            break;
        i = start;
        n++;
    }
    *cps = n;
    *bytes = len - i;
}

static char *copy_bytes(const char *s, size_t len)
{
    char *c = malloc(len + 1);
    if (c) {
        memcpy(c, s, len);
        c[len] = '\0';
    }
    return c;
}

/* Python's int value of a digit run, as ASCII digits (into `buf`, reset first). */
static ks_status ascii_digits(const char *s, const digit_run *run, ks_buf *buf)
{
    ks_buf_clear(buf);
    for (size_t j = run->from; j < run->to;) {
        uint32_t cp;
        j += ks_utf8_decode(s + j, run->to - j, &cp);
        char d = (char)('0' + kt_unicode_digit_value(cp));
        ks_status st = ks_buf_append(buf, &d, 1);
        if (st)
            return st;
    }
    return KS_OK;
}

static const char *strip_zeros(const ks_buf *b, size_t *len)
{
    const char *d = b->data;
    *len = b->len;
    while (*len > 1 && *d == '0')
        d++, (*len)--;
    return d;
}

static int64_t saturating_value(const ks_buf *digits)
{
    int64_t v = 0;
    for (size_t i = 0; i < digits->len; i++) {
        int d = digits->data[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return INT64_MAX;
        v = v * 10 + d;
    }
    return v;
}

/* Boxes (and their patch pairs) for pairs[0, count) into e. */
static ks_status convert_boxes(const char *s, const raw_pair *pairs, size_t count, kt_entity *e,
                               ks_buf *ul, ks_buf *lr)
{
    e->boxes = count ? malloc(count * sizeof *e->boxes) : NULL;
    e->patches = count ? malloc(count * sizeof *e->patches) : NULL;
    if (count && (!e->boxes || !e->patches))
        return ks_fail(KS_ERR_NOMEM, "out of memory converting boxes");
    for (size_t k = 0; k < count; k++) {
        ks_status st;
        if ((st = ascii_digits(s, &pairs[k].ul, ul)) || (st = ascii_digits(s, &pairs[k].lr, lr)) ||
            (st = kt_patch_indices_to_box(ul->data, ul->len, lr->data, lr->len, e->boxes[k])))
            return st;
        e->patches[k][0] = saturating_value(ul);
        e->patches[k][1] = saturating_value(lr);
        e->box_count = k + 1;
    }
    return KS_OK;
}

/* The fake name of a bare object: f"<patch_index_{UL}><patch_index_{LR}>" of the int values. */
static ks_status bare_name(const char *s, const raw_pair *pair, kt_entity *e, ks_buf *ul,
                           ks_buf *lr)
{
    ks_status st;
    if ((st = ascii_digits(s, &pair->ul, ul)) || (st = ascii_digits(s, &pair->lr, lr)))
        return st;
    size_t ul_len, lr_len;
    const char *ul_d = strip_zeros(ul, &ul_len), *lr_d = strip_zeros(lr, &lr_len);
    ks_buf name;
    ks_buf_init(&name);
    if ((st = ks_buf_printf(&name, "<patch_index_%.*s><patch_index_%.*s>", (int)ul_len, ul_d,
                            (int)lr_len, lr_d))) {
        ks_buf_fini(&name);
        return st;
    }
    e->phrase = ks_buf_detach(&name, &e->phrase_len);
    return e->phrase ? KS_OK : ks_fail(KS_ERR_NOMEM, "out of memory naming an entity");
}

typedef struct byte_query {
    int64_t cp;
    size_t *dest;
} byte_query;

static int compare_byte_query(const void *a, const void *b)
{
    int64_t x = ((const byte_query *)a)->cp, y = ((const byte_query *)b)->cp;
    return (x > y) - (x < y);
}

/* start_byte/end_byte from the code-point spans, clamped into the text. */
static ks_status fill_byte_offsets(kt_grounding *g)
{
    size_t n = g->entity_count * 2;
    if (n == 0)
        return KS_OK;
    byte_query *qs = malloc(n * sizeof *qs);
    if (!qs)
        return ks_fail(KS_ERR_NOMEM, "out of memory mapping entity spans");
    for (size_t k = 0; k < g->entity_count; k++) {
        qs[2 * k] = (byte_query){g->entities[k].start, &g->entities[k].start_byte};
        qs[2 * k + 1] = (byte_query){g->entities[k].end, &g->entities[k].end_byte};
    }
    qsort(qs, n, sizeof *qs, compare_byte_query);
    size_t byte = 0;
    int64_t cp = 0;
    for (size_t k = 0; k < n; k++) {
        while (cp < qs[k].cp && byte < g->text_len) {
            byte++;
            while (byte < g->text_len && is_continuation(g->text[byte]))
                byte++;
            cp++;
        }
        *qs[k].dest = qs[k].cp <= 0 ? 0 : byte;
    }
    free(qs);
    for (size_t k = 0; k < g->entity_count; k++)
        if (g->entities[k].end_byte < g->entities[k].start_byte)
            g->entities[k].end_byte = g->entities[k].start_byte;
    return KS_OK;
}

/* ---- Public functions -------------------------------------------------------------------- */

void kt_grounding_init(kt_grounding *g) { memset(g, 0, sizeof *g); }

void kt_grounding_fini(kt_grounding *g)
{
    for (size_t k = 0; k < g->entity_count; k++) {
        free(g->entities[k].phrase);
        free(g->entities[k].boxes);
        free(g->entities[k].patches);
    }
    free(g->entities);
    free(g->text);
    memset(g, 0, sizeof *g);
}

static ks_status check_input(const char *generated, size_t len)
{
    if (len > KT_POSTPROCESS_MAX_BYTES)
        return ks_fail(KS_ERR_LIMIT, "generated text of %zu bytes is over the %zu-byte limit", len,
                       KT_POSTPROCESS_MAX_BYTES);
    if (len && !generated)
        return ks_fail(KS_ERR_INVALID, "generated text is NULL");
    if (!ks_utf8_valid(generated, len))
        return ks_fail(KS_ERR_INVALID, "generated text is not valid UTF-8");
    return KS_OK;
}

ks_status kt_postprocess_raw(const char *generated, size_t len, ks_buf *out)
{
    ks_status st = check_input(generated, len);
    if (st)
        return st;
    size_t from = caption_offset(generated, len);
    return ks_buf_append(out, generated + from, len - from);
}

ks_status kt_postprocess(const char *generated, size_t len, kt_grounding *out)
{
    kt_grounding_fini(out);
    ks_status st = check_input(generated, len);
    if (st)
        return st;
    size_t from = caption_offset(generated, len);
    const char *s = generated + from;
    size_t n = len - from;

    extraction x = {0};
    ks_buf processed, ul, lr;
    ks_buf_init(&processed);
    ks_buf_init(&ul);
    ks_buf_init(&lr);
    size_t *queries = NULL;
    int64_t *answers = NULL;

    if ((st = extract_entities(s, n, &x)))
        goto cleanup;

    /* One entity per phrase match, one per pair of a bare object; all share their match's
     * two span queries (start, end). */
    size_t qn = x.entity_len * 2, total = 0;
    for (size_t k = 0; k < x.entity_len; k++)
        total += x.entities[k].bare ? x.entities[k].pair_count : 1;
    queries = malloc((qn ? qn : 1) * sizeof *queries);
    answers = malloc((qn ? qn : 1) * sizeof *answers);
    if (!queries || !answers) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory post-processing");
        goto cleanup;
    }
    for (size_t k = 0; k < x.entity_len; k++) {
        queries[2 * k] = x.entities[k].span_from;
        queries[2 * k + 1] = x.entities[k].span_to;
    }
    if ((st = remove_tags(s, n, queries, answers, qn, &processed)))
        goto cleanup;

    size_t lead_cp, lead_bytes, trail_cp, trail_bytes;
    leading_space(processed.data ? processed.data : "", processed.len, &lead_cp, &lead_bytes);
    trailing_space(processed.data + lead_bytes, processed.len - lead_bytes, &trail_cp,
                   &trail_bytes);
    out->text_len = processed.len - lead_bytes - trail_bytes;
    out->text = copy_bytes(processed.data ? processed.data + lead_bytes : "", out->text_len);
    out->entities = total ? calloc(total, sizeof *out->entities) : NULL;
    if (!out->text || (total && !out->entities)) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory post-processing");
        goto cleanup;
    }

    for (size_t k = 0; k < x.entity_len; k++) {
        const raw_entity *r = &x.entities[k];
        int64_t start = answers[2 * k] - (int64_t)lead_cp;
        int64_t end = answers[2 * k + 1] - (int64_t)lead_cp;
        if (!r->bare) {
            kt_entity *e = &out->entities[out->entity_count++];
            size_t nl, nl_bytes, nt, nt_bytes;
            const char *name = s + r->span_from;
            size_t name_len = r->span_to - r->span_from;
            leading_space(name, name_len, &nl, &nl_bytes);
            trailing_space(name + nl_bytes, name_len - nl_bytes, &nt, &nt_bytes);
            /* _cleanup_spaces counts trailing spaces on the unstripped name: for an
             * all-space name both counts are the whole name. */
            if (nl_bytes == name_len)
                nt = nl;
            e->start = start + (int64_t)nl;
            e->end = end - (int64_t)nt;
            e->phrase_len = name_len - nl_bytes - nt_bytes; /* 0 when all space */
            e->phrase = copy_bytes(name + nl_bytes, e->phrase_len);
            if (!e->phrase) {
                st = ks_fail(KS_ERR_NOMEM, "out of memory post-processing");
                goto cleanup;
            }
            if ((st = convert_boxes(s, &x.pairs[r->first_pair], r->pair_count, e, &ul, &lr)))
                goto cleanup;
        } else {
            for (size_t j = 0; j < r->pair_count; j++) {
                kt_entity *e = &out->entities[out->entity_count++];
                const raw_pair *pair = &x.pairs[r->first_pair + j];
                e->start = start;
                e->end = end;
                if ((st = bare_name(s, pair, e, &ul, &lr)) ||
                    (st = convert_boxes(s, pair, 1, e, &ul, &lr)))
                    goto cleanup;
            }
        }
    }
    st = fill_byte_offsets(out);

cleanup:
    if (st)
        kt_grounding_fini(out);
    free(queries);
    free(answers);
    extraction_fini(&x);
    ks_buf_fini(&processed);
    ks_buf_fini(&ul);
    ks_buf_fini(&lr);
    return st;
}

json_t *kt_grounding_to_json(const kt_grounding *g)
{
    json_t *root = json_object(), *entities = json_array(), *boxes = NULL;
    if (!root || !entities ||
        json_object_set_new(root, "text", json_stringn(g->text ? g->text : "", g->text_len)))
        goto fail;
    for (size_t k = 0; k < g->entity_count; k++) {
        const kt_entity *e = &g->entities[k];
        if (!(boxes = json_array()))
            goto fail;
        for (size_t j = 0; j < e->box_count; j++)
            if (json_array_append_new(boxes, json_pack("[ffff]", e->boxes[j][0], e->boxes[j][1],
                                                       e->boxes[j][2], e->boxes[j][3])))
                goto fail;
        /* "O" takes its own reference, so `boxes` stays ours to drop either way. */
        if (json_array_append_new(entities,
                                  json_pack("[s%[II]O]", e->phrase ? e->phrase : "", e->phrase_len,
                                            (json_int_t)e->start, (json_int_t)e->end, boxes)))
            goto fail;
        json_decref(boxes);
        boxes = NULL;
    }
    if (json_object_set(root, "entities", entities))
        goto fail;
    json_decref(entities);
    return root;
fail:
    json_decref(boxes);
    json_decref(entities);
    json_decref(root);
    return NULL;
}
