"""tidal: a self-hosted serverless platform for AI inference."""

from tidal.sdk import Context, InputError, function

__all__ = ["Context", "InputError", "function"]
__version__ = "0.1.0"
