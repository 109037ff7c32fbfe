"""What user code imports: ``@function``, ``Context``, ``InputError``, ``Batch``, ``ItemError``.

Kept free of heavy imports (no pydantic, no msgspec): an instance imports this module on its
cold path, so every millisecond here is a millisecond of every cold start.
"""

from tidal.sdk.batch import Batch, ItemError
from tidal.sdk.context import Context
from tidal.sdk.decorator import FunctionDeclaration, function
from tidal.sdk.errors import InputError
from tidal.sdk.triggers import bucket, cron, queue

__all__ = [
    "Batch",
    "Context",
    "FunctionDeclaration",
    "InputError",
    "ItemError",
    "bucket",
    "cron",
    "function",
    "queue",
]
