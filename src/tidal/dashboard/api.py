"""The dashboard's routes: the page at ``/``, its static files, and ``GET /v1/functions/NAME/series``.

The page and its scripts hold no data, so they are served without a key; every number the page
shows comes from the admin API, which the page calls with the admin key the user typed in
(``Authorization: Bearer``, the same as the CLI). plotly.js is served from the installed ``plotly``
package (the ``dashboard`` extra), never copied into this repository.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, HTMLResponse, Response

from tidal.dashboard.series import Window, parse_window, series_body
from tidal.gateway.admin import Admin, ApiError
from tidal.gateway.platform import Platform

STATIC = resources.files("tidal.dashboard") / "static"
OWN_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
PLOTLY = "plotly.min.js"
# Scripts only from this gateway; plotly sets inline styles on the charts it draws.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}

router = APIRouter()


def plotly_path() -> Path | None:
    """plotly.min.js inside the installed plotly package, or None without the ``dashboard`` extra."""
    try:
        import plotly
    except ImportError:
        return None
    path = Path(plotly.__file__).parent / "package_data" / PLOTLY
    return path if path.is_file() else None


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(), headers=SECURITY_HEADERS)


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    if name in OWN_FILES:
        return Response((STATIC / name).read_bytes(), media_type=OWN_FILES[name], headers=SECURITY_HEADERS)
    if name == PLOTLY and (path := plotly_path()) is not None:
        # A 4.8 MB file that changes only with the plotly package: the browser keeps it a day.
        return FileResponse(path, media_type="text/javascript", headers={"cache-control": "max-age=86400"})
    if name == PLOTLY:
        raise ApiError(404, "NotFound", "the charts need plotly: pip install 'tidal[dashboard]'")
    raise ApiError(404, "NotFound", f"no dashboard file {name!r}")


@router.get(
    "/v1/functions/{name}/series",
    summary="A function's time series: req/s, errors, p50/p99, cold starts, instances ready vs desired",
    description="Buckets of `step` over the last `since` (durations such as `15m`, `5s`; at most 1h and "
    "720 buckets), aligned to multiples of `step`. Requests, errors, cold starts and warm-call "
    "percentiles come from the activation records (a call counts in the bucket it started in); "
    "instances ready and desired from the gateway's sampler (each second; null before it ran); "
    "`scaling_events` are the autoscaler's decisions in the window, newest first.",
)
async def function_series(
    name: str,
    platform: Admin,
    since: Annotated[str, Query(description="how far back: 15m, 1h, 90s")] = "15m",
    step: Annotated[str, Query(description="bucket width: 5s, 1m")] = "5s",
) -> dict[str, Any]:
    try:
        window = parse_window(since, step)
    except ValueError as exc:
        raise ApiError(422, "ValidationError", str(exc)) from None
    if platform.router.route(name) is None and not await asyncio.to_thread(platform.store.revisions, name):
        raise ApiError(404, "NotFound", f"no function named {name!r}")
    await platform.recorder.flush()  # calls already answered are counted
    return await series_of(platform, name, window, time.time())


async def series_of(platform: Platform, name: str, window: Window, now: float) -> dict[str, Any]:
    state = platform.dashboard
    buckets = await asyncio.to_thread(state.buckets.buckets, platform.store, name, window, now)
    events = await asyncio.to_thread(platform.store.scaling_events, name, 200)
    samples = state.sampler.history.samples(name, now - window.since_s - window.step_s)
    return series_body(name, window, now, buckets, samples, events)
