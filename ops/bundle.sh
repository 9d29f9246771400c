#!/usr/bin/env bash
# Makes a relocatable tarball of kosmos-farm for hosts without development packages (a GPU box,
# a fresh VM): the four programs, every shared library they load beyond the C runtime (the ICD
# loader libOpenCL included; never a vendor driver such as libnvidia-opencl or libpocl), a copy
# of the kernels for KOSMOS_KERNELS_DIR, DejaVu Sans for `kosmos run --draw`, the systemd units
# and the operations guide. Not a package: nothing is installed, nothing outside the tarball is
# patched. docs/operations.md explains installing it.
#
#   ops/bundle.sh                          # Release build and tarball in build-bundle/dist/
#   ops/bundle.sh --build build --no-build --out /tmp/b     # package an existing build
#
# Layout (ROOT = the unpacked folder, movable anywhere):
#   bin/NAME                 launchers: LD_LIBRARY_PATH=ROOT/lib, FONTCONFIG_FILE, exec libexec
#   libexec/kosmos-farm/     the real executables
#   lib/                     shared libraries (lib/PACKAGES: the Debian package of each)
#   etc/fonts/fonts.conf     fontconfig: the bundled fonts only
#   share/fonts/dejavu/      DejaVuSans.ttf
#   share/kosmos-farm/       kernels/*.cl (embedded anyway), ops/ (units, env examples)
#   share/doc/kosmos-farm/   README, guides, licenses/ of the bundled libraries
#
# Options: --build DIR (default build-bundle), --no-build (use DIR/bin as it is), --out DIR
# (default DIR/dist), --xz (tar.xz instead of tar.gz), --keep (keep the staged folder).
# Environment: JOBS (build parallelism, 2), SOURCE_DATE_EPOCH (timestamps; default the commit's).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$repo/build-bundle
out=
do_build=1
compress=gz
keep=0
while [ $# -gt 0 ]; do
    case $1 in
        --build) build=$2; shift 2 ;;
        --no-build) do_build=0; shift ;;
        --out) out=$2; shift 2 ;;
        --xz) compress=xz; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bundle: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "bundle: $*" >&2; exit 1; }
out=${out:-$build/dist}
programs=(kosmos kosmos-broker kosmos-worker kosmos-bench)

# The C runtime every glibc host has (glibc, its loader, libgcc_s), and OpenCL vendor drivers,
# which belong to the host's GPU driver or PoCL install: never bundled.
is_host_lib() {
    case $1 in
        ld-linux*|libc.so.*|libm.so.*|libmvec.so.*|libpthread.so.*|libdl.so.*|librt.so.*) return 0 ;;
        libresolv.so.*|libutil.so.*|libanl.so.*|libBrokenLocale.so.*|libgcc_s.so.*) return 0 ;;
        libnvidia-*|libcuda.so*|libpocl*|libamdocl*|libigdrcl*|libintelocl*|libMali*) return 0 ;;
        *) return 1 ;;
    esac
}

if [ "$do_build" = 1 ]; then
    cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j"${JOBS:-2}" --target "${programs[@]}"
fi
cache=$build/CMakeCache.txt
[ -f "$cache" ] || die "$build is not a CMake build folder"
grep -q '^KOSMOS_SANITIZE:BOOL=ON' "$cache" && die "$build is a sanitizer build; bundle a Release build"
for p in "${programs[@]}"; do
    [ -x "$build/bin/$p" ] || die "$build/bin/$p is missing (build it, or drop --no-build)"
done
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf # KI_DEFAULT_FONT_FILE, worker/image/draw.h
[ -f "$font" ] || die "$font is missing: apt-get install fonts-dejavu-core"

