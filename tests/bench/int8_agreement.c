/* kosmos-int8-agreement: how closely --precision int8 follows fp16, over the demo images and
 * prompts, on one checkpoint and device. A program, not a test (tests/bench/int8_agreement.sh
 * runs it; docs/benchmarks.md has its numbers).
 *
 *   kosmos-int8-agreement --model DIR [--device SPEC] [--new-tokens N] [--images DIR]
 *                         [--prompt TEXT]...
 *
 * The weights are loaded once (f16 storage). For each precision, fp16 then int8, a backend is
 * opened, each image encoded once and every (image, prompt) pair decoded greedily in one batch
 * (ke_generate: a sequence's ids do not depend on its batch) with exactly N new tokens (min =
 * max; the checkpoint's no_repeat_ngram_size). Per pair, of the N new tokens: `prefix`, those
 * equal up to the first divergence, and `same`, those equal position by position; and the max
 * abs difference of the prefill logits (the last prompt position). One JSON object per pair on
 * stdout, then one with the totals; progress on stderr. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_open.h"
#include "generate.h"
#include "ks_file.h"
#include "ks_log.h"
#include "kw_pipeline.h"
#include "processor.h"

#define MAX_IMAGES 64
#define MAX_PROMPTS 8
#define MAX_IMAGE_BYTES ((size_t)64 << 20)

static const char usage[] =
    "usage: kosmos-int8-agreement --model DIR [--device SPEC] [--new-tokens N] [--images DIR]\n"
    "                             [--prompt TEXT]...\n"
    "  --images DIR   default " KOSMOS_TEST_DATA_DIR "/kosmos2/images (the 7 demo images)\n"
    "  --prompt TEXT  repeatable; default the demo's two: \"<grounding>An image of\" and\n"
    "                 \"<grounding>Describe this image in detail:\"\n"
    "  --new-tokens N default 64\n";

typedef struct args {
    const char *model, *device, *images;
    const char *prompts[MAX_PROMPTS];
    int n_prompts, new_tokens;
} args;

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The folder's regular entries, sorted; names are owned by *names. */
static ks_status list_images(const char *dir, char **names, int *n)
{
    DIR *d = opendir(dir);
    if (!d)
        return ks_fail(KS_ERR_IO, "%s: cannot open the folder", dir);
    struct dirent *e;
    *n = 0;
    while ((e = readdir(d)) != NULL && *n < MAX_IMAGES)
        if (e->d_name[0] != '.' && (names[*n] = strdup(e->d_name)) != NULL)
            (*n)++;
    closedir(d);
    qsort(names, (size_t)*n, sizeof *names, by_name);
    return *n ? KS_OK : ks_fail(KS_ERR_INVALID, "%s: no images", dir);
}

/* pixel_values of each image, (n, channels, size, size). */
static ks_status load_pixels(const args *a, char **names, int n, const ke_config *c, float *out)
{
    size_t per = (size_t)c->vision.channels * (size_t)c->vision.image_size *
                 (size_t)c->vision.image_size;
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", a->images, names[i]);
        char *bytes = NULL;
        size_t len = 0;
        kw_image img;
        kw_image_init(&img);
        ks_status st = ks_file_read(path, MAX_IMAGE_BYTES, &bytes, &len);
        if (st == KS_OK)
            st = kw_image_decode(&img, bytes, len, NULL, c);
        if (st == KS_OK)
            memcpy(out + (size_t)i * per, img.pixels, per * sizeof(float));
        free(bytes);
        kw_image_fini(&img);
        if (st != KS_OK) {
            ks_error_prefix("%s", path);
            return st;
        }
    }
    return KS_OK;
}

/* Every pair's result at one precision: encode the images, then one ke_generate batch. */
static ks_status run_precision(const kw_model *km, const args *a, bool int8, const float *pixels,
                               int n_images, const kt_encoding *enc, ke_gen_result *results)
{
    const ke_config *c = &km->model->config;
    const int n_pairs = n_images * a->n_prompts;
    size_t longest = 0;
    for (int p = 0; p < a->n_prompts; p++)
        longest = enc[p].len > longest ? enc[p].len : longest;
    ke_backend_options bo = {.slots = n_pairs,
                             .slot_capacity = (int)longest + a->new_tokens + 1,
                             .weights_int8 = int8};
    double t0 = kw_now_ms();
    ke_backend *b = NULL;
    ks_status st = ke_backend_open(km->model, a->device, &bo, &b);
    if (st != KS_OK)
        return st;
    const size_t per = (size_t)c->latent_query_num * (size_t)c->text.embed_dim;
    float *embeds = malloc((size_t)n_images * per * sizeof *embeds);
    ke_gen_request *req = calloc((size_t)n_pairs, sizeof *req);
    if (!embeds || !req) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    double t1 = kw_now_ms();
    if ((st = b->ops->encode_images(b, pixels, n_images, embeds, NULL)) != KS_OK)
        goto cleanup;
    double t2 = kw_now_ms();
    for (int i = 0; i < n_pairs; i++) {
        const kt_encoding *e = &enc[i % a->n_prompts];
        req[i] = (ke_gen_request){.input_ids = e->input_ids.v,
                                  .image_embeds_position_mask = e->image_embeds_position_mask,
                                  .len = e->len,
                                  .image = i / a->n_prompts,
                                  .want_prefill_logits = true};
        ke_gen_params_default(&req[i].params, c);
        req[i].params.max_new_tokens = req[i].params.min_new_tokens = a->new_tokens;
        req[i].params.num_beams = 1;
    }
    st = ke_generate(b, embeds, n_images, req, n_pairs, results, NULL);
    fprintf(stderr,
            "int8-agreement: %s: backend %.1f s, %d images %.1f s, %d sequences x %d "
            "tokens %.1f s\n",
            int8 ? "int8" : "fp16", (t1 - t0) / 1e3, n_images, (t2 - t1) / 1e3, n_pairs,
            a->new_tokens, (kw_now_ms() - t2) / 1e3);
cleanup:
    free(embeds);
    free(req);
    ke_backend_destroy(&b);
    return st;
}

