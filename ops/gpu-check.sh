#!/usr/bin/env bash
# The GPU check (issue: measure against PyTorch on the GPU machine), one staged script that
# streams its results to $OUT as it goes, so a stop at any point still tells something:
#   0. gemm (< 3 min): the tensor-core probe's report, today's GEMM (simt) and mma-ptx at the
#      vision shapes of 64 images (m = 16448) in TFLOP/s by OpenCL event time, then
#      test_cl_gemm_mma --gemm mma-ptx (fragment layouts and products on the tensor cores)
#   1. smoke (< 1 min): the carried binaries start, NVIDIA's OpenCL is found, kernel tests pass
#   2. fidelity: transformers builds a full-size random Kosmos-2 with decisive weights and saves
#      it; our fp16 path runs it (large products by $GEMM); max logit error and 64 greedy ids
#      against HF fp32
#   3. profile (< 2 min): kosmos-bench --profile at batch 1 and the largest of $BATCHES: where
#      each phase's device time goes (vision and prefill per pass, decode per step), per kernel
#   4. speed: kosmos-bench and hf_baseline.py side by side at fixed batch sizes, with ratios
#
#   ops/gpu-carry.sh                       # here: build and collect build-gpu/carry
#   OUT=/some/dir ops/gpu-check.sh         # there (the device tool sets $OUT)
#
# Environment: CARRY (default build-gpu/carry), PYTHON (python3), DEVICE (gpu), HF_DEVICE
# (cuda), CONFIG (full), BATCHES (1,8,64,256), REPEATS (1), NEW_TOKENS (64),
# STAGES (gemm,smoke,fidelity,profile,speed), GEMM (mma-ptx: kosmos-fidelity's --gemm; simt for the
# SIMT kernels).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
OUT=${OUT:-$repo/gpu-check-out}
CARRY=${CARRY:-build-gpu/carry}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-gpu}
HF_DEVICE=${HF_DEVICE:-cuda}
CONFIG=${CONFIG:-full}
BATCHES=${BATCHES:-1,8,64,256}
REPEATS=${REPEATS:-1}
NEW_TOKENS=${NEW_TOKENS:-64}
STAGES=${STAGES:-gemm,smoke,fidelity,profile,speed}
GEMM=${GEMM:-mma-ptx}
mkdir -p "$OUT"
summary=$OUT/summary.jsonl
note() { printf '%s %s\n' "$(date +%T)" "$*" | tee -a "$OUT/progress.log"; }
record() { echo "$1" | tee -a "$summary"; }
wants() { case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

export LD_LIBRARY_PATH="$repo/$CARRY/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KOSMOS_CACHE_DIR=${KOSMOS_CACHE_DIR:-/tmp/kosmos-cache}
bin=$repo/$CARRY/bin

# NVIDIA ships libnvidia-opencl without an ICD file on some hosts: register it for the loader.
if [ -z "${OCL_ICD_VENDORS:-}" ]; then
    for lib in /usr/lib/libnvidia-opencl.so.1 /usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1 \
               /usr/local/nvidia/lib64/libnvidia-opencl.so.1; do
        if [ -e "$lib" ]; then
            mkdir -p /tmp/kosmos-icd && echo "$lib" > /tmp/kosmos-icd/nvidia.icd
            export OCL_ICD_VENDORS=/tmp/kosmos-icd
            break
        fi
    done
fi
note "start: OCL_ICD_VENDORS=${OCL_ICD_VENDORS:-unset} device=$DEVICE config=$CONFIG batches=$BATCHES"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true; } \
    > "$OUT/gpu.txt"
status=0

