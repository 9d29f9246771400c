"""Build hook of kosmos-client: generates kosmos_pb2.py from proto/kosmos.proto.

Nothing generated is committed. At build time this file runs protoc on the repository's
proto/kosmos.proto (or the copy an sdist carries) and puts kosmos_pb2.py into the wheel as
kosmos_client.kosmos_pb2, together with kosmos_client._proto_info (the SHA-256 of the .proto it
came from and the protoc that made it).

Which protoc: the one bundled in grpcio-tools (a build requirement in pyproject.toml, so pip
installs it into the isolated build environment from PyPI), unless KOSMOS_PROTOC names a
protoc binary; without grpcio-tools (e.g. --no-build-isolation) `protoc` from PATH (Debian's
protobuf-compiler) is used.

Which protobuf runtime: the generated code of protoc >= 26 checks at import that the runtime is
at least its own version, which it writes into its header ("# Protobuf Python Version:
X.Y.Z"). This file reads it and declares protobuf>=X.Y.Z,<X+1 (the major version it was made
with and tested against) as the wheel's dependency, so pip installs a runtime that accepts the
code. Older protoc (e.g. Debian's 3.21) writes code that runtimes 4.21 .. 7.x accept:
protobuf>=4.21.

Environment: KOSMOS_PROTO (path of kosmos.proto), KOSMOS_PROTOC (path of a protoc binary).
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
GEN_DIR = HERE / "build" / "kosmos_gen"
PACKAGE = "kosmos_client"


def find_proto():
    candidates = []
    if os.environ.get("KOSMOS_PROTO"):
        candidates.append(Path(os.environ["KOSMOS_PROTO"]))
    candidates.append(HERE.parent.parent / "proto" / "kosmos.proto")  # the repository
    candidates.append(HERE / "proto" / "kosmos.proto")  # an sdist's copy
    for c in candidates:
        if c.is_file():
            return c.resolve()
    sys.exit("kosmos-client: kosmos.proto not found (tried %s); set KOSMOS_PROTO"
             % ", ".join(str(c) for c in candidates))


def run_protoc(proto, out_dir):
    args = ["-I" + str(proto.parent), "--python_out=" + str(out_dir), str(proto)]
    explicit = os.environ.get("KOSMOS_PROTOC")
    if not explicit:
        try:
            from grpc_tools import protoc as grpc_protoc
        except ImportError:
            grpc_protoc = None
        if grpc_protoc is not None:
            try:
                from importlib.metadata import version
                tool = "grpcio-tools " + version("grpcio-tools")
            except Exception:  # pragma: no cover - metadata missing
                tool = "grpcio-tools"
            if grpc_protoc.main(["grpc_tools.protoc"] + args) != 0:
                sys.exit("kosmos-client: grpc_tools.protoc failed on %s" % proto)
            return tool
    protoc = explicit or shutil.which("protoc")
    if not protoc:
        sys.exit("kosmos-client: no protoc: install grpcio-tools (a build requirement) or "
                 "protobuf-compiler, or set KOSMOS_PROTOC")
    ver = subprocess.run([protoc, "--version"], check=True, capture_output=True,
                         text=True).stdout.strip()
    subprocess.run([protoc] + args, check=True)
    return "%s (%s)" % (protoc, ver)


def generate():
    proto = find_proto()
    if GEN_DIR.exists():
        shutil.rmtree(GEN_DIR)
    GEN_DIR.mkdir(parents=True)
    tool = run_protoc(proto, GEN_DIR)
    code = (GEN_DIR / "kosmos_pb2.py").read_text(encoding="utf-8")
    m = re.search(r"^# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", code, re.M)
    if m:
        major = int(m.group(1))
        runtime = "protobuf>=%s.%s.%s,<%d" % (m.group(1), m.group(2), m.group(3), major + 1)
    else:
        runtime = "protobuf>=4.21"
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()
    (GEN_DIR / "_proto_info.py").write_text(
        '"""Written by setup.py at build time: where kosmos_pb2 came from."""\n'
        "PROTO_SHA256 = %r\nPROTOC = %r\nPROTOBUF_REQUIREMENT = %r\n"
        % (digest, tool, runtime), encoding="utf-8")
    return proto, runtime


PROTO, PROTOBUF_REQUIREMENT = generate()
GENERATED = ("kosmos_pb2.py", "_proto_info.py")


class BuildPy(build_py):
    """Puts the generated modules into the package (the source tree in editable mode)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            dest = HERE / "src" / PACKAGE
        else:
            dest = Path(self.build_lib) / PACKAGE
        dest.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(GEN_DIR / name, dest / name)

    def get_outputs(self, include_bytecode=1):
        outs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outs += [str(Path(self.build_lib) / PACKAGE / n) for n in GENERATED]
        return outs


class Sdist(sdist):
    """An sdist carries proto/kosmos.proto, as it has no repository around it."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        dest = Path(base_dir) / "proto"
        dest.mkdir(exist_ok=True)
        shutil.copyfile(PROTO, dest / "kosmos.proto")


setup(
    install_requires=["pyzmq>=22", PROTOBUF_REQUIREMENT],
    cmdclass={"build_py": BuildPy, "sdist": Sdist},
)
