/* kl_arena: the memory of results and broker statuses, which are built once from a reply and
 * then only read: many small allocations, freed together by their destroy function. */
#include <stdlib.h>
#include <string.h>

#include "kl_internal.h"

struct kl_arena_block {
    kl_arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

#define KL_ARENA_BLOCK 4096

void *kl_arena_alloc(kl_arena *a, size_t size)
{
    size = (size + 15u) & ~(size_t)15u;
    if (size == 0)
        size = 16;
    kl_arena_block *b = a->head;
    if (!b || b->cap - b->used < size) {
        size_t cap = size > KL_ARENA_BLOCK ? size : KL_ARENA_BLOCK;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += size;
    memset(p, 0, size);
    return p;
}

char *kl_arena_strdup(kl_arena *a, const char *s)
{
    if (!s)
        s = "";
    size_t n = strlen(s) + 1;
    char *p = kl_arena_alloc(a, n);
    if (p)
        memcpy(p, s, n);
    return p;
}

void kl_arena_free(kl_arena *a)
{
    kl_arena_block *b = a->head;
    while (b) {
        kl_arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
}
