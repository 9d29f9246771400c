"""Plain-Python views of FetchReply / Result / StatusReply (docs/protocol.md sections 5.2-5.6).

Every object keeps the protobuf message it came from in `.proto` for fields not mapped here.
"""
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Tuple

from ._wire import TERMINAL_STATES, enum_name, pb, state_name, status_name


class Box(NamedTuple):
    """A box: normalized [0, 1] or source-image pixels, upper-left (x1, y1), lower-right (x2, y2)."""
    x1: float
    y1: float
    x2: float
    y2: float


def _box(b):
    return Box(b.x1, b.y1, b.x2, b.y2)


@dataclass(frozen=True)
class Entity:
    """One grounded phrase. Unpacks like the reference's entities:
    ``phrase, (start, end), boxes = entity``."""
    phrase: str
    span: Tuple[int, int]                 # code points in PromptResult.text, [start, end)
    boxes: Tuple[Box, ...]                # normalized
    boxes_px: Tuple[Box, ...] = ()        # source-image pixels (OUTPUT_BOXES_PX)
    byte_span: Tuple[int, int] = (0, 0)   # UTF-8 bytes of PromptResult.text, [start, end)
    patches: Tuple[Tuple[int, int], ...] = ()  # (ul, lr) patch indices of each box

    def __iter__(self):
        return iter((self.phrase, self.span, list(self.boxes)))

    @classmethod
    def from_proto(cls, e):
        return cls(
            phrase=e.phrase,
            span=(e.start_cp, e.end_cp),
            boxes=tuple(_box(b.box) for b in e.boxes),
            boxes_px=tuple(_box(b) for b in e.boxes_px),
            byte_span=(e.start_byte, e.end_byte),
            patches=tuple((b.patch.ul, b.patch.lr) for b in e.boxes if b.HasField("patch")),
        )


_TIMING_FIELDS = ("load_ms", "preprocess_ms", "vision_ms", "prefill_ms", "decode_ms",
                  "new_tokens", "prompt_tokens")


@dataclass
class PromptResult:
    """The result of one prompt of a job."""
    index: int
    status: str                      # "OK", "FAILED", "EXPIRED", "DEAD", "CANCELLED", ...
    retriable: bool
    message: str
    text: str                        # cleaned text, tags removed
    entities: List[Entity]
    raw_text: Optional[str]          # with OUTPUT_RAW_TEXT
    generated_ids: List[int]         # with OUTPUT_GENERATED_IDS
    timings: Optional[dict]          # with OUTPUT_TIMINGS: the fields of kosmos.v1.Timings
    seed: Optional[int]
    proto: object = field(repr=False, default=None)

    @property
    def ok(self):
        return self.status == "OK"

    @property
    def raw(self):
        return self.raw_text

    @property
    def boxes_px(self):
        """[(phrase, Box in pixels), ...] over all entities, in order."""
        return [(e.phrase, b) for e in self.entities for b in e.boxes_px]

    @classmethod
    def from_proto(cls, p):
        timings = None
        if p.HasField("timings"):
            timings = {f: getattr(p.timings, f) for f in _TIMING_FIELDS
                       if p.timings.HasField(f)}
        return cls(
            index=p.prompt_index,
            status=status_name(p.status),
            retriable=p.retriable,
            message=p.message,
            text=p.text,
            entities=[Entity.from_proto(e) for e in p.entities],
            raw_text=p.raw_text if p.HasField("raw_text") else None,
            generated_ids=list(p.generated_ids),
            timings=timings,
            seed=p.seed if p.HasField("seed") else None,
            proto=p,
        )


