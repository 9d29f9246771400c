"""The installed kosmos_pb2 is generated at install time from proto/kosmos.proto (setup.py);
these check that it was made from the .proto in this checkout, i.e. the venv is not stale."""
import hashlib
from pathlib import Path

import pytest

import kosmos_client
from kosmos_client import _proto_info, pb

REPO_PROTO = Path(__file__).resolve().parents[3] / "proto" / "kosmos.proto"


@pytest.mark.skipif(not REPO_PROTO.is_file(), reason="not run from a kosmos-farm checkout")
def test_generated_code_matches_proto_in_checkout():
    digest = hashlib.sha256(REPO_PROTO.read_bytes()).hexdigest()
    assert _proto_info.PROTO_SHA256 == digest, (
        "kosmos_client was built from another proto/kosmos.proto: reinstall it "
        "(pip install client/python)")


def test_schema_is_kosmos_v1():
    assert pb.DESCRIPTOR.package == "kosmos.v1"
    assert pb.DESCRIPTOR.name == "kosmos.proto"
    req = pb.ClientRequest.DESCRIPTOR
    assert [f.name for f in req.oneofs_by_name["request"].fields] == [
        "submit", "fetch", "ack", "cancel", "status"]
    assert req.fields_by_name["submit"].number == 10
    assert pb.ClientReply.DESCRIPTOR.fields_by_name["error"].number == 29
    assert kosmos_client.OUTPUT_DEFAULT == 13


def test_runtime_satisfies_the_declared_requirement():
    import google.protobuf
    req = _proto_info.PROTOBUF_REQUIREMENT  # e.g. "protobuf>=7.35.1,<8"
    lo = req.split(">=")[1].split(",")[0]
    have = tuple(int(x) for x in google.protobuf.__version__.split(".")[:3] if x.isdigit())
    want = tuple(int(x) for x in lo.split("."))
    assert have >= want, (google.protobuf.__version__, req)
