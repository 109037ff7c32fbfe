"""Ray backend: instances run on the nodes of a Ray cluster, placed by Ray, forked by node hosts.

For each instance the backend reserves one placement-group bundle built from the function's spec
(CPU, memory, GPU, accelerator type, custom resources; ray_placement.py); the node Ray puts the
bundle on is where that node's host actor (ray_node.py: a ``LocalBackend`` inside an async actor)
forks the instance from its warm template. The gateway then connects to the instance over TCP
with the usual framed protocol: requests never pass through Ray.

A node that dies takes its host actor with it: the long-polling ``exits`` call the backend keeps
on every host fails, and each of that node's instances is reported gone with ``extra["lost"] =
"node NODE lost"`` (the router closes its connection, its calls fail as instance lost, its pool
starts a replacement, which Ray places on a surviving node).

Ray is imported only here (``pip install 'tidal[ray]'``); the local backend never needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidal.backends.base import LOST, Capacity, ExitCallback, InstanceHandle, InstanceSpec
from tidal.backends.gpus import GpuHost
from tidal.backends.isolation import Isolation, SandboxMode
from tidal.backends.ray_placement import bundle_for, describe_bundle, unplaceable_reason
from tidal.backends.template_usage import DEFAULT_TEMPLATE_IDLE_S
from tidal.backends.watchdog import MemoryWatchdog
from tidal.deploy.bundle import bundle_path
from tidal.environments.runtime import Environments

log = logging.getLogger("tidal.backends.ray")

PLACE_QUICK_S = 0.5  # a bundle not placed by then: check that some node could ever hold it
PLACE_TIMEOUT_S = 30.0  # then wait this long for room (other instances to stop) before failing
PLACE_RECHECK_S = 2.0  # while waiting, whether a node that could hold it is still alive
HOST_START_TIMEOUT_S = 120.0  # a node host is a Ray worker process: seconds, more on a busy node
EXITS_POLL_S = 30.0  # each node's long poll for exits is renewed this often
STOP_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 5.0


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster does not answer: `tidal up --backend ray` says why."""


class Unplaceable(Exception):
    """No node of the cluster can hold the instance (now, or ever): the caller gets 503 and this."""


@dataclass
class _Placed:
    handle: InstanceHandle
    node: str
    group: Any  # its placement group (ray.util.placement_group.PlacementGroup)


@dataclass
class _Host:
    node: str
    actor: Any
    ready: asyncio.Future[None]
    instances: set[str] = field(default_factory=set)
    watcher: asyncio.Task[None] | None = None


