/* ke_config: the model's shape and generation defaults, read from a Hugging Face Kosmos-2
 * checkpoint folder (config.json, and generation_config.json when present). Nothing about the
 * model is hard-coded: tests use tiny configurations with other widths and head counts. */
#ifndef KE_MODEL_CONFIG_H
#define KE_MODEL_CONFIG_H

#include <stdbool.h>

#include "ks_error.h"

typedef enum ke_activation {
    KE_ACT_GELU,       /* exact erf form ("gelu") */
    KE_ACT_QUICK_GELU, /* x * sigmoid(1.702 x) */
    KE_ACT_GELU_TANH,  /* "gelu_new" / "gelu_pytorch_tanh" */
    KE_ACT_RELU
} ke_activation;

typedef struct ke_vision_config {
    int hidden_size;       /* 1024 */
    int intermediate_size; /* 4096 */
    int layers;            /* 24 */
    int heads;             /* 16; hidden_size % heads == 0 */
    int channels;          /* 3 */
    int image_size;        /* 224 */
    int patch_size;        /* 14; image_size % patch_size == 0 */
    float layer_norm_eps;
    ke_activation activation;
} ke_vision_config;

typedef struct ke_text_config {
    int vocab_size;    /* 65037 */
    int embed_dim;     /* 2048 */
    int layers;        /* 24 */
    int heads;         /* 32; embed_dim % heads == 0 */
    int ffn_dim;       /* 8192 */
    int max_positions; /* 2048; the sinusoid table grows past it as HF's does */
    int pad_id, bos_id, eos_id;
    float layer_norm_eps;
    ke_activation activation;
    bool scale_embedding; /* multiply embeddings by sqrt(embed_dim) */
    bool tie_word_embeddings;
} ke_text_config;

/* Generation defaults from the checkpoint; a request may override each. */
typedef struct ke_generation_defaults {
    int no_repeat_ngram_size; /* generation_config.json, else text_config, else 0 */
    int max_new_tokens;       /* 128 unless generation_config.json says otherwise */
    int num_beams;            /* 1 */
    float length_penalty;     /* 1.0 */
    bool early_stopping;      /* false */
} ke_generation_defaults;

typedef struct ke_config {
    ke_vision_config vision;
    ke_text_config text;
    int latent_query_num; /* 64 */
    ke_generation_defaults generation;
} ke_config;

/* Reads DIR/config.json (and DIR/generation_config.json if present). Fails with
 * KS_ERR_FORMAT and a message naming the file and field on a missing/invalid field or another
 * model_type than "kosmos-2". */
ks_status ke_config_load(const char *model_dir, ke_config *out);

/* The same from JSON text (generation_json may be NULL); `source` names it in messages. */
ks_status ke_config_parse(const char *config_json, const char *generation_json, const char *source,
                          ke_config *out);

#endif
