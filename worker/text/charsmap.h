/* charsmap: SentencePiece's precompiled normalization map (NormalizerSpec.precompiled_charsmap)
 * applied the way the reference's `tokenizers` Precompiled normalizer applies it.
 *
 * Blob layout: uint32 LE trie size S, then S bytes of a Darts-clone double array (uint32 LE
 * units), then NUL-separated replacement strings that the trie's values index into.
 * The normalizer walks the text one extended grapheme cluster at a time: a cluster shorter than
 * 6 bytes that has any trie match at its start is replaced *whole* by the replacement of the
 * shortest match (so e.g. "e" + two U+0301 becomes one "é", dropping a mark); otherwise each
 * character is replaced by its own match or kept. That is the reference's behaviour, not NFKC. */
#ifndef KT_CHARSMAP_H
#define KT_CHARSMAP_H

#include <stddef.h>
#include <stdint.h>

#include "ks_buf.h"
#include "ks_error.h"

typedef struct kt_charsmap kt_charsmap;

/* Parses (and copies) blob[0..len) into *out (caller owns). KS_ERR_FORMAT if it is malformed,
 * KS_ERR_NOMEM; *out is then NULL. */
ks_status kt_charsmap_new(const void *blob, size_t len, kt_charsmap **out);

void kt_charsmap_destroy(kt_charsmap **map);

/* Appends the normalized form of the well-formed UTF-8 text s[0..len) to `out`. */
ks_status kt_charsmap_normalize(const kt_charsmap *map, const char *s, size_t len, ks_buf *out);

#endif
