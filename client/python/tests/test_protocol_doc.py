"""docs/protocol.md against a real kosmos-broker (and kosmos-worker): the promises a client
written from the document alone relies on, sent as raw frames where the Python client would
not let a wrong request through.

- §12's worked example, cut out of docs/protocol.md and run as it is written, with the
  demo prompt and a prompt holding a bare <object>;
- §5.1: a model_hash alone is checked like a model_id (NO_SUCH_MODEL until a worker offers it);
  a min_device_memory_bytes no worker meets waits, and a deadline ends it EXPIRED;
- §7: a non-empty delimiter before KOSMOS1 is answered MALFORMED, with the request id;
- §10: the answers to an empty or long idempotency_key, a long label, a long client_id.

Runs with the binaries of test_integration.py (KOSMOS_BROKER_BIN, KOSMOS_WORKER_BIN).
"""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import zmq

import kosmos_client as kc
from kosmos_client import pb
from kosmos_client import kosmos_pb2

from test_integration import REPO, farm, needs_broker, needs_worker  # noqa: F401 (fixture)

VERSION = b"KOSMOS1"
SNOWMAN_JPG = REPO / "client" / "examples" / "images" / "snowman.jpg"
BARE_OBJECT_PROMPT = "<grounding><object><patch_index_0044><patch_index_0863></object> is"


def worked_example():
    """The Python program of docs/protocol.md §12 (the first python block in that section)."""
    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = re.search(r"^## 12\..*?(?=^## 13\.)", text, re.S | re.M)
    assert section, "docs/protocol.md has no section 12"
    block = re.search(r"^```python\n(.*?)^```", section.group(0), re.S | re.M)
    assert block, "section 12 has no python block"
    return block.group(1)


class Raw:
    """A DEALER on the client endpoint that sends exactly the frames it is given."""

    def __init__(self, endpoint):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def exchange(self, frames, timeout_ms=5000):
        """Sends `frames`, returns the ClientReply, or None when nothing came back."""
        self.sock.send_multipart(frames)
        if not self.sock.poll(timeout_ms):
            return None
        reply = self.sock.recv_multipart()
        assert len(reply) == 3 and reply[0] == b"" and reply[1] == VERSION, reply
        return pb.ClientReply.FromString(reply[2])

    def request(self, request, client_id="doc@lab", image=None):
        request.client_id = client_id
        frames = [b"", VERSION, request.SerializeToString()]
        if image is not None:
            frames.append(image)
        return self.exchange(frames)

    def close(self):
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def raw(farm):  # noqa: F811 (the fixture imported above)
    farm.start_broker()
    r = Raw(farm.client_ep)
    yield r
    r.close()


def submit_request(request_id, **job_fields):
    """A ClientRequest submitting a small inline image with one prompt and `job_fields`."""
    req = pb.ClientRequest(request_id=request_id)
    job = req.submit.job
    job.image_data = b"\x89PNG not decoded by the broker"
    job.prompts.add().text = "<grounding> An image of"
    for name, value in job_fields.items():
        if name == "requirements":
            job.requirements.CopyFrom(pb.Requirements(**value))
        else:
            setattr(job, name, value)
    return req


def rejection(reply):
    assert reply is not None, "no reply"
    assert reply.WhichOneof("reply") == "submit", reply
    assert reply.submit.WhichOneof("outcome") == "rejected", reply
    return pb.RejectCode.Name(reply.submit.rejected.code)


# --- §12: the worked example ------------------------------------------------------------------

@needs_worker
def test_worked_example_runs_as_written(farm, tmp_path):  # noqa: F811
    farm.start_broker()
    farm.start_worker()
    (tmp_path / "example.py").write_text(worked_example(), encoding="utf-8")
    # `protoc --python_out=. kosmos.proto`, as §12 says: the module kosmos_client generated.
    shutil.copy(kosmos_pb2.__file__, tmp_path / "kosmos_pb2.py")
    env = dict(os.environ, KOSMOS_BROKER=farm.client_ep, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "example.py", str(SNOWMAN_JPG), "<grounding> An image of",
         BARE_OBJECT_PROMPT],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "job status: STATUS_OK" in out, out
    assert "image 480x480" in out, out
    assert "prompt 0: STATUS_OK" in out and "prompt 1: STATUS_OK" in out, out
    # The bare <object> of prompt 1: named by its patch tags, empty span before any text, and
    # its boxes (the same pair as the snowman's) in pixels of the 480 x 480 image.
    bare = [line for line in out.splitlines()
            if line.strip().startswith("<patch_index_44><patch_index_863>")]
    assert bare, out
    assert "[-1, -1)" in bare[0], bare
    assert "px (187.5 22.5 472.5 397.5)" in bare[0], bare


