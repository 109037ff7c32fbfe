"""RevisionPool with real instance processes: draining on scale-down, queue order, retirement."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tidal.backends.base import InstanceSpec
from tidal.backends.local import LocalBackend
from tidal.router.pool import QueueFull, RevisionPool, RevisionRetired
from tidal.runtime.protocol import Invoke, Result
from tidal.spec import validate_spec
from tidal.store.models import Revision

MODULE = """
import time

import tidal

@tidal.function(name="nap")
def nap(payload):
    time.sleep(payload)
    return payload
"""


def revision(code_dir: Path, **spec: object) -> Revision:
    full = validate_spec({"name": "nap", **spec}).model_dump()
    return Revision("nap-00001", "nap", 1, "d", "c", "nap", "nap", False, "native", full, time.time())


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "nap.py").write_text(MODULE)
    return folder


async def call(pool: RevisionPool, seconds: float) -> float:
    client, _ = await pool.acquire(wait_s=30)
    try:
        body = str(seconds).encode()
        sent = client.call(lambda call_id: Invoke(call_id, "a", time.time() + 30, body))
        answer = await sent.answer(30)
        assert isinstance(answer, Result)
        return float(answer.body)
    finally:
        pool.release(client)


async def test_scale_down_drains_the_requests_an_instance_holds(tmp_path: Path, code_dir: Path) -> None:
    backend = LocalBackend(tmp_path / "state")
    spec = validate_spec(revision(code_dir).spec)
    pool = RevisionPool(InstanceSpec(revision(code_dir), spec, str(code_dir)), backend)
    try:
        running = asyncio.create_task(call(pool, 1.0))
        while not pool.ready or pool.ready[0].assigned == 0:
            await asyncio.sleep(0.01)
        client = pool.ready[0]
        pool.scale_to(0, "test: scale down while busy")
        assert pool.ready == [] and client.draining
        assert await running == 1.0, "the request held by the instance being removed was answered"
        for _ in range(200):
            if not backend.instances():
                break
            await asyncio.sleep(0.02)
        assert backend.instances() == [], "the drained instance was stopped afterwards"
    finally:
        await pool.drain(1.0)
        await backend.close()


async def test_queue_bound_and_fifo_and_retirement(tmp_path: Path, code_dir: Path) -> None:
    backend = LocalBackend(tmp_path / "state")
    spec = validate_spec({**revision(code_dir).spec, "max_queue": 2})
    pool = RevisionPool(InstanceSpec(revision(code_dir), spec, str(code_dir)), backend)
    try:
        first = asyncio.create_task(call(pool, 0.3))
        await asyncio.sleep(0)
        second = asyncio.create_task(call(pool, 0.0))
        await asyncio.sleep(0)
        assert len(pool.waiters) == 2
        with pytest.raises(QueueFull):
            await pool.acquire(wait_s=5)
        assert pool.counters.rejected == 1
        assert await first == 0.3 and await second == 0.0
        # A retired pool hands its queue back so the gateway can route to the successor.
        busy = asyncio.create_task(call(pool, 0.5))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(pool.acquire(wait_s=5))
        await asyncio.sleep(0.05)
        drained = asyncio.create_task(pool.drain(5.0))
        with pytest.raises(RevisionRetired):
            await queued
        assert await busy == 0.5
        await drained
    finally:
        await pool.drain(1.0)
        await backend.close()


async def test_scale_down_gives_up_a_starting_instance_before_a_ready_one(
    tmp_path: Path, code_dir: Path
) -> None:
    backend = LocalBackend(tmp_path / "state")
    spec = validate_spec(revision(code_dir).spec)
    pool = RevisionPool(InstanceSpec(revision(code_dir), spec, str(code_dir)), backend)
    try:
        pool.scale_to(1, "test: one warm instance")
        while not pool.ready:
            await asyncio.sleep(0.01)
        (warm,) = pool.ready
        pool.scale_to(2, "test: a burst")
        assert pool.size == 2 and len(pool.starting) == 1
        pool.scale_to(1, "test: the burst is over before the second instance is up")
        assert pool.ready == [warm] and not warm.draining, "the warm instance keeps serving"
        assert pool.size == 1 and pool.describe()["starting"] == 0
        while pool.starting:
            await asyncio.sleep(0.01)
        assert pool.ready == [warm]
        assert [handle.id for handle in backend.instances()] == [warm.handle.id], "the late start was stopped"
        assert await call(pool, 0.0) == 0.0
    finally:
        await pool.drain(1.0)
        await backend.close()


async def test_a_lost_instance_shows_the_cause_its_backend_names_after_its_connection_closed(
    tmp_path: Path, code_dir: Path
) -> None:
    """A host's loss can close an instance's connection before the backend hears of the host
    (Ray notices a dead node seconds later): the latest loss says what was known, then the cause."""
    backend = LocalBackend(tmp_path / "state")
    spec = validate_spec(revision(code_dir).spec)
    pool = RevisionPool(InstanceSpec(revision(code_dir), spec, str(code_dir)), backend)
    try:
        assert await call(pool, 0.0) == 0.0
        (client,) = pool.ready
        assert client.handle.pid is not None
        os.kill(client.handle.pid, signal.SIGKILL)
        for _ in range(500):
            if pool.counters.last_lost:
                break
            await asyncio.sleep(0.01)
        assert pool.counters.last_lost == f"{client.id}: its connection closed"
        pool.name_loss("another-instance", "node n2 lost")  # not the latest loss: nothing changes
        assert pool.counters.last_lost == f"{client.id}: its connection closed"
        pool.name_loss(client.id, "node n1 lost")
        assert pool.counters.last_lost == f"{client.id}: node n1 lost"
    finally:
        await pool.drain(1.0)
        await backend.close()
