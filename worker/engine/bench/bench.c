/* ke_bench: timing the engine's phases on one backend; see bench.h.
 *
 * One run of a batch does, in this order and each phase only when asked for: vision (encode B
 * images), prefill (one forward of B prompts) followed by decode (new_tokens single-token
 * steps of the same B sequences), then end to end (encode + ke_generate of B jobs). The first
 * `warmup` runs are not timed. Not here: option parsing and the model (cmd_bench.c). */
#include "bench.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "backend.h"
#include "backend_open.h"
#include "generate.h"
#ifdef KOSMOS_HAVE_OPENCL
#include "backend_cl.h"
#include "kc_probe.h"
#endif

/* The processor's ids around the image rows (microsoft/kosmos-2-patch14-224's tokenizer). */
enum {
    PROMPT_IMAGE = 64003,     /* <image> */
    PROMPT_IMAGE_END = 64004, /* </image> */
    PROMPT_GROUNDING = 64012, /* <grounding> */
    PROMPT_FIRST_ROW = 4      /* the image rows hold ids 4, 5, ... (masked, replaced) */
};
static const int32_t prompt_text[] = {712, 1648, 9}; /* "An image of" */

void ke_bench_params_default(ke_bench_params *p)
{
    *p = (ke_bench_params){.repeats = 3,
                           .warmup = 1,
                           .new_tokens = 64,
                           .no_repeat_ngram_size = 3,
                           .phases = KE_BENCH_ALL};
}

size_t ke_bench_prompt(const ke_config *config, int32_t *ids, uint8_t *mask, size_t cap)
{
    size_t lq = (size_t)config->latent_query_num, len = lq + 7, at = 0;
    if (cap < len)
        return len;
    int32_t vocab = config->text.vocab_size;
    ids[at++] = config->text.bos_id;
    ids[at++] = PROMPT_IMAGE;
    for (size_t i = 0; i < lq; i++)
        ids[at++] = PROMPT_FIRST_ROW + (int32_t)i;
    ids[at++] = PROMPT_IMAGE_END;
    ids[at++] = PROMPT_GROUNDING;
    for (size_t i = 0; i < 3; i++)
        ids[at++] = prompt_text[i];
    for (size_t i = 0; i < len; i++) {
        ids[i] %= vocab; /* a configuration with a smaller vocabulary still runs */
        mask[i] = i >= 2 && i < 2 + lq;
    }
    return len;
}

/* ---- clocks and memory ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Resets the kernel's peak-RSS mark (VmHWM) to the current RSS. false if not possible. */
static bool reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f)
        return false;
    bool ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}

/* Peak RSS in bytes: VmHWM, else getrusage's ru_maxrss (the process's whole life). */
static size_t peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        unsigned long long kb = 0;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmHWM: %llu kB", &kb) == 1)
                break;
        fclose(f);
        if (kb)
            return (size_t)kb * 1024;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        return (size_t)ru.ru_maxrss * 1024; /* KiB on Linux */
    return 0;
}

/* Device memory the backend holds (weights, KV cache, scratch grown to this batch's needs),
 * read at the end of the batch: for a backend that allocates up front and keeps what it grows,
 * that is its peak. 0 for the host-only reference backend. */
