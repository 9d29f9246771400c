#!/usr/bin/env bash
# compare.sh: the engine against transformers on the same shapes, back to back, with ratios.
# A benchmark, never a test. Runs `kosmos-bench` (our engine) and then hf_baseline.py (PyTorch)
# at the same batch sizes, prompt length (71) and forced new tokens, and prints both sets of
# figures and ours/HF for each, after the machine and device information.
#
#   tests/bench/compare.sh [--device ref|cpu|gpu|SPEC] [--batch 1,8] [--config full|tiny]
#                          [--repeats N] [--warmup N] [--new-tokens N] [--phases LIST]
#                          [--precision fp16|fp32] [--hf-threads N] [--out DIR]
#
#   --device     ours: the --device spec of kosmos-bench (default cpu: the first OpenCL CPU
#                device, e.g. PoCL). The baseline runs on the CPU in fp32 (torch, every core)
#                for ref/cpu/other specs, on CUDA in fp16 with sdpa for gpu.
#   --batch      batch sizes for both (default 1,8); a final 'max' makes each side double the
#                last size until it runs out of memory (GPU)
#   --precision  our weight storage (default fp16; arithmetic is f32 either way)
#   --hf-threads torch CPU threads of the baseline (default: every core; on a shared machine
#                1 may be steadier: torch's threads wait for each other on a busy core)
#   --out DIR    keep the JSON lines there (ours.jsonl, hf.jsonl, ratios.txt)
#
# Environment:
#   PYTHON        the Python with torch + transformers 5.17 (default /work/venv/bin/python,
#                 else python3)
#   KOSMOS_BENCH  the kosmos-bench binary (default: the first of build-bench/, build-rel/,
#                 build/ under the repository that has bin/kosmos-bench)
#   HF_DEVICE     override the baseline's device (cpu or cuda)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

device=cpu batch=1,8 config=full repeats=3 warmup=1 new_tokens=64 phases=vision,prefill,decode,e2e
precision=fp16 out= hf_threads=
while [ $# -gt 0 ]; do
    case "$1" in
    --device) device=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --new-tokens) new_tokens=$2; shift 2 ;;
    --phases) phases=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --hf-threads) hf_threads=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "${PYTHON:-}" ]; then
    if [ -x /work/venv/bin/python ]; then PYTHON=/work/venv/bin/python; else PYTHON=python3; fi
fi
if [ -z "${KOSMOS_BENCH:-}" ]; then
    for d in build-bench build-rel build; do
        if [ -x "$repo/$d/bin/kosmos-bench" ]; then KOSMOS_BENCH=$repo/$d/bin/kosmos-bench; break; fi
    done
fi
if [ -z "${KOSMOS_BENCH:-}" ] || [ ! -x "$KOSMOS_BENCH" ]; then
    echo "compare.sh: no kosmos-bench binary; build it (cmake --build BUILD --target kosmos-bench)" \
         "or set KOSMOS_BENCH" >&2
    exit 2
fi
hf_device=${HF_DEVICE:-cpu}
[ "$device" = gpu ] && [ -z "${HF_DEVICE:-}" ] && hf_device=cuda

if [ -n "$out" ]; then mkdir -p "$out"; dir=$out; else dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT; fi

echo "== machine"
echo "host: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')," \
     "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, load $(cut -d' ' -f1-3 /proc/loadavg)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu: /'
fi
if command -v clinfo >/dev/null 2>&1; then
    clinfo -l 2>/dev/null | sed 's/^/opencl: /' || true
fi
"$PYTHON" -c 'import torch, transformers; print("python:", torch.__version__, "torch,", transformers.__version__, "transformers")'
echo "ours: $KOSMOS_BENCH --device $device --precision $precision; baseline: $hf_device"
echo "shapes: config $config, batch $batch, prompt 71 tokens, $new_tokens forced new tokens," \
     "median of $repeats after $warmup warm-up"
echo

common=(--config "$config" --batch "$batch" --repeats "$repeats" --warmup "$warmup"
        --new-tokens "$new_tokens" --phases "$phases")
echo "== ours (kosmos-bench)" >&2
"$KOSMOS_BENCH" "${common[@]}" --device "$device" --precision "$precision" > "$dir/ours.jsonl" || true
echo "== baseline (transformers)" >&2
hf_extra=()
[ -n "$hf_threads" ] && hf_extra=(--threads "$hf_threads")
"$PYTHON" "$here/hf_baseline.py" "${common[@]}" --device "$hf_device" "${hf_extra[@]}" > "$dir/hf.jsonl" || true

"$PYTHON" - "$dir/ours.jsonl" "$dir/hf.jsonl" <<'EOF' | tee "$dir/ratios.txt"
import json, sys

def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                rows[r["batch"]] = r
    return rows

ours, hf = load(sys.argv[1]), load(sys.argv[2])
figures = [("vision_images_per_s", "vision images/s"), ("prefill_tokens_per_s", "prefill tokens/s"),
           ("decode_tokens_per_s", "decode tokens/s"), ("e2e_jobs_per_s", "e2e jobs/s")]
for name, rows in (("ours", ours), ("transformers", hf)):
    if rows:
        r = next(iter(rows.values()))
        extra = f", {r['threads']} threads" if r.get("threads") else ""
        print(f"{name}: {r['device_name']} ({r['device']}), {r['precision']}, "
              f"{r['params']} params{extra}")
print()
print(f"{'batch':>5}  {'figure':<17} {'ours':>12} {'transformers':>13} {'ours/HF':>8}")
def fmt(v):
    return f"{v:12.3f}" if v is not None else f"{'-':>12}"
for b in sorted(set(ours) | set(hf)):
    o, h = ours.get(b, {}), hf.get(b, {})
    for key, label in figures:
        ov, hv = o.get(key), h.get(key)
        ratio = f"{ov / hv:8.2f}" if ov and hv else f"{'-':>8}"
        print(f"{b:>5}  {label:<17} {fmt(ov)} {hv and f'{hv:13.3f}' or f'{chr(45):>13}'} {ratio}")
    for key, label in (("peak_host_bytes", "peak host MiB"), ("peak_device_bytes", "peak device MiB")):
        om = o.get(key) / 2**20 if o.get(key) else None
        hm = h.get(key) / 2**20 if h.get(key) else None
        if om is None and hm is None:
            continue
        ratio = f"{om / hm:8.2f}" if om and hm else f"{'-':>8}"
        print(f"{b:>5}  {label:<17} {fmt(om)} {hm and f'{hm:13.0f}' or f'{chr(45):>13}'} {ratio}")
missing = sorted(set(ours) ^ set(hf))
if missing:
    print(f"\nbatch sizes measured on one side only: {missing} (out of memory or a failure; "
          "see the messages above)")
EOF
