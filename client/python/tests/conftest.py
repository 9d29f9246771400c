import os
import tempfile
import threading

import pytest
import zmq

from kosmos_client import pb


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With KOSMOS_TEST_NO_SKIP=1 (ctest sets it: there every binary and file a test needs is
    given), a skipped test is reported as a failure, so that a run cannot pass on tests that
    never ran."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("KOSMOS_TEST_NO_SKIP") == "1" and report.skipped \
            and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = "skipped, and KOSMOS_TEST_NO_SKIP=1 makes a skip a failure: %s" % (
            report.longrepr,)

VERSION = b"KOSMOS1"


class FakeBroker:
    """A scripted stand-in for the broker's client endpoint: a ROUTER on ipc:// in a temp dir.

    `handler(frames_without_routing_id, request)` returns a list of replies to send (each a
    ClientReply, or a raw list of frames), or None to drop the request. Every request received
    is recorded in `self.received` as (routing_id, frames, ClientRequest-or-None).
    """

    def __init__(self, handler, curve_secret=None):
        self.handler = handler
        self.received = []
        self.instance = 0x1234
        self._dir = tempfile.mkdtemp(prefix="kfake")
        self.endpoint = "ipc://" + os.path.join(self._dir, "client.sock")
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve_secret is not None:
            self._sock.curve_server = True
            self._sock.curve_secretkey = curve_secret
        self._sock.bind(self.endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reply(self, request, **fields):
        """A ClientReply to `request` with request_id and broker_instance filled in."""
        r = pb.ClientReply(request_id=request.request_id, broker_instance=self.instance)
        for k, v in fields.items():
            getattr(r, k).CopyFrom(v)
        return r

    def _run(self):
        while not self._stop.is_set():
            if not self._sock.poll(50):
                continue
            msg = self._sock.recv_multipart()
            rid, frames = msg[0], msg[1:]
            request = None
            if len(frames) >= 3 and frames[1] == VERSION:
                try:
                    request = pb.ClientRequest.FromString(frames[2])
                except Exception:
                    request = None
            self.received.append((rid, frames, request))
            out = self.handler(frames, request)
            for r in out or []:
                if isinstance(r, pb.ClientReply):
                    r = [b"", VERSION, r.SerializeToString()]
                self._sock.send_multipart([rid] + list(r))

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)
        self._ctx.term()


@pytest.fixture
def fake_broker():
    brokers = []

    def make(handler, **kw):
        b = FakeBroker(handler, **kw)
        brokers.append(b)
        return b

    yield make
    for b in brokers:
        b.close()
