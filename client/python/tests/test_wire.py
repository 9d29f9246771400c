"""Unit tests without a broker: message building, framing, parsing, error mapping."""
import datetime as dt
import time

import pytest

import kosmos_client as kc
from kosmos_client import _wire, pb
from kosmos_client.results import (BrokerStatus, Entity, JobResult, JobStatus, message_to_dict)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


def test_version_frame():
    assert kc.VERSION == b"KOSMOS1" and len(kc.VERSION) == 7


def test_byte_level_example_of_protocol_md():
    # docs/protocol.md section 2: a FetchRequest, request id 4, client id alice@lab.
    req = pb.ClientRequest(request_id=4, client_id="alice@lab")
    req.fetch.job_id = "01JDQ7Z9K3M4N5P6Q7R8S9T0VW"
    frames = _wire.encode_request(req)
    assert frames[:2] == [b"", b"KOSMOS1"] and len(frames) == 3
    expected = (bytes.fromhex("0804" "1209") + b"alice@lab" + bytes.fromhex("5a1c" "0a1a")
                + b"01JDQ7Z9K3M4N5P6Q7R8S9T0VW")
    assert frames[2] == expected


def test_submit_attached_image_is_frame_3():
    job, attached = _wire.build_job(PNG, ["<grounding> An image of"])
    assert attached == PNG
    assert job.WhichOneof("image") == "image_attached_size"
    assert job.image_attached_size == len(PNG)
    req = pb.ClientRequest(request_id=1)
    req.submit.job.CopyFrom(job)
    frames = _wire.encode_request(req, attached)
    assert len(frames) == 4 and frames[3] == PNG
    back = pb.ClientRequest.FromString(frames[2])
    assert back.submit.job.prompts[0].text == "<grounding> An image of"
    assert not back.submit.job.HasField("generation")
    assert not back.submit.job.HasField("priority")


def test_frame_3_iff_announced():
    req = pb.ClientRequest(request_id=1)
    req.submit.job.image_uri = "file:///x.png"
    req.submit.job.prompts.add().text = "a"
    with pytest.raises(ValueError):
        _wire.encode_request(req, PNG)
    job, attached = _wire.build_job(PNG, ["a"])
    req2 = pb.ClientRequest(request_id=1)
    req2.submit.job.CopyFrom(job)
    with pytest.raises(ValueError):
        _wire.encode_request(req2)  # announced, not attached
    with pytest.raises(ValueError):
        _wire.encode_request(req2, PNG + b"x")  # wrong size
    with pytest.raises(ValueError):
        _wire.encode_request(pb.ClientRequest(fetch=pb.FetchRequest(job_id="x")))  # id 0


def test_inline_and_uri_and_path(tmp_path):
    job, attached = _wire.build_job(PNG, ["a"], inline=True)
    assert attached is None and job.image_data == PNG
    job, attached = _wire.build_job(image_uri="file:///shared/a.png", prompts=["a"])
    assert attached is None and job.image_uri == "file:///shared/a.png"
    f = tmp_path / "a.png"
    f.write_bytes(PNG)
    for src in (str(f), f, open(f, "rb")):
        job, attached = _wire.build_job(src, ["a"])
        assert attached == PNG
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["a"], image_uri="file:///a")
    with pytest.raises(ValueError):
        _wire.build_job(b"", ["a"])
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["a"], max_image_bytes=10)


def test_generation_presence_and_params():
    job, _ = _wire.build_job(PNG, ["a"], generation=dict(
        max_new_tokens=64, temperature=None, do_sample=False, top_k=0, seed=2**63),
        priority=-5, outputs=kc.OUTPUT_ALL, label="lbl", idempotency_key="k1",
        model_id="microsoft/kosmos-2-patch14-224", min_device_memory_bytes=1 << 30)
    g = job.generation
    assert g.max_new_tokens == 64
    assert g.HasField("do_sample") and g.do_sample is False  # set to false is present
    assert g.HasField("top_k") and g.top_k == 0
    assert not g.HasField("temperature")
    assert g.seed == 2**63
    assert job.priority == -5 and job.HasField("priority")
    assert job.outputs == 15 and job.label == "lbl" and job.idempotency_key == "k1"
    assert job.requirements.model_id == "microsoft/kosmos-2-patch14-224"
    assert job.requirements.min_device_memory_bytes == 1 << 30
    with pytest.raises(TypeError):
        _wire.build_job(PNG, ["a"], generation=dict(beams=2))


def test_deadline_forms():
    t = 1_700_000_000.25
    job, _ = _wire.build_job(PNG, ["a"], deadline=t)
    assert job.deadline_unix_ms == 1_700_000_000_250
    d = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    job, _ = _wire.build_job(PNG, ["a"], deadline=d)
    assert job.deadline_unix_ms == int(d.timestamp() * 1000)
    job, _ = _wire.build_job(PNG, ["a"], deadline=dt.timedelta(seconds=10))
    assert abs(job.deadline_unix_ms - (time.time() + 10) * 1000) < 2000
    with pytest.raises(TypeError):
        _wire.build_job(PNG, ["a"], deadline="tomorrow")


