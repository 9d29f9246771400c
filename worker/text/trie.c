/* trie: see trie.h. Each node's children are stored contiguously, sorted by byte, so a step is
 * a binary search (a direct table for the root, whose fan-out is the widest). The trie is built
 * breadth-first from the sorted keys, which is what keeps every node's children adjacent. */
#include "trie.h"

#include <stdlib.h>
#include <string.h>

typedef struct trie_node {
    uint32_t first_child; /* index of the first child in `nodes` */
    uint16_t child_count; /* <= 256 */
    uint8_t label;        /* the byte that leads here from the parent */
    int32_t value;        /* -1: no key ends here */
} trie_node;

struct kt_trie {
    trie_node *nodes;
    size_t node_count;
    int32_t root_children[256];
};

typedef struct trie_key {
    const unsigned char *bytes;
    size_t len;
    int32_t value;
} trie_key;

static int compare_keys(const void *a, const void *b)
{
    const trie_key *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->bytes, y->bytes, n);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

/* A node under construction: the keys [lo, hi) of the sorted array share its `depth`-byte path. */
typedef struct build_span {
    size_t lo, hi, depth;
} build_span;

ks_status kt_trie_new(const char *const *keys, const size_t *lens, size_t n, kt_trie **out)
{
    ks_status status = KS_OK;
    kt_trie *trie = NULL;
    trie_key *sorted = NULL;
    build_span *spans = NULL;
    size_t capacity = 1;
    *out = NULL;

    if (n > (size_t)INT32_MAX) {
        status = ks_fail(KS_ERR_LIMIT, "trie: %zu keys is too many", n);
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        if (lens[i] == 0) {
            status = ks_fail(KS_ERR_FORMAT, "trie: key %zu is empty", i);
            goto cleanup;
        }
        if (lens[i] > UINT32_MAX - capacity) {
            status = ks_fail(KS_ERR_LIMIT, "trie: keys too long");
            goto cleanup;
        }
        capacity += lens[i]; /* a key adds at most one node per byte */
    }
    trie = calloc(1, sizeof *trie);
    sorted = malloc((n ? n : 1) * sizeof *sorted);
    spans = malloc(capacity * sizeof *spans);
    if (!trie || !sorted || !spans)
        goto nomem;
    trie->nodes = malloc(capacity * sizeof *trie->nodes);
    if (!trie->nodes)
        goto nomem;
    for (size_t i = 0; i < n; i++)
        sorted[i] = (trie_key){(const unsigned char *)keys[i], lens[i], (int32_t)i};
    qsort(sorted, n, sizeof *sorted, compare_keys);

    trie->nodes[0] = (trie_node){0, 0, 0, -1};
    spans[0] = (build_span){0, n, 0};
    trie->node_count = 1;
    for (size_t k = 0; k < trie->node_count; k++) {
        build_span span = spans[k];
        trie_node *node = &trie->nodes[k];
        if (span.lo < span.hi && sorted[span.lo].len == span.depth) {
            node->value = sorted[span.lo].value;
            span.lo++;
            if (span.lo < span.hi && sorted[span.lo].len == span.depth) {
                status = ks_fail(KS_ERR_FORMAT, "trie: keys %d and %d are equal",
                                 (int)sorted[span.lo - 1].value, (int)sorted[span.lo].value);
                goto cleanup;
            }
        }
        node->first_child = (uint32_t)trie->node_count;
        node->child_count = 0;
        size_t i = span.lo;
        while (i < span.hi) {
            unsigned char byte = sorted[i].bytes[span.depth];
            size_t j = i + 1;
            while (j < span.hi && sorted[j].bytes[span.depth] == byte)
                j++;
            size_t c = trie->node_count++;
            trie->nodes[c] = (trie_node){0, 0, byte, -1};
            spans[c] = (build_span){i, j, span.depth + 1};
            trie->nodes[k].child_count++;
            i = j;
        }
    }

    for (int b = 0; b < 256; b++)
        trie->root_children[b] = KT_TRIE_NONE;
    for (uint32_t c = 0; c < trie->nodes[0].child_count; c++) {
        uint32_t child = trie->nodes[0].first_child + c;
        trie->root_children[trie->nodes[child].label] = (int32_t)child;
    }
    trie_node *shrunk = realloc(trie->nodes, trie->node_count * sizeof *trie->nodes);
    if (shrunk)
        trie->nodes = shrunk;
    *out = trie;
    trie = NULL;
cleanup:
    free(sorted);
    free(spans);
    kt_trie_destroy(&trie);
    return status;

nomem:
    status = ks_fail(KS_ERR_NOMEM, "trie: out of memory for %zu keys", n);
    goto cleanup;
}

void kt_trie_destroy(kt_trie **trie)
{
    if (!trie || !*trie)
        return;
    free((*trie)->nodes);
    free(*trie);
    *trie = NULL;
}

int32_t kt_trie_child(const kt_trie *trie, int32_t node, unsigned char byte)
{
    if (node == KT_TRIE_ROOT)
        return trie->root_children[byte];
    const trie_node *parent = &trie->nodes[node];
    size_t lo = parent->first_child, hi = lo + parent->child_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        unsigned char label = trie->nodes[mid].label;
        if (label == byte)
            return (int32_t)mid;
        if (label < byte)
            lo = mid + 1;
        else
            hi = mid;
    }
    return KT_TRIE_NONE;
}

int32_t kt_trie_value(const kt_trie *trie, int32_t node) { return trie->nodes[node].value; }

int32_t kt_trie_find(const kt_trie *trie, const char *key, size_t len)
{
    int32_t node = KT_TRIE_ROOT;
    for (size_t i = 0; i < len && node != KT_TRIE_NONE; i++)
        node = kt_trie_child(trie, node, (unsigned char)key[i]);
    return node == KT_TRIE_NONE ? -1 : trie->nodes[node].value;
}
