/* submit_set: see submit_set.h. Open addressing, linear probing, load <= 1/2. */
#include "submit_set.h"

#include <stdlib.h>
#include <string.h>

#include "ks_hash.h"

void submit_set_init(submit_set *s) { memset(s, 0, sizeof *s); }

void submit_set_fini(submit_set *s)
{
    free(s->keys);
    free(s->values);
    submit_set_init(s);
}

static size_t slot_of(const submit_set *s, uint64_t key)
{
    size_t mask = s->cap - 1, i = (size_t)(key ^ (key >> 29)) & mask;
    while (s->keys[i] && s->keys[i] != key)
        i = (i + 1) & mask;
    return i;
}

uint32_t *submit_set_find(const submit_set *s, uint64_t key)
{
    if (!s->cap)
        return NULL;
    key = key ? key : 1;
    size_t i = slot_of(s, key);
    return s->keys[i] ? &s->values[i] : NULL;
}

static ks_status grow(submit_set *s)
{
    size_t cap = s->cap ? s->cap * 2 : 1024;
    submit_set bigger = {.keys = calloc(cap, sizeof(uint64_t)),
                         .values = calloc(cap, sizeof(uint32_t)),
                         .cap = cap};
    if (!bigger.keys || !bigger.values) {
        free(bigger.keys);
        free(bigger.values);
        return ks_fail(KS_ERR_NOMEM, "out of memory (a table of %zu entries)", cap);
    }
    for (size_t i = 0; i < s->cap; i++)
        if (s->keys[i]) {
            size_t j = slot_of(&bigger, s->keys[i]);
            bigger.keys[j] = s->keys[i];
            bigger.values[j] = s->values[i];
        }
    bigger.len = s->len;
    free(s->keys);
    free(s->values);
    *s = bigger;
    return KS_OK;
}

ks_status submit_set_put(submit_set *s, uint64_t key, uint32_t value)
{
    if ((s->len + 1) * 2 > s->cap) {
        ks_status st = grow(s);
        if (st)
            return st;
    }
    key = key ? key : 1;
    size_t i = slot_of(s, key);
    if (!s->keys[i]) {
        s->keys[i] = key;
        s->len++;
    }
    s->values[i] = value;
    return KS_OK;
}

uint64_t submit_set_hash(const char *a, const char *b)
{
    uint64_t h = ks_fnv1a(KS_FNV1A_BASIS, a, strlen(a));
    if (b) {
        h = ks_fnv1a(h, "", 1); /* the NUL between them */
        h = ks_fnv1a(h, b, strlen(b));
    }
    return h;
}
