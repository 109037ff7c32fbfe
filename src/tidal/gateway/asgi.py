"""Small raw-ASGI helpers for the hot path (no Request/Response objects per call)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_TYPE = b"application/json"


class BodyTooLarge(Exception):
    """The body is over the limit; ``complete`` when its last part has been received already."""

    def __init__(self, complete: bool = False) -> None:
        super().__init__("the request body is too large")
        self.complete = complete


class ClientGone(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(complete=not message.get("more_body", False))
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def discard_body(receive: Receive, limit: int) -> bool:
    """Read and drop what is left of a request body, up to ``limit`` bytes; True if it all came.

    Answering before the client finished sending makes the kernel reset the connection (unread
    data on close), and clients that write the whole body before reading never see the answer.
    """
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


async def respond(send: Send, status: int, body: bytes, content_type: bytes, headers: Headers) -> None:
    headers.append((b"content-type", content_type))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_error(
    send: Send,
    status: int,
    error_type: str,
    message: str,
    headers: Headers | None = None,
    activation: str = "",
) -> None:
    error: dict[str, str] = {"type": error_type, "message": message}
    if activation:
        error["activation"] = activation
    await respond(send, status, msgspec.json.encode({"error": error}), JSON_TYPE, headers or [])
