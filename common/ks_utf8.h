/* ks_utf8: the few Unicode facts the text side needs, with Python's semantics where the
 * reference (transformers, i.e. Python) counts or strips: code points, str.isspace(). */
#ifndef KS_UTF8_H
#define KS_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Decodes one code point from s[0..len) (len >= 1). Returns the bytes consumed (1..4). A
 * malformed or truncated sequence yields U+FFFD and consumes one byte. */
size_t ks_utf8_decode(const char *s, size_t len, uint32_t *cp);

/* Encodes cp (<= 0x10FFFF) into out; returns the byte count (1..4). */
size_t ks_utf8_encode(uint32_t cp, char out[4]);

/* True when s[0..len) is well-formed UTF-8 (no surrogates, no overlongs). */
bool ks_utf8_valid(const char *s, size_t len);

/* Number of code points in s[0..len), counting a malformed byte as one. */
size_t ks_utf8_count(const char *s, size_t len);

/* Python's str.isspace() for one code point. */
bool ks_unicode_is_space(uint32_t cp);

#endif
