"""``PATCH /v1/keys/{key_id}``: change a key's rate limit and quotas (admin scope)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from tidal.gateway.admin import Admin, ApiError
from tidal.gateway.key_limits import LimitFields

router = APIRouter(prefix="/v1")


@router.patch(
    "/keys/{key_id}",
    summary="Set a key's rate limit and quotas",
    description="The limits are replaced as a whole: `{}` removes them. They apply to the key's next request.",
)
async def change_key_limits(key_id: str, body: LimitFields, platform: Admin) -> dict[str, Any]:
    try:
        limits = body.limits()
    except ValueError as exc:
        raise ApiError(400, "BadRequest", str(exc)) from None
    if not await asyncio.to_thread(platform.keys.set_limits, key_id, limits):
        raise ApiError(404, "NotFound", f"no active key {key_id!r}")
    return {"id": key_id, "limits": limits.describe()}
