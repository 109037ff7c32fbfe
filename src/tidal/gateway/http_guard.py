"""uvicorn's httptools protocol with the limits a public server needs (slowloris, huge headers).

uvicorn offers ``h11_max_incomplete_event_size`` for h11 only, and its keep-alive timer is
disarmed by the first byte of a request: with httptools (kept: it is the fast parser), a client
could hold a connection forever by never finishing its headers, or send an 80 MiB header that
httptools accumulates on the event loop. This subclass adds, per connection:

* a header byte limit: past it, 431 and close (checked after each chunk is parsed, so the parser
  never holds more than the limit plus one read);
* a header timeout: the request line and headers must all arrive within it, from the
  connection's start or the next request's first byte; else 408 and close;
* a body idle timeout: a body that stops arriving (while the gateway is reading it) ends the
  connection; the handler sees the client as gone.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

STATUS_TEXT = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024  # request line and headers together
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 30.0  # the longest wait for the next part of a body


def guarded_protocol(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``, with ``limits``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def error_response(status: int, error_type: str, message: str) -> bytes:
    body = json.dumps({"error": {"type": error_type, "message": message}}).encode()
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    )
    return head % (status, STATUS_TEXT[status], len(body)) + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request line and headers (or waiting for the next request)
        self._head_bytes = 0  # bytes received while reading the head (a chunk may hold some body too)
        self._head_size = 0  # the head's exact size as parsed: URL, names and values
        self._refused = False  # answered 431 for this connection: the parser's callbacks do nothing
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that sends nothing at all is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # answered and closing: nothing more is parsed
            return
        if self._in_head:
            if self._head_timer is None:
                self._arm_head_timer()
            self._head_bytes += len(data)
        elif self._body_timer is not None:
            self._arm_body_timer()  # more of the body came: the idle clock starts over
        super().data_received(data)
        if (
            self._in_head
            and self._head_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse_large_head()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timers()
        if self._head_size > self.limits.max_header_bytes:  # a whole head, in one chunk, too large
            return self._refuse_large_head()
        self._arm_body_timer()  # cancelled at once if the body is already complete
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._cancel_timers()
        self._in_head, self._head_bytes, self._head_size = True, 0, 0  # the next request's head

    def on_response_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_response_complete()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _arm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(self.limits.body_idle_timeout_s, self._body_timed_out)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes:
                message = f"the request headers did not arrive within {self.limits.header_timeout_s:g} s"
                self._refuse(408, "RequestTimeout", message)
            else:
                self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self._in_head or cycle is None or not cycle.more_body or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the gateway is not reading: the client is not the slow one
            self._arm_body_timer()
            return
        cycle.disconnected = True  # the handler's next receive() says http.disconnect
        cycle.message_event.set()
        self.transport.close()

    def _refuse_large_head(self) -> None:
        message = f"the request line and headers exceed {self.limits.max_header_bytes} bytes"
        self._refuse(431, "HeadersTooLarge", message)

    def _refuse(self, status: int, error_type: str, message: str) -> None:
        self._refused = True
        self._cancel_timers()
        self.transport.write(error_response(status, error_type, message))
        self.transport.close()
