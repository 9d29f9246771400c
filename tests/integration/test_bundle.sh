#!/usr/bin/env bash
# test_bundle: the tarball of ops/bundle.sh runs where only the C runtime and the OpenCL vendor
# driver come from the system (acceptance 5 of the ops/ issue). A bubblewrap sandbox gets an
# empty root; the unpacked bundle is mounted at /opt/kosmos-farm (not where it was made, so
# relocation is tested too) and, read-only from the host, only:
#   stage A: the C runtime (glibc, its loader, libgcc_s) and /bin/sh for the launchers;
#            `kosmos run --device ref` and `--draw` must equal the build tree's output, and the
#            four programs must start;
#   stage B: A + the PoCL driver: its ICD file, libpocl and its library closure, its device
#            modules and data, LLVM's folder, and what PoCL's JIT links kernels with (ld and its
#            libraries, libc.so/libm.so link scripts, the GCC runtime folder);
#            `kosmos run --device cpu` must give the generated_ids of the build tree's run.
# Not a unit test of bundle.sh's internals; it checks the artifact an operator copies.
#
#   tests/integration/test_bundle.sh BUILD_DIR MODEL_DIR IMAGE [IMAGE...]   (first IMAGE found)
#
# KOSMOS_TEST_KEEP=1 keeps the temporary folder (bundle, outputs, logs) for a look.
# Exit 77 (skipped, with the reason) without bwrap, user namespaces, python3 or PoCL; exit 1
# instead with KOSMOS_TEST_REQUIRE_ALL=1.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "$1" && pwd)
model=$(cd "$2" && pwd)
shift 2
image=""
for i in "$@"; do
    if [ -f "$i" ]; then image=$(cd "$(dirname "$i")" && pwd)/$(basename "$i"); break; fi
done
# Where everything must be present (KOSMOS_TEST_REQUIRE_ALL=1, as CI sets), a skip is a failure.
skip() {
    if [ "${KOSMOS_TEST_REQUIRE_ALL:-0}" != 0 ]; then
        echo "test_bundle: FAILED: $* (KOSMOS_TEST_REQUIRE_ALL=1: no skips)" >&2
        exit 1
    fi
    echo "test_bundle: SKIPPED: $*"
    exit 77
}
fail() { echo "test_bundle: FAILED: $*" >&2; exit 1; }
note() { echo "test_bundle: $*"; }
[ -n "$image" ] || fail "none of the images exists: $*"
command -v bwrap >/dev/null || skip "bwrap not found (Debian package bubblewrap)"
command -v python3 >/dev/null || skip "python3 not found"
bwrap --unshare-all --die-with-parent --ro-bind / / --dev /dev --proc /proc true 2>/dev/null ||
    skip "bwrap cannot create namespaces here (user namespaces disabled?): $(bwrap --unshare-all --ro-bind / / true 2>&1 | head -n 1)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kosmos-bundle.XXXXXX")
if [ -n "${KOSMOS_TEST_KEEP:-}" ]; then note "keeping $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi

# The bundle, unpacked from the tarball an operator would copy.
note "ops/bundle.sh --build $build --no-build"
"$repo/ops/bundle.sh" --build "$build" --no-build --out "$tmp/dist" > "$tmp/bundle.log" 2>&1 ||
    { cat "$tmp/bundle.log"; fail "ops/bundle.sh failed"; }
tail -n 1 "$tmp/bundle.log"
tarball=$(ls "$tmp"/dist/kosmos-farm-*.tar.gz)
mkdir "$tmp/unpacked"
tar -C "$tmp/unpacked" -xzf "$tarball"
bundle=$(ls -d "$tmp"/unpacked/kosmos-farm-*)

