#!/usr/bin/env bash
# worker_memory.sh: how much host memory a registered kosmos-worker holds. A benchmark, not a
# test: it starts a broker on a scratch database and one worker on MODEL, waits for the
# worker's "registered" log line, then reads the worker's /proc/PID/status and prints one JSON
# line:
#   {"model": ..., "device": ..., "rss_anon_bytes": ..., "rss_file_bytes": ...,
#    "device_bytes": ..., "weight_bytes": ..., "host_anon_bytes": ...}
# device_bytes is what the backend allocated on its device, weight_bytes the weights' part (the
# worker's "started" log line). On a CPU device (PoCL) device buffers live in the worker's own
# anonymous memory, committed when first touched: the weights are (written at start), the KV
# cache mostly not yet, so host_anon_bytes = rss_anon_bytes - weight_bytes there (an upper
# bound of the host's own share); on a GPU it is rss_anon_bytes.
#
#   tests/bench/worker_memory.sh MODEL_DIR [--device SPEC] [--precision fp16|fp32]
#                                [--slots N] [--context N]
#
# Environment: KOSMOS_BUILD (default: build/ under the repository) holds bin/kosmos-broker and
# bin/kosmos-worker. POCL_MEMORY_LIMIT is raised to 24 (GiB) unless set.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${KOSMOS_BUILD:-$repo/build}

if [ $# -lt 1 ] || [ "$1" = --help ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit $(( $# < 1 ? 2 : 0 ))
fi
model=$1; shift
device=cpu extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --device) device=$2; shift 2 ;;
    --precision|--slots|--context) extra+=("$1" "$2"); shift 2 ;;
    *) echo "worker_memory.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -d "$model" ] || { echo "worker_memory.sh: no such model folder: $model" >&2; exit 2; }
export POCL_MEMORY_LIMIT=${POCL_MEMORY_LIMIT:-24}

work=$(mktemp -d)
broker_pid= worker_pid=
cleanup() {
    [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null || true
    [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$build/bin/kosmos-broker" --db "$work/broker.db" --client-endpoint "ipc://$work/client" \
    --worker-endpoint "ipc://$work/worker" --log-level warn 2>"$work/broker.log" &
broker_pid=$!
# A fixed hash: the worker would otherwise hash gigabytes at start, which is not what is measured.
"$build/bin/kosmos-worker" --broker "ipc://$work/worker" --model "$model" --device "$device" \
    --model-hash 00 "${extra[@]}" 2>"$work/worker.log" &
worker_pid=$!

for _ in $(seq 1 3600); do
    grep -q '"registered"' "$work/worker.log" 2>/dev/null && break
    kill -0 "$worker_pid" 2>/dev/null || { cat "$work/worker.log" >&2; exit 1; }
    sleep 0.5
done
grep -q '"registered"' "$work/worker.log" || { echo "worker never registered" >&2; exit 1; }

status_kb() { echo $(( $(awk -v k="$1:" '$1 == k { print $2 }' "/proc/$worker_pid/status") * 1024 )); }
rss_anon=$(status_kb RssAnon)
rss_file=$(status_kb RssFile)
started=$(grep '"started"' "$work/worker.log" | head -1)
device_bytes=$(sed -n 's/.*"device_bytes":\([0-9]*\).*/\1/p' <<<"$started")
weight_bytes=$(sed -n 's/.*"weight_bytes":\([0-9]*\).*/\1/p' <<<"$started")
device_name=$(sed -n 's/.*"device":"\([^"]*\)".*/\1/p' <<<"$started")
device_bytes=${device_bytes:-0} weight_bytes=${weight_bytes:-0}
host_anon=$rss_anon
# A CPU device's buffers are this process's memory; a GPU's are not.
if [ "$device" != ref ] && [ "$device" != gpu ] &&
   ! grep -qi -e nvidia -e amd -e radeon -e "intel(r) .*graphics" <<<"$device_name"; then
    host_anon=$((rss_anon - weight_bytes))
fi
printf '{"model":"%s","device":"%s","rss_anon_bytes":%s,"rss_file_bytes":%s,"device_bytes":%s,"weight_bytes":%s,"host_anon_bytes":%s}\n' \
    "$model" "$device_name" "$rss_anon" "$rss_file" "$device_bytes" "$weight_bytes" "$host_anon"
