/* charsmap: see charsmap.h. Every array access of the double array is bounds-checked, since the
 * blob comes from a model file: a corrupt trie yields "no match", never a read out of bounds. */
#include "charsmap.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "grapheme.h"
#include "ks_utf8.h"

struct kt_charsmap {
    uint32_t *units; /* the double array */
    size_t unit_count;
    char *replacements; /* NUL-separated strings */
    size_t replacements_len;
};

/* The clusters the reference looks up whole are those shorter than this many bytes. */
#define WHOLE_CLUSTER_LIMIT 6

ks_status kt_charsmap_new(const void *blob, size_t len, kt_charsmap **out)
{
    const unsigned char *b = blob;
    kt_charsmap *map = NULL;
    *out = NULL;
    if (len < 4)
        return ks_fail(KS_ERR_FORMAT, "precompiled charsmap: %zu bytes is too short", len);
    uint32_t trie_bytes = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                          (uint32_t)b[3] << 24;
    size_t unit_count = trie_bytes / 4;
    if (unit_count == 0 || unit_count > (len - 4) / 4)
        return ks_fail(KS_ERR_FORMAT,
                       "precompiled charsmap: trie size %u does not fit in %zu bytes", trie_bytes,
                       len);
    const unsigned char *rest = b + 4 + unit_count * 4;
    size_t rest_len = len - 4 - unit_count * 4;
    if (!ks_utf8_valid((const char *)rest, rest_len))
        return ks_fail(KS_ERR_FORMAT, "precompiled charsmap: replacement strings are not UTF-8");
    map = calloc(1, sizeof *map);
    if (!map)
        goto nomem;
    map->units = malloc(unit_count * sizeof *map->units);
    map->replacements = malloc(rest_len + 1);
    if (!map->units || !map->replacements)
        goto nomem;
    for (size_t i = 0; i < unit_count; i++) {
        const unsigned char *u = b + 4 + 4 * i;
        map->units[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 |
                        (uint32_t)u[3] << 24;
    }
    map->unit_count = unit_count;
    memcpy(map->replacements, rest, rest_len);
    map->replacements[rest_len] = '\0';
    map->replacements_len = rest_len;
    *out = map;
    return KS_OK;

nomem:
    kt_charsmap_destroy(&map);
    return ks_fail(KS_ERR_NOMEM, "precompiled charsmap: out of memory");
}

void kt_charsmap_destroy(kt_charsmap **map)
{
    if (!map || !*map)
        return;
    free((*map)->units);
    free((*map)->replacements);
    free(*map);
    *map = NULL;
}

/* Darts-clone unit fields. */
static uint32_t unit_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
static bool unit_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static uint32_t unit_label(uint32_t u) { return u & ((1u << 31) | 0xFF); }
static uint32_t unit_value(uint32_t u) { return u & ((1u << 31) - 1); }

/* The replacement of the *shortest* key that is a prefix of key[0..len) (stopping at a NUL
 * byte, as the reference does), or false when there is none. */
static bool shortest_match(const kt_charsmap *map, const char *key, size_t len, const char **repl,
                           size_t *repl_len)
{
    size_t pos = unit_offset(map->units[0]);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c == 0)
            return false;
        pos ^= c;
        if (pos >= map->unit_count)
            return false;
        uint32_t unit = map->units[pos];
        if (unit_label(unit) != c)
            return false;
        pos ^= unit_offset(unit);
        if (pos >= map->unit_count)
            return false;
        if (unit_has_leaf(unit)) {
            size_t at = unit_value(map->units[pos]);
            if (at > map->replacements_len)
                return false;
            *repl = map->replacements + at;
            *repl_len = strlen(*repl); /* the blob copy is NUL-terminated */
            return true;
        }
    }
    return false;
}

ks_status kt_charsmap_normalize(const kt_charsmap *map, const char *s, size_t len, ks_buf *out)
{
    size_t pos = 0;
    while (pos < len) {
        size_t end = kt_grapheme_next(s, len, pos);
        const char *repl;
        size_t repl_len;
        ks_status st;
        if (end - pos < WHOLE_CLUSTER_LIMIT &&
            shortest_match(map, s + pos, end - pos, &repl, &repl_len)) {
            if ((st = ks_buf_append(out, repl, repl_len)) != KS_OK)
                return st;
            pos = end;
            continue;
        }
        while (pos < end) {
            uint32_t cp;
            size_t n = ks_utf8_decode(s + pos, end - pos, &cp);
            if (shortest_match(map, s + pos, n, &repl, &repl_len))
                st = ks_buf_append(out, repl, repl_len);
            else
                st = ks_buf_append(out, s + pos, n);
            if (st != KS_OK)
                return st;
            pos += n;
        }
    }
    return KS_OK;
}
