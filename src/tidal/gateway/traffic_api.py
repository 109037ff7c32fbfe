"""``/v1/functions/{name}/traffic``: which revisions serve a function, with what share and tags.

Traffic is stored state: a change is written to the store first (validated there: shares add up
to 100, revisions are the function's own, tags are unique), then published to the router. Every
serving revision has its own pool and autoscales on its own; one at 0% scales to zero and is
still reachable by its tag (``POST /fn/NAME@TAG``) or id (``x-tidal-revision``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tidal.gateway.admin import Admin, ApiError
from tidal.gateway.platform import Platform
from tidal.rollout.controller import TRAFFIC_BY_HAND
from tidal.store.models import TrafficTarget

router = APIRouter(prefix="/v1")
TAG_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"


class TrafficShare(BaseModel):
    revision: Annotated[str, Field(min_length=1, max_length=100, examples=["embed-00002"])]
    percent: Annotated[int, Field(ge=0, le=100)]
    tag: Annotated[str | None, Field(pattern=TAG_PATTERN, examples=["canary"])] = None


class TrafficRequest(BaseModel):
    targets: Annotated[list[TrafficShare], Field(min_length=1, max_length=20)]


async def _traffic(platform: Platform, name: str) -> dict[str, Any]:
    record = await asyncio.to_thread(platform.store.function, name)
    if record is None:
        raise ApiError(404, "NotFound", f"no function named {name!r}")
    return {
        "function": name,
        "traffic": [{"revision": t.revision, "percent": t.percent, "tag": t.tag} for t in record.traffic],
    }


@router.get("/functions/{name}/traffic", summary="The revisions serving a function, with shares and tags")
async def get_traffic(name: str, platform: Admin) -> dict[str, Any]:
    return await _traffic(platform, name)


@router.put("/functions/{name}/traffic", summary="Split a function's requests over its revisions")
async def set_traffic(name: str, body: TrafficRequest, platform: Admin) -> dict[str, Any]:
    targets = [TrafficTarget(share.revision, share.percent, share.tag) for share in body.targets]
    # A split set by hand wins over a running canary rollout: the rollout ends (aborted) and this
    # traffic stays. Under the rollouts' lock, so the rollout loop cannot move a step in between.
    async with platform.rollouts.lock:
        try:
            await asyncio.to_thread(platform.store.set_traffic, name, targets)
        except KeyError:
            raise ApiError(404, "NotFound", f"no function named {name!r}") from None
        except ValueError as exc:
            raise ApiError(400, "BadTraffic", str(exc)) from None
        aborted = await platform.rollouts.stop_kept_traffic(name, TRAFFIC_BY_HAND)
    if await platform.publish(name) is None:
        raise ApiError(409, "NotServable", f"none of {name!r}'s revisions in this traffic can be served")
    answer = await _traffic(platform, name)
    if aborted is not None:
        answer["rollout_aborted"] = f"the rollout to {aborted.canary} was aborted: {TRAFFIC_BY_HAND}"
    return answer