@dataclass
class JobResult:
    """kosmos.v1.Result. `prompts` has one entry per prompt of the job, in order. The
    properties text, entities, raw, raw_text, boxes_px, generated_ids and timings are those of
    the first prompt (the only one for Client.ground())."""
    job_id: str
    status: str
    retriable: bool
    message: str
    prompts: List[PromptResult]
    image_width: int
    image_height: int
    worker_name: str
    device_name: str
    attempt: int
    started_unix_ms: int
    finished_unix_ms: int
    label: str
    proto: object = field(repr=False, default=None)

    @property
    def ok(self):
        """The job and every prompt ended STATUS_OK."""
        return self.status == "OK" and all(p.ok for p in self.prompts)

    def _first(self):
        if not self.prompts:
            raise AttributeError("the result has no prompts")
        return self.prompts[0]

    text = property(lambda self: self._first().text)
    entities = property(lambda self: self._first().entities)
    raw_text = property(lambda self: self._first().raw_text)
    raw = raw_text
    boxes_px = property(lambda self: self._first().boxes_px)
    generated_ids = property(lambda self: self._first().generated_ids)
    timings = property(lambda self: self._first().timings)

    @classmethod
    def from_proto(cls, r):
        return cls(
            job_id=r.job_id,
            status=status_name(r.status),
            retriable=r.retriable,
            message=r.message,
            prompts=[PromptResult.from_proto(p) for p in r.prompts],
            image_width=r.image_width,
            image_height=r.image_height,
            worker_name=r.worker_name,
            device_name=r.device_name,
            attempt=r.attempt,
            started_unix_ms=r.started_unix_ms,
            finished_unix_ms=r.finished_unix_ms,
            label=r.label,
            proto=r,
        )


@dataclass
class JobStatus:
    """kosmos.v1.FetchReply: a job's state, with its result once terminal (not after ack)."""
    job_id: str
    state: str                       # "QUEUED", "RUNNING", "RETRY_WAIT", "DONE", ...
    attempt: int
    queue_position: Optional[int]    # with QUEUED
    submitted_unix_ms: int
    next_attempt_unix_ms: Optional[int]  # with RETRY_WAIT
    result: Optional[JobResult]
    proto: object = field(repr=False, default=None)

    @property
    def terminal(self):
        return self.state in TERMINAL_STATES

    @classmethod
    def from_proto(cls, f):
        return cls(
            job_id=f.job_id,
            state=state_name(f.state),
            attempt=f.attempt,
            queue_position=f.queue_position if f.HasField("queue_position") else None,
            submitted_unix_ms=f.submitted_unix_ms,
            next_attempt_unix_ms=(f.next_attempt_unix_ms if f.HasField("next_attempt_unix_ms")
                                  else None),
            result=JobResult.from_proto(f.result) if f.HasField("result") else None,
            proto=f,
        )


class Submission(NamedTuple):
    """What Client.submit_job() returns."""
    job_id: str
    duplicate: bool          # the idempotency key matched an earlier submit: nothing new runs
    idempotency_key: str


class CancelOutcome(NamedTuple):
    job_id: str
    cancelled: bool          # False: it was already terminal
    state: str


def _is_repeated(fd):
    if hasattr(fd, "is_repeated"):  # protobuf >= 5.x; `label` is gone in 7.x
        return fd.is_repeated
    return fd.label == fd.LABEL_REPEATED


def message_to_dict(msg):
    """A protobuf message -> dict of its present fields; enums by name, sub-messages as dicts."""
    out = {}
    for fd, value in msg.ListFields():
        def conv(v):
            if fd.type == fd.TYPE_MESSAGE:
                return message_to_dict(v)
            if fd.type == fd.TYPE_ENUM:
                ev = fd.enum_type.values_by_number.get(v)
                return ev.name if ev is not None else "UNKNOWN(%d)" % v
            return v
        if _is_repeated(fd):
            out[fd.name] = [conv(v) for v in value]
        else:
            out[fd.name] = conv(value)
    return out


@dataclass
class BrokerStatus:
    """kosmos.v1.StatusReply."""
    broker_version: str
    broker_instance: int
    uptime_ms: int
    queue: dict                      # {"QUEUED": n, "RUNNING": n, ...}
    workers: List[dict]              # WorkerInfo fields as dicts
    totals: dict                     # {"submitted": n, "done": n, ...}
    jobs_per_second: float
    tokens_per_second: float
    memory_bytes: int
    memory_bound_bytes: int
    proto: object = field(repr=False, default=None)

    @classmethod
    def from_proto(cls, s):
        totals = {name[len("total_"):]: getattr(s, name)
                  for name in ("total_submitted", "total_done", "total_failed", "total_dead",
                               "total_expired", "total_cancelled")}
        return cls(
            broker_version=s.broker_version,
            broker_instance=s.broker_instance,
            uptime_ms=s.uptime_ms,
            queue={state_name(c.state): c.count for c in s.queue},
            workers=[message_to_dict(w) for w in s.workers],
            totals=totals,
            jobs_per_second=s.jobs_per_second,
            tokens_per_second=s.tokens_per_second,
            memory_bytes=s.memory_bytes,
            memory_bound_bytes=s.memory_bound_bytes,
            proto=s,
        )