# --- §5.1: requirements ------------------------------------------------------------------------

@needs_broker
def test_model_hash_alone_needs_a_worker_that_offered_it(raw):
    reply = raw.request(submit_request(1, requirements={"model_hash": "ab" * 32}))
    assert rejection(reply) == "REJECT_CODE_NO_SUCH_MODEL"
    reply = raw.request(submit_request(2, requirements={"model_id": "no/such-model"}))
    assert rejection(reply) == "REJECT_CODE_NO_SUCH_MODEL"


@needs_worker
def test_model_hash_alone_of_a_registered_worker_runs(farm):  # noqa: F811
    farm.start_broker()
    farm.start_worker()
    with farm.client() as c:
        (worker,) = c.status().workers
        png = SNOWMAN_JPG.read_bytes()
        job = c.submit(png, prompt="<grounding> An image of", max_new_tokens=2,
                       model_hash=worker["model_hash"])
        assert c.wait(job, timeout=300).state == "DONE"
        with pytest.raises(kc.RejectedError) as ei:
            c.submit(png, prompt="<grounding> An image of", model_hash="cd" * 32)
        assert ei.value.code_name == "REJECT_CODE_NO_SUCH_MODEL"


@needs_worker
def test_memory_no_worker_has_waits_until_its_deadline(farm):  # noqa: F811
    farm.start_broker()
    farm.start_worker()
    with farm.client() as c:
        png = SNOWMAN_JPG.read_bytes()
        huge = c.submit(png, prompt="<grounding> An image of", max_new_tokens=2,
                        min_device_memory_bytes=1 << 62, deadline=time.time() + 3)
        # The idle worker cannot take it; a job without the requirement runs past it.
        small = c.submit(png, prompt="<grounding> An image of", max_new_tokens=2)
        assert c.wait(small, timeout=300).state == "DONE"
        assert c.fetch(huge).state == "QUEUED"
        assert c.wait(huge, timeout=60).state == "EXPIRED"


# --- §7: framing ------------------------------------------------------------------------------

@needs_broker
def test_non_empty_delimiter_is_malformed_with_its_request_id(raw):
    request = pb.ClientRequest(request_id=77, client_id="doc@lab")
    request.status.include_workers = False
    reply = raw.exchange([b"not empty", VERSION, request.SerializeToString()])
    assert reply is not None, "a non-empty delimiter got no reply"
    assert reply.WhichOneof("reply") == "error"
    assert pb.ErrorCode.Name(reply.error.code) == "ERROR_CODE_MALFORMED"
    assert reply.request_id == 77
    # Not KOSMOS at all: dropped without a reply, and the broker goes on answering.
    assert raw.exchange([b"", b"GET / HTTP/1.0"], timeout_ms=500) is None
    assert raw.request(request).WhichOneof("reply") == "status"


# --- §10: limits ------------------------------------------------------------------------------

@needs_broker
def test_limits_answer_as_documented(raw):
    assert rejection(raw.request(submit_request(1, idempotency_key=""))) == "REJECT_CODE_INVALID"
    long_key = "k" * 129
    assert rejection(raw.request(submit_request(2, idempotency_key=long_key))) == \
        "REJECT_CODE_TOO_LARGE"
    assert rejection(raw.request(submit_request(3, label="l" * 257))) == "REJECT_CODE_TOO_LARGE"
    for request_id, request in ((4, submit_request(4)), (5, pb.ClientRequest(request_id=5))):
        if request_id == 5:
            request.status.include_workers = False
        reply = raw.request(request, client_id="c" * 129)
        assert reply.WhichOneof("reply") == "error", reply
        assert pb.ErrorCode.Name(reply.error.code) == "ERROR_CODE_INVALID_ARGUMENT"
        assert reply.request_id == request_id
    # At the limits themselves, everything is accepted.
    reply = raw.request(submit_request(6, idempotency_key="k" * 128, label="l" * 256),
                        client_id="c" * 128)
    assert reply.submit.WhichOneof("outcome") == "accepted", reply
