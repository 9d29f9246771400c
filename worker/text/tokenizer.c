/* kt_tokenizer: see tokenizer.h. The pipeline mirrors the reference (transformers' fast
 * XLMRobertaTokenizer with Kosmos2Processor's added tokens, run by `tokenizers`):
 *
 *   1. split the raw text on added tokens (leftmost-longest; the tags swallow the white space
 *      on their left, the five specials do not);
 *   2. each text segment: Precompiled normalization (charsmap.c), split on Unicode White_Space,
 *      then Metaspace: "▁" in front of each word and a split before every "▁";
 *   3. each piece: unigram Viterbi (unigram.c).
 *
 * Decoding joins the token strings, the first token losing its "▁"s and the others turning "▁"
 * into spaces (the Metaspace decoder), then optionally applies transformers' clean-up. */
#include "tokenizer.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "charsmap.h"
#include "ks_file.h"
#include "ks_utf8.h"
#include "sentencepiece_model.pb-c.h"
#include "trie.h"
#include "unigram.h"

#define SPM_FILE "sentencepiece.bpe.model"
#define CONFIG_FILE "tokenizer_config.json"
#define MAX_MODEL_BYTES (64u << 20)
#define MAX_CONFIG_BYTES (4u << 20)
#define MAX_PIECES 10000000u
#define PATCH_COUNT (KT_PATCH_GRID * KT_PATCH_GRID)
#define SPECIAL_COUNT 5 /* <s> <pad> </s> <unk> <mask> */
#define ADDED_COUNT (SPECIAL_COUNT + KT_TAG_COUNT + PATCH_COUNT)

/* "▁" (U+2581), the Metaspace replacement. */
static const char META[] = "\xE2\x96\x81";
#define META_LEN 3

static const char *const TAG_TEXT[KT_TAG_COUNT] = {
    "</doc>",      "<image>",   "</image>", "</chunk>",  "</line>",
    "<phrase>",    "</phrase>", "<object>", "</object>", "</delimiter_of_multi_objects/>",
    "<grounding>",
};

struct kt_tokenizer {
    char *text;          /* every token's string, NUL-terminated, back to back */
    size_t *text_offset; /* (vocab_size) where token id's string starts in `text` */
    size_t vocab_size;
    int32_t mask_id;
    kt_charsmap *charsmap;
    kt_unigram *model; /* ids 0 .. mask_id */
    kt_trie *added;    /* value k -> added_id[k] */
    int32_t added_id[ADDED_COUNT];
    bool added_lstrip[ADDED_COUNT];
    bool clean_up_default;
};

void kt_ids_init(kt_ids *ids)
{
    ids->v = NULL;
    ids->len = 0;
    ids->cap = 0;
}

void kt_ids_fini(kt_ids *ids)
{
    free(ids->v);
    kt_ids_init(ids);
}

ks_status kt_ids_push(kt_ids *ids, int32_t id)
{
    if (ids->len == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *grown = realloc(ids->v, cap * sizeof *grown);
        if (!grown)
            return ks_fail(KS_ERR_NOMEM, "out of memory for %zu token ids", cap);
        ids->v = grown;
        ids->cap = cap;
    }
    ids->v[ids->len++] = id;
    return KS_OK;
}

/* Unicode White_Space: what Rust's char::is_whitespace and regex `\s` match, which is where the
 * reference splits words and what lstrip swallows (unlike Python's isspace, not U+001C..1F). */
static bool is_white_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* ---- loading ---------------------------------------------------------------------------- */

