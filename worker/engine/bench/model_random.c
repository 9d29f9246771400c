/* ke_model_random: seeded random Kosmos-2 weights in memory; see model_random.h.
 *
 * One plan lists every tensor the architecture has, in model.c's order, with its shape and its
 * distribution; the weights live in one 64-byte aligned block (each tensor 64-byte aligned).
 * Filling is split into chunks of KE_RANDOM_CHUNK elements, each with its own generator seeded
 * from (seed, tensor index, chunk index), so the values do not depend on how many threads run.
 * Not here: any arithmetic on the weights. */
#include "model_random.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KE_RANDOM_CHUNK ((size_t)1 << 20)
#define KE_RANDOM_MAX_THREADS 64

typedef enum init_kind {
    INIT_EMBEDDING, /* N(0, 1) */
    INIT_MATRIX,    /* N(0, 1/fan_in), fan_in = prod(shape[1:]) */
    INIT_NORM,      /* 1 + 0.1 N(0, 1) */
    INIT_BIAS       /* 0.1 N(0, 1) */
} init_kind;

typedef struct spec {
    ke_tensor *t; /* NULL when only counting */
    init_kind kind;
    int ndim;
    int64_t shape[4];
    size_t numel;
    size_t offset; /* bytes into the block */
} spec;

typedef struct plan {
    spec *v;
    size_t n, cap;
    int failed; /* an allocation failed */
} plan;

/* ---- configurations ---- */

void ke_config_default_full(ke_config *out)
{
    /* Every field absent: the parser fills Kosmos2Config()'s defaults, the same code path a
     * real config.json takes. The real checkpoint's generation_config.json sets ngram 3. */
    ks_status st = ke_config_parse("{\"model_type\": \"kosmos-2\"}",
                                   "{\"no_repeat_ngram_size\": 3}", "Kosmos2Config()", out);
    (void)st;
}

void ke_config_default_tiny(ke_config *out)
{
    static const char tiny[] =
        "{\"model_type\": \"kosmos-2\", \"latent_query_num\": 64,"
        " \"text_config\": {\"embed_dim\": 48, \"layers\": 2, \"ffn_dim\": 100,"
        "  \"attention_heads\": 3, \"activation_function\": \"gelu\"},"
        " \"vision_config\": {\"hidden_size\": 32, \"intermediate_size\": 72,"
        "  \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"hidden_act\": \"quick_gelu\"}}";
    ks_status st = ke_config_parse(tiny, "{\"no_repeat_ngram_size\": 3}", "tiny config", out);
    (void)st;
}

/* ---- the plan ---- */

static void add(plan *p, ke_tensor *t, init_kind kind, int ndim, int64_t d0, int64_t d1, int64_t d2,
                int64_t d3)
{
    if (p->failed)
        return;
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 256;
        spec *grown = realloc(p->v, cap * sizeof *grown);
        if (!grown) {
            p->failed = 1;
            return;
        }
        p->v = grown;
        p->cap = cap;
    }
    spec *s = &p->v[p->n++];
    *s = (spec){.t = t, .kind = kind, .ndim = ndim, .shape = {d0, d1, d2, d3}};
    s->numel = 1;
    for (int d = 0; d < ndim; d++)
        s->numel *= (size_t)s->shape[d];
}

#define T(x) (m ? &(x) : NULL)

static void add_linear(plan *p, ke_linear *l, int64_t out, int64_t in)
{
    add(p, l ? &l->weight : NULL, INIT_MATRIX, 2, out, in, 0, 0);
    add(p, l ? &l->bias : NULL, INIT_BIAS, 1, out, 0, 0, 0);
}

static void add_norm(plan *p, ke_layer_norm *n, int64_t dim)
{
    add(p, n ? &n->weight : NULL, INIT_NORM, 1, dim, 0, 0, 0);
    add(p, n ? &n->bias : NULL, INIT_BIAS, 1, dim, 0, 0, 0);
}

