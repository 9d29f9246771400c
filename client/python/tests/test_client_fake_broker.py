"""The Client against a scripted broker (tests/conftest.py FakeBroker): real ZeroMQ sockets over
ipc://, no kosmos-broker needed. Checks framing on the wire, resends, error mapping."""
import os
import threading
import time

import pytest
import zmq

import kosmos_client as kc
from kosmos_client import pb

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)


def accepted(broker, req, job_id="J1", duplicate=False):
    r = pb.SubmitReply()
    r.accepted.job_id = job_id
    r.accepted.duplicate = duplicate
    return broker.reply(req, submit=r)


def done_fetch(job_id="J1", state=pb.JOB_STATE_DONE, status=pb.STATUS_OK):
    f = pb.FetchReply(job_id=job_id, state=state, attempt=1)
    r = f.result
    r.job_id, r.status, r.attempt = job_id, status, 1
    p = r.prompts.add(prompt_index=0, status=status, text="An image of a snowman.")
    e = p.entities.add(phrase="a snowman", start_cp=12, end_cp=21, start_byte=12, end_byte=21)
    e.boxes.add().box.CopyFrom(pb.NormalizedBox(x1=0.39, y1=0.05, x2=0.98, y2=0.83))
    e.boxes_px.add(x1=400, y1=48, x2=1008, y2=848)
    p.generated_ids.extend([5, 6, 2])
    p.timings.decode_ms = 1.5
    p.raw_text = "<grounding> An image of<phrase> a snowman</phrase>"
    return f


class Script:
    """A handler that answers by request kind with the functions given."""

    def __init__(self, **answers):
        self.answers = answers
        self.broker = None

    def __call__(self, frames, req):
        kind = req.WhichOneof("request") if req is not None else None
        fn = self.answers.get(kind)
        return fn(self.broker, req, frames) if fn else None


def start(fake_broker, **answers):
    script = Script(**answers)
    broker = fake_broker(script)
    script.broker = broker
    return broker


def client(broker, **kw):
    kw.setdefault("timeout", 0.5)
    kw.setdefault("retries", 1)
    return kc.Client(broker.endpoint, client_id="tester@lab", **kw)


def test_submit_frames_on_the_wire(fake_broker):
    b = start(fake_broker, submit=lambda b, req, f: [accepted(b, req)])
    with client(b) as c:
        sub = c.submit_job(PNG, prompt="<grounding> An image of", max_new_tokens=32,
                           priority=3, idempotency_key="key-1", label="x")
    assert sub == kc.Submission("J1", False, "key-1")
    rid, frames, req = b.received[0]
    assert len(frames) == 4 and frames[0] == b"" and frames[1] == b"KOSMOS1"
    assert frames[3] == PNG
    assert req.request_id != 0 and req.client_id == "tester@lab"
    job = req.submit.job
    assert job.image_attached_size == len(PNG)
    assert job.idempotency_key == "key-1" and job.priority == 3 and job.label == "x"
    assert job.generation.max_new_tokens == 32
    assert not job.generation.HasField("num_beams")
    assert not job.HasField("outputs")


def test_submit_without_key_gets_a_random_one(fake_broker):
    b = start(fake_broker, submit=lambda b, req, f: [accepted(b, req)])
    with client(b) as c:
        k1 = c.submit_job(PNG, prompt="a").idempotency_key
        k2 = c.submit_job(PNG, prompt="a").idempotency_key
    assert k1 and k2 and k1 != k2
    assert [r[2].submit.job.idempotency_key for r in b.received] == [k1, k2]


def test_submit_outcomes_raise(fake_broker):
    outcomes = iter(["busy", "conflict", "rejected"])

    def submit(b, req, f):
        r = pb.SubmitReply()
        which = next(outcomes)
        if which == "busy":
            r.busy.retry_after_ms, r.busy.queue_depth = 250, 100000
        elif which == "conflict":
            r.conflict.job_id = "J0"
        else:
            r.rejected.code = pb.REJECT_CODE_TOO_LARGE
            r.rejected.reason = "65 prompts"
        return [b.reply(req, submit=r)]

    b = start(fake_broker, submit=submit)
    with client(b) as c:
        with pytest.raises(kc.BusyError) as ei:
            c.submit(PNG, prompt="a", idempotency_key="k")
        assert ei.value.retry_after == 0.25 and ei.value.queue_depth == 100000
        assert ei.value.idempotency_key == "k"
        with pytest.raises(kc.ConflictError) as ei:
            c.submit(PNG, prompt="a", idempotency_key="k")
        assert ei.value.job_id == "J0"
        with pytest.raises(kc.RejectedError) as ei:
            c.submit(PNG, prompt="a")
        assert ei.value.code_name == "REJECT_CODE_TOO_LARGE" and "65" in ei.value.reason
        assert isinstance(ei.value, kc.SubmitError)


