"""The synchronous kosmos-farm client (docs/protocol.md)."""
import itertools
import logging
import os
import random
import threading
import time
import uuid

import zmq

from . import _wire
from ._wire import OUTPUT_ALL, pb
from .errors import (BusyError, ConflictError, JobFailedError, KosmosError, KosmosTimeout,
                     ProtocolError, RejectedError, ResultGoneError)
from .results import BrokerStatus, CancelOutcome, JobStatus, Submission

log = logging.getLogger("kosmos_client")

DEFAULT_PROMPT = "<grounding> An image of"


def _z85_key(key, what):
    if isinstance(key, str):
        key = key.encode("ascii")
    if not isinstance(key, bytes) or len(key) not in (32, 40):
        raise ValueError("%s must be a 40-character Z85 key (or 32 raw bytes)" % what)
    return key


def load_server_key(key):
    """The broker's public key: Z85 (str/bytes, 40 characters), or a certificate file
    (broker.key, as zmq.auth.create_certificates writes it)."""
    if isinstance(key, (str, os.PathLike)) and os.path.exists(key):
        import zmq.auth
        public, _ = zmq.auth.load_certificate(key)
        return public
    return _z85_key(key, "curve_server_key")


def load_keypair(keypair):
    """The client's key pair: (public, secret) in Z85, or a secret certificate file
    (client.key_secret)."""
    if isinstance(keypair, (tuple, list)):
        public, secret = keypair
        return _z85_key(public, "curve public key"), _z85_key(secret, "curve secret key")
    import zmq.auth
    public, secret = zmq.auth.load_certificate(keypair)
    if secret is None:
        raise ValueError("%s holds no secret key (give the .key_secret file)" % (keypair,))
    return public, secret