# ---- what the sandbox may see from the host
c_runtime_name() {
    case $1 in
        ld-linux*|libc.so.*|libm.so.*|libmvec.so.*|libpthread.so.*|libdl.so.*|librt.so.*) return 0 ;;
        libresolv.so.*|libutil.so.*|libanl.so.*|libgcc_s.so.*) return 0 ;;
        *) return 1 ;;
    esac
}
declare -A seen=()
host_binds=()
# expose PATH...: bind each file or folder read-only at its own place; symlinks (also those of
# the folders leading to it) are recreated as symlinks.
expose() {
    local p d f t
    for p in "$@"; do
        [ -e "$p" ] || continue
        d=$(cd "$(dirname "$p")" && pwd -P)
        f=${d%/}/$(basename "$p")
        [ -z "${seen[$f]:-}" ] || continue
        seen[$f]=1
        if [ -L "$f" ]; then
            t=$(readlink "$f")
            host_binds+=(--symlink "$t" "$f")
            case $t in /*) expose "$t" ;; *) expose "$d/$t" ;; esac
        else
            host_binds+=(--ro-bind "$f" "$f")
        fi
    done
}
# closure FILE...: the files and every library ldd resolves for them.
closure() {
    local f
    for f in "$@"; do
        echo "$f"
        ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
    done | sort -u
}
# The top-level links of a merged-/usr system (/lib -> usr/lib, ...).
for l in /bin /sbin /lib /lib32 /lib64 /libx32; do
    if [ -L "$l" ]; then host_binds+=(--symlink "$(readlink "$l")" "$l"); seen[$l]=1; fi
done

# Stage A: the C runtime the bundled programs resolve outside lib/, and /bin/sh.
for p in "$bundle"/libexec/kosmos-farm/*; do
    while read -r soname path; do
        case $path in
            "$bundle"/lib/*) ;;
            /*) c_runtime_name "$soname" || fail "$(basename "$p"): $soname comes from $path, not from the bundle"
                expose "$path" ;;
            *) fail "$(basename "$p"): $soname not found with the bundle's lib/" ;;
        esac
    done < <(LD_LIBRARY_PATH=$bundle/lib ldd "$p" | awk '$2 == "=>" {print $1, $3}')
    expose "$(LD_LIBRARY_PATH=$bundle/lib ldd "$p" | awk '$1 ~ /^\/.*ld-linux/ {print $1}')"
done
while read -r f; do expose "$f"; done < <(closure "$(readlink -f /bin/sh)")
expose /bin/sh
binds_a=("${host_binds[@]}")

# Stage B: the PoCL driver and what its JIT needs.
vendors=${OCL_ICD_VENDORS:-/etc/OpenCL/vendors}
icd=$(grep -l pocl "$vendors"/*.icd 2>/dev/null | head -n 1 || true)
pocl_lib=""
if [ -n "$icd" ]; then
    name=$(head -n 1 "$icd")
    case $name in
        /*) pocl_lib=$name ;;
        *) for d in /usr/lib/*-linux-gnu /usr/lib64 /usr/lib /usr/local/lib /lib/*-linux-gnu; do
               if [ -e "$d/$name" ]; then pocl_lib=$d/$name; break; fi
           done ;;
    esac
fi
have_pocl=0
if [ -n "$pocl_lib" ] && [ -e "$pocl_lib" ]; then
    have_pocl=1
    libdir=$(dirname "$(readlink -f "$pocl_lib")")
    host_binds+=(--ro-bind "$icd" "/etc/OpenCL/vendors/$(basename "$icd")")
    while read -r f; do expose "$f"; done < <(closure "$pocl_lib" "$libdir"/pocl/*.so)
    expose "$libdir/pocl" "$libdir/../../share/pocl" "$libdir/../share/pocl"
    # LLVM's folder (clang's resource headers); PoCL names it in its library.
    llvm=$(grep -ao '/usr/lib/llvm-[0-9]*' "$pocl_lib" | head -n 1 || true)
    [ -z "$llvm" ] || expose "$llvm"
    # PoCL links every kernel into a shared object with the system linker:
    # ld -shared ... -lm -lgcc -lgcc_s -lc, through clang's driver.
    if command -v ld >/dev/null; then
        ld=$(command -v ld)
        expose "$ld"
        while read -r f; do expose "$f"; done < <(closure "$(readlink -f "$ld")")
    fi
    for d in /usr/lib/gcc/*-linux-gnu /usr/lib/gcc/*-linux; do expose "$d"; done
    for s in "$libdir"/libc.so "$libdir"/libm.so; do
        [ -f "$s" ] || continue
        expose "$s"
        # link scripts: GROUP ( /lib/.../libc.so.6 /usr/lib/.../libc_nonshared.a AS_NEEDED (...) )
        while read -r f; do expose "$f"; done < <(grep -o '/[^ )]*\.\(a\|so[.0-9]*\)' "$s" || true)
    done
fi
binds_b=("${host_binds[@]}")
printf '%s %s %s\n' "${binds_a[@]}" > "$tmp/host-entries-a.txt"
printf '%s %s %s\n' "${binds_b[@]}" > "$tmp/host-entries-b.txt"

# ---- runs
# sandbox OUTDIR BINDS... -- COMMAND...: an empty root with the given host files, the bundle at
# /opt/kosmos-farm, the model at /data/model, the image at /data/image, OUTDIR writable at /out.
sandbox() {
    local outdir=$1
    shift
    local binds=()
    while [ "$1" != -- ]; do binds+=("$1"); shift; done
    shift
    bwrap --unshare-all --die-with-parent --new-session --clearenv \
        --tmpfs / --dev /dev --proc /proc --ro-bind /sys /sys --tmpfs /tmp \
        "${binds[@]}" \
        --ro-bind "$bundle" /opt/kosmos-farm \
        --ro-bind "$model" /data/model --ro-bind "$image" /data/image \
        --bind "$outdir" /out --chdir /tmp \
        --setenv PATH /opt/kosmos-farm/bin:/usr/bin:/bin --setenv HOME /tmp \
        --setenv KOSMOS_CACHE_DIR /tmp/kosmos-cache --setenv POCL_CACHE_DIR /tmp/pocl-cache \
        --setenv POCL_MEMORY_LIMIT 2 \
        "$@"
}
ids() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["generated_ids"])' "$1"; }
prompt='<grounding><phrase> a snowman</phrase>'
bboxes='[[0.390625, 0.046875, 0.984375, 0.828125]]'
mkdir -p "$tmp/host" "$tmp/a" "$tmp/b"
export KOSMOS_CACHE_DIR=$tmp/host/kosmos-cache POCL_CACHE_DIR=$tmp/host/pocl-cache POCL_MEMORY_LIMIT=2

note "stage A: C runtime and /bin/sh only ($(wc -l < "$tmp/host-entries-a.txt") host entries)"
"$build/bin/kosmos" run --model "$model" --image "$image" --device ref > "$tmp/host/ref.json"
# The build tree's picture with the bundle's font configuration (the host's adds hinting rules).
FONTCONFIG_FILE=$bundle/etc/fonts/fonts.conf "$build/bin/kosmos" run --model "$model" \
    --image "$image" --device ref --prompt "$prompt" --bboxes "$bboxes" \
    --draw "$tmp/host/draw.png" > "$tmp/host/draw.json"
for p in kosmos kosmos-broker kosmos-worker kosmos-bench; do
    sandbox "$tmp/a" "${binds_a[@]}" -- /opt/kosmos-farm/bin/$p --help > "$tmp/a/$p.help" 2>&1 ||
        { cat "$tmp/a/$p.help"; fail "stage A: $p --help failed in the sandbox"; }
done
sandbox "$tmp/a" "${binds_a[@]}" -- kosmos devices > "$tmp/a/devices.txt" 2>&1 ||
    { cat "$tmp/a/devices.txt"; fail "stage A: kosmos devices failed without any OpenCL driver"; }
sandbox "$tmp/a" "${binds_a[@]}" -- kosmos run --model /data/model --image /data/image \
    --device ref > "$tmp/a/ref.json" 2> "$tmp/a/ref.err" ||
    { cat "$tmp/a/ref.err"; fail "stage A: kosmos run --device ref failed in the sandbox"; }
[ "$(ids "$tmp/a/ref.json")" = "$(ids "$tmp/host/ref.json")" ] ||
    fail "stage A: generated_ids differ: bundle $(ids "$tmp/a/ref.json") vs build $(ids "$tmp/host/ref.json")"
sandbox "$tmp/a" "${binds_a[@]}" -- kosmos run --model /data/model --image /data/image \
    --device ref --prompt "$prompt" --bboxes "$bboxes" --draw /out/draw.png \
    > "$tmp/a/draw.json" 2> "$tmp/a/draw.err" ||
    { cat "$tmp/a/draw.err"; fail "stage A: kosmos run --draw failed in the sandbox"; }
# The same picture means the same font was found: without it, pango drops the labels.
python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["entities"] else 1)' \
    "$tmp/host/draw.json" || fail "stage A: the grounded prompt gave no entity to draw"
cmp -s "$tmp/a/draw.png" "$tmp/host/draw.png" ||
    fail "stage A: --draw picture differs from the build tree's (font not found in the bundle?)"
# And the font did matter: with a configuration that knows no font, the label is left out.
printf '<?xml version="1.0"?>\n<fontconfig></fontconfig>\n' > "$tmp/a/empty.conf"
sandbox "$tmp/a" "${binds_a[@]}" --setenv FONTCONFIG_FILE /out/empty.conf -- kosmos run \
    --model /data/model --image /data/image --device ref --prompt "$prompt" --bboxes "$bboxes" \
    --draw /out/nofont.png > /dev/null 2> "$tmp/a/nofont.err" ||
    { cat "$tmp/a/nofont.err"; fail "stage A: kosmos run --draw without fonts failed"; }
if cmp -s "$tmp/a/draw.png" "$tmp/a/nofont.png"; then
    fail "stage A: the picture is the same without any font: no label was drawn"
fi
note "stage A: ok: 4 programs start, devices without OpenCL, run --device ref and --draw identical"

if [ "$have_pocl" = 0 ]; then
    skip "stage B: no PoCL ICD in $vendors (Debian package pocl-opencl-icd); stage A passed"
fi
note "stage B: + PoCL ($icd -> $pocl_lib, $(wc -l < "$tmp/host-entries-b.txt") host entries in all)"
"$build/bin/kosmos" run --model "$model" --image "$image" --device cpu > "$tmp/host/cpu.json"
sandbox "$tmp/b" "${binds_b[@]}" -- kosmos devices > "$tmp/b/devices.txt" 2>&1 || true
grep -q 'Portable Computing Language' "$tmp/b/devices.txt" ||
    { cat "$tmp/b/devices.txt"; fail "stage B: the bundle sees no PoCL device in the sandbox"; }
sandbox "$tmp/b" "${binds_b[@]}" -- kosmos run --model /data/model --image /data/image \
    --device cpu > "$tmp/b/cpu.json" 2> "$tmp/b/cpu.err" ||
    { cat "$tmp/b/cpu.err"; fail "stage B: kosmos run --device cpu failed in the sandbox"; }
[ "$(ids "$tmp/b/cpu.json")" = "$(ids "$tmp/host/cpu.json")" ] ||
    fail "stage B: generated_ids differ: bundle $(ids "$tmp/b/cpu.json") vs build $(ids "$tmp/host/cpu.json")"
python3 -c 'import json, sys; t = json.load(open(sys.argv[1]))["timings"]; print("test_bundle: stage B: device", t["device"], "programs built", t["programs_built"])' "$tmp/b/cpu.json"
note "stage B: ok: run --device cpu on PoCL gives the build tree's $(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["generated_ids"]))' "$tmp/b/cpu.json") generated_ids"
note "PASSED"
