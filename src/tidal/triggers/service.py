"""The trigger hub: stores triggers, runs one supervised source task per trigger, and turns each
event into a job (tidal.jobs) of the trigger's function, made by the platform caller with the
trigger's kind (cron, bucket, queue): durable, retried and dead-lettered like any job, recorded on
activations with the trigger's id.

A source that fails at run time (Redis down, a bucket folder gone) is restarted with exponential
backoff (1 s doubling to 60 s); its last error is stored and ``tidal triggers ls`` shows it until
the source runs again. One failing source never stops another (each is its own task).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

import msgspec

from tidal.buckets.folder import FolderBuckets, ObjectInfo
from tidal.invoke.request import PLATFORM, InvocationRequest, RequestContext, Trigger
from tidal.jobs.model import TRIGGER_HEADER
from tidal.jobs.service import IdempotencyConflict, JobService
from tidal.store.models import FINAL_JOB_STATES, Job, TriggerRecord
from tidal.store.protocols import JobStore, TriggerStore
from tidal.triggers.model import TriggerError, check_trigger, is_s3, new_trigger_id, spec_trigger_id

log = logging.getLogger("tidal.triggers")

RECONCILE_S = 2.0  # how often the stored triggers are compared with the running sources
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 60.0
HEALTHY_AFTER_S = 60.0  # a source that ran this long before failing starts its backoff anew
JOB_POLL_S = 1.0  # a waiter looks at its job at least this often


class TriggerStoreAndJobs(TriggerStore, JobStore, Protocol):
    pass


class Source(Protocol):
    async def run(self) -> None:
        """Turn events into jobs until cancelled; raise on a failure (the hub retries)."""
        ...


SourceFactory = Callable[[TriggerRecord, "TriggerHub"], Source]


def backoff_s(failures: int) -> float:
    """1 s, 2 s, 4 s ... at most 60 s.

    >>> [backoff_s(n) for n in (1, 2, 3, 8)]
    [1.0, 2.0, 4.0, 60.0]
    """
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1))


class TriggerHub:
    def __init__(
        self,
        store: TriggerStoreAndJobs,
        jobs: JobService,
        buckets: FolderBuckets,
        factories: Mapping[str, SourceFactory],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.jobs, self.buckets, self.clock = store, jobs, buckets, clock
        self.factories = dict(factories)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        # Waiters of jobs look again when any job ends (the dispatcher says so), not on a fixed poll.
        self._job_ended = asyncio.Event()
        told = jobs.dispatcher.finished

        def job_ended() -> None:
            told()
            self._job_ended.set()
            self._job_ended = asyncio.Event()

        jobs.dispatcher.finished = job_ended

    # -- what the API and the platform call ---------------------------------------------------

    async def add(self, function: str, raw: Mapping[str, Any]) -> TriggerRecord | None:
        """Check (TriggerError), store and start a trigger added by hand; None: no such function."""
        config = check_trigger(raw, function)
        record = TriggerRecord(
            new_trigger_id(), function, config["kind"], config, "cli", self.clock(), initial_state(config)
        )
        if not await asyncio.to_thread(self.store.add_trigger, record):
            return None
        self._changed.set()
        return record

    async def remove(self, trigger_id: str) -> bool:
        removed = await asyncio.to_thread(self.store.delete_trigger, trigger_id)
        self._changed.set()
        return removed

    async def sync(self, function: str, settings: Mapping[str, object]) -> None:
        """Make the function's declared triggers (spec ``triggers``, validated at deploy) stored."""
        declared = settings.get("triggers")
        records = []
        for raw in declared if isinstance(declared, list) else []:
            try:
                config = check_trigger(raw, function)
            except TriggerError as exc:  # checked at deploy: only a hand-edited database gets here
                log.error("function %s: a declared trigger is not valid (%s); not running it", function, exc)
                continue
            trigger_id = spec_trigger_id(function, config)
            records.append(
                TriggerRecord(
                    trigger_id, function, config["kind"], config, "spec", self.clock(), initial_state(config)
                )
            )
        await asyncio.to_thread(self.store.sync_spec_triggers, function, records)
        self._changed.set()

    async def object_created(self, bucket: str, info: ObjectInfo) -> int:
        """An object put through the API or CLI: fire the bucket's matching triggers now (the scan
        would find it later; the job's idempotency key makes that a no-op). How many fired."""
        from tidal.triggers.sources import BucketSource

        fired = 0
        for trigger in await asyncio.to_thread(self.store.triggers):
            if (
                trigger.kind == "bucket"
                and trigger.config.get("bucket") == bucket
                and not is_s3(trigger.config)
            ):
                fired += await BucketSource(trigger, self).fire(info)
        return fired

    # -- what sources call ------------------------------------------------------------------------

    async def submit(
        self, trigger: TriggerRecord, event: object, idempotency_key: str, max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Job | None:  # fmt: skip
        """The event as a job of the trigger's function. The same idempotency key again (a restart
        between a job and its trigger's state) gives the earlier job, or None when the event's body
        differs (a cron run's ``fired_at``): either way the event is never a second job."""
        request = InvocationRequest(
            trigger.function,
            msgspec.json.encode(event),
            caller=PLATFORM,
            trigger=Trigger(trigger.kind),
            context=RequestContext(headers={**(headers or {}), TRIGGER_HEADER: trigger.id}),
        )
        try:
            submitted = await self.jobs.submit(request, idempotency_key, max_attempts=max_attempts)
        except IdempotencyConflict:
            return None
        if submitted.created:
            await asyncio.to_thread(self.store.add_trigger_events, trigger.id, 1, self.clock())
        return submitted.job

    async def wait_job(self, job_id: str) -> Job:
        """The job once it is final (succeeded, failed, dead, cancelled)."""
        while True:
            ended = self._job_ended
            job = await asyncio.to_thread(self.store.job, job_id)
            if job is None:
                raise LookupError(f"job {job_id} is gone")
            if job.state in FINAL_JOB_STATES:
                return job
            with contextlib.suppress(TimeoutError):  # the poll is a safety net: a wake is the rule
                await asyncio.wait_for(ended.wait(), JOB_POLL_S)

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (a bucket result's write-back) beside the sources, kept until done."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def save_state(self, trigger: TriggerRecord, state: dict[str, object]) -> None:
        await asyncio.to_thread(self.store.save_trigger_state, trigger.id, state, 0, self.clock())

    # -- the supervised loop --------------------------------------------------------------------

    def ready(self) -> None:
        """Functions are served: sources may start (their jobs find them)."""
        self._ready.set()

    async def run(self) -> None:
        await self._ready.wait()
        try:
            while True:
                self._changed.clear()
                await self.reconcile()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), RECONCILE_S)
        finally:
            await self.close()

    async def reconcile(self) -> None:
        """A task per stored trigger; the tasks of triggers gone (or changed) are cancelled."""
        stored = {trigger.id: trigger for trigger in await asyncio.to_thread(self.store.triggers)}
        for trigger_id in list(self._tasks):
            if trigger_id not in stored or self._tasks[trigger_id].done():
                self._tasks.pop(trigger_id).cancel()
        for trigger_id, trigger in stored.items():
            if trigger_id not in self._tasks and trigger.kind in self.factories:
                task = asyncio.get_running_loop().create_task(
                    self._supervise(trigger), name=f"trigger:{trigger_id}"
                )
                self._tasks[trigger_id] = task

    async def _supervise(self, trigger: TriggerRecord) -> None:
        failures = 0
        while True:
            started = self.clock()
            try:
                await self.factories[trigger.kind](trigger, self).run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = 1 if self.clock() - started > HEALTHY_AFTER_S else failures + 1
                delay = backoff_s(failures)
                message = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "trigger %s (%s): %s; retrying in %.0f s", trigger.id, trigger.kind, message, delay
                )
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.store.set_trigger_error, trigger.id, message, self.clock())
                await asyncio.sleep(delay)

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._background]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def initial_state(config: Mapping[str, Any]) -> dict[str, object]:
    """An S3 bucket trigger's webhook token (``POST /v1/buckets/events/ID?token=``), made once."""
    return {"webhook_token": secrets.token_urlsafe(24)} if is_s3(config) else {}


