#!/usr/bin/env bash
# Prepares what ops/gpu-check.sh needs on a GPU host that has no development packages: a Release
# build of the slim binaries (no libvips, ZeroMQ or protobuf) and every shared library they use
# beyond the C runtime, in one folder (default build-gpu/carry, < 64 MiB).
#
#   ops/gpu-carry.sh [BUILD_DIR]      # then carry BUILD_DIR/carry to the GPU host
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build-gpu}
carry=$build/carry
targets=(kosmos-bench kosmos-fidelity test_opencl test_cl_gemm test_cl_ops test_engine_golden
         bench_cl_gemm test_cl_gemm_mma)

cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target "${targets[@]}"

rm -rf "$carry"
mkdir -p "$carry/bin" "$carry/lib"
for t in "${targets[@]}"; do
    path=$(find "$build" -path "$carry" -prune -o -type f -name "$t" -perm -u+x -print | head -n 1)
    [ -n "$path" ] || { echo "gpu-carry: $t was not built" >&2; exit 1; }
    cp "$path" "$carry/bin/"
done
# Everything ldd resolves, except the C runtime every Linux host has.
for bin in "$carry"/bin/*; do
    ldd "$bin" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
    case "$(basename "$lib")" in
        libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libgcc_s.so*) ;;
        *) cp -L "$lib" "$carry/lib/" ;;
    esac
done
du -sh "$carry"
ls "$carry/lib"
