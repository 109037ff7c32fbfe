"""``/v1/buckets/BUCKET/objects``: the local-folder buckets over HTTP (admin).

``PUT .../objects/KEY`` stores the body as the object (atomically) and fires the bucket's matching
triggers at once; ``GET`` reads it back, ``DELETE`` removes it, ``GET .../objects?prefix=`` lists.
A key that could leave the bucket (``..``, an absolute path, a symlink out) is 400 with the reason.
``POST /v1/buckets/events/TRIGGER_ID?token=`` takes an S3-compatible store's event notifications.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from tidal.buckets.folder import BucketError
from tidal.buckets.keys import check_key
from tidal.gateway.admin import Admin, ApiError, platform_of
from tidal.triggers.model import is_s3
from tidal.triggers.s3_bucket import S3BucketSource

router = APIRouter(prefix="/v1")
MAX_OBJECT_BYTES = 512 * 1024 * 1024


def _bad(exc: BucketError) -> ApiError:
    return ApiError(400, "BadKey", str(exc))


@router.put("/buckets/{bucket}/objects/{key:path}", summary="Store an object; fires bucket triggers")
async def put_object(bucket: str, key: str, request: Request, platform: Admin) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_OBJECT_BYTES:
        raise ApiError(413, "TooLarge", f"an object holds at most {MAX_OBJECT_BYTES} bytes")
    data = await request.body()
    if len(data) > MAX_OBJECT_BYTES:
        raise ApiError(413, "TooLarge", f"an object holds at most {MAX_OBJECT_BYTES} bytes")
    try:
        info = await asyncio.to_thread(platform.buckets.put, bucket, key, data)
    except BucketError as exc:
        raise _bad(exc) from None
    fired = await platform.triggers.object_created(bucket, info)
    return {"bucket": bucket, **info.document(), "triggers_fired": fired}


@router.get("/buckets/{bucket}/objects/{key:path}", summary="Read an object")
async def get_object(bucket: str, key: str, platform: Admin) -> Response:
    try:
        data = await asyncio.to_thread(platform.buckets.get, bucket, key)
    except BucketError as exc:
        raise _bad(exc) from None
    except FileNotFoundError:
        raise ApiError(404, "NotFound", f"no object {key!r} in bucket {bucket!r}") from None
    return Response(data, media_type="application/octet-stream")


@router.delete("/buckets/{bucket}/objects/{key:path}", summary="Delete an object")
async def delete_object(bucket: str, key: str, platform: Admin) -> dict[str, Any]:
    try:
        deleted = await asyncio.to_thread(platform.buckets.delete, bucket, key)
    except BucketError as exc:
        raise _bad(exc) from None
    if not deleted:
        raise ApiError(404, "NotFound", f"no object {key!r} in bucket {bucket!r}")
    return {"bucket": bucket, "key": key, "deleted": True}


@router.get("/buckets/{bucket}/objects", summary="List a bucket's objects under a prefix")
async def list_objects(
    bucket: str, platform: Admin, prefix: Annotated[str, Query(max_length=1024)] = ""
) -> dict[str, Any]:
    try:
        objects = await asyncio.to_thread(platform.buckets.list, bucket, prefix)
    except BucketError as exc:
        raise _bad(exc) from None
    return {"bucket": bucket, "prefix": prefix, "objects": [item.document() for item in objects]}


@router.post(
    "/buckets/events/{trigger_id}",
    summary="S3 event notifications for an S3-compatible bucket trigger (token, no API key)",
)
async def s3_events(
    trigger_id: str, request: Request, token: Annotated[str, Query(max_length=200)] = ""
) -> dict[str, Any]:
    """The S3 event notification JSON (``{"Records": [...]}``): each ``ObjectCreated:*`` record of the
    trigger's bucket, prefix and suffix becomes a job. The store cannot send an API key: the
    trigger's ``webhook_token`` (``tidal triggers ls --json``) is the credential."""
    platform = platform_of(request)
    trigger = await asyncio.to_thread(platform.store.trigger, trigger_id)
    if trigger is None or not is_s3(trigger.config):
        raise ApiError(404, "NotFound", f"no S3 bucket trigger {trigger_id!r}")
    expected = str(trigger.state.get("webhook_token", ""))
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(403, "Forbidden", "the token does not match the trigger's webhook_token")
    try:
        records = parse_s3_records(await request.json(), str(trigger.config["bucket"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise ApiError(400, "BadEvent", f"not an S3 event notification: {exc}") from None
    source = S3BucketSource(trigger, platform.triggers)
    fired = 0
    for key, size, etag, event_time, name in records:
        fired += await source.fire(key, size, etag, event_time, name)
    return {"trigger": trigger_id, "records": len(records), "fired": fired}


def parse_s3_records(body: Any, bucket: str) -> list[tuple[str, int, str, str, str]]:
    """(key, size, etag, time, event name) of the ObjectCreated records for ``bucket``; keys arrive
    URL-encoded (``a+b.png`` is ``a b.png``), as S3 sends them. A test event has no records."""
    if not isinstance(body, dict):
        raise TypeError("the body must be a JSON object")
    found = []
    for record in body.get("Records") or []:
        name = str(record["eventName"])
        s3 = record["s3"]
        if not name.startswith("ObjectCreated:") or s3["bucket"]["name"] != bucket:
            continue
        item = s3["object"]
        key = unquote_plus(str(item["key"]))
        check_key(key)
        found.append(
            (key, int(item.get("size", 0)), str(item.get("eTag", "")), str(record.get("eventTime", "")), name)
        )
    return found
