/* generate: transformers 5.17 `generate` for Kosmos-2 above the backend seam (see generate.h).
 *
 * What HF does, and is reproduced here:
 * - Logits processors, in HF's order: no_repeat_ngram (over the whole sequence, prompt and
 *   image placeholder ids included; nothing before the sequence has ngram_size tokens), then
 *   min_new_tokens (</s> at -inf while fewer were generated). With sampling the warpers follow:
 *   temperature (if != 1), top-k (if != 0; HF's default is 50), top-p (if < 1).
 * - Greedy: argmax of the processed scores, lowest id on ties; stop at </s> (kept) or after
 *   max_new_tokens.
 * - Beam search (GenerationMixin._beam_search): scores are log_softmax(logits) then the
 *   processors, plus the beam's running score; the best 2·num_beams (beam, token) candidates
 *   over all beams; the best num_beams candidates not ending in </s> or at max length keep
 *   running; candidates among the first num_beams that end are scored sum / generated_len ^
 *   length_penalty and merged into the num_beams best finished hypotheses; the search ends when
 *   the best running score / current generated length cannot beat the worst finished one (once
 *   num_beams are finished), when every candidate hits the length limit, or (early_stopping)
 *   when num_beams are finished. It returns the best finished hypothesis with its own length.
 *   Scores are f32 as in torch, with HF's -1e9 sentinels.
 * - Positions: at prefill from the ids (pad -> pad_id, else pad_id + count of non-pad so far);
 *   a decoded token gets pad_id + 1 + (tokens already cached), as HF 5.17 computes it from the
 *   cache length (prepare_inputs_for_generation drops position_ids), or pad_id if it is pad.
 *
 * One forward per step serves every live sequence of every running request (a prefill and
 * other requests' decode tokens may share a step). Decode steps select on the device where the
 * backend can: select_greedy (all greedy), select_sample (with sampling: a short candidate list
 * per row that sample_list finishes as it does a full row, or defers to the full row). */
#include "generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NEG_SENTINEL (-1.0e9f) /* HF's "impossible" beam score */
#define MAX_BEAMS 64

/* ---- small helpers -------------------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* xoshiro256** seeded through splitmix64: our own, documented, portable RNG. */
typedef ke_rng rng;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

void ke_rng_seed(ke_rng *r, uint64_t seed) { rng_seed(r, seed); }

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* uniform in [0, 1) with 53 random bits */
static double rng_uniform(rng *r) { return (double)(rng_next(r) >> 11) * 0x1p-53; }

/* ---- logits processors (HF order) -------------------------------------------------------- */

/* NoRepeatNGramLogitsProcessor: every token that followed the last n-1 tokens anywhere in the
 * sequence is banned. With n == 1 every token already present is banned. */
static void ban_repeated_ngrams(const int32_t *ids, size_t len, int n, float *scores, int vocab)
{
    if (n <= 0 || len < (size_t)n)
        return;
    size_t m = (size_t)n - 1;
    const int32_t *prefix = ids + len - m;
    for (size_t i = 0; i + (size_t)n <= len; i++) {
        if (m == 0 || memcmp(ids + i, prefix, m * sizeof *ids) == 0) {
            int32_t t = ids[i + m];
            if (t >= 0 && t < vocab)
                scores[t] = -INFINITY;
        }
    }
}

static void apply_processors(const ke_gen_params *p, const int32_t *ids, size_t len,
                             size_t prompt_len, int eos, float *scores, int vocab)
{
    ban_repeated_ngrams(ids, len, p->no_repeat_ngram_size, scores, vocab);
    if (p->min_new_tokens > 0 && len - prompt_len < (size_t)p->min_new_tokens)
        scores[eos] = -INFINITY;
}

/* log_softmax in f32 as torch: (x - max) - log(sum(exp(x - max))). */
static void log_softmax(const float *x, float *out, int n)
{
    float max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (x[i] > max)
            max = x[i];
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)expf(x[i] - max);
    float lse = (float)log(sum);
    for (int i = 0; i < n; i++)
        out[i] = (x[i] - max) - lse;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

typedef struct scored {
    float v;
    int i;
} scored;

/* ascending by value, then by index (torch.sort's tie order is unspecified; this is ours) */
static int cmp_scored_asc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->v < y->v)
        return -1;
    if (x->v > y->v)
        return 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* The tokens a candidate list leaves out (the "tail"): none for a full row. */
typedef struct sample_tail {
    int n;         /* tokens left out */
    float max;     /* their largest processed logit (before temperature), -inf if none */
    double lo, hi; /* bounds on the sum of their expf(v / T - max / T) (ke_select_out) */
} sample_tail;

/* Temperature, top-k, top-p (HF's warpers, min_tokens_to_keep 1), then a draw from the
 * softmax, over the list c[0 .. n): processed logits in ascending id order (c[j].i the token).
 * The full row is the list of every token (tail->n == 0) and is always decided. A short list
 * (a device's candidates, tail->n > 0) gives the very token the full row would give, or -1
 * when it cannot prove it; the RNG is drawn only when a token is returned. Every value the
 * full row's result depends on is computed here by the same expressions in the same order:
 * left-out tokens end at -inf (top-k, or a top-p cut proven to remove them all) and so add
 * exact zeros to every sum; only the top-p sums over a tail without top-k are bounded, and a
 * cut that the bounds cannot place exactly returns -1. c is overwritten; `sorted` is scratch
 * for n entries. */
