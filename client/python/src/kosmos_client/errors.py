"""Exceptions of kosmos_client. Every one derives from KosmosError."""


class KosmosError(Exception):
    """Base class of every error this package raises on purpose."""


class KosmosTimeout(KosmosError, TimeoutError):
    """No reply from the broker after all resends, or a wait ran past its time."""


class ProtocolError(KosmosError):
    """The broker answered something this client cannot use (wrong reply type, ...)."""


class ProtocolVersionError(ProtocolError):
    """The broker speaks another protocol version (version frame other than KOSMOS1, or
    ERROR_CODE_PROTOCOL_VERSION). Fatal: a configuration error, never retried."""


# --- ClientReply.error -------------------------------------------------------------------------

class BrokerError(KosmosError):
    """The broker answered with ClientReply.error (docs/protocol.md section 7)."""

    code_name = "ERROR_CODE_UNSPECIFIED"

    def __init__(self, code, code_name, message):
        self.code = code
        self.code_name = code_name
        self.message = message
        super().__init__("%s: %s" % (code_name, message) if message else code_name)


class MalformedRequestError(BrokerError):
    """ERROR_CODE_MALFORMED: the broker could not decode the request (a client bug)."""


class UnknownRequestError(BrokerError):
    """ERROR_CODE_UNKNOWN_REQUEST: the broker does not know this request type (older broker)."""


class NotFoundError(BrokerError):
    """ERROR_CODE_NOT_FOUND: no such job under this client identity (or forgotten)."""


class InvalidStateError(BrokerError):
    """ERROR_CODE_INVALID_STATE: e.g. ack of a job that is not terminal yet."""


class InvalidArgumentError(BrokerError):
    """ERROR_CODE_INVALID_ARGUMENT: e.g. a missing job_id."""


class TooLargeError(BrokerError):
    """ERROR_CODE_TOO_LARGE: a frame over the broker's limit."""


class InternalError(BrokerError):
    """ERROR_CODE_INTERNAL: broker-side failure; retried by the client, raised when the
    retries are used up."""


class UnavailableError(BrokerError):
    """ERROR_CODE_UNAVAILABLE: the broker is shutting down; retried like InternalError."""


# --- SubmitReply outcomes ----------------------------------------------------------------------

class SubmitError(KosmosError):
    """A submit that was not accepted."""


class BusyError(SubmitError):
    """SubmitReply.busy: the queue (or this client's share of it) is full; nothing was stored.
    Retry after `retry_after` seconds with the same idempotency key."""

    def __init__(self, retry_after, queue_depth, idempotency_key=None):
        self.retry_after = retry_after
        self.queue_depth = queue_depth
        self.idempotency_key = idempotency_key
        super().__init__("broker busy (queue depth %s), retry after %.3f s"
                         % (queue_depth, retry_after))


class ConflictError(SubmitError):
    """SubmitReply.conflict: the idempotency key was used before for a different job."""

    def __init__(self, job_id, idempotency_key=None):
        self.job_id = job_id
        self.idempotency_key = idempotency_key
        super().__init__("idempotency key %r already used for a different job %s"
                         % (idempotency_key, job_id))


class RejectedError(SubmitError):
    """SubmitReply.rejected: the job is invalid and never will run; do not retry unchanged."""

    def __init__(self, code, code_name, reason):
        self.code = code
        self.code_name = code_name
        self.reason = reason
        super().__init__("job rejected (%s): %s" % (code_name, reason))


# --- job outcomes ------------------------------------------------------------------------------

class JobFailedError(KosmosError):
    """Client.ground(): the job (or its prompt) did not end with STATUS_OK. `result` is the
    JobResult (its status, message and retriable say why)."""

    def __init__(self, result, message):
        self.result = result
        super().__init__(message)


class ResultGoneError(KosmosError):
    """The job is ACKED: its result was deleted (e.g. a resubmit with the key of a job whose
    result was fetched and acked before)."""

    def __init__(self, job_id):
        self.job_id = job_id
        super().__init__("job %s is acked: its result is gone" % job_id)