def connect(address: str) -> None:
    """``ray.init`` against an existing cluster (``auto`` or HOST:PORT), or RayUnavailable with why."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("the Ray backend needs Ray: pip install 'tidal[ray]'") from None
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise RayUnavailable(f"--ray-address {address}: expected auto or HOST:PORT")
        try:  # ray.init would retry for a minute; a cluster that is not there is said at once
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise RayUnavailable(f"the Ray cluster at {address} does not answer: {exc}") from None
    try:
        ray.init(address=address, namespace="tidal", log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        raise RayUnavailable(f"could not join the Ray cluster at {address}: {exc}") from None


class RayBackend:
    name = "ray"

    def __init__(
        self,
        state_dir: Path,
        address: str = "auto",
        template_idle_s: float = DEFAULT_TEMPLATE_IDLE_S,
        sandbox: SandboxMode = SandboxMode.USERS,
    ) -> None:
        connect(address)
        self.address = address
        self.template_idle_s = template_idle_s
        self.sandbox = sandbox
        # What the gateway itself uses of a backend (deploys, status); instances' own live on nodes.
        self.environments = Environments(state_dir, sys.executable)
        self.isolation = Isolation(state_dir, sandbox)
        self.watchdog = MemoryWatchdog()  # idle here: each node host watches its own instances
        self.gpus = GpuHost()
        self._placed: dict[str, _Placed] = {}
        self._hosts: dict[str, _Host] = {}
        self._code: dict[str, Any] = {}  # code digest -> ObjectRef of its bundle (zip bytes)
        self._code_users: dict[str, set[str]] = {}  # code digest -> revision ids using it
        self._code_locks: dict[str, asyncio.Lock] = {}
        self._callbacks: list[ExitCallback] = []
        self._totals_at = 0.0
        self._totals: list[Mapping[str, float]] = []
        # Several gateways on one PostgreSQL store (tidal.cluster.fleet): node hosts and placement
        # groups are detached and named in this namespace, so they outlive the leader that made
        # them and the next leader finds them; a gateway that is not the last leaves them be.
        self.shared_namespace: str | None = None
        self.keep_on_close = False

    # -- code by reference --------------------------------------------------------------------

    async def _bundle(self, launch: InstanceSpec) -> list[Any]:
        """The revision's code in the object store, put there once per digest; in a list, so a
        host call carries the reference and the host fetches the bytes only when it lacks them."""
        import ray

        digest = launch.revision.code_digest
        self._code_users.setdefault(digest, set()).add(launch.revision.id)
        async with self._code_locks.setdefault(digest, asyncio.Lock()):  # zipped and put once
            if digest not in self._code:
                data = await asyncio.to_thread(bundle_path, Path(launch.code_dir))
                self._code[digest] = await asyncio.to_thread(ray.put, data)  # a big model: off the loop
        return [self._code[digest]]

    # -- node hosts ---------------------------------------------------------------------------

    async def _host(self, node: str) -> _Host:
        host = self._hosts.get(node)
        if host is None:
            host = self._hosts[node] = self._make_host(node)
        try:
            await asyncio.wait_for(asyncio.shield(host.ready), HOST_START_TIMEOUT_S)
        except Exception as exc:
            if self._hosts.get(node) is host:
                del self._hosts[node]
            raise Unplaceable(f"the tidal host of node {node} did not start: {exc}") from None
        return host

    def _make_host(self, node: str) -> _Host:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from tidal.backends.ray_node import NodeHost

        actor_class: Any = ray.remote(NodeHost)
        shared: dict[str, Any] = {}
        if self.shared_namespace is not None:  # found again by name after a leader's death
            shared = {"name": host_name(node), "namespace": self.shared_namespace, "lifetime": "detached",
                      "get_if_exists": True}  # fmt: skip
        actor = actor_class.options(
            num_cpus=0,
            max_restarts=0,
            max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            **shared,
        ).remote(
            node, self.sandbox is SandboxMode.OFF, self.template_idle_s, self.shared_namespace is not None
        )
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        host = _Host(node, actor, ready)

        async def up() -> None:
            try:
                info = await actor.ping.remote()
                log.info("tidal host on Ray node %s is up (%s)", node, info)
                ready.set_result(None)
            except Exception as exc:
                ready.set_exception(exc)
                return
            await self._watch(host)

        host.watcher = loop.create_task(up())
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        return host

    async def _watch(self, host: _Host) -> None:
        """Hear of the node's exits; the long poll failing means the node (or its host) is gone."""
        import ray

        while True:
            try:
                exits = await host.actor.exits.remote(EXITS_POLL_S)
            except ray.exceptions.RayError as exc:
                await self._node_lost(host, exc)
                return
            for gone in exits:
                await self._gone(gone.instance, gone.exit_code)

    async def _node_lost(self, host: _Host, exc: BaseException) -> None:
        if self._hosts.get(host.node) is host:
            del self._hosts[host.node]  # a later start there (the node came back) makes a new host
        lost = [placed for placed in self._placed.values() if placed.node == host.node]
        log.warning("Ray node %s lost (%d instance(s)): %s", host.node, len(lost), str(exc).splitlines()[0])
        for placed in lost:
            placed.handle.extra[LOST] = f"node {host.node} lost"
            await self._gone(placed.handle.id, None)

    async def _gone(self, instance_id: str, exit_code: int | None) -> None:
        placed = self._placed.pop(instance_id, None)
        if placed is None:
            return
        placed.handle.exit_code = exit_code
        host = self._hosts.get(placed.node)
        if host is not None:
            host.instances.discard(instance_id)
        _remove_group(placed.group)
        for callback in self._callbacks:
            try:
                result = callback(placed.handle)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("exit callback failed for %s", instance_id)

    # -- placement ----------------------------------------------------------------------------

    def _node_totals(self) -> list[Mapping[str, float]]:
        import ray

        if time.monotonic() - self._totals_at > 5.0:
            self._totals = [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
            self._totals_at = time.monotonic()
        return self._totals

    async def _place(self, launch: InstanceSpec, name: str = "") -> tuple[Any, str]:
        """Reserve the instance's bundle: (placement group, node id), or Unplaceable saying why."""
        from ray.util import placement_group, placement_group_table

        bundle = bundle_for(launch.spec)
        if name:  # detached: the next leader finds it by its name
            group = placement_group([bundle], strategy="STRICT_PACK", name=name, lifetime="detached")
        else:
            group = placement_group([bundle], strategy="STRICT_PACK")
        try:
            waited, placed = 0.0, await asyncio.to_thread(group.wait, PLACE_QUICK_S)
            while not placed:  # no room yet: fail at once if no live node could ever hold it
                self._totals_at = 0.0  # nodes may have come or gone: read them again
                reason = unplaceable_reason(bundle, await asyncio.to_thread(self._node_totals))
                if reason is not None:
                    raise Unplaceable(reason)
                if waited >= PLACE_TIMEOUT_S:
                    raise Unplaceable(
                        f"no node of the Ray cluster had room for {describe_bundle(bundle)} within"
                        f" {PLACE_TIMEOUT_S:g} s (its instances hold the rest)"
                    )
                placed = await asyncio.to_thread(group.wait, PLACE_RECHECK_S)
                waited += PLACE_RECHECK_S
            node = placement_group_table(group)["bundles_to_node_id"][0]
        except BaseException:
            _remove_group(group)
            raise
        return group, str(node)

    # -- the Backend protocol -----------------------------------------------------------------

    async def start(self, launch: InstanceSpec, count: int = 1) -> list[InstanceHandle]:
        return [await self._start_one(launch) for _ in range(count)]

    async def _start_one(self, launch: InstanceSpec) -> InstanceHandle:
        bundle = await self._bundle(launch)
        begun = time.perf_counter()
        group_name = f"{self.shared_namespace}-{secrets.token_hex(8)}" if self.shared_namespace else ""
        group, node = await self._place(launch, group_name)
        placed_at = time.perf_counter()
        try:
            host = await self._host(node)
            started = await host.actor.start.remote(launch, bundle, group_name)
        except BaseException:
            _remove_group(group)
            raise
        timing = {
            "place_ms": f"{(placed_at - begun) * 1000:.2f}",
            "host_ms": f"{(time.perf_counter() - placed_at) * 1000:.2f}",
        }
        spec = launch.spec
        handle = InstanceHandle(
            id=started["id"],
            revision=launch.revision.id,
            address=started["address"],
            capacity=Capacity(cpu=spec.cpu, memory_mb=spec.memory, gpu=spec.gpu),
            started_at=started["started_at"],
            pid=started["pid"],
            log_path=started["log_path"],  # on the node
            extra={**started["extra"], **timing, "node": node},
        )
        self._placed[handle.id] = _Placed(handle, node, group)
        host.instances.add(handle.id)
        return handle

    async def adopt(self) -> list[InstanceHandle]:
        """A new leader: find the named node hosts of the live nodes and take over their running
        instances (their placement groups, their exits); every instance running, adopted or not."""
        import ray
        from ray.util import get_placement_group

        assert self.shared_namespace is not None
        nodes = await asyncio.to_thread(lambda: [n["NodeID"] for n in ray.nodes() if n.get("Alive")])
        for node in nodes:
            if node in self._hosts:
                continue
            try:
                await asyncio.to_thread(ray.get_actor, host_name(node), namespace=self.shared_namespace)
            except ValueError:
                continue  # no tidal host there: nothing ran on that node
            with contextlib.suppress(Unplaceable):
                await self._host(node)  # get_if_exists: the same actor, now watched by this gateway
        for node, host in list(self._hosts.items()):
            with contextlib.suppress(Exception):
                for item in await asyncio.wait_for(host.actor.running.remote(), STOP_TIMEOUT_S):
                    if item["id"] in self._placed:
                        continue
                    handle = handle_of(item, node)
                    group = None
                    if item.get("group"):
                        with contextlib.suppress(Exception):
                            group = await asyncio.to_thread(get_placement_group, item["group"])
                    self._placed[handle.id] = _Placed(handle, node, group)
                    host.instances.add(handle.id)
        return self.instances()

    async def stop(self, instance: InstanceHandle, grace_s: float = 5.0) -> None:
        placed = self._placed.get(instance.id)
        if placed is None:
            return
        host = self._hosts.get(placed.node)
        if host is not None:
            with contextlib.suppress(Exception):  # a node gone meanwhile: its watcher reports it
                await asyncio.wait_for(host.actor.stop.remote(instance.id, grace_s), grace_s + STOP_TIMEOUT_S)
        else:
            await self._gone(instance.id, None)

    async def prepare(self, launch: InstanceSpec) -> None:
        """Put the code in the object store now; templates warm on each node at its first start."""
        await self._bundle(launch)

    async def release(self, launch: InstanceSpec) -> None:
        users = self._code_users.get(launch.revision.code_digest, set())
        users.discard(launch.revision.id)
        if not users:
            self._code_users.pop(launch.revision.code_digest, None)
            self._code.pop(launch.revision.code_digest, None)  # the object store frees it
        for host in list(self._hosts.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(host.actor.release.remote(launch), STOP_TIMEOUT_S)

    def instances(self, revision: str | None = None) -> list[InstanceHandle]:
        return [p.handle for p in self._placed.values() if revision in (None, p.handle.revision)]

    def on_exit(self, callback: ExitCallback) -> None:
        self._callbacks.append(callback)

    async def close(self) -> None:
        import ray

        if self.keep_on_close:  # other gateways go on using the fleet: leave hosts and instances
            for host in self._hosts.values():
                if host.watcher is not None:
                    host.watcher.cancel()
            self._hosts.clear()
            ray.shutdown()
            return
        await asyncio.gather(
            *(self.stop(placed.handle, grace_s=2.0) for placed in list(self._placed.values())),
            return_exceptions=True,
        )
        for host in list(self._hosts.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(host.actor.close.remote(), STOP_TIMEOUT_S)
            if host.watcher is not None:
                host.watcher.cancel()
            with contextlib.suppress(Exception):
                ray.kill(host.actor)
        for placed in self._placed.values():
            _remove_group(placed.group)
        self._hosts.clear()
        ray.shutdown()

    # -- what the gateway's status and loops ask of a backend ----------------------------------

    def describe_isolation(self) -> dict[str, str]:
        sandbox = self.isolation.describe()
        if self.sandbox is not SandboxMode.OFF:  # each node host picks its mode by its own user
            sandbox = "on each Ray node: users (a uid and a mount view per function) where Ray runs as root, else namespace"
        return {"sandbox": sandbox, "limits": "control groups on each Ray node (as the node's kernel allows)"}

    def template_of(self, launch: InstanceSpec) -> dict[str, object] | None:
        return None  # templates live on the nodes, one per node that ran an instance

    def templates(self) -> list[dict[str, object]]:
        return []

    async def drop_template(self, launch: InstanceSpec) -> bool:
        return False

    async def reap_templates_forever(self) -> None:
        await asyncio.Event().wait()  # each node host reaps its own templates


def host_name(node: str) -> str:
    """The name of a node's detached host actor (several gateways: tidal.cluster.fleet)."""
    return f"tidal-node-{node}"


def handle_of(item: Mapping[str, Any], node: str) -> InstanceHandle:
    """An instance's handle from what a node host (or the store) says of it."""
    return InstanceHandle(
        id=str(item["id"]),
        revision=str(item["revision"]),
        address=str(item["address"]),
        capacity=Capacity(cpu=float(item.get("cpu", 0)), memory_mb=int(item.get("memory_mb", 0))),
        started_at=float(item["started_at"]),
        pid=item.get("pid"),
        log_path=item.get("log_path"),
        extra={**item.get("extra", {}), "node": node},
    )


def _remove_group(group: Any) -> None:
    from ray.util import remove_placement_group

    if group is None:
        return
    with contextlib.suppress(Exception):  # already removed, or the cluster is going away
        remove_placement_group(group)
