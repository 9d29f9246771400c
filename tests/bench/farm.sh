#!/usr/bin/env bash
# The farm benchmarks (docs/benchmarks-farm.md): a benchmark, never a test. Each figure is
# measured next to its baseline in the same run, on this machine:
#
#   durable    accepted jobs/s, kosmos-broker vs beanstalkd (binlog fsync on every write)
#   routing    jobs/s through submit, dispatch, result and ack with echo workers, vs
#              beanstalkd put + reserve + delete
#   latency    client send -> dispatch at a worker, p50/p99 at 1,000 jobs/s, vs beanstalkd
#              put -> reserved; the disk's own fdatasync; the broker on tmpfs (no disk)
#   workers    one broker with 1,000 simulated workers vs 8 (registration, idle CPU, jobs/s,
#              latency, memory)
#   e2e        images/s with 1 and 2 real kosmos-worker processes on PoCL (tiny test model,
#              workers up before the clock starts) vs the same images through
#              `kosmos submit --model` (broker and worker in one process, start-up timed)
#
# Every broker and beanstalkd starts fresh, with its files under --dir (default a folder in
# /var/tmp: a real disk, not tmpfs). Results: one JSON object per run in DIR/results.jsonl,
# and a summary table on stdout.
set -euo pipefail

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

usage: tests/bench/farm.sh [--build DIR] [--dir DIR] [--quick] [--only LIST] [--keep]
                          [--e2e-device SPEC]
  --build DIR   the build folder (default: build)
  --dir DIR     where brokers and beanstalkd keep their files (default: a new /var/tmp folder)
  --quick       smaller runs (a minute or two instead of about ten)
  --only LIST   comma-separated subset of durable,routing,latency,workers,e2e
  --keep        keep DIR afterwards
  --e2e-device SPEC   the OpenCL device of the e2e workers, as `kosmos devices` names it
                (default: cpu, PoCL)
durable, routing, latency and workers need the broker, bench-farm and beanstalkd
(ops/install-deps.sh --bench); e2e needs the worker, the kosmos CLI, an OpenCL device (PoCL:
pocl-opencl-icd) and the demo images in tests/data/kosmos2/images.
EOF
}

root=$(cd "$(dirname "$0")/../.." && pwd)
build="$root/build"
dir=""
quick=0
only="durable,routing,latency,workers,e2e"
keep=0
e2e_device=cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$(cd "$2" && pwd); shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --only) only="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --e2e-device) e2e_device="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "farm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

want() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
bin="$build/bin"
needed=()
if want durable || want routing || want latency || want workers; then
  needed+=(kosmos-broker bench-farm)
  command -v beanstalkd >/dev/null || {
    echo "farm.sh: beanstalkd is missing: sudo ops/install-deps.sh --bench" >&2; exit 1; }
fi
if want e2e; then needed+=(kosmos-broker kosmos-worker kosmos); fi
for b in "${needed[@]}"; do
  [ -x "$bin/$b" ] || { echo "farm.sh: $bin/$b is missing (build first)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "farm.sh: python3 is missing" >&2; exit 1; }

if [ -z "$dir" ]; then dir=$(mktemp -d /var/tmp/kosmos-farm-bench.XXXXXX); fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
results="$dir/results.jsonl"
: >"$results"
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$keep" -eq 0 ]; then rm -rf "$dir"; else echo "farm.sh: files kept in $dir" >&2; fi
}
trap cleanup EXIT

if [ "$quick" -eq 1 ]; then
  n_durable=20000; n_route=10000; lat_seconds=5; n_workers_jobs=10000; e2e_copies=1
else
  n_durable=100000; n_route=40000; lat_seconds=20; n_workers_jobs=40000; e2e_copies=4
