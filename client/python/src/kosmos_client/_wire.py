"""Framing and message building for protocol KOSMOS1 (docs/protocol.md sections 2, 3, 10).

Pure functions, no sockets: what the client sends and how it reads what comes back. The unit
tests exercise them directly.
"""
import datetime as _dt
import os
import time

try:
    from . import kosmos_pb2 as pb
except ImportError as e:  # pragma: no cover - only when run from an unbuilt source tree
    raise ImportError(
        "kosmos_client.kosmos_pb2 is missing: it is generated from proto/kosmos.proto at "
        "install time; install the package (pip install client/python) instead of importing "
        "it from the source tree") from e

from .errors import (BrokerError, InternalError, InvalidArgumentError, InvalidStateError,
                     MalformedRequestError, NotFoundError, ProtocolError, ProtocolVersionError,
                     TooLargeError, UnavailableError, UnknownRequestError)

VERSION = b"KOSMOS1"

# Limits of docs/protocol.md section 10 (the broker's defaults for the configurable ones).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024      # frame 2, any direction (--max-message-bytes)
MAX_IMAGE_BYTES = 64 * 1024 * 1024       # frame 3 (--max-image-bytes)
MAX_PROMPTS = 64
MAX_PROMPT_BYTES = 4096
MAX_PHRASES = 64                         # phrase_boxes entries per prompt
MAX_BOXES_PER_PHRASE = 64
MAX_KEY_BYTES = 128                      # idempotency_key, client_id
MAX_LABEL_BYTES = 256
MAX_URI_BYTES = 4096
MAX_JOB_ID_BYTES = 64
MAX_WAIT_MS = 30000                      # fetch wait_ms cap
PRIORITY_RANGE = (-100, 100)

OUTPUT_ALL = (pb.OUTPUT_RAW_TEXT | pb.OUTPUT_GENERATED_IDS | pb.OUTPUT_BOXES_PX
              | pb.OUTPUT_TIMINGS)

TERMINAL_STATES = frozenset(["DONE", "FAILED", "EXPIRED", "DEAD", "CANCELLED", "ACKED"])

_ERRORS = {
    pb.ERROR_CODE_MALFORMED: MalformedRequestError,
    pb.ERROR_CODE_PROTOCOL_VERSION: ProtocolVersionError,
    pb.ERROR_CODE_UNKNOWN_REQUEST: UnknownRequestError,
    pb.ERROR_CODE_NOT_FOUND: NotFoundError,
    pb.ERROR_CODE_INVALID_STATE: InvalidStateError,
    pb.ERROR_CODE_INVALID_ARGUMENT: InvalidArgumentError,
    pb.ERROR_CODE_TOO_LARGE: TooLargeError,
    pb.ERROR_CODE_INTERNAL: InternalError,
    pb.ERROR_CODE_UNAVAILABLE: UnavailableError,
}
RETRIABLE_ERRORS = frozenset([pb.ERROR_CODE_INTERNAL, pb.ERROR_CODE_UNAVAILABLE])


def enum_name(enum, value, prefix):
    """Enum value -> name without its prefix ("JOB_STATE_DONE" -> "DONE"); unknown -> "UNKNOWN(n)"."""
    try:
        name = enum.Name(value)
    except ValueError:
        return "UNKNOWN(%d)" % value
    return name[len(prefix):] if name.startswith(prefix) else name


def state_name(value):
    return enum_name(pb.JobState, value, "JOB_STATE_")


def status_name(value):
    return enum_name(pb.Status, value, "STATUS_")


def _utf8(value, what, max_bytes, min_bytes=0):
    if not isinstance(value, str):
        raise TypeError("%s must be a str, not %s" % (what, type(value).__name__))
    data = value.encode("utf-8")  # raises on lone surrogates
    if "\0" in value:
        raise ValueError("%s contains a NUL character" % what)
    if not min_bytes <= len(data) <= max_bytes:
        raise ValueError("%s must be %d..%d bytes of UTF-8, got %d"
                         % (what, min_bytes, max_bytes, len(data)))
    return value


def check_client_id(client_id):
    if client_id is not None:
        _utf8(client_id, "client_id", MAX_KEY_BYTES, 1)
    return client_id


def check_job_id(job_id):
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("job_id must be a non-empty str")
    try:
        raw = job_id.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("job_id must be ASCII: %r" % job_id) from None
    if len(raw) > MAX_JOB_ID_BYTES:
        raise ValueError("job_id longer than %d bytes" % MAX_JOB_ID_BYTES)
    return job_id


# --- images ------------------------------------------------------------------------------------