def test_busy_then_accepted_with_busy_timeout(fake_broker):
    calls = []

    def submit(b, req, f):
        calls.append(req.submit.job.idempotency_key)
        r = pb.SubmitReply()
        if len(calls) < 3:
            r.busy.retry_after_ms = 20
        else:
            r.accepted.job_id = "J9"
        return [b.reply(req, submit=r)]

    b = start(fake_broker, submit=submit)
    with client(b) as c:
        assert c.submit(PNG, prompt="a", busy_timeout=5) == "J9"
    assert len(calls) == 3 and len(set(calls)) == 1  # the same key every time


def test_timeout_resends_same_request_on_a_new_socket(fake_broker):
    seen = []

    def fetch(b, req, f):
        seen.append(req.request_id)
        if len(seen) == 1:
            return None  # lost
        return [b.reply(req, fetch=pb.FetchReply(job_id="J1", state=pb.JOB_STATE_QUEUED))]

    b = start(fake_broker, fetch=fetch)
    with client(b, timeout=0.3, retries=2) as c:
        st = c.fetch("J1")
    assert st.state == "QUEUED"
    assert len(seen) == 2 and seen[0] == seen[1]
    assert b.received[0][0] != b.received[1][0]  # a new routing id: a new socket


def test_no_reply_at_all_raises_timeout(fake_broker):
    b = start(fake_broker)
    with client(b, timeout=0.2, retries=1) as c:
        t0 = time.monotonic()
        with pytest.raises(kc.KosmosTimeout):
            c.status()
        assert time.monotonic() - t0 < 3
    assert len(b.received) == 2
    assert isinstance(kc.KosmosTimeout("x"), TimeoutError)


def test_late_and_foreign_replies_are_ignored(fake_broker):
    def ack(b, req, f):
        late = pb.ClientReply(request_id=req.request_id + 1000)
        late.ack.job_id = "OTHER"
        return [
            [b"", b"KOSMOS1", late.SerializeToString()],   # someone else's request id
            [b"", b"KOSMOS1", b"\xff\xff"],                # does not decode
            [b"", b"KOSMOS1"],                             # too few frames
            [b"x", b"KOSMOS1", b""],                       # bad delimiter
            b.reply(req, ack=pb.AckReply(job_id=req.ack.job_id, state=pb.JOB_STATE_ACKED)),
        ]

    b = start(fake_broker, ack=ack)
    with client(b) as c:
        assert c.ack("J1") == "ACKED"


def test_other_version_frame_is_fatal(fake_broker):
    def status(b, req, f):
        return [[b"", b"KOSMOS2", b""]]

    b = start(fake_broker, status=status)
    with client(b, retries=3) as c:
        with pytest.raises(kc.ProtocolVersionError):
            c.status()
    assert len(b.received) == 1  # not retried


def test_request_id_zero_error_is_ours(fake_broker):
    def status(b, req, f):
        r = pb.ClientReply(request_id=0)
        r.error.code = pb.ERROR_CODE_MALFORMED
        r.error.message = "frame 2 did not decode"
        return [r]

    b = start(fake_broker, status=status)
    with client(b) as c:
        with pytest.raises(kc.MalformedRequestError):
            c.status()


def test_error_replies_map_to_exceptions(fake_broker):
    def err(code):
        def fn(b, req, f):
            r = b.reply(req)
            r.error.code = code
            r.error.message = "m"
            return [r]
        return fn

    b = start(fake_broker, fetch=err(pb.ERROR_CODE_NOT_FOUND),
              ack=err(pb.ERROR_CODE_INVALID_STATE), cancel=err(pb.ERROR_CODE_INVALID_ARGUMENT))
    with client(b) as c:
        with pytest.raises(kc.NotFoundError):
            c.fetch("J1")
        with pytest.raises(kc.InvalidStateError):
            c.ack("J1")
        with pytest.raises(kc.InvalidArgumentError):
            c.cancel("J1")


