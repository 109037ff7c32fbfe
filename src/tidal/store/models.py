"""Records the store keeps. msgspec Structs: cheap to build on the hot path, cheap to encode."""

from __future__ import annotations

import msgspec


class Revision(msgspec.Struct, frozen=True):
    """An immutable snapshot of a function: code digest + entry + validated spec."""

    id: str  # "<function>-00001", numbered per function like Knative's revisions
    function: str
    number: int
    digest: str  # sha256 over code digest, entry and spec: equal digest = identical deploy
    code_digest: str
    module: str
    attribute: str
    is_class: bool
    style: str
    spec: dict[str, object]
    created_at: float


class KeyRecord(msgspec.Struct, frozen=True):
    id: str
    scopes: list[str]
    created_at: float
    description: str = ""
    revoked_at: float | None = None


class Activation(msgspec.Struct):
    """The record of one invocation, billed to the millisecond."""

    id: str
    function: str
    revision: str
    instance: str
    start: float  # epoch seconds when the gateway received the request
    duration_ms: float  # gateway-observed, request in to answer out (cold start included)
    billed_ms: int  # instance time rounded up to the next millisecond, at least 1
    memory_mb: int
    cold: bool
    status: str  # "ok" | "error" | "timeout" | "cancelled" | "lost" | "rejected"
    http_status: int
    error_type: str = ""
    error_message: str = ""
    cpu_ms: float = 0.0
    peak_rss_kb: int = 0
    # Where the time went. queue_ms: waiting for an instance with room (a cold start, or all busy).
    # For a cold start also the new instance's start (backend start to Ready), of which import_ms
    # went to importing the module and setup_ms to setup() (the model load).
    queue_ms: float = 0.0
    instance_start_ms: float = 0.0
    import_ms: float = 0.0
    setup_ms: float = 0.0
    logs: str = ""
