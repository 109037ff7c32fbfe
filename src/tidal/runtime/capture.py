"""Per-invocation capture of ``print`` output and tracebacks, capped at 64 KiB an invocation.

An instance may run several invocations at once, so sys.stdout/sys.stderr are replaced by a
stream that writes into the buffer of the invocation running in the current context (a
contextvar, copied into executor threads by the worker). Output outside any invocation (module
import, setup) goes to the instance's own log file, which is where fd 1 and 2 point.

What one invocation prints is kept up to ``MAX_LOG_BYTES`` (UTF-8) and the rest only counted, so
a huge print never travels over the socket: a call printing 10 MB sends 64 KiB, ending in
``[tidal: 9934528 more bytes of output dropped]``. The gateway applies the same cap (``cap_logs``)
before it records, whatever an instance sends.
"""

from __future__ import annotations

import contextvars
import io
import sys
import threading
from typing import TextIO

MAX_LOG_BYTES = 64 * 1024
DROPPED = "\n[tidal: {} more bytes of output dropped]"
MARKER_ROOM = 64  # bytes kept free for the marker: head + marker stay within MAX_LOG_BYTES


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def utf8_head(text: str, size: int) -> str:
    """The longest start of ``text`` whose UTF-8 is at most ``size`` bytes (no split character)."""
    return text[:size].encode("utf-8", "replace")[:size].decode("utf-8", "ignore")


def cap_logs(text: str, limit: int = MAX_LOG_BYTES) -> str:
    """``text`` if its UTF-8 fits in ``limit`` bytes, else its head and the marker, within ``limit``.

    >>> cap_logs("x" * 100_000)[-44:]
    '\\n[tidal: 34528 more bytes of output dropped]'
    """
    if len(text) * 4 <= limit or utf8_size(text) <= limit:  # the first test spares the encoding
        return text
    head = utf8_head(text, limit - MARKER_ROOM)
    return head + DROPPED.format(utf8_size(text) - utf8_size(head))


class LogBuffer:
    """What one invocation printed: the first ``limit`` bytes (marker included), the rest counted."""

    def __init__(self, limit: int = MAX_LOG_BYTES) -> None:
        self._parts: list[str] = []
        self._room = limit - MARKER_ROOM
        self._dropped = 0
        self._lock = threading.Lock()  # user threads of one invocation may print at once

    def write(self, text: str) -> None:
        size = utf8_size(text)
        with self._lock:
            if size <= self._room:
                self._parts.append(text)
                self._room -= size
                return
            head = utf8_head(text, self._room) if self._room > 0 else ""
            self._parts.append(head)
            self._room = 0
            self._dropped += size - utf8_size(head)

    def getvalue(self) -> str:
        with self._lock:
            text = "".join(self._parts)
            return text + DROPPED.format(self._dropped) if self._dropped else text


current_buffer: contextvars.ContextVar[LogBuffer | None] = contextvars.ContextVar(
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
        buffer.write(text)
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


def collected(buffer: LogBuffer) -> str:
    return buffer.getvalue()
