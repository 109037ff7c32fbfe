"""Usage and cost under /v1/usage (admin): billed time, GB-s, GPU-s and cost by function, revision,
key or day, priced with the gateway's price sheet, and the serverless-vs-reserved comparison.

``GET /v1/usage?since=1h&by=function`` answers ``{since, until, by, rows, total, prices, reserved}``;
each row and the total hold ``key, requests, errors, billed_ms, gb_s, gpu_s, cost``. Without
``since`` the window starts at the first record the store holds ("to date").
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query

from tidal.gateway.admin import Admin, ApiError
from tidal.gateway.platform import Platform
from tidal.invoke.outcome import OUTCOMES
from tidal.metering.reserved import reserved_report
from tidal.metering.usage import USAGE_BY, usage_report
from tidal.spec import parse_duration

router = APIRouter(prefix="/v1")

# The words an activation's status can be (`tidal activations --status`).
ACTIVATION_STATUSES = tuple(sorted({meaning.activation_status for meaning in OUTCOMES.values()}))


def since_epoch(text: str | None, now: float, name: str = "since") -> float | None:
    """``1h`` -> now - 3600; None stays None ("from the first record"). A bad one is a 400."""
    if text is None or text == "":
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"{name}: {exc}") from None
    if seconds <= 0:
        raise ApiError(400, "BadRequest", f"{name}: give a duration above 0, like 1h or 7d, not {text!r}")
    return now - seconds


def statuses_of(values: list[str] | None) -> list[str]:
    """``?status=error&status=timeout`` or ``?status=error,timeout``; an unknown word is a 400."""
    statuses = [word.strip() for value in values or [] for word in value.split(",") if word.strip()]
    unknown = sorted(set(statuses) - set(ACTIVATION_STATUSES))
    if unknown:
        raise ApiError(
            400, "BadRequest",
            f"status: unknown {', '.join(map(repr, unknown))}; expected one of {', '.join(ACTIVATION_STATUSES)}",
        )  # fmt: skip
    return statuses


@router.get("/usage", summary="Usage and cost by function, revision, key or day; serverless vs reserved")
async def usage(
    platform: Admin,
    since: Annotated[str | None, Query(max_length=32, description="a duration back from now: 1h, 7d")] = None,
    by: Annotated[str, Query(max_length=16, description="function | revision | key | day")] = "function",
) -> dict[str, Any]:
    if by not in USAGE_BY:
        raise ApiError(400, "BadRequest", f"by: expected one of {', '.join(USAGE_BY)}, not {by!r}")
    await _flushed(platform)
    until = time.time()
    start = since_epoch(since, until)
    if start is None:
        first = await asyncio.to_thread(platform.store.first_activity)
        start = until if first is None else min(first, until)
    groups = await asyncio.to_thread(platform.store.usage_sums, start, until, by)
    prices = platform.config.prices
    report = usage_report(groups, prices, by, start, until)
    lives = await asyncio.to_thread(platform.store.instance_lives, start, until)
    busy = await asyncio.to_thread(platform.store.busy_ms, start, until)
    billed = report["total"]["cost"]  # type: ignore[index]
    report["reserved"] = reserved_report(lives, busy, billed, start, until, prices).as_json()
    return report


async def _flushed(platform: Platform) -> None:
    """Records are written in batches: a reader asking now sees the calls already answered."""
    await platform.recorder.flush()
    await platform.lives.flush()
