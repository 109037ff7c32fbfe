"""``/v1/functions/{name}/shadow``: copy a share of a function's calls to a candidate revision and
compare its answers with the primary's (tidal.shadow); ``.../shadow/report`` summarises them.

The shadow is stored state: written to the store first, then published to the router (which gives
the candidate a pool of its own, retired when the shadow stops or changes candidate).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tidal.gateway.admin import Admin, ApiError
from tidal.gateway.platform import Platform
from tidal.shadow.compare import SPEC_FORMS, parse_comparator
from tidal.shadow.report import summarise
from tidal.store.models import ShadowConfig

router = APIRouter(prefix="/v1")
DEFAULT_MAX_IN_FLIGHT = 16
MAX_IN_FLIGHT_LIMIT = 1000
REPORT_ROWS = 100_000  # results read for one report at most, the newest
REPORT_MAX_SINCE_S = 90 * 86_400.0


class ShadowRequest(BaseModel):
    revision: Annotated[str, Field(min_length=1, max_length=100, examples=["embed-00002"])]
    percent: Annotated[int, Field(description="share of calls copied, 0..100", examples=[20])] = 100
    compare: Annotated[str, Field(max_length=100, description=f"one of: {SPEC_FORMS}")] = "exact"
    max_in_flight: Annotated[
        int, Field(description=f"copies running at once at most, 1..{MAX_IN_FLIGHT_LIMIT}")
    ] = DEFAULT_MAX_IN_FLIGHT


def _bad(message: str) -> ApiError:
    return ApiError(400, "BadShadow", message)


def check_request(body: ShadowRequest) -> str:
    """The comparator spec in its canonical form; 400 for a percent, cap or spec out of bounds."""
    if not 0 <= body.percent <= 100:
        raise _bad(f"percent is {body.percent}: must be 0..100")
    if not 1 <= body.max_in_flight <= MAX_IN_FLIGHT_LIMIT:
        raise _bad(f"max_in_flight is {body.max_in_flight}: must be 1..{MAX_IN_FLIGHT_LIMIT}")
    try:
        return str(parse_comparator(body.compare))
    except ValueError as exc:
        raise _bad(str(exc)) from None


async def _function_or_404(platform: Platform, name: str) -> None:
    if await asyncio.to_thread(platform.store.function, name) is None:
        raise ApiError(404, "NotFound", f"no function named {name!r}")


def _live(platform: Platform, name: str) -> dict[str, Any]:
    route = platform.router.route(name)
    return {
        "active": route is not None and route.shadow is not None,  # copies are being made now
        "in_flight": platform.mirror.in_flight[name],
    }


async def _shadow(platform: Platform, name: str) -> dict[str, Any]:
    config = await asyncio.to_thread(platform.store.shadow, name)
    if config is None:
        return {"function": name, "shadow": None}
    return {
        "function": name,
        "shadow": {
            "revision": config.revision,
            "percent": config.percent,
            "compare": config.compare,
            "max_in_flight": config.max_in_flight,
            "created_at": config.created_at,
            **_live(platform, name),
        },
    }


@router.get("/functions/{name}/shadow", summary="The function's shadow: candidate, share, comparison")
async def get_shadow(name: str, platform: Admin) -> dict[str, Any]:
    await _function_or_404(platform, name)
    return await _shadow(platform, name)


@router.put("/functions/{name}/shadow", summary="Copy a share of calls to a candidate revision and compare")
async def set_shadow(name: str, body: ShadowRequest, platform: Admin) -> dict[str, Any]:
    compare = check_request(body)
    await _function_or_404(platform, name)
    revision = await asyncio.to_thread(platform.store.revision, body.revision)
    if revision is None or revision.function != name:
        raise ApiError(404, "NotFound", f"function {name!r} has no revision {body.revision!r}")
    config = ShadowConfig(name, body.revision, body.percent, compare, body.max_in_flight, time.time())
    try:
        await asyncio.to_thread(platform.store.set_shadow, config)
    except KeyError:  # removed meanwhile
        raise ApiError(404, "NotFound", f"no function named {name!r}") from None
    except ValueError as exc:
        raise ApiError(404, "NotFound", str(exc)) from None
    await platform.publish(name)
    return await _shadow(platform, name)


@router.delete("/functions/{name}/shadow", summary="Stop copying calls to the candidate")
async def stop_shadow(name: str, platform: Admin) -> dict[str, Any]:
    await _function_or_404(platform, name)
    stopped = await asyncio.to_thread(platform.store.delete_shadow, name)
    if stopped:
        await platform.publish(name)  # the candidate's pool retires (unless traffic still uses it)
    return {"function": name, "stopped": stopped}


@router.get("/functions/{name}/shadow/report", summary="Agreement, errors and latency of the shadow copies")
async def shadow_report(
    name: str,
    platform: Admin,
    since: Annotated[float, Query(gt=0, le=REPORT_MAX_SINCE_S, description="seconds back from now")] = 3600.0,
    revision: Annotated[str | None, Query(description="the candidate (default: the current one)")] = None,
) -> dict[str, Any]:
    await _function_or_404(platform, name)
    await platform.shadow_recorder.flush()  # results are written in batches: show the ones done
    config = await asyncio.to_thread(platform.store.shadow, name)
    start = time.time() - since
    if revision is None and config is not None:
        revision = config.revision
    if revision is None:  # no shadow now: the newest candidate that has results
        newest = await asyncio.to_thread(platform.store.shadow_results, name, start, None, 1)
        revision = newest[0].revision if newest else None

    def read() -> dict[str, Any]:
        results = platform.store.shadow_results(name, start, revision, REPORT_ROWS)
        skips = platform.store.shadow_skips(name, start, revision)
        return summarise(results, skips, since, truncated=len(results) == REPORT_ROWS)

    summary = await asyncio.to_thread(read) if revision is not None else summarise([], {}, since)
    current = config is not None and config.revision == revision
    return {
        "function": name,
        "revision": revision,
        "compare": config.compare if current and config is not None else None,
        "percent": config.percent if current and config is not None else None,
        **_live(platform, name),
        **summary,
    }
