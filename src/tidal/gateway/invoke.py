"""``/fn/{name}``: the invocation hot path, in raw ASGI.

Match (route, method, auth, size, JSON) -> acquire an instance (maybe a cold start) -> one
framed call -> answer (one body, or a stream) -> one activation record appended for metering.
Every exit answers the client exactly once with a precise status; nothing here raises to uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from dataclasses import dataclass

import msgspec

from tidal.auth.keys import Access
from tidal.gateway.asgi import (
    BodyTooLarge,
    ClientGone,
    Headers,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    respond_error,
)
from tidal.gateway.platform import Platform
from tidal.metering.billing import billed_ms
from tidal.router.connection import Call, InstanceClient, InstanceLost, StartFailed
from tidal.router.pool import QueueFull, RevisionRetired
from tidal.router.router import Route
from tidal.runtime.codec import is_raw
from tidal.runtime.protocol import CallStats, Chunk, End, Error, Invoke, Message, Result
from tidal.store.models import Activation

log = logging.getLogger("tidal.gateway")

PREFIX = "/fn/"
DEADLINE_GRACE_S = 2.0  # how long past its deadline an instance may take to say "Timeout" itself
STATUS_OF_ERROR = {"Timeout": 504, "BadRequest": 400, "InstanceLost": 502, "Cancelled": 499}
OUTCOME_OF_STATUS = {504: "timeout", 502: "lost", 499: "cancelled", 429: "rejected"}
NO_STATS = CallStats(0.0, 0.0, 0)
HIDDEN_HEADERS = frozenset({"authorization", "cookie"})


class ActivationIds:
    """Unique activation ids without a syscall per request: a random per-process prefix + a counter.

    The prefix (5 random bytes) makes ids from different gateway runs and processes distinct.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(5)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):06x}"


@dataclass(slots=True)
class Exchange:
    """One invocation as it goes through the handler: the ASGI request and its activation record."""

    scope: Scope
    receive: Receive
    send: Send
    headers: dict[str, str]
    body: bytes
    content_type: str
    activation: Activation
    deadline: float  # epoch seconds: received + the function's timeout