version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$cache")
commit=$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
dirty=""
if [ "$commit" != unknown ] && [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    dirty=-dirty
fi
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
name=kosmos-farm-${version:-0}-${commit}${dirty}-linux-$(uname -m)
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$out/$name
rm -rf "$stage"
mkdir -p "$stage"/{bin,libexec/kosmos-farm,lib,etc/fonts,share/fonts/dejavu} \
         "$stage"/share/kosmos-farm/{kernels,ops} "$stage"/share/doc/kosmos-farm/licenses

# Programs: stripped copies (Release builds carry no debug info, only symbols).
for p in "${programs[@]}"; do
    install -m 755 "$build/bin/$p" "$stage/libexec/kosmos-farm/$p"
    if command -v strip >/dev/null; then strip --strip-unneeded "$stage/libexec/kosmos-farm/$p"; fi
done

# Libraries: ldd gives the whole closure; each is stored under its soname (the DT_NEEDED name).
declare -A lib_src=()
for p in "${programs[@]}"; do
    if ldd "$stage/libexec/kosmos-farm/$p" | grep -q 'not found'; then
        ldd "$stage/libexec/kosmos-farm/$p" | grep 'not found' >&2
        die "$p: libraries not found on this host"
    fi
    while read -r soname path; do
        is_host_lib "$soname" || lib_src[$soname]=$path
    done < <(ldd "$stage/libexec/kosmos-farm/$p" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')
done
for soname in "${!lib_src[@]}"; do
    install -m 644 "$(readlink -f "${lib_src[$soname]}")" "$stage/lib/$soname"
done
# Check: with lib/ first, every program resolves each library to lib/ or to the host's C runtime.
for p in "${programs[@]}"; do
    LD_LIBRARY_PATH=$stage/lib ldd "$stage/libexec/kosmos-farm/$p" |
        awk '$2 == "=>" {print $1, $3}' | while read -r soname path; do
            case $path in
                "$stage"/lib/*) ;;
                *) is_host_lib "$soname" || die "$p: $soname resolves to $path, not to the bundle" ;;
            esac
        done
done
# Where each library came from (security updates, licenses).
if command -v dpkg-query >/dev/null; then
    declare -A pkgs=()
    for soname in $(printf '%s\n' "${!lib_src[@]}" | sort); do
        real=$(readlink -f "${lib_src[$soname]}")
        pkg=$(dpkg-query -S "$real" 2>/dev/null || dpkg-query -S "${lib_src[$soname]}" 2>/dev/null || true)
        pkg=${pkg%%:*}
        if [ -n "$pkg" ]; then
            pkgs[$pkg]=1
            printf '%s\t%s\t%s\n' "$soname" "$pkg" "$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null)"
        else
            printf '%s\t?\t?\n' "$soname"
        fi
    done > "$stage/lib/PACKAGES"
    pkgs[fonts-dejavu-core]=1
    for pkg in "${!pkgs[@]}"; do
        if [ -f "/usr/share/doc/$pkg/copyright" ]; then
            install -m 644 "/usr/share/doc/$pkg/copyright" "$stage/share/doc/kosmos-farm/licenses/$pkg"
        fi
    done
fi

# Fonts: draw.c asks fontconfig for "DejaVu Sans"; FONTCONFIG_FILE (set by the launchers) points
# at a configuration that knows only the bundled folder, relative to the file itself.
install -m 644 "$font" "$stage/share/fonts/dejavu/DejaVuSans.ttf"
cat > "$stage/etc/fonts/fonts.conf" <<'EOF'
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<!-- kosmos-farm bundle: the fonts of ROOT/share/fonts only (the labels drawn by kosmos run).
     To use the host's fonts as well, add: <include ignore_missing="yes">/etc/fonts/fonts.conf</include>
     (no double hyphen may appear inside an XML comment) -->
<fontconfig>
  <dir prefix="relative">../../share/fonts</dir>
  <cachedir prefix="xdg">fontconfig</cachedir>
</fontconfig>
EOF

# Kernels (embedded in the programs; these copies are for KOSMOS_KERNELS_DIR), ops files, docs.
install -m 644 "$repo"/kernels/*.cl "$repo/kernels/README.md" "$stage/share/kosmos-farm/kernels/"
for f in "$repo"/ops/*.service "$repo"/ops/*.env.example "$repo"/ops/prometheus.yml; do
    [ -f "$f" ] && install -m 644 "$f" "$stage/share/kosmos-farm/ops/"
done
for f in operations.md protocol.md broker.md opencl.md; do
    [ -f "$repo/docs/$f" ] && install -m 644 "$repo/docs/$f" "$stage/share/doc/kosmos-farm/"
done
install -m 644 "$repo/proto/kosmos.proto" "$stage/share/doc/kosmos-farm/"

# Launchers. POSIX sh; they follow symlinks to themselves, so /usr/local/bin/kosmos may link here.
for p in "${programs[@]}"; do
    cat > "$stage/bin/$p" <<EOF
#!/bin/sh
# kosmos-farm bundle launcher: runs libexec/kosmos-farm/$p with the bundle's libraries and fonts.
# The C runtime and the OpenCL driver (/etc/OpenCL/vendors) come from the host.
self=\$0
while [ -h "\$self" ]; do
    link=\$(readlink "\$self") || break
    case \$link in /*) self=\$link ;; *) self=\${self%/*}/\$link ;; esac
done
case \$self in */*) dir=\${self%/*} ;; *) dir=. ;; esac
root=\$(cd "\$dir/.." && pwd -P) || exit 127
LD_LIBRARY_PATH=\$root/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
FONTCONFIG_FILE=\${FONTCONFIG_FILE:-\$root/etc/fonts/fonts.conf}
export LD_LIBRARY_PATH FONTCONFIG_FILE
exec "\$root/libexec/kosmos-farm/$p" "\$@"
EOF
    chmod 755 "$stage/bin/$p"
done

# The newest glibc symbol version anything in the bundle needs = the oldest host it runs on.
glibc=$(cat "$stage"/libexec/kosmos-farm/* "$stage"/lib/*.so* | grep -ao 'GLIBC_2\.[0-9]*' | sort -uV | tail -n 1)
# shellcheck source=/dev/null
os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
cat > "$stage/BUILDINFO" <<EOF
name: $name
version: ${version:-unknown}
commit: $commit$dirty
built: $(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo "$epoch") (SOURCE_DATE_EPOCH)
build host: ${os:-unknown}, $(uname -m)
needs: glibc >= ${glibc#GLIBC_}, libgcc_s, an OpenCL ICD for GPUs/PoCL (or --device ref)
compiler: $(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$cache") ($(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$cache"))
libraries: ${#lib_src[@]}
EOF

cat > "$stage/README" <<EOF
kosmos-farm $version ($commit$dirty), relocatable bundle for Linux $(uname -m)

Runs on any glibc >= ${glibc#GLIBC_} host (Debian 12 or newer, Ubuntu 23.04 or newer) without
development packages: every library the programs use is in lib/, except the C runtime (glibc,
libgcc_s) and the OpenCL driver, which come from the host.

  tar -C /opt -xzf $name.tar.gz            # or .tar.xz with -xJf
  ln -sfn /opt/$name /opt/kosmos-farm      # upgrades switch the link
  /opt/kosmos-farm/bin/kosmos devices      # lists the OpenCL devices the host offers
  /opt/kosmos-farm/bin/kosmos run --model MODEL_DIR --image photo.jpg --device ref

Always start the programs through bin/ (they set LD_LIBRARY_PATH to lib/ and FONTCONFIG_FILE to
etc/fonts/fonts.conf); bin/ may be symlinked or put on PATH. libexec/ holds the real programs.

OpenCL: GPUs need the vendor's driver with its ICD file in /etc/OpenCL/vendors (NVIDIA:
echo libnvidia-opencl.so.1 > /etc/OpenCL/vendors/nvidia.icd if the driver did not add it);
CPUs need PoCL (Debian: pocl-opencl-icd). The bundle ships the ICD loader (libOpenCL.so.1)
and no driver. Without any, --device ref runs the plain-C path.

Kernels are compiled into the programs. share/kosmos-farm/kernels/ holds their sources for
KOSMOS_KERNELS_DIR=<folder> (developers: edit a kernel without rebuilding).

Images: JPEG, PNG, WebP, TIFF, GIF and SVG are built into the bundled libvips; its loadable
modules (HEIF/AVIF, JPEG XL, PDF, OpenSlide, ImageMagick) are not bundled.

Services: share/kosmos-farm/ops/ has the systemd units, environment examples and a Prometheus
example; share/doc/kosmos-farm/operations.md is the operations guide. BUILDINFO says what this
is; lib/PACKAGES lists the Debian package and version of every library (for security updates)
and share/doc/kosmos-farm/licenses/ their copyright files.
EOF

tarball=$out/$name.tar.$compress
rm -f "$tarball"
tar_args=(-C "$out" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -cf - "$name")
if [ "$compress" = xz ]; then
    tar "${tar_args[@]}" | xz -T0 -9 > "$tarball"
else
    tar "${tar_args[@]}" | gzip -n -9 > "$tarball"
fi
(cd "$out" && sha256sum "$(basename "$tarball")" > "$(basename "$tarball").sha256")
unpacked=$(du -sh "$stage" | cut -f1)
[ "$keep" = 1 ] || rm -rf "$stage"
echo "bundle: $tarball"
echo "bundle: $(du -h "$tarball" | cut -f1) packed, $unpacked unpacked, ${#lib_src[@]} libraries, needs glibc >= ${glibc#GLIBC_}"