static size_t device_bytes(const ke_backend *b)
{
    ke_backend_stats st;
    ke_backend_stats_get(b, &st);
    return st.device_bytes;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- the phases ---- */

typedef struct bench_state {
    const ke_model *model;
    const ke_bench_params *p;
    ke_backend *backend;
    int batch;
    size_t prompt_len;
    int32_t *prompt_ids; /* (prompt_len) */
    uint8_t *prompt_mask;
    float *pixels;      /* (batch, channels, image, image) */
    float *embeds;      /* (batch, latent, embed) */
    float *logits;      /* (batch, vocab) */
    int32_t *step_ids;  /* (batch * prompt_len) */
    int32_t *step_pos;  /* (batch * prompt_len) */
    uint8_t *step_mask; /* (batch * prompt_len) */
    int *slots, *n_tokens;
    int32_t *next;         /* (batch) the greedy ids of the last step */
    int32_t *next_ring[2]; /* (batch) each: the ids of the selections in flight */
    uint8_t *step_dev;     /* (batch) 1: the token is the device's */
    ke_select_row *rows;   /* (batch) */
    ke_gen_request *requests;
    ke_gen_result *results;
} bench_state;

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Pixels roughly as CLIP normalisation leaves them (about [-1.8, 2.1]); values do not matter
 * for the timing, only that they are finite and not all equal. */
static void fill_pixels(float *v, size_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < n; i++)
        v[i] = (float)(xorshift(&s) >> 40) * 0x1p-24f * 3.9f - 1.8f;
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* The greedy selection rows of the batch after a forward: sequence q in slot q, holding `len`
 * ids. No n-gram ban: the figure is the step's cost. */
static void select_rows(bench_state *s, int n, size_t len)
{
    for (int q = 0; q < n; q++)
        s->rows[q] = (ke_select_row){.row = q, .slot = q, .ids = NULL, .len = len};
}

/* One forward of `step`, then the greedy next id of every sequence into s->next: on the
 * device where the backend selects there (only the ids come back), else from the host logits.
 * len: ids each sequence holds after the step. */
static ks_status forward_pick(bench_state *s, const ke_step *step, size_t len)
{
    ke_backend *b = s->backend;
    if (b->ops->select_greedy) {
        ks_status st = b->ops->forward(b, step, NULL);
        if (st != KS_OK)
            return st;
        select_rows(s, step->n_seqs, len);
        return b->ops->select_greedy(b, s->rows, step->n_seqs, s->next);
    }
    ks_status st = b->ops->forward(b, step, s->logits);
    int vocab = s->model->config.text.vocab_size;
    for (int q = 0; q < step->n_seqs && st == KS_OK; q++)
        s->next[q] = argmax(s->logits + (size_t)q * (size_t)vocab, vocab);
    return st;
}

#ifdef KOSMOS_HAVE_OPENCL
static void reset_profile(bench_state *s)
{
    kc_context *ctx = ke_backend_cl_context(s->backend);
    if (ctx)
        kc_profile_reset(kc_context_profile(ctx));
}

/* The profile of what ran since reset_profile, as `phase` did it in `units` (decode steps, or
 * one pass). */
static void capture_profile(bench_state *s, ke_bench_profiled phase, int units,
                            ke_bench_profile *out)
{
    kc_context *ctx = ke_backend_cl_context(s->backend);
    kc_profile *prof = ctx ? kc_context_profile(ctx) : NULL;
    kc_profile_summary sum;
    memset(out, 0, sizeof *out);
    if (!prof || kc_context_finish(ctx) != KS_OK || kc_profile_summarize(prof, &sum) != KS_OK)
        return;
    kc_peaks peaks = {0};
    if (kc_probe_peaks(ctx, &peaks) != KS_OK)
        ks_error_clear(); /* no shares, the rest stands */
    double steps = (double)units;
    out->valid = true;
    out->phase = phase;
    out->steps = units;
    out->layers = s->model->config.text.layers;
    out->peak_gbytes_per_s = peaks.bytes_per_s * 1e-9;
    out->peak_tflops = peaks.flops_per_s * 1e-12;
    double launches = 0, layer_launches = 0, waits_in = 0, waits_between = 0, busy = 0;
    for (size_t i = 0; i < sum.n_rows; i++) {
        const kc_profile_row *r = &sum.rows[i];
        bool in_step = !strcmp(r->scope, "text step") || !strcmp(r->scope, "text layer");
        if (r->is_wait) {
            if (in_step && strcmp(r->name, "ids of a selection") != 0) {
                waits_in += (double)r->calls;
            } else {
                waits_between += (double)r->calls;
                busy += (double)r->busy_waits;
            }
        } else {
            launches += (double)r->calls;
            out->device_ms += r->device_ms / steps;
            if (!strcmp(r->scope, "text layer"))
                layer_launches += (double)r->calls;
        }
        if (out->n_rows == KE_BENCH_PROFILE_ROWS)
            continue;
        ke_bench_profile_row *o = &out->rows[out->n_rows++];
        snprintf(o->scope, sizeof o->scope, "%s", r->scope);
        snprintf(o->name, sizeof o->name, "%s", r->name);
        o->is_wait = r->is_wait;
        o->calls_per_step = (double)r->calls / steps;
        o->busy_share = r->calls ? (double)r->busy_waits / (double)r->calls : 0;
        o->ms_per_step = r->device_ms / steps;
        double sec = r->device_ms * 1e-3;
        o->gbytes_per_s = sec > 0 ? r->bytes / sec * 1e-9 : 0;
        o->tflops_per_s = sec > 0 ? r->flops / sec * 1e-12 : 0;
        double bw = peaks.bytes_per_s > 0 ? o->gbytes_per_s * 1e9 / peaks.bytes_per_s : 0;
        double fl = peaks.flops_per_s > 0 ? o->tflops_per_s * 1e12 / peaks.flops_per_s : 0;
        o->roofline = bw > fl ? bw : fl;
    }
    out->launches_per_step = launches / steps;
    out->launches_per_layer = layer_launches / steps / out->layers;
    out->args_set_per_step = (double)kc_profile_counter_value(prof, "kernel arguments set") / steps;
    out->waits_in_steps = waits_in / steps;
    out->waits_between = waits_between / steps;
    out->waits_busy_share = waits_between > 0 ? busy / waits_between : 0;
}
#endif

/* reset_profile before a phase's run and capture_profile after it, where there is a profile to
 * take (`out` not NULL: the last timed run, with --profile) and a device that keeps one. */
static void profile_begin(bench_state *s, const ke_bench_profile *out)
{
#ifdef KOSMOS_HAVE_OPENCL
    if (out)
        reset_profile(s);
#else
    (void)s, (void)out;
#endif
}

static void profile_end(bench_state *s, ks_status st, ke_bench_profiled phase, int units,
                        ke_bench_profile *out)
{
#ifdef KOSMOS_HAVE_OPENCL
    if (out && st == KS_OK)
        capture_profile(s, phase, units, out);
#else
    (void)s, (void)st, (void)phase, (void)units, (void)out;
#endif
}

static ks_status run_vision(bench_state *s, double *seconds, ke_bench_profile *profile)
{
    profile_begin(s, profile);
    double t0 = now_s();
    ks_status st = s->backend->ops->encode_images(s->backend, s->pixels, s->batch, s->embeds, NULL);
    *seconds = now_s() - t0;
    profile_end(s, st, KE_BENCH_PROFILE_VISION, 1, profile);
    return st;
}

/* Prefill of batch prompts, then new_tokens decode steps as ke_generate runs them (each
 * step's token fed from the device, its ids read while the next step runs, where the backend
 * can); releases the slots. `profiles` (NULL: none): the prefill's and the decode steps'
 * profiles go there. */
static ks_status run_prefill_decode(bench_state *s, bool decode, double *prefill_s,
                                    double *decode_s, ke_bench_profile *profiles)
{
    ke_backend *b = s->backend;
    const ke_backend_ops *ops = b->ops;
    size_t len = s->prompt_len;
    for (int q = 0; q < s->batch; q++) {
        s->slots[q] = q;
        s->n_tokens[q] = (int)len;
        for (size_t i = 0; i < len; i++) {
            s->step_ids[(size_t)q * len + i] = s->prompt_ids[i];
            s->step_pos[(size_t)q * len + i] = 2 + (int32_t)i; /* HF: padding_idx + 1 onwards */
            s->step_mask[(size_t)q * len + i] = s->prompt_mask[i];
        }
    }
    ke_step step = {.n_seqs = s->batch,
                    .slots = s->slots,
                    .n_tokens = s->n_tokens,
                    .ids = s->step_ids,
                    .positions = s->step_pos,
                    .image_mask = s->step_mask,
                    .image_embeds = s->embeds};
    ke_bench_profile *prefill_profile = profiles && (s->p->phases & KE_BENCH_PREFILL)
                                            ? &profiles[KE_BENCH_PROFILE_PREFILL]
                                            : NULL;
    ke_bench_profile *decode_profile = profiles ? &profiles[KE_BENCH_PROFILE_DECODE] : NULL;
    profile_begin(s, prefill_profile);
    double t0 = now_s();
    ks_status st = forward_pick(s, &step, len);
    *prefill_s = now_s() - t0;
    profile_end(s, st, KE_BENCH_PROFILE_PREFILL, 1, prefill_profile);
    if (st == KS_OK && decode) {
        bool async = ops->select_greedy_enqueue && ops->wait_selected;
        for (int q = 0; q < s->batch; q++) {
            s->n_tokens[q] = 1;
            s->step_dev[q] = async;
        }
        step.ids = s->next;
        step.image_mask = NULL;
        step.image_embeds = NULL;
        step.from_device = s->step_dev;
        profile_begin(s, decode_profile);
        t0 = now_s();
        int outstanding = 0;
        for (int k = 0; k < s->p->new_tokens && st == KS_OK; k++) {
            for (int q = 0; q < s->batch; q++)
                s->step_pos[q] = 2 + (int32_t)len + k;
            if (!async) {
                st = forward_pick(s, &step, len + (size_t)k + 1);
                continue;
            }
            if ((st = ops->forward(b, &step, NULL)) != KS_OK)
                break;
            select_rows(s, s->batch, len + (size_t)k + 1);
            if ((st = ops->select_greedy_enqueue(b, s->rows, s->batch, s->next_ring[k % 2])) !=
                KS_OK)
                break;
            if (outstanding && (st = ops->wait_selected(b)) != KS_OK)
                break;
            outstanding = 1;
        }
        if (st == KS_OK && outstanding)
            st = ops->wait_selected(b);
        *decode_s = now_s() - t0;
        profile_end(s, st, KE_BENCH_PROFILE_DECODE, s->p->new_tokens, decode_profile);
    }
    for (int q = 0; q < s->batch; q++)
        b->ops->release_slot(b, q);
    return st;
}

static ks_status run_e2e(bench_state *s, double *seconds)
{
    ke_backend *b = s->backend;
    ke_gen_params params;
    ke_gen_params_default(&params, &s->model->config);
    params.max_new_tokens = s->p->new_tokens;
    params.min_new_tokens = s->p->new_tokens;
    params.num_beams = 1;
    params.no_repeat_ngram_size = s->p->no_repeat_ngram_size;
    for (int q = 0; q < s->batch; q++)
        s->requests[q] = (ke_gen_request){.input_ids = s->prompt_ids,
                                          .image_embeds_position_mask = s->prompt_mask,
                                          .len = s->prompt_len,
                                          .image = q,
                                          .params = params};
    double t0 = now_s();
    ks_status st = b->ops->encode_images(b, s->pixels, s->batch, s->embeds, NULL);
    if (st == KS_OK)
        st = ke_generate(b, s->embeds, s->batch, s->requests, s->batch, s->results, NULL);
    *seconds = now_s() - t0;
    for (int q = 0; q < s->batch && st == KS_OK; q++)
        if (s->results[q].new_tokens != (size_t)s->p->new_tokens)
            st = ks_fail(KS_ERR_DEVICE, "bench: job %d made %zu new tokens, %d were forced", q,
                         s->results[q].new_tokens, s->p->new_tokens);
    for (int q = 0; q < s->batch; q++)
        ke_gen_result_fini(&s->results[q]);
    return st;
}

static void free_state(bench_state *s)
{
    ke_backend_destroy(&s->backend);
    free(s->prompt_ids);
    free(s->prompt_mask);
    free(s->pixels);
    free(s->embeds);
    free(s->logits);
    free(s->step_ids);
    free(s->step_pos);
    free(s->step_mask);
    free(s->slots);
    free(s->n_tokens);
    free(s->next);
    free(s->next_ring[0]);
    free(s->next_ring[1]);
    free(s->step_dev);
    free(s->rows);
    free(s->requests);
    free(s->results);
}

static void log_run(const ke_bench_params *p, int batch, int run, const double *t)
{
    if (!p->log)
        return;
    fprintf(p->log, "bench: batch %d %s %d/%d:", batch, run < p->warmup ? "warm-up" : "run",
            run < p->warmup ? run + 1 : run - p->warmup + 1,
            run < p->warmup ? p->warmup : p->repeats);
    static const char *names[] = {"vision", "prefill", "decode", "e2e"};
    for (int i = 0; i < 4; i++)
        if (t[i] >= 0)
            fprintf(p->log, " %s %.3f s", names[i], t[i]);
    fputc('\n', p->log);
    fflush(p->log);
}

ks_status ke_bench_run(const ke_model *model, const ke_bench_params *p, int batch,
                       ke_bench_result *out)
{
    const ke_config *c = &model->config;
    bench_state s = {.model = model, .p = p, .batch = batch};
    double *times[4] = {NULL, NULL, NULL, NULL};
    ks_status st = KS_OK;
    *out = (ke_bench_result){.batch = batch,
                             .new_tokens = p->new_tokens,
                             .vision_s = -1,
                             .prefill_s = -1,
                             .decode_s = -1,
                             .e2e_s = -1,
                             .vision_images_per_s = -1,
                             .prefill_tokens_per_s = -1,
                             .decode_tokens_per_s = -1,
                             .e2e_jobs_per_s = -1};
    if (batch < 1 || p->repeats < 1 || p->warmup < 0 || p->new_tokens < 1)
        return ks_fail(KS_ERR_INVALID, "bench: batch, repeats and new tokens must be >= 1");

    size_t lq = (size_t)c->latent_query_num, emb = (size_t)c->text.embed_dim;
    size_t side = (size_t)c->vision.image_size, vocab = (size_t)c->text.vocab_size;
    size_t nb = (size_t)batch;
    s.prompt_len = lq + 7;
    out->prompt_tokens = (int)s.prompt_len;
    s.prompt_ids = malloc(s.prompt_len * sizeof *s.prompt_ids);
    s.prompt_mask = malloc(s.prompt_len);
    s.pixels = malloc(nb * (size_t)c->vision.channels * side * side * sizeof(float));
    s.embeds = malloc(nb * lq * emb * sizeof(float));
    s.logits = malloc(nb * vocab * sizeof(float));
    s.step_ids = malloc(nb * s.prompt_len * sizeof *s.step_ids);
    s.step_pos = malloc(nb * s.prompt_len * sizeof *s.step_pos);
    s.step_mask = malloc(nb * s.prompt_len);
    s.slots = malloc(nb * sizeof *s.slots);
    s.n_tokens = malloc(nb * sizeof *s.n_tokens);
    s.next = malloc(nb * sizeof *s.next);
    s.next_ring[0] = malloc(nb * sizeof *s.next);
    s.next_ring[1] = malloc(nb * sizeof *s.next);
    s.step_dev = malloc(nb);
    s.rows = malloc(nb * sizeof *s.rows);
    s.requests = calloc(nb, sizeof *s.requests);
    s.results = calloc(nb, sizeof *s.results);
    for (int i = 0; i < 4; i++)
        times[i] = malloc((size_t)p->repeats * sizeof(double));
    if (!s.prompt_ids || !s.prompt_mask || !s.pixels || !s.embeds || !s.logits || !s.step_ids ||
        !s.step_pos || !s.step_mask || !s.slots || !s.n_tokens || !s.next || !s.next_ring[0] ||
        !s.next_ring[1] || !s.step_dev || !s.rows || !s.requests || !s.results || !times[0] ||
        !times[1] || !times[2] || !times[3]) {
        st = ks_fail(KS_ERR_NOMEM, "bench: out of memory at batch %d", batch);
        goto cleanup;
    }
    ke_bench_prompt(c, s.prompt_ids, s.prompt_mask, s.prompt_len);
    fill_pixels(s.pixels, nb * (size_t)c->vision.channels * side * side, p->seed);
    /* Image rows for a prefill without the vision phase: small values, as the resampler's. */
    uint64_t rs = p->seed ^ 0x5851F42D4C957F2Dull;
    for (size_t i = 0; i < nb * lq * emb; i++)
        s.embeds[i] = ((float)(xorshift(&rs) >> 40) * 0x1p-24f - 0.5f) * 0.2f;

    out->peak_host_per_batch = reset_peak_rss();
    ke_backend_options bo = {.slots = batch,
                             .slot_capacity = (int)s.prompt_len + p->new_tokens + 1,
                             .profiling = p->profile,
                             .kv_half = p->kv_half,
                             .gemm_tune = p->gemm_tune,
                             .tune_db = p->tune_db,
                             .gemm = p->gemm,
                             .no_flash_attention = p->no_flash_attention,
                             .weights_int8 = p->weights_int8,
                             .vision_chunk = p->vision_chunk};
    if ((st = ke_backend_open(model, p->device, &bo, &s.backend)) != KS_OK)
        goto cleanup;
    snprintf(out->device_name, sizeof out->device_name, "%s", ke_backend_device_name(s.backend));
    ke_backend_stats bst;
    ke_backend_stats_get(s.backend, &bst);
    snprintf(out->gemm, sizeof out->gemm, "%s", bst.gemm ? bst.gemm : "");
    out->vision_chunk = s.backend->vision_chunk;
    snprintf(out->tunables, sizeof out->tunables, "%s", bst.tunables ? bst.tunables : "");

    bool want_prefill = p->phases & (KE_BENCH_PREFILL | KE_BENCH_DECODE);
    for (int run = 0; run < p->warmup + p->repeats; run++) {
        double t[4] = {-1, -1, -1, -1};
        bool last = run == p->warmup + p->repeats - 1;
        ke_bench_profile *profiles = p->profile && last ? out->profiles : NULL;
        if ((p->phases & KE_BENCH_VISION) &&
            (st = run_vision(&s, &t[0], profiles ? &profiles[KE_BENCH_PROFILE_VISION] : NULL)) !=
                KS_OK)
            break;
        if (want_prefill && (st = run_prefill_decode(&s, p->phases & KE_BENCH_DECODE, &t[1], &t[2],
                                                     profiles)) != KS_OK)
            break;
        if ((p->phases & KE_BENCH_E2E) && (st = run_e2e(&s, &t[3])) != KS_OK)
            break;
        log_run(p, batch, run, t);
        if (run >= p->warmup)
            for (int i = 0; i < 4; i++)
                times[i][run - p->warmup] = t[i];
    }
    if (st != KS_OK) {
        ks_error_prefix("bench at batch %d", batch);
        goto cleanup;
    }
    out->peak_host_bytes = peak_rss();
    out->peak_device_bytes = device_bytes(s.backend);
    if (p->phases & KE_BENCH_VISION) {
        out->vision_s = median(times[0], p->repeats);
        out->vision_images_per_s = batch / out->vision_s;
    }
    if (p->phases & KE_BENCH_PREFILL) {
        out->prefill_s = median(times[1], p->repeats);
        out->prefill_tokens_per_s = (double)batch * (double)s.prompt_len / out->prefill_s;
    }
    if (p->phases & KE_BENCH_DECODE) {
        out->decode_s = median(times[2], p->repeats);
        out->decode_tokens_per_s = (double)batch * p->new_tokens / out->decode_s;
    }
    if (p->phases & KE_BENCH_E2E) {
        out->e2e_s = median(times[3], p->repeats);
        out->e2e_jobs_per_s = batch / out->e2e_s;
    }
cleanup:
    for (int i = 0; i < 4; i++)
        free(times[i]);
    free_state(&s);
    return st;
}

/* ---- output ---- */

static json_t *number_or_null(double v)
{
    return v >= 0 && isfinite(v) ? json_real(v) : json_null();
}

void ke_bench_print_json(FILE *out, const ke_bench_labels *labels, const ke_bench_params *p,
                         const ke_bench_result *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "impl", json_string(labels->impl ? labels->impl : "kosmos"));
    json_object_set_new(o, "config", json_string(labels->config ? labels->config : ""));
    json_object_set_new(o, "params", json_integer((json_int_t)labels->params));
    json_object_set_new(o, "precision", json_string(labels->precision ? labels->precision : ""));
    json_object_set_new(o, "device", json_string(labels->device ? labels->device : ""));
    json_object_set_new(o, "device_name", json_string(r->device_name));
    json_object_set_new(o, "batch", json_integer(r->batch));
    json_object_set_new(o, "prompt_tokens", json_integer(r->prompt_tokens));
    json_object_set_new(o, "new_tokens", json_integer(r->new_tokens));
    json_object_set_new(o, "repeats", json_integer(p->repeats));
    json_object_set_new(o, "warmup", json_integer(p->warmup));
    json_object_set_new(o, "vision_images_per_s", number_or_null(r->vision_images_per_s));
    json_object_set_new(o, "prefill_tokens_per_s", number_or_null(r->prefill_tokens_per_s));
    json_object_set_new(o, "decode_tokens_per_s", number_or_null(r->decode_tokens_per_s));
    json_object_set_new(o, "e2e_jobs_per_s", number_or_null(r->e2e_jobs_per_s));
    json_object_set_new(o, "vision_s", number_or_null(r->vision_s));
    json_object_set_new(o, "prefill_s", number_or_null(r->prefill_s));
    json_object_set_new(o, "decode_s", number_or_null(r->decode_s));
    json_object_set_new(o, "e2e_s", number_or_null(r->e2e_s));
    json_object_set_new(o, "peak_host_bytes", json_integer((json_int_t)r->peak_host_bytes));
    json_object_set_new(o, "peak_host_per_batch", json_boolean(r->peak_host_per_batch));
    json_object_set_new(o, "peak_device_bytes",
                        r->peak_device_bytes ? json_integer((json_int_t)r->peak_device_bytes)
                                             : json_null());
    json_object_set_new(o, "gemm", *r->gemm ? json_string(r->gemm) : json_null());
    json_object_set_new(o, "vision_chunk", json_integer(r->vision_chunk));
    json_object_set_new(o, "tunables", *r->tunables ? json_string(r->tunables) : json_null());
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    if (text) {
        fprintf(out, "%s\n", text);
        free(text);
    }
    fflush(out);
    json_decref(o);
}

