#!/usr/bin/env bash
# int8_agreement.sh: --precision int8 against fp16, greedy, over the demo images
# (tests/data/kosmos2/images) and the demo's two prompts, on one checkpoint and device: per
# (image, prompt) the share of the new tokens equal up to the first divergence and position by
# position, and the prefill logits' max abs difference. A benchmark, not a test.
#
#   tests/bench/int8_agreement.sh MODEL_DIR [--device SPEC] [--new-tokens N] [--out FILE]
#
# MODEL_DIR: e.g. the full-size random checkpoint of `tests/bench/gpu_fidelity.py make` with
# sentencepiece.bpe.model copied in. Needs build/bin/kosmos-int8-agreement (KOSMOS_BUILD, default
# build). The JSON lines go to FILE (default int8-agreement.jsonl), a table to stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -ge 1 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
model=$1; shift
device=cpu new_tokens=64 out=int8-agreement.jsonl
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --new-tokens) new_tokens=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "int8_agreement.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
bin=${KOSMOS_BUILD:-$root/build}/bin/kosmos-int8-agreement
[ -x "$bin" ] || { echo "int8_agreement.sh: build $bin first" >&2; exit 2; }
"$bin" --model "$model" --device "$device" --new-tokens "$new_tokens" > "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| image | prompt | equal up to the first divergence | equal position by position | prefill logits max abs diff |")
print("|---|---|---:|---:|---:|")
for r in rows[:-1]:
    n = r["new_tokens"]
    print("| %s | `%s` | %d / %d | %d / %d | %.3g |" % (r["image"], r["prompt"], r["prefix"], n,
                                                      r["same"], n, r["prefill_logits_max_abs_diff"]))
t = rows[-1]
print("| all %d pairs | | %.1f %% | %.1f %% | %d pairs identical |" % (
    t["pairs"], 100 * t["prefix_share"], 100 * t["same_share"], t["identical_pairs"]))
PY
