"""Integration tests against a real kosmos-broker (and kosmos-worker).

Skipped unless KOSMOS_BROKER_BIN (and, for the tests that run jobs, KOSMOS_WORKER_BIN) name
existing executables. The processes run on ipc:// endpoints in a temporary directory; the
worker serves the committed tiny random model tests/data/tiny-kosmos2 (its text is
meaningless, so results are checked for shape and consistency, not content) on the demo images
committed in tests/data/kosmos2/images.

Command lines (docs/broker.md / `kosmos-broker --help`); override with these variables, as
Python format strings over {bin} {client} {worker} {db} {tmp} {model} {name}:
    KOSMOS_BROKER_ARGS  default: --client-endpoint {client} --worker-endpoint {worker}
                                 --db {db} --image-root {tmp}
    KOSMOS_WORKER_ARGS  default: --broker {worker} --model {model} --device ref --name {name}
Other variables: KOSMOS_TEST_MODEL (model dir), KOSMOS_TEST_IMAGES (image dir),
KOSMOS_TEST_JOB_TIMEOUT (seconds per job, default 300).
"""
import os
import shlex
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import kosmos_client as kc

REPO = Path(__file__).resolve().parents[3]
MODEL = Path(os.environ.get("KOSMOS_TEST_MODEL", REPO / "tests" / "data" / "tiny-kosmos2"))
IMAGES = Path(os.environ.get("KOSMOS_TEST_IMAGES", REPO / "tests" / "data" / "kosmos2" / "images"))
JOB_TIMEOUT = float(os.environ.get("KOSMOS_TEST_JOB_TIMEOUT", "300"))
BROKER_ARGS = os.environ.get(
    "KOSMOS_BROKER_ARGS",
    "--client-endpoint {client} --worker-endpoint {worker} --db {db} --image-root {tmp}")
WORKER_ARGS = os.environ.get(
    "KOSMOS_WORKER_ARGS", "--broker {worker} --model {model} --device ref --name {name}")

pytestmark = pytest.mark.integration


def _binary(var):
    path = os.environ.get(var)
    if not path:
        return None, "%s is not set (no kosmos binary to test against)" % var
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return None, "%s=%s is not an executable file" % (var, path)
    return path, None


BROKER_BIN, BROKER_WHY = _binary("KOSMOS_BROKER_BIN")
WORKER_BIN, WORKER_WHY = _binary("KOSMOS_WORKER_BIN")
needs_broker = pytest.mark.skipif(BROKER_BIN is None, reason=str(BROKER_WHY))
needs_worker = pytest.mark.skipif(
    BROKER_BIN is None or WORKER_BIN is None or not MODEL.is_dir() or not IMAGES.is_dir(),
    reason=str(BROKER_WHY or WORKER_WHY or "model %s or images %s missing" % (MODEL, IMAGES)))


class Farm:
    """A broker (and optionally workers) in a temp dir; restartable; logs kept for failures."""

    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self.client_ep = "ipc://%s/client.sock" % self.tmp
        self.worker_ep = "ipc://%s/worker.sock" % self.tmp
        self.db = self.tmp / "broker.db"
        self.procs = {}

    def _fmt(self, template, binary, name=""):
        return [binary] + [a.format(bin=binary, client=self.client_ep, worker=self.worker_ep,
                                    db=self.db, tmp=self.tmp, model=MODEL, name=name)
                           for a in shlex.split(template)]

    def _start(self, key, argv):
        log = open(self.tmp / ("%s.log" % key), "ab")
        self.procs[key] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                           cwd=self.tmp)
        log.close()

    def start_broker(self):
        self._start("broker", self._fmt(BROKER_ARGS, BROKER_BIN))
        deadline = time.monotonic() + 30
        with self.client(timeout=1, retries=0) as c:
            while True:
                if self.procs["broker"].poll() is not None:
                    raise RuntimeError("kosmos-broker exited %s:\n%s"
                                       % (self.procs["broker"].returncode, self.logs()))
                try:
                    return c.status()
                except kc.KosmosTimeout:
                    if time.monotonic() > deadline:
                        raise

    def start_worker(self, name="itest-w0"):
        self._start(name, self._fmt(WORKER_ARGS, WORKER_BIN, name))
        deadline = time.monotonic() + 120
        with self.client() as c:
            while time.monotonic() < deadline:
                if self.procs[name].poll() is not None:
                    raise RuntimeError("kosmos-worker exited %s:\n%s"
                                       % (self.procs[name].returncode, self.logs()))
                if any(w.get("worker_name") == name for w in c.status().workers):
                    return
                time.sleep(0.2)
        raise RuntimeError("worker %s did not register:\n%s" % (name, self.logs()))

    def stop(self, key, sig_term=True):
        p = self.procs.pop(key, None)
        if p is None or p.poll() is not None:
            return
        p.terminate() if sig_term else p.kill()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def client(self, client_id="itest@lab", **kw):
        kw.setdefault("timeout", 5)
        kw.setdefault("retries", 3)
        return kc.Client(self.client_ep, client_id=client_id, **kw)

    def logs(self):
        out = []
        for f in sorted(self.tmp.glob("*.log")):
            text = f.read_text(errors="replace")
            out.append("--- %s (last 4000 chars)\n%s" % (f.name, text[-4000:]))
        return "\n".join(out)

    def close(self):
        for key in list(self.procs):
            self.stop(key)


