/* kb_sha256: SHA-256 (FIPS 180-4), for job fingerprints (docs/protocol.md §4). Small and
 * dependency-free; not for anything secret. */
#ifndef KB_SHA256_H
#define KB_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define KB_SHA256_LEN 32

typedef struct kb_sha256_ctx {
    uint32_t h[8];
    uint64_t total;
    uint8_t block[64];
    size_t used;
} kb_sha256_ctx;

void kb_sha256_init(kb_sha256_ctx *s);
void kb_sha256_update(kb_sha256_ctx *s, const void *data, size_t len);
void kb_sha256_final(kb_sha256_ctx *s, uint8_t out[KB_SHA256_LEN]);
/* One call: out = SHA-256(data[0..len)). */
void kb_sha256(const void *data, size_t len, uint8_t out[KB_SHA256_LEN]);

#endif
