/* ks_base64: RFC 4648 base64 (the standard alphabet, with '=' padding), for bytes that must
 * travel in JSON exactly, such as a file name that is not UTF-8. */
#ifndef KS_BASE64_H
#define KS_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* `len` bytes as a new NUL-terminated base64 string the caller frees; NULL without memory. */
char *ks_base64_encode(const void *data, size_t len);

/* The bytes of base64 `text` (padding required) into a new buffer the caller frees, with a
 * NUL after them; *len gets their count. NULL for text that is not base64, or without
 * memory. */
uint8_t *ks_base64_decode(const char *text, size_t *len);

#endif
