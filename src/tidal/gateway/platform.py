"""Everything the gateway process runs, wired together once: store, keys, backend, router,
invocation core, deployer, and the supervised background loops.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from tidal.auth.keys import KeyRing
from tidal.autoscale.loop import Autoscaler
from tidal.backends.local import LocalBackend
from tidal.deploy.bundle import bundle_path
from tidal.deploy.service import Deployer, DeployOptions
from tidal.gateway.supervisor import Supervisor
from tidal.invoke.core import Invoker
from tidal.metering.recorder import ActivationRecorder
from tidal.router.pool import ScalingEvent
from tidal.router.router import Route, Router, ServingTarget
from tidal.store.protocols import Store
from tidal.store.sqlite import SQLiteStore

log = logging.getLogger("tidal.gateway")

MiB = 1024 * 1024


@dataclass
class GatewayConfig:
    state_dir: Path = Path(".tidal")
    max_body_bytes: int = 6 * MiB  # like AWS Lambda's synchronous payload limit
    max_deploy_bytes: int = 512 * MiB
    deploy_paths: list[Path] = field(default_factory=list)
    autoscale_tick_s: float = 1.0


class StateDirBusy(RuntimeError):
    """Another gateway serves this state dir (one SQLite state dir has one gateway)."""


def hold_state_dir(state_dir: Path) -> int:
    """Lock ``state_dir/gateway.lock`` for this process's lifetime; its descriptor, kept open.

    Two gateways on one SQLite state dir would both start instances and both decide scaling
    for the same functions; several gateways share a PostgreSQL store instead (docs/several-gateways.md).
    """
    descriptor = os.open(state_dir / "gateway.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        raise StateDirBusy(f"another tidal gateway (pid {holder}) is running on {state_dir}") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, str(os.getpid()).encode())
    return descriptor


class Platform:
    def __init__(self, config: GatewayConfig) -> None:
        # Absolute from here on: instances and templates run with their code folder as cwd.
        config.state_dir = config.state_dir.resolve()
        self.config = config
        state_dir = config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self._state_lock = hold_state_dir(state_dir)
        self.store: Store = SQLiteStore(state_dir / "tidal.db")
        self.keys = KeyRing(self.store)
        self.admin_key_path = self.keys.ensure_admin_key_file(state_dir)
        self.backend = LocalBackend(state_dir)
        self.autoscaler = Autoscaler(lambda: self.router.pools(), config.autoscale_tick_s, self._record_event)
        self.router = Router(self.backend, on_demand=self.autoscaler.poke)
        self.recorder = ActivationRecorder(self.store)
        self.invoker = Invoker(self.router, self.recorder.record)
        self.deployer = Deployer(self.store, state_dir / "code", self.publish)
        self.supervisor = Supervisor()
        self.supervisor.add("activation-writer", self.recorder.run)
        self.supervisor.add("autoscaler", self.autoscaler.run)
        self._event_writes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the loops, serve every function as the store says, then deploy the --deploy paths."""
        self.supervisor.start()
        for name in await asyncio.to_thread(self.store.function_names):
            await self.publish(name)
        for path in self.config.deploy_paths:
            options = DeployOptions(source=path.name)
            for deployed in await self.deployer.deploy(bundle_path(path), options):
                state = "new revision" if deployed.created else "unchanged"
                log.info("deployed %s: %s (%s)", path, deployed.revision.id, state)

    async def publish(self, function: str) -> Route | None:
        """Make the router serve ``function`` as the store says now (its settings and traffic).

        Every change of serving state goes store first, then here: a second gateway sharing the
        store converges by calling this when told of the change (see docs/several-gateways.md).
        """
        record = await asyncio.to_thread(self.store.function, function)
        if record is None or not record.traffic:
            self.router.remove(function)
            return None
        serving = []
        for target in record.traffic:
            revision = await asyncio.to_thread(self.store.revision, target.revision)
            if revision is None:
                log.error(
                    "traffic of %s names %s, which is not stored; skipping it", function, target.revision
                )
                continue
            code_dir = self.deployer.code_dir(revision)
            if not code_dir.exists():
                log.error("code of %s is missing from %s; not serving it", revision.id, code_dir)
                continue
            serving.append(ServingTarget(revision, str(code_dir), target.percent, target.tag))
        if not serving:
            self.router.remove(function)
            return None
        return self.router.serve(function, bool(record.settings.get("public", False)), serving)

    def _record_event(self, event: ScalingEvent) -> None:
        self._event_writes.add(
            task := asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.store.add_scaling_event, event.function, event.revision, event.at,
                                  event.from_count, event.to_count, event.reason)
            )
        )  # fmt: skip
        task.add_done_callback(self._event_writes.discard)

    async def stop(self) -> None:
        """Stop in order: no new scaling, drain the instances, then write the last activations."""
        await self.supervisor.stop()
        await self.router.close()
        await self.backend.close()
        await self.recorder.flush()
        await asyncio.gather(*self._event_writes, return_exceptions=True)
        self.store.close()
        os.close(self._state_lock)
