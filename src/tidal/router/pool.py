"""The instances of one revision and the requests waiting for them (the activator's queue).

Invariants:
- ``ready`` holds connected instances that sent Ready and are not draining; routing only ever
  picks from it, and never above an instance's ``concurrency`` (``client.assigned``).
- A request either gets an instance at once, or waits in ``waiters`` (FIFO, at most
  ``max_queue``), or is refused with QueueFull. A waiter leaves the queue exactly once: served,
  timed out, failed (its revision cannot start) or handed back (RevisionRetired).
- ``meter`` counts every request from acquire to release, queued or in flight: the autoscaler's
  view of demand.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tidal.backends.base import COLD_START_DETAIL, LOST, Backend, InstanceHandle, InstanceSpec
from tidal.invoke.request import NO_CONTEXT, RequestContext
from tidal.retry import backoff_s
from tidal.router.connection import InstanceClient, StartFailed
from tidal.router.meter import ConcurrencyMeter
from tidal.spec import FunctionSpec
from tidal.store.models import InstanceLife, Revision

log = logging.getLogger("tidal.router")

START_TIMEOUT_S = 300.0  # a model load may be slow; a start that takes longer is a failure
# After a failed start, no new start is tried (and requests that would wait for one fail fast with
# its error) for a backoff that doubles with each consecutive failure: a function that cannot start
# costs a few starts a minute, not one per autoscaler tick.
START_BACKOFF_FIRST_S = 1.0
START_BACKOFF_MAX_S = 30.0


def start_backoff_s(consecutive_failures: int) -> float:
    """How long to wait before the next start after this many failures in a row."""
    return backoff_s(consecutive_failures, START_BACKOFF_FIRST_S, START_BACKOFF_MAX_S)


class QueuedBodies:
    """The bytes of request bodies waiting in every pool's queue, against one budget for the
    gateway: each pool's ``max_queue`` bounds a count, this bounds the memory those requests hold
    (a burst of 6 MiB bodies into many functions' queues would otherwise grow without bound).
    0: no budget."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.used = 0

    def admits(self, size: int) -> bool:
        return not self.limit or self.used + size <= self.limit


class QueueFull(Exception):
    """The revision's queue holds ``max_queue`` requests already: answer 429."""


class RevisionRetired(Exception):
    """The revision stopped serving while the request waited: route it again."""


# Picks the instance for a request among the ready ones, or None when none has room. Injected so
# that model multiplexing can prefer an instance that already holds the request's model.
InstanceChooser = Callable[[Sequence[InstanceClient], int, RequestContext], InstanceClient | None]
Connect = Callable[[InstanceHandle, Callable[[InstanceClient], None]], Awaitable[InstanceClient]]


def least_loaded(
    ready: Sequence[InstanceClient], concurrency: int, _: RequestContext
) -> InstanceClient | None:
    """The ready instance with the fewest requests, if it has room for one more."""
    best: InstanceClient | None = None
    for client in ready:
        if best is None or client.assigned < best.assigned:
            best = client
    return best if best is not None and best.assigned < concurrency else None


class LifeLog(Protocol):
    """Told when an instance of the pool is up (Ready) and when its connection ends (metering)."""

    def started(self, life: InstanceLife) -> None: ...

    def stopped(self, instance: str, at: float) -> None: ...


class NoLifeLog:
    def started(self, life: InstanceLife) -> None:
        pass

    def stopped(self, instance: str, at: float) -> None:
        pass


@dataclass(frozen=True)
class ScalingEvent:
    at: float  # epoch seconds
    function: str
    revision: str
    from_count: int
    to_count: int
    reason: str


@dataclass
class PoolCounters:
    starts: int = 0
    start_failures: int = 0
    lost: int = 0
    recycled: int = 0
    rejected: int = 0
    last_lost: str = ""  # the latest instance lost and why: "ID: node NODE lost" (tidal status)


class RevisionPool:
    def __init__(
        self,
        launch: InstanceSpec,
        backend: Backend,
        on_demand: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        choose: InstanceChooser = least_loaded,
        connect: Connect = InstanceClient.connect,
        lives: LifeLog | None = None,
        queued_bodies: QueuedBodies | None = None,
    ) -> None:
        self.launch = launch
        self.queued_bodies = queued_bodies or QueuedBodies()
        self.lives: LifeLog = lives or NoLifeLog()
        self.revision: Revision = launch.revision
        self.spec: FunctionSpec = launch.spec
        self.backend = backend
        self.on_demand = on_demand  # wakes the autoscaler when a request has to wait
        self.clock = clock  # monotonic seconds; tests pass a virtual one
        self.choose = choose
        self.connect = connect
        self.ready: list[InstanceClient] = []
        self.starting: set[asyncio.Task[InstanceClient]] = set()
        self.waiters: collections.deque[asyncio.Future[InstanceClient]] = collections.deque()
        self.meter = ConcurrencyMeter(clock())
        self.counters = PoolCounters()
        self.events: collections.deque[ScalingEvent] = collections.deque(maxlen=50)
        self.desired = self.spec.min_instances
        self.panic = False
        self.closed = False
        self._last_failure: StartFailed | None = None  # the latest start's error, until one succeeds
        self._failures_in_a_row = 0
        self._retry_at = 0.0  # monotonic: no start before this (backoff after failures)
        self._draining: set[asyncio.Task[None]] = set()
        # Starts a scale-down no longer wants: each one that comes up with no request waiting is
        # stopped at once, so a shrinking revision gives up cold instances before warm ones.
        self._unwanted_starts = 0

    # -- the hot path -------------------------------------------------------------------------------

    def _free(self, context: RequestContext = NO_CONTEXT) -> InstanceClient | None:
        return self.choose(self.ready, self.spec.concurrency, context)

    async def acquire(
        self, wait_s: float, context: RequestContext = NO_CONTEXT, body_bytes: int = 0
    ) -> tuple[InstanceClient, float]:
        """An instance with room, and the ms this request waited for one (0 when it had room at once).

        A request that has to wait holds ``body_bytes`` of the gateway's queued-body budget meanwhile.
        """
        self.meter.change(+1, self.clock())
        client = None if self.waiters else self._free(context)
        if client is not None:
            client.assigned += 1
            return client, 0.0
        try:
            self._admit()
            if not self.queued_bodies.admits(body_bytes):
                self.counters.rejected += 1
                raise QueueFull(
                    f"queued request bodies would exceed the gateway's budget of {self.queued_bodies.limit} bytes"
                )
        except BaseException:
            self.meter.change(-1, self.clock())
            raise
        self.queued_bodies.used += body_bytes
        started = self.clock()
        waiter: asyncio.Future[InstanceClient] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        if not self.ready and not self.starting:
            self._start_in_background("a request is waiting and no instance is up")
        self.on_demand()
        timer = asyncio.get_running_loop().call_later(wait_s, _expire, waiter)
        try:
            client = await waiter
        except BaseException:
            self.meter.change(-1, self.clock())
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            raise
        finally:
            timer.cancel()
            self.queued_bodies.used -= body_bytes
        return client, (self.clock() - started) * 1000

    def _admit(self) -> None:
        if self.closed:
            raise RevisionRetired
        if len(self.waiters) >= self.spec.max_queue:
            self.counters.rejected += 1
            raise QueueFull(
                f"{len(self.waiters)} requests are already queued (max_queue {self.spec.max_queue})"
            )
        if self._last_failure and not self.ready and self._backing_off():
            raise self._last_failure

    def _backing_off(self) -> bool:
        return self.clock() < self._retry_at

    def release(self, client: InstanceClient) -> None:
        """A request routed to ``client`` is finished (answered, failed or cancelled)."""
        client.assigned -= 1
        client.served += 1
        self.meter.change(-1, self.clock())
        if client.recycle and not client.draining:
            self.recycle(client)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free instance slots to waiting requests, oldest first."""
        while self.waiters:
            client = self._free()
            if client is None:
                return
            waiter = self.waiters.popleft()
            if not waiter.done():
                client.assigned += 1
                waiter.set_result(client)

    def _fail_waiters(self, error: BaseException) -> None:
        waiters, self.waiters = self.waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    # -- scaling ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Instances up or on their way: what the autoscaler's desired count is compared with."""
        return len(self.ready) + len(self.starting) - self._unwanted_starts

    def scale_to(self, desired: int, reason: str) -> ScalingEvent | None:
        """Start or drain instances so that ``size`` becomes ``desired``; the event, if it changed."""
        if self.closed:
            return None
        before, self.desired = self.size, desired
        if desired == before:
            return None
        if desired > before and self._backing_off():
            return None  # the autoscaler asks again every tick; the start waits for the backoff
        event = ScalingEvent(time.time(), self.revision.function, self.revision.id, before, desired, reason)
        self.events.append(event)
        log.info("%s: %d -> %d instances (%s)", self.revision.id, before, desired, reason)
        if desired > before:
            reclaimed = min(self._unwanted_starts, desired - before)  # still on their way: keep them
            self._unwanted_starts -= reclaimed
            for _ in range(desired - before - reclaimed):
                self._start_in_background(reason)
        else:
            abandoned = min(before - desired, len(self.starting) - self._unwanted_starts)
            self._unwanted_starts += abandoned
            for client in sorted(self.ready, key=lambda c: c.assigned)[: before - desired - abandoned]:
                self._retire(client)
        return event

    def _start_in_background(self, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._start_one())
        self.starting.add(task)
        task.add_done_callback(self._start_finished)

    def _start_finished(self, task: asyncio.Task[InstanceClient]) -> None:
        self.starting.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if self._unwanted_starts:
            self._unwanted_starts -= 1  # the failed start was one that was no longer wanted
        self.counters.start_failures += 1
        error = task.exception()
        failure = error if isinstance(error, StartFailed) else StartFailed(type(error).__name__, str(error))
        self._last_failure = failure
        self._failures_in_a_row += 1
        backoff = start_backoff_s(self._failures_in_a_row)
        self._retry_at = self.clock() + backoff
        log.warning("instance of %s failed to start (%d in a row; next try in %.0f s): %s",
                    self.revision.id, self._failures_in_a_row, backoff, failure)  # fmt: skip
        if not self.ready and not self.starting:
            self._fail_waiters(failure)

    async def _start_one(self) -> InstanceClient:
        self.counters.starts += 1
        started = self.clock()
        (handle,) = await self.backend.start(self.launch, 1)
        try:
            client = await self.connect(handle, self._lost)
        except OSError as exc:
            await self.backend.stop(handle)
            raise StartFailed("InstanceExited", f"could not connect to the instance: {exc}") from None
        try:
            await asyncio.wait_for(asyncio.shield(client.ready), START_TIMEOUT_S)
        except BaseException:
            client.close()
            await self.backend.stop(handle, grace_s=1.0)
            raise
        if self.closed:
            client.close()
            await self.backend.stop(handle, grace_s=1.0)
            raise StartFailed("RevisionRetired", "the revision was replaced or removed")
        client.start_ms = (self.clock() - started) * 1000
        self.lives.started(self._life_of(client))
        self._last_failure, self._failures_in_a_row, self._retry_at = None, 0, 0.0
        if self._unwanted_starts:
            self._unwanted_starts -= 1
            if not self.waiters:  # with requests waiting it serves them; the autoscaler trims later
                client.close()
                await self.backend.stop(handle, grace_s=1.0)
                return client
        self.ready.append(client)
        self._dispatch()
        return client

    def _life_of(self, client: InstanceClient) -> InstanceLife:
        return InstanceLife(
            client.id, self.revision.function, self.revision.id, self.spec.memory, float(self.spec.gpu),
            client.handle.started_at, 0.0, client.handle.extra.get(COLD_START_DETAIL, ""),
        )  # fmt: skip

    def _lost(self, client: InstanceClient) -> None:
        """Every connection's end comes here: a stop, a replacement or a crash."""
        self.lives.stopped(client.id, time.time())
        if client in self.ready:
            self.ready.remove(client)
            self.counters.lost += 1
            why = client.handle.extra.get(LOST) or "its connection closed"
            self.counters.last_lost = f"{client.id}: {why}"
            log.warning("instance %s was lost (%s); replacing it", client.id, why)
        self._start_successor(f"replacing lost instance {client.id}")

    def name_loss(self, instance_id: str, why: str) -> None:
        """The backend tells why ``instance_id`` was lost ("node NODE lost"), maybe after its
        connection closed and ``_lost`` could only say so: the latest loss shows the cause."""
        if self.counters.last_lost.startswith(f"{instance_id}: "):
            self.counters.last_lost = f"{instance_id}: {why}"

    def _start_successor(self, reason: str) -> None:
        """After an instance left unasked, start another if the revision is now short of one."""
        if (
            not self.closed
            and not self._backing_off()
            and self.size < max(self.desired, 1 if self.waiters else 0)
        ):
            self._start_in_background(reason)

    def _retire(self, client: InstanceClient) -> None:
        """Take ``client`` out of routing; stop it once the requests it holds are answered."""
        client.draining = True
        if client in self.ready:
            self.ready.remove(client)
        task = asyncio.get_running_loop().create_task(self._drain_and_stop(client, self.spec.timeout))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain_and_stop(self, client: InstanceClient, grace_s: float) -> None:
        deadline = self.clock() + grace_s
        while client.assigned > 0 and not client.lost and self.clock() < deadline:
            await asyncio.sleep(0.02)
        client.close()
        await self.backend.stop(client.handle, grace_s=2.0)

    def recycle(self, client: InstanceClient) -> None:
        """Drain an instance that asked to be replaced, and start its successor now."""
        self.counters.recycled += 1
        log.warning("instance %s is replaced: a call's thread ran past its deadline", client.id)
        self._retire(client)
        self._start_successor(f"replacing instance {client.id} (a call outlived its deadline)")

    def replace(self, client: InstanceClient) -> None:
        """Take a misbehaving instance (it ignored its deadline) out of service and stop it now."""
        client.draining = True
        if client in self.ready:
            self.ready.remove(client)
        asyncio.get_running_loop().create_task(self.backend.stop(client.handle, grace_s=1.0))
        if (self.size < self.desired or self.waiters) and not self._backing_off():
            self._start_in_background(f"replacing stuck instance {client.id}")

    # -- retiring the revision ---------------------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Stop taking calls, hand queued requests back, let in-flight calls finish, stop everything."""
        self.closed = True
        self._fail_waiters(RevisionRetired())
        for task in list(self.starting):
            task.cancel()
        clients = list(self.ready)
        self.ready.clear()
        await asyncio.gather(*(self._drain_and_stop(client, grace_s) for client in clients), *self._draining,
                             return_exceptions=True)  # fmt: skip

    def describe(self) -> dict[str, object]:
        return {
            "revision": self.revision.id,
            "ready": len(self.ready),
            "starting": len(self.starting) - self._unwanted_starts,
            "desired": self.desired,
            "in_flight": sum(client.assigned for client in self.ready),
            "queued": len(self.waiters),
            "panic": self.panic,
            "start_retry_in_s": round(max(0.0, self._retry_at - self.clock()), 1),
            # The latest start's error until a start succeeds ("GpuUnavailable: no GPU has 0.5 free ...").
            "start_error": str(self._last_failure) if self._last_failure is not None else None,
            "instances": [
                {
                    "id": client.id,
                    "address": client.handle.address,
                    "pid": client.handle.pid,
                    "started_at": client.handle.started_at,
                    "start_ms": round(client.start_ms, 2),
                    "in_flight": client.assigned,
                    "served": client.served,
                    "models": list(client.models),  # multiplexed: held, least recently used first
                    "log": client.handle.log_path,
                    "extra": client.handle.extra,
                }
                for client in self.ready
            ],
            "events": [vars(event) for event in list(self.events)[-10:]],
            **vars(self.counters),
        }


def _expire(waiter: asyncio.Future[InstanceClient]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