fi
# Ports below the kernel's ephemeral range. With them inside it, 1,000-worker runs failed now
# and then (3 of 14) with an echo worker reading a worker's Ready message instead of the
# broker's reply; none did in 4 runs below it. The cause is not established (docs/
# benchmarks-farm.md "Notes on the other figures").
low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
port=$((10000 + RANDOM % (low - 10010)))
cep="tcp://127.0.0.1:$port"
wep="tcp://127.0.0.1:$((port + 1))"
bport=$((port + 2))
note() { printf '[farm.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

# A fresh broker with its database in $1; sets broker_pid. Limits are raised so that the
# load decides, not the defaults (100,000 queued, 10,000 per client).
start_broker() {
  local data="$1"; shift
  rm -rf "$data"; mkdir -p "$data"
  "$bin/kosmos-broker" --client-endpoint "$cep" --worker-endpoint "$wep" --db "$data/broker.db" \
    --image-root /srv/images --max-queued 10000000 --max-client-jobs 10000000 \
    --max-workers 1100 "$@" 2>"$data/broker.log" &
  broker_pid=$!
  pids+=("$broker_pid")
  for _ in $(seq 100); do
    grep -q '"event":"started"' "$data/broker.log" 2>/dev/null && return 0
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "farm.sh: the broker did not start:" >&2; cat "$data/broker.log" >&2; exit 1
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

start_beanstalkd() {
  local data="$1"
  rm -rf "$data"; mkdir -p "$data"
  beanstalkd -l 127.0.0.1 -p "$bport" -b "$data" -f 0 -z 1048576 &
  bean_pid=$!
  pids+=("$bean_pid")
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$bport") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "farm.sh: beanstalkd did not start" >&2; exit 1
}

# run NAME COMMAND...: one measurement, its JSON tagged with NAME, appended to results. The
# dirty pages of the parts before (gigabytes, after the durable part) are written out first, so
# that their writeback does not fall on this part's disk.
run() {
  local name="$1"; shift
  sync
  note "$name"
  local out
  if ! out=$("$@"); then echo "farm.sh: $name failed" >&2; exit 1; fi
  python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["run"]=sys.argv[1]; print(json.dumps(d))' \
    "$name" "$out" >>"$results"
}

bf() { "$bin/bench-farm" "$@" --client-endpoint "$cep" --worker-endpoint "$wep" \
  --beanstalk "127.0.0.1:$bport"; }

if want durable; then
  for img in 0 16384; do
    start_broker "$dir/broker"
    run "durable.broker.image$img" bf submit --jobs "$n_durable" --clients 4 --window 256 \
      --image-bytes "$img" --broker-pid "$broker_pid"
    stop_pid "$broker_pid"
    start_beanstalkd "$dir/beanstalkd"
    run "durable.beanstalkd.image$img" bf beanstalk --jobs "$n_durable" --clients 4 --window 256 \
      --image-bytes "$img"
    stop_pid "$bean_pid"
  done
fi

if want routing; then
  start_broker "$dir/broker"
  run routing.broker bf route --jobs "$n_route" --clients 4 --window 256 --workers 8 --credit 64 \
    --broker-pid "$broker_pid"
  stop_pid "$broker_pid"
  start_beanstalkd "$dir/beanstalkd"
  run routing.beanstalkd bf beanstalk-route --jobs "$n_route" --clients 4 --window 256 --workers 32
  stop_pid "$bean_pid"
fi

if want latency; then
  run latency.disk "$bin/bench-farm" fsync --dir "$dir" --rate 1000 --seconds "$lat_seconds"
  start_broker "$dir/broker"
  run latency.broker bf latency --rate 1000 --seconds "$lat_seconds" --clients 1 --workers 8 \
    --credit 64 --broker-pid "$broker_pid"
  stop_pid "$broker_pid"
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    shm=$(mktemp -d /dev/shm/kosmos-farm-bench.XXXXXX)
    start_broker "$shm/broker"
    run latency.broker_tmpfs bf latency --rate 1000 --seconds "$lat_seconds" --clients 1 \
      --workers 8 --credit 64 --broker-pid "$broker_pid"
    stop_pid "$broker_pid"
    rm -rf "$shm"
  fi
  start_beanstalkd "$dir/beanstalkd"
  run latency.beanstalkd bf beanstalk-latency --rate 1000 --seconds "$lat_seconds" --clients 1 \
    --workers 8
  stop_pid "$bean_pid"
fi

if want workers; then
  for w in 8 1000; do
    credit=$([ "$w" -eq 8 ] && echo 64 || echo 1)
    threads=$([ "$w" -eq 8 ] && echo 1 || echo 16) # 62 sockets per zmq_poll: fewer, and the
    # load generator, not the broker, set the latency (4 threads of 250: p50 5 ms, 16: 2.2 ms)
    start_broker "$dir/broker"
    run "workers.$w.route" bf route --jobs "$n_workers_jobs" --clients 4 --window 256 \
      --workers "$w" --credit "$credit" --worker-threads "$threads" --idle-seconds 5 \
      --broker-pid "$broker_pid"
    stop_pid "$broker_pid"
    start_broker "$dir/broker"
    run "workers.$w.latency" bf latency --rate 1000 --seconds "$lat_seconds" --clients 1 \
      --workers "$w" --credit "$credit" --worker-threads "$threads" --broker-pid "$broker_pid"
    stop_pid "$broker_pid"
  done
fi

if want e2e; then
  demo="$root/tests/data/kosmos2/images"
  model="$root/tests/data/tiny-kosmos2"
  if ! "$bin/kosmos" devices --json 2>/dev/null | python3 -c '
import json, sys
spec = sys.argv[1].lower()
devs = json.load(sys.stdin)
def named(d):
    return spec in json.dumps(d).lower() or (spec.isdigit() and int(spec) < len(devs))
sys.exit(0 if any(named(d) for d in devs) else 1)' "$e2e_device"; then
    echo "farm.sh: e2e skipped: no OpenCL device matches '$e2e_device' (kosmos devices)" >&2
  elif [ ! -d "$demo" ]; then
    echo "farm.sh: e2e skipped: no demo images in $demo" >&2
  else
    imgs="$dir/images"
    rm -rf "$imgs"; mkdir -p "$imgs"
    # Copies made distinct by a few trailing bytes (decoders ignore them): identical files
    # would be one job each, as `kosmos submit` deduplicates by content.
    for c in $(seq "$e2e_copies"); do
      for f in "$demo"/*; do
        case "$f" in
          *.jpg|*.jpeg|*.png)
            cp "$f" "$imgs/c$c-$(basename "$f")"
            printf 'kosmos-farm benchmark copy %d' "$c" >>"$imgs/c$c-$(basename "$f")" ;;
        esac
      done
    done
    n_img=$(find "$imgs" -type f | wc -l)
    # PoCL compiles each kernel variant (they differ by batch size) on first use and keeps it
    # in the program cache: one untimed pass over the same images first.
    export XDG_CACHE_HOME="$dir/cache"
    "$bin/kosmos" submit --model "$model" --device "$e2e_device" --quiet -o "$dir/warm.jsonl" "$imgs"
    e2e() { # name, then the kosmos submit arguments
      local name="$1"; shift
      note "$name"
      local t0 t1 ok
      t0=$(date +%s.%N)
      "$bin/kosmos" submit "$@" --quiet -o "$dir/$name.jsonl" "$imgs"
      t1=$(date +%s.%N)
      ok=$(grep -c '"status":"ok"' "$dir/$name.jsonl" || true)
      [ "$ok" -eq "$n_img" ] || { echo "farm.sh: $name: $ok of $n_img images ok" >&2; exit 1; }
      python3 -c 'import json,sys; n=int(sys.argv[2]); s=float(sys.argv[4])-float(sys.argv[3]);
print(json.dumps({"run":sys.argv[1],"images":n,"seconds":round(s,3),"images_per_s":round(n/s,3),
                  "device":sys.argv[5]}))' \
        "$name" "$n_img" "$t0" "$t1" "$e2e_device" >>"$results"
    }
    # In one process: broker, worker and client (its start-up, model load included, is timed).
    e2e e2e.in_process --model "$model" --device "$e2e_device"
    # The farm: workers registered before the clock starts (a farm's workers are up already).
    for n in 1 2; do
      start_broker "$dir/broker"
      wpids=()
      for i in $(seq "$n"); do
        "$bin/kosmos-worker" --broker "$wep" --model "$model" --device "$e2e_device" \
          --name "bench-e2e-$i" 2>"$dir/worker$i.log" &
        wpids+=("$!"); pids+=("$!")
      done
      for _ in $(seq 300); do
        [ "$("$bin/kosmos" status --broker "$cep" --json 2>/dev/null |
          python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("workers") or []))' \
          2>/dev/null)" = "$n" ] && break
        sleep 0.2
      done
      e2e "e2e.farm_${n}_workers" --broker "$cep" --client-id "bench-e2e-$$-$n"
      for p in "${wpids[@]}"; do stop_pid "$p"; done
      stop_pid "$broker_pid"
    done
  fi
fi

python3 - "$results" <<'EOF'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs[d["run"]] = d

def get(name, key):
    return runs.get(name, {}).get(key)

def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"

rows = []
def row(what, ours, base, unit, r):
    rows.append((what, ours, base, unit, r))

for img in (0, 16384):
    a, b = get(f"durable.broker.image{img}", "jobs_per_s"), get(f"durable.beanstalkd.image{img}", "jobs_per_s")
    if a:
        label = "image_uri" if img == 0 else f"{img // 1024} KiB image"
        row(f"durable accepted jobs/s ({label})", f"{a:,.0f}", f"{b:,.0f}", "jobs/s (beanstalkd -f 0)", ratio(a, b))
a, b = get("routing.broker", "jobs_per_s"), get("routing.beanstalkd", "jobs_per_s")
if a:
    row("routing jobs/s (8 echo workers)", f"{a:,.0f}", f"{b:,.0f}", "jobs/s (beanstalkd put+reserve+delete)", ratio(a, b))
for key in ("dispatch_p50_ms", "dispatch_p99_ms"):
    a, b = get("latency.broker", key), get("latency.beanstalkd", key)
    if a:
        row(f"send -> dispatch {key.split('_')[1]} at 1,000 jobs/s", f"{a:.2f} ms", f"{b:.2f} ms", "put -> reserved (beanstalkd)", ratio(a, b))
    t = get("latency.broker_tmpfs", key)
    if t:
        row(f"  same, broker on tmpfs (no disk)", f"{t:.2f} ms", f"{a:.2f} ms", "broker on disk", ratio(t, a))
d50, d99 = get("latency.disk", "p50_ms"), get("latency.disk", "p99_ms")
if d50:
    row("disk: 4 KiB append + fdatasync at 1,000/s", f"p50 {d50:.2f} / p99 {d99:.2f} ms", "", "", "")
for key, label in (("jobs_per_s", "jobs/s"), ("register_s", "registration s"),
                   ("broker_idle_cpu", "idle broker CPU (cores)"), ("broker_memory_bytes", "broker memory bytes")):
    a, b = get("workers.1000.route", key), get("workers.8.route", key)
    if a is not None:
        row(f"1,000 workers: {label}", f"{a:,.4g}", f"{b:,.4g}", "8 workers", ratio(a, b))
for key in ("dispatch_p50_ms", "dispatch_p99_ms"):
    a, b = get("workers.1000.latency", key), get("workers.8.latency", key)
    if a:
        row(f"1,000 workers: dispatch {key.split('_')[1]} at 1,000 jobs/s", f"{a:.2f} ms", f"{b:.2f} ms", "8 workers", ratio(a, b))
one, two, local = (get(n, "images_per_s") for n in ("e2e.farm_1_workers", "e2e.farm_2_workers", "e2e.in_process"))
device = get("e2e.farm_1_workers", "device")
device = "PoCL" if device == "cpu" else f"'{device}'"
if one:
    n_img = get("e2e.farm_1_workers", "images")
    row(f"end to end images/s, 1 worker on {device} (tiny model, {n_img} images)", f"{one:.2f}", f"{local:.2f}",
        "kosmos submit --model (one process, start-up timed)", ratio(one, local))
if two:
    row(f"end to end images/s, 2 workers on {device}", f"{two:.2f}", f"{one:.2f}", "1 worker", ratio(two, one))

print("| measurement | kosmos-farm | baseline | baseline is | ratio |")
print("|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
EOF
