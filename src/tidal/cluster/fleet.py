"""One Ray fleet for every gateway of a PostgreSQL store (docs/several-gateways.md, docs/ray.md).

With ``--backend ray`` and ``--state postgresql://...`` the gateways do not each start instances:
the leader gateway (tidal.cluster.lease) starts and stops them on the Ray cluster and registers
each in the store's ``instances`` table with its TCP address; every gateway's pools connect to the
registered instances of the revisions they serve (an instance accepts one connection per gateway,
tidal.runtime.worker). ``Fleet`` is the router's backend on every gateway: its ``start`` hands a
pool a registered instance it is not connected to yet, and only on the leader starts a new one
when none is free; its ``stop`` on a follower just lets go.

Scaling: each gateway writes its pools' averaged concurrency per revision (``demand``) every
``DEMAND_S``; the leader's autoscaler runs the same pure ``decide()`` over its own sample plus the
fresh samples of the other live gateways, a follower's pools follow the registered count.

Failover: node hosts and placement groups are detached and named (RayBackend.shared_namespace),
so a new leader finds them, adopts their running instances (registers the missing, removes stale
rows) and goes on scaling. A gateway that stops leaves the fleet to the others, unless it is the
last one: then it stops the instances and the node hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from tidal.backends.base import LOST, ExitCallback, InstanceHandle, InstanceSpec
from tidal.backends.ray_backend import RayBackend, handle_of
from tidal.cluster.lease import LeaderLease, leader_only
from tidal.cluster.pg import Session, connect
from tidal.router.connection import StartFailed
from tidal.router.pool import RevisionPool
from tidal.store.postgres_sql import parse_state_url

log = logging.getLogger("tidal.cluster")

DEMAND_S = 0.5  # each gateway writes its demand and re-reads the fleet this often (and on NOTIFY)
FRESH_TICKS = 3  # a sample older than 3 autoscaler ticks is ignored (its gateway died or idles)
FOLLOW_START_S = 60.0  # a follower waits this long for the leader to start an instance
GRACE_S = 5.0  # an instance registered this recently is kept even if a read missed it
CHANNEL = "tidal_instances"

INSTANCES_SQL = "SELECT id, revision, address, node, started_at, extra FROM instances WHERE state = 'running'"
REGISTER_SQL = """
INSERT INTO instances (id, revision, address, node, started_at, state, extra)
VALUES (%s, %s, %s, %s, %s, 'running', %s) ON CONFLICT (id) DO NOTHING
"""
UNREGISTER_SQL = "DELETE FROM instances WHERE id = %s"
# A lost node's instances stay a while as 'lost': each gateway closes its connection at once
# (a dead machine sends no reset) instead of draining calls that can never be answered.
LOST_SQL = "UPDATE instances SET state = 'lost' WHERE id = %s"
LOST_ROWS_SQL = "SELECT id, node FROM instances WHERE state = 'lost'"
ALL_IDS_SQL = "SELECT id FROM instances"
LOST_ROW_S = 10.0
DEMAND_SQL = """
INSERT INTO demand (gateway, revision, concurrency, at)
VALUES (%s, %s, %s, extract(epoch FROM clock_timestamp()))
ON CONFLICT (gateway, revision) DO UPDATE SET concurrency = EXCLUDED.concurrency, at = EXCLUDED.at
"""
OTHERS_SQL = """
SELECT d.revision, sum(d.concurrency) FROM demand d JOIN gateways g ON g.id = d.gateway
WHERE d.gateway != %s AND d.at > extract(epoch FROM clock_timestamp()) - %s
  AND g.beat_at > extract(epoch FROM clock_timestamp()) - 15
GROUP BY d.revision
"""
LEAVE_SQL = "DELETE FROM demand WHERE gateway = %s"
OTHERS_LIVE_SQL = (
    "SELECT count(*) FROM gateways WHERE id != %s AND beat_at > extract(epoch FROM clock_timestamp()) - 15"
)


def row_handle(row: tuple[Any, ...]) -> InstanceHandle:
    """An instance's handle from its ``instances`` row."""
    instance, revision, address, node, started_at, extra = row
    item = {"id": instance, "revision": revision, "address": address, "started_at": started_at,
            **json.loads(extra or "{}")}  # fmt: skip
    return handle_of(item, str(node))