static int sample_list(const ke_gen_params *p, scored *c, int n, int vocab, const sample_tail *tail,
                       scored *sorted, rng *r)
{
    const bool list = tail->n > 0;
    const bool topk = p->top_k > 0 && p->top_k < vocab;
    const bool topp = p->top_p < 1.0f;
    if (n < 1 || (list && !topk && !topp))
        return -1; /* without top-k or top-p every token may be drawn */
    if (p->temperature != 1.0f)
        for (int i = 0; i < n; i++)
            c[i].v = c[i].v / p->temperature;
    float rest = list ? tail->max : -INFINITY; /* the tail's largest value, scaled */
    if (list && p->temperature != 1.0f)
        rest = rest / p->temperature;

    /* sorted[j].i is the list position; positions ascend with ids, so (value, position) sorts
     * as (value, id) */
    if (topk || topp) {
        for (int i = 0; i < n; i++)
            sorted[i] = (scored){c[i].v, i};
        qsort(sorted, (size_t)n, sizeof *sorted, cmp_scored_asc);
    }
    if (topk) {
        /* TopKLogitsWarper: remove scores < the k-th largest (ties with it stay) */
        if (n < p->top_k)
            return -1;
        float kth = sorted[n - p->top_k].v;
        if (list && !(rest < kth))
            return -1; /* a left-out token could tie with the k-th: it would stay */
        for (int i = 0; i < n; i++)
            if (c[i].v < kth)
                c[i].v = -INFINITY;
        for (int j = 0; j < n; j++)
            if (sorted[j].v < kth)
                sorted[j].v = -INFINITY;
    }
    if (topp) {
        /* TopPLogitsWarper: ascending softmax, cumulative sum (torch accumulates in double on
         * the CPU, storing f32), remove cum <= 1 - top_p, always keep the largest. The sums
         * start with the tail's: exactly 0 for a full row or after top-k, else an interval
         * [lo, hi] that every value below is carried through (all the roundings are monotone). */
        float max = sorted[n - 1].v;
        double a_lo = 0.0, a_hi = 0.0, slack = 0.0;
        bool bounded = list && !topk;
        if (bounded) {
            if (!(rest < sorted[0].v) || !(max > -INFINITY) || !(tail->hi < INFINITY))
                return -1; /* the tail must sort wholly below the list */
            /* the host's sequential double sum of tail->n terms, and these bounds' own
             * roundings, are within slack (relative) of the exact sum */
            slack = (double)(tail->n + 16) * 0x1p-50;
            a_lo = tail->lo * (1.0 - slack);
            a_hi = tail->hi * (1.0 + slack);
        }
        double sum_lo = a_lo, sum_hi = a_hi;
        for (int j = 0; j < n; j++) {
            double e = (double)expf(sorted[j].v - max);
            sum_lo += e;
            sum_hi += e;
        }
        float threshold = (float)(1.0 - (double)p->top_p);
        double cum_lo = 0.0, cum_hi = 0.0;
        if (bounded) {
            /* the tail's cumulative sum: its terms (double)(float)(e / sum) within 2^-24
             * (relative) or 2^-150 (absolute) of e / sum, summed in order */
            cum_lo = tail->lo / sum_hi * (1.0 - 0x1p-22 - slack) - (double)tail->n * 0x1p-140;
            if (cum_lo < 0.0)
                cum_lo = 0.0;
            cum_hi = tail->hi / sum_lo * (1.0 + 0x1p-22 + slack) + (double)tail->n * 0x1p-140;
            if (!((float)cum_hi <= threshold))
                return -1; /* the nucleus may reach into the tail */
        }
        for (int j = 0; j < n - 1; j++) {
            double e = (double)expf(sorted[j].v - max);
            cum_lo += (double)(float)(e / sum_hi);
            cum_hi += (double)(float)(e / sum_lo);
            bool removed = (float)cum_hi <= threshold;
            if (removed != ((float)cum_lo <= threshold))
                return -1; /* the cut is too close to call */
            if (removed)
                c[sorted[j].i].v = -INFINITY;
        }
    }

    /* softmax + one multinomial draw (in id order) */
    float max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (c[i].v > max)
            max = c[i].v;
    if (list && !(max > -INFINITY))
        return -1; /* all masked: the full row's NaN walk ends at its last id */
    double total = 0.0;
    for (int i = 0; i < n; i++)
        total += (double)expf(c[i].v - max);
    double u = rng_uniform(r) * total;
    double cum = 0.0;
    int last = 0;
    for (int i = 1; i < n; i++)
        if (c[i].v > c[last].v)
            last = i;
    for (int i = 0; i < n; i++) {
        double w = (double)expf(c[i].v - max);
        if (w <= 0.0)
            continue;
        cum += w;
        last = i;
        if (u < cum)
            return c[i].i;
    }
    return c[last].i;
}

/* The full row as a list of every token. `list` and `sorted` are scratch for vocab entries. */
static int sample_token(const ke_gen_params *p, const float *scores, int vocab, scored *list,
                        scored *sorted, rng *r)
{
    for (int i = 0; i < vocab; i++)
        list[i] = (scored){scores[i], i};
    const sample_tail none = {0, -INFINITY, 0.0, 0.0};
    return sample_list(p, list, vocab, vocab, &none, sorted, r);
}

static int cmp_scored_id(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    return (x->i > y->i) - (x->i < y->i);
}

/* A select_sample list; `list` and `sorted` are scratch for o->n entries. */
static int sample_from(const ke_gen_params *p, const ke_select_out *o, int vocab, scored *list,
                       scored *sorted, rng *r)
{
    if (!o->valid || o->n < 1 || o->n > vocab)
        return -1;
    for (int j = 0; j < o->n; j++) {
        if (o->ids[j] < 0 || o->ids[j] >= vocab)
            return -1;
        list[j] = (scored){o->values[j], o->ids[j]};
    }
    qsort(list, (size_t)o->n, sizeof *list, cmp_scored_id);
    for (int j = 1; j < o->n; j++)
        if (list[j].i == list[j - 1].i)
            return -1;
    const sample_tail tail = {vocab - o->n, o->rest_max, o->tail_lo, o->tail_hi};
    return sample_list(p, list, o->n, vocab, &tail, sorted, r);
}

/* The longest list select_sample is asked for; top-k needs its k plus room for ties made by
 * the temperature's rounding. */
#define SAMPLE_LIST_MAX 1024
#define SAMPLE_TOPK_SLACK 16

static int candidates_wanted(const ke_gen_params *p, int vocab, float *tail_temperature)
{
    *tail_temperature = 0.0f;
    int want;
    if (p->top_k > 0 && p->top_k < vocab) {
        if (p->top_k > SAMPLE_LIST_MAX - SAMPLE_TOPK_SLACK)
            return 0;
        want = p->top_k + SAMPLE_TOPK_SLACK;
    } else if (p->top_p < 1.0f) {
        want = SAMPLE_LIST_MAX;
        *tail_temperature = p->temperature;
    } else {
        return 0;
    }
    return want < vocab ? want : vocab;
}

int ke_sample_candidates_wanted(const ke_gen_params *p, int vocab, float *tail_temperature)
{
    return candidates_wanted(p, vocab, tail_temperature);
}

int ke_sample_row(const ke_gen_params *p, float *scores, int vocab, ke_rng *r)
{
    scored *list = malloc((size_t)vocab * sizeof *list);
    scored *sorted = malloc((size_t)vocab * sizeof *sorted);
    int tok = list && sorted ? sample_token(p, scores, vocab, list, sorted, r) : -1;
    free(list);
    free(sorted);
    return tok;
}

int ke_sample_candidates(const ke_gen_params *p, const ke_select_out *o, int vocab, ke_rng *r)
{
    if (o->n < 1)
        return -1;
    scored *list = malloc((size_t)o->n * sizeof *list);
    scored *sorted = malloc((size_t)o->n * sizeof *sorted);
    int tok = list && sorted ? sample_from(p, o, vocab, list, sorted, r) : -1;
    free(list);
    free(sorted);
    return tok;
}

/* ---- per-request state ------------------------------------------------------------------- */

typedef struct hyp {
    int32_t *ids; /* prompt + generated, capacity prompt + max_new_tokens */
    size_t len;
    float score; /* running: summed log-probs; finished: length-normalised score */
    int slot;    /* running hypotheses: the KV slot holding ids[0 .. len-2] (or the prompt) */
    bool finished;
} hyp;

enum seq_state { SEQ_PENDING, SEQ_PREFILL, SEQ_RUNNING, SEQ_DONE };

typedef struct seq {
    const ke_gen_request *req;
    ke_gen_params p;
    enum seq_state state;
    int n_beams;     /* live hypotheses (1 for greedy / sampling) */
    int *slots;      /* [n_beams] reserved slots */
    hyp *run;        /* [n_beams] running */
    hyp *fin;        /* [n_beams] finished (beam search) */
    hyp *next;       /* [n_beams] scratch for the next running set */
    hyp *merge;      /* [n_beams] scratch for the next finished set */
    bool improvable; /* HF's is_early_stop_heuristic_unsatisfied */
    rng rng;
    int first_row; /* this step: first logits row */
    int sel;       /* this step: its select_greedy / select_sample row, -1 = none */
    ke_gen_result *result;
    /* the scheduler's (ke_sched) */
    ke_gen_request own_req; /* the request as added (its arrays borrowed from the caller) */
    ke_gen_result own_result;
    uint64_t tag;
    size_t prefilled;  /* prompt tokens fed so far */
    int32_t nonpad;    /* non-pad prompt tokens fed so far (HF prefill positions) */
    size_t image_rows; /* image rows fed so far */
    int in_flight;     /* tokens selected on the device and not yet read (0 or 1): the next
                        * step feeds it from the device */
    bool stop;         /* ke_sched_stop: finish at the next step */
    bool in_step;      /* has rows in the step being built */
} seq;

