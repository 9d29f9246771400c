/* ke_model: the Kosmos-2 weights, loaded from a Hugging Face checkpoint folder
 * (model.safetensors, or model-0000N-of-0000M.safetensors + model.safetensors.index.json),
 * memory-mapped and validated, in f32, f16 or bf16 on disk.
 *
 * F32 and F16 tensors point into the memory map, in the file's dtype (ke_tensor.dtype says
 * which): no host copy is made, and a backend that copies the weights to a device converts them
 * to its storage dtype on the way, in bounded chunks. `storage` is that dtype: KE_DTYPE_F16 (the
 * default: half the memory, arithmetic stays f32) or KE_DTYPE_F32; BF16 (and misaligned)
 * tensors are converted to it once at load, into owned memory.
 * The struct is read-only after ke_model_load; backends read the tensors directly. */
#ifndef KE_MODEL_H
#define KE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"
#include "model_config.h"

/* KE_DTYPE_I8 is never a model's storage: it is the int8 codes of a quantized linear weight
 * (quant.h, --precision int8), with a scale per output row in ke_tensor.scale. */
typedef enum ke_dtype { KE_DTYPE_F32 = 0, KE_DTYPE_F16 = 1, KE_DTYPE_I8 = 2 } ke_dtype;

/* A weight tensor; `data` is borrowed from the model (the map or its owned buffers). Row-major,
 * shape[0] slowest. data == NULL means "absent" (e.g. a bias that does not exist). */
typedef struct ke_tensor {
    ke_dtype dtype; /* of the data in memory */
    bool round_f16; /* f32 data of a model stored in f16: its values are the f16 roundings,
                       * as the device copy holds them (ke_tensor_read_f32 rounds) */
    int ndim;
    int64_t shape[4];
    const void *data;
    const float *scale; /* KE_DTYPE_I8: (shape[0]) f32, row r's values are data[r, :] * scale[r];
                         * NULL for the other dtypes */
} ke_tensor;

typedef struct ke_linear {
    ke_tensor weight; /* (out, in), as nn.Linear stores it */
    ke_tensor bias;   /* (out) or absent */
} ke_linear;

typedef struct ke_layer_norm {
    ke_tensor weight; /* (dim) */
    ke_tensor bias;   /* (dim) */
} ke_layer_norm;

typedef struct ke_vision_layer {
    ke_layer_norm layer_norm1, layer_norm2;
    ke_linear q_proj, k_proj, v_proj, out_proj; /* (hidden, hidden) */
    ke_linear fc1;                              /* (intermediate, hidden) */
    ke_linear fc2;                              /* (hidden, intermediate) */
} ke_vision_layer;

typedef struct ke_text_layer {
    ke_layer_norm self_attn_layer_norm;
    ke_linear q_proj, k_proj, v_proj, out_proj; /* (embed, embed) */
    ke_layer_norm inner_attn_ln;                /* sub-LN before out_proj */
    ke_layer_norm final_layer_norm;             /* before the FFN */
    ke_linear fc1;                              /* (ffn, embed) */
    ke_layer_norm ffn_layernorm;                /* sub-LN over ffn_dim, before fc2 */
    ke_linear fc2;                              /* (embed, ffn) */
} ke_text_layer;

typedef struct ke_model {
    ke_config config;
    ke_dtype storage; /* the dtype a device copy of the weights is stored in (each tensor below
                       * has its own dtype, the file's or this one) */

    /* vision_model.model.* */
    ke_tensor patch_embedding;    /* (hidden, channels, patch, patch), no bias */
    ke_tensor class_embedding;    /* (hidden) */
    ke_tensor position_embedding; /* (patches + 1, hidden) */
    ke_layer_norm pre_layrnorm;
    ke_vision_layer *vision_layers; /* [config.vision.layers] */
    ke_layer_norm post_layernorm;

    /* image_to_text_projection.* */
    ke_linear dense;        /* (embed, vision hidden) */
    ke_tensor latent_query; /* (latent_query_num, embed) */
    ke_linear x_q_proj, x_k_proj, x_v_proj, x_out_proj;

    /* text_model.* */
    ke_tensor embed_tokens; /* (vocab, embed) */
    ke_text_layer *text_layers;
    ke_layer_norm final_layer_norm; /* text_model.model.layer_norm */
    ke_tensor lm_head;              /* (vocab, embed); aliases embed_tokens when tied */

    /* The maps and owned blocks the tensors point into, whatever made the model, so that
     * ke_model_destroy frees every model alike; model.c only. */
    struct ke_model_storage *private_storage;
} ke_model;

typedef struct ke_model_options {
    ke_dtype storage; /* KE_DTYPE_F16 by ke_model_options_default (NB: a zeroed struct is F32):
                       * the device's weight dtype, and what BF16 tensors are converted to */
} ke_model_options;

/* Fills the defaults: storage KE_DTYPE_F16 (what options == NULL gives ke_model_load). */
void ke_model_options_default(ke_model_options *options);

/* Loads and validates config.json + the safetensors weights of `model_dir` into *out (caller
 * owns; ke_model_destroy). On any problem (a missing file, a truncated or corrupt safetensors
 * file, a missing tensor, a wrong shape or dtype: KS_ERR_IO, KS_ERR_FORMAT, ...; KS_ERR_INVALID
 * for an unknown storage dtype; KS_ERR_NOMEM) *out is NULL and the message names the file and
 * tensor.
 * As transformers 5.17's from_pretrained does, row pad_token_id of embed_tokens is zeroed (in
 * this process's copy-on-write view of the map; the file is never written), and a tied lm_head
 * ignores any text_model.lm_head.weight in the file. */
ks_status ke_model_load(const char *model_dir, const ke_model_options *options, ke_model **out);

/* For makers of models other than ke_model_load (ke_model_new_random): a model of shape
 * `config` (copied) stored as `storage`, its layer arrays zeroed and no tensors yet, into *out
 * (caller owns; ke_model_destroy). KS_ERR_INVALID for an unknown storage dtype or a negative
 * layer count, KS_ERR_NOMEM; *out is then NULL. */
ks_status ke_model_new_empty(const ke_config *config, ke_dtype storage, ke_model **out);

/* Takes ownership of *block (from malloc or aligned_alloc; the model's tensors may point into
 * it) and sets *block = NULL: ke_model_destroy frees it. KS_ERR_NOMEM, having freed it. */
ks_status ke_model_adopt(ke_model *model, void **block);

/* Frees the model and everything its tensors point into, whichever function made it. Accepts
 * NULL; sets *model = NULL. */
void ke_model_destroy(ke_model **model);

/* Once a backend holds its own copy of the weights on a device, the mapped files' pages are
 * no longer read: lets the kernel reclaim them (ke_st_page_out). The model stays usable. */
void ke_model_page_out(const ke_model *model);

/* Converts n elements of a tensor, starting at element `offset`, to f32 in `out` (KE_DTYPE_I8:
 * the code times its row's scale). */
void ke_tensor_read_f32(const ke_tensor *t, size_t offset, size_t n, float *out);

/* Number of elements. */
size_t ke_tensor_numel(const ke_tensor *t);

/* Number formats. ke_f32_to_f16 rounds to nearest even, overflows to infinity and keeps NaN a
 * NaN, bit for bit as torch's `.half()`; the others are exact. */
float ke_f16_to_f32(uint16_t h);
uint16_t ke_f32_to_f16(float f);
float ke_bf16_to_f32(uint16_t h);

#endif
