"""The cron and local-folder bucket sources: each turns its events into jobs through the hub.

cron: sleeps until the next scheduled time, asks ``cron.decide`` what fires, submits the run as a
job keyed by (trigger, scheduled time), then stores ``decided_until``. A restart between the two
finds the same scheduled time again and the idempotency key makes it the same job: never a double
fire. The event: ``{"trigger": "cron", "scheduled_time": ISO, "fired_at": ISO}``.

bucket: an object put through the API or CLI fires at once (``TriggerHub.object_created``); a scan
every ``poll`` seconds finds files put into the folder by other means (cp, mv, rsync), newer than
the trigger's cursor (modification time in ns, then key). Files older than the trigger when it was
created never fire; a file moved in with an old modification time (``cp -p``, ``mv`` of an old
file) is not seen by the scan: put it through the API, or touch it. Each object version (key and
ETag) is one job, whichever path found it first.

An object of at most ``INLINE_BODY_LIMIT`` bytes travels inside its event, base64 in
``Records[0]["tidal"]["body_base64"]``: function code runs sandboxed and cannot open the bucket's
folder (nor holds an admin key to read it through the API). A bigger object's event carries only
its key, size and ETag.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from tidal.buckets.folder import BucketError, ObjectInfo
from tidal.buckets.keys import matches
from tidal.jobs.model import is_json
from tidal.store.models import Job, TriggerRecord
from tidal.triggers.cron import decide, iso

if TYPE_CHECKING:
    from tidal.triggers.service import TriggerHub

log = logging.getLogger("tidal.triggers")

INLINE_BODY_LIMIT = 4 * 1024 * 1024  # base64 makes it 5.3 MB: still under a job's 6 MiB body
MAX_SLEEP_S = 30.0  # a cron source looks again at least this often (a clock jump, a long sleep)


class CronSource:
    def __init__(self, trigger: TriggerRecord, hub: TriggerHub) -> None:
        self.trigger, self.hub = trigger, hub
        config = trigger.config
        self.schedule, self.tz = str(config["schedule"]), str(config["tz"])
        self.catchup_s = float(config["catchup"])  # type: ignore[arg-type]

    async def run(self) -> None:
        stored = await asyncio.to_thread(self.hub.store.trigger, self.trigger.id)
        state: dict[str, Any] = dict(stored.state) if stored is not None else {}
        while True:
            decided_until = float(state.get("decided_until", self.trigger.created_at))
            now = self.hub.clock()
            decision = decide(self.schedule, self.tz, self.catchup_s, decided_until, now)
            if decision.decided_until > decided_until:
                if decision.fire is not None:
                    event = {"trigger": "cron", "scheduled_time": iso(decision.fire), "fired_at": iso(now)}
                    await self.hub.submit(self.trigger, event, f"cron:{self.trigger.id}:{decision.fire:.3f}")
                    state["last_fire"] = decision.fire
                state["decided_until"] = decision.decided_until
                state["missed"] = int(state.get("missed", 0)) + decision.missed
                state["next_at"] = decision.next_at
                await self.hub.save_state(self.trigger, state)
            await asyncio.sleep(min(MAX_SLEEP_S, max(0.0, decision.next_at - self.hub.clock())))


class BucketSource:
    def __init__(self, trigger: TriggerRecord, hub: TriggerHub) -> None:
        self.trigger, self.hub = trigger, hub
        config = trigger.config
        self.bucket = str(config["bucket"])
        self.prefix, self.suffix = str(config["prefix"]), str(config["suffix"])
        self.output_prefix = str(config["output_prefix"])
        self.poll_s = float(config["poll"])  # type: ignore[arg-type]

    def wants(self, key: str) -> bool:
        return matches(key, self.prefix, self.suffix, self.output_prefix)

    async def fire(self, info: ObjectInfo) -> int:
        """Submit the object's event (once per key and ETag); 1 if it matched, else 0."""
        if not self.wants(info.key):
            return 0
        version = hashlib.sha256(f"{info.key}\0{info.etag}".encode()).hexdigest()[:32]
        event = object_event(self.bucket, info)
        if info.size <= INLINE_BODY_LIMIT:
            # An object gone since it was seen: the event still names it.
            with contextlib.suppress(FileNotFoundError, BucketError):
                inline_body(event, await asyncio.to_thread(self.hub.buckets.get, self.bucket, info.key))
        job = await self.hub.submit(self.trigger, event, f"bucket:{self.trigger.id}:{version}")
        if job is not None and self.output_prefix:
            self.hub.background(self._write_result(job, info.key))
        return 1

    async def _write_result(self, job: Job, key: str) -> None:
        """The function's result under ``output_prefix``: ``out/`` + ``in/a.png`` -> ``out/in/a.png.json``."""
        ended = await self.hub.wait_job(job.id)
        if ended.state != "succeeded" or ended.result is None:
            return
        body = (
            ended.result
            if is_json(ended.result_type)
            else msgspec.json.encode({"result": ended.result.decode(errors="replace")})
        )
        try:
            await asyncio.to_thread(
                self.hub.buckets.put, self.bucket, f"{self.output_prefix}{key}.json", body
            )
        except (BucketError, OSError) as exc:
            log.warning("trigger %s: could not write the result of %s: %s", self.trigger.id, key, exc)

    async def run(self) -> None:
        stored = await asyncio.to_thread(self.hub.store.trigger, self.trigger.id)
        state: dict[str, Any] = dict(stored.state) if stored is not None else {}
        cursor = (
            int(state.get("after_ns", int(self.trigger.created_at * 1e9))),
            str(state.get("after_key", "")),
        )
        while True:
            cursor = await self.scan(cursor)
            await asyncio.sleep(self.poll_s)

    async def scan(self, cursor: tuple[int, str]) -> tuple[int, str]:
        """Fire the objects newer than ``cursor``, oldest first; the new cursor (stored)."""
        listed = await asyncio.to_thread(self.hub.buckets.list, self.bucket, self.prefix, False)
        fresh = sorted((item for item in listed if (item.modified_ns, item.key) > cursor), key=_position)
        for item in fresh:
            if self.wants(item.key):
                try:
                    info = await asyncio.to_thread(self.hub.buckets.stat, self.bucket, item.key)
                except (FileNotFoundError, BucketError):
                    continue  # gone (or replaced by a symlink) since the listing
                await self.fire(info)
            cursor = _position(item)
            await self.hub.save_state(self.trigger, {"after_ns": cursor[0], "after_key": cursor[1]})
        return cursor


def _position(item: ObjectInfo) -> tuple[int, str]:
    return (item.modified_ns, item.key)


def inline_body(event: dict[str, Any], body: bytes) -> None:
    """Put the object's bytes into its event record (``Records[0]["tidal"]["body_base64"]``)."""
    event["Records"][0]["tidal"] = {"body_base64": base64.b64encode(body).decode()}


def object_event(bucket: str, info: ObjectInfo) -> dict[str, Any]:
    """An S3-style event record (what an S3 event notification carries) for one new object."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "tidal:bucket",
                "eventName": "ObjectCreated:Put",
                "eventTime": iso(info.modified),
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {"key": info.key, "size": info.size, "eTag": info.etag},
                },
            }
        ]
    }