static void hyp_free(hyp *h, int n)
{
    if (h == NULL)
        return;
    for (int i = 0; i < n; i++)
        free(h[i].ids);
    free(h);
}

static hyp *hyp_alloc(int n, size_t cap)
{
    hyp *h = calloc((size_t)n, sizeof *h);
    if (h == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        h[i].ids = malloc(cap * sizeof(int32_t));
        if (h[i].ids == NULL) {
            hyp_free(h, n);
            return NULL;
        }
    }
    return h;
}

static void seq_fini(seq *s)
{
    free(s->slots);
    hyp_free(s->run, s->n_beams);
    hyp_free(s->fin, s->n_beams);
    hyp_free(s->next, s->n_beams);
    hyp_free(s->merge, s->n_beams);
}

static ks_status seq_init(seq *s, const ke_gen_request *req, ke_gen_result *result)
{
    memset(s, 0, sizeof *s);
    s->req = req;
    s->p = req->params;
    s->result = result;
    s->n_beams = req->params.num_beams;
    s->improvable = true;
    rng_seed(&s->rng, req->params.seed);
    size_t cap = req->len + (size_t)req->params.max_new_tokens;
    s->slots = calloc((size_t)s->n_beams, sizeof(int));
    s->run = hyp_alloc(s->n_beams, cap);
    if (s->n_beams > 1) {
        s->fin = hyp_alloc(s->n_beams, cap);
        s->next = hyp_alloc(s->n_beams, cap);
        s->merge = hyp_alloc(s->n_beams, cap);
    }
    if (!s->slots || !s->run || (s->n_beams > 1 && (!s->fin || !s->next || !s->merge)))
        return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
    for (int b = 0; b < s->n_beams; b++) {
        memcpy(s->run[b].ids, req->input_ids, req->len * sizeof(int32_t));
        s->run[b].len = req->len;
        /* HF: the first beam starts at 0, the others at -1e9, so that the first step expands
         * the (identical) prompt once */
        s->run[b].score = b == 0 ? 0.0f : NEG_SENTINEL;
        if (s->fin) {
            s->fin[b].len = 0;
            s->fin[b].score = NEG_SENTINEL;
            s->fin[b].finished = false;
        }
    }
    return KS_OK;
}

static ks_status finish_with(seq *s, const hyp *h)
{
    ke_gen_result *r = s->result;
    r->ids = malloc((h->len ? h->len : 1) * sizeof(int32_t));
    if (r->ids == NULL)
        return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
    memcpy(r->ids, h->ids, h->len * sizeof(int32_t));
    r->len = h->len;
    r->new_tokens = h->len - s->req->len;
    s->state = SEQ_DONE;
    return KS_OK;
}

/* ---- one step of one request ------------------------------------------------------------- */

typedef struct gen_ctx {
    ke_backend *b;
    int vocab, eos, pad;
    float *scores;       /* (vocab) */
    float *lp;           /* (n_beams_max, vocab) processed log-probs, beam search */
    scored *sorted;      /* (vocab) */
    scored *list;        /* (vocab) */
    ke_gen_stats *stats; /* or NULL */
} gen_ctx;

/* Appends the chosen token of a single-hypothesis request; finishes it at </s> or the limit. */
static ks_status push_token(gen_ctx *g, seq *s, int tok)
{
    hyp *h = &s->run[0];
    h->ids[h->len++] = tok;
    if (tok == g->eos || h->len - s->req->len >= (size_t)s->p.max_new_tokens)
        return finish_with(s, h);
    return KS_OK;
}

static ks_status step_single(gen_ctx *g, seq *s, const float *logits)
{
    hyp *h = &s->run[0];
    memcpy(g->scores, logits, (size_t)g->vocab * sizeof(float));
    apply_processors(&s->p, h->ids, h->len, s->req->len, g->eos, g->scores, g->vocab);
    int tok = s->p.do_sample ? sample_token(&s->p, g->scores, g->vocab, g->list, g->sorted, &s->rng)
                             : argmax(g->scores, g->vocab);
    if (s->p.do_sample && g->stats)
        g->stats->sampled_on_host++;
    return push_token(g, s, tok);
}

/* A request's token after a device select: the greedy id, a token its candidate list proves,
 * or the host path on its fetched logits row (`row_buf`, vocab floats). */
static ks_status push_selected(gen_ctx *g, seq *s, bool sampled, const int32_t *ids,
                               const ke_select_out *out, float *row_buf)
{
    if (!sampled)
        return push_token(g, s, ids[s->sel]);
    if (s->sel >= 0 && !s->p.do_sample)
        return push_token(g, s, out[s->sel].id);
    if (s->sel >= 0) {
        int tok = sample_from(&s->p, &out[s->sel], g->vocab, g->list, g->sorted, &s->rng);
        if (tok >= 0) {
            if (g->stats)
                g->stats->sampled_on_device++;
            return push_token(g, s, tok);
        }
    }
    ks_status st = g->b->ops->fetch_logits(g->b, s->first_row, row_buf);
    if (st != KS_OK)
        return st;
    return step_single(g, s, row_buf);
}

typedef struct cand {
    float score;
    int beam;
    int token;
    bool hits; /* ends in </s> or reaches the length limit */
} cand;

/* Keeps the k best (score desc, then lower flat index) of a stream; `top` holds *n sorted. */
static void topk_push(cand *top, int *n, int k, cand c)
{
    int pos = *n;
    if (pos == k) {
        if (!(c.score > top[k - 1].score))
            return; /* later indices lose ties */
        pos = k - 1;
    } else {
        (*n)++;
    }
    while (pos > 0 && c.score > top[pos - 1].score) {
        top[pos] = top[pos - 1];
        pos--;
    }
    top[pos] = c;
}

static void hyp_copy_extend(hyp *dst, const hyp *src, int token)
{
    memcpy(dst->ids, src->ids, src->len * sizeof(int32_t));
    dst->len = src->len;
    if (token >= 0)
        dst->ids[dst->len++] = token;
}