static ks_status read_config(const char *path, bool *clean_up)
{
    json_error_t error;
    /* Ints as reals: transformers writes model_max_length as 1e30 spelled out as an integer,
     * which does not fit jansson's json_int_t. A repeated key keeps its last value, as in
     * Python's json. */
    json_t *root = json_load_file(path, JSON_DECODE_INT_AS_REAL, &error);
    ks_status st = KS_OK;
    *clean_up = false; /* transformers' default when the key is absent */
    if (!root)
        return ks_fail(json_error_code(&error) == json_error_cannot_open_file ? KS_ERR_IO
                                                                              : KS_ERR_FORMAT,
                       "%s: line %d: %s", path, error.line, error.text);
    if (!json_is_object(root)) {
        st = ks_fail(KS_ERR_FORMAT, "%s: not a JSON object", path);
        goto done;
    }
    json_t *value = json_object_get(root, "clean_up_tokenization_spaces");
    if (value && json_is_boolean(value))
        *clean_up = json_is_true(value);
    else if (value && !json_is_null(value))
        st = ks_fail(KS_ERR_FORMAT, "%s: clean_up_tokenization_spaces is not a boolean", path);
done:
    json_decref(root);
    return st;
}

/* Checks what the rest of the loader relies on: a unigram model with the <unk> <s> </s> head
 * XLM-R's id layout assumes, valid UTF-8 pieces, finite scores and a charsmap. */
static ks_status check_model(const Sentencepiece__ModelProto *proto, const char *path)
{
    if (proto->n_pieces < 4 || proto->n_pieces > MAX_PIECES)
        return ks_fail(KS_ERR_FORMAT, "%s: %zu pieces (expected 4 .. %u)", path, proto->n_pieces,
                       MAX_PIECES);
    if (proto->trainer_spec && proto->trainer_spec->has_model_type &&
        proto->trainer_spec->model_type != SENTENCEPIECE__TRAINER_SPEC__MODEL_TYPE__UNIGRAM)
        return ks_fail(KS_ERR_UNSUPPORTED, "%s: model type %d is not unigram", path,
                       (int)proto->trainer_spec->model_type);
    if (proto->trainer_spec && proto->trainer_spec->byte_fallback)
        return ks_fail(KS_ERR_UNSUPPORTED, "%s: byte fallback is not supported", path);
    if (!proto->normalizer_spec || !proto->normalizer_spec->has_precompiled_charsmap ||
        proto->normalizer_spec->precompiled_charsmap.len == 0)
        return ks_fail(KS_ERR_UNSUPPORTED, "%s: no precompiled normalization charsmap", path);
    for (size_t i = 0; i < proto->n_pieces; i++) {
        const Sentencepiece__ModelProto__SentencePiece *p = proto->pieces[i];
        if (!p->piece || p->piece[0] == '\0')
            return ks_fail(KS_ERR_FORMAT, "%s: piece %zu has no text", path, i);
        if (!ks_utf8_valid(p->piece, strlen(p->piece)))
            return ks_fail(KS_ERR_FORMAT, "%s: piece %zu is not UTF-8", path, i);
        if (!isfinite(p->score))
            return ks_fail(KS_ERR_FORMAT, "%s: piece %zu has a non-finite score", path, i);
    }
    static const Sentencepiece__ModelProto__SentencePiece__Type head[3] = {
        SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__TYPE__UNKNOWN,
        SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__TYPE__CONTROL,
        SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__TYPE__CONTROL,
    };
    for (size_t i = 0; i < 3; i++) {
        const Sentencepiece__ModelProto__SentencePiece *p = proto->pieces[i];
        Sentencepiece__ModelProto__SentencePiece__Type type =
            p->has_type ? p->type : SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__TYPE__NORMAL;
        if (type != head[i])
            return ks_fail(KS_ERR_FORMAT,
                           "%s: piece %zu (\"%s\") is not <unk>/<s>/</s> as XLM-R expects", path, i,
                           p->piece);
    }
    return KS_OK;
}

