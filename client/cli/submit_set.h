/* submit_set: a hash table from 64-bit hashes to a 32-bit count, for `kosmos submit`'s
 * bookkeeping that must stay small for a million images: the (path, prompt) pairs already
 * done in OUT.jsonl, their failures, and the COCO image ids. Keys are hashes (submit_set_hash),
 * not strings: 16 bytes per entry, with a collision chance of about n^2 / 2^65 (1e-8 for a
 * million). Not thread-safe; not for anything that needs exact string keys. */
#ifndef KOSMOS_SUBMIT_SET_H
#define KOSMOS_SUBMIT_SET_H

#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"

typedef struct submit_set {
    uint64_t *keys; /* owned; 0 = empty slot (a hash of 0 is stored as 1) */
    uint32_t *values;
    size_t cap, len; /* cap is 0 or a power of two */
} submit_set;

void submit_set_init(submit_set *s);
void submit_set_fini(submit_set *s);

/* The value stored under `key`, or NULL. Borrowed until the next put. */
uint32_t *submit_set_find(const submit_set *s, uint64_t key);
/* Stores `value` under `key` (replacing). KS_ERR_NOMEM when the table cannot grow. */
ks_status submit_set_put(submit_set *s, uint64_t key, uint32_t value);

/* FNV-1a 64 of the strings a and b with a NUL between them (b may be NULL). */
uint64_t submit_set_hash(const char *a, const char *b);

#endif