static ks_status step_beams(gen_ctx *g, seq *s, const float *logits, int rows)
{
    int nb = s->n_beams;
    int V = g->vocab;
    size_t prompt_len = s->req->len;
    size_t cur_len = s->run[0].len; /* every running beam has the same length */
    size_t max_length = prompt_len + (size_t)s->p.max_new_tokens;
    int keep = 2 * nb; /* max(2, 1 + n_eos) · num_beams with one </s> */

    /* b. log_softmax, processors per beam, + running score; c. the 2·nb best candidates */
    cand top[2 * MAX_BEAMS];
    int n_top = 0;
    for (int b = 0; b < nb; b++) {
        const float *row = logits + (size_t)(rows == 1 ? 0 : b) * (size_t)V;
        float *lp = g->lp + (size_t)b * (size_t)V;
        log_softmax(row, lp, V);
        apply_processors(&s->p, s->run[b].ids, cur_len, prompt_len, g->eos, lp, V);
        for (int t = 0; t < V; t++) {
            cand c = {lp[t] + s->run[b].score, b, t, false};
            topk_push(top, &n_top, keep, c);
        }
    }
    bool all_hit = true;
    for (int c = 0; c < n_top; c++) {
        top[c].hits = top[c].token == g->eos || cur_len + 1 >= max_length;
        all_hit = all_hit && top[c].hits;
    }

    /* e. next running beams: the nb best after pushing finished candidates down by 1e9 */
    cand run_sel[MAX_BEAMS];
    int n_run = 0;
    for (int c = 0; c < n_top; c++) {
        cand x = top[c];
        x.score = x.score + (x.hits ? NEG_SENTINEL : 0.0f);
        topk_push(run_sel, &n_run, nb, x);
    }

    /* f. finished hypotheses: merge the old ones with the first nb candidates that just ended */
    bool all_finished = true;
    for (int b = 0; b < nb; b++)
        all_finished = all_finished && s->fin[b].finished;
    float denom = (float)pow((double)(cur_len + 1 - prompt_len), (double)s->p.length_penalty);
    /* merged entries: m < nb the old finished, m >= nb candidate m - nb; the nb best, ties to
     * the lower m (topk_push keeps the earlier of equal scores) */
    cand best[MAX_BEAMS];
    int n_best = 0;
    for (int m = 0; m < nb + n_top; m++) {
        float sc;
        if (m < nb) {
            sc = s->fin[m].score;
        } else {
            int c = m - nb;
            bool just = top[c].hits && c < nb;
            sc = top[c].score / denom;
            sc += (all_finished && s->p.early_stopping) ? NEG_SENTINEL : 0.0f;
            sc += s->improvable ? 0.0f : NEG_SENTINEL;
            sc += just ? 0.0f : NEG_SENTINEL;
        }
        topk_push(best, &n_best, nb, (cand){sc, m, 0, false});
    }
    for (int j = 0; j < nb; j++) {
        int m = best[j].beam;
        hyp *dst = &s->merge[j];
        if (m < nb) {
            hyp_copy_extend(dst, &s->fin[m], -1);
            dst->finished = s->fin[m].finished;
        } else {
            int c = m - nb;
            hyp_copy_extend(dst, &s->run[top[c].beam], top[c].token);
            dst->finished = top[c].hits && c < nb;
        }
        dst->score = best[j].score;
    }
    hyp *tmp = s->fin;
    s->fin = s->merge;
    s->merge = tmp;

    /* the new running set (sequences and scores), remembering each one's source beam */
    int src_slot[MAX_BEAMS];
    for (int j = 0; j < nb; j++) {
        const cand *c = &run_sel[j];
        hyp_copy_extend(&s->next[j], &s->run[c->beam], c->token);
        s->next[j].score = c->score;
        src_slot[j] = s->run[c->beam].slot;
    }
    tmp = s->run;
    s->run = s->next;
    s->next = tmp;

    /* g. stopping: can the best running beam still beat the worst finished one? */
    cur_len += 1;
    float best_possible = s->run[0].score /
                          (float)pow((double)(cur_len - prompt_len), (double)s->p.length_penalty);
    float min_fin = s->fin[0].score;
    all_finished = true;
    for (int b = 0; b < nb; b++) {
        if (s->fin[b].score < min_fin)
            min_fin = s->fin[b].score;
        all_finished = all_finished && s->fin[b].finished;
    }
    bool any = false;
    for (int b = 0; b < nb; b++) {
        float worst = s->fin[b].finished ? min_fin : NEG_SENTINEL;
        any = any || best_possible > worst;
    }
    s->improvable = s->improvable && any;
    bool open_beam = !(all_finished && s->p.early_stopping);
    if (!(s->improvable && open_beam && !all_hit))
        return finish_with(s, &s->fin[0]);

    /* reorder the KV slots: the first new beam from a source slot keeps it, the others get a
     * copy in a reserved slot no new beam keeps (never a source, so no copy overwrites one) */
    bool taken[MAX_BEAMS] = {false}; /* by index into s->slots */
    int new_slot[MAX_BEAMS];
    for (int j = 0; j < nb; j++) {
        new_slot[j] = -1;
        for (int r = 0; r < nb; r++)
            if (s->slots[r] == src_slot[j] && !taken[r]) {
                taken[r] = true;
                new_slot[j] = src_slot[j];
            }
    }
    for (int j = 0; j < nb; j++) {
        if (new_slot[j] < 0) {
            int r = 0;
            while (taken[r])
                r++;
            taken[r] = true;
            new_slot[j] = s->slots[r];
            ks_status st = g->b->ops->copy_slot(g->b, src_slot[j], new_slot[j]);
            if (st != KS_OK)
                return st;
        }
        s->run[j].slot = new_slot[j];
    }
    return KS_OK;
}

/* ---- validation ---------------------------------------------------------------------- */

static ks_status check_request(const ke_backend *b, const ke_gen_request *r, int i, int n_images)
{
    const ke_config *c = &b->model->config;
    const ke_gen_params *p = &r->params;
    if (r->input_ids == NULL || r->len == 0)
        return ks_fail(KS_ERR_INVALID, "request %d: empty prompt", i);
    for (size_t t = 0; t < r->len; t++)
        if (r->input_ids[t] < 0 || r->input_ids[t] >= c->text.vocab_size)
            return ks_fail(KS_ERR_INVALID,
                           "request %d: token %zu id %d outside the vocabulary (%d)", i, t,
                           r->input_ids[t], c->text.vocab_size);
    if (r->image_embeds_position_mask == NULL)
        return ks_fail(KS_ERR_INVALID, "request %d: no image_embeds_position_mask", i);
    size_t ones = 0;
    for (size_t t = 0; t < r->len; t++)
        ones += r->image_embeds_position_mask[t] != 0;
    if (ones != (size_t)c->latent_query_num)
        return ks_fail(KS_ERR_INVALID,
                       "request %d: image_embeds_position_mask has %zu image positions, the model "
                       "has %d image tokens",
                       i, ones, c->latent_query_num);
    if (r->image < 0 || r->image >= n_images)
        return ks_fail(KS_ERR_INVALID, "request %d: image %d of %d", i, r->image, n_images);
    if (p->max_new_tokens < 0)
        return ks_fail(KS_ERR_INVALID, "request %d: max_new_tokens %d < 0", i, p->max_new_tokens);
    if (p->min_new_tokens < 0 || p->min_new_tokens > p->max_new_tokens)
        return ks_fail(KS_ERR_INVALID,
                       "request %d: min_new_tokens %d outside [0, max_new_tokens %d]", i,
                       p->min_new_tokens, p->max_new_tokens);
    if (p->num_beams < 1)
        return ks_fail(KS_ERR_INVALID, "request %d: num_beams %d < 1", i, p->num_beams);
    if (p->num_beams > MAX_BEAMS)
        return ks_fail(KS_ERR_LIMIT, "request %d: num_beams %d > %d", i, p->num_beams, MAX_BEAMS);
    if (p->num_beams > b->slots)
        return ks_fail(KS_ERR_LIMIT, "request %d: %d beams need %d KV slots, the backend has %d", i,
                       p->num_beams, p->num_beams, b->slots);
    if (p->no_repeat_ngram_size < 0)
        return ks_fail(KS_ERR_INVALID, "request %d: no_repeat_ngram_size %d < 0", i,
                       p->no_repeat_ngram_size);
    if (!isfinite(p->length_penalty))
        return ks_fail(KS_ERR_INVALID, "request %d: length_penalty is not finite", i);
    if (p->do_sample) {
        if (p->num_beams > 1)
            return ks_fail(KS_ERR_UNSUPPORTED,
                           "request %d: sampling with %d beams (beam sampling) "
                           "is not supported",
                           i, p->num_beams);
        if (!(p->temperature > 0.0f) || !isfinite(p->temperature))
            return ks_fail(KS_ERR_INVALID, "request %d: temperature %g must be > 0 when sampling",
                           i, (double)p->temperature);
        if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
            return ks_fail(KS_ERR_INVALID, "request %d: top_p %g outside (0, 1]", i,
                           (double)p->top_p);
        if (p->top_k < 0)
            return ks_fail(KS_ERR_INVALID, "request %d: top_k %d < 0", i, p->top_k);
    }
    if ((size_t)p->max_new_tokens > (size_t)b->slot_capacity ||
        r->len > (size_t)b->slot_capacity - (size_t)p->max_new_tokens)
        return ks_fail(KS_ERR_LIMIT,
                       "request %d: %zu prompt tokens + %d new tokens exceed the slot capacity %d",
                       i, r->len, p->max_new_tokens, b->slot_capacity);
    return KS_OK;
}

