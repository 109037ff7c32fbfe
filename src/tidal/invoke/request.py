"""What an invocation asks for, independent of the transport that carried it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from tidal.auth.keys import ANONYMOUS, PLATFORM, Caller

__all__ = ["ANONYMOUS", "PLATFORM", "Caller", "InvocationRequest", "RequestContext", "Trigger"]

JSON = "application/json"


class Trigger(StrEnum):
    """What made the invocation; recorded on its activation."""

    HTTP = "http"
    JOB = "job"
    CRON = "cron"
    BUCKET = "bucket"
    QUEUE = "queue"
    SHADOW = "shadow"  # a copy of a client's call sent to a shadow candidate (tidal shadow)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 1 us more to build, per request
class RequestContext:
    """What routing may look at besides the function's name.

    ``revision`` targets one revision directly (a revision id or a traffic tag); ``sticky_key``
    keeps a caller on the same revision while a split's weights stay the same; ``model_id`` will
    pick a model inside a multiplexed instance. HTTP details travel for lambda-http handlers.
    """

    revision: str | None = None
    sticky_key: str | None = None
    model_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    path: str = "/"
    query: str = ""
    # Set when an HTTP route (tidal.routing) matched: its parameters and its key, `GET /items/{id}`.
    path_params: dict[str, str] = field(default_factory=dict)
    route_key: str = ""


NO_CONTEXT = RequestContext()


@dataclass(slots=True)
class InvocationRequest:
    """One invocation to make. ``timeout_s`` is the time the caller still grants (remaining time,
    never a wall-clock deadline: clocks of other machines differ); the function's own ``timeout``
    caps it, and None means that timeout.
    """

    function: str
    body: bytes = b""
    content_type: str = JSON
    caller: Caller = ANONYMOUS
    trigger: Trigger = Trigger.HTTP
    context: RequestContext = field(default_factory=RequestContext)
    timeout_s: float | None = None
    received_at: float = field(default_factory=time.time)
