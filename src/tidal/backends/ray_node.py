"""The host of one Ray node: a ``LocalBackend`` running inside an async Ray actor on that node.

The Ray backend (ray_backend.py) places one ``NodeHost`` on each node it starts instances on
(``num_cpus=0``, pinned to the node). The host keeps the node's warm templates and forks the
instances there exactly as the local backend does on one machine (sandbox, control groups,
GPU placement, templates: the same code), except that instances listen on TCP at the node's
address so the gateway connects to them directly with the framed protocol.

Code arrives by reference: the gateway puts each revision's bundle (content-addressed) in Ray's
object store once, and a host fetches and unpacks it into its own cache, keyed by the digest,
the first time an instance of that code starts on the node. Nothing relies on the gateway's disk.

This module imports no Ray at module level: the actor class is made in ray_backend.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

from tidal.backends.base import InstanceHandle, InstanceSpec
from tidal.backends.isolation import choose_mode
from tidal.backends.local import LocalBackend
from tidal.deploy.bundle import unpack

# Where a node keeps its code cache, logs and templates' state (default: /var/tmp/tidal-ray/NODE).
NODE_DIR_ENV = "TIDAL_RAY_NODE_DIR"


@dataclasses.dataclass(frozen=True)
class Exit:
    """An instance of this node that is gone: what the gateway's exit callbacks hear."""

    instance: str
    exit_code: int | None
    reason: str | None  # its loss reason (passed its memory limit), when the node can tell


def node_address() -> str:
    """The address other nodes reach this one at (Ray's view of it, as the gateway dials it)."""
    import ray

    address = ray.util.get_node_ip_address()
    return str(address) if address else socket.gethostbyname(socket.gethostname())


class NodeHost:
    """Starts, stops and watches the instances of one node; every method runs on the actor's loop."""

    def __init__(
        self, node_id: str, insecure_no_sandbox: bool, template_idle_s: float, several_gateways: bool = False
    ) -> None:
        self.several_gateways = several_gateways  # instances accept a connection from each gateway
        self.node_id = node_id
        root = os.environ.get(NODE_DIR_ENV) or f"/var/tmp/tidal-ray/{node_id[:16]}"
        self.state_dir = Path(root).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.code_root = self.state_dir / "code"
        self.code_root.mkdir(exist_ok=True)
        self.insecure_no_sandbox = insecure_no_sandbox
        self.template_idle_s = template_idle_s
        self._backend: LocalBackend | None = None
        self._code_dirs: dict[str, str] = {}  # code digest -> its unpacked folder on this node
        self._code_locks: dict[str, asyncio.Lock] = {}
        self._exits: list[Exit] = []
        self._exit_waiters: list[asyncio.Future[None]] = []
        self._reaper: asyncio.Task[None] | None = None
        self._running: dict[str, dict[str, Any]] = {}  # instance id -> how it was started

    def _local(self) -> LocalBackend:
        """The node's local backend, made on the actor's event loop (templates need a running loop)."""
        if self._backend is None:
            backend = LocalBackend(
                self.state_dir,
                template_idle_s=self.template_idle_s,
                sandbox=choose_mode(self.insecure_no_sandbox),
                listen_host=node_address(),
            )
            backend.several_gateways = self.several_gateways
            backend.on_exit(self._exited)
            self._reaper = asyncio.get_running_loop().create_task(backend.reap_templates_forever())
            self._backend = backend
        return self._backend

    async def ping(self) -> dict[str, str]:
        """The node's id and address, once the host is up."""
        local = self._local()
        return {"node": self.node_id, "address": str(local.listen_host), "state_dir": str(self.state_dir)}

    async def _code_dir(self, digest: str, bundle: list[Any]) -> str:
        """The revision's code on this node: unpacked from the object store once per digest."""
        known = self._code_dirs.get(digest)
        if known is not None:
            return known
        async with self._code_locks.setdefault(digest, asyncio.Lock()):
            if digest not in self._code_dirs:
                data: bytes = await bundle[
                    0
                ]  # an ObjectRef, in a list so Ray does not fetch it for every call
                folder, _, _ = await asyncio.to_thread(unpack, data, self.code_root)
                self._code_dirs[digest] = str(folder)
        return self._code_dirs[digest]

    async def _here(self, launch: InstanceSpec, bundle: list[Any]) -> InstanceSpec:
        code_dir = await self._code_dir(launch.revision.code_digest, bundle)
        return dataclasses.replace(launch, code_dir=code_dir)

    async def start(self, launch: InstanceSpec, bundle: list[Any], group: str = "") -> dict[str, Any]:
        """Start one instance (a fork once the node's template is warm); its handle as plain values."""
        local = self._local()
        (handle,) = await local.start(await self._here(launch, bundle), 1)
        started = {
            "id": handle.id,
            "address": handle.address,
            "pid": handle.pid,
            "started_at": handle.started_at,
            "log_path": handle.log_path,
            "extra": dict(handle.extra),
        }
        # What a gateway that takes over from the one that asked needs (several gateways).
        self._running[handle.id] = {**started, "revision": launch.revision.id, "group": group,
                                    "cpu": launch.spec.cpu, "memory_mb": launch.spec.memory}  # fmt: skip
        return started

    async def running(self) -> list[dict[str, Any]]:
        """The instances of this node still running, as ``start`` described them."""
        alive = {handle.id for handle in self._local().instances()}
        return [item for instance, item in self._running.items() if instance in alive]

    async def prepare(self, launch: InstanceSpec, bundle: list[Any]) -> None:
        await self._local().prepare(await self._here(launch, bundle))

    async def release(self, launch: InstanceSpec) -> None:
        code_dir = self._code_dirs.get(launch.revision.code_digest)
        if code_dir is not None:
            await self._local().release(dataclasses.replace(launch, code_dir=code_dir))

    async def stop(self, instance_id: str, grace_s: float) -> None:
        local = self._local()
        for handle in local.instances():
            if handle.id == instance_id:
                await local.stop(handle, grace_s)

    async def templates(self) -> list[dict[str, object]]:
        return [{**info, "node": self.node_id} for info in self._local().templates()]

    def _exited(self, handle: InstanceHandle) -> None:
        self._running.pop(handle.id, None)
        self._exits.append(Exit(handle.id, handle.exit_code, handle.loss_reason()))
        waiters, self._exit_waiters = self._exit_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def exits(self, timeout_s: float) -> list[Exit]:
        """The instances gone since the last call; waits up to ``timeout_s`` for one (a long poll).

        The gateway keeps one such call pending per node: when the node dies, that call fails
        at once with the actor's death, which is how the gateway learns that the node is lost.
        """
        if not self._exits:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._exit_waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout_s)
        exits, self._exits = self._exits, []
        return exits

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._backend is not None:
            await self._backend.close()
