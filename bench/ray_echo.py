"""Ray Serve echo for the warm-path comparison; run only when ``import ray`` works.

Usage: ``python bench/ray_echo.py PORT``. Serves ``POST /fn/echo`` (returns the body unchanged, like
bench/raw_echo.py) on 127.0.0.1:PORT until SIGTERM/SIGINT, then shuts Ray down.
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

MAX_LIFETIME_S = 3600.0  # never outlive a forgotten benchmark by more than an hour


class Echo:
    async def __call__(self, request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")


def _deployment() -> serve.Deployment:
    try:  # Ray >= 2.10; the default of 5 requests in flight would throttle 16 connections
        return serve.deployment(num_replicas=1, max_ongoing_requests=100)(Echo)
    except TypeError:
        return serve.deployment(num_replicas=1, max_concurrent_queries=100)(Echo)


def main() -> None:
    port = int(sys.argv[1])
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(_deployment().bind(), route_prefix="/fn/echo")
        print("READY", flush=True)
        deadline = time.monotonic() + MAX_LIFETIME_S
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
