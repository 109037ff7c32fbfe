"""The raw baseline for the warm-path benchmark: the thinnest fair echo on Starlette + uvicorn.

Served by ``bench/warm_path.py`` as
``uvicorn raw_echo:app --loop uvloop --http httptools --no-access-log --log-level warning``.

``POST /fn/echo`` returns the request body as it came (no JSON decode and re-encode), so the
baseline measures only the HTTP stack. tidal decodes and re-encodes JSON on its path, which is part
of the overhead the benchmark is meant to expose. ``GET /healthz`` tells the benchmark it is up.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(b"ok", media_type="text/plain")


app = Starlette(
    routes=[
        Route("/fn/echo", echo, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)
