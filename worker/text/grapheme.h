/* grapheme: extended grapheme cluster boundaries (UAX #29, rules GB3-GB13 including GB9c and
 * GB11), for the Precompiled normalizer, which rewrites text one cluster at a time.
 * Not a general text-segmentation API: no word or sentence breaks. */
#ifndef KT_GRAPHEME_H
#define KT_GRAPHEME_H

#include <stddef.h>

/* Returns the end (exclusive byte offset) of the grapheme cluster that starts at s[pos], for
 * well-formed UTF-8 s[0..len) and pos < len. Linear in the cluster's length. */
size_t kt_grapheme_next(const char *s, size_t len, size_t pos);

#endif