@pytest.fixture
def farm():
    with tempfile.TemporaryDirectory(prefix="kitest") as tmp:
        f = Farm(tmp)
        try:
            yield f
        finally:
            f.close()
            print(f.logs())  # pytest shows it only when the test failed


def png_size(data):
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def demo_images():
    return sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def check_result(result, n_prompts, image=None, max_new_tokens=None):
    """Shape and consistency of a Result from a random model (content is meaningless)."""
    assert result.status == "OK", result
    assert len(result.prompts) == n_prompts
    assert result.attempt >= 1 and result.worker_name
    size = png_size(image) if image is not None else None
    if size is not None:
        assert (result.image_width, result.image_height) == size
    assert result.image_width > 0 and result.image_height > 0
    for i, p in enumerate(result.prompts):
        assert p.index == i and p.status == "OK", p
        assert isinstance(p.text, str)
        if max_new_tokens is not None:
            assert 0 < len(p.generated_ids) <= max_new_tokens
        if p.timings is not None and "new_tokens" in p.timings:
            assert p.timings["new_tokens"] == len(p.generated_ids)
        for e in p.entities:
            # An empty span points at no text: a bare <object> or a blank phrase (protocol §5.3).
            start, end = e.span
            if start < end:
                assert p.text[start:end] == e.phrase
            bstart, bend = e.byte_span
            assert bstart <= bend
            if start < end:
                assert p.text.encode()[bstart:bend].decode() == e.phrase
            for b in e.boxes:
                assert 0 <= b.x1 < b.x2 <= 1 and 0 <= b.y1 < b.y2 <= 1
            if e.boxes_px:
                assert len(e.boxes_px) == len(e.boxes)
                for b, px in zip(e.boxes, e.boxes_px):
                    assert px.x1 == pytest.approx(b.x1 * result.image_width)
                    assert px.y2 == pytest.approx(b.y2 * result.image_height)


# --- broker only -------------------------------------------------------------------------------

@needs_broker
def test_status_and_queue_without_workers(farm):
    s = farm.start_broker()
    assert s.broker_instance != 0 and s.broker_version
    png = (IMAGES / "snowman.png").read_bytes() if IMAGES.is_dir() else b"\x89PNG fake"
    with farm.client() as c:
        sub = c.submit_job(png, prompt="<grounding> An image of", idempotency_key="q1",
                           max_new_tokens=4)
        assert not sub.duplicate and 0 < len(sub.job_id) <= 64
        st = c.fetch(sub.job_id)
        assert st.state == "QUEUED" and st.result is None
        assert st.queue_position == 0
        # a long poll on a job that cannot run returns at its wait time, still QUEUED
        t0 = time.monotonic()
        assert c.fetch(sub.job_id, wait=0.5).state == "QUEUED"
        assert 0.4 < time.monotonic() - t0 < 5
        assert c.status().queue.get("QUEUED") == 1
        with pytest.raises(kc.InvalidStateError):
            c.ack(sub.job_id)
        # resubmission by key: same contents -> same job; other contents -> conflict
        again = c.submit_job(png, prompt="<grounding> An image of", idempotency_key="q1",
                             max_new_tokens=4)
        assert again.job_id == sub.job_id and again.duplicate
        with pytest.raises(kc.ConflictError) as ei:
            c.submit(png, prompt="<grounding> Another", idempotency_key="q1")
        assert ei.value.job_id == sub.job_id
        # cancel is immediate and idempotent; the result says CANCELLED for every prompt
        out = c.cancel(sub.job_id)
        assert out.cancelled and out.state == "CANCELLED"
        assert c.cancel(sub.job_id) == kc.CancelOutcome(sub.job_id, False, "CANCELLED")
        st = c.fetch(sub.job_id)
        assert st.state == "CANCELLED" and st.result.status == "CANCELLED"
        assert [p.status for p in st.result.prompts] == ["CANCELLED"]
        assert c.ack(sub.job_id) == "ACKED"
        assert c.ack(sub.job_id) == "ACKED"
        st = c.fetch(sub.job_id)
        assert st.state == "ACKED" and st.result is None
        # the key is still remembered after the ack
        assert c.submit_job(png, prompt="<grounding> An image of", idempotency_key="q1",
                            max_new_tokens=4).duplicate
    # another identity does not see the job
    with farm.client(client_id="someone-else") as other:
        with pytest.raises(kc.NotFoundError):
            other.fetch(sub.job_id)


