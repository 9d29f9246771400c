/* ks_hash: FNV-1a, a small non-cryptographic hash for in-memory hash tables (the CLI's result
 * sets, the broker's admission cache). Not for anything an attacker picks to collide on where
 * that matters; job fingerprints use ks_sha256. */
#ifndef KS_HASH_H
#define KS_HASH_H

#include <stddef.h>
#include <stdint.h>

#define KS_FNV1A_BASIS 0xcbf29ce484222325ull /* the 64-bit offset basis: start here */

/* Continues the hash `h` over len bytes of data. */
uint64_t ks_fnv1a(uint64_t h, const void *data, size_t len);

#endif
