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
    errors: str = "",
) -> None:
    error: dict[str, object] = {"type": error_type, "message": message}
    if activation:
        error["activation"] = activation
    if errors:  # JSON text already (pydantic's error list, from the instance)
        error["errors"] = msgspec.Raw(errors.encode())
    await respond(send, status, msgspec.json.encode({"error": error}), JSON_TYPE, headers or [])


ADMIN_PREFIX = "/v1/"
ADMIN_BODY_LIMIT = 1024 * 1024  # admin JSON bodies (keys, traffic, triggers ...) are small
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Routes that authenticate by something else than an API key (an object store's event token).
NO_KEY_ROUTES = ("/v1/buckets/events/",)


def admin_body_rule(method: str, path: str) -> tuple[bool, int | None]:
    """For a request under /v1: whether it needs a key before its body is read, and the body limit
    the guard enforces (None: the route has its own, or the method carries no body).
    """
    if method not in BODY_METHODS:
        return False, None
    needs_key = not path.startswith(NO_KEY_ROUTES)
    if _reads_own_body(method, path):
        return needs_key, None
    return needs_key, ADMIN_BODY_LIMIT


def _reads_own_body(method: str, path: str) -> bool:
    """Routes that read their bodies with limits of their own: a deploy's zip, a bucket object."""
    if method == "POST" and path == "/v1/functions":
        return True
    return method == "PUT" and path.startswith("/v1/buckets/") and "/objects/" in path


class AdminGuard:
    """In front of the admin API: a request with a body and no valid key is refused (401) before
    its body is read, and a body over ADMIN_BODY_LIMIT is refused (413) before the route sees it,
    so that a stranger's 300 MiB upload never lands in memory. Scopes stay the routes' business.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 authenticated: Callable[[str | None], Awaitable[bool]]) -> None:  # fmt: skip
        self.app = app
        self.authenticated = authenticated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        needs_key, limit = admin_body_rule(scope["method"], scope["path"])
        if not needs_key and limit is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        try:
            if needs_key:
                authorization = headers.get(b"authorization")
                if not await self.authenticated(authorization.decode("latin-1") if authorization else None):
                    return await self._refuse(receive, send, headers, 401, "Unauthorized",
                                              "a valid admin API key is required (Authorization: Bearer KEY)")  # fmt: skip
            if limit is None:
                return await self.app(scope, receive, send)
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                raise BodyTooLarge
            body = await read_body(receive, limit)
        except BodyTooLarge:
            return await self._refuse(receive, send, headers, 413, "PayloadTooLarge",
                                      f"the request body exceeds the admin API's limit of {limit} bytes")  # fmt: skip
        except ClientGone:
            return None
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    async def _refuse(
        receive: Receive, send: Send, headers: dict[bytes, bytes], status: int, error_type: str, message: str
    ) -> None:
        """Answer and close; a small body is read first, so that a client that writes it all before
        reading (urllib, requests) sees the answer, not a reset."""
        length = headers.get(b"content-length", b"")
        if not (length.isdigit() and int(length) > ADMIN_BODY_LIMIT):
            try:
                await discard_body(receive, ADMIN_BODY_LIMIT)
            except ClientGone:
                return
        extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
        await respond_error(send, status, error_type, message, [(b"connection", b"close"), *extra])


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over ``body`` (already read) once, then waits as the real one does."""
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
