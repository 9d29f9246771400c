#!/usr/bin/env bash
# run_install_test.sh BUILD_DIR SOURCE_DIR WORK_DIR [BROKER WORKER MODEL_DIR IMAGE]
#
# Installs libkosmos from BUILD_DIR into WORK_DIR/prefix, checks what got installed, builds
# client/examples/ground.c against that copy with find_package(kosmos) and with pkg-config
# (shared and static each), runs every binary with --help, and - given a broker, a worker, a
# model and an image - grounds the image through a real farm with both shared binaries.
# Env: CC, CMAKE (default cmake), KOSMOS_TEST_CFLAGS (e.g. sanitizer flags for the consumers).
set -euo pipefail
build=$1 src=$2 work=$3
broker=${4:-} worker=${5:-} model=${6:-} image=${7:-}
cmake=${CMAKE:-cmake}
flags=${KOSMOS_TEST_CFLAGS:-}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix

echo "== cmake --install (components kosmos_lib, kosmos_dev) into $prefix"
for comp in kosmos_lib kosmos_dev; do
  "$cmake" --install "$build" --prefix "$prefix" --component "$comp"
done

echo "== installed tree"
(cd "$prefix" && find . -type f -o -type l | sort)
hdrs=$(cd "$prefix/include" && find . -type f | sort)
[ "$hdrs" = "./kosmos/client.h" ] || fail "installed headers: $hdrs (only kosmos/client.h expected)"
incs=$(grep -E '^\s*#\s*include' "$prefix/include/kosmos/client.h" | sed -E 's/.*[<"](.*)[>"].*/\1/' | sort -u | tr '\n' ' ')
[ "$incs" = "stdbool.h stddef.h stdint.h " ] || fail "client.h includes $incs"
libdir=$(dirname "$(find "$prefix" -name 'libkosmos.so' -print -quit)")
[ -f "$libdir/libkosmos.a" ] || fail "no libkosmos.a beside libkosmos.so"
[ -f "$libdir/pkgconfig/kosmos.pc" ] || fail "no kosmos.pc"
[ -f "$libdir/cmake/kosmos/kosmosConfig.cmake" ] || fail "no kosmosConfig.cmake"
bad=$(nm -D --defined-only "$libdir/libkosmos.so" | awk '$2 ~ /[TDBR]/ {print $3}' | grep -v '^kosmos_[a-z]' || true)
[ -z "$bad" ] || fail "libkosmos.so exports non-API symbols: $bad"
bad=$(nm -g --defined-only "$libdir/libkosmos.a" 2>/dev/null | awk 'NF==3 {print $3}' | grep -v '^kosmos_[a-z]' || true)
[ -z "$bad" ] || fail "libkosmos.a has non-API global symbols: $bad"
echo "exports: $(nm -D --defined-only "$libdir/libkosmos.so" | grep -c ' T kosmos_') functions, nothing else"

export PKG_CONFIG_PATH=$libdir/pkgconfig
echo "== pkg-config: $(pkg-config --modversion kosmos); cflags: $(pkg-config --cflags kosmos); libs: $(pkg-config --libs kosmos)"
echo "   static libs: $(pkg-config --static --libs kosmos)"

example=$src/client/examples/ground.c
for proj in find_package pkg_config; do
  echo "== consumer project: $proj"
  "$cmake" -S "$src/tests/install/$proj" -B "$work/$proj" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER="${CC:-cc}" -DCMAKE_PREFIX_PATH="$prefix" -DKOSMOS_EXAMPLE="$example" \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >"$work/$proj.configure.log" 2>&1 \
    || { cat "$work/$proj.configure.log"; fail "configure $proj"; }
  "$cmake" --build "$work/$proj" >"$work/$proj.build.log" 2>&1 \
    || { cat "$work/$proj.build.log"; fail "build $proj"; }
  for kind in shared static; do
    exe=$work/$proj/ground_$kind
    # (captured first: with pipefail, `prog | grep -q` fails when grep exits before prog)
    help=$("$exe" --help) || fail "$exe --help exited $?"
    grep -q "usage: ground" <<<"$help" || fail "$exe --help: $help"
    "$exe" --version
    deps=$(ldd "$exe")
    if [ "$kind" = static ] && grep -q libkosmos <<<"$deps"; then fail "$exe links libkosmos.so"; fi
    if [ "$kind" = shared ]; then
      grep -q "$libdir/libkosmos.so" <<<"$deps" || fail "$exe does not use the installed libkosmos.so"
    fi
  done
done

if [ -z "$broker" ]; then
  echo "== no broker/worker given: linked and ran --help only"
  echo "PASS"
  exit 0
fi

echo "== real farm: $broker + $worker ($model)"
farm=$work/farm
mkdir -p "$farm"
cep=ipc://$farm/c wep=ipc://$farm/w
"$broker" --client-endpoint "$cep" --worker-endpoint "$wep" --db "$farm/broker.db" \
  --heartbeat-ms 200 --heartbeat-liveness 5 >"$farm/broker.log" 2>&1 &
pids+=($!)
"$worker" --broker "$wep" --model "$model" --device ref --name install/w0 --max-batch 2 \
  --heartbeat-ms 200 --heartbeat-liveness 5 >"$farm/worker.log" 2>&1 &
pids+=($!)
for proj in find_package pkg_config; do
  out=$work/$proj.ground.out
  if ! "$work/$proj/ground_shared" --broker "$cep" --client-id "install-$proj" \
        --max-new-tokens 8 --timeout-ms 240000 "$image" "$image" >"$out" 2>&1; then
    cat "$out"; echo "--- broker log"; tail -20 "$farm/broker.log"; echo "--- worker log"
    tail -20 "$farm/worker.log"; fail "ground against the farm ($proj)"
  fi
  cat "$out"
  [ "$(grep -c ' ok$' "$out" || true)" = 2 ] || fail "expected 2 ok results ($proj)"
  grep -q "worker install/w0" "$out" || fail "result does not name the worker ($proj)"
done
echo "PASS"
