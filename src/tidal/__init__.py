"""tidal: a self-hosted serverless platform for AI inference.

``import tidal`` runs in every instance's cold start, so it imports only the SDK (``function``,
``Context``, ``InputError``). The client for calling functions from Python (``tidal.Function``,
``tidal.Job``, ``tidal.RemoteError`` ...) lives in ``tidal.remote`` and is imported, with httpx,
the first time one of its names is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidal import sdk
from tidal.sdk import Batch, Context, InputError, ItemError, bucket, cron, function, queue

if TYPE_CHECKING:
    from tidal.remote import (
        AuthError,
        Cancelled,
        Function,
        FunctionError,
        FunctionTimeout,
        GatewayError,
        InstanceError,
        InvalidInput,
        Job,
        NotFoundError,
        Overloaded,
        RemoteError,
    )

__all__ = [
    "AuthError",
    "Batch",
    "Cancelled",
    "Context",
    "Function",
    "FunctionError",
    "FunctionTimeout",
    "GatewayError",
    "InputError",
    "InstanceError",
    "InvalidInput",
    "ItemError",
    "Job",
    "NotFoundError",
    "Overloaded",
    "RemoteError",
    "bucket",
    "cron",
    "function",
    "queue",
]
_REMOTE_NAMES = frozenset(__all__) - frozenset(sdk.__all__)  # what tidal.remote provides


def __getattr__(name: str) -> Any:
    if name in _REMOTE_NAMES:
        from tidal import remote

        return getattr(remote, name)
    raise AttributeError(f"module 'tidal' has no attribute {name!r}")


__version__ = "0.1.0"
