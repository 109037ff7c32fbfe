"""Everything the gateway process runs, wired together once: store, keys, backend, router, deployer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tidal.auth.keys import KeyRing
from tidal.autoscale.loop import Autoscaler
from tidal.backends.local import LocalBackend
from tidal.deploy.bundle import bundle_path
from tidal.deploy.service import Deployer, DeployOptions
from tidal.metering.recorder import ActivationRecorder
from tidal.router.pool import ScalingEvent
from tidal.router.router import Router
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


class Platform:
    def __init__(self, config: GatewayConfig) -> None:
        # Absolute from here on: instances and templates run with their code folder as cwd.
        config.state_dir = config.state_dir.resolve()
        self.config = config
        state_dir = config.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.store = SQLiteStore(state_dir / "tidal.db")
        self.keys = KeyRing(self.store)
        self.admin_key_path = self.keys.ensure_admin_key_file(state_dir)
        self.backend = LocalBackend(state_dir)
        self.autoscaler = Autoscaler(lambda: self.router.pools(), config.autoscale_tick_s, self._record_event)
        self.router = Router(self.backend, on_demand=self.autoscaler.poke)
        self.deployer = Deployer(self.store, self.router, state_dir / "code")
        self.recorder: ActivationRecorder | None = None
        self._event_writes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bring back every function from the store, then deploy the paths given on the command line."""
        self.recorder = ActivationRecorder(self.store)
        self.recorder.start()
        self.autoscaler.start()
        for revision in self.store.latest_revisions():
            code_dir = self.deployer.code_dir(revision)
            if code_dir.exists():
                self.router.activate(revision, str(code_dir))
            else:
                log.error("code of %s is missing from %s; not serving it", revision.id, code_dir)
        for path in self.config.deploy_paths:
            options = DeployOptions(source=path.name)
            for deployed in await self.deployer.deploy(bundle_path(path), options):
                state = "new revision" if deployed.created else "unchanged"
                log.info("deployed %s: %s (%s)", path, deployed.revision.id, state)

    def _record_event(self, event: ScalingEvent) -> None:
        self._event_writes.add(
            task := asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.store.add_scaling_event, event.function, event.revision, event.at,
                                  event.from_count, event.to_count, event.reason)
            )
        )  # fmt: skip
        task.add_done_callback(self._event_writes.discard)

    async def stop(self) -> None:
        await self.autoscaler.close()
        await self.router.close()
        await self.backend.close()
        if self.recorder is not None:
            await self.recorder.close()
        self.store.close()