/* ---- the public calls ---------------------------------------------------------------------- */

void ke_gen_params_default(ke_gen_params *p, const ke_config *config)
{
    memset(p, 0, sizeof *p);
    p->max_new_tokens = 128;
    p->min_new_tokens = 0;
    p->num_beams = 1;
    p->no_repeat_ngram_size = 0;
    p->do_sample = false;
    p->temperature = 1.0f;
    p->top_k = 50;
    p->top_p = 1.0f;
    p->seed = 0;
    p->length_penalty = 1.0f;
    p->early_stopping = false;
    if (config) {
        const ke_generation_defaults *d = &config->generation;
        p->max_new_tokens = d->max_new_tokens;
        p->no_repeat_ngram_size = d->no_repeat_ngram_size;
        p->num_beams = d->num_beams;
        p->length_penalty = d->length_penalty;
        p->early_stopping = d->early_stopping;
    }
}

void ke_gen_result_fini(ke_gen_result *r)
{
    if (r == NULL)
        return;
    free(r->ids);
    free(r->prefill_logits_last);
    memset(r, 0, sizeof *r);
}

/* The HF position of a decoded token after `past` cached tokens. */
static int32_t decode_position(int32_t id, size_t past, int pad)
{
    return id == pad ? pad : (int32_t)((size_t)pad + 1 + past);
}

/* ---- the scheduler ---------------------------------------------------------------------- */

struct ke_sched {
    ke_backend *b;
    ke_sched_params p;
    int V, eos, pad;
    size_t row_floats; /* latent_query_num * embed_dim: one image's embeds */
    /* images: copies of the embeds, shared by the requests that name them */
    float **img;   /* [n_img]; NULL = free */
    int *img_refs; /* the caller's reference + one per live request */
    int n_img;
    /* requests in arrival order (queued first-come-first-served, then live) */
    seq **seqs;
    int n_seqs, cap_seqs;
    bool *slot_free; /* [backend slots] */
    int max_beams;
    /* a step's host buffers, grown on demand */
    size_t cap_rows, cap_tok, cap_img_rows;
    int *st_slots, *st_ntok;
    uint8_t *st_dev;
    int32_t *st_ids, *st_pos;
    uint8_t *st_mask;
    float *st_img;
    float *logits;          /* (cap_rows, V) */
    ke_select_row *sel;     /* [cap_rows] */
    ke_select_out *sel_out; /* [cap_rows] */
    float *cand_vals;       /* [cap_rows * SAMPLE_LIST_MAX] */
    int32_t *cand_ids;
    int32_t *sel_ids; /* [cap_rows]: a synchronous select's ids */
    /* the one greedy selection whose ids are still on their way (KE_MAX_OUTSTANDING >= 1):
     * whose row each id is (NULL: a row to ignore), and the two arrays ids land in in turn */
    seq **flight;           /* [cap_rows] */
    int32_t *flight_ids[2]; /* [cap_rows] each */
    int flight_at;          /* which array the one in flight writes */
    int n_flight;
    bool flying;
    gen_ctx g;
    ke_sched_done *done;
    int n_done, cap_done;
    ke_gen_stats stats;
};

static void *grow_array(void *p, size_t n, size_t elem, bool *ok)
{
    void *q = realloc(p, (n ? n : 1) * elem);
    if (!q)
        *ok = false;
    return q ? q : p;
}

/* Host buffers for a step of `rows` sequences and `tokens` tokens. */
static ks_status sched_grow(ke_sched *s, size_t rows, size_t tokens, size_t img_rows)
{
    bool ok = true;
    if (rows > s->cap_rows) {
        size_t n = rows * 2;
        s->st_slots = grow_array(s->st_slots, n, sizeof(int), &ok);
        s->st_ntok = grow_array(s->st_ntok, n, sizeof(int), &ok);
        s->st_dev = grow_array(s->st_dev, n, 1, &ok);
        s->logits = grow_array(s->logits, n * (size_t)s->V, sizeof(float), &ok);
        s->sel = grow_array(s->sel, n, sizeof *s->sel, &ok);
        s->sel_out = grow_array(s->sel_out, n, sizeof *s->sel_out, &ok);
        s->cand_vals = grow_array(s->cand_vals, n * SAMPLE_LIST_MAX, sizeof(float), &ok);
        s->cand_ids = grow_array(s->cand_ids, n * SAMPLE_LIST_MAX, sizeof(int32_t), &ok);
        s->sel_ids = grow_array(s->sel_ids, n, sizeof(int32_t), &ok);
        if (s->flying) /* their contents are needed until the ids arrive */
            return ks_fail(KS_ERR_INVALID, "generate: growing during a selection");
        s->flight = grow_array(s->flight, n, sizeof(seq *), &ok);
        s->flight_ids[0] = grow_array(s->flight_ids[0], n, sizeof(int32_t), &ok);
        s->flight_ids[1] = grow_array(s->flight_ids[1], n, sizeof(int32_t), &ok);
        if (ok)
            s->cap_rows = n;
    }
    if (tokens > s->cap_tok) {
        size_t n = tokens * 2;
        s->st_ids = grow_array(s->st_ids, n, sizeof(int32_t), &ok);
        s->st_pos = grow_array(s->st_pos, n, sizeof(int32_t), &ok);
        s->st_mask = grow_array(s->st_mask, n, 1, &ok);
        if (ok)
            s->cap_tok = n;
    }
    if (img_rows > s->cap_img_rows) {
        s->st_img = grow_array(s->st_img, img_rows,
                               (size_t)s->b->model->config.text.embed_dim * sizeof(float), &ok);
        if (ok)
            s->cap_img_rows = img_rows;
    }
    return ok ? KS_OK : ks_fail(KS_ERR_NOMEM, "generate: out of memory");
}

ks_status ke_sched_new(ke_backend *backend, const ke_sched_params *params, ke_sched **out)
{
    *out = NULL;
    if (!backend)
        return ks_fail(KS_ERR_INVALID, "generate: no backend");
    ke_sched *s = calloc(1, sizeof *s);
    if (!s)
        return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
    const ke_config *c = &backend->model->config;
    s->b = backend;
    if (params)
        s->p = *params;
    s->V = c->text.vocab_size;
    s->eos = c->text.eos_id;
    s->pad = c->text.pad_id;
    s->row_floats = (size_t)c->latent_query_num * (size_t)c->text.embed_dim;
    s->slot_free = malloc((size_t)backend->slots * sizeof *s->slot_free);
    s->g = (gen_ctx){backend, s->V, s->eos, s->pad, NULL, NULL, NULL, NULL, &s->stats};
    s->g.scores = malloc((size_t)s->V * sizeof(float));
    s->g.sorted = malloc((size_t)s->V * sizeof(scored));
    s->g.list = malloc((size_t)s->V * sizeof(scored));
    if (!s->slot_free || !s->g.scores || !s->g.sorted || !s->g.list) {
        ke_sched_destroy(&s);
        return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
    }
    for (int i = 0; i < backend->slots; i++)
        s->slot_free[i] = true;
    *out = s;
    return KS_OK;
}

