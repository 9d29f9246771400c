"""Makes the tiny random Kosmos-2 test checkpoint (tests/data/tiny-kosmos2/) and the engine's
golden tensors (tests/golden/engine/) with transformers, on the CPU.

The model has the real vocabulary (65037), image size (224), patch (14) and latent query count
(64) but tiny, deliberately uneven widths and different head counts in the two towers, so a C
engine that hard-codes a dimension fails. Weights are drawn so that logits are decisive (HF's
default init gives near-ties that make token-for-token tests flaky):
  - embeddings (token, class, position, latent queries): N(0, 1)
  - every matrix (nn.Linear weights, the patch convolution): N(0, 1/fan_in)
  - LayerNorm weights 1 + 0.1 N(0, 1); every bias (LayerNorm and linear) 0.1 N(0, 1)
The checkpoint is saved in float16; the golden tensors are computed in float32 from the
float16-rounded weights (the folder reloaded with dtype=float32), i.e. what an engine storing
f16 weights and computing in f32 should reproduce.

Run from anywhere:  /work/venv/bin/python tests/golden/make_test_checkpoint.py
Deterministic (fixed seed, CPU, single thread).
"""
import json
import math
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import reference  # noqa: E402

REPO = reference.REPO
OUT_MODEL = os.path.join(REPO, "tests", "data", "tiny-kosmos2")
OUT_GOLDEN = os.path.join(HERE, "engine")
IMAGES = reference.DEMO_IMAGES
SEED = 7  # chosen among seeds 1..8 for the largest smallest greedy top-2 margin

TEXT_CONFIG = {
    "vocab_size": 65037,
    "max_position_embeddings": 2048,
    "embed_dim": 48,
    "layers": 2,
    "ffn_dim": 100,
    "attention_heads": 3,
    "activation_function": "gelu",
    "layer_norm_eps": 1e-5,
    "scale_embedding": True,
    "tie_word_embeddings": True,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}
VISION_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 72,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

PROMPT_SHORT = "<grounding>An image of"
PROMPT_LONG = "<grounding> Describe this image in detail:"
PROMPT_MID = "<grounding>The picture shows"


