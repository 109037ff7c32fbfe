"""``/fn/{name}``: the HTTP adapter over the invocation core, in raw ASGI (the hot path).

HTTP in (path, method, key, body limits) -> ``InvocationRequest`` -> ``Invoker.invoke`` ->
``Outcome`` -> HTTP out (one body, or chunked / server-sent events for a stream). The status of
each outcome comes from ``tidal.invoke.outcome.OUTCOMES``; this module adds only what is HTTP's
own: 405, the 413 before the body is read, response headers. Nothing here raises to uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from tidal.auth.keys import KeyRing
from tidal.auth.quota import Limiter
from tidal.gateway.asgi import (
    BodyTooLarge,
    ClientGone,
    Headers,
    Receive,
    Scope,
    Send,
    discard_body,
    read_body,
    respond,
    respond_error,
)
from tidal.gateway.key_limits import respond_limited, with_rate_headers
from tidal.gateway.typed_docs import function_document
from tidal.invoke.core import Invoker
from tidal.invoke.outcome import Outcome, OutcomeKind, Stream
from tidal.invoke.request import InvocationRequest, RequestContext, Trigger
from tidal.routing.table import ROUTE_SCOPE_KEY, Match
from tidal.runtime.codec import FRAMING_HEADERS, NO_BODY_STATUSES, is_raw

if TYPE_CHECKING:
    from tidal.gateway.jobs_api import AsyncIntake

log = logging.getLogger("tidal.gateway")

PREFIX = "/fn/"
OPENAPI_PATH = "openapi.json"  # GET /fn/NAME/openapi.json: the function's OpenAPI document
# A body over the limit is still read (and thrown away) up to this many bytes, so that a client
# that sends its whole body before reading (urllib, requests) sees the 413, not a reset.
DISCARD_LIMIT = 64 * 1024 * 1024
EXTRA_HEADERS: dict[OutcomeKind, Headers] = {
    OutcomeKind.QUEUE_FULL: [(b"retry-after", b"1")],
    OutcomeKind.UNAVAILABLE: [(b"retry-after", b"1")],
    OutcomeKind.UNAUTHENTICATED: [(b"www-authenticate", b"Bearer")],
}
CLOSE: Headers = [(b"connection", b"close")]


def no_sticky_field(function: str) -> str | None:
    return None


def json_sticky_key(body: bytes, field: str) -> str | None:
    """The sticky key in a JSON body's top-level ``field``: a string as it is, a number as JSON
    writes it (``{"user_id": 42}`` -> ``"42"``). None when the body is not a JSON object or the
    field is missing, null, true/false, a list or an object: the request then gets a weighted
    random draw, as one without a key does.
    """
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    value = document.get(field) if isinstance(document, dict) else None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return msgspec.json.encode(value).decode()
    return None


class HttpInvoke:
    def __init__(
        self,
        invoker: Invoker,
        keys: KeyRing,
        max_body: int,
        sticky_field: Callable[[str], str | None] = no_sticky_field,
        jobs: AsyncIntake | None = None,
    ) -> None:
        self.invoker = invoker
        self.keys = keys
        self.max_body = max_body
        self.sticky_field = sticky_field  # function -> its spec's `sticky_key` (a JSON field), or None
        self.jobs = jobs  # `Prefer: respond-async` / `?mode=async`: stored as a job, answered 202
        self.limiter: Limiter | None = None  # per-key rate limits and quotas; set by the gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handle(scope, receive, send)
        except ClientGone:
            pass
        except Exception:  # a bug of ours must still give the client an answer, never a hang
            log.exception("invocation failed inside the gateway")
            with contextlib.suppress(Exception):
                await respond_error(send, 500, "InternalError", "the gateway failed; see its log")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        received_at = time.time()
        routed: Match | None = scope.get(ROUTE_SCOPE_KEY)  # set by tidal.gateway.routed: a route matched
        if routed is None:
            target, _, rest = scope["path"][len(PREFIX) :].partition("/")
            name, _, tag = target.partition("@")  # /fn/NAME@TAG targets a revision or tag directly
        else:
            target, rest, name, tag = "", "", routed.route.function, ""
        route = self.invoker.router.route(name)
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        caller = await self.keys.identify(headers.get("authorization"))
        # Refusals first (before reading a body nobody may send): a stranger learns nothing of which
        # names exist, not even from a 405.
        refused = self.invoker.check(name, caller)
        if refused is not None:
            return await render(send, refused)
        if rest == OPENAPI_PATH and scope["method"] == "GET" and route is not None and not route.any_method:
            document = msgspec.json.encode(function_document(route))  # typed inputs' schema (typed_docs)
            return await respond(send, 200, document, b"application/json", [])
        if caller.limits is not None and self.limiter is not None:  # counted here, once admitted
            verdict = self.limiter.admit(caller.key_id, caller.limits)
            if not verdict.allowed:
                return await respond_limited(receive, send, verdict)
            send = with_rate_headers(send, verdict)  # RateLimit-* on the answer too (IETF draft)
        if (routed is None and route is not None and not route.any_method
                and (scope["method"] != "POST" or rest)):  # fmt: skip
            status, allow = (405, [(b"allow", b"POST")]) if not rest else (404, [])
            return await respond_error(send, status, "MethodNotAllowed" if status == 405 else "NotFound",
                                       f"invoke {name!r} with POST {PREFIX}{name}", allow)  # fmt: skip
        length = headers.get("content-length")
        try:
            if length is not None and length.isdigit() and int(length) > self.max_body:
                raise BodyTooLarge
            body = await read_body(receive, self.max_body)
        except BodyTooLarge as exc:
            return await self._too_large(receive, send, length, exc.complete)
        context = RequestContext(
            revision=tag or headers.get("x-tidal-revision"),
            sticky_key=headers.get("x-tidal-key"),
            headers=headers,
            method=scope["method"],
            path=scope["path"] if routed is not None else scope["path"][len(PREFIX) + len(target) :] or "/",
            query=scope.get("query_string", b"").decode("latin-1"),
            path_params=routed.params if routed is not None else {},
            route_key=routed.route.key if routed is not None else "",
        )
        content_type = headers.get("content-type", "application/json")
        if (
            context.sticky_key is None
            and context.revision is None
            and route is not None
            and len(route.targets) > 1
        ):
            # Only a split needs a key: the single-revision hot path never parses the body here.
            field = self.sticky_field(name)
            if field is not None and body and not is_raw(content_type):
                context.sticky_key = json_sticky_key(body, field)
        request = InvocationRequest(
            name, body, content_type, caller, Trigger.HTTP, context, None, received_at
        )
        if self.jobs is not None and self.jobs.wanted(headers, context.query):
            return await self.jobs.submit(send, scope, request, headers)
        outcome = await self.invoker.invoke(request)
        if outcome.stream is not None:
            return await stream(
                outcome.stream, receive, send, "text/event-stream" in headers.get("accept", "")
            )
        await render(send, outcome)

    async def _too_large(self, receive: Receive, send: Send, length: str | None, complete: bool) -> None:
        """Answer 413 and close; read the rest of the body first unless it is beyond all reason."""
        beyond_reason = length is not None and length.isdigit() and int(length) > DISCARD_LIMIT
        if not (complete or beyond_reason):
            await discard_body(receive, DISCARD_LIMIT)
        limit = f"the request body exceeds the limit of {self.max_body} bytes"
        await respond_error(send, 413, "PayloadTooLarge", limit, list(CLOSE))


def tidal_headers(outcome: Outcome) -> Headers:
    if not outcome.activation:
        return []
    headers = [
        (b"x-tidal-revision", outcome.revision.encode()),
        (b"x-tidal-activation", outcome.activation.encode()),
        (b"x-tidal-cold-start", b"1" if outcome.cold else b"0"),
    ]
    if outcome.cold and outcome.cold_detail:  # fork | template-built | spawn
        headers.append((b"x-tidal-cold-start-detail", outcome.cold_detail.encode()))
    return headers


async def render(send: Send, outcome: Outcome) -> None:
    headers = tidal_headers(outcome)
    if outcome.ok:
        if outcome.headers:  # a lambda-http handler's, checked in its instance (tidal.runtime.codec)
            try:
                headers.extend((key.encode("latin-1"), value.encode("latin-1"))
                               for key, value in outcome.headers.items() if key not in FRAMING_HEADERS)  # fmt: skip
            except UnicodeEncodeError:
                message = "the function answered a header HTTP cannot carry"
                return await respond_error(send, 502, "BadResponse", message, tidal_headers(outcome))
        if outcome.http_status in NO_BODY_STATUSES:  # no body, and no content-length, may follow
            await send({"type": "http.response.start", "status": outcome.http_status, "headers": headers})
            return await send({"type": "http.response.body", "body": b""})
        return await respond(send, outcome.http_status, outcome.body, outcome.content_type.encode(), headers)
    headers.extend(EXTRA_HEADERS.get(outcome.kind, ()))
    await respond_error(
        send, outcome.http_status, outcome.error_type, outcome.message, headers, outcome.activation,
        outcome.errors,
    )  # fmt: skip


async def stream(chunks: Stream, receive: Receive, send: Send, sse: bool) -> None:
    """Relay chunks as chunked HTTP (or server-sent events); a client that leaves cancels the call."""
    headers = tidal_headers(chunks.outcome)
    content_type = b"text/event-stream" if sse else b"application/octet-stream"
    headers += [(b"content-type", content_type), (b"cache-control", b"no-cache")]
    disconnected = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while True:
            next_chunk = asyncio.ensure_future(chunks.next_chunk())
            await asyncio.wait({next_chunk, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            if not next_chunk.done():
                next_chunk.cancel()
                chunks.cancel(OutcomeKind.CANCELLED)
                return
            chunk = next_chunk.result()
            if chunk is None:
                break
            await send(
                {"type": "http.response.body", "body": _sse(chunk) if sse else chunk, "more_body": True}
            )
        ended = chunks.outcome
        tail = b""
        if sse and not ended.ok:
            error = msgspec.json.encode({"error": {"type": ended.error_type, "message": ended.message}})
            tail = b"event: error\ndata: " + error + b"\n\n"
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": tail, "more_body": False})
    except OSError:
        chunks.cancel(OutcomeKind.CANCELLED)
    finally:
        disconnected.cancel()


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _sse(data: bytes) -> bytes:
    lines = data.rstrip(b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
