/* kosmos-fidelity: runs one prompt of a checkpoint on one device from pre-tokenized inputs and
 * writes what it computed, so a script can compare it with transformers on the same machine
 * (ops/gpu-check.sh's fidelity stage). Links only the engine: no libvips, ZeroMQ or protobuf.
 *
 *   kosmos-fidelity --model DIR --inputs IN.safetensors --out OUT.safetensors
 *                   [--device SPEC] [--precision fp16|fp32] [--new-tokens N]
 *                   [--kv-cache f32|f16] [--gemm auto|simt|mma-emulated|mma-ptx]
 *
 * IN holds pixel_values [1,3,S,S] f32, input_ids [T] i64, image_embeds_position_mask [T] i64.
 * OUT gets prefill_logits_last [V] f32, image_embeds [1,64,D] f32 and generated_ids [N] i64
 * (greedy, exactly N new tokens, the checkpoint's no_repeat_ngram_size). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_open.h"
#include "generate.h"
#include "model.h"
#include "safetensors.h"

typedef struct fidelity_args {
    const char *model, *inputs, *out, *device;
    ke_dtype precision;
    int new_tokens;
    bool kv_half;      /* --kv-cache f16: keys and values stored as half (an OpenCL device only) */
    ke_gemm_path gemm; /* --gemm: the engine of the large products (an OpenCL device only) */
} fidelity_args;

static int usage(void)
{
    fputs("usage: kosmos-fidelity --model DIR --inputs IN.safetensors --out OUT.safetensors\n"
          "                       [--device SPEC] [--precision fp16|fp32] [--new-tokens N]\n"
          "                       [--kv-cache f32|f16] [--gemm auto|simt|mma-emulated|mma-ptx]\n",
          stderr);
    return 2;
}

/* The int64 tensor `name` of f as int32 values (token ids and masks are small). */
static ks_status read_ids(const ke_st_file *f, const char *name, int32_t **out, size_t *n)
{
    const ke_st_tensor *t = ke_st_find(f, name);
    if (!t || t->dtype != KE_ST_I64)
        return ks_fail(KS_ERR_FORMAT, "%s: no int64 tensor '%s'", ke_st_path(f), name);
    *n = t->numel;
    *out = malloc((t->numel ? t->numel : 1) * sizeof **out);
    if (!*out)
        return ks_fail(KS_ERR_NOMEM, "out of memory reading %s", name);
    for (size_t i = 0; i < t->numel; i++) {
        int64_t v;
        memcpy(&v, (const char *)t->data + i * sizeof v, sizeof v); /* data may be unaligned */
        (*out)[i] = (int32_t)v;
    }
    return KS_OK;
}

