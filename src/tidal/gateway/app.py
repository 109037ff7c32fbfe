"""The gateway ASGI app: ``/fn/...`` goes straight to the raw invoke handler (the hot path),
``/healthz`` answers at once, everything else (admin API, OpenAPI, docs) is FastAPI.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tidal import __version__
from tidal.dashboard import api as dashboard_api
from tidal.gateway import (
    admin,
    buckets_api,
    jobs_api,
    limits_api,
    rollout_api,
    routes_api,
    shadow_api,
    traffic_api,
    triggers_api,
    usage_api,
)
from tidal.gateway.asgi import ADMIN_PREFIX, AdminGuard, Receive, Scope, Send, respond
from tidal.gateway.invoke import PREFIX, HttpInvoke
from tidal.gateway.platform import GatewayConfig, Platform
from tidal.gateway.routed import RoutedHttp
from tidal.gateway.typed_docs import with_typed_functions
from tidal.invoke.outcome import OUTCOMES
from tidal.routing.model import is_reserved

log = logging.getLogger("tidal.gateway")


def _error(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": error_type, "message": message}}, status_code=status)


def build_admin_app(platform: Platform) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        try:
            yield
        finally:
            await platform.stop()

    app = FastAPI(
        title="tidal",
        version=__version__,
        lifespan=lifespan,
        description="Serverless AI inference: invoke functions at POST /fn/{name}; manage them under /v1.",
    )
    app.state.platform = platform
    app.include_router(admin.router)
    app.include_router(traffic_api.router)
    app.include_router(shadow_api.router)
    app.include_router(rollout_api.router)
    app.include_router(jobs_api.router)
    app.include_router(triggers_api.router)
    app.include_router(buckets_api.router)
    app.include_router(usage_api.router)  # GET /v1/usage: usage, cost, serverless vs reserved
    app.include_router(limits_api.router)  # PATCH /v1/keys/{id}: a key's rate limit and quotas
    app.include_router(routes_api.router)  # /v1/routes: HTTP routes by method and path (tidal.routing)
    app.include_router(dashboard_api.router)  # the page at / and GET /v1/functions/NAME/series

    @app.exception_handler(admin.ApiError)
    async def api_error(_: Request, exc: admin.ApiError) -> JSONResponse:
        return _error(exc.status_code, exc.error_type, str(exc.detail))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return _error(exc.status_code, error_type, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()]
        return _error(422, "ValidationError", "; ".join(parts))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("admin request failed")
        return _error(500, "InternalError", "the gateway failed; see its log")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the invoke route, which is served outside FastAPI for speed."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        error = {
            "description": "error",
            "content": {
                "application/json": {
                    "example": {"error": {"type": "ValueError", "message": "...", "activation": "9f2c..."}}
                }
            },
        }
        schema["paths"]["/fn/{name}"] = {
            "post": {
                "summary": "Invoke a function",
                "description": "JSON in and out (raw bytes with application/octet-stream). A generator function "
                "streams chunks (server-sent events with Accept: text/event-stream). Response headers: "
                "x-tidal-revision, x-tidal-activation, x-tidal-cold-start.",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    }
                },
                "responses": {
                    "200": {"description": "the function's return value"},
                    "202": {
                        "description": "with `Prefer: respond-async` (or `?mode=async`): queued as a job; "
                        "`{job_id, status_url, state}` and `Location: /v1/jobs/{id}`. Optional headers: "
                        "`Idempotency-Key`, `X-Callback-Url`."
                    },
                    **{
                        str(code): error
                        for code in sorted({meaning.http_status for meaning in OUTCOMES.values()})
                        if code != 200
                    },
                },
            }
        }
        schema["paths"]["/healthz"] = {
            "get": {"summary": "Liveness", "responses": {"200": {"description": "up"}}}
        }
        schema["paths"]["/metrics"] = {
            "get": {
                "summary": "Prometheus metrics (text format); admin key unless `tidal up --metrics-public`",
                "responses": {"200": {"description": "the exposition text"}, "401": error, "403": error},
            }
        }
        app.openapi_schema = schema
    # Typed functions change with deploys: added to the cached document on each read (typed_docs).
    return with_typed_functions(app.openapi_schema, app.state.platform.router.routes.values())


class Gateway:
    """The outer ASGI callable uvicorn serves."""

    def __init__(self, config: GatewayConfig) -> None:
        self.platform = Platform(config)
        self.invoke = HttpInvoke(
            self.platform.invoker, self.platform.keys, config.max_body_bytes, self.platform.sticky_fields.get,
            jobs_api.AsyncIntake(self.platform.jobs, self.platform.router),
        )  # fmt: skip
        self.invoke.limiter = self.platform.limiter  # per-key rate limits and quotas (tidal.auth.quota)
        self.admin = build_admin_app(self.platform)
        self.guarded_admin = AdminGuard(self.admin, self._authenticated)  # key, then body (hardening)
        self.routed = RoutedHttp(self.platform.routes, self.invoke, self.admin)  # HTTP routes, CORS

    async def _authenticated(self, authorization: str | None) -> bool:
        return (await self.platform.keys.identify(authorization)).authenticated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(PREFIX):
                if self.platform.routes.function_cors:  # some function has a `cors` policy
                    return await self.routed.invoke_function(scope, receive, send)
                return await self.invoke(scope, receive, send)
            if path == "/healthz":
                return await respond(send, 200, b'{"status":"ok"}', b"application/json", [])
            if path.startswith(ADMIN_PREFIX):
                return await self.guarded_admin(scope, receive, send)
            if path == "/metrics":  # Prometheus text format (tidal.observability.metrics)
                return await self.platform.observability.endpoint(scope, receive, send)
            if not is_reserved(path):  # HTTP routes (tidal.routing); none matched: the admin app's 404
                return await self.routed(scope, receive, send)
        await self.admin(scope, receive, send)
