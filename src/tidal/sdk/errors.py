"""Exceptions user code raises to tell tidal what went wrong (no heavy imports: cold path)."""

from __future__ import annotations


class InputError(ValueError):
    """The request's input is unusable: the caller's fault, not the function's.

    ``raise tidal.InputError("pixels must be 64 numbers")`` (or a subclass of it) answers the
    caller with 422 and the message, and is not logged as a crash. A ValueError subclass, so code
    that already catches ValueError around its input checks keeps working.
    """