static void cell(FILE *out, double v)
{
    if (v >= 0)
        fprintf(out, " %12.3f", v);
    else
        fprintf(out, " %12s", "-");
}

void ke_bench_print_table(FILE *out, const ke_bench_labels *labels, const ke_bench_result *r, int n)
{
    fprintf(out, "%s, config %s (%llu params), %s, device %s\n", labels->impl, labels->config,
            (unsigned long long)labels->params, labels->precision,
            n > 0 ? r[0].device_name : (labels->device ? labels->device : ""));
    if (n > 0 && *r[0].gemm)
        fprintf(out, "gemm: %s\n", r[0].gemm);
    if (n > 0 && *r[0].tunables)
        fprintf(out, "tunables: %s\n", r[0].tunables);
    fprintf(out, "%6s %12s %12s %12s %12s %12s\n", "batch", "vision im/s", "prefill t/s",
            "decode t/s", "e2e jobs/s", "peak MiB");
    for (int i = 0; i < n; i++) {
        fprintf(out, "%6d", r[i].batch);
        cell(out, r[i].vision_images_per_s);
        cell(out, r[i].prefill_tokens_per_s);
        cell(out, r[i].decode_tokens_per_s);
        cell(out, r[i].e2e_jobs_per_s);
        size_t peak = r[i].peak_device_bytes ? r[i].peak_device_bytes : r[i].peak_host_bytes;
        fprintf(out, " %12.0f%s\n", (double)peak / (1024.0 * 1024.0),
                r[i].peak_device_bytes ? " (device)" : "");
    }
    fflush(out);
}