static ks_status run(const fidelity_args *a)
{
    ke_model_options model_options;
    ke_model_options_default(&model_options);
    model_options.storage = a->precision;
    ke_model *model = NULL;
    ke_backend *backend = NULL;
    ke_st_file *inputs = NULL;
    ke_st_writer *writer = NULL;
    float *pixels = NULL, *image_embeds = NULL;
    int32_t *ids = NULL, *mask32 = NULL;
    uint8_t *mask = NULL;
    int64_t *generated = NULL;
    ke_gen_result result = {0};
    size_t n_ids = 0, n_mask = 0;
    ks_status st = KS_OK;

    if ((st = ke_model_load(a->model, &model_options, &model)))
        goto done;
    const ke_config *c = &model->config;
    const int64_t pixel_shape[4] = {1, c->vision.channels, c->vision.image_size,
                                    c->vision.image_size};
    if ((st = ke_st_read_f32(a->inputs, "pixel_values", 4, pixel_shape, &pixels)) ||
        (st = ke_st_open(a->inputs, &inputs)) ||
        (st = read_ids(inputs, "input_ids", &ids, &n_ids)) ||
        (st = read_ids(inputs, "image_embeds_position_mask", &mask32, &n_mask)))
        goto done;
    if (n_mask != n_ids) {
        st = ks_fail(KS_ERR_FORMAT, "input_ids and image_embeds_position_mask differ in length");
        goto done;
    }
    mask = malloc(n_ids ? n_ids : 1);
    image_embeds = malloc((size_t)c->latent_query_num * (size_t)c->text.embed_dim * sizeof(float));
    if (!mask || !image_embeds) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n_ids; i++)
        mask[i] = (uint8_t)(mask32[i] != 0);

    ke_backend_options backend_options = {.slots = 1,
                                          .slot_capacity = (int)n_ids + a->new_tokens + 1,
                                          .kv_half = a->kv_half,
                                          .gemm = a->gemm};
    if ((st = ke_backend_open(model, a->device, &backend_options, &backend)))
        goto done;
    if ((st = backend->ops->encode_images(backend, pixels, 1, image_embeds, NULL)))
        goto done;
    ke_gen_request request = {.input_ids = ids,
                              .image_embeds_position_mask = mask,
                              .len = n_ids,
                              .want_prefill_logits = true};
    ke_gen_params_default(&request.params, c);
    request.params.max_new_tokens = request.params.min_new_tokens = a->new_tokens;
    if ((st = ke_generate(backend, image_embeds, 1, &request, 1, &result, NULL)))
        goto done;

    generated = malloc((result.len ? result.len : 1) * sizeof *generated);
    if (!generated) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((st = ke_st_writer_new(&writer)))
        goto done;
    for (size_t i = 0; i < result.len; i++)
        generated[i] = result.ids[i];
    const int64_t logits_shape[1] = {c->text.vocab_size};
    const int64_t embeds_shape[3] = {1, c->latent_query_num, c->text.embed_dim};
    const int64_t ids_shape[1] = {(int64_t)result.len};
    ke_backend_stats stats;
    ke_backend_stats_get(backend, &stats);
    if ((st = ke_st_writer_add(writer, "prefill_logits_last", KE_ST_F32, 1, logits_shape,
                               result.prefill_logits_last)) ||
        (st = ke_st_writer_add(writer, "image_embeds", KE_ST_F32, 3, embeds_shape, image_embeds)) ||
        (st = ke_st_writer_add(writer, "generated_ids", KE_ST_I64, 1, ids_shape, generated)) ||
        (st = ke_st_writer_add_metadata(writer, "device", stats.device ? stats.device : "?")) ||
        (st = ke_st_writer_save(writer, a->out)))
        goto done;
    fprintf(stderr, "kosmos-fidelity: %zu new tokens on %s\n", result.new_tokens,
            stats.device ? stats.device : "?");
    if (stats.gemm)
        fprintf(stderr, "kosmos-fidelity: gemm %s\n", stats.gemm);
done:
    ke_st_writer_destroy(&writer);
    free(generated);
    ke_gen_result_fini(&result);
    ke_backend_destroy(&backend);
    free(image_embeds);
    free(mask);
    free(mask32);
    free(ids);
    free(pixels);
    ke_st_close(&inputs);
    ke_model_destroy(&model);
    return st;
}

int main(int argc, char **argv)
{
    fidelity_args a = {.precision = KE_DTYPE_F16, .new_tokens = 64};
    for (int i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value)
            return usage();
        if (!strcmp(argv[i], "--model"))
            a.model = value;
        else if (!strcmp(argv[i], "--inputs"))
            a.inputs = value;
        else if (!strcmp(argv[i], "--out"))
            a.out = value;
        else if (!strcmp(argv[i], "--device"))
            a.device = value;
        else if (!strcmp(argv[i], "--precision") &&
                 (!strcmp(value, "fp16") || !strcmp(value, "fp32")))
            a.precision = !strcmp(value, "fp16") ? KE_DTYPE_F16 : KE_DTYPE_F32;
        else if (!strcmp(argv[i], "--kv-cache")) {
            if (!ke_kv_cache_parse(value, &a.kv_half))
                return usage();
        } else if (!strcmp(argv[i], "--gemm")) {
            if (!ke_gemm_path_parse(value, &a.gemm))
                return usage();
        } else if (!strcmp(argv[i], "--new-tokens") && atoi(value) > 0)
            a.new_tokens = atoi(value);
        else
            return usage();
        i++;
    }
    if (!a.model || !a.inputs || !a.out)
        return usage();
    if (run(&a) != KS_OK) {
        fprintf(stderr, "kosmos-fidelity: %s\n", ks_error_message());
        return 1;
    }
    return 0;
}