def build_model():
    import torch
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

    config = Kosmos2Config(text_config=dict(TEXT_CONFIG), vision_config=dict(VISION_CONFIG),
                           latent_query_num=64)
    torch.manual_seed(SEED)
    model = Kosmos2ForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(SEED)

    def normal(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    with torch.no_grad():
        # Sorted by name so the draw order does not depend on module registration order.
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name == "text_model.lm_head.weight":
                continue  # tied to embed_tokens (named_parameters deduplicates it anyway)
            leaf = name.rsplit(".", 1)[-1]
            is_norm = ("layer_norm" in name or "layernorm" in name or "layrnorm" in name
                       or "inner_attn_ln" in name)
            if leaf == "bias":
                p.copy_(normal(p.shape, 0.1))
            elif is_norm:
                p.copy_(1.0 + normal(p.shape, 0.1))
            elif name.endswith("embed_tokens.weight") or "class_embedding" in name \
                    or "position_embedding" in name or name.endswith("latent_query"):
                p.copy_(normal(p.shape, 1.0))
            elif p.dim() >= 2:
                fan_in = int(math.prod(p.shape[1:]))
                p.copy_(normal(p.shape, 1.0 / math.sqrt(fan_in)))
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")
    assert model.text_model.lm_head.weight.data_ptr() == \
        model.text_model.model.embed_tokens.weight.data_ptr(), "lm_head is not tied"
    return model


def save_checkpoint(model):
    if os.path.isdir(OUT_MODEL):
        shutil.rmtree(OUT_MODEL)
    os.makedirs(OUT_MODEL)
    model.half().save_pretrained(OUT_MODEL, safe_serialization=True)
    model.float()
    # The real checkpoint's small files (generation_config.json sets no_repeat_ngram_size 3,
    # as the real model decodes by default); they replace what save_pretrained wrote.
    for name in ("generation_config.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(reference.CHECKPOINT, name), os.path.join(OUT_MODEL, name))
    shutil.copy(reference.SPM_MODEL, OUT_MODEL)
    with open(os.path.join(OUT_MODEL, "README.md"), "w", encoding="utf-8") as f:
        f.write(README)


README = """# tiny-kosmos2: a random test checkpoint

A Kosmos-2 (`Kosmos2ForConditionalGeneration`, transformers 5.17.0) with **random weights**: its
output text is meaningless. It exists so that the C engine can be tested token for token against
transformers in seconds. Made by `tests/golden/make_test_checkpoint.py` (fixed seed); the golden
tensors computed from it are in `tests/golden/engine/`.

- Real vocabulary (65037 ids, `sentencepiece.bpe.model` of microsoft/kosmos-2-patch14-224), image
  size 224, patch 14, 64 latent queries, max_position_embeddings 2048.
- Vision: width 32, 4 heads (head_dim 8), 2 layers, MLP 72, quick_gelu.
- Text: width 48, 3 heads (head_dim 16), 2 layers, FFN 100, gelu; lm_head tied to embed_tokens
  (not stored in the file).
- Weights in float16 (`model.half()`), one `model.safetensors`.
- Init: embeddings, class/position embeddings and latent queries N(0,1); matrices N(0,1/fan_in);
  LayerNorm weights 1+0.1N(0,1); biases 0.1N(0,1) -- so that logits are decisive.
- `text_model.model.embed_tokens.weight` row 1 (`<pad>`) is **not** zero in the file, on purpose:
  transformers 5.17 zeroes that row when it loads the model (so the tied LM head's pad logit is
  exactly 0), and an engine that matches it must do the same.
- `generation_config.json`, `tokenizer_config.json`: copies of the real checkpoint's files
  (`no_repeat_ngram_size` 3 is the default, as for the real model; tests pass 0 or 3 explicitly).
  Note that transformers 5.17's `Kosmos2ForConditionalGeneration.generate` does not apply it
  unless passed: it calls `text_model.generate`, whose generation config has no n-gram size.
- Behaviour: the model mostly copies its last token (greedy without the n-gram ban repeats one
  id; with it, pairs and triples), and it does not produce `</s>` within 32 steps.
"""


def load_reference_model():
    import torch
    from transformers import Kosmos2ForConditionalGeneration

    model = Kosmos2ForConditionalGeneration.from_pretrained(OUT_MODEL, dtype=torch.float32)
    return model.eval()


def image(name):
    from PIL import Image

    return Image.open(os.path.join(IMAGES, name))


def save(path, tensors):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def vision_taps(model, pixel_values):
    import torch

    with torch.no_grad():
        out = model.vision_model(pixel_values)
        post = model.vision_model.model.post_layernorm(out[0])
        normed = torch.nn.functional.normalize(post, dim=-1)
        embeds, _ = model.image_to_text_projection(normed)
    return post, embeds


def prefill_logits(model, inputs):
    import torch

    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    image_embeds_position_mask=inputs["image_embeds_position_mask"],
                    use_cache=False)
    return out.logits[:, -1, :].float()


def generate(model, inputs, params):
    import torch

    with torch.no_grad():
        out = model.generate(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                             attention_mask=inputs["attention_mask"],
                             image_embeds_position_mask=inputs["image_embeds_position_mask"],
                             use_cache=True, do_sample=False,
                             max_new_tokens=params["max_new_tokens"],
                             min_new_tokens=params["min_new_tokens"],
                             num_beams=params["num_beams"],
                             no_repeat_ngram_size=params["no_repeat_ngram_size"],
                             length_penalty=1.0, early_stopping=False,
                             output_scores=True, return_dict_in_generate=True)
    return out


def greedy_margins(out):
    """Top-1 minus top-2 of the processed scores at every greedy step (how decisive it was)."""
    import torch

    margins = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    return margins


def unpad_row(ids, pad=1, eos=2):
    """A left-padded output row back to what an unbatched run returns: leading pads dropped,
    everything after the first generated eos dropped."""
    ids = list(ids)
    start = 0
    while start < len(ids) and ids[start] == pad:
        start += 1
    return ids[start:]


def cut_after_eos(new_ids, eos=2):
    out = []
    for t in new_ids:
        out.append(t)
        if t == eos:
            break
    return out


def main():
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT_GOLDEN, exist_ok=True)

    model = build_model()
    save_checkpoint(model)
    model = load_reference_model()

    # The reloaded float32 model must hold exactly the float16-rounded weights, except for one
    # row: transformers 5.17's from_pretrained zeroes embed_tokens[pad_token_id] (and so the
    # tied lm_head row) whatever the file holds -- Kosmos2PreTrainedModel._init_weights runs on
    # Kosmos2TextTransformer and its `weight[padding_idx]` slice loses the "already loaded"
    # flag. The file keeps its non-zero row on purpose: an engine must zero it as HF does.
    check = build_model().half().float()
    ref_state = check.state_dict()
    pad = TEXT_CONFIG["pad_token_id"]
    emb = "text_model.model.embed_tokens.weight"
    if torch.equal(ref_state[emb][pad], torch.zeros_like(ref_state[emb][pad])):
        raise RuntimeError("the pad row of the file should be non-zero")
    for k, v in model.state_dict().items():
        want = ref_state[k].clone()
        if k in (emb, "text_model.lm_head.weight"):
            want[pad] = 0
        if not torch.equal(v, want):
            raise RuntimeError(f"reloaded {k} differs from model.half().float()")
    del check, ref_state

    processor = reference.build_processor()
    images = {"snowman": "snowman.png", "two_dogs": "two_dogs.jpg"}
    image_files = {}
    pixel_cache = {}
    for key, fname in images.items():
        pv = processor(text=PROMPT_SHORT, images=image(fname), return_tensors="pt")["pixel_values"]
        pv = pv.float()
        post, embeds = vision_taps(model, pv)
        out = f"image_{key}.safetensors"
        save(os.path.join(OUT_GOLDEN, out), {"pixel_values": pv, "vision_post_layernorm": post,
                                             "image_embeds": embeds})
        image_files[key] = out
        pixel_cache[key] = pv

    cases = []
    single = [
        ("greedy_snowman", "snowman", PROMPT_SHORT, dict(num_beams=1, no_repeat_ngram_size=0,
                                                         max_new_tokens=32, min_new_tokens=32)),
        ("greedy_ngram3_snowman", "snowman", PROMPT_SHORT,
         dict(num_beams=1, no_repeat_ngram_size=3, max_new_tokens=32, min_new_tokens=32)),
        ("greedy_two_dogs", "two_dogs", PROMPT_LONG,
         dict(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=32, min_new_tokens=32)),
        ("greedy_ngram3_two_dogs", "two_dogs", PROMPT_LONG,
         dict(num_beams=1, no_repeat_ngram_size=3, max_new_tokens=32, min_new_tokens=32)),
        ("greedy_natural_snowman", "snowman", PROMPT_SHORT,
         dict(num_beams=1, no_repeat_ngram_size=3, max_new_tokens=32, min_new_tokens=0)),
        ("beam3_snowman", "snowman", PROMPT_SHORT,
         dict(num_beams=3, no_repeat_ngram_size=0, max_new_tokens=16, min_new_tokens=0)),
        ("beam3_ngram3_two_dogs", "two_dogs", PROMPT_LONG,
         dict(num_beams=3, no_repeat_ngram_size=3, max_new_tokens=16, min_new_tokens=0)),
        ("beam3_min16_snowman", "snowman", PROMPT_SHORT,
         dict(num_beams=3, no_repeat_ngram_size=3, max_new_tokens=16, min_new_tokens=16)),
    ]
    for name, img, prompt, params in single:
        inputs = processor(text=prompt, images=image(images[img]), return_tensors="pt")
        assert torch.equal(inputs["pixel_values"].float(), pixel_cache[img])
        logits = prefill_logits(model, inputs)[0]
        out = generate(model, inputs, params)
        seq = out.sequences[0]
        prompt_len = inputs["input_ids"].shape[1]
        new = seq[prompt_len:].tolist()
        fname = f"case_{name}.safetensors"
        tensors = {
            "input_ids": inputs["input_ids"].long(),
            "attention_mask": inputs["attention_mask"].long(),
            "image_embeds_position_mask": inputs["image_embeds_position_mask"].long(),
            "generated_ids": seq.unsqueeze(0).long(),
            "prefill_logits_last": logits.contiguous(),
        }
        case = {
            "name": name, "file": fname, "images": [img], "image_files": [image_files[img]],
            "prompts": [prompt], "params": params,
            "input_ids": [inputs["input_ids"][0].tolist()],
            "image_embeds_position_mask": [inputs["image_embeds_position_mask"][0].tolist()],
            "expected_ids": [seq.tolist()], "new_tokens": [len(new)],
            "ends_with_eos": [bool(new and new[-1] == 2)],
        }
        if params["num_beams"] == 1:
            margins = greedy_margins(out)
            tensors["step_margins"] = torch.tensor(margins, dtype=torch.float32)
            case["min_step_margin"] = min(margins)
        save(os.path.join(OUT_GOLDEN, fname), tensors)
        cases.append(case)
        print(f"{name}: prompt {prompt_len} tokens, {len(new)} new, ids {new}", flush=True)

    # A left-padded batch: three prompts of different lengths over two images.
    batch_rows = [("snowman", PROMPT_SHORT), ("two_dogs", PROMPT_LONG), ("snowman", PROMPT_MID)]
    bparams = dict(num_beams=1, no_repeat_ngram_size=3, max_new_tokens=24, min_new_tokens=0)
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=[p for _, p in batch_rows],
                       images=[image(images[i]) for i, _ in batch_rows],
                       padding=True, return_tensors="pt")
    processor.tokenizer.padding_side = "right"
    logits = prefill_logits(model, inputs)
    out = generate(model, inputs, bparams)
    seqs = out.sequences
    padded_len = inputs["input_ids"].shape[1]
    rows_ids, rows_mask, rows_expected, rows_new, rows_unbatched = [], [], [], [], []
    for r, (img, prompt) in enumerate(batch_rows):
        am = inputs["attention_mask"][r].tolist()
        start = am.index(1)
        rows_ids.append(inputs["input_ids"][r, start:].tolist())
        rows_mask.append(inputs["image_embeds_position_mask"][r, start:].tolist())
        new = cut_after_eos(seqs[r, padded_len:].tolist())
        rows_expected.append(rows_ids[-1] + new)
        rows_new.append(len(new))
        # The same row alone, unpadded (to tell whether batching changes HF's result).
        single_in = processor(text=prompt, images=image(images[img]), return_tensors="pt")
        assert single_in["input_ids"][0].tolist() == rows_ids[-1]
        sout = generate(model, single_in, bparams)
        rows_unbatched.append(sout.sequences[0].tolist())
        print(f"batch row {r}: {len(rows_ids[-1])} prompt tokens ({start} pads), {len(new)} new, "
              f"ids {new}; unbatched equal: {rows_unbatched[-1] == rows_expected[-1]}", flush=True)
    fname = "case_batch3_left_padded.safetensors"
    save(os.path.join(OUT_GOLDEN, fname), {
        "input_ids": inputs["input_ids"].long(),
        "attention_mask": inputs["attention_mask"].long(),
        "image_embeds_position_mask": inputs["image_embeds_position_mask"].long(),
        "generated_ids": seqs.long(),
        "prefill_logits_last": logits.contiguous(),
    })
    cases.append({
        "name": "batch3_left_padded", "file": fname,
        "images": [i for i, _ in batch_rows],
        "image_files": [image_files[i] for i, _ in batch_rows],
        "prompts": [p for _, p in batch_rows], "params": bparams, "padding_side": "left",
        "input_ids": rows_ids, "image_embeds_position_mask": rows_mask,
        "expected_ids": rows_expected, "new_tokens": rows_new,
        "expected_ids_unbatched": rows_unbatched,
        "batched_equals_unbatched": [a == b for a, b in zip(rows_expected, rows_unbatched)],
        "note": "HF 5.17 left-padded batch: the prefill positions skip pads (2, 3, ...), but "
                "during decoding HF derives a new token's position from the cache length "
                "including pads (past_len + 2), so a padded row sees positions shifted by its "
                "pad count and can differ from the same request run alone "
                "(expected_ids_unbatched).",
    })

    summary = {
        "model_dir": "tests/data/tiny-kosmos2",
        "note": "Golden data of the random tiny Kosmos-2; made by make_test_checkpoint.py. "
                "Computed in float32 from the float16 weights. expected_ids are prompt + "
                "generated ids as HF generate returns them (batch rows unpadded, cut after "
                "eos). prefill_logits_last are the raw logits at the last prompt position.",
        "config": {"text": TEXT_CONFIG, "vision": VISION_CONFIG, "latent_query_num": 64},
        "seed": SEED,
        "images": {k: {"source": images[k], "file": v} for k, v in image_files.items()},
        "cases": cases,
    }
    with open(os.path.join(OUT_GOLDEN, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    reference.write_versions(os.path.join(OUT_GOLDEN, "versions.json"),
                             {"script": "tests/golden/make_test_checkpoint.py"})


if __name__ == "__main__":
    main()
