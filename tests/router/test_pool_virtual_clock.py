"""RevisionPool logic on a virtual clock with fake instances: no processes, no sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import pytest

from tidal.backends.base import Capacity, InstanceHandle, InstanceSpec
from tidal.invoke.request import RequestContext
from tidal.router.connection import InstanceClient, StartFailed
from tidal.router.pool import RevisionPool, start_backoff_s
from tidal.spec import validate_spec
from tidal.store.models import Revision


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeClient:
    """Stands in for an instance connection: Ready (or a setup failure) is decided by the test."""

    def __init__(self, handle: InstanceHandle, fail: bool) -> None:
        self.handle = handle
        self.id = handle.id
        self.ready: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if fail:
            self.ready.set_exception(StartFailed("ImportError", "no module named missing"))
        else:
            self.ready.set_result(object())
        self.assigned = self.served = 0
        self.draining = self.lost = self.recycle = False
        self.start_ms = 0.0
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.started: list[InstanceHandle] = []
        self.stopped: list[str] = []
        self.fail_starts = False

    async def start(self, launch: InstanceSpec, count: int = 1) -> list[InstanceHandle]:
        handles = [
            InstanceHandle(
                f"{launch.revision.id}-{len(self.started) + i}",
                launch.revision.id,
                "fake:",
                Capacity(launch.spec.cpu, launch.spec.memory),
                time.time(),
            )
            for i in range(count)
        ]
        self.started += handles
        return handles

    async def stop(self, instance: InstanceHandle, grace_s: float = 5.0) -> None:
        self.stopped.append(instance.id)


def make_pool(
    backend: FakeBackend,
    clock: Clock,
    choose: Callable[..., InstanceClient | None] | None = None,
    **spec: object,
) -> RevisionPool:
    validated = validate_spec({"name": "fake", **spec})
    revision = Revision("fake-00001", "fake", 1, "d", "c", "m", "f", False, "native",
                        validated.revision_fields(), time.time())  # fmt: skip

    async def connect(handle: InstanceHandle, on_lost: Callable[[InstanceClient], None]) -> InstanceClient:
        return FakeClient(handle, backend.fail_starts)  # type: ignore[return-value]

    extra = {"choose": choose} if choose else {}
    return RevisionPool(InstanceSpec(revision, validated, "/nowhere"), backend, clock=clock,  # type: ignore[arg-type]
                        connect=connect, **extra)  # fmt: skip


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_failed_starts_back_off_on_the_virtual_clock() -> None:
    backend, clock = FakeBackend(), Clock()
    pool = make_pool(backend, clock)
    backend.fail_starts = True
    with pytest.raises(StartFailed):
        await pool.acquire(wait_s=5)
    assert len(backend.started) == 1
    # Within the backoff a request fails at once with the start's error, and starts nothing.
    clock.now += start_backoff_s(1) - 0.1
    with pytest.raises(StartFailed, match="no module named missing"):
        await pool.acquire(wait_s=5)
    assert len(backend.started) == 1
    assert pool.scale_to(1, "test") is None, "the autoscaler's start waits for the backoff too"
    # Once the backoff is over, the next request starts an instance again; this time it comes up.
    clock.now += 0.2
    backend.fail_starts = False
    client, waited_ms = await pool.acquire(wait_s=5)
    assert len(backend.started) == 2 and client.id == backend.started[1].id
    assert waited_ms == 0.0, "no virtual time passed while it waited"
    pool.release(client)
    await pool.drain(0)


async def test_the_injected_chooser_picks_the_instance() -> None:
    backend, clock = FakeBackend(), Clock()
    seen: list[RequestContext] = []

    def newest_first(
        ready: Sequence[InstanceClient], concurrency: int, context: RequestContext
    ) -> InstanceClient | None:
        seen.append(context)
        free = [client for client in ready if client.assigned < concurrency]
        return free[-1] if free else None

    pool = make_pool(backend, clock, newest_first, concurrency=4)
    pool.scale_to(2, "test: two instances")
    await settle()
    assert len(pool.ready) == 2
    context = RequestContext(model_id="resnet-50")
    client, _ = await pool.acquire(wait_s=1, context=context)
    assert client is pool.ready[-1], "the least-loaded default would have picked the first"
    assert seen[-1] is context, "the chooser sees the request's context"
    pool.release(client)
    await pool.drain(0)


async def test_demand_is_metered_on_the_injected_clock() -> None:
    backend, clock = FakeBackend(), Clock()
    pool = make_pool(backend, clock, concurrency=2)
    pool.scale_to(1, "test")
    await settle()
    pool.meter.take(clock.now)
    first, _ = await pool.acquire(wait_s=1)
    clock.now += 1.0
    second, _ = await pool.acquire(wait_s=1)
    clock.now += 1.0
    # 1 request for the first second, 2 for the next: 1.5 on average.
    assert pool.meter.take(clock.now) == pytest.approx(1.5)
    pool.release(first)
    pool.release(second)
    await pool.drain(0)