static void release_seq(ke_sched *s, seq *q)
{
    if (q->slots && q->state != SEQ_PENDING)
        for (int b = 0; b < q->n_beams; b++) {
            if (!s->slot_free[q->slots[b]])
                s->b->ops->release_slot(s->b, q->slots[b]);
            s->slot_free[q->slots[b]] = true;
        }
    if (q->own_req.image >= 0 && q->own_req.image < s->n_img)
        ke_sched_drop_image(s, q->own_req.image);
    q->own_req.image = -1;
    ke_gen_result_fini(&q->own_result);
    seq_fini(q);
}

void ke_sched_destroy(ke_sched **ps)
{
    if (!ps || !*ps)
        return;
    ke_sched *s = *ps;
    if (s->flying && s->b->ops->wait_selected)
        s->b->ops->wait_selected(s->b); /* the ids' memory is freed below */
    for (int i = 0; i < s->n_seqs; i++) {
        release_seq(s, s->seqs[i]);
        free(s->seqs[i]);
    }
    for (int i = 0; i < s->n_done; i++)
        ke_gen_result_fini(&s->done[i].result);
    for (int i = 0; i < s->n_img; i++)
        free(s->img[i]);
    free(s->img);
    free(s->img_refs);
    free(s->seqs);
    free(s->slot_free);
    free(s->st_slots), free(s->st_ntok), free(s->st_dev), free(s->st_ids), free(s->st_pos);
    free(s->st_mask), free(s->st_img), free(s->logits), free(s->sel), free(s->sel_out);
    free(s->cand_vals), free(s->cand_ids), free(s->sel_ids), free(s->flight);
    free(s->flight_ids[0]), free(s->flight_ids[1]);
    free(s->g.scores), free(s->g.lp), free(s->g.sorted), free(s->g.list);
    free(s->done);
    free(s);
    *ps = NULL;
}

ks_status ke_sched_add_image(ke_sched *s, const float *embeds, int *image)
{
    int at = -1;
    for (int i = 0; i < s->n_img && at < 0; i++)
        if (!s->img[i])
            at = i;
    if (at < 0) {
        bool ok = true;
        s->img = grow_array(s->img, (size_t)s->n_img + 1, sizeof *s->img, &ok);
        s->img_refs = grow_array(s->img_refs, (size_t)s->n_img + 1, sizeof *s->img_refs, &ok);
        if (!ok)
            return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
        at = s->n_img++;
        s->img[at] = NULL;
    }
    s->img[at] = malloc(s->row_floats * sizeof(float));
    if (!s->img[at])
        return ks_fail(KS_ERR_NOMEM, "generate: out of memory for an image's embeddings");
    memcpy(s->img[at], embeds, s->row_floats * sizeof(float));
    s->img_refs[at] = 1;
    *image = at;
    return KS_OK;
}

void ke_sched_drop_image(ke_sched *s, int image)
{
    if (image < 0 || image >= s->n_img || !s->img[image])
        return;
    if (--s->img_refs[image] == 0) {
        free(s->img[image]);
        s->img[image] = NULL;
    }
}

ks_status ke_sched_add(ke_sched *s, const ke_gen_request *request, uint64_t tag)
{
    ks_status st = check_request(s->b, request, s->n_seqs, s->n_img);
    if (st != KS_OK)
        return st;
    if (!s->img[request->image])
        return ks_fail(KS_ERR_INVALID, "generate: image %d was dropped", request->image);
    int beams = request->params.num_beams;
    if (beams > s->max_beams) {
        float *lp = realloc(s->g.lp, (size_t)beams * (size_t)s->V * sizeof(float));
        if (!lp)
            return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
        s->g.lp = lp;
        s->max_beams = beams;
    }
    if (s->n_seqs == s->cap_seqs) {
        bool ok = true;
        s->seqs = grow_array(s->seqs, (size_t)s->cap_seqs * 2 + 8, sizeof *s->seqs, &ok);
        if (!ok)
            return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
        s->cap_seqs = s->cap_seqs * 2 + 8;
    }
    seq *q = calloc(1, sizeof *q);
    if (!q)
        return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
    if ((st = seq_init(q, request, &q->own_result)) != KS_OK) {
        seq_fini(q);
        free(q);
        return st;
    }
    q->own_req = *request; /* seq_init zeroed the struct: the copy it keeps comes after */
    q->req = &q->own_req;
    q->tag = tag;
    s->img_refs[request->image]++;
    s->seqs[s->n_seqs++] = q;
    return KS_OK;
}

void ke_sched_stop(ke_sched *s, uint64_t tag)
{
    for (int i = 0; i < s->n_seqs; i++)
        if (s->seqs[i]->tag == tag)
            s->seqs[i]->stop = true;
}

int ke_sched_pending(const ke_sched *s) { return s->n_seqs; }

void ke_sched_stats(const ke_sched *s, ke_gen_stats *out) { *out = s->stats; }

/* Moves a finished (or stopped) request to the done list and forgets it. */
static ks_status retire(ke_sched *s, int i, bool stopped)
{
    seq *q = s->seqs[i];
    if (s->n_done == s->cap_done) {
        bool ok = true;
        s->done = grow_array(s->done, (size_t)s->cap_done * 2 + 8, sizeof *s->done, &ok);
        if (!ok)
            return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
        s->cap_done = s->cap_done * 2 + 8;
    }
    q->own_result.stopped = stopped;
    s->done[s->n_done++] = (ke_sched_done){q->tag, q->own_result, stopped};
    memset(&q->own_result, 0, sizeof q->own_result);
    for (int f = 0; f < s->n_flight; f++) /* its id still on the way is not its any more */
        if (s->flight[f] == q)
            s->flight[f] = NULL;
    release_seq(s, q);
    free(q);
    memmove(s->seqs + i, s->seqs + i + 1, (size_t)(s->n_seqs - i - 1) * sizeof *s->seqs);
    s->n_seqs--;
    return KS_OK;
}

/* A stopped request ends with what it has: its best finished hypothesis (beams) or its
 * running one. */
static ks_status finish_stopped(seq *q)
{
    if (q->state == SEQ_DONE)
        return KS_OK;
    const hyp *h = &q->run[0];
    if (q->n_beams > 1 && q->fin[0].finished)
        h = &q->fin[0];
    return finish_with(q, h);
}

/* Collects the ids of the selection in flight and appends them to their sequences. */
static ks_status land_flight(ke_sched *s)
{
    if (!s->flying)
        return KS_OK;
    s->flying = false;
    ks_status st = s->b->ops->wait_selected(s->b);
    const int32_t *ids = s->flight_ids[s->flight_at];
    for (int f = 0; f < s->n_flight && st == KS_OK; f++) {
        seq *q = s->flight[f];
        if (!q)
            continue;
        q->in_flight--;
        if (q->state == SEQ_RUNNING)
            st = push_token(&s->g, q, ids[f]);
    }
    s->n_flight = 0;
    return st;
}

