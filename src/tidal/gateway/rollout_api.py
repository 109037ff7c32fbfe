"""``/v1/functions/{name}/ab`` (per-revision numbers over a window) and
``/v1/functions/{name}/rollout`` (start, read and abort a canary rollout).

The statistics are tidal.rollout.stats over the store's activations; rollouts are driven by
tidal.rollout.controller, which this module only asks. Bad input is a 400 with the reason, an
unknown function a 404, a rollout that cannot start now (one already runs) a 409.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tidal.gateway.admin import Admin, ApiError
from tidal.gateway.platform import Platform
from tidal.rollout.controller import RolloutError, RolloutPlan
from tidal.rollout.policy import Thresholds, due
from tidal.rollout.stats import RevisionStats, by_revision
from tidal.spec import parse_duration
from tidal.store.models import FunctionRecord, Rollout

router = APIRouter(prefix="/v1")
MAX_WINDOW_S = 31 * 86_400.0
DEFAULT_STEPS = (10, 25, 50, 100)


class RolloutRequest(BaseModel):
    """What ``POST /v1/functions/{name}/rollout`` takes; each default is the default rollout's."""

    to: Annotated[str, Field(min_length=1, max_length=100, examples=["embed-00002"])]
    steps: Annotated[list[int], Field(max_length=100)] = list(DEFAULT_STEPS)
    interval: Annotated[float | str, Field(examples=["60s", 60])] = 60.0
    max_error_rate: Annotated[float, Field(description="a fraction: 0.01 is 1%")] = 0.01
    max_p99_ms: float | None = None
    min_requests: int = 20


async def _function_or_404(platform: Platform, name: str) -> FunctionRecord:
    record = await asyncio.to_thread(platform.store.function, name)
    if record is None:
        raise ApiError(404, "NotFound", f"no function named {name!r}")
    return record


def _seconds(text: str | float, what: str, low: float, high: float) -> float:
    try:
        value = parse_duration(text) if isinstance(text, str) else float(text)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"{what}: {exc}") from None
    if not low <= value <= high:
        raise ApiError(400, "BadRequest", f"{what} {value:g} s: must be from {low:g} s to {high:g} s")
    return value


@router.get("/functions/{name}/ab", summary="Per revision: calls, error rate, p50/p99 over a window")
async def ab(
    name: str,
    platform: Admin,
    since: Annotated[str, Query(description="the window: seconds back from now (3600) or 1h, 15m")] = "3600",
) -> dict[str, Any]:
    window_s = _seconds(since, "since", 1.0, MAX_WINDOW_S)
    record = await _function_or_404(platform, name)
    await platform.recorder.flush()  # activations are written in batches
    until = time.time()
    stats = by_revision(
        await asyncio.to_thread(platform.store.revision_windows, name, until - window_s, until)
    )
    rows = []
    for target in record.traffic:  # serving revisions first, in the order they serve
        numbers = stats.pop(target.revision, None) or RevisionStats(target.revision)
        rows.append({**numbers.as_dict(), "percent": target.percent, "tag": target.tag, "serving": True})
    for numbers in stats.values():  # revisions that served in the window but serve no more
        rows.append({**numbers.as_dict(), "percent": 0, "tag": None, "serving": False})
    return {
        "function": name,
        "since": until - window_s,
        "until": until,
        "window_s": window_s,
        "revisions": rows,
    }


def _rollout_body(rollout: Rollout, now: float) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(rollout)
    body["percent"] = rollout.percent
    if rollout.state == "running":
        left = rollout.step_started_at + rollout.interval_s - now
        body["judged_in_s"] = round(max(0.0, left), 1)
        body["waiting"] = due(
            now, rollout.step_started_at, rollout.interval_s
        )  # interval over: waiting for calls
    return body


async def describe_rollout(platform: Platform, rollout: Rollout) -> dict[str, Any]:
    """A rollout as the API shows it: its state, the current step's numbers so far, its history."""
    body: dict[str, Any] = {"function": rollout.function, "rollout": _rollout_body(rollout, time.time())}
    body["window"] = None
    if rollout.state == "running":
        window = await platform.rollouts.window(rollout)
        body["window"] = {"since": window.since, "until": window.until,
                          "canary": window.canary.as_dict(), "stable": window.stable.as_dict()}  # fmt: skip
    decisions = await asyncio.to_thread(platform.store.rollout_decisions, rollout.id)
    body["decisions"] = [msgspec.to_builtins(decision) for decision in decisions]
    return body


@router.post("/functions/{name}/rollout", status_code=201, summary="Start a canary rollout")
async def start_rollout(name: str, body: RolloutRequest, platform: Admin) -> dict[str, Any]:
    interval_s = _seconds(body.interval, "interval", 0.0, float("inf"))  # policy.check_plan bounds it
    thresholds = Thresholds(body.max_error_rate, body.max_p99_ms, body.min_requests)
    plan = RolloutPlan(body.to, tuple(body.steps), interval_s, thresholds)
    try:
        rollout = await platform.rollouts.start(name, plan)
    except RolloutError as exc:
        raise ApiError(exc.status, exc.error_type, str(exc)) from None
    return await describe_rollout(platform, rollout)


@router.get("/functions/{name}/rollout", summary="The function's rollout: step, numbers, decisions")
async def get_rollout(name: str, platform: Admin) -> dict[str, Any]:
    await _function_or_404(platform, name)
    rollout = await asyncio.to_thread(platform.store.rollout, name)
    if rollout is None:
        raise ApiError(404, "NotFound", f"{name!r} has had no rollout")
    return await describe_rollout(platform, rollout)


@router.delete("/functions/{name}/rollout", summary="Abort the running rollout: all traffic to stable")
async def abort_rollout(name: str, platform: Admin) -> dict[str, Any]:
    try:
        rollout = await platform.rollouts.abort(name)
    except RolloutError as exc:
        raise ApiError(exc.status, exc.error_type, str(exc)) from None
    return await describe_rollout(platform, rollout)