@needs_broker
def test_rejections(farm):
    farm.start_broker()
    png = b"\x89PNG not decoded by the broker"
    with farm.client() as c:
        with pytest.raises(kc.RejectedError) as ei:
            c.submit(png, prompt="<grounding><phrase> It</phrase> is",
                     bboxes=[(0.9, 0.1, 0.2, 0.5)])  # x1 > x2
        assert ei.value.code_name == "REJECT_CODE_INVALID"
        with pytest.raises(kc.RejectedError) as ei:
            c.submit(png, prompt="<grounding><phrase> It</phrase> is",
                     bboxes=[None, None])  # two entries for one phrase
        assert ei.value.code_name == "REJECT_CODE_INVALID"
        with pytest.raises(kc.RejectedError) as ei:
            c.submit(png, prompt="a", deadline=time.time() - 10)
        assert ei.value.code_name == "REJECT_CODE_EXPIRED"
        with pytest.raises(kc.RejectedError) as ei:
            c.submit(png, prompt="a", num_beams=9)
        assert ei.value.code_name == "REJECT_CODE_INVALID"
        with pytest.raises(kc.RejectedError) as ei:
            c.submit(png, prompt="a", model_id="no/such-model")
        assert ei.value.code_name == "REJECT_CODE_NO_SUCH_MODEL"
        with pytest.raises(kc.RejectedError) as ei:
            c.submit(image_uri="/etc/passwd", prompt="a")
        assert ei.value.code_name == "REJECT_CODE_IMAGE_URI_NOT_ALLOWED"
        with pytest.raises(kc.NotFoundError):
            c.fetch("01NOSUCHJOB0000000000000000")
        with pytest.raises(kc.NotFoundError):
            c.cancel("01NOSUCHJOB0000000000000000")


@needs_broker
def test_image_uri_roots(farm):
    # docs/protocol.md 5.1: an absolute path or file:// + one, under --image-root by whole
    # path components, no . or .. components. The farm's broker runs with --image-root {tmp}.
    farm.start_broker()
    (farm.tmp / "imgs").mkdir()
    (farm.tmp / "imgs" / "a.png").write_bytes(b"x")
    root = str(farm.tmp)
    with farm.client() as c:
        for uri in (root + "/imgs/a.png", "file://" + root + "/imgs/a.png"):
            assert c.submit(image_uri=uri, prompt="a"), uri
        for uri in (root + "x/a.png", root + "/imgs/../imgs/a.png", "imgs/a.png"):
            with pytest.raises(kc.RejectedError) as ei:
                c.submit(image_uri=uri, prompt="a")
            assert ei.value.code_name == "REJECT_CODE_IMAGE_URI_NOT_ALLOWED", uri


