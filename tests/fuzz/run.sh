#!/usr/bin/env bash
# Runs every libFuzzer target of a fuzz build for a fixed time each, one after another, and
# prints a table of executions. Exit status 1 if any target found a crash, leak or timeout.
#
#   CC=clang cmake -S . -B build-fuzz -DKOSMOS_FUZZ=ON -DKOSMOS_TESTS=OFF && cmake --build build-fuzz
#   tests/fuzz/run.sh --build build-fuzz --seconds 60 [--only NAME]
#
# The committed seed corpus (tests/fuzz/corpus/NAME) is read, never written: new inputs go to a
# scratch folder (fuzz-out/NAME, kept for inspection); crash artifacts land in fuzz-out/ too.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="$repo/build-fuzz"
seconds=60
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$(cd "$2" && pwd)"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

mapfile -t targets < <(find "$build/tests/fuzz" -maxdepth 1 -type f -name 'fuzz_*' -perm -u+x | sort)
if [ "${#targets[@]}" -eq 0 ]; then
  echo "run.sh: no fuzz targets in $build/tests/fuzz (build with -DKOSMOS_FUZZ=ON and clang)" >&2
  exit 2
fi

out="$repo/fuzz-out"
mkdir -p "$out"
failed=0
printf '%-36s %12s %10s %s\n' target executions exec/s result
for target in "${targets[@]}"; do
  name="$(basename "$target")"
  [ -n "$only" ] && [ "$name" != "$only" ] && continue
  seeds="$here/corpus/$name"
  work="$out/$name"
  mkdir -p "$work"
  log="$out/$name.log"
  args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
        -artifact_prefix="$out/$name-")
  [ -f "$here/dict/$name.dict" ] && args+=(-dict="$here/dict/$name.dict")
  corpora=("$work")
  [ -d "$seeds" ] && corpora+=("$seeds")
  if "$target" "${args[@]}" "${corpora[@]}" >"$log" 2>&1; then result=ok; else result=FINDING; failed=1; fi
  execs="$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')"
  rate="$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')"
  printf '%-36s %12s %10s %s\n' "$name" "${execs:-?}" "${rate:-?}" "$result"
  if [ "$result" != ok ]; then
    echo "---- $name: last lines of $log"
    tail -n 40 "$log"
  fi
done
exit "$failed"
