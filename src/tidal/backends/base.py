"""The Backend protocol: everything above this line is blind to where instances run.

A backend starts instances of a revision and hands back, for each, an address the router can
open a framed-protocol connection to (a Unix socket path locally, host:port on Ray), and tells
when an instance exits. The router, the gateway and the autoscaler know nothing else about it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from tidal.spec import FunctionSpec
from tidal.store.models import Revision


@dataclass(frozen=True)
class Capacity:
    """What one instance reserves (from the function's spec)."""

    cpu: float
    memory_mb: int
    gpu: float = 0  # whole GPUs, or a share of one (0.5)


@dataclass(frozen=True)
class InstanceSpec:
    """What a backend needs to start instances of one revision: validated, typed, resolved once."""

    revision: Revision
    spec: FunctionSpec  # the revision's validated spec (function-level fields included, unused by backends)
    code_dir: str


@dataclass
class InstanceHandle:
    id: str
    revision: str
    address: str  # "unix:/path" or "tcp:host:port"
    capacity: Capacity
    started_at: float
    pid: int | None = None
    exit_code: int | None = None
    log_path: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # Why it died, where the backend can tell at once (it passed its memory limit). The router
    # asks the moment the connection drops, so callers get the reason, not a bare "lost".
    loss_reason: Callable[[], str | None] = field(default=lambda: None, repr=False, compare=False)


# The ``extra`` key saying how an instance started, for x-tidal-cold-start-detail: "fork" (from a
# ready template), "template-built" (its template was built for it), "spawn" (a fresh process).
COLD_START_DETAIL = "cold_start_detail"


# The ``extra`` key a backend sets on an instance whose host is gone ("node NODE lost" on Ray):
# its connection may never drop by itself (a dead machine sends no reset), so the router closes it.
LOST = "lost"

# The ``extra`` key holding a TCP instance's connect token: the router sends it first on each
# connection, and the instance serves no connection that does not (tidal.runtime.gateway_auth).
CONNECT_TOKEN = "connect_token"

# Called by the backend once an instance's process is gone, whatever the reason.
ExitCallback = Callable[[InstanceHandle], Awaitable[None] | None]


class Backend(Protocol):
    name: str

    async def start(self, launch: InstanceSpec, count: int = 1) -> list[InstanceHandle]:
        """Launch ``count`` instances of ``launch.revision``; returns at once (readiness comes as a frame)."""
        ...

    async def stop(self, instance: InstanceHandle, grace_s: float = 5.0) -> None:
        """Stop an instance: polite first, forceful after ``grace_s``."""
        ...

    async def prepare(self, launch: InstanceSpec) -> None:
        """Get ready to start instances of ``launch.revision`` fast (the local backend warms a template).

        Returns at once; the work goes on in the background. A backend with nothing to warm does nothing.
        """
        ...

    async def release(self, launch: InstanceSpec) -> None:
        """``launch.revision`` will start no more instances (it was retired): drop what ``prepare`` warmed."""
        ...

    def instances(self, revision: str | None = None) -> list[InstanceHandle]:
        """Instances this backend is running (of one revision, or all)."""
        ...

    def on_exit(self, callback: ExitCallback) -> None:
        """Register a callback run when any instance exits."""
        ...

    async def close(self) -> None:
        """Stop everything (gateway shutdown)."""
        ...
