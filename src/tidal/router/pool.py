"""The instances of one revision: pick the least-loaded ready one, start one when there is none.

Invariants: ``ready`` holds only connected instances that sent Ready; an instance leaves it the
moment its connection is lost. At most one start is in flight per pool in this base version
(the elastic-scaling work replaces ``_want_more`` with the autoscaler's decision).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from tidal.backends.base import Backend, InstanceHandle
from tidal.router.connection import InstanceClient, StartFailed
from tidal.store.models import Revision

log = logging.getLogger("tidal.router")

START_TIMEOUT_S = 300.0  # a model load may be slow; a start that takes longer is a failure
RETRY_AFTER_FAILURE_S = 1.0  # a failed start is not retried for every queued request at once


@dataclass
class PoolCounters:
    starts: int = 0
    start_failures: int = 0
    lost: int = 0


class RevisionPool:
    def __init__(self, revision: Revision, code_dir: str, backend: Backend) -> None:
        self.revision = revision
        self.code_dir = code_dir
        self.backend = backend
        spec = revision.spec
        self.concurrency = int(spec["concurrency"])  # type: ignore[call-overload]
        self.min_instances = int(spec["min_instances"])  # type: ignore[call-overload]
        self.max_instances = int(spec["max_instances"])  # type: ignore[call-overload]
        self.ready: list[InstanceClient] = []
        self.starting: set[asyncio.Task[InstanceClient]] = set()
        self.counters = PoolCounters()
        self.closed = False
        self._last_failure: tuple[float, StartFailed] | None = None

    # -- the hot path -------------------------------------------------------------------------------

    def pick(self) -> InstanceClient | None:
        """Least outstanding requests among ready instances (ties: the first, i.e. the oldest)."""
        best: InstanceClient | None = None
        for client in self.ready:
            if best is None or client.outstanding < best.outstanding:
                best = client
        if best is not None and best.outstanding >= self.concurrency and self._want_more():
            self._start_in_background()
        return best

    async def acquire(self, wait_s: float) -> tuple[InstanceClient, float]:
        """An instance to send a call to, and how long we waited for a cold start (0 when warm)."""
        client = self.pick()
        if client is not None:
            return client, 0.0
        started = time.perf_counter()
        deadline = started + wait_s
        while True:
            if self._last_failure and time.monotonic() - self._last_failure[0] < RETRY_AFTER_FAILURE_S:
                raise self._last_failure[1]
            if not self.starting:
                self._start_in_background()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError("no instance became ready in time")
            done, _ = await asyncio.wait(set(self.starting), timeout=remaining)
            client = self.pick()
            if client is not None:
                return client, (time.perf_counter() - started) * 1000
            for task in done:
                if not task.cancelled() and isinstance(task.exception(), StartFailed):
                    raise task.exception()  # type: ignore[misc]
            if self.closed:
                raise StartFailed("RevisionRetired", "the revision was replaced or removed")

    # -- starting and losing instances -----------------------------------------------------------

    def _want_more(self) -> bool:
        return not self.closed and not self.starting and len(self.ready) < self.max_instances

    def _start_in_background(self) -> None:
        task = asyncio.get_running_loop().create_task(self._start_one())
        self.starting.add(task)
        task.add_done_callback(self._start_finished)

    def _start_finished(self, task: asyncio.Task[InstanceClient]) -> None:
        self.starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters.start_failures += 1
            error = task.exception()
            failure = (
                error if isinstance(error, StartFailed) else StartFailed(type(error).__name__, str(error))
            )
            self._last_failure = (time.monotonic(), failure)
            log.warning("instance of %s failed to start: %s", self.revision.id, failure)

    async def _start_one(self) -> InstanceClient:
        self.counters.starts += 1
        (handle,) = await self.backend.start(self.revision, self.code_dir, 1)
        try:
            client = await InstanceClient.connect(handle, self._lost)
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
        self._last_failure = None
        self.ready.append(client)
        return client

    def _lost(self, client: InstanceClient) -> None:
        if client in self.ready:
            self.ready.remove(client)
            self.counters.lost += 1
            if not client.draining:
                log.warning("instance %s was lost; it will be replaced on demand", client.id)
        self.ensure_min_instances()

    def ensure_min_instances(self) -> None:
        """Keep ``min_instances`` warm (at start-up, and when one dies)."""
        if self.closed:
            return
        missing = self.min_instances - len(self.ready) - len(self.starting)
        for _ in range(max(0, missing)):
            self._start_in_background()

    def replace(self, client: InstanceClient) -> None:
        """Take a misbehaving instance (it ignored its deadline) out of service and stop it."""
        client.draining = True
        if client in self.ready:
            self.ready.remove(client)
        asyncio.get_running_loop().create_task(self.backend.stop(client.handle, grace_s=1.0))
        self.ensure_min_instances()

    # -- retiring the revision -----------------------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Stop taking calls, let in-flight calls finish (up to ``grace_s``), then stop every instance."""
        self.closed = True
        for task in list(self.starting):
            task.cancel()
        clients = list(self.ready)
        deadline = time.monotonic() + grace_s
        while any(client.outstanding for client in clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for client in clients:
            client.draining = True
        self.ready.clear()
        handles: list[InstanceHandle] = [client.handle for client in clients]
        for client in clients:
            client.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(self.backend.stop(handle, grace_s=2.0) for handle in handles))

    def describe(self) -> dict[str, object]:
        return {
            "revision": self.revision.id,
            "ready": len(self.ready),
            "starting": len(self.starting),
            "in_flight": sum(client.outstanding for client in self.ready),
            "instances": [
                {
                    "id": client.id,
                    "address": client.handle.address,
                    "pid": client.handle.pid,
                    "started_at": client.handle.started_at,
                    "in_flight": client.outstanding,
                    "log": client.handle.log_path,
                }
                for client in self.ready
            ],
            **vars(self.counters),
        }