/* Lays out every token string in id order (see tokenizer.h for the layout). */
static ks_status build_vocab(kt_tokenizer *t, const Sentencepiece__ModelProto *proto)
{
    static const char *const head[4] = {"<s>", "<pad>", "</s>", "<unk>"};
    size_t n_spm = proto->n_pieces;
    t->mask_id = (int32_t)(n_spm + 1);
    t->vocab_size = (size_t)t->mask_id + 1 + KT_TAG_COUNT + PATCH_COUNT;
    ks_buf text;
    ks_buf_init(&text);
    ks_status st = KS_OK;
    t->text_offset = malloc(t->vocab_size * sizeof *t->text_offset);
    if (!t->text_offset)
        return ks_fail(KS_ERR_NOMEM, "out of memory for %zu tokens", t->vocab_size);
    size_t id = 0;
#define ADD(str)                                                                                   \
    do {                                                                                           \
        t->text_offset[id++] = text.len;                                                           \
        if ((st = ks_buf_append(&text, (str), strlen(str) + 1)) != KS_OK)                          \
            goto done;                                                                             \
    } while (0)
    for (size_t i = 0; i < 4; i++)
        ADD(head[i]);
    for (size_t i = 3; i < n_spm; i++)
        ADD(proto->pieces[i]->piece);
    ADD("<mask>");
    for (size_t i = 0; i < KT_TAG_COUNT; i++)
        ADD(TAG_TEXT[i]);
    for (int k = 0; k < PATCH_COUNT; k++) {
        char name[32];
        snprintf(name, sizeof name, "<patch_index_%04d>", k);
        ADD(name);
    }
#undef ADD
    t->text = ks_buf_detach(&text, NULL);
    if (!t->text)
        st = ks_fail(KS_ERR_NOMEM, "out of memory for the token strings");
done:
    ks_buf_fini(&text);
    return st;
}

/* The unigram model sees ids 0 .. mask_id, the specials scoring 0 like the reference's. */
static ks_status build_model(kt_tokenizer *t, const Sentencepiece__ModelProto *proto)
{
    size_t n = (size_t)t->mask_id + 1;
    const char **keys = malloc(n * sizeof *keys);
    size_t *lens = malloc(n * sizeof *lens);
    double *scores = malloc(n * sizeof *scores);
    ks_status st = KS_OK;
    if (!keys || !lens || !scores) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory for the unigram model");
        goto done;
    }
    for (size_t id = 0; id < n; id++) {
        keys[id] = t->text + t->text_offset[id];
        lens[id] = strlen(keys[id]);
        scores[id] = (id >= 4 && id < n - 1) ? (double)proto->pieces[id - 1]->score : 0.0;
    }
    st = kt_unigram_new(keys, lens, scores, n, KT_ID_UNK, &t->model);
done:
    free(keys);
    free(lens);
    free(scores);
    return st;
}

static ks_status build_added(kt_tokenizer *t)
{
    const char *keys[ADDED_COUNT];
    size_t lens[ADDED_COUNT];
    static const int32_t special_ids[4] = {KT_ID_BOS, KT_ID_PAD, KT_ID_EOS, KT_ID_UNK};
    for (size_t k = 0; k < ADDED_COUNT; k++) {
        int32_t id;
        if (k < 4)
            id = special_ids[k];
        else
            id = t->mask_id + (int32_t)(k - 4); /* <mask>, then the tags and patches */
        t->added_id[k] = id;
        /* The processor adds the tags with lstrip=True; the specials keep lstrip=False. */
        t->added_lstrip[k] = k >= SPECIAL_COUNT;
        keys[k] = t->text + t->text_offset[id];
        lens[k] = strlen(keys[k]);
    }
    return kt_trie_new(keys, lens, ADDED_COUNT, &t->added);
}