/* Every tensor of the architecture, in model.c's order; m == NULL only counts. */
static void make_plan(const ke_config *c, ke_model *m, plan *p)
{
    const ke_vision_config *v = &c->vision;
    const ke_text_config *tc = &c->text;
    int64_t h = v->hidden_size, grid = v->image_size / v->patch_size, inter = v->intermediate_size;
    int64_t d = tc->embed_dim, f = tc->ffn_dim;

    add(p, T(m->patch_embedding), INIT_MATRIX, 4, h, v->channels, v->patch_size, v->patch_size);
    add(p, T(m->class_embedding), INIT_EMBEDDING, 1, h, 0, 0, 0);
    add(p, T(m->position_embedding), INIT_EMBEDDING, 2, grid * grid + 1, h, 0, 0);
    add_norm(p, T(m->pre_layrnorm), h);
    for (int i = 0; i < v->layers; i++) {
        ke_vision_layer *L = m ? &m->vision_layers[i] : NULL;
        add_norm(p, L ? &L->layer_norm1 : NULL, h);
        add_linear(p, L ? &L->q_proj : NULL, h, h);
        add_linear(p, L ? &L->k_proj : NULL, h, h);
        add_linear(p, L ? &L->v_proj : NULL, h, h);
        add_linear(p, L ? &L->out_proj : NULL, h, h);
        add_norm(p, L ? &L->layer_norm2 : NULL, h);
        add_linear(p, L ? &L->fc1 : NULL, inter, h);
        add_linear(p, L ? &L->fc2 : NULL, h, inter);
    }
    add_norm(p, T(m->post_layernorm), h);

    add_linear(p, T(m->dense), d, h);
    add(p, T(m->latent_query), INIT_EMBEDDING, 2, c->latent_query_num, d, 0, 0);
    add_linear(p, T(m->x_q_proj), d, d);
    add_linear(p, T(m->x_k_proj), d, d);
    add_linear(p, T(m->x_v_proj), d, d);
    add_linear(p, T(m->x_out_proj), d, d);

    add(p, T(m->embed_tokens), INIT_EMBEDDING, 2, tc->vocab_size, d, 0, 0);
    for (int i = 0; i < tc->layers; i++) {
        ke_text_layer *L = m ? &m->text_layers[i] : NULL;
        add_norm(p, L ? &L->self_attn_layer_norm : NULL, d);
        add_linear(p, L ? &L->q_proj : NULL, d, d);
        add_linear(p, L ? &L->k_proj : NULL, d, d);
        add_linear(p, L ? &L->v_proj : NULL, d, d);
        add_norm(p, L ? &L->inner_attn_ln : NULL, d);
        add_linear(p, L ? &L->out_proj : NULL, d, d);
        add_norm(p, L ? &L->final_layer_norm : NULL, d);
        add_linear(p, L ? &L->fc1 : NULL, f, d);
        add_norm(p, L ? &L->ffn_layernorm : NULL, f);
        add_linear(p, L ? &L->fc2 : NULL, d, f);
    }
    add_norm(p, T(m->final_layer_norm), d);
    if (!tc->tie_word_embeddings)
        add(p, T(m->lm_head), INIT_MATRIX, 2, tc->vocab_size, d, 0, 0);
}

#undef T

uint64_t ke_config_param_count(const ke_config *config)
{
    plan p = {0};
    make_plan(config, NULL, &p);
    uint64_t n = 0;
    for (size_t i = 0; i < p.n; i++)
        n += p.v[i].numel;
    free(p.v);
    return p.failed ? 0 : n;
}

/* ---- the generator ---- */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* f32 -> f16 bits, round to nearest even, inline for the normal range (every value of the
 * init but the rare tiny one); the rest goes to ke_f32_to_f16. Bit for bit the same. */
static inline uint16_t to_f16(float v)
{
    uint32_t f;
    memcpy(&f, &v, sizeof f);
    uint32_t a = f & 0x7fffffffu;
    if (a < 0x38800000u || a >= 0x47800000u)
        return ke_f32_to_f16(v);
    a -= 0x38000000u; /* exponent bias 127 -> 15 */
    a += 0x0fffu + ((a >> 13) & 1u);
    return (uint16_t)(((f >> 16) & 0x8000u) | (a >> 13));
}

/* Fills elements [begin, end) of spec s in the block, from its own generator. */
static void fill_chunk(const spec *s, size_t tensor_index, size_t chunk, ke_dtype storage,
                       unsigned char *block, uint64_t seed)
{
    size_t begin = chunk * KE_RANDOM_CHUNK;
    size_t end = begin + KE_RANDOM_CHUNK < s->numel ? begin + KE_RANDOM_CHUNK : s->numel;
    /* A counter-based stream (splitmix64 of a counter): unlike xorshift's state chain, every
     * draw is independent work, so the loop is not bound by one long dependency chain. */
    uint64_t counter = splitmix64(seed ^ splitmix64(((uint64_t)tensor_index << 32) ^ chunk));
    float mean = 0.0f, std = 1.0f;
    switch (s->kind) {
    case INIT_EMBEDDING: break;
    case INIT_MATRIX: {
        size_t fan_in = s->numel / (size_t)s->shape[0];
        std = (float)(1.0 / sqrt((double)fan_in));
        break;
    }
    case INIT_NORM:
        mean = 1.0f;
        std = 0.1f;
        break;
    case INIT_BIAS: std = 0.1f; break;
    }
    float *f32 = (float *)(block + s->offset);
    uint16_t *f16 = (uint16_t *)(block + s->offset);
    for (size_t i = begin; i < end; i += 2) {
        /* Box-Muller in Marsaglia's polar form: no trigonometry, one log and one square root
         * per pair of normals (a quarter of the candidate pairs are rejected). */
        float x, y, r2;
        do {
            uint64_t bits = splitmix64(counter += 0x9E3779B97F4A7C15ull);
            x = (float)(int32_t)(uint32_t)(bits >> 32) * 0x1p-31f; /* [-1, 1) */
            y = (float)(int32_t)(uint32_t)bits * 0x1p-31f;
            r2 = x * x + y * y;
        } while (r2 >= 1.0f || r2 == 0.0f);
        float scale = std * sqrtf(-2.0f * logf(r2) / r2);
        float z[2] = {mean + x * scale, mean + y * scale};
        size_t n = end - i < 2 ? end - i : 2;
        if (storage == KE_DTYPE_F32)
            memcpy(f32 + i, z, n * sizeof(float));
        else
            for (size_t k = 0; k < n; k++)
                f16[i + k] = to_f16(z[k]);
    }
}

