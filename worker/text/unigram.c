/* unigram: see unigram.h. */
#include "unigram.h"

#include <stdbool.h>
#include <stdlib.h>

#include "ks_utf8.h"

struct kt_unigram {
    kt_trie *trie;
    double *scores;
    size_t size;
    int32_t unk_id;
    double unk_score;
};

/* The best path ending at one byte offset. */
typedef struct path_node {
    double score;  /* total score of the best path ending here */
    int64_t start; /* where its last token starts; -1: not reached yet */
    int32_t id;
} path_node;

/* The reference penalises an unknown character this much below the worst piece. */
#define UNK_PENALTY 10.0

ks_status kt_unigram_new(const char *const *pieces, const size_t *lens, const double *scores,
                         size_t n, int32_t unk_id, kt_unigram **out)
{
    ks_status status = KS_OK;
    *out = NULL;
    kt_unigram *model = calloc(1, sizeof *model);
    if (!model || !(model->scores = malloc((n ? n : 1) * sizeof *model->scores))) {
        status = ks_fail(KS_ERR_NOMEM, "unigram: out of memory");
        goto cleanup;
    }
    if (unk_id < 0 || (size_t)unk_id >= n) {
        status = ks_fail(KS_ERR_FORMAT, "unigram: unk id %d outside a vocabulary of %zu",
                         (int)unk_id, n);
        goto cleanup;
    }
    if ((status = kt_trie_new(pieces, lens, n, &model->trie)) != KS_OK)
        goto cleanup;
    double min_score = 0.0;
    for (size_t i = 0; i < n; i++) {
        model->scores[i] = scores[i];
        if (i == 0 || scores[i] < min_score)
            min_score = scores[i];
    }
    model->size = n;
    model->unk_id = unk_id;
    model->unk_score = min_score - UNK_PENALTY;
    *out = model;
    model = NULL;
cleanup:
    kt_unigram_destroy(&model);
    return status;
}

void kt_unigram_destroy(kt_unigram **model)
{
    if (!model || !*model)
        return;
    kt_trie_destroy(&(*model)->trie);
    free((*model)->scores);
    free(*model);
    *model = NULL;
}

void kt_lattice_init(kt_lattice *lattice)
{
    lattice->nodes = NULL;
    lattice->cap = 0;
}

void kt_lattice_fini(kt_lattice *lattice)
{
    free(lattice->nodes);
    kt_lattice_init(lattice);
}

static void offer(path_node *target, double score, size_t start, int32_t id)
{
    if (target->start < 0 || score > target->score) {
        target->score = score;
        target->start = (int64_t)start;
        target->id = id;
    }
}

/* Appends the ids of the best path's tokens, in order, fusing runs of unknowns. The path is
 * walked backwards, so the tokens are pushed reversed and then the appended tail is flipped. */
static ks_status emit_path(const kt_unigram *model, const char *s, const path_node *best,
                           size_t len, kt_ids *out)
{
    size_t first = out->len;
    size_t end = len, unk_end = 0;
    bool in_unk = false;
    ks_status st;
    while (end > 0) {
        const path_node *node = &best[end];
        size_t start = (size_t)node->start;
        if (node->id == model->unk_id) {
            if (!in_unk)
                unk_end = end;
            in_unk = true;
        } else {
            if (in_unk) {
                /* A fused run is looked up as a whole, as the reference does; in practice it is
                 * never a piece, so it becomes the unknown id. */
                int32_t id = kt_trie_find(model->trie, s + end, unk_end - end);
                if ((st = kt_ids_push(out, id >= 0 ? id : model->unk_id)) != KS_OK)
                    return st;
                in_unk = false;
            }
            if ((st = kt_ids_push(out, node->id)) != KS_OK)
                return st;
        }
        end = start;
    }
    if (in_unk) {
        int32_t id = kt_trie_find(model->trie, s, unk_end);
        if ((st = kt_ids_push(out, id >= 0 ? id : model->unk_id)) != KS_OK)
            return st;
    }
    for (size_t i = first, j = out->len; i + 1 < j; i++, j--) {
        int32_t t = out->v[i];
        out->v[i] = out->v[j - 1];
        out->v[j - 1] = t;
    }
    return KS_OK;
}

ks_status kt_unigram_encode(const kt_unigram *model, const char *s, size_t len, kt_lattice *lattice,
                            kt_ids *out)
{
    if (len == 0)
        return KS_OK;
    if (len + 1 > lattice->cap) {
        if (len + 1 > SIZE_MAX / sizeof(path_node))
            return ks_fail(KS_ERR_LIMIT, "unigram: word of %zu bytes is too long", len);
        void *grown = realloc(lattice->nodes, (len + 1) * sizeof(path_node));
        if (!grown)
            return ks_fail(KS_ERR_NOMEM, "unigram: out of memory for a %zu-byte word", len);
        lattice->nodes = grown;
        lattice->cap = len + 1;
    }
    path_node *best = lattice->nodes;
    best[0] = (path_node){0.0, 0, -1};
    for (size_t i = 1; i <= len; i++)
        best[i] = (path_node){0.0, -1, -1};

    size_t pos = 0;
    while (pos < len) {
        uint32_t cp;
        size_t char_len = ks_utf8_decode(s + pos, len - pos, &cp);
        double here = best[pos].score;
        bool has_single = false;
        int32_t node = KT_TRIE_ROOT;
        for (size_t end = pos; end < len; end++) {
            node = kt_trie_child(model->trie, node, (unsigned char)s[end]);
            if (node == KT_TRIE_NONE)
                break;
            int32_t id = kt_trie_value(model->trie, node);
            if (id < 0)
                continue;
            offer(&best[end + 1], model->scores[id] + here, pos, id);
            if (end + 1 - pos == char_len)
                has_single = true;
        }
        if (!has_single)
            offer(&best[pos + char_len], model->unk_score + here, pos, model->unk_id);
        pos += char_len;
    }
    return emit_path(model, s, best, len, out);
}