class InvokeHandler:
    def __init__(self, platform: Platform) -> None:
        self.activation_ids = ActivationIds()
        self.platform = platform
        self.router = platform.router
        self.keys = platform.keys
        self.max_body = platform.config.max_body_bytes

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
        name, _, rest = scope["path"][len(PREFIX) :].partition("/")
        route = self.router.route(name)
        if route is None:
            return await respond_error(send, 404, "NotFound", f"no function named {name!r}")
        http_route = route.style == "lambda-http"
        if not http_route and (scope["method"] != "POST" or rest):
            status, allow = (405, [(b"allow", b"POST")]) if not rest else (404, [])
            return await respond_error(
                send,
                status,
                "MethodNotAllowed" if status == 405 else "NotFound",
                f"invoke {name!r} with POST {PREFIX}{name}",
                allow,
            )

        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        if not route.spec.public:
            access, _ = self.keys.check(headers.get("authorization"), "invoke:" + name)
            if access is Access.UNAUTHENTICATED:
                return await respond_error(
                    send,
                    401,
                    "Unauthorized",
                    "a valid API key is required (Authorization: Bearer KEY)",
                    [(b"www-authenticate", b"Bearer")],
                )
            if access is Access.FORBIDDEN:
                return await respond_error(send, 403, "Forbidden", f"this key may not invoke {name!r}")

        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await respond_error(send, 413, "PayloadTooLarge", self._too_large())
        try:
            body = await read_body(receive, self.max_body)
        except BodyTooLarge:
            return await respond_error(send, 413, "PayloadTooLarge", self._too_large())
        content_type = headers.get("content-type", "application/json")
        if not http_route and not is_raw(content_type) and body:
            try:
                msgspec.json.decode(body)
            except msgspec.DecodeError as exc:
                return await respond_error(send, 400, "BadRequest", f"malformed JSON body: {exc}")

        activation = Activation(
            id=self.activation_ids.next(),
            function=name,
            revision=route.revision.id,
            instance="",
            start=received_at,
            duration_ms=0.0,
            billed_ms=0,
            memory_mb=route.spec.memory,
            cold=False,
            status="ok",
            http_status=200,
        )
        exchange = Exchange(scope, receive, send, headers, body, content_type, activation,
                            received_at + route.spec.timeout)  # fmt: skip
        try:
            await self.call(route, exchange)
        finally:
            activation.duration_ms = (time.time() - received_at) * 1000
            if self.platform.recorder is not None:
                self.platform.recorder.record(activation)

    def _too_large(self) -> str:
        return f"the request body exceeds the limit of {self.max_body} bytes"

    async def call(self, route: Route, exchange: Exchange) -> None:
        acquired = await self.acquire(route, exchange.activation, exchange.send, exchange.deadline)
        if acquired is None:
            return
        route, client = acquired
        try:
            await self.call_instance(route, client, exchange)
        finally:
            route.pool.release(client)

    async def acquire(
        self, route: Route, activation: Activation, send: Send, deadline: float
    ) -> tuple[Route, InstanceClient] | None:
        """An instance for this request (waiting through a cold start), or None once the client got an error."""
        for _ in range(3):  # a revision retired while we waited hands us to its successor
            try:
                client, waited_ms = await route.pool.acquire(wait_s=max(0.0, deadline - time.time()))
                break
            except RevisionRetired:
                successor = self.router.route(route.function)
                if successor is None:
                    await self.fail(send, activation, 404, "NotFound", f"{route.function!r} was removed")
                    return None
                route = successor
            except QueueFull as exc:
                activation.status = "rejected"
                await self.fail(send, activation, 429, "TooManyRequests", f"{route.function!r} is at capacity: {exc}",
                                [(b"retry-after", b"1")])  # fmt: skip
                return None
            except StartFailed as exc:
                await self.fail(
                    send, activation, 502, exc.error_type, f"the function could not start: {exc.message}"
                )
                return None
            except TimeoutError:
                await self.fail(send, activation, 504, "Timeout", "no instance had room before the function's "
                                f"timeout of {route.spec.timeout:g} s")  # fmt: skip
                return None
        else:
            await self.fail(send, activation, 503, "Unavailable", "the function is being redeployed; retry")
            return None
        activation.revision = route.revision.id
        activation.instance = client.id
        activation.queue_ms = waited_ms
        activation.cold = waited_ms > 0 and client.served == 0  # it waited for this new instance
        if activation.cold and client.ready.done() and not client.ready.exception():
            ready = client.ready.result()
            activation.instance_start_ms = client.start_ms
            activation.import_ms, activation.setup_ms = ready.import_ms, ready.setup_ms
        return route, client

    async def call_instance(self, route: Route, client: InstanceClient, exchange: Exchange) -> None:
        activation, send, scope, deadline = (
            exchange.activation,
            exchange.send,
            exchange.scope,
            exchange.deadline,
        )
        tidal_headers: Headers = [
            (b"x-tidal-revision", route.revision.id.encode()),
            (b"x-tidal-activation", activation.id.encode()),
            (b"x-tidal-cold-start", b"1" if activation.cold else b"0"),
        ]
        forwarded = {key: value for key, value in exchange.headers.items() if key not in HIDDEN_HEADERS}
        query = scope.get("query_string", b"").decode("latin-1")

        def build(call_id: int) -> Invoke:
            return Invoke(
                call_id,
                activation.id,
                deadline,
                exchange.body,
                exchange.content_type,
                forwarded,
                scope["method"],
                scope["path"][len(PREFIX) + len(route.function) :] or "/",
                query,
            )

        try:
            call = client.call(build)
            first = await call.answer(max(0.0, deadline - time.time()) + DEADLINE_GRACE_S)
        except InstanceLost as exc:
            return await self.fail(send, activation, 502, "InstanceLost", str(exc), tidal_headers)
        except TimeoutError:
            # The instance did not even report its own timeout: its event loop is stuck. Replace it.
            client.cancel(call)
            route.pool.replace(client)
            return await self.fail(
                send,
                activation,
                504,
                "Timeout",
                f"the function ran past its timeout of {route.spec.timeout:g} s",
                tidal_headers,
            )
        if isinstance(first, Chunk):
            return await self.stream(client, call, first, exchange, tidal_headers)
        self.finish(activation, first)
        if isinstance(first, Result):
            tidal_headers.extend(
                (key.encode("latin-1"), value.encode("latin-1")) for key, value in first.headers.items()
            )
            return await respond(send, first.status, first.body, first.content_type.encode(), tidal_headers)
        if isinstance(first, Error):
            status = STATUS_OF_ERROR.get(first.type, 500)
            activation.http_status = status
            return await respond_error(send, status, first.type, first.message, tidal_headers, activation.id)

    async def fail(
        self,
        send: Send,
        activation: Activation,
        status: int,
        error_type: str,
        message: str,
        headers: Headers | None = None,
    ) -> None:
        activation.status = OUTCOME_OF_STATUS.get(status, "error")
        activation.http_status = status
        activation.error_type, activation.error_message = error_type, message
        await respond_error(send, status, error_type, message, headers, activation.id)

    def finish(self, activation: Activation, message: Message) -> None:
        """Copy what the instance reported into the activation record."""
        stats: CallStats = getattr(message, "stats", NO_STATS)
        activation.billed_ms = billed_ms(stats.duration_ms)
        activation.cpu_ms = stats.cpu_ms
        activation.peak_rss_kb = stats.peak_rss_kb
        activation.logs = getattr(message, "logs", "")
        if isinstance(message, Result):
            activation.http_status = message.status
        elif isinstance(message, Error):
            activation.status = OUTCOME_OF_STATUS.get(STATUS_OF_ERROR.get(message.type, 500), "error")
            activation.http_status = STATUS_OF_ERROR.get(message.type, 500)
            activation.error_type, activation.error_message = message.type, message.message
        elif isinstance(message, End) and message.error_type:
            activation.status = "error"
            activation.error_type, activation.error_message = message.error_type, message.error_message

    async def stream(
        self, client: InstanceClient, call: Call, first: Chunk, exchange: Exchange, tidal_headers: Headers
    ) -> None:
        """Relay chunks as chunked HTTP (or server-sent events); a client that leaves cancels the call."""
        activation, send, deadline = exchange.activation, exchange.send, exchange.deadline
        sse = "text/event-stream" in exchange.headers.get("accept", "")
        content_type = b"text/event-stream" if sse else b"application/octet-stream"
        tidal_headers += [(b"content-type", content_type), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": tidal_headers})
        disconnected = asyncio.ensure_future(_wait_disconnect(exchange.receive))
        try:
            frame: Message = first
            while isinstance(frame, Chunk):
                await send(
                    {
                        "type": "http.response.body",
                        "body": _sse(frame.data) if sse else frame.data,
                        "more_body": True,
                    }
                )
                next_frame = asyncio.ensure_future(call.next_stream_frame())
                timeout = max(0.0, deadline - time.time()) + DEADLINE_GRACE_S
                done, _ = await asyncio.wait(
                    {next_frame, disconnected}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if next_frame not in done:
                    next_frame.cancel()
                    client.cancel(call)
                    activation.status = "cancelled" if disconnected in done else "timeout"
                    activation.http_status = 499 if disconnected in done else 504
                    return
                frame = next_frame.result()
            self.finish(activation, frame)
            tail = b""
            if isinstance(frame, Error) or (isinstance(frame, End) and frame.error_type):
                error = {
                    "type": getattr(frame, "type", "") or getattr(frame, "error_type", ""),
                    "message": getattr(frame, "message", "") or getattr(frame, "error_message", ""),
                }
                encoded = msgspec.json.encode({"error": error})
                tail = b"event: error\ndata: " + encoded + b"\n\n" if sse else b""
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        except OSError:
            client.cancel(call)
            activation.status, activation.http_status = "cancelled", 499
        finally:
            disconnected.cancel()


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _sse(data: bytes) -> bytes:
    lines = data.rstrip(b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