/* One phase's table. */
static void print_phase_profile(FILE *out, const ke_bench_result *r, const ke_bench_profile *p)
{
    static const char *const what[KE_BENCH_PROFILED] = {"vision", "prefill", "decode"};
    const char *unit = p->phase == KE_BENCH_PROFILE_DECODE ? "step" : "pass";
    if (p->phase == KE_BENCH_PROFILE_DECODE)
        fprintf(out, "\nprofile: batch %d, decode, %d steps, %d text layers, on %s\n", r->batch,
                p->steps, p->layers, r->device_name);
    else
        fprintf(out, "\nprofile: batch %d, %s, one pass over the batch (%s), on %s\n", r->batch,
                what[p->phase],
                p->phase == KE_BENCH_PROFILE_VISION ? "images" : "prompts of the prompt length",
                r->device_name);
    if (p->peak_gbytes_per_s > 0)
        fprintf(out, "probed peaks: %.1f GB/s memory, %.2f TFLOP/s f32\n", p->peak_gbytes_per_s,
                p->peak_tflops);
    fprintf(out, "%-11s %-26s %9s %10s %6s %9s %9s %8s\n", "scope", "kernel / wait",
            p->phase == KE_BENCH_PROFILE_DECODE ? "per step" : "per pass",
            p->phase == KE_BENCH_PROFILE_DECODE ? "ms / step" : "ms / pass", "share", "GB/s",
            "TFLOP/s", "roofline");
    for (int i = 0; i < p->n_rows; i++) {
        const ke_bench_profile_row *w = &p->rows[i];
        if (w->is_wait) {
            fprintf(out, "%-11s %-26s %9.2f %10s %6s %9s %9s %7.0f%% of them with work queued\n",
                    w->scope, w->name, w->calls_per_step, "wait", "", "", "",
                    w->busy_share * 100.0);
            continue;
        }
        double share = p->device_ms > 0 ? w->ms_per_step / p->device_ms * 100.0 : 0;
        fprintf(out, "%-11s %-26s %9.2f %10.3f %5.1f%% %9.1f %9.3f %7.1f%%\n", w->scope, w->name,
                w->calls_per_step, w->ms_per_step, share, w->gbytes_per_s, w->tflops_per_s,
                w->roofline * 100.0);
    }
    fprintf(out, "device time per %s: %.3f ms in %.1f launches\n", unit, p->device_ms,
            p->launches_per_step);
    if (p->phase != KE_BENCH_PROFILE_DECODE) {
        fflush(out);
        return;
    }
    fprintf(out, "launches per decode step: %.1f; per text layer and step: %.2f\n",
            p->launches_per_step, p->launches_per_layer);
    fprintf(out, "kernel arguments set per step: %.1f\n", p->args_set_per_step);
    fprintf(out,
            "blocking calls inside a step: %.2f per step; waits for ids between steps: "
            "%.2f per step, %.0f%% with the next step already queued\n",
            p->waits_in_steps, p->waits_between, p->waits_busy_share * 100.0);
    fflush(out);
}

void ke_bench_print_profile(FILE *out, const ke_bench_result *r)
{
    for (int i = 0; i < KE_BENCH_PROFILED; i++)
        if (r->profiles[i].valid)
            print_phase_profile(out, r, &r->profiles[i]);
}
