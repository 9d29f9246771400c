/* ke_model_random: a Kosmos-2 with seeded random weights, built in memory without any file, for
 * the benchmarks (`kosmos bench`, `kosmos-bench`) and for tests that need the real sizes.
 *
 * The init is "decisive" as tests/golden/make_test_checkpoint.py draws it (so greedy decoding
 * does not wander through near-ties): embeddings (token, class, position, latent queries)
 * N(0, 1); every matrix (linear weights, the patch convolution) N(0, 1/fan_in); LayerNorm
 * weights 1 + 0.1 N(0, 1); biases 0.1 N(0, 1); embed_tokens row pad_id zero (as HF's
 * nn.Embedding(padding_idx) leaves it). The values are not HF's (own generator: per chunk of
 * 1 Mi elements a seeded splitmix64 stream + polar Box-Muller), only the distributions are;
 * they depend on the seed alone, not on the thread count. Generated straight in the storage
 * dtype, on every core.
 * Not here: loading checkpoints (model.c). */
#ifndef KE_MODEL_RANDOM_H
#define KE_MODEL_RANDOM_H

#include <stdint.h>

#include "model.h"
#include "model_config.h"

/* The shape of transformers' Kosmos2Config() defaults (= microsoft/kosmos-2-patch14-224):
 * 1,664,485,376 parameters; generation defaults as the checkpoint's generation_config.json
 * (no_repeat_ngram_size 3). */
void ke_config_default_full(ke_config *out);

/* The shape of tests/data/tiny-kosmos2 (real vocabulary, image size and latent queries; widths
 * 32/48, 2 layers each): 3.2 M parameters, for quick runs of the tools. */
void ke_config_default_tiny(ke_config *out);

/* Total parameter count of the architecture `config` describes (lm_head counted once when
 * tied), as HF's sum(p.numel() for p in model.parameters()). */
uint64_t ke_config_param_count(const ke_config *config);

/* A model of shape `config` (copied) with the weights above, stored as options->storage
 * (options NULL: f16), into *out: the caller owns it and frees it with ke_model_destroy, like
 * any model. KS_ERR_INVALID for an invalid config or storage dtype, KS_ERR_NOMEM; *out is then
 * NULL. */
ks_status ke_model_new_random(const ke_config *config, uint64_t seed,
                              const ke_model_options *options, ke_model **out);

#endif