typedef struct filler {
    const plan *p;
    const size_t *first_unit; /* [p->n + 1]: unit index where each tensor's chunks start */
    size_t units;
    atomic_size_t next;
    ke_dtype storage;
    unsigned char *block;
    uint64_t seed;
} filler;

static void *fill_worker(void *arg)
{
    filler *w = arg;
    size_t tensor = 0;
    for (;;) {
        size_t unit = atomic_fetch_add(&w->next, 1);
        if (unit >= w->units)
            break;
        /* Units are handed out in increasing order, so the tensor index only moves forward. */
        while (w->first_unit[tensor + 1] <= unit)
            tensor++;
        fill_chunk(&w->p->v[tensor], tensor, unit - w->first_unit[tensor], w->storage, w->block,
                   w->seed);
    }
    return NULL;
}

static int thread_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > KE_RANDOM_MAX_THREADS ? KE_RANDOM_MAX_THREADS : (int)n;
}

/* Fills every tensor of the plan, on all cores (falls back to this thread if none start). */
static ks_status fill_all(const plan *p, ke_dtype storage, unsigned char *block, uint64_t seed)
{
    size_t *first = malloc((p->n + 1) * sizeof *first);
    if (!first)
        return ks_fail(KS_ERR_NOMEM, "random model: out of memory");
    first[0] = 0;
    for (size_t i = 0; i < p->n; i++)
        first[i + 1] = first[i] + (p->v[i].numel + KE_RANDOM_CHUNK - 1) / KE_RANDOM_CHUNK;
    filler w = {.p = p,
                .first_unit = first,
                .units = first[p->n],
                .storage = storage,
                .block = block,
                .seed = seed};
    atomic_init(&w.next, 0);
    pthread_t threads[KE_RANDOM_MAX_THREADS];
    int n_threads = thread_count(), started = 0;
    for (; started < n_threads - 1; started++)
        if (pthread_create(&threads[started], NULL, fill_worker, &w) != 0)
            break;
    fill_worker(&w);
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    free(first);
    return KS_OK;
}

/* ---- the model ---- */

ks_status ke_model_new_random(const ke_config *config, uint64_t seed,
                              const ke_model_options *options, ke_model **out)
{
    ks_status status = KS_OK;
    plan p = {0};
    ke_model *m = NULL;
    void *block = NULL;
    *out = NULL;
    const ke_vision_config *v = &config->vision;
    const ke_text_config *tc = &config->text;
    if (v->layers < 0 || tc->layers < 0 || v->patch_size <= 0 || v->hidden_size <= 0 ||
        tc->embed_dim <= 0 || tc->vocab_size <= 0 || config->latent_query_num <= 0)
        return ks_fail(KS_ERR_INVALID, "random model: invalid configuration");
    if ((status = ke_model_new_empty(config, options ? options->storage : KE_DTYPE_F16, &m)) !=
        KS_OK) {
        ks_error_prefix("random model");
        return status;
    }
    make_plan(config, m, &p);
    if (p.failed) {
        status = ks_fail(KS_ERR_NOMEM, "random model: out of memory");
        goto cleanup;
    }
    size_t esize = m->storage == KE_DTYPE_F32 ? 4 : 2, bytes = 0;
    for (size_t i = 0; i < p.n; i++) {
        p.v[i].offset = bytes;
        bytes += (p.v[i].numel * esize + 63) / 64 * 64;
    }
    block = aligned_alloc(64, bytes ? bytes : 64);
    if (!block) {
        status = ks_fail(KS_ERR_NOMEM, "random model: out of memory for %zu bytes of weights",
                         bytes);
        goto cleanup;
    }
    unsigned char *base = block;
    /* The model owns the block from here on, and ke_model_destroy frees it with the model. */
    if ((status = ke_model_adopt(m, &block)) != KS_OK)
        goto cleanup;
    for (size_t i = 0; i < p.n; i++) {
        ke_tensor *t = p.v[i].t;
        t->dtype = m->storage;
        t->ndim = p.v[i].ndim;
        memcpy(t->shape, p.v[i].shape, sizeof t->shape);
        t->data = base + p.v[i].offset;
    }
    if ((status = fill_all(&p, m->storage, base, seed)) != KS_OK)
        goto cleanup;
    /* nn.Embedding(padding_idx=pad) starts that row at zero (and HF keeps it zero). */
    int pad = tc->pad_id;
    if (pad >= 0 && pad < tc->vocab_size) {
        size_t row = (size_t)tc->embed_dim * esize;
        memset(base + (size_t)((const unsigned char *)m->embed_tokens.data - base) +
                   (size_t)pad * row,
               0, row);
    }
    if (tc->tie_word_embeddings)
        m->lm_head = m->embed_tokens;
    *out = m;
    m = NULL;
cleanup:
    free(p.v);
    ke_model_destroy(&m);
    return status;
}