/* Takes queued requests, first come first served, while their slots and cache room fit. */
static ks_status admit(ke_sched *s)
{
    ke_backend *b = s->b;
    for (int i = 0; i < s->n_seqs; i++) {
        seq *q = s->seqs[i];
        if (q->state != SEQ_PENDING)
            continue;
        int free_slots = 0;
        for (int k = 0; k < b->slots; k++)
            free_slots += s->slot_free[k];
        if (q->n_beams > free_slots)
            return KS_OK;
        /* the prompt, the new tokens and one more: a step may run a sequence once past its
         * end before the host reads that it ended */
        int tokens = (int)q->req->len + q->p.max_new_tokens + 1;
        if (tokens > b->slot_capacity)
            tokens = b->slot_capacity;
        int got = 0;
        for (int k = 0; k < b->slots && got < q->n_beams; k++) {
            if (!s->slot_free[k])
                continue;
            ks_status st = b->ops->reserve ? b->ops->reserve(b, k, tokens) : KS_OK;
            if (st == KS_ERR_LIMIT) {
                for (int r = 0; r < got; r++) {
                    b->ops->release_slot(b, q->slots[r]);
                    s->slot_free[q->slots[r]] = true;
                }
                ks_error_clear();
                return KS_OK; /* waits for cache room, as for slots */
            }
            if (st != KS_OK)
                return st;
            s->slot_free[k] = false;
            q->slots[got++] = k;
        }
        for (int k = 0; k < q->n_beams; k++)
            q->run[k].slot = q->slots[0]; /* all beams start from the one prefill */
        q->state = SEQ_PREFILL;
    }
    return KS_OK;
}

/* Appends sequence q's rows to the step: its next prompt chunk, or one token per hypothesis
 * (the in-flight one from the device). budget: prompt tokens this step may still take. */
static void add_rows(ke_sched *s, seq *q, ke_step *st, size_t *nt, size_t *n_img, size_t *budget)
{
    const size_t E = (size_t)s->b->model->config.text.embed_dim;
    q->in_step = false;
    q->first_row = st->n_seqs;
    if (q->state == SEQ_PREFILL) {
        size_t left = q->req->len - q->prefilled;
        size_t chunk = left < *budget ? left : *budget;
        if (chunk == 0)
            return;
        *budget -= chunk;
        s->st_slots[st->n_seqs] = q->slots[0];
        s->st_ntok[st->n_seqs] = (int)chunk;
        s->st_dev[st->n_seqs] = 0;
        st->n_seqs++;
        for (size_t t = q->prefilled; t < q->prefilled + chunk; t++, (*nt)++) {
            int32_t id = q->req->input_ids[t];
            q->nonpad += id != s->pad;
            s->st_ids[*nt] = id;
            s->st_pos[*nt] = id == s->pad ? s->pad : s->pad + q->nonpad;
            s->st_mask[*nt] = q->req->image_embeds_position_mask[t] != 0;
            if (s->st_mask[*nt]) {
                memcpy(s->st_img + *n_img * E, s->img[q->req->image] + q->image_rows * E,
                       E * sizeof(float));
                q->image_rows++;
                (*n_img)++;
            }
        }
        q->prefilled += chunk;
        q->in_step = true;
        return;
    }
    /* no row once the last new token is chosen (in flight) or the sequence is done */
    if (q->state != SEQ_RUNNING ||
        q->run[0].len + (size_t)q->in_flight - q->req->len >= (size_t)q->p.max_new_tokens)
        return;
    for (int b = 0; b < q->n_beams; b++) {
        hyp *h = &q->run[b];
        s->st_slots[st->n_seqs] = h->slot;
        s->st_ntok[st->n_seqs] = 1;
        s->st_dev[st->n_seqs] = q->in_flight > 0;
        st->n_seqs++;
        int32_t id = q->in_flight > 0 ? 0 : h->ids[h->len - 1];
        s->st_ids[*nt] = id;
        s->st_pos[*nt] = decode_position(id, h->len - 1 + (size_t)q->in_flight, s->pad);
        s->st_mask[*nt] = 0;
        (*nt)++;
    }
    q->in_step = true;
}

/* Moves every finished request to the done list. */
static ks_status collect(ke_sched *s, ke_sched_done **done, int *n_done)
{
    ks_status st = KS_OK;
    for (int i = 0; i < s->n_seqs && st == KS_OK;)
        if (s->seqs[i]->state == SEQ_DONE)
            st = retire(s, i, false);
        else
            i++;
    *done = s->done;
    *n_done = s->n_done;
    return st;
}

/* The rows of sequences whose prompt is complete select; the first time is the end of the
 * prefill. Fills s->sel for a device selection (none when `host`). */
static ks_status select_rows(ke_sched *s, bool host, int *n_sel)
{
    *n_sel = 0;
    for (int i = 0; i < s->n_seqs; i++) {
        seq *q = s->seqs[i];
        q->sel = -1;
        if (!q->in_step || (q->state == SEQ_PREFILL && q->prefilled < q->req->len))
            continue;
        if (q->state == SEQ_PREFILL) {
            q->state = SEQ_RUNNING;
            if (q->req->want_prefill_logits) {
                q->result->prefill_logits_last = malloc((size_t)s->V * sizeof(float));
                if (!q->result->prefill_logits_last)
                    return ks_fail(KS_ERR_NOMEM, "generate: out of memory");
                memcpy(q->result->prefill_logits_last,
                       s->logits + (size_t)q->first_row * (size_t)s->V,
                       (size_t)s->V * sizeof(float));
            }
            if (q->p.max_new_tokens == 0) {
                ks_status st = finish_with(q, &q->run[0]);
                if (st != KS_OK)
                    return st;
                continue;
            }
        }
        if (host)
            continue;
        const hyp *h = &q->run[0];
        size_t len = h->len + (size_t)q->in_flight; /* ids fed so far */
        ke_select_row row = {.row = q->first_row,
                             .slot = h->slot,
                             .ids = q->in_flight ? NULL : h->ids,
                             .len = len,
                             .no_repeat_ngram_size = q->p.no_repeat_ngram_size,
                             .ban_eos = q->p.min_new_tokens > 0 &&
                                        len - q->req->len < (size_t)q->p.min_new_tokens};
        if (q->p.do_sample) {
            row.candidates = candidates_wanted(&q->p, s->V, &row.tail_temperature);
            if (row.candidates == 0)
                continue; /* no list can decide: the full row (fetch_logits) */
            s->sel_out[*n_sel].values = s->cand_vals + (size_t)*n_sel * SAMPLE_LIST_MAX;
            s->sel_out[*n_sel].ids = s->cand_ids + (size_t)*n_sel * SAMPLE_LIST_MAX;
        }
        q->sel = *n_sel;
        s->sel[(*n_sel)++] = row;
    }
    return KS_OK;
}