class Client:
    """A synchronous client of a kosmos-farm broker.

    Args:
        endpoint: the broker's client endpoint, e.g. "tcp://broker:5555" or "ipc:///run/k.sock".
        client_id: the client identity with CURVE off (1..128 bytes of UTF-8). It scopes jobs
            and idempotency keys: use the same one to fetch a job later from another process.
            None = the shared identity "anonymous". Ignored by the broker with CURVE on.
        curve_server_key: with CURVE: the broker's public key (Z85) or its certificate file.
        curve_keypair: with CURVE: this client's (public, secret) Z85 keys or its
            .key_secret certificate file.
        timeout: seconds to wait for a reply, on top of a long poll's wait (the protocol says
            5 s). After it the request is resent on a new socket, up to `retries` times.
        retries: resends after a timeout, and retries after ERROR_CODE_INTERNAL/UNAVAILABLE.
        context: a zmq.Context (default: the process-wide instance).
        max_image_bytes, max_message_bytes: the broker's --max-image-bytes and
            --max-message-bytes if not the defaults; checked before sending, because a frame
            over the broker's limit gets no reply at all.

    A Client serializes its calls with a lock; it may be shared by threads, but one call runs at
    a time. Use one Client per thread for parallel requests.
    """

    def __init__(self, endpoint, client_id=None, curve_server_key=None, curve_keypair=None,
                 timeout=5.0, retries=3, context=None, max_image_bytes=_wire.MAX_IMAGE_BYTES,
                 max_message_bytes=_wire.MAX_MESSAGE_BYTES):
        self.endpoint = endpoint
        self.client_id = _wire.check_client_id(client_id)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.max_image_bytes = max_image_bytes
        self.max_message_bytes = max_message_bytes
        self.broker_instance = None  # ClientReply.broker_instance of the last reply
        self.broker_restarts = 0     # how often it changed
        self._curve = None
        if (curve_server_key is None) != (curve_keypair is None):
            raise ValueError("CURVE needs both curve_server_key and curve_keypair")
        if curve_server_key is not None:
            if not zmq.has("curve"):
                raise KosmosError("this libzmq has no CURVE support")
            public, secret = load_keypair(curve_keypair)
            self._curve = (load_server_key(curve_server_key), public, secret)
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.RLock()
        self._ids = itertools.count(random.randrange(1, 1 << 62))
        self._sock = None
        self._open()

    # --- socket ----------------------------------------------------------------------------

    def _open(self):
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        if self._curve is not None:
            server, public, secret = self._curve
            s.curve_serverkey = server
            s.curve_publickey = public
            s.curve_secretkey = secret
        s.connect(self.endpoint)
        self._sock = s

    def _reopen(self):
        """Drops the socket with whatever it still queues (a request the broker never got would
        otherwise go out twice once it is reachable) and connects a new one."""
        if self._sock is not None:
            self._sock.close(linger=0)
        self._open()

    def close(self):
        with self._lock:
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- one request -----------------------------------------------------------------------

    def _note_instance(self, reply):
        if reply.HasField("broker_instance"):
            if self.broker_instance is not None and reply.broker_instance != self.broker_instance:
                self.broker_restarts += 1
                log.warning("broker restarted (instance %x -> %x)", self.broker_instance,
                            reply.broker_instance)
            self.broker_instance = reply.broker_instance

    def _exchange(self, frames, request_id, timeout_s):
        """Sends once, returns the matching ClientReply or None after timeout_s."""
        deadline = time.monotonic() + timeout_s
        try:
            self._sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            return None  # not connected and its queue is full: same as a lost request
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sock.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
                return None
            msg = self._sock.recv_multipart(zmq.NOBLOCK)
            try:
                reply = _wire.decode_reply(msg)  # raises ProtocolVersionError: fatal
            except _wire.Unusable as e:
                log.warning("ignoring a message from the broker: %s", e)
                continue
            self._note_instance(reply)
            if reply.request_id == request_id:
                return reply
            if reply.request_id == 0 and reply.WhichOneof("reply") == "error":
                # MALFORMED or PROTOCOL_VERSION about a request the broker could not read: with
                # one request in flight, it is about this one.
                return reply
            log.debug("ignoring a late reply to request %d", reply.request_id)

    def _call(self, request, attached=None, wait_ms=0):
        """Sends a ClientRequest, returns the reply member of the same name; resends after a
        timeout (same request_id, new socket) and retries INTERNAL/UNAVAILABLE, then raises."""
        kind = _wire.request_kind(request)
        with self._lock:
            if self._sock is None:
                raise KosmosError("client is closed")
            request.request_id = next(self._ids)
            if self.client_id is not None:
                request.client_id = self.client_id
            frames = _wire.encode_request(request, attached, self.max_message_bytes)
            tries = 0
            while True:
                reply = self._exchange(frames, request.request_id, wait_ms / 1000 + self.timeout)
                if reply is None:
                    if tries >= self.retries:
                        raise KosmosTimeout("no reply from the broker at %s to %s after %d "
                                            "tries" % (self.endpoint, kind, tries + 1))
                    tries += 1
                    log.info("no reply to %s %d, resending (%d/%d)", kind, request.request_id,
                             tries, self.retries)
                    self._reopen()
                    continue
                if (reply.WhichOneof("reply") == "error"
                        and reply.error.code in _wire.RETRIABLE_ERRORS and tries < self.retries):
                    tries += 1
                    delay = min(5.0, 0.5 * 2 ** (tries - 1)) * (0.5 + random.random() / 2)
                    log.info("%s: %s; retrying in %.1f s", kind, reply.error.message, delay)
                    time.sleep(delay)
                    continue
                return _wire.check_reply_kind(kind, reply)

    # --- requests --------------------------------------------------------------------------

    def submit_job(self, image=None, prompts=None, bboxes=None, *, prompt=None, image_uri=None,
                   inline=False, max_new_tokens=None, min_new_tokens=None, num_beams=None,
                   do_sample=None, temperature=None, top_p=None, top_k=None, seed=None,
                   no_repeat_ngram_size=None, model_id=None, model_hash=None,
                   min_device_memory_bytes=None, priority=None, deadline=None, outputs=None,
                   label=None, idempotency_key=None, busy_timeout=0.0):
        """Submits a job; returns a Submission(job_id, duplicate, idempotency_key).

        image: bytes, a path or a binary file; sent as its own frame (inline=True: inside the
            protobuf, up to 8 MiB in all). Or image_uri: a path on storage the workers share.
        prompts: list of prompts; or prompt: one prompt (e.g. "<grounding> An image of").
        bboxes: as the reference processor's: with `prompt`, one entry per <phrase>...</phrase>
            of it, each None, a box or a list of boxes; with `prompts`, a list of those, one
            per prompt. A box is (x1, y1, x2, y2) normalized to [0, 1] or (ul, lr) patch
            indices.
        max_new_tokens ... no_repeat_ngram_size: GenerationParams; None = model default.
        model_id, model_hash, min_device_memory_bytes: Requirements.
        priority: -100..100, higher first. deadline: datetime or unix seconds (absolute), or a
            timedelta from now. outputs: OR of kosmos_client.OUTPUT_* (None = broker default:
            raw text, pixel boxes, timings). label: echoed in the result.
        idempotency_key: None = a fresh random one, so that resends after a lost reply never
            run the job twice. Give your own to resubmit safely later (after a crash, from
            another process with the same client_id): the same key and contents return the
            same job (duplicate=True); the same key with other contents raises ConflictError.
        busy_timeout: seconds to keep resubmitting while the broker answers busy (waiting the
            retry_after it gives); 0 = raise BusyError at once.

        Raises BusyError, ConflictError, RejectedError, BrokerError subclasses, KosmosTimeout,
        ValueError/TypeError for arguments outside the protocol's limits.
        """
        if (prompt is None) == (prompts is None):
            raise ValueError("give exactly one of prompt and prompts")
        if prompt is not None:
            prompts = [prompt]
            if bboxes is not None:
                bboxes = [bboxes]
        elif isinstance(prompts, str):
            raise TypeError("prompts is a list of str; use prompt= for one")
        key = idempotency_key if idempotency_key is not None else uuid.uuid4().hex
        generation = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                          num_beams=num_beams, do_sample=do_sample, temperature=temperature,
                          top_p=top_p, top_k=top_k, seed=seed,
                          no_repeat_ngram_size=no_repeat_ngram_size)
        job, attached = _wire.build_job(
            image, prompts, bboxes, image_uri=image_uri, inline=inline, generation=generation,
            model_id=model_id, model_hash=model_hash,
            min_device_memory_bytes=min_device_memory_bytes, priority=priority,
            deadline=deadline, outputs=outputs, label=label, idempotency_key=key,
            max_image_bytes=self.max_image_bytes)
        give_up = time.monotonic() + busy_timeout
        while True:
            request = pb.ClientRequest()
            request.submit.job.CopyFrom(job)
            reply = self._call(request, attached)
            outcome = reply.WhichOneof("outcome")
            if outcome == "accepted":
                return Submission(reply.accepted.job_id, reply.accepted.duplicate, key)
            if outcome == "busy":
                retry_after = reply.busy.retry_after_ms / 1000.0
                if time.monotonic() + retry_after < give_up:
                    time.sleep(max(0.05, retry_after))
                    continue
                raise BusyError(retry_after, reply.busy.queue_depth, key)
            if outcome == "conflict":
                raise ConflictError(reply.conflict.job_id, key)
            if outcome == "rejected":
                raise RejectedError(reply.rejected.code,
                                    _wire.enum_name(pb.RejectCode, reply.rejected.code, ""),
                                    reply.rejected.reason)
            raise ProtocolError("submit reply with an outcome this client does not know")

    def submit(self, image=None, prompts=None, bboxes=None, **kwargs):
        """Like submit_job() (same arguments), but returns only the job id."""
        return self.submit_job(image, prompts, bboxes, **kwargs).job_id

    def fetch(self, job_id, wait=0.0):
        """The job's state (JobStatus), with its result once terminal. wait > 0: long poll,
        return as soon as the job is terminal or `wait` seconds have passed (longer waits than
        the broker's 30 s cap are split into several polls)."""
        _wire.check_job_id(job_id)
        give_up = time.monotonic() + max(0.0, wait)
        while True:
            remaining_ms = int((give_up - time.monotonic()) * 1000)
            request = pb.ClientRequest()
            request.fetch.job_id = job_id
            wait_ms = min(max(0, remaining_ms), _wire.MAX_WAIT_MS)
            if wait_ms > 0:
                request.fetch.wait_ms = wait_ms
            status = JobStatus.from_proto(self._call(request, wait_ms=wait_ms))
            if status.terminal or give_up - time.monotonic() <= 0.001:
                return status

    def wait(self, job_id, timeout=None):
        """Long-polls until the job is terminal; returns its JobStatus. timeout: seconds (None =
        no limit); raises KosmosTimeout when it passes first."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _wire.MAX_WAIT_MS / 1000 if give_up is None else give_up - time.monotonic()
            status = self.fetch(job_id, wait=max(0.0, min(left, _wire.MAX_WAIT_MS / 1000)))
            if status.terminal:
                return status
            if give_up is not None and time.monotonic() >= give_up:
                raise KosmosTimeout("job %s still %s after %.1f s" % (job_id, status.state,
                                                                       timeout))

    def ack(self, job_id):
        """Tells the broker the result may be deleted. Only for terminal jobs (else
        InvalidStateError); idempotent. Returns the state ("ACKED")."""
        request = pb.ClientRequest()
        request.ack.job_id = _wire.check_job_id(job_id)
        return _wire.state_name(self._call(request).state)

    def cancel(self, job_id):
        """Cancels a job that is not terminal yet; idempotent. Returns CancelOutcome(job_id,
        cancelled, state): cancelled is False when it was already terminal."""
        request = pb.ClientRequest()
        request.cancel.job_id = _wire.check_job_id(job_id)
        reply = self._call(request)
        return CancelOutcome(reply.job_id or job_id, reply.cancelled,
                             _wire.state_name(reply.state))

    def status(self, include_workers=True):
        """Broker-wide status: queue per state, workers, totals, throughput (BrokerStatus)."""
        request = pb.ClientRequest()
        request.status.include_workers = bool(include_workers)
        return BrokerStatus.from_proto(self._call(request))

    def ground(self, image, prompt=DEFAULT_PROMPT, bboxes=None, *, timeout=None, ack=True,
               check=True, outputs=OUTPUT_ALL, **kwargs):
        """One call: submit one prompt on one image, wait for the result, ack it.

        Returns a JobResult whose text, entities, raw_text, boxes_px, generated_ids and
        timings are those of the prompt (all outputs are requested by default). `timeout`
        (seconds, None = no limit) covers the wait; when it passes the job is cancelled and
        KosmosTimeout raised. check=True raises JobFailedError unless the job and its prompt
        ended OK (the result is acked first). Other keyword arguments go to submit_job().
        """
        submission = self.submit_job(image, prompt=prompt, bboxes=bboxes, outputs=outputs,
                                     **kwargs)
        job_id = submission.job_id
        try:
            status = self.wait(job_id, timeout)
        except KosmosTimeout:
            try:
                self.cancel(job_id)
            except KosmosError as e:
                log.warning("cancelling %s after the timeout failed: %s", job_id, e)
            raise
        if status.result is None:
            raise ResultGoneError(job_id)
        if ack:
            self.ack(job_id)
        result = status.result
        if check and not result.ok:
            p = result.prompts[0] if result.prompts else None
            why = result.message if result.status != "OK" or p is None else p.message
            status_text = result.status if result.status != "OK" or p is None else p.status
            raise JobFailedError(result, "job %s ended %s%s: %s" % (
                job_id, status_text, " (retriable)" if result.retriable else "", why))
        return result