def summed(local: float, others: dict[str, float], revision: str) -> float:
    """The fleet's demand for a revision: this gateway's sample plus the other gateways' fresh ones.

    >>> summed(1.5, {"r1": 2.0}, "r1"), summed(1.5, {"r1": 2.0}, "r2")
    (3.5, 1.5)
    """
    return local + others.get(revision, 0.0)


class Fleet:
    """The router's backend on every gateway when the Ray fleet is shared (see the module's doc)."""

    name = "ray"

    def __init__(
        self,
        inner: RayBackend,
        url: str,
        gateway_id: str,
        lease: LeaderLease,
        pools: Callable[[], list[RevisionPool]],
        poke: Callable[[], None],
        tick_s: float = 1.0,
    ) -> None:
        self.inner, self.url, self.gateway_id, self.lease = inner, url, gateway_id, lease
        self.pools, self.poke, self.tick_s = pools, poke, tick_s
        self.registered: dict[str, InstanceHandle] = {}  # the store's view, refreshed by run()
        self.claimed: set[str] = set()  # instances this gateway's pools are connected to
        self.local: dict[str, float] = {}  # revision -> this gateway's latest sample
        self.others: dict[str, float] = {}  # revision -> the other live gateways' fresh samples
        self.adopted = False  # leader: the node hosts' instances are known to the Ray backend
        self.leaving = False
        self.last = False  # leaving, and no other gateway is live: stop the fleet
        self._fresh: dict[str, float] = {}  # instance -> when this gateway registered it
        self._timeouts: dict[str, float] = {}
        self._changed: asyncio.Event | None = None
        self._db: Session | None = None
        self._db_lock: asyncio.Lock | None = None
        self._background: set[asyncio.Task[None]] = set()
        inner.on_exit(self._exited)

    @property
    def leading(self) -> bool:
        return self.lease.leader and self.adopted and not self.leaving

    # -- the autoscaler's hooks (tidal.autoscale.loop.FleetScaling) -----------------------------

    def demand(self, pool: RevisionPool, local: float) -> float:
        self.local[pool.revision.id] = local
        return summed(local, self.others, pool.revision.id)  # a follower keeps it for its takeover

    def follows(self, pool: RevisionPool) -> int | None:
        if self.leading:
            return None
        return sum(1 for handle in self.registered.values() if handle.revision == pool.revision.id)

    # -- the Backend protocol ---------------------------------------------------------------------

    async def start(self, launch: InstanceSpec, count: int = 1) -> list[InstanceHandle]:
        return [await self._start_one(launch) for _ in range(count)]

    def _free(self, revision: str) -> InstanceHandle | None:
        free = [h for h in self.registered.values() if h.revision == revision and h.id not in self.claimed]
        return min(free, key=lambda handle: handle.started_at) if free else None

    async def _start_one(self, launch: InstanceSpec) -> InstanceHandle:
        deadline = time.monotonic() + FOLLOW_START_S
        while True:
            free = self._free(launch.revision.id)
            if free is not None:
                self.claimed.add(free.id)
                return free
            if self.leading:
                return await self._start_new(launch)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StartFailed(
                    "NoInstance",
                    f"the leader gateway started no instance of {launch.revision.id} within {FOLLOW_START_S:g} s",
                )
            changed = self._event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 1.0))

    async def _start_new(self, launch: InstanceSpec) -> InstanceHandle:
        (handle,) = await self.inner.start(launch, 1)
        self._timeouts[handle.id] = launch.spec.timeout
        extra = {key: handle.extra[key] for key in handle.extra if key != "node"}
        row = (handle.id, handle.revision, handle.address, handle.extra.get("node", ""), handle.started_at,
               json.dumps({"pid": handle.pid, "log_path": handle.log_path, "extra": extra}))  # fmt: skip
        try:
            await self._write(REGISTER_SQL, row)
        except (psycopg.Error, OSError) as exc:
            await self.inner.stop(handle, grace_s=1.0)
            raise StartFailed("StoreUnavailable", f"could not register the instance: {exc}") from None
        self._fresh[handle.id] = time.monotonic()
        self.registered[handle.id] = handle
        self.claimed.add(handle.id)
        return handle

    async def stop(self, instance: InstanceHandle, grace_s: float = 5.0) -> None:
        self.claimed.discard(instance.id)
        if self.leaving and not self.last:
            return  # the other gateways go on using it
        if self.last:
            await self._unregister(instance.id)
            await self.inner.stop(instance, grace_s)
        elif self.leading:
            # Gone from the store, each follower drains its calls and lets go; the instance ends
            # when its last connection closes. Stopped after its timeout should one hang on.
            await self._unregister(instance.id)
            self._later(self._stop_after(instance, self._timeouts.pop(instance.id, 30.0) + grace_s))

    async def _stop_after(self, instance: InstanceHandle, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.inner.stop(instance, grace_s=1.0)

    async def prepare(self, launch: InstanceSpec) -> None:
        if self.lease.leader:
            await self.inner.prepare(launch)

    async def release(self, launch: InstanceSpec) -> None:
        if self.lease.leader:
            await self.inner.release(launch)

    def instances(self, revision: str | None = None) -> list[InstanceHandle]:
        return [h for h in self.registered.values() if revision in (None, h.revision)]

    def on_exit(self, callback: ExitCallback) -> None:
        self.inner.on_exit(callback)

    async def close(self) -> None:
        """Nothing of its own: the platform closes the Ray backend (RayBackend.keep_on_close)."""

    async def _exited(self, handle: InstanceHandle) -> None:
        """The leader's Ray backend saw an instance end (or its node lost): out of the store."""
        self.registered.pop(handle.id, None)
        self.claimed.discard(handle.id)
        if not self.lease.leader:
            return
        with contextlib.suppress(psycopg.Error, OSError):
            if handle.extra.get(LOST):
                await self._write(LOST_SQL, (handle.id,))
                self._later(self._unregister_after(handle.id, LOST_ROW_S))
            else:
                await self._unregister(handle.id)

    async def _unregister_after(self, instance: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self._unregister(instance)

    # -- the store ---------------------------------------------------------------------------------

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def _write(self, statement: str, params: tuple[Any, ...]) -> None:
        if self._db_lock is None:
            self._db_lock = asyncio.Lock()
        async with self._db_lock:
            try:
                if self._db is None or self._db.closed:
                    self._db = await connect(self.url, "fleet")
                await self._db.execute(statement, params)
            except BaseException:
                if self._db is not None:
                    with contextlib.suppress(Exception):
                        await self._db.close()
                self._db = None
                raise

    async def _unregister(self, instance: str) -> None:
        self.registered.pop(instance, None)
        self._fresh.pop(instance, None)
        await self._write(UNREGISTER_SQL, (instance,))

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- loops ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Every gateway: write this gateway's demand, read the others' and the fleet, every
        ``DEMAND_S`` and whenever an instance is registered or removed (NOTIFY)."""
        session = await connect(self.url, "fleet-listen")
        try:
            await session.execute(f"LISTEN {CHANNEL}")
            while True:
                await self.refresh(session)
                async with contextlib.aclosing(session.notifies(timeout=DEMAND_S)) as notices:
                    async for _ in notices:
                        break
        except asyncio.CancelledError:  # the gateway stops (a failure is retried by the supervisor)
            await self._leave(session)
            raise
        finally:
            with contextlib.suppress(Exception):
                await session.close()

    async def refresh(self, session: Session) -> None:
        serving = {pool.revision.id for pool in self.pools()}
        samples = [
            (self.gateway_id, revision, value)
            for revision, value in self.local.items()
            if revision in serving
        ]
        if samples:
            async with session.cursor() as cursor:
                await cursor.executemany(DEMAND_SQL, samples)
        fresh_s = FRESH_TICKS * self.tick_s
        rows = await (await session.execute(OTHERS_SQL, (self.gateway_id, fresh_s))).fetchall()
        self.others = {str(revision): float(value) for revision, value in rows}
        lost = {str(i): str(node) for i, node in await (await session.execute(LOST_ROWS_SQL)).fetchall()}
        self.apply([row_handle(row) for row in await (await session.execute(INSTANCES_SQL)).fetchall()], lost)

    def apply(self, handles: list[InstanceHandle], lost: dict[str, str] | None = None) -> None:
        """The store's instances are the fleet: connect to new ones, drain those removed, drop
        the connections of those whose node was lost (``lost``: instance -> node)."""
        lost = lost or {}
        now = time.monotonic()
        current = {handle.id: self.registered.get(handle.id, handle) for handle in handles}
        for instance, handle in self.registered.items():  # registered here, the read may predate it
            if instance not in current and now - self._fresh.get(instance, -GRACE_S) < GRACE_S:
                current[instance] = handle
        added = current.keys() - self.registered.keys()
        self.registered = current
        for pool in self.pools():
            for client in list(pool.ready):
                if client.id in lost:
                    client.handle.extra[LOST] = f"node {lost[client.id]} lost"
                    client.close()  # its calls fail as instance lost; the pool follows the fleet
                elif client.id not in current:
                    pool._retire(client)  # its calls finish, then this gateway lets go
        if added:
            self.poke()
        self._event().set()
        self._changed = asyncio.Event()

    async def _leave(self, session: Session) -> None:
        """Stopping: the fleet stays for the others, or goes with the last gateway."""
        self.leaving = True
        try:
            row = await asyncio.wait_for(self._others_live(session), 3.0)
            self.last = not (row and row[0])
            await session.execute(LEAVE_SQL, (self.gateway_id,))
        except Exception:
            log.warning("could not count the other gateways: leaving the Ray fleet running")
        finally:
            with contextlib.suppress(Exception):
                await session.close()
        self.inner.keep_on_close = not self.last
        if self.last:
            log.info("the last gateway stops: stopping the shared Ray fleet")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.inner.adopt(), 30.0)  # what a follower never adopted
        for task in list(self._background):
            task.cancel()

    async def _others_live(self, session: Session) -> tuple[Any, ...] | None:
        return await (await session.execute(OTHERS_LIVE_SQL, (self.gateway_id,))).fetchone()

    async def lead(self) -> None:
        """The leader only (LEADER_ONLY_LOOPS): adopt what the node hosts run, then hold."""
        try:
            running = {handle.id: handle for handle in await self.inner.adopt()}
            session = await connect(self.url, "fleet-adopt")
            try:
                rows = await (await session.execute(ALL_IDS_SQL)).fetchall()
                stored = {str(row[0]) for row in rows}
                for instance in stored - running.keys():
                    await session.execute(UNREGISTER_SQL, (instance,))
                for instance in running.keys() - stored:
                    handle = running[instance]
                    extra = {key: handle.extra[key] for key in handle.extra if key != "node"}
                    await session.execute(REGISTER_SQL, (
                        handle.id, handle.revision, handle.address, handle.extra.get("node", ""),
                        handle.started_at, json.dumps({"pid": handle.pid, "log_path": handle.log_path, "extra": extra}),
                    ))  # fmt: skip
                self.apply(
                    [row_handle(row) for row in await (await session.execute(INSTANCES_SQL)).fetchall()]
                )
            finally:
                await session.close()
            log.info("leading the Ray fleet: %d running instance(s) adopted (%d unregistered), %d stale row(s) removed",
                     len(running), len(running.keys() - stored), len(stored - running.keys()))  # fmt: skip
            self.adopted = True
            self.poke()
            await asyncio.Event().wait()
        finally:
            self.adopted = False


def join_fleet(platform: Any, url: str, gateway_id: str, lease: LeaderLease) -> Fleet:
    """Make the platform's Ray backend the shared fleet: the router starts nothing on its own."""
    inner: RayBackend = platform.backend
    _, schema = parse_state_url(url)
    inner.shared_namespace = f"tidal-{schema}"
    autoscaler = platform.autoscaler
    fleet = Fleet(inner, url, gateway_id, lease, platform.router.pools, autoscaler.poke, autoscaler.tick_s)
    platform.router.backend = fleet
    autoscaler.fleet = fleet
    platform.supervisor.add("ray-fleet", fleet.run)
    platform.supervisor.add("ray-fleet-leader", leader_only(lease, fleet.lead))  # adopt, then scale
    return fleet