ks_status kt_tokenizer_new_from_files(const char *spm_path, const char *config_path,
                                      kt_tokenizer **out)
{
    ks_status status = KS_OK;
    kt_tokenizer *t = NULL;
    char *data = NULL;
    size_t len = 0;
    Sentencepiece__ModelProto *proto = NULL;
    *out = NULL;

    if ((status = ks_file_read(spm_path, MAX_MODEL_BYTES, &data, &len)) != KS_OK)
        goto cleanup;
    proto = sentencepiece__model_proto__unpack(NULL, len, (const uint8_t *)data);
    if (!proto) {
        status = ks_fail(KS_ERR_FORMAT, "%s: not a SentencePiece model (protobuf parse failed)",
                         spm_path);
        goto cleanup;
    }
    if ((status = check_model(proto, spm_path)) != KS_OK)
        goto cleanup;
    t = calloc(1, sizeof *t);
    if (!t) {
        status = ks_fail(KS_ERR_NOMEM, "out of memory for a tokenizer");
        goto cleanup;
    }
    if (config_path && (status = read_config(config_path, &t->clean_up_default)) != KS_OK)
        goto cleanup;
    if ((status = build_vocab(t, proto)) != KS_OK || (status = build_model(t, proto)) != KS_OK ||
        (status = build_added(t)) != KS_OK ||
        (status = kt_charsmap_new(proto->normalizer_spec->precompiled_charsmap.data,
                                  proto->normalizer_spec->precompiled_charsmap.len,
                                  &t->charsmap)) != KS_OK) {
        /* Only these messages lack the file's name; the ones above already carry it. */
        ks_error_prefix("%s", spm_path);
        goto cleanup;
    }
    *out = t;
    t = NULL;
cleanup:
    if (proto)
        sentencepiece__model_proto__free_unpacked(proto, NULL);
    free(data);
    kt_tokenizer_destroy(&t);
    return status;
}

ks_status kt_tokenizer_new(const char *model_dir, kt_tokenizer **out)
{
    ks_status status = KS_OK;
    *out = NULL;
    if ((status = ks_dir_require(model_dir, "model folder")) != KS_OK)
        return status;
    char *spm = ks_path_join(model_dir, SPM_FILE);
    char *config = ks_path_join(model_dir, CONFIG_FILE);
    if (!spm || !config)
        status = ks_fail(KS_ERR_NOMEM, "out of memory");
    else
        status = kt_tokenizer_new_from_files(spm, ks_file_exists(config) ? config : NULL, out);
    free(spm);
    free(config);
    return status;
}

void kt_tokenizer_destroy(kt_tokenizer **tokenizer)
{
    if (!tokenizer || !*tokenizer)
        return;
    kt_tokenizer *t = *tokenizer;
    free(t->text);
    free(t->text_offset);
    kt_charsmap_destroy(&t->charsmap);
    kt_unigram_destroy(&t->model);
    kt_trie_destroy(&t->added);
    free(t);
    *tokenizer = NULL;
}

/* ---- encoding --------------------------------------------------------------------------- */

typedef struct encode_scratch {
    ks_buf normalized;
    ks_buf piece;
    kt_lattice lattice;
} encode_scratch;

/* Metaspace on one white-space-free word: a "▁" in front unless it has one, then a piece
 * starting at every "▁". Each piece is "▁" + the text up to the next "▁". */
static ks_status encode_word(const kt_tokenizer *t, const char *w, size_t len,
                             encode_scratch *scratch, kt_ids *out)
{
    size_t pos = 0;
    if (len >= META_LEN && memcmp(w, META, META_LEN) == 0)
        pos = META_LEN;
    for (;;) {
        size_t end = pos;
        while (end < len && !(len - end >= META_LEN && memcmp(w + end, META, META_LEN) == 0))
            end++;
        ks_status st;
        ks_buf_clear(&scratch->piece);
        if ((st = ks_buf_append(&scratch->piece, META, META_LEN)) != KS_OK ||
            (st = ks_buf_append(&scratch->piece, w + pos, end - pos)) != KS_OK ||
            (st = kt_unigram_encode(t->model, scratch->piece.data, scratch->piece.len,
                                    &scratch->lattice, out)) != KS_OK)
            return st;
        if (end >= len)
            return KS_OK;
        pos = end + META_LEN;
    }
}

