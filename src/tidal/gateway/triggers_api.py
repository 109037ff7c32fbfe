"""``/v1/triggers``: list, add and remove event triggers (admin).

``POST /v1/triggers`` takes ``{"function": NAME, "kind": "cron" | "bucket" | "queue", ...options}``
(tidal.triggers.model.OPTIONS lists them and their defaults); a bad one is 400 with the reason, a
function that does not exist 404. A trigger declared in a function's spec is removed by removing it
from the code and deploying again (``DELETE`` answers 409 for it).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Query, Request

from tidal.gateway.admin import Admin, ApiError, json_object
from tidal.spec import NAME_PATTERN
from tidal.store.models import TriggerRecord
from tidal.triggers.model import TriggerError, describe

router = APIRouter(prefix="/v1")


def redacted(url: str) -> str:
    """A queue URL without its password: ``redis://:secret@h:6379/0`` -> ``redis://:***@h:6379/0``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def trigger_document(trigger: TriggerRecord) -> dict[str, Any]:
    config = dict(trigger.config)
    url = config.get("url")
    if isinstance(url, str):
        config["url"] = redacted(url)
    return {
        "id": trigger.id,
        "function": trigger.function,
        "kind": trigger.kind,
        "origin": trigger.origin,
        "description": describe(config),
        "config": config,
        "state": trigger.state,
        "events": trigger.events,
        "last_event_at": trigger.last_event_at or None,
        "last_error": trigger.last_error or None,
        "last_error_at": trigger.last_error_at or None,
        "created_at": trigger.created_at,
    }


@router.get("/triggers", summary="Event triggers, by function (admin)")
async def list_triggers(
    platform: Admin, function: Annotated[str | None, Query(max_length=63)] = None
) -> dict[str, Any]:
    triggers = await asyncio.to_thread(platform.store.triggers, function)
    return {"triggers": [trigger_document(trigger) for trigger in triggers]}


@router.post("/triggers", status_code=201, summary="Add an event trigger to a function (admin)")
async def add_trigger(request: Request, platform: Admin) -> dict[str, Any]:
    body = await json_object(request)
    function = body.pop("function", None)
    if not isinstance(function, str) or not NAME_PATTERN.match(function):
        raise ApiError(400, "BadRequest", "'function' must name a function")
    try:
        trigger = await platform.triggers.add(function, body)
    except TriggerError as exc:
        raise ApiError(400, "BadTrigger", str(exc)) from None
    if trigger is None:
        raise ApiError(404, "NotFound", f"no function named {function!r}")
    return trigger_document(trigger)


@router.delete("/triggers/{trigger_id}", summary="Remove an event trigger (admin)")
async def remove_trigger(trigger_id: str, platform: Admin) -> dict[str, Any]:
    trigger = await asyncio.to_thread(platform.store.trigger, trigger_id)
    if trigger is None:
        raise ApiError(404, "NotFound", f"no trigger {trigger_id!r}")
    if trigger.origin == "spec":
        raise ApiError(
            409, "DeclaredInSpec",
            f"trigger {trigger_id} is declared in the spec of {trigger.function!r}: remove it there and deploy again",
        )  # fmt: skip
    await platform.triggers.remove(trigger_id)
    return {"id": trigger_id, "deleted": True}