def trigger_sources() -> dict[str, SourceFactory]:
    """The source of each trigger kind the gateway runs."""
    from tidal.triggers.sources import CronSource

    return {"cron": CronSource, "bucket": bucket_source, "queue": queue_source}


def bucket_source(trigger: TriggerRecord, hub: TriggerHub) -> Source:
    """A local folder's scan, or an S3-compatible store's listing."""
    if is_s3(trigger.config):
        from tidal.triggers.s3_bucket import S3BucketSource

        return S3BucketSource(trigger, hub)
    from tidal.triggers.sources import BucketSource

    return BucketSource(trigger, hub)


def queue_source(trigger: TriggerRecord, hub: TriggerHub) -> Source:
    """Redis Streams for redis:// and rediss://, NATS JetStream for nats:// and tls://, RabbitMQ
    for amqp:// and amqps:// (the ``rabbitmq`` extra)."""
    if str(trigger.config["url"]).startswith(("amqp:", "amqps:")):
        from tidal.triggers.rabbitmq_queue import RabbitQueueSource

        return RabbitQueueSource(trigger, hub)
    if str(trigger.config["url"]).startswith(("nats:", "tls:")):
        from tidal.triggers.nats_queue import NatsQueueSource

        return NatsQueueSource(trigger, hub)
    from tidal.triggers.redis_queue import RedisQueueSource

    return RedisQueueSource(trigger, hub)