/* One stretch of text between added tokens: normalize, split on white space, encode words. */
static ks_status encode_segment(const kt_tokenizer *t, const char *s, size_t len,
                                encode_scratch *scratch, kt_ids *out)
{
    ks_status st;
    ks_buf_clear(&scratch->normalized);
    if ((st = kt_charsmap_normalize(t->charsmap, s, len, &scratch->normalized)) != KS_OK)
        return st;
    const char *n = scratch->normalized.data;
    size_t n_len = scratch->normalized.len, pos = 0, word = 0;
    bool in_word = false;
    while (pos < n_len) {
        uint32_t cp;
        size_t step = ks_utf8_decode(n + pos, n_len - pos, &cp);
        if (is_white_space(cp)) {
            if (in_word && (st = encode_word(t, n + word, pos - word, scratch, out)) != KS_OK)
                return st;
            in_word = false;
        } else if (!in_word) {
            in_word = true;
            word = pos;
        }
        pos += step;
    }
    if (in_word)
        return encode_word(t, n + word, n_len - word, scratch, out);
    return KS_OK;
}

/* The start of the white space that ends s[floor..pos), or pos when there is none. */
static size_t white_space_run_start(const char *s, size_t floor, size_t pos)
{
    while (pos > floor) {
        size_t start = pos - 1;
        while (start > floor && ((unsigned char)s[start] & 0xC0) == 0x80)
            start--;
        uint32_t cp;
        ks_utf8_decode(s + start, pos - start, &cp);
        if (!is_white_space(cp))
            break;
        pos = start;
    }
    return pos;
}

/* The longest added token starting at s[pos], as an index into added_id, or -1. */
static int longest_added(const kt_tokenizer *t, const char *s, size_t len, size_t pos, size_t *end)
{
    int found = -1;
    int32_t node = KT_TRIE_ROOT;
    for (size_t i = pos; i < len; i++) {
        node = kt_trie_child(t->added, node, (unsigned char)s[i]);
        if (node == KT_TRIE_NONE)
            break;
        int32_t k = kt_trie_value(t->added, node);
        if (k >= 0) {
            found = k;
            *end = i + 1;
        }
    }
    return found;
}

ks_status kt_tokenizer_encode(const kt_tokenizer *t, const char *text, size_t len, kt_ids *out)
{
    if (len > 0 && !text)
        return ks_fail(KS_ERR_INVALID, "encode: NULL text");
    if (!ks_utf8_valid(text, len))
        return ks_fail(KS_ERR_INVALID, "encode: the text is not well-formed UTF-8");
    size_t first = out->len;
    encode_scratch scratch;
    ks_buf_init(&scratch.normalized);
    ks_buf_init(&scratch.piece);
    kt_lattice_init(&scratch.lattice);
    ks_status st = KS_OK;
    size_t segment = 0, pos = 0;
    while (pos < len) {
        size_t end = 0;
        int k = longest_added(t, text, len, pos, &end);
        if (k < 0) {
            pos++;
            continue;
        }
        size_t start = pos;
        if (t->added_lstrip[k])
            start = white_space_run_start(text, segment, pos);
        if (segment < start &&
            (st = encode_segment(t, text + segment, start - segment, &scratch, out)) != KS_OK)
            goto done;
        if ((st = kt_ids_push(out, t->added_id[k])) != KS_OK)
            goto done;
        segment = pos = end;
    }
    if (segment < len)
        st = encode_segment(t, text + segment, len - segment, &scratch, out);
done:
    if (st != KS_OK)
        out->len = first; /* all or nothing */
    ks_buf_fini(&scratch.normalized);
    ks_buf_fini(&scratch.piece);
    kt_lattice_fini(&scratch.lattice);
    return st;
}

/* ---- decoding --------------------------------------------------------------------------- */

static bool is_special(const kt_tokenizer *t, int32_t id)
{
    return (id >= KT_ID_BOS && id <= KT_ID_UNK) || id == t->mask_id;
}

