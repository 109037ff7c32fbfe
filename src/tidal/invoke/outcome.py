"""Every way an invocation can end, and what each means to a caller: one table.

The HTTP status, whether an async retry may help, and the word stored on the activation record
all come from ``OUTCOMES``; no other module maps outcomes to statuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

JSON = "application/json"


class OutcomeKind(StrEnum):
    OK = "ok"
    FUNCTION_ERROR = "function_error"  # the function raised
    BAD_RESPONSE = "bad_response"  # the function answered what HTTP cannot carry (too large, invalid)
    BAD_INPUT = "bad_input"  # the request cannot be handed over (malformed JSON)
    INPUT_REJECTED = "input_rejected"  # the function refused it: raise tidal.InputError(...)
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    QUEUE_FULL = "queue_full"
    UNAVAILABLE = "unavailable"  # redeployed over and over while the request waited
    INSTANCE_LOST = "instance_lost"  # the instance died holding the request
    OUT_OF_MEMORY = "out_of_memory"  # ... because it passed its memory limit (the same input would again)
    SETUP_FAILED = "setup_failed"  # the module failed to import or setup() raised
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # the caller went away
    INTERNAL = "internal"  # a bug of tidal's


class Meaning(NamedTuple):
    http_status: int
    retryable: bool  # would the same request, sent again later, possibly succeed?
    activation_status: str  # the word on the activation record (`tidal activations`)


OUTCOMES: dict[OutcomeKind, Meaning] = {
    OutcomeKind.OK: Meaning(200, False, "ok"),
    OutcomeKind.FUNCTION_ERROR: Meaning(500, True, "error"),
    OutcomeKind.BAD_RESPONSE: Meaning(502, True, "error"),
    OutcomeKind.BAD_INPUT: Meaning(400, False, "bad_input"),
    OutcomeKind.INPUT_REJECTED: Meaning(422, False, "bad_input"),
    OutcomeKind.UNAUTHENTICATED: Meaning(401, False, "denied"),
    OutcomeKind.FORBIDDEN: Meaning(403, False, "denied"),
    OutcomeKind.NOT_FOUND: Meaning(404, False, "not_found"),
    OutcomeKind.TOO_LARGE: Meaning(413, False, "bad_input"),
    OutcomeKind.QUEUE_FULL: Meaning(429, True, "rejected"),
    OutcomeKind.UNAVAILABLE: Meaning(503, True, "rejected"),
    OutcomeKind.INSTANCE_LOST: Meaning(502, True, "lost"),
    OutcomeKind.OUT_OF_MEMORY: Meaning(502, False, "oom"),
    OutcomeKind.SETUP_FAILED: Meaning(502, True, "setup_failed"),
    OutcomeKind.TIMEOUT: Meaning(504, True, "timeout"),
    OutcomeKind.CANCELLED: Meaning(499, False, "cancelled"),
    OutcomeKind.INTERNAL: Meaning(500, True, "error"),
}

# The error type a client sees when the outcome has no more precise one (an exception's name).
DEFAULT_ERROR_TYPE: dict[OutcomeKind, str] = {
    OutcomeKind.BAD_RESPONSE: "BadResponse",
    OutcomeKind.BAD_INPUT: "BadRequest",
    OutcomeKind.INPUT_REJECTED: "InputError",
    OutcomeKind.UNAUTHENTICATED: "Unauthorized",
    OutcomeKind.FORBIDDEN: "Forbidden",
    OutcomeKind.NOT_FOUND: "NotFound",
    OutcomeKind.TOO_LARGE: "PayloadTooLarge",
    OutcomeKind.QUEUE_FULL: "TooManyRequests",
    OutcomeKind.UNAVAILABLE: "Unavailable",
    OutcomeKind.INSTANCE_LOST: "InstanceLost",
    OutcomeKind.OUT_OF_MEMORY: "OutOfMemory",
    OutcomeKind.SETUP_FAILED: "SetupFailed",
    OutcomeKind.TIMEOUT: "Timeout",
    OutcomeKind.CANCELLED: "Cancelled",
    OutcomeKind.INTERNAL: "InternalError",
}


class Stream(Protocol):
    """The chunks of a streaming answer. Read it to the end, or ``cancel`` it; either way the
    invocation is then finished and recorded exactly once.
    """

    outcome: Outcome  # how it ended, once ``next_chunk`` returned None or it was cancelled

    async def next_chunk(self) -> bytes | None: ...

    def cancel(self, kind: OutcomeKind = ...) -> None: ...


@dataclass(slots=True)
class Outcome:
    kind: OutcomeKind
    body: bytes = b""
    content_type: str = JSON
    status: int | None = None  # a lambda-http handler's own status; None: the table's
    headers: dict[str, str] = field(default_factory=dict)  # a lambda-http handler's own headers
    error_type: str = ""
    message: str = ""
    activation: str = ""  # "" when refused before an activation existed (404, 401, bad JSON ...)
    revision: str = ""
    cold: bool = False
    cold_detail: str = ""  # on a cold start: "fork" | "template-built" | "spawn" (how the instance started)
    stream: Stream | None = None
    errors: str = ""  # typed inputs: pydantic's error list (JSON text) of a body that did not validate

    @classmethod
    def error(cls, kind: OutcomeKind, message: str, error_type: str = "") -> Outcome:
        return cls(kind, error_type=error_type or DEFAULT_ERROR_TYPE.get(kind, "Error"), message=message)

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.OK

    @property
    def http_status(self) -> int:
        return self.status if self.status is not None else OUTCOMES[self.kind].http_status

    @property
    def retryable(self) -> bool:
        return OUTCOMES[self.kind].retryable
