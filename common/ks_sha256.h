/* ks_sha256: SHA-256 (FIPS 180-4), for job fingerprints (docs/protocol.md §4) and model hashes. Small and
 * dependency-free; not for anything secret. */
#ifndef KS_SHA256_H
#define KS_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define KS_SHA256_LEN 32

typedef struct ks_sha256_ctx {
    uint32_t h[8];
    uint64_t total;
    uint8_t block[64];
    size_t used;
} ks_sha256_ctx;

void ks_sha256_init(ks_sha256_ctx *s);
void ks_sha256_update(ks_sha256_ctx *s, const void *data, size_t len);
void ks_sha256_final(ks_sha256_ctx *s, uint8_t out[KS_SHA256_LEN]);
/* One call: out = SHA-256(data[0..len)). */
void ks_sha256(const void *data, size_t len, uint8_t out[KS_SHA256_LEN]);

#endif