static bool parse(int argc, char **argv, args *a)
{
    *a = (args){.images = KOSMOS_TEST_DATA_DIR "/kosmos2/images", .new_tokens = 64};
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return false;
        if (!strcmp(argv[i], "--model"))
            a->model = v;
        else if (!strcmp(argv[i], "--device"))
            a->device = v;
        else if (!strcmp(argv[i], "--images"))
            a->images = v;
        else if (!strcmp(argv[i], "--new-tokens") && (a->new_tokens = atoi(v)) > 0)
            ;
        else if (!strcmp(argv[i], "--prompt") && a->n_prompts < MAX_PROMPTS)
            a->prompts[a->n_prompts++] = v;
        else
            return false;
        i++;
    }
    if (a->n_prompts == 0) {
        a->prompts[a->n_prompts++] = "<grounding>An image of";
        a->prompts[a->n_prompts++] = "<grounding>Describe this image in detail:";
    }
    return a->model != NULL;
}

int main(int argc, char **argv)
{
    args a;
    if (!parse(argc, argv, &a)) {
        fputs(usage, stderr);
        return 2;
    }
    char *names[MAX_IMAGES] = {0};
    int n_images = 0, rc = 1;
    kw_model km = {0};
    kt_encoding enc[MAX_PROMPTS];
    for (int p = 0; p < MAX_PROMPTS; p++)
        kt_encoding_init(&enc[p]);
    float *pixels = NULL;
    ke_gen_result *res[2] = {NULL, NULL}; /* fp16, int8 */
    int n_pairs = 0;
    ks_status st = list_images(a.images, names, &n_images);
    if (st == KS_OK)
        st = kw_model_load(a.model, KE_DTYPE_F16, &km);
    if (st != KS_OK)
        goto done;
    const ke_config *c = &km.model->config;
    n_pairs = n_images * a.n_prompts;
    pixels = malloc((size_t)n_images * (size_t)c->vision.channels * (size_t)c->vision.image_size *
                    (size_t)c->vision.image_size * sizeof *pixels);
    res[0] = calloc((size_t)n_pairs, sizeof *res[0]);
    res[1] = calloc((size_t)n_pairs, sizeof *res[1]);
    if (!pixels || !res[0] || !res[1]) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = load_pixels(&a, names, n_images, c, pixels)) != KS_OK)
        goto done;
    for (int p = 0; p < a.n_prompts && st == KS_OK; p++)
        st = kt_processor_encode(km.tokenizer, a.prompts[p], strlen(a.prompts[p]), NULL, &enc[p]);
    for (int q = 0; q < 2 && st == KS_OK; q++)
        st = run_precision(&km, &a, q == 1, pixels, n_images, enc, res[q]);
    if (st != KS_OK)
        goto done;

    long prefix_sum = 0, same_sum = 0, total = 0, whole = 0;
    for (int i = 0; i < n_pairs; i++) {
        const ke_gen_result *f = &res[0][i], *q = &res[1][i];
        size_t start = enc[i % a.n_prompts].len, n = f->new_tokens, prefix = 0, same = 0;
        bool diverged = false;
        for (size_t t = 0; t < n && t < q->new_tokens; t++) {
            bool eq = f->ids[start + t] == q->ids[start + t];
            diverged = diverged || !eq;
            prefix += !diverged;
            same += eq;
        }
        double dl = 0;
        for (int v = 0; v < c->text.vocab_size; v++)
            dl = fmax(dl, fabs((double)f->prefill_logits_last[v] - q->prefill_logits_last[v]));
        char image_esc[512], prompt_esc[1024];
        printf("{\"image\":%s,\"prompt\":%s,\"new_tokens\":%zu,\"prefix\":%zu,"
               "\"same\":%zu,\"prefill_logits_max_abs_diff\":%.4g}\n",
               ks_log_str(image_esc, sizeof image_esc, names[i / a.n_prompts]),
               ks_log_str(prompt_esc, sizeof prompt_esc, a.prompts[i % a.n_prompts]), n, prefix,
               same, dl);
        prefix_sum += (long)prefix;
        same_sum += (long)same;
        total += (long)n;
        whole += prefix == n;
    }
    printf("{\"pairs\":%d,\"tokens\":%ld,\"prefix_share\":%.4f,\"same_share\":%.4f,"
           "\"identical_pairs\":%ld}\n",
           n_pairs, total, total ? (double)prefix_sum / (double)total : 0.0,
           total ? (double)same_sum / (double)total : 0.0, whole);
    rc = 0;
done:
    if (st != KS_OK)
        fprintf(stderr, "kosmos-int8-agreement: %s\n", ks_error_message());
    for (int q = 0; q < 2; q++) {
        for (int i = 0; res[q] && i < n_pairs; i++)
            ke_gen_result_fini(&res[q][i]);
        free(res[q]);
    }
    for (int p = 0; p < MAX_PROMPTS; p++)
        kt_encoding_fini(&enc[p]);
    for (int i = 0; i < n_images; i++)
        free(names[i]);
    free(pixels);
    kw_model_fini(&km);
    return rc;
}