def test_limits():
    with pytest.raises(ValueError):
        _wire.build_job(PNG, [])
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["a"] * 65)
    _wire.build_job(PNG, ["a"] * 64)
    _wire.build_job(PNG, ["é" * 2048])  # 4096 bytes
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["é" * 2048 + "a"])
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["a\0b"])
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["a"], idempotency_key="k" * 129)
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["a"], idempotency_key="")
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["a"], label="l" * 257)
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["a"], priority=101)
    with pytest.raises(ValueError):
        _wire.check_client_id("c" * 129)
    with pytest.raises(ValueError):
        _wire.check_client_id("")
    with pytest.raises(ValueError):
        _wire.check_job_id("x" * 65)
    with pytest.raises(ValueError):
        _wire.check_job_id("jöb")
    req = pb.ClientRequest(request_id=1)
    job, _ = _wire.build_job(b"x" * (1024 * 1024), ["a"], inline=True)
    req.submit.job.CopyFrom(job)
    with pytest.raises(ValueError):
        _wire.encode_request(req, max_message_bytes=1024 * 1024)


def test_bboxes_like_the_reference_processor():
    prompt = "<grounding><phrase> It</phrase><phrase> a fire</phrase> and <phrase> x</phrase>"
    job, _ = _wire.build_job(PNG, [prompt], bboxes=[[
        (0.39, 0.05, 0.98, 0.83),                       # one normalized box
        [(0.1, 0.1, 0.2, 0.2), (5, 1000)],              # two boxes, the second a patch pair
        None,                                           # no box
    ]])
    pbs = job.prompts[0].phrase_boxes
    assert len(pbs) == 3
    assert pbs[0].boxes[0].normalized.x1 == pytest.approx(0.39)
    assert pbs[1].boxes[1].patch.ul == 5 and pbs[1].boxes[1].patch.lr == 1000
    assert len(pbs[2].boxes) == 0
    with pytest.raises(ValueError):
        _wire.build_job(PNG, ["a", "b"], bboxes=[None])  # one entry per prompt
    with pytest.raises(ValueError):
        _wire.make_box((1, 2, 3))
    assert _wire.make_box({"ul": 1, "lr": 2}).patch.lr == 2
    assert _wire.make_box(pb.NormalizedBox(x1=0, y1=0, x2=1, y2=1)).normalized.x2 == 1
    with pytest.raises(ValueError):
        _wire.fill_phrase_boxes(pb.Prompt(), [None] * 65)


def test_decode_reply_framing():
    ok = pb.ClientReply(request_id=7)
    ok.ack.job_id = "J"
    good = [b"", b"KOSMOS1", ok.SerializeToString()]
    assert _wire.decode_reply(good).ack.job_id == "J"
    with pytest.raises(_wire.Unusable):
        _wire.decode_reply(good[1:])                      # no delimiter
    with pytest.raises(_wire.Unusable):
        _wire.decode_reply([b"x"] + good[1:])             # non-empty delimiter
    with pytest.raises(_wire.Unusable):
        _wire.decode_reply(good + [b"img"])               # 4 frames to a client
    with pytest.raises(_wire.Unusable):
        _wire.decode_reply([b"", b"KOSMOS1", b"\xff\xff\xff"])  # does not decode
    with pytest.raises(_wire.Unusable):
        _wire.decode_reply([b"", b"HTTP/1.1", b""])       # not ours
    with pytest.raises(kc.ProtocolVersionError):
        _wire.decode_reply([b"", b"KOSMOS2", b""])        # fatal


@pytest.mark.parametrize("code,cls", [
    (pb.ERROR_CODE_MALFORMED, kc.MalformedRequestError),
    (pb.ERROR_CODE_PROTOCOL_VERSION, kc.ProtocolVersionError),
    (pb.ERROR_CODE_UNKNOWN_REQUEST, kc.UnknownRequestError),
    (pb.ERROR_CODE_NOT_FOUND, kc.NotFoundError),
    (pb.ERROR_CODE_INVALID_STATE, kc.InvalidStateError),
    (pb.ERROR_CODE_INVALID_ARGUMENT, kc.InvalidArgumentError),
    (pb.ERROR_CODE_TOO_LARGE, kc.TooLargeError),
    (pb.ERROR_CODE_INTERNAL, kc.InternalError),
    (pb.ERROR_CODE_UNAVAILABLE, kc.UnavailableError),
    (pb.ERROR_CODE_UNSPECIFIED, kc.BrokerError),
])
def test_error_mapping(code, cls):
    reply = pb.ClientReply(request_id=1)
    reply.error.code = code
    reply.error.message = "why"
    with pytest.raises(cls) as ei:
        _wire.check_reply_kind("fetch", reply)
    assert isinstance(ei.value, kc.KosmosError)
    assert "why" in str(ei.value)
    if cls is not kc.ProtocolVersionError:
        assert ei.value.code == code


