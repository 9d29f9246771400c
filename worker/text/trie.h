/* trie: an immutable byte trie over a fixed set of keys, built once and walked one byte at a
 * time. Used for the unigram pieces (common-prefix search in Viterbi) and the added tokens
 * (longest match). Not a map with updates: the key set never changes after kt_trie_new. */
#ifndef KT_TRIE_H
#define KT_TRIE_H

#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"

typedef struct kt_trie kt_trie;

#define KT_TRIE_ROOT 0
#define KT_TRIE_NONE (-1)

/* Builds into *out (caller owns) a trie whose key i is keys[i][0..lens[i]) with value i. Keys
 * must be non-empty and distinct (KS_ERR_FORMAT otherwise); KS_ERR_LIMIT, KS_ERR_NOMEM. The keys
 * are not kept. *out is NULL on failure. */
ks_status kt_trie_new(const char *const *keys, const size_t *lens, size_t n, kt_trie **out);

void kt_trie_destroy(kt_trie **trie);

/* The node reached from `node` by `byte`, or KT_TRIE_NONE. */
int32_t kt_trie_child(const kt_trie *trie, int32_t node, unsigned char byte);

/* The value of the key that ends at `node`, or -1 when none does. */
int32_t kt_trie_value(const kt_trie *trie, int32_t node);

/* The value of the key equal to key[0..len), or -1. */
int32_t kt_trie_find(const kt_trie *trie, const char *key, size_t len);

#endif
