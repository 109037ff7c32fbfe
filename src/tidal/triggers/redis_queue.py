"""The Redis Streams queue source: a consumer group, acked only after the invocation succeeded.

Per trigger: consumer group ``group`` on ``stream`` (created at ``0`` with MKSTREAM if missing),
consumer ``HOST-TRIGGER_ID`` (the same after a restart, so the gateway reads its own pending
entries again at once: XREADGROUP from ``0``). Fresh entries come ``batch`` at a time (XREADGROUP
``>``), at most ``concurrency`` in flight; entries pending with another consumer longer than
``visibility_timeout`` (a dead gateway on another host) are taken over with XAUTOCLAIM.

The event: the entry's ``body`` field when it has one (JSON if it parses, else the text), else its
whole field map as a JSON object. The function sees the entry id in ``x-tidal-message-id``.

Delivery: each entry is one job (idempotency key: trigger and entry id), whose attempts are the
entry's deliveries (``max_deliveries``; retried with the jobs' backoff). Once the job ended, the
entry is acked: succeeded -> XACK; failed or dead -> XADD to ``dead_letter`` (the fields, plus
``tidal_source_id``, ``tidal_error``, ``tidal_job``, ``tidal_deliveries``) and XACK, in one
MULTI. A gateway killed mid-message leaves the entry pending and its job stored: after the
restart the job's lost attempt is retried (tidal.jobs) and the re-read entry finds the same job,
so the message runs to one successful end (at-least-once per attempt, never a second job). An
entry Redis delivered more than ``max_deliveries`` times without ending (it keeps killing the
gateway) is dead-lettered unread.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tidal.store.models import Job, TriggerRecord
from tidal.triggers.handlers import Handlers, failure_of

if TYPE_CHECKING:
    from tidal.triggers.service import TriggerHub

log = logging.getLogger("tidal.triggers")

BLOCK_MS = 1000  # one XREADGROUP waits this long for entries (then reclaims are looked for)
MESSAGE_HEADER = "x-tidal-message-id"

Entry = tuple[str, dict[str, str]]


def event_of(fields: dict[str, str]) -> object:
    """An entry's event: its ``body`` field (JSON if it parses) or all its fields.

    >>> event_of({"body": '{"n": 1}'}), event_of({"body": "hi"}), event_of({"a": "1", "b": "2"})
    ({'n': 1}, 'hi', {'a': '1', 'b': '2'})
    """
    if "body" in fields:
        try:
            return msgspec.json.decode(fields["body"])
        except msgspec.DecodeError:
            return fields["body"]
    return dict(fields)


class RedisQueueSource:
    def __init__(self, trigger: TriggerRecord, hub: TriggerHub) -> None:
        self.trigger, self.hub = trigger, hub
        config = trigger.config
        self.url, self.stream, self.group = str(config["url"]), str(config["stream"]), str(config["group"])
        self.batch, self.concurrency = int(config["batch"]), int(config["concurrency"])  # type: ignore[call-overload]
        self.max_deliveries = int(config["max_deliveries"])  # type: ignore[call-overload]
        self.dead_letter = str(config["dead_letter"])
        self.visibility_ms = int(float(config["visibility_timeout"]) * 1000)  # type: ignore[arg-type]
        self.consumer = f"{socket.gethostname()}-{trigger.id}"
        self._handlers = Handlers()  # by entry id

    async def run(self) -> None:
        redis = Redis.from_url(self.url, decode_responses=True, socket_connect_timeout=5)
        try:
            await self._ensure_group(redis)
            await self._consume(redis, "0")  # our own entries left pending by a killed gateway
            while True:
                await self._reclaim(redis)
                await self._consume(redis, ">")
                self._handlers.raise_failures()
        finally:
            await self._handlers.cancel_all()
            await redis.aclose()

    async def _ensure_group(self, redis: Redis) -> None:
        try:
            await redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _consume(self, redis: Redis, start: str) -> None:
        """Read up to the free slots' worth of entries (fresh with ``>``, our pending with ``0``)."""
        while True:
            free = self.concurrency - len(self._handlers)
            if free <= 0:
                await self._handlers.wait_for_one()
                continue
            block = BLOCK_MS if start == ">" else None
            answer: Any = await redis.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=min(self.batch, free), block=block
            )
            entries: list[Entry] = answer[0][1] if answer else []
            fresh = [(entry_id, fields) for entry_id, fields in entries if entry_id not in self._handlers]
            for entry_id, fields in fresh:
                self._start(redis, entry_id, fields or {}, counted=start != ">")
            if start == ">" or not fresh:
                return

    async def _reclaim(self, redis: Redis) -> None:
        """Take over entries idle with another consumer past the visibility timeout."""
        answer = await redis.xautoclaim(
            self.stream, self.group, self.consumer, self.visibility_ms, "0-0", count=self.batch
        )
        for entry_id, fields in answer[1]:
            if entry_id not in self._handlers and fields is not None:
                self._start(redis, entry_id, fields, counted=True)

    def _start(self, redis: Redis, entry_id: str, fields: dict[str, str], counted: bool) -> None:
        self._handlers.start(entry_id, self._handle(redis, entry_id, fields, counted))

    async def _handle(self, redis: Redis, entry_id: str, fields: dict[str, str], counted: bool) -> None:
        if counted and await self._deliveries(redis, entry_id) > self.max_deliveries:
            await self._dead_letter(redis, entry_id, fields, "delivered too often without ending", None)
            return
        job = await self.hub.submit(
            self.trigger, event_of(fields), f"queue:{self.trigger.id}:{entry_id}",
            max_attempts=self.max_deliveries, headers={MESSAGE_HEADER: entry_id},
        )  # fmt: skip
        if job is None:
            return  # left pending: another delivery decides
        ended = await self.hub.wait_job(job.id)
        if ended.state == "succeeded":
            await redis.xack(self.stream, self.group, entry_id)
        else:
            await self._dead_letter(redis, entry_id, fields, failure_of(ended), ended)

    async def _deliveries(self, redis: Redis, entry_id: str) -> int:
        pending: list[dict[str, Any]] = await redis.xpending_range(
            self.stream, self.group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 0

    async def _dead_letter(
        self, redis: Redis, entry_id: str, fields: dict[str, str], error: str, job: Job | None
    ) -> None:
        letter = {**fields, "tidal_source_id": entry_id, "tidal_error": error[:1000],
                  "tidal_job": job.id if job else "", "tidal_deliveries": str(job.attempts if job else "")}  # fmt: skip
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter, letter)  # type: ignore[arg-type]
            pipe.xack(self.stream, self.group, entry_id)
            await pipe.execute()
        log.warning("trigger %s: entry %s of %s dead-lettered to %s: %s", self.trigger.id, entry_id,
                    self.stream, self.dead_letter, error)  # fmt: skip
