"""Per-invocation capture of ``print`` output and tracebacks.

An instance may run several invocations at once, so sys.stdout/sys.stderr are replaced by a
stream that writes into the buffer of the invocation running in the current context (a
contextvar, copied into executor threads by the worker). Output outside any invocation (module
import, setup) goes to the instance's own log file, which is where fd 1 and 2 point.
"""

from __future__ import annotations

import contextvars
import io
import sys
from typing import TextIO

MAX_LOG_CHARS = 64 * 1024

current_buffer: contextvars.ContextVar[io.StringIO | None] = contextvars.ContextVar(
    "tidal_log_buffer", default=None
)


class CapturingStream(io.TextIOBase):
    """A text stream that routes writes to the running invocation's buffer, if any."""

    def __init__(self, fallback: TextIO) -> None:
        self._fallback = fallback

    def write(self, text: str) -> int:
        buffer = current_buffer.get()
        if buffer is None:
            return self._fallback.write(text)
        if buffer.tell() < MAX_LOG_CHARS:
            buffer.write(text[: MAX_LOG_CHARS - buffer.tell()])
        return len(text)

    def flush(self) -> None:
        self._fallback.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fallback.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._fallback, "encoding", "utf-8")


def install() -> None:
    sys.stdout = CapturingStream(sys.__stdout__ or sys.stdout)
    sys.stderr = CapturingStream(sys.__stderr__ or sys.stderr)


def collected(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    return text if len(text) < MAX_LOG_CHARS else text + "\n[tidal: log truncated at 64 KiB]\n"
