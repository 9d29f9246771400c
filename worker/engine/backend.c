/* backend: what every backend shares above its own ops: the checks of a ke_step, statistics
 * and destruction. One place, so the reference and OpenCL paths refuse exactly the same
 * inputs with the same messages. */
#include "backend.h"

#include <stdint.h>
#include <string.h>

ks_status ke_step_check(const ke_backend *b, const ke_step *step, const int *slot_len,
                        size_t *total)
{
    const ke_text_config *tc = &b->model->config.text;
    if (step == NULL || step->n_seqs < 1 || step->slots == NULL || step->n_tokens == NULL ||
        step->ids == NULL || step->positions == NULL)
        return ks_fail(KS_ERR_INVALID, "forward: empty or incomplete step");
    size_t t = 0;
    for (int s = 0; s < step->n_seqs; s++) {
        int slot = step->slots[s];
        if (slot < 0 || slot >= b->slots)
            return ks_fail(KS_ERR_INVALID, "forward: slot %d out of range (0..%d)", slot,
                           b->slots - 1);
        for (int r = 0; r < s; r++)
            if (step->slots[r] == slot)
                return ks_fail(KS_ERR_INVALID, "forward: slot %d used twice in one step", slot);
        int n = step->n_tokens[s];
        if (n < 1)
            return ks_fail(KS_ERR_INVALID, "forward: sequence %d has %d new tokens", s, n);
        if (step->from_device && step->from_device[s] && n != 1)
            return ks_fail(KS_ERR_INVALID,
                           "forward: sequence %d takes its token from the device "
                           "but has %d new tokens",
                           s, n);
        if (n > b->slot_capacity - slot_len[slot])
            return ks_fail(KS_ERR_LIMIT,
                           "forward: slot %d holds %d tokens, %d more exceed its capacity %d", slot,
                           slot_len[slot], n, b->slot_capacity);
        t += (size_t)n;
    }
    size_t row = 0;
    for (int s = 0; s < step->n_seqs; s++) {
        bool device = step->from_device && step->from_device[s];
        for (int j = 0; j < step->n_tokens[s]; j++, row++) {
            if (step->image_mask && step->image_mask[row] && step->image_embeds == NULL)
                return ks_fail(KS_ERR_INVALID, "forward: image positions without image_embeds");
            if (device && step->image_mask && step->image_mask[row])
                return ks_fail(KS_ERR_INVALID, "forward: a token from the device at an image "
                                               "position");
            if (device)
                continue;
            if (step->ids[row] < 0 || step->ids[row] >= tc->vocab_size)
                return ks_fail(KS_ERR_INVALID, "forward: token id %d outside the vocabulary (%d)",
                               step->ids[row], tc->vocab_size);
            if (step->positions[row] < 0)
                return ks_fail(KS_ERR_INVALID, "forward: negative position id %d",
                               step->positions[row]);
        }
    }
    if (t > (size_t)INT32_MAX / 4)
        return ks_fail(KS_ERR_LIMIT, "forward: %zu tokens in one step", t);
    *total = t;
    return KS_OK;
}

bool ke_kv_cache_parse(const char *name, bool *kv_half)
{
    if (!strcmp(name, "f32") || !strcmp(name, "fp32"))
        *kv_half = false;
    else if (!strcmp(name, "f16") || !strcmp(name, "fp16"))
        *kv_half = true;
    else
        return false;
    return true;
}

static const char *const gemm_path_names[] = {"auto", "simt", "mma-emulated", "mma-ptx"};

bool ke_gemm_path_parse(const char *name, ke_gemm_path *path)
{
    for (size_t i = 0; i < sizeof gemm_path_names / sizeof gemm_path_names[0]; i++)
        if (!strcmp(name, gemm_path_names[i])) {
            *path = (ke_gemm_path)i;
            return true;
        }
    return false;
}

const char *ke_gemm_path_name(ke_gemm_path path)
{
    return (size_t)path < sizeof gemm_path_names / sizeof gemm_path_names[0] ? gemm_path_names[path]
                                                                             : "?";
}

bool ke_precision_parse(const char *name, ke_dtype *storage, bool *weights_int8)
{
    if (!strcmp(name, "fp16") || !strcmp(name, "f16") || !strcmp(name, "int8"))
        *storage = KE_DTYPE_F16;
    else if (!strcmp(name, "fp32") || !strcmp(name, "f32"))
        *storage = KE_DTYPE_F32;
    else
        return false;
    *weights_int8 = !strcmp(name, "int8");
    return true;
}

const char *ke_precision_name(ke_dtype storage, bool weights_int8)
{
    return weights_int8 ? "int8" : storage == KE_DTYPE_F32 ? "fp32" : "fp16";
}

void ke_backend_stats_get(const ke_backend *b, ke_backend_stats *out)
{
    memset(out, 0, sizeof *out);
    if (b == NULL)
        return;
    out->device = b->ops->name;
    if (b->ops->stats)
        b->ops->stats(b, out);
}

void ke_backend_destroy(ke_backend **b)
{
    if (b == NULL || *b == NULL)
        return;
    (*b)->ops->destroy(*b);
    *b = NULL;
}