if wants gemm; then
    note "stage 0: gemm"
    # One process measures both paths on the same data; its first lines are the probe reports.
    if timeout 150 "$bin/bench_cl_gemm" --device "$DEVICE" --m 16448 \
           --shapes v_qkv,v_attn,v_up,v_down --no-ref --variants auto --dtypes f16 \
           --gemm simt,mma-ptx --events 10 > "$OUT/gemm-bench.txt" 2> "$OUT/gemm-bench.log"; then
        record "{\"stage\": \"gemm\", \"bench\": true}"
    else
        record "{\"stage\": \"gemm\", \"bench\": false}"
        tail -n 20 "$OUT/gemm-bench.log"
        status=1
    fi
    cat "$OUT/gemm-bench.txt"
    if KOSMOS_TEST_DEVICE=$DEVICE timeout 90 "$bin/test_cl_gemm_mma" --gemm mma-ptx \
           > "$OUT/gemm-test.log" 2>&1; then
        record "{\"stage\": \"gemm\", \"test\": \"test_cl_gemm_mma --gemm mma-ptx\", \"ok\": true}"
    else
        record "{\"stage\": \"gemm\", \"test\": \"test_cl_gemm_mma --gemm mma-ptx\", \"ok\": false}"
        status=1
    fi
    tail -n 30 "$OUT/gemm-test.log"
fi

if wants smoke; then
    note "stage 1: smoke"
    for t in test_opencl test_cl_gemm test_cl_ops test_engine_golden; do
        if KOSMOS_TEST_DEVICE=$DEVICE KOSMOS_GOLDEN_DIR=$repo/tests/golden \
           timeout 60 "$bin/$t" > "$OUT/smoke-$t.log" 2>&1; then
            record "{\"stage\": \"smoke\", \"test\": \"$t\", \"ok\": true}"
        else
            record "{\"stage\": \"smoke\", \"test\": \"$t\", \"ok\": false}"
            tail -n 20 "$OUT/smoke-$t.log"
            status=1
        fi
    done
fi

if wants fidelity; then
    note "stage 2: fidelity"
    model=/tmp/kosmos-fidelity-model
    if "$PYTHON" tests/bench/gpu_fidelity.py make --dir "$model" --config "$CONFIG" \
           --device "$HF_DEVICE" --new-tokens "$NEW_TOKENS" 2> "$OUT/fidelity-make.log" \
           | tee -a "$summary" &&
       "$bin/kosmos-fidelity" --model "$model" --inputs "$model/inputs.safetensors" \
           --out "$OUT/fidelity-ours.safetensors" --device "$DEVICE" --new-tokens "$NEW_TOKENS" \
           --gemm "$GEMM" 2> "$OUT/fidelity-ours.log" &&
       "$PYTHON" tests/bench/gpu_fidelity.py check --dir "$model" \
           --ours "$OUT/fidelity-ours.safetensors" | tee -a "$summary"; then
        note "fidelity: ok"
    else
        note "fidelity: FAILED"; tail -n 20 "$OUT"/fidelity-*.log; status=1
    fi
    rm -rf "$model"
fi

if wants profile; then
    note "stage 3: profile"
    largest=${BATCHES##*,}
    [ "$largest" = max ] && largest=64 # the profile wants a batch that surely fits
    if timeout 170 "$bin/kosmos-bench" --device "$DEVICE" --config "$CONFIG" \
           --batch "1,$largest" --phases vision,prefill,decode --repeats 1 --warmup 1 \
           --new-tokens 16 --profile > "$OUT/profile.txt" 2> "$OUT/profile.log"; then
        note "profile: ok"
    else
        note "profile: FAILED"; tail -n 20 "$OUT/profile.log"; status=1
    fi
fi

if wants speed; then
    note "stage 4: speed"
    PYTHON=$PYTHON KOSMOS_BENCH=$bin/kosmos-bench HF_DEVICE=$HF_DEVICE \
        tests/bench/compare.sh --device "$DEVICE" --config "$CONFIG" --batch "$BATCHES" \
        --repeats "$REPEATS" --warmup 1 --new-tokens "$NEW_TOKENS" --out "$OUT/speed" \
        2>&1 | tee "$OUT/speed.log" || status=1
fi
note "done: status $status"
exit "$status"
