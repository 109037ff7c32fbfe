"""tidal: a self-hosted serverless platform for AI inference."""

from tidal.sdk import Context, function

__all__ = ["Context", "function"]
__version__ = "0.1.0"