def test_unavailable_is_retried(fake_broker):
    n = []

    def status(b, req, f):
        n.append(req.request_id)
        r = b.reply(req)
        if len(n) == 1:
            r.error.code = pb.ERROR_CODE_UNAVAILABLE
        else:
            r.status.broker_version = "v"
        return [r]

    b = start(fake_broker, status=status)
    with client(b, retries=2) as c:
        assert c.status().broker_version == "v"
    assert len(n) == 2 and n[0] == n[1]

    b2 = start(fake_broker, status=lambda b, req, f: [b.reply(req, error=pb.ErrorReply(
        code=pb.ERROR_CODE_INTERNAL, message="db"))])
    with client(b2, retries=1) as c:
        with pytest.raises(kc.InternalError):
            c.status()


def test_reply_of_the_wrong_kind(fake_broker):
    b = start(fake_broker, fetch=lambda b, req, f: [b.reply(req, ack=pb.AckReply(job_id="J"))])
    with client(b) as c:
        with pytest.raises(kc.ProtocolError):
            c.fetch("J")


def test_long_poll_wait_is_capped_and_split(fake_broker):
    waits = []

    def fetch(b, req, f):
        waits.append(req.fetch.wait_ms if req.fetch.HasField("wait_ms") else None)
        state = pb.JOB_STATE_RUNNING if len(waits) == 1 else pb.JOB_STATE_DONE
        return [b.reply(req, fetch=done_fetch(state=state))]

    b = start(fake_broker, fetch=fetch)
    with client(b) as c:
        assert c.fetch("J1").state == "RUNNING" and waits == [None]
        st = c.fetch("J1", wait=45)
    assert st.state == "DONE"
    assert waits[1] == 30000


def test_ground_submit_wait_ack(fake_broker):
    def fetch(b, req, f):
        return [b.reply(req, fetch=done_fetch(job_id=req.fetch.job_id))]

    b = start(fake_broker,
              submit=lambda b, req, f: [accepted(b, req, "JG")],
              fetch=fetch,
              ack=lambda b, req, f: [b.reply(req, ack=pb.AckReply(job_id="JG",
                                                                   state=pb.JOB_STATE_ACKED))])
    with client(b) as c:
        r = c.ground(PNG, prompt="<grounding> An image of", max_new_tokens=16)
    kinds = [rq.WhichOneof("request") for _, _, rq in b.received]
    assert kinds == ["submit", "fetch", "ack"]
    assert b.received[0][2].submit.job.outputs == kc.OUTPUT_ALL
    assert b.received[1][2].fetch.wait_ms > 0
    assert r.ok and r.text == "An image of a snowman."
    (phrase, (s, e), boxes), = r.entities
    assert r.text[s:e] == phrase == "a snowman"
    assert r.boxes_px == [("a snowman", kc.Box(400, 48, 1008, 848))]
    assert r.generated_ids == [5, 6, 2] and r.timings == {"decode_ms": 1.5}
    assert r.raw.endswith("</phrase>")


def test_ground_failure_acks_then_raises(fake_broker):
    b = start(fake_broker,
              submit=lambda b, req, f: [accepted(b, req, "JF")],
              fetch=lambda b, req, f: [b.reply(req, fetch=done_fetch(
                  "JF", pb.JOB_STATE_FAILED, pb.STATUS_FAILED))],
              ack=lambda b, req, f: [b.reply(req, ack=pb.AckReply(state=pb.JOB_STATE_ACKED))])
    with client(b) as c:
        with pytest.raises(kc.JobFailedError) as ei:
            c.ground(PNG)
    assert ei.value.result.status == "FAILED"
    assert [rq.WhichOneof("request") for _, _, rq in b.received][-1] == "ack"


def test_ground_acked_duplicate_has_no_result(fake_broker):
    b = start(fake_broker,
              submit=lambda b, req, f: [accepted(b, req, "JA", duplicate=True)],
              fetch=lambda b, req, f: [b.reply(req, fetch=pb.FetchReply(
                  job_id="JA", state=pb.JOB_STATE_ACKED))])
    with client(b) as c:
        with pytest.raises(kc.ResultGoneError):
            c.ground(PNG, idempotency_key="used")


