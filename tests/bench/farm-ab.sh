#!/usr/bin/env bash
# Compares two kosmos-broker binaries (a benchmark, never a test): alternating runs of the
# latency load of tests/bench/farm.sh (bench-farm latency: 1,000 jobs/s, 8 echo workers), each
# broker fresh, so that the drift of a shared machine falls on both. Prints one line per run:
# which broker, send -> dispatch p50/p99/max and the broker's CPU in cores.
set -euo pipefail

usage() {
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

usage: tests/bench/farm-ab.sh OLD_BROKER NEW_BROKER [--rounds N] [--seconds S] [--dir DIR]
                              [--bench-farm PATH]
  --rounds N        pairs of runs, old then new (default 3)
  --seconds S       length of each run (default 15)
  --dir DIR         where the brokers keep their databases (default a new /var/tmp folder;
                    /dev/shm measures without the disk)
  --bench-farm P    the load generator (default build/bin/bench-farm)
EOF
}

root=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -ge 1 ] && case "$1" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 2 ] || { usage >&2; exit 2; }
old="$1"; new="$2"; shift 2
rounds=3; seconds=15; dir=""; bf="$root/build/bin/bench-farm"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --bench-farm) bf="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "farm-ab.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for b in "$old" "$new" "$bf"; do
  [ -x "$b" ] || { echo "farm-ab.sh: $b is not an executable" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "farm-ab.sh: python3 is missing" >&2; exit 1; }
made=0
if [ -z "$dir" ]; then dir=$(mktemp -d /var/tmp/kosmos-farm-ab.XXXXXX); made=1; fi
mkdir -p "$dir"
broker_pid=""
cleanup() {
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  rm -rf "$dir/ab-old" "$dir/ab-new"
  [ "$made" -eq 1 ] && rm -rf "$dir"
  return 0
}
trap cleanup EXIT

# Ports below the kernel's ephemeral range. With them inside it, 1,000-worker runs failed now
# and then (3 of 14) with an echo worker reading a worker's Ready message instead of the
# broker's reply; none did in 4 runs below it. The cause is not established (docs/
# benchmarks-farm.md "Notes on the other figures").
low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
port=$((10000 + RANDOM % (low - 10010)))
for _ in $(seq "$rounds"); do
  for which in old new; do
    broker="$old"; [ "$which" = new ] && broker="$new"
    data="$dir/ab-$which"
    rm -rf "$data"; mkdir -p "$data"
    cep="tcp://127.0.0.1:$port" wep="tcp://127.0.0.1:$((port + 1))"
    "$broker" --client-endpoint "$cep" --worker-endpoint "$wep" --db "$data/broker.db" \
      --image-root /srv/images --max-queued 10000000 --max-client-jobs 10000000 \
      2>"$data/broker.log" &
    broker_pid=$!
    for _ in $(seq 100); do
      grep -q '"event":"started"' "$data/broker.log" 2>/dev/null && break
      kill -0 "$broker_pid" 2>/dev/null || { cat "$data/broker.log" >&2; exit 1; }
      sleep 0.1
    done
    sync # the previous run's writeback, off this run's disk
    out=$("$bf" latency --rate 1000 --seconds "$seconds" --clients 1 --workers 8 --credit 64 \
      --client-endpoint "$cep" --worker-endpoint "$wep" --broker-pid "$broker_pid")
    kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
    python3 -c 'import json, sys
d = json.loads(sys.argv[2])
print("%s p50 %.3f ms  p99 %.3f ms  max %.2f ms  broker CPU %.3f cores" % (sys.argv[1],
      d["dispatch_p50_ms"], d["dispatch_p99_ms"], d["dispatch_max_ms"], d["broker_cpu"]))' \
      "$which" "$out"
    port=$((port + 2))
  done
done