/* Python's str.replace(from, to) on the whole of `in`, appended to `out`. */
static ks_status replace_all(const ks_buf *in, const char *from, const char *to, ks_buf *out)
{
    size_t from_len = strlen(from), to_len = strlen(to), pos = 0;
    ks_status st;
    while (pos < in->len) {
        const char *hit = NULL;
        for (size_t i = pos; i + from_len <= in->len; i++) {
            if (memcmp(in->data + i, from, from_len) == 0) {
                hit = in->data + i;
                break;
            }
        }
        size_t keep = hit ? (size_t)(hit - in->data) - pos : in->len - pos;
        if ((st = ks_buf_append(out, in->data + pos, keep)) != KS_OK)
            return st;
        pos += keep;
        if (!hit)
            break;
        if ((st = ks_buf_append(out, to, to_len)) != KS_OK)
            return st;
        pos += from_len;
    }
    return KS_OK;
}

/* transformers' clean_up_tokenization: these replacements, in this order. */
static ks_status clean_up(ks_buf *text)
{
    static const char *const pairs[][2] = {
        {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
        {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
    };
    ks_buf next;
    ks_buf_init(&next);
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        ks_buf_clear(&next);
        ks_status st = replace_all(text, pairs[i][0], pairs[i][1], &next);
        if (st != KS_OK) {
            ks_buf_fini(&next);
            return st;
        }
        ks_buf swap = *text;
        *text = next;
        next = swap;
    }
    ks_buf_fini(&next);
    return KS_OK;
}

ks_status kt_tokenizer_decode(const kt_tokenizer *t, const int32_t *ids, size_t n,
                              const kt_decode_options *options, ks_buf *out)
{
    bool skip = options && options->skip_special_tokens;
    bool tidy = options && options->clean_up_spaces >= 0 ? options->clean_up_spaces != 0
                                                         : t->clean_up_default;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= t->vocab_size)
            return ks_fail(KS_ERR_INVALID, "decode: id %d at %zu is outside [0, %zu)", (int)ids[i],
                           i, t->vocab_size);
    ks_buf text;
    ks_buf_init(&text);
    ks_status st = KS_OK;
    bool first = true;
    for (size_t i = 0; i < n && st == KS_OK; i++) {
        if (skip && is_special(t, ids[i]))
            continue;
        const char *s = t->text + t->text_offset[ids[i]];
        /* The Metaspace decoder: the first token drops its "▁"s, the others make them spaces. */
        while (*s && st == KS_OK) {
            const char *meta = strstr(s, META);
            size_t keep = meta ? (size_t)(meta - s) : strlen(s);
            st = ks_buf_append(&text, s, keep);
            s += keep;
            if (meta) {
                if (!first && st == KS_OK)
                    st = ks_buf_append(&text, " ", 1);
                s += META_LEN;
            }
        }
        first = false;
    }
    if (st == KS_OK && tidy)
        st = clean_up(&text);
    if (st == KS_OK)
        st = ks_buf_append(out, text.data ? text.data : "", text.len);
    ks_buf_fini(&text);
    return st;
}

/* ---- queries ---------------------------------------------------------------------------- */

size_t kt_tokenizer_vocab_size(const kt_tokenizer *t) { return t->vocab_size; }

int32_t kt_tokenizer_mask_id(const kt_tokenizer *t) { return t->mask_id; }

int32_t kt_tokenizer_tag_id(const kt_tokenizer *t, kt_tag tag)
{
    return t->mask_id + 1 + (int32_t)tag;
}

int32_t kt_tokenizer_patch_id(const kt_tokenizer *t, int32_t patch_index)
{
    return t->mask_id + 1 + KT_TAG_COUNT + patch_index;
}

const char *kt_tokenizer_token_text(const kt_tokenizer *t, int32_t id)
{
    if (id < 0 || (size_t)id >= t->vocab_size)
        return NULL;
    return t->text + t->text_offset[id];
}

bool kt_tokenizer_clean_up_default(const kt_tokenizer *t) { return t->clean_up_default; }