def load_image(image):
    """bytes-like, a path (str or os.PathLike) or a binary file object -> bytes."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            data = f.read()
    elif hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("image file object must be opened in binary mode")
    else:
        raise TypeError("image must be bytes, a path or a binary file, not %s"
                        % type(image).__name__)
    if not data:
        raise ValueError("image is empty")
    return data


# --- boxes -------------------------------------------------------------------------------------

def make_box(spec):
    """One box for a phrase of a prompt -> kosmos.v1.Box.

    Accepted: (x1, y1, x2, y2) normalized floats in [0, 1]; (ul, lr) two ints, the patch
    indices on the 32x32 grid; a dict {"x1":..} or {"ul":.., "lr":..}; a kosmos.v1.Box,
    NormalizedBox or PatchBox.
    """
    box = pb.Box()
    if isinstance(spec, pb.Box):
        box.CopyFrom(spec)
    elif isinstance(spec, pb.NormalizedBox):
        box.normalized.CopyFrom(spec)
    elif isinstance(spec, pb.PatchBox):
        box.patch.CopyFrom(spec)
    elif isinstance(spec, dict):
        if set(spec) == {"ul", "lr"}:
            box.patch.ul, box.patch.lr = int(spec["ul"]), int(spec["lr"])
        elif set(spec) == {"x1", "y1", "x2", "y2"}:
            n = box.normalized
            n.x1, n.y1, n.x2, n.y2 = (float(spec[k]) for k in ("x1", "y1", "x2", "y2"))
        else:
            raise ValueError("box dict needs keys x1,y1,x2,y2 or ul,lr: %r" % (spec,))
    else:
        values = tuple(spec)
        if len(values) == 4:
            n = box.normalized
            n.x1, n.y1, n.x2, n.y2 = (float(v) for v in values)
        elif len(values) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                      for v in values):
            box.patch.ul, box.patch.lr = values
        else:
            raise ValueError("a box is (x1, y1, x2, y2) normalized or (ul, lr) patch indices, "
                             "got %r" % (spec,))
    return box


def _is_single_box(spec):
    if isinstance(spec, (pb.Box, pb.NormalizedBox, pb.PatchBox, dict)):
        return True
    if isinstance(spec, (tuple, list)) and spec and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
        return True
    return False


def fill_phrase_boxes(prompt, bboxes):
    """bboxes for one prompt, as the reference processor takes them: one entry per
    <phrase>...</phrase> of the prompt, each None (no boxes), one box or a list of boxes."""
    if bboxes is None:
        return
    bboxes = list(bboxes)
    if len(bboxes) > MAX_PHRASES:
        raise ValueError("at most %d phrase_boxes per prompt, got %d" % (MAX_PHRASES, len(bboxes)))
    for entry in bboxes:
        pbx = prompt.phrase_boxes.add()
        if entry is None:
            continue
        boxes = [entry] if _is_single_box(entry) else list(entry)
        if len(boxes) > MAX_BOXES_PER_PHRASE:
            raise ValueError("at most %d boxes per phrase, got %d"
                             % (MAX_BOXES_PER_PHRASE, len(boxes)))
        for b in boxes:
            pbx.boxes.add().CopyFrom(make_box(b))


# --- jobs --------------------------------------------------------------------------------------

GENERATION_PARAMS = ("max_new_tokens", "min_new_tokens", "num_beams", "do_sample",
                     "temperature", "top_p", "top_k", "seed", "no_repeat_ngram_size")


def to_unix_ms(when):
    """datetime or unix seconds (int/float): absolute; timedelta: from now -> unix ms."""
    if isinstance(when, _dt.timedelta):
        return int(round((time.time() + when.total_seconds()) * 1000))
    if isinstance(when, _dt.datetime):
        if when.tzinfo is None:
            when = when.astimezone()  # naive = local time
        return int(round(when.timestamp() * 1000))
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return int(round(when * 1000))
    raise TypeError("deadline must be a datetime, timedelta or unix seconds, not %s" % type(when).__name__)


def build_job(image=None, prompts=None, bboxes=None, *, image_uri=None, inline=False,
              generation=None, model_id=None, model_hash=None, min_device_memory_bytes=None,
              priority=None, deadline=None, outputs=None, label=None, idempotency_key=None,
              max_image_bytes=MAX_IMAGE_BYTES):
    """Builds a kosmos.v1.Job. Returns (job, attached) where `attached` is the image bytes to
    send as frame 3, or None (image_uri, or inline image_data).

    prompts: a list of prompt strings. bboxes: None, or one entry per prompt, each as
    fill_phrase_boxes() takes it. generation: dict of GenerationParams fields (None = unset).
    """
    job = pb.Job()
    attached = None
    if (image is None) == (image_uri is None):
        raise ValueError("give exactly one of image and image_uri")
    if image_uri is not None:
        job.image_uri = _utf8(image_uri, "image_uri", MAX_URI_BYTES, 1)
    else:
        data = load_image(image)
        if len(data) > max_image_bytes:
            raise ValueError("image is %d bytes, over the limit of %d"
                             % (len(data), max_image_bytes))
        if inline:
            job.image_data = data
        else:
            job.image_attached_size = len(data)
            attached = data

    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts or [])
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise ValueError("a job has 1..%d prompts, got %d" % (MAX_PROMPTS, len(prompts)))
    if bboxes is not None:
        bboxes = list(bboxes)
        if len(bboxes) != len(prompts):
            raise ValueError("bboxes needs one entry per prompt (%d), got %d"
                             % (len(prompts), len(bboxes)))
    for i, text in enumerate(prompts):
        p = job.prompts.add()
        p.text = _utf8(text, "prompt %d" % i, MAX_PROMPT_BYTES)
        if bboxes is not None:
            fill_phrase_boxes(p, bboxes[i])

    for name, value in (generation or {}).items():
        if name not in GENERATION_PARAMS:
            raise TypeError("unknown generation parameter %r" % name)
        if value is not None:
            setattr(job.generation, name, value)
    if model_id is not None:
        job.requirements.model_id = _utf8(model_id, "model_id", MAX_URI_BYTES, 1)
    if model_hash is not None:
        job.requirements.model_hash = _utf8(model_hash, "model_hash", MAX_URI_BYTES, 1)
    if min_device_memory_bytes is not None:
        job.requirements.min_device_memory_bytes = int(min_device_memory_bytes)
    if priority is not None:
        if not PRIORITY_RANGE[0] <= int(priority) <= PRIORITY_RANGE[1]:
            raise ValueError("priority must be in -100..100, got %r" % (priority,))
        job.priority = int(priority)
    if deadline is not None:
        job.deadline_unix_ms = to_unix_ms(deadline)
    if outputs is not None:
        job.outputs = int(outputs)
    if label is not None:
        job.label = _utf8(label, "label", MAX_LABEL_BYTES)
    if idempotency_key is not None:
        job.idempotency_key = _utf8(idempotency_key, "idempotency_key", MAX_KEY_BYTES, 1)
    return job, attached


# --- frames ------------------------------------------------------------------------------------

def request_kind(request):
    kind = request.WhichOneof("request")
    if kind is None:
        raise ValueError("ClientRequest has no request member set")
    return kind


def encode_request(request, attached=None, max_message_bytes=MAX_MESSAGE_BYTES):
    """ClientRequest (+ attached image) -> the frames a DEALER socket sends:
    [b"", b"KOSMOS1", protobuf] or [b"", b"KOSMOS1", protobuf, image]."""
    if not request.request_id:
        raise ValueError("request_id must be non-zero")
    announced = (request.WhichOneof("request") == "submit"
                 and request.submit.job.WhichOneof("image") == "image_attached_size")
    if announced != (attached is not None):
        raise ValueError("an image frame is sent if and only if the job announces "
                         "image_attached_size")
    if announced and request.submit.job.image_attached_size != len(attached):
        raise ValueError("image_attached_size %d != image frame %d bytes"
                         % (request.submit.job.image_attached_size, len(attached)))
    body = request.SerializeToString()
    if len(body) > max_message_bytes:
        raise ValueError("request is %d bytes, over the %d-byte protobuf frame limit (send the "
                         "image as a frame, not inline)" % (len(body), max_message_bytes))
    frames = [b"", VERSION, body]
    if announced:
        frames.append(attached)
    return frames


class Unusable(Exception):
    """A received message that matches no request (malformed framing or protobuf)."""


def decode_reply(frames):
    """Frames a DEALER socket received -> ClientReply.

    Raises ProtocolVersionError for a version frame other than KOSMOS1 (fatal), Unusable for a
    message that is not a well-formed reply (the caller logs and ignores it).
    """
    frames = [bytes(f.bytes if hasattr(f, "bytes") else f) for f in frames]
    if len(frames) < 2 or frames[0] != b"":
        raise Unusable("reply without the empty delimiter frame")
    if frames[1] != VERSION:
        if frames[1].startswith(b"KOSMOS"):
            raise ProtocolVersionError("broker speaks a different protocol version: %s (this "
                                       "client speaks KOSMOS1)"
                                       % frames[1].decode("ascii", "replace"))
        raise Unusable("reply with version frame %r" % frames[1][:16])
    if len(frames) != 3:
        raise Unusable("reply with %d frames, expected 3" % len(frames))
    reply = pb.ClientReply()
    try:
        reply.ParseFromString(frames[2])
    except Exception as e:  # google.protobuf.message.DecodeError
        raise Unusable("reply does not decode: %s" % e) from None
    return reply


def error_from_reply(error):
    """ErrorReply -> the matching BrokerError subclass (not raised)."""
    cls = _ERRORS.get(error.code, BrokerError)
    name = enum_name(pb.ErrorCode, error.code, "")
    if cls is ProtocolVersionError:
        return ProtocolVersionError("%s: %s" % (name, error.message))
    return cls(error.code, name, error.message)


def check_reply_kind(request_kind_name, reply):
    """Raises the reply's error, or ProtocolError when the member does not match the request."""
    kind = reply.WhichOneof("reply")
    if kind == "error":
        raise error_from_reply(reply.error)
    if kind != request_kind_name:
        raise ProtocolError("asked %s, the broker answered %s" % (request_kind_name, kind))
    return getattr(reply, kind)


def now_ms():
    return int(time.time() * 1000)
