#!/usr/bin/env bash
# Installs every Debian package kosmos-farm needs to build, test and fuzz.
# Idempotent and non-interactive: run it as root (or with sudo) on Debian 12.
# What each package is for is written in docs/dependencies.md.
#   --bench   also the benchmarks' baselines (beanstalkd for tests/bench/farm.sh); CI does not
#             need them, and Debian's beanstalkd package would enable a system service.
set -euo pipefail

bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-deps: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

packages=(
  # toolchain
  build-essential cmake pkg-config git ca-certificates clang libclang-rt-14-dev llvm
  # messaging and wire format
  libzmq3-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  # compute
  ocl-icd-opencl-dev opencl-c-headers opencl-clhpp-headers pocl-opencl-icd clinfo libclblast-dev
  # images, storage, JSON
  libvips-dev libsqlite3-dev libjansson-dev libssl-dev fonts-dejavu-core
  # the broker's optional Prometheus endpoint (kosmos-broker --metrics)
  libmicrohttpd-dev
  # tests
  libcmocka-dev python3 python3-venv bubblewrap
  # the C layout (ops/format.sh, CI's first check): version 14 exactly
  clang-format-14
)

if [ "$bench" -eq 1 ]; then
  packages+=(beanstalkd)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"
