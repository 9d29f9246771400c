"""hf_baseline: the figures of `kosmos bench` measured for transformers' Kosmos-2, the baseline
the engine's are compared with (tests/bench/compare.sh prints the ratios). A benchmark, never a
test.

Builds Kosmos2ForConditionalGeneration(Kosmos2Config()) (or the tiny test shape) with seeded
random weights of the engine's "decisive" distributions (embeddings N(0,1), matrices
N(0,1/fan_in), LayerNorm weights 1+0.1N(0,1), biases 0.1N(0,1), the pad row zero), allocated
once: the model is made on the meta device and materialised straight on the target device in
the target dtype. Then, at each batch size B, the median of --repeats timed runs (after
--warmup untimed ones) of:

  vision   images/s  model.vision_model -> post_layernorm -> normalize -> image_to_text_projection
                     on B images (what generate() runs first)
  prefill  tokens/s  one text_model forward of B x 71 tokens (<s><image> 64 image rows </image>
                     <grounding>An image of) with the image embeds, use_cache, logits_to_keep=1
                     (as generate()'s first step)
  decode   tokens/s  then N steps of B single tokens (argmax of the last logits) with the KV
                     cache: B * N / their time
  e2e      jobs/s    model.generate on B images, min_new_tokens = max_new_tokens = N, greedy,
                     no_repeat_ngram_size=3: B / time
  memory   bytes     peak host RSS during the batch, and on CUDA torch.cuda.max_memory_allocated

and prints one JSON line per batch size with the keys `kosmos bench` prints.

  /work/venv/bin/python tests/bench/hf_baseline.py --config tiny --batch 1,8
  python tests/bench/hf_baseline.py --device cuda --batch 1,8,64,256,max   # fp16 + sdpa

--device cpu runs fp32 with torch using every core (--threads); --device cuda runs fp16 with
attn_implementation="sdpa". Needs only torch and transformers (5.17.0).
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time

import torch
import transformers
from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

# The processor's ids for "<grounding>An image of" around the 64 image rows (as the engine's
# ke_bench_prompt writes them).
PROMPT_IMAGE, PROMPT_IMAGE_END, PROMPT_GROUNDING, PROMPT_FIRST_ROW = 64003, 64004, 64012, 4
PROMPT_TEXT = [712, 1648, 9]

TINY_TEXT = dict(embed_dim=48, layers=2, ffn_dim=100, attention_heads=3,
                 activation_function="gelu")
TINY_VISION = dict(hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                   num_attention_heads=4, hidden_act="quick_gelu")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("full", "tiny"), default="full")
    p.add_argument("--batch", default="1,8",
                   help="batch sizes, e.g. 1,8,64; a final 'max' doubles the last size until "
                        "CUDA runs out of memory (cuda only)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="default: fp32 on cpu, fp16 on cuda")
    p.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--new-tokens", "--min-new-tokens", dest="new_tokens", type=int, default=64)
    p.add_argument("--phases", default="vision,prefill,decode,e2e")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch CPU threads (default: every core)")
    p.add_argument("--json", action="store_true", help="JSON lines only (no table, no progress)")
    a = p.parse_args(argv)
    parts = a.batch.split(",")
    a.batch_max = parts[-1] == "max"
    if a.batch_max:
        parts = parts[:-1]
        if a.device != "cuda":
            p.error("--batch ...,max is for --device cuda (on the CPU it would swap or be killed)")
    try:
        a.batches = [int(x) for x in parts]
    except ValueError:
        p.error(f"--batch wants sizes separated by commas, not {a.batch!r}")
    if not a.batches or min(a.batches) < 1:
        p.error("--batch wants sizes >= 1")
    a.phases = set(a.phases.split(","))
    if not a.phases <= {"vision", "prefill", "decode", "e2e"}:
        p.error("--phases wants vision,prefill,decode,e2e (any of them)")
    if a.precision is None:
        a.precision = "fp16" if a.device == "cuda" else "fp32"
    if a.repeats < 1 or a.warmup < 0 or a.new_tokens < 1:
        p.error("--repeats and --new-tokens must be >= 1, --warmup >= 0")
    return a


def make_config(name):
    if name == "tiny":
        return Kosmos2Config(text_config=dict(TINY_TEXT), vision_config=dict(TINY_VISION),
                             latent_query_num=64)
    return Kosmos2Config()


@torch.no_grad()
def build_model(args, dtype, device):
    """The model on `device` in `dtype`, weights drawn in place (one allocation)."""
    config = make_config(args.config)
    with torch.device("meta"):
        model = Kosmos2ForConditionalGeneration._from_config(
            config, attn_implementation=args.attn, dtype=dtype)
    model = model.to_empty(device=device).eval()
    gen = torch.Generator(device=device).manual_seed(args.seed)
    # Buffers are not parameters: recompute the two kinds the model has.
    for name, module in model.named_modules():
        if hasattr(module, "position_ids") and isinstance(module.position_ids, torch.Tensor):
            n = module.position_ids.shape[-1]
            module.position_ids.copy_(torch.arange(n, device=device).expand((1, -1)))
        if type(module).__name__ == "Kosmos2TextSinusoidalPositionalEmbedding":
            w = module.get_embedding(module.num_positions + module.offset, module.embedding_dim,
                                     module.padding_idx)
            module.weights = w.to(device=device, dtype=dtype)
    known = ("position_ids", "embed_positions.weights")
    for name, _ in model.named_buffers():
        if not name.endswith(known):
            raise RuntimeError(f"unhandled buffer {name}: this transformers version differs")
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        leaf = name.rsplit(".", 1)[-1]
        is_norm = ("layer_norm" in name or "layernorm" in name or "layrnorm" in name
                   or "inner_attn_ln" in name)
        if leaf == "bias":
            p.normal_(0.0, 0.1, generator=gen)
        elif is_norm:
            p.normal_(1.0, 0.1, generator=gen)
        elif (name.endswith("embed_tokens.weight") or "class_embedding" in name
              or "position_embedding" in name or name.endswith("latent_query")):
            p.normal_(0.0, 1.0, generator=gen)
        elif p.dim() >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(math.prod(p.shape[1:])), generator=gen)
        else:
            raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")
    embed = model.text_model.model.embed_tokens
    if embed.padding_idx is not None:
        embed.weight[embed.padding_idx].zero_()
    if model.text_model.lm_head.weight.data_ptr() != embed.weight.data_ptr():
        model.tie_weights()
    assert model.text_model.lm_head.weight.data_ptr() == embed.weight.data_ptr(), "not tied"
    return model


def prompt(config):
    lq = config.latent_query_num
    ids = [config.text_config.bos_token_id, PROMPT_IMAGE]
    ids += [PROMPT_FIRST_ROW + i for i in range(lq)]
    ids += [PROMPT_IMAGE_END, PROMPT_GROUNDING] + PROMPT_TEXT
    mask = [1 if 2 <= i < 2 + lq else 0 for i in range(len(ids))]
    return ids, mask


# ---- memory ----

def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


# ---- the phases ----

class Bench:
    def __init__(self, model, args, device, batch):
        self.model, self.args, self.device, self.batch = model, args, device, batch
        config = model.config
        ids, mask = prompt(config)
        self.prompt_len = len(ids)
        self.input_ids = torch.tensor([ids] * batch, device=device)
        self.image_mask = torch.tensor([mask] * batch, device=device, dtype=torch.bool)
        self.attention_mask = torch.ones_like(self.input_ids)
        dtype = next(model.parameters()).dtype
        gen = torch.Generator(device="cpu").manual_seed(args.seed)
        side = config.vision_config.image_size
        pixels = torch.rand((batch, 3, side, side), generator=gen) * 3.9 - 1.8
        self.pixels = pixels.to(device=device, dtype=dtype)
        embeds = (torch.rand((batch, config.latent_query_num, config.text_config.embed_dim),
                             generator=gen) - 0.5) * 0.2
        self.embeds = embeds.to(device=device, dtype=dtype)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def encode(self):
        m = self.model
        out = m.vision_model(pixel_values=self.pixels)
        feats = m.vision_model.model.post_layernorm(out[0])
        feats = torch.nn.functional.normalize(feats, dim=-1)
        embeds, _ = m.image_to_text_projection(feats)
        return embeds

    def vision(self):
        self.sync()
        t0 = time.perf_counter()
        self.embeds = self.encode()
        self.sync()
        return time.perf_counter() - t0

    def prefill_decode(self, decode):
        tm = self.model.text_model
        self.sync()
        t0 = time.perf_counter()
        out = tm(input_ids=self.input_ids, attention_mask=self.attention_mask,
                 image_embeds=self.embeds, image_embeds_position_mask=self.image_mask,
                 use_cache=True, logits_to_keep=1)
        self.sync()
        prefill = time.perf_counter() - t0
        if not decode:
            return prefill, -1.0
        cache, logits, mask = out.past_key_values, out.logits, self.attention_mask
        ones = torch.ones((self.batch, 1), dtype=mask.dtype, device=self.device)
        t0 = time.perf_counter()
        for _ in range(self.args.new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, ones], dim=1)
            out = tm(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True,
                     logits_to_keep=1)
            cache, logits = out.past_key_values, out.logits
        self.sync()
        return prefill, time.perf_counter() - t0

    def e2e(self):
        n = self.args.new_tokens
        self.sync()
        t0 = time.perf_counter()
        ids = self.model.generate(pixel_values=self.pixels, input_ids=self.input_ids,
                                  attention_mask=self.attention_mask,
                                  image_embeds_position_mask=self.image_mask,
                                  max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  num_beams=1, no_repeat_ngram_size=3, use_cache=True)
        self.sync()
        elapsed = time.perf_counter() - t0
        if ids.shape[1] != self.prompt_len + n:
            raise RuntimeError(f"generate made {ids.shape[1] - self.prompt_len} tokens, "
                               f"{n} were forced")
        return elapsed


@torch.inference_mode()
def run_batch(model, args, device, batch, log):
    b = Bench(model, args, device, batch)
    per_batch = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = {"vision": [], "prefill": [], "decode": [], "e2e": []}
    want_prefill = bool(args.phases & {"prefill", "decode"})
    for run in range(args.warmup + args.repeats):
        t = {}
        if "vision" in args.phases:
            t["vision"] = b.vision()
        if want_prefill:
            t["prefill"], t["decode"] = b.prefill_decode("decode" in args.phases)
        if "e2e" in args.phases:
            t["e2e"] = b.e2e()
        if log:
            kind = "warm-up" if run < args.warmup else "run"
            k = run + 1 if run < args.warmup else run - args.warmup + 1
            of = args.warmup if run < args.warmup else args.repeats
            print(f"hf: batch {batch} {kind} {k}/{of}: " + " ".join(
                f"{name} {v:.3f} s" for name, v in t.items() if v >= 0), file=sys.stderr,
                flush=True)
        if run >= args.warmup:
            for name, v in t.items():
                times[name].append(v)
    med = {name: (statistics.median(v) if name in args.phases else None)
           for name, v in times.items()}
    rate = {
        "vision": batch / med["vision"] if med["vision"] else None,
        "prefill": batch * b.prompt_len / med["prefill"] if med["prefill"] else None,
        "decode": batch * args.new_tokens / med["decode"] if med["decode"] else None,
        "e2e": batch / med["e2e"] if med["e2e"] else None,
    }
    return {
        "impl": "transformers",
        "config": args.config,
        "params": sum(p.numel() for p in model.parameters()),
        "precision": args.precision,
        "device": args.device,
        "device_name": device_name(device),
        "batch": batch,
        "prompt_tokens": b.prompt_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "vision_images_per_s": rate["vision"],
        "prefill_tokens_per_s": rate["prefill"],
        "decode_tokens_per_s": rate["decode"],
        "e2e_jobs_per_s": rate["e2e"],
        "vision_s": med["vision"],
        "prefill_s": med["prefill"],
        "decode_s": med["decode"],
        "e2e_s": med["e2e"],
        "peak_host_bytes": peak_rss(),
        "peak_host_per_batch": per_batch,
        "peak_device_bytes": (torch.cuda.max_memory_allocated(device)
                              if device.type == "cuda" else None),
        "threads": torch.get_num_threads(),
        "attn": args.attn,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def print_table(rows):
    if not rows:
        return
    r0 = rows[0]
    print(f"transformers {r0['transformers']} (torch {r0['torch']}), config {r0['config']} "
          f"({r0['params']} params), {r0['precision']}, {r0['device']}: {r0['device_name']}, "
          f"{r0['threads']} threads", file=sys.stderr)
    print(f"{'batch':>6} {'vision im/s':>12} {'prefill t/s':>12} {'decode t/s':>12} "
          f"{'e2e jobs/s':>12} {'peak MiB':>12}", file=sys.stderr)
    for r in rows:
        cells = [r[k] for k in ("vision_images_per_s", "prefill_tokens_per_s",
                                "decode_tokens_per_s", "e2e_jobs_per_s")]
        peak = r["peak_device_bytes"] or r["peak_host_bytes"]
        print(f"{r['batch']:>6} " + " ".join(f"{c:12.3f}" if c is not None else f"{'-':>12}"
                                           for c in cells)
              + f" {peak / 2**20:12.0f}" + (" (device)" if r["peak_device_bytes"] else ""),
              file=sys.stderr)


def main(argv):
    args = parse_args(argv)
    log = not args.json
    if args.device == "cuda" and not torch.cuda.is_available():
        print("hf_baseline: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    t0 = time.perf_counter()
    model = build_model(args, dtype, device)
    if log:
        n = sum(p.numel() for p in model.parameters())
        print(f"hf: model {args.config} ready in {time.perf_counter() - t0:.1f} s ({n} parameters, "
              f"{args.precision}, {args.attn}, {torch.get_num_threads()} threads)",
              file=sys.stderr, flush=True)
    rows = []
    batches = list(args.batches)
    i = 0
    while i < len(batches):
        batch = batches[i]
        probing = i >= len(args.batches)
        try:
            row = run_batch(model, args, device, batch, log)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"hf_baseline: batch {batch}: CUDA out of memory"
                  + (" (the previous batch size is the largest that fits)" if probing else ""),
                  file=sys.stderr)
            if not probing:
                print_table(rows) if log else None
                return 1
            break
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()
        if args.batch_max and i == len(batches) - 1:
            batches.append(batch * 2)
        i += 1
    if log:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
