"""S3-compatible bucket triggers (AWS S3, MinIO, moto) through boto3: a webhook and a poll.

Credentials come from the gateway's environment (boto3's chain: ``AWS_ACCESS_KEY_ID`` ...), never
from the trigger's config, and function code never sees them: it gets the event record.

Webhook (the primary path): point the store's event notifications at
``POST /v1/buckets/events/TRIGGER_ID?token=TOKEN`` (the token is in ``tidal triggers ls --json``,
``state.webhook_token``); each ``ObjectCreated:*`` record for the trigger's bucket, prefix and
suffix becomes a job. Polling (the fallback): every ``poll`` seconds ``list_objects_v2`` with
``StartAfter`` = the last key seen, stored per trigger. S3 lists keys in lexicographic order, so
polling finds new keys that sort after the cursor (time-stamped or counter keys); a new key that
sorts earlier is found only by the webhook. At its first run the cursor starts at the bucket's
last key: objects there before the trigger never fire. Each object version (key and ETag) is one
job, whichever path saw it first. With ``output_prefix`` the JSON result is put back beside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tidal.jobs.model import is_json
from tidal.store.models import Job, TriggerRecord
from tidal.triggers.cron import iso
from tidal.triggers.sources import INLINE_BODY_LIMIT, inline_body

if TYPE_CHECKING:
    from tidal.triggers.service import TriggerHub

log = logging.getLogger("tidal.triggers")

PAGE = 1000


def s3_event(bucket: str, key: str, size: int, etag: str, event_time: str, name: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": name,
                "eventTime": event_time,
                "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size, "eTag": etag}},
            }
        ]
    }


class S3BucketSource:
    def __init__(self, trigger: TriggerRecord, hub: TriggerHub) -> None:
        self.trigger, self.hub = trigger, hub
        config = trigger.config
        self.bucket, self.prefix, self.suffix = (
            str(config["bucket"]),
            str(config["prefix"]),
            str(config["suffix"]),
        )
        self.output_prefix = str(config["output_prefix"])
        self.poll_s = float(config["poll"])  # type: ignore[arg-type]
        endpoint = str(config["s3_endpoint"])
        self.endpoint = None if endpoint == "aws" else endpoint
        self.region = str(config["s3_region"])
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import boto3  # slow to import: only gateways with S3 triggers pay for it

            self._client = boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region)
        return self._client

    def wants(self, key: str) -> bool:
        if self.output_prefix and key.startswith(self.output_prefix):
            return False
        return key.startswith(self.prefix) and key.endswith(self.suffix)

    async def fire(
        self, key: str, size: int, etag: str, event_time: str, name: str = "ObjectCreated:Put"
    ) -> int:
        """Submit one object version's event (once per key and ETag); 1 if it matched, else 0."""
        if not self.wants(key):
            return 0
        etag = etag.strip('"')
        version = hashlib.sha256(f"{key}\0{etag}".encode()).hexdigest()[:32]
        event = s3_event(self.bucket, key, size, etag, event_time, name)
        if size <= INLINE_BODY_LIMIT:
            try:
                answer = await asyncio.to_thread(self.client().get_object, Bucket=self.bucket, Key=key)
                inline_body(event, await asyncio.to_thread(answer["Body"].read))
            except Exception as exc:  # the function can still read it with its own credentials
                log.warning("trigger %s: could not read %s to inline it: %s", self.trigger.id, key, exc)
        job = await self.hub.submit(self.trigger, event, f"s3:{self.trigger.id}:{version}")
        if job is not None and self.output_prefix:
            self.hub.background(self._write_result(job, key))
        return 1

    async def _write_result(self, job: Job, key: str) -> None:
        ended = await self.hub.wait_job(job.id)
        if ended.state != "succeeded" or ended.result is None or not is_json(ended.result_type):
            return
        target = f"{self.output_prefix}{key}.json"
        try:
            await asyncio.to_thread(
                self.client().put_object, Bucket=self.bucket, Key=target, Body=ended.result,
                ContentType="application/json",
            )  # fmt: skip
        except Exception as exc:  # the store said no: the job keeps the result
            log.warning("trigger %s: could not put %s: %s", self.trigger.id, target, exc)

    async def run(self) -> None:
        stored = await asyncio.to_thread(self.hub.store.trigger, self.trigger.id)
        state: dict[str, Any] = dict(stored.state) if stored is not None else {}
        if "start_after" not in state:  # first run: what is there already never fires
            state["start_after"] = await asyncio.to_thread(self._last_key)
            await self.hub.save_state(self.trigger, state)
        while True:
            await self.poll(state)
            await asyncio.sleep(self.poll_s)

    def _last_key(self) -> str:
        last, start = "", ""
        while True:
            page = self._list(start)
            contents = page.get("Contents", [])
            if contents:
                last = start = contents[-1]["Key"]
            if not page.get("IsTruncated"):
                return last

    def _list(self, start_after: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix, "MaxKeys": PAGE}
        if start_after:
            arguments["StartAfter"] = start_after
        page: dict[str, Any] = self.client().list_objects_v2(**arguments)
        return page

    async def poll(self, state: dict[str, Any]) -> None:
        """Fire the objects listed after the cursor, in key order, storing the cursor as it moves."""
        while True:
            page = await asyncio.to_thread(self._list, str(state["start_after"]))
            for item in page.get("Contents", []):
                modified = item.get("LastModified")
                when = iso(modified.timestamp()) if isinstance(modified, datetime) else iso(self.hub.clock())
                await self.fire(item["Key"], int(item.get("Size", 0)), str(item.get("ETag", "")), when)
                state["start_after"] = item["Key"]
                await self.hub.save_state(self.trigger, state)
            if not page.get("IsTruncated"):
                return
