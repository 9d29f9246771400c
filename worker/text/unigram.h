/* unigram: the Unigram language-model segmentation of one pre-tokenized word, as the
 * reference's `tokenizers` Unigram model does it: Viterbi over the pieces found by common-prefix
 * search, an unknown character scoring (min score - 10), adjacent unknowns on the best path
 * fused into one token, ties kept by the first path found (strictly-greater updates).
 * Vocabulary index == token id. Immutable after kt_unigram_new. */
#ifndef KT_UNIGRAM_H
#define KT_UNIGRAM_H

#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"
#include "tokenizer.h"
#include "trie.h"

typedef struct kt_unigram kt_unigram;

/* A model into *out (caller owns) where pieces[i] (lens[i] bytes, distinct, non-empty) scores
 * scores[i]; unk_id < n. The strings are not kept. KS_ERR_FORMAT, KS_ERR_LIMIT, KS_ERR_NOMEM;
 * *out is then NULL. */
ks_status kt_unigram_new(const char *const *pieces, const size_t *lens, const double *scores,
                         size_t n, int32_t unk_id, kt_unigram **out);

void kt_unigram_destroy(kt_unigram **model);

/* Per-call working memory for kt_unigram_encode (value struct; reuse it across words). */
typedef struct kt_lattice {
    void *nodes;
    size_t cap;
} kt_lattice;

void kt_lattice_init(kt_lattice *lattice);
void kt_lattice_fini(kt_lattice *lattice);

/* Appends the ids of the word s[0..len) (well-formed UTF-8) to `out`. Linear in len (times the
 * longest piece). */
ks_status kt_unigram_encode(const kt_unigram *model, const char *s, size_t len, kt_lattice *lattice,
                            kt_ids *out);

#endif