ks_status ke_sched_step(ke_sched *s, ke_sched_done **done, int *n_done)
{
    ke_backend *b = s->b;
    const ke_backend_ops *ops = b->ops;
    ks_status st = KS_OK;
    for (int i = 0; i < s->n_done; i++)
        ke_gen_result_fini(&s->done[i].result); /* results the caller did not take */
    s->n_done = 0;
    *done = NULL;
    *n_done = 0;

    /* stopped requests (ke_sched_stop, or their own stop hook, asked once a step whether they
     * run or wait) end now, with what they have */
    for (int i = 0; i < s->n_seqs;) {
        seq *q = s->seqs[i];
        if (!q->stop && q->req->stop && q->req->stop(q->req->stop_ctx))
            q->stop = true;
        if (!q->stop) {
            i++;
            continue;
        }
        if ((st = finish_stopped(q)) != KS_OK || (st = retire(s, i, true)) != KS_OK)
            return st;
    }
    if ((st = admit(s)) != KS_OK)
        return st;

    /* How this step selects: on the host from read logits (beams, prefill logits asked for,
     * a backend without device selection), on the device and waited for (sampling), or
     * greedily on the device without waiting (the ids are read during the next step). */
    size_t rows = 0, tokens = 0, img_rows = 0;
    bool beams = false, sampling = false, want_logits = false;
    for (int i = 0; i < s->n_seqs; i++) {
        seq *q = s->seqs[i];
        if (q->state != SEQ_PREFILL && q->state != SEQ_RUNNING)
            continue;
        beams = beams || q->n_beams > 1;
        sampling = sampling || q->p.do_sample;
        want_logits = want_logits || (q->state == SEQ_PREFILL && q->req->want_prefill_logits);
        rows += (size_t)q->n_beams;
        tokens += q->state == SEQ_PREFILL ? q->req->len - q->prefilled : (size_t)q->n_beams;
        img_rows += q->state == SEQ_PREFILL ? (size_t)b->model->config.latent_query_num : 0;
    }
    bool host = beams || want_logits || !ops->select_greedy ||
                (sampling && (!ops->select_sample || !ops->fetch_logits));
    bool async = !host && !sampling && ops->select_greedy_enqueue && ops->wait_selected;
    double t0 = now_ms();
    /* A synchronous step feeds known tokens; and the host rows may not move while a selection's
     * ids are being read into them (sched_grow), so more rows than ever land the flight first. */
    if ((!async || rows > s->cap_rows) && (st = land_flight(s)) != KS_OK)
        return st;
    if ((st = sched_grow(s, rows, tokens, img_rows)) != KS_OK)
        return st;
    ke_step step = {.slots = s->st_slots,
                    .n_tokens = s->st_ntok,
                    .ids = s->st_ids,
                    .positions = s->st_pos,
                    .image_mask = s->st_mask,
                    .image_embeds = s->st_img,
                    .from_device = s->st_dev};
    size_t nt = 0, n_img = 0;
    size_t budget = s->p.prefill_tokens > 0 ? (size_t)s->p.prefill_tokens : SIZE_MAX;
    bool has_prefill = false;
    for (int i = 0; i < s->n_seqs; i++) {
        bool prefill = s->seqs[i]->state == SEQ_PREFILL;
        add_rows(s, s->seqs[i], &step, &nt, &n_img, &budget);
        has_prefill = has_prefill || (prefill && s->seqs[i]->in_step);
    }
    if (step.n_seqs == 0) { /* nothing to compute: ids still on their way at most */
        bool was_flying = s->flying;
        if ((st = land_flight(s)) != KS_OK || (st = collect(s, done, n_done)) != KS_OK)
            return st;
        if (!was_flying && *n_done == 0 && s->n_seqs > 0) /* would wait for ever */
            return ks_fail(KS_ERR_LIMIT,
                           "generate: request %llu cannot start: it needs %d slots "
                           "and cache room for %zu tokens, more than the backend has free with "
                           "nothing running",
                           (unsigned long long)s->seqs[0]->tag, s->seqs[0]->n_beams,
                           s->seqs[0]->req->len + (size_t)s->seqs[0]->p.max_new_tokens + 1);
        return KS_OK;
    }
    if ((st = ops->forward(b, &step, host ? s->logits : NULL)) != KS_OK)
        return st;
    int n_sel = 0;
    if ((st = select_rows(s, host, &n_sel)) != KS_OK)
        return st;

    if (async) {
        /* this step's selection is enqueued before the previous one's ids are read: the device
         * computes this step while the host takes those in */
        int at = s->flying ? 1 - s->flight_at : s->flight_at;
        if (n_sel > 0 &&
            (st = ops->select_greedy_enqueue(b, s->sel, n_sel, s->flight_ids[at])) != KS_OK)
            return st;
        if ((st = land_flight(s)) != KS_OK)
            return st;
        if (n_sel > 0) {
            s->flight_at = at;
            s->flying = true;
            s->n_flight = n_sel;
            for (int f = 0; f < n_sel; f++)
                s->flight[f] = NULL;
            for (int i = 0; i < s->n_seqs; i++) {
                seq *q = s->seqs[i];
                if (q->sel < 0 || q->state != SEQ_RUNNING)
                    continue; /* finished while its row was computed: its id is dropped */
                s->flight[q->sel] = q;
                q->in_flight++;
            }
        }
    } else {
        if (!host && n_sel > 0 &&
            (st = sampling ? ops->select_sample(b, s->sel, n_sel, s->sel_out)
                           : ops->select_greedy(b, s->sel, n_sel, s->sel_ids)) != KS_OK)
            return st;
        for (int i = 0; i < s->n_seqs && st == KS_OK; i++) {
            seq *q = s->seqs[i];
            if (!q->in_step || q->state != SEQ_RUNNING)
                continue;
            const float *lg = s->logits + (size_t)q->first_row * (size_t)s->V;
            if (host && q->n_beams > 1)
                st = step_beams(&s->g, q, lg, q->run[0].len == q->req->len ? 1 : q->n_beams);
            else if (host)
                st = step_single(&s->g, q, lg);
            else if (q->sel >= 0 || q->p.do_sample)
                st = push_selected(&s->g, q, sampling, s->sel_ids, s->sel_out, s->logits);
        }
        if (st != KS_OK)
            return st;
    }
    double dt = now_ms() - t0;
    if (has_prefill) {
        s->stats.prefill_ms += dt;
    } else {
        s->stats.decode_ms += dt;
        s->stats.steps++;
    }
    return collect(s, done, n_done);
}

ks_status ke_generate(ke_backend *backend, const float *image_embeds, int n_images,
                      const ke_gen_request *requests, int n_requests, ke_gen_result *results,
                      ke_gen_stats *stats)
{
    if (backend == NULL || (n_requests > 0 && (requests == NULL || results == NULL)) ||
        n_requests < 0)
        return ks_fail(KS_ERR_INVALID, "generate: no backend or requests");
    if (stats)
        memset(stats, 0, sizeof *stats);
    for (int i = 0; i < n_requests; i++)
        memset(&results[i], 0, sizeof results[i]);
    if (n_images < 0 || (n_images > 0 && image_embeds == NULL))
        return ks_fail(KS_ERR_INVALID, "generate: %d images without image_embeds", n_images);
    for (int i = 0; i < n_requests; i++) {
        ks_status st = check_request(backend, &requests[i], i, n_images);
        if (st != KS_OK)
            return st;
    }
    if (n_requests == 0)
        return KS_OK;
    ke_sched *s = NULL;
    ks_status st = ke_sched_new(backend, NULL, &s);
    if (st != KS_OK)
        return st;
    const ke_config *c = &backend->model->config;
    size_t per_image = (size_t)c->latent_query_num * (size_t)c->text.embed_dim;
    int *ids = malloc((size_t)n_images * sizeof *ids + 1);
    if (!ids)
        st = ks_fail(KS_ERR_NOMEM, "generate: out of memory");
    for (int i = 0; i < n_images && st == KS_OK; i++)
        st = ke_sched_add_image(s, image_embeds + (size_t)i * per_image, &ids[i]);
    for (int i = 0; i < n_requests && st == KS_OK; i++) {
        ke_gen_request r = requests[i];
        r.image = ids[r.image];
        st = ke_sched_add(s, &r, (uint64_t)i);
    }
    for (int i = 0; i < n_images && st == KS_OK; i++)
        ke_sched_drop_image(s, ids[i]); /* the requests hold them now */
    while (st == KS_OK && ke_sched_pending(s) > 0) {
        ke_sched_done *done = NULL;
        int n_done = 0;
        st = ke_sched_step(s, &done, &n_done);
        for (int d = 0; d < n_done; d++) {
            results[done[d].tag] = done[d].result;
            memset(&done[d].result, 0, sizeof done[d].result);
        }
    }
    if (stats && st == KS_OK)
        ke_sched_stats(s, stats);
    ke_sched_destroy(&s);
    free(ids);
    if (st != KS_OK)
        for (int i = 0; i < n_requests; i++)
            ke_gen_result_fini(&results[i]);
    return st;
}
