"""What user code imports: ``@function``, ``Context``, ``InputError``.

Kept free of heavy imports (no pydantic, no msgspec): an instance imports this module on its
cold path, so every millisecond here is a millisecond of every cold start.
"""

from tidal.sdk.context import Context
from tidal.sdk.decorator import FunctionDeclaration, function
from tidal.sdk.errors import InputError

__all__ = ["Context", "FunctionDeclaration", "InputError", "function"]
