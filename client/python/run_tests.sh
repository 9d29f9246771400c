#!/usr/bin/env bash
# Tests of the Python client: makes a virtual environment, pip-installs kosmos-client with its
# test dependencies (from PyPI; protoc comes from the grpcio-tools build requirement), runs
# pytest, and exits with pytest's status.
#
#   client/python/run_tests.sh [VENV_DIR] [-- PYTEST_ARGS...]   (default PYTEST_ARGS: tests)
#
# VENV_DIR: where to make the venv (e.g. build/python-venv); reused if it exists, the package
# reinstalled. Without it a temporary directory is used and removed afterwards.
# PYTHON: the interpreter to make the venv with (default python3, >= 3.8, with venv and pip).
# Integration tests run when KOSMOS_BROKER_BIN (and KOSMOS_WORKER_BIN) name the binaries
# (see tests/test_integration.py); otherwise they are skipped with the reason, and with
# KOSMOS_TEST_NO_SKIP=1 (as ctest runs it) every skip is a failure.
# The source tree is not written to: the package is built from a copy.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

venv=""
if [[ $# -gt 0 && "$1" != "--" ]]; then
    venv="$1"
    shift
fi
[[ $# -gt 0 && "$1" == "--" ]] && shift

cleanup=""
if [[ -z "$venv" ]]; then
    cleanup="$(mktemp -d "${TMPDIR:-/tmp}/kosmos-client-tests.XXXXXX")"
    venv="$cleanup/venv"
    trap 'rm -rf "$cleanup"' EXIT
fi
mkdir -p "$venv"
venv="$(cd "$venv" && pwd)"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "run_tests.sh: creating venv $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

# Build from a copy so that the tree gets no build/ or *.egg-info; setup.py finds the .proto
# through KOSMOS_PROTO.
stage="$venv/kosmos-client-src"
rm -rf "$stage"
mkdir -p "$stage"
cp "$here/pyproject.toml" "$here/setup.py" "$here/README.md" "$stage/"
cp -r "$here/src" "$stage/src"
rm -f "$stage/src/kosmos_client/kosmos_pb2.py" "$stage/src/kosmos_client/_proto_info.py"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
export KOSMOS_PROTO="$repo/proto/kosmos.proto"

echo "run_tests.sh: pip install kosmos-client[test]"
"$venv/bin/python" -m pip uninstall -q -y kosmos-client >/dev/null 2>&1 || true
"$venv/bin/python" -m pip install -q "$stage[test]"
"$venv/bin/python" -c 'import kosmos_client._proto_info as i, google.protobuf as g, zmq
print("run_tests.sh: kosmos_pb2 by %s; protobuf %s; pyzmq %s (libzmq %s)"
      % (i.PROTOC, g.__version__, zmq.__version__, zmq.zmq_version()))'

cd "$here"
[[ $# -eq 0 ]] && set -- tests
set +e
"$venv/bin/python" -m pytest -p no:cacheprovider -rs "$@"
status=$?
set -e
exit "$status"
