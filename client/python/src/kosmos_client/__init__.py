"""kosmos_client: Python client of a kosmos-farm broker (protocol KOSMOS1, docs/protocol.md).

    from kosmos_client import Client
    with Client("tcp://broker:5555", client_id="me@lab") as c:
        r = c.ground("snowman.png", prompt="<grounding> An image of")
        print(r.text)
        for phrase, (start, end), boxes in r.entities:
            print(phrase, start, end, boxes)
"""
from ._wire import (MAX_IMAGE_BYTES, MAX_MESSAGE_BYTES, OUTPUT_ALL, TERMINAL_STATES, VERSION,
                    pb)
from .client import DEFAULT_PROMPT, Client, load_keypair, load_server_key
from .errors import (BrokerError, BusyError, ConflictError, InternalError, InvalidArgumentError,
                     InvalidStateError, JobFailedError, KosmosError, KosmosTimeout,
                     MalformedRequestError, NotFoundError, ProtocolError, ProtocolVersionError,
                     RejectedError, ResultGoneError, SubmitError, TooLargeError,
                     UnavailableError, UnknownRequestError)
from .results import (Box, BrokerStatus, CancelOutcome, Entity, JobResult, JobStatus,
                      PromptResult, Submission)

OUTPUT_RAW_TEXT = pb.OUTPUT_RAW_TEXT
OUTPUT_GENERATED_IDS = pb.OUTPUT_GENERATED_IDS
OUTPUT_BOXES_PX = pb.OUTPUT_BOXES_PX
OUTPUT_TIMINGS = pb.OUTPUT_TIMINGS
OUTPUT_DEFAULT = pb.OUTPUT_DEFAULT

__version__ = "1.0.0"
__all__ = [
    "Client", "DEFAULT_PROMPT", "load_keypair", "load_server_key", "pb", "VERSION",
    "MAX_IMAGE_BYTES", "MAX_MESSAGE_BYTES", "TERMINAL_STATES",
    "OUTPUT_ALL", "OUTPUT_RAW_TEXT", "OUTPUT_GENERATED_IDS", "OUTPUT_BOXES_PX",
    "OUTPUT_TIMINGS", "OUTPUT_DEFAULT",
    "Box", "BrokerStatus", "CancelOutcome", "Entity", "JobResult", "JobStatus", "PromptResult",
    "Submission",
    "KosmosError", "KosmosTimeout", "ProtocolError", "ProtocolVersionError", "BrokerError",
    "MalformedRequestError", "UnknownRequestError", "NotFoundError", "InvalidStateError",
    "InvalidArgumentError", "TooLargeError", "InternalError", "UnavailableError",
    "SubmitError", "BusyError", "ConflictError", "RejectedError", "JobFailedError",
    "ResultGoneError",
]
