/* kt_tokenizer: the Kosmos-2 tokenizer, reproducing transformers' XLMRobertaTokenizer (built from
 * the checkpoint's sentencepiece.bpe.model) plus the 1,035 tag tokens Kosmos2Processor adds.
 *
 * Id layout (65,037 ids with the real model): <s>=0 <pad>=1 </s>=2 <unk>=3, spm piece i>=3 -> i+1,
 * <mask>=spm_size+1 (64001), then the 11 tags and the 1,024 <patch_index_NNNN> tokens.
 * Not thread-hostile: a loaded tokenizer is immutable, so any number of threads may encode and
 * decode with it at once. */
#ifndef KT_TOKENIZER_H
#define KT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ks_buf.h"
#include "ks_error.h"

enum {
    KT_ID_BOS = 0,
    KT_ID_PAD = 1,
    KT_ID_EOS = 2,
    KT_ID_UNK = 3,
    KT_FIRST_IMAGE_ID = 4, /* the 64 image placeholders are ids 4..67 */
    KT_IMAGE_TOKENS = 64,
    KT_PATCH_GRID = 32, /* <patch_index_k>, k < 32*32 */
};

/* The tag tokens in id order, starting at mask_id + 1. */
typedef enum kt_tag {
    KT_TAG_DOC_END = 0, /* </doc> */
    KT_TAG_IMAGE,       /* <image> */
    KT_TAG_IMAGE_END,   /* </image> */
    KT_TAG_CHUNK_END,   /* </chunk> */
    KT_TAG_LINE_END,    /* </line> */
    KT_TAG_PHRASE,      /* <phrase> */
    KT_TAG_PHRASE_END,  /* </phrase> */
    KT_TAG_OBJECT,      /* <object> */
    KT_TAG_OBJECT_END,  /* </object> */
    KT_TAG_DELIMITER,   /* </delimiter_of_multi_objects/> */
    KT_TAG_GROUNDING,   /* <grounding> */
    KT_TAG_COUNT
} kt_tag;

/* A growable list of token ids (value struct; owns `v`). */
typedef struct kt_ids {
    int32_t *v;
    size_t len;
    size_t cap;
} kt_ids;

void kt_ids_init(kt_ids *ids);
void kt_ids_fini(kt_ids *ids);
ks_status kt_ids_push(kt_ids *ids, int32_t id);

typedef struct kt_tokenizer kt_tokenizer;

/* Loads DIR/sentencepiece.bpe.model and, when present, DIR/tokenizer_config.json (for
 * clean_up_tokenization_spaces) into *out (caller owns). KS_ERR_IO, KS_ERR_FORMAT, KS_ERR_LIMIT,
 * KS_ERR_NOMEM, with a message naming the file; *out is then NULL. */
ks_status kt_tokenizer_new(const char *model_dir, kt_tokenizer **out);

/* The same from explicit paths; config_path may be NULL. */
ks_status kt_tokenizer_new_from_files(const char *spm_path, const char *config_path,
                                      kt_tokenizer **out);

void kt_tokenizer_destroy(kt_tokenizer **tokenizer);

/* Appends the ids of `text` (UTF-8, len bytes, may hold NULs) to `out`, without <s> or </s>.
 * Fails with KS_ERR_INVALID on malformed UTF-8; on failure `out` is left as it was. */
ks_status kt_tokenizer_encode(const kt_tokenizer *t, const char *text, size_t len, kt_ids *out);

typedef struct kt_decode_options {
    bool skip_special_tokens; /* drop <s> <pad> </s> <unk> <mask> (not the tags) */
    int clean_up_spaces;      /* 1 or 0; -1 = the tokenizer's default (tokenizer_config.json) */
} kt_decode_options;

/* Appends the decoded text of ids[0..n) to `out`, as tokenizer.decode() does. Fails with
 * KS_ERR_INVALID on an id outside [0, vocab size). */
ks_status kt_tokenizer_decode(const kt_tokenizer *t, const int32_t *ids, size_t n,
                              const kt_decode_options *options, ks_buf *out);

/* Total ids (65,037 for the real model). */
size_t kt_tokenizer_vocab_size(const kt_tokenizer *t);

/* Id of <mask> (the first id after the spm pieces); the tags follow it. */
int32_t kt_tokenizer_mask_id(const kt_tokenizer *t);
int32_t kt_tokenizer_tag_id(const kt_tokenizer *t, kt_tag tag);
int32_t kt_tokenizer_patch_id(const kt_tokenizer *t, int32_t patch_index); /* 0..1023 */

/* The text of token `id` (spm pieces keep their U+2581), borrowed for the tokenizer's life;
 * NULL if out of range. */
const char *kt_tokenizer_token_text(const kt_tokenizer *t, int32_t id);

/* The clean_up_tokenization_spaces default this tokenizer decodes with. */
bool kt_tokenizer_clean_up_default(const kt_tokenizer *t);

#endif