def test_unknown_error_code_from_a_newer_broker():
    reply = pb.ClientReply(request_id=1)
    reply.error.message = "new"
    # An error code this schema does not know is an unknown field in proto2: reads as 0.
    data = reply.SerializeToString() + bytes([0xea, 0x01, 0x02, 0x08, 0x63])  # error{code: 99}
    parsed = pb.ClientReply.FromString(data)
    with pytest.raises(kc.BrokerError) as ei:
        _wire.check_reply_kind("fetch", parsed)
    assert ei.value.code == 0


def test_reply_kind_mismatch():
    reply = pb.ClientReply(request_id=1)
    reply.ack.job_id = "J"
    with pytest.raises(kc.ProtocolError):
        _wire.check_reply_kind("fetch", reply)
    assert _wire.check_reply_kind("ack", reply).job_id == "J"


def make_result():
    r = pb.Result(job_id="J1", attempt=1, status=pb.STATUS_OK, image_width=1024,
                  image_height=1024, worker_name="w0", device_name="gpu", label="lbl")
    p = r.prompts.add(prompt_index=0, status=pb.STATUS_OK,
                      text="An image of a snowman warming himself by a fire.",
                      raw_text="<grounding> An image of<phrase> a snowman</phrase>...",
                      generated_ids=[10, 20, 2], seed=5)
    p.timings.decode_ms = 12.5
    p.timings.new_tokens = 3
    e = p.entities.add(phrase="a snowman", start_cp=12, end_cp=21, start_byte=12, end_byte=21)
    b = e.boxes.add()
    b.box.x1, b.box.y1, b.box.x2, b.box.y2 = 0.390625, 0.046875, 0.984375, 0.828125
    b.patch.ul, b.patch.lr = 44, 863
    e.boxes_px.add(x1=400.0, y1=48.0, x2=1008.0, y2=848.0)
    e2 = p.entities.add(phrase="a fire", start_cp=41, end_cp=47, start_byte=41, end_byte=47)
    e2.boxes.add().box.x1 = 0.17
    e2.boxes_px.add(x1=176.0)
    return r


def test_result_parsing():
    f = pb.FetchReply(job_id="J1", state=pb.JOB_STATE_DONE, attempt=1, submitted_unix_ms=5)
    f.result.CopyFrom(make_result())
    wire = pb.FetchReply.FromString(f.SerializeToString())
    st = JobStatus.from_proto(wire)
    assert st.state == "DONE" and st.terminal and st.queue_position is None
    r = st.result
    assert isinstance(r, JobResult) and r.ok and r.status == "OK"
    assert r.text == "An image of a snowman warming himself by a fire."
    phrase, (start, end), boxes = r.entities[0]
    assert (phrase, start, end) == ("a snowman", 12, 21)
    assert r.text[start:end] == phrase
    assert boxes[0] == kc.Box(0.390625, 0.046875, 0.984375, 0.828125)
    assert r.entities[0].patches == ((44, 863),)
    assert r.entities[0].boxes_px[0].x2 == 1008.0
    assert r.boxes_px[0] == ("a snowman", kc.Box(400.0, 48.0, 1008.0, 848.0))
    assert r.generated_ids == [10, 20, 2]
    assert r.timings == {"decode_ms": 12.5, "new_tokens": 3}
    assert r.raw.startswith("<grounding>")
    assert r.prompts[0].seed == 5
    assert (r.image_width, r.worker_name, r.label) == (1024, "w0", "lbl")


def test_result_failed_and_unset_outputs():
    r = pb.Result(job_id="J", status=pb.STATUS_FAILED, retriable=False, message="bad image")
    r.prompts.add(prompt_index=0, status=pb.STATUS_FAILED, message="bad image")
    jr = JobResult.from_proto(r)
    assert not jr.ok and jr.status == "FAILED" and jr.prompts[0].status == "FAILED"
    assert jr.raw_text is None and jr.timings is None and jr.generated_ids == []
    queued = JobStatus.from_proto(pb.FetchReply(job_id="J", state=pb.JOB_STATE_QUEUED,
                                                queue_position=0))
    assert queued.queue_position == 0 and not queued.terminal and queued.result is None


def test_status_parsing():
    s = pb.StatusReply(broker_version="1.0", broker_instance=9, total_done=3,
                       jobs_per_second=0.5)
    s.queue.add(state=pb.JOB_STATE_QUEUED, count=4)
    w = s.workers.add(worker_name="w0", credit=2)
    w.device.name = "gpu"
    bs = BrokerStatus.from_proto(s)
    assert bs.queue == {"QUEUED": 4}
    assert bs.totals["done"] == 3
    assert bs.workers == [{"worker_name": "w0", "device": {"name": "gpu"}, "credit": 2}]
    assert message_to_dict(pb.StateCount(state=pb.JOB_STATE_DONE, count=1)) == {
        "state": "JOB_STATE_DONE", "count": 1}


def test_entity_is_a_dataclass_that_unpacks_like_the_reference():
    e = Entity("a", (0, 1), (kc.Box(0, 0, 1, 1),))
    assert list(e) == ["a", (0, 1), [kc.Box(0, 0, 1, 1)]]
