#!/usr/bin/env python3
"""Fidelity of our engine against transformers on the same machine (ops/gpu-check.sh stage 2).

    gpu_fidelity.py make  --dir D [--config full|tiny] [--device cuda|cpu] [--new-tokens 64]
    gpu_fidelity.py check --dir D --ours OURS.safetensors

`make` builds a Kosmos-2 with seeded decisive random weights (as tests/bench/hf_baseline.py),
rounds them to fp16 and saves the checkpoint in D (config.json, model.safetensors,
generation_config.json with no_repeat_ngram_size 3), the inputs in D/inputs.safetensors (the
snowman's pixel_values from tests/golden/engine, the prompt "<grounding>An image of") and the
reference in D/reference.safetensors: transformers in fp32 on the fp16-rounded weights,
prefill logits at the last prompt position and greedy ids with exactly N new tokens.
`check` compares kosmos-fidelity's output with it and prints one JSON line: the max abs logit
error and whether the ids are identical. Exit 1 if they are not.
"""
import argparse
import json
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)


def read_safetensors(path):
    import numpy as np

    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    kinds = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] not in kinds:
            continue
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=kinds[info["dtype"]]).reshape(info["shape"])
    return out


def make(args):
    import torch
    from safetensors.torch import save_file

    import hf_baseline

    started = time.time()
    device = torch.device(args.device)
    build_args = argparse.Namespace(config=args.config, attn="sdpa", seed=args.seed)
    model = hf_baseline.build_model(build_args, torch.float32, device)
    # The engine stores fp16: the reference runs in fp32 on exactly those rounded weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    os.makedirs(args.dir, exist_ok=True)
    model.half().save_pretrained(args.dir, safe_serialization=True)
    model.float()
    # .half() rounded the sinusoid position table, a buffer: recompute it in fp32.
    for module in model.modules():
        if type(module).__name__ == "Kosmos2TextSinusoidalPositionalEmbedding":
            w = module.get_embedding(module.num_positions + module.offset, module.embedding_dim,
                                     module.padding_idx)
            module.weights = w.to(device=device, dtype=torch.float32)
    with open(os.path.join(args.dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
                   "no_repeat_ngram_size": 3}, f)

    ids, mask = hf_baseline.prompt(model.config)
    golden = read_safetensors(os.path.join(REPO, "tests", "golden", "engine",
                                           "image_snowman.safetensors"))
    pixel_values = torch.from_numpy(golden["pixel_values"].copy()).to(device)
    input_ids = torch.tensor([ids], device=device)
    position_mask = torch.tensor([mask], device=device)
    save_file({"pixel_values": pixel_values.cpu().contiguous(),
               "input_ids": input_ids[0].cpu().to(torch.int64),
               "image_embeds_position_mask": position_mask[0].cpu().to(torch.int64)},
              os.path.join(args.dir, "inputs.safetensors"))

    with torch.no_grad():
        out = model.generate(pixel_values=pixel_values, input_ids=input_ids,
                             attention_mask=torch.ones_like(input_ids),
                             image_embeds_position_mask=position_mask, do_sample=False,
                             num_beams=1, max_new_tokens=args.new_tokens,
                             min_new_tokens=args.new_tokens, no_repeat_ngram_size=3,
                             output_scores=True, output_logits=True, return_dict_in_generate=True)
    logits = out.logits[0][0].float().cpu().contiguous()
    save_file({"prefill_logits_last": logits, "generated_ids": out.sequences[0].cpu().to(torch.int64)},
              os.path.join(args.dir, "reference.safetensors"))
    print(json.dumps({"stage": "fidelity_make", "config": args.config, "device": str(device),
                      "new_tokens": int(out.sequences.shape[1] - len(ids)),
                      "seconds": round(time.time() - started, 1)}), flush=True)


def check(args):
    import numpy as np

    ref = read_safetensors(os.path.join(args.dir, "reference.safetensors"))
    ours = read_safetensors(args.ours)
    diff = float(np.max(np.abs(ref["prefill_logits_last"] - ours["prefill_logits_last"])))
    scale = float(np.max(np.abs(ref["prefill_logits_last"])))
    same = ref["generated_ids"].tolist() == ours["generated_ids"].tolist()
    first = next((i for i, (a, b) in enumerate(zip(ref["generated_ids"].tolist(),
                                                    ours["generated_ids"].tolist())) if a != b), None)
    print(json.dumps({"stage": "fidelity_check", "max_abs_logit_error": diff,
                      "max_abs_logit": scale, "ids_identical": same,
                      "ids_compared": int(len(ref["generated_ids"])),
                      "first_difference_at": first}), flush=True)
    return 0 if same else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["make", "check"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--config", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--ours")
    args = parser.parse_args()
    if args.action == "make":
        make(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
