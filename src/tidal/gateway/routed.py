"""HTTP routes in front of the invoke adapter: ``GET /items/42`` -> function ``items`` with
``{"id": "42"}``, and CORS (preflights answered here, without waking an instance).

A request whose path is not the gateway's own comes here: a matched route hands the request to
``HttpInvoke`` (auth, limits, body, invocation as for ``/fn/NAME``) with the match in its scope;
a path with routes but not for this method answers 405 + Allow; no route at all falls through
to the admin app, whose 404 is the same as before routes existed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tidal.gateway.asgi import Headers, Receive, Scope, Send, respond_error
from tidal.gateway.invoke import PREFIX, HttpInvoke
from tidal.routing import cors
from tidal.routing.model import CorsPolicy
from tidal.routing.service import RouteService
from tidal.routing.table import ROUTE_SCOPE_KEY, Match, NotAllowed

App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def with_headers(send: Send, extra: Headers) -> Send:
    """A send that adds ``extra`` to the response's headers (CORS on an answer from anywhere)."""

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending


class RoutedHttp:
    def __init__(self, routes: RouteService, invoke: HttpInvoke, fallback: App) -> None:
        self.routes = routes
        self.invoke = invoke
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A path that is not the gateway's own (tidal.routing.model.is_reserved)."""
        table = self.routes.table
        if not table:
            return await self.fallback(scope, receive, send)
        method, path = scope["method"], scope["path"]
        origin = _header(scope, b"origin")
        requested = _header(scope, b"access-control-request-method") if method == "OPTIONS" else None
        if origin is not None and requested is not None:
            asked = table.match(requested.upper(), path)
            policy = self._policy_of(asked)
            if policy is not None:
                methods = asked.allow if isinstance(asked, NotAllowed) else (asked.route.method,)  # type: ignore[union-attr]
                asked_headers = _header(scope, b"access-control-request-headers") or ""
                return await answer_preflight(send, policy, origin, requested, asked_headers, methods)
        found = table.match(method, path)
        if found is None:
            return await self.fallback(scope, receive, send)
        if isinstance(found, NotAllowed):
            allow = ", ".join(found.allow).encode()
            return await respond_error(send, 405, "MethodNotAllowed", f"{path} takes {allow.decode()}",
                                       [(b"allow", allow)])  # fmt: skip
        policy = self.routes.policy(found.route)
        if policy is not None and origin is not None:
            send = with_headers(send, cors.response_headers(policy, origin))
        await self.invoke({**scope, ROUTE_SCOPE_KEY: found}, receive, send)

    def _policy_of(self, asked: Match | NotAllowed | None) -> CorsPolicy | None:
        if isinstance(asked, Match):
            return self.routes.policy(asked.route)
        if isinstance(asked, NotAllowed):  # any of the path's routes with a policy speaks for the path
            for pattern in asked.patterns:
                for route in pattern.methods.values():
                    if (policy := self.routes.policy(route)) is not None:
                        return policy
        return None

    async def invoke_function(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/fn/NAME`` of a function with a ``cors`` policy (the gateway calls this only then)."""
        name = scope["path"][len(PREFIX) :].partition("/")[0].partition("@")[0]
        policy = self.routes.function_cors.get(name)
        origin = _header(scope, b"origin")
        if policy is None or origin is None:
            return await self.invoke(scope, receive, send)
        requested = _header(scope, b"access-control-request-method")
        if scope["method"] == "OPTIONS" and requested is not None:
            asked_headers = _header(scope, b"access-control-request-headers") or ""
            return await answer_preflight(send, policy, origin, requested, asked_headers, ("POST",))
        await self.invoke(scope, receive, with_headers(send, cors.response_headers(policy, origin)))


async def answer_preflight(
    send: Send, policy: CorsPolicy, origin: str, method: str, asked_headers: str, methods: tuple[str, ...]
) -> None:
    status, headers, refused = cors.preflight(policy, origin, method, asked_headers, methods)
    if status == 204:
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        return await send({"type": "http.response.body", "body": b""})
    await respond_error(send, status, "CorsRefused", refused, headers)