def test_ground_timeout_cancels(fake_broker):
    def fetch(b, req, f):
        wait = req.fetch.wait_ms / 1000.0
        time.sleep(min(wait, 0.2))
        return [b.reply(req, fetch=pb.FetchReply(job_id="JT", state=pb.JOB_STATE_RUNNING))]

    b = start(fake_broker,
              submit=lambda b, req, f: [accepted(b, req, "JT")],
              fetch=fetch,
              cancel=lambda b, req, f: [b.reply(req, cancel=pb.CancelReply(
                  job_id="JT", cancelled=True, state=pb.JOB_STATE_CANCELLED))])
    with client(b) as c:
        with pytest.raises(kc.KosmosTimeout):
            c.ground(PNG, timeout=0.5)
    kinds = [rq.WhichOneof("request") for _, _, rq in b.received]
    assert kinds[0] == "submit" and kinds[-1] == "cancel"


def test_cancel_and_status(fake_broker):
    def status(b, req, f):
        s = pb.StatusReply(broker_version="1", broker_instance=b.instance, total_submitted=2)
        s.queue.add(state=pb.JOB_STATE_RUNNING, count=1)
        if req.status.include_workers:
            s.workers.add(worker_name="w", model_id="m", credit=3)
        return [b.reply(req, status=s)]

    b = start(fake_broker, status=status,
              cancel=lambda b, req, f: [b.reply(req, cancel=pb.CancelReply(
                  job_id=req.cancel.job_id, cancelled=False, state=pb.JOB_STATE_DONE))])
    with client(b) as c:
        assert c.cancel("J1") == kc.CancelOutcome("J1", False, "DONE")
        s = c.status()
        assert s.queue == {"RUNNING": 1} and s.totals["submitted"] == 2
        assert s.workers[0]["worker_name"] == "w"
        assert c.status(include_workers=False).workers == []


def test_broker_restart_is_noticed(fake_broker):
    def status(b, req, f):
        b.instance += 1
        return [b.reply(req, status=pb.StatusReply())]

    b = start(fake_broker, status=status)
    with client(b) as c:
        c.status()
        assert c.broker_restarts == 0
        c.status()
        assert c.broker_restarts == 1 and c.broker_instance == b.instance


def test_client_is_safe_to_share_between_threads(fake_broker):
    b = start(fake_broker, fetch=lambda b, req, f: [b.reply(req, fetch=pb.FetchReply(
        job_id=req.fetch.job_id, state=pb.JOB_STATE_QUEUED))])
    errors = []
    with client(b) as c:
        def work(i):
            try:
                for _ in range(10):
                    assert c.fetch("J%d" % i).job_id == "J%d" % i
            except Exception as e:  # pragma: no cover
                errors.append(e)
        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
    assert not errors


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve(fake_broker, tmp_path):
    import zmq.auth
    server_pub_file, server_sec_file = zmq.auth.create_certificates(str(tmp_path), "broker")
    client_pub_file, client_sec_file = zmq.auth.create_certificates(str(tmp_path), "client")
    _, server_secret = zmq.auth.load_certificate(server_sec_file)
    seen = []

    def status(b, req, f):
        return [b.reply(req, status=pb.StatusReply(broker_version="curve"))]

    script = Script(status=status)
    b = fake_broker(script, curve_secret=server_secret)
    script.broker = b
    with kc.Client(b.endpoint, curve_server_key=server_pub_file,
                   curve_keypair=client_sec_file, timeout=2, retries=0) as c:
        assert c.status().broker_version == "curve"
    pub, sec = zmq.auth.load_certificate(client_sec_file)
    with kc.Client(b.endpoint, curve_server_key=kc.load_server_key(server_pub_file),
                   curve_keypair=(pub.decode(), sec.decode()), timeout=2, retries=0) as c:
        assert c.status().broker_version == "curve"
    # A client that does not know the server key gets no connection: a timeout.
    wrong_pub, _ = zmq.curve_keypair()
    with kc.Client(b.endpoint, curve_server_key=wrong_pub, curve_keypair=(pub, sec),
                   timeout=0.3, retries=0) as c:
        with pytest.raises(kc.KosmosTimeout):
            c.status()
    with pytest.raises(ValueError):
        kc.Client(b.endpoint, curve_server_key=server_pub_file)
    with pytest.raises(ValueError):
        kc.Client(b.endpoint, curve_server_key=server_pub_file, curve_keypair=client_pub_file)