@needs_broker
def test_broker_restart_keeps_jobs_and_keys(farm):
    s1 = farm.start_broker()
    png = b"\x89PNG restart test"
    key = "restart-" + uuid.uuid4().hex
    with farm.client(timeout=2, retries=10) as c:
        job_id = c.submit(png, prompt="a", idempotency_key=key)
        assert c.fetch(job_id).state == "QUEUED"
        first_instance = c.broker_instance
        farm.stop("broker")
        farm.start_broker()
        # the same client object carries on: its socket reconnects by itself
        st = c.fetch(job_id)
        assert st.state == "QUEUED"
        assert c.broker_instance != first_instance and c.broker_restarts == 1
        # resubmission after the restart, by idempotency key: the same job, nothing new
        again = c.submit_job(png, prompt="a", idempotency_key=key)
        assert again.job_id == job_id and again.duplicate
    assert s1.broker_instance == first_instance


# --- broker + worker ---------------------------------------------------------------------------

@needs_worker
def test_ground_snowman(farm):
    farm.start_broker()
    farm.start_worker()
    image = (IMAGES / "snowman.png").read_bytes()
    with farm.client() as c:
        r = c.ground(image, prompt="<grounding> An image of", max_new_tokens=8,
                     timeout=JOB_TIMEOUT)
        check_result(r, 1, image, max_new_tokens=8)
        assert r.raw_text is not None and r.timings is not None
        assert r.generated_ids and r.timings["new_tokens"] == len(r.generated_ids)
        for phrase, (start, end), boxes in r.entities:
            assert isinstance(phrase, str) and isinstance(boxes, list)
        s = c.status()
        assert s.totals["done"] >= 1
        assert s.queue.get("QUEUED", 0) == 0


@needs_worker
def test_all_demo_images_multi_prompt(farm):
    farm.start_broker()
    farm.start_worker()
    prompts = ["<grounding> An image of", "<grounding> Describe this image in detail:",
               "<grounding><phrase> It</phrase> is"]
    jobs = {}
    with farm.client() as c:
        for path in demo_images():
            jobs[path] = c.submit(str(path), prompts=prompts,
                                  bboxes=[None, None, [(0.1, 0.1, 0.9, 0.9)]],
                                  max_new_tokens=6, no_repeat_ngram_size=0,
                                  outputs=kc.OUTPUT_ALL, label=path.name)
        assert jobs
        for path, job_id in jobs.items():
            st = c.wait(job_id, timeout=JOB_TIMEOUT)
            assert st.state == "DONE", (path, st)
            check_result(st.result, len(prompts), path.read_bytes(), max_new_tokens=6)
            assert st.result.label == path.name
            c.ack(job_id)


@needs_worker
def test_inline_uri_and_deterministic_greedy(farm):
    farm.start_broker()
    farm.start_worker()
    path = IMAGES / "snowman.png"
    image = path.read_bytes()
    uri_copy = farm.tmp / "snowman.png"
    uri_copy.write_bytes(image)
    with farm.client() as c:
        a = c.ground(image, max_new_tokens=6, timeout=JOB_TIMEOUT)
        b = c.ground(image, max_new_tokens=6, inline=True, timeout=JOB_TIMEOUT)
        u = c.ground(None, image_uri=str(uri_copy), max_new_tokens=6, timeout=JOB_TIMEOUT)
        assert a.generated_ids == b.generated_ids == u.generated_ids
        assert a.text == b.text == u.text


@needs_worker
def test_unreadable_image_fails_not_retriable(farm):
    farm.start_broker()
    farm.start_worker()
    with farm.client() as c:
        with pytest.raises(kc.JobFailedError) as ei:
            c.ground(b"this is not an image", max_new_tokens=4, timeout=JOB_TIMEOUT)
        assert ei.value.result.status == "FAILED" and not ei.value.result.retriable


@needs_worker
def test_cancel_running_job(farm):
    farm.start_broker()
    farm.start_worker()
    with farm.client() as c:
        job_id = c.submit(str(IMAGES / "snowman.png"), prompt="<grounding> An image of",
                          max_new_tokens=1024, no_repeat_ngram_size=0)
        deadline = time.monotonic() + 60
        while c.fetch(job_id).state == "QUEUED" and time.monotonic() < deadline:
            time.sleep(0.05)
        out = c.cancel(job_id)
        st = c.fetch(job_id)
        if out.cancelled:
            assert st.state == "CANCELLED"
            assert all(p.status == "CANCELLED" for p in st.result.prompts)
        else:  # it finished first
            assert st.terminal
        # the worker is still usable afterwards
        r = c.ground(str(IMAGES / "snowman.png"), max_new_tokens=4, timeout=JOB_TIMEOUT)
        assert r.ok
