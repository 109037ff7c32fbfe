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
from tidal.backends.isolation import choose_mode
from tidal.backends.local import LocalBackend
from tidal.backends.logsink import default_sink
from tidal.backends.template_usage import DEFAULT_TEMPLATE_IDLE_S
from tidal.deploy.bundle import bundle_path
from tidal.deploy.service import Deployer, DeployOptions
from tidal.gateway.state_dir import prepare_state_dir
from tidal.gateway.supervisor import Supervisor
from tidal.invoke.core import Invoker
from tidal.metering.recorder import ActivationRecorder
from tidal.metering.retention import DEFAULT_MAX_ROWS, DEFAULT_RETENTION_S, Retention, RetentionPolicy
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
    template_idle_s: float = DEFAULT_TEMPLATE_IDLE_S  # an unused warm template is stopped after this
    insecure_no_sandbox: bool = False  # debugging only: function code then runs as the gateway does
    activation_retention_s: float = DEFAULT_RETENTION_S  # older records go (0: kept whatever their age)
    activation_max_rows: int = DEFAULT_MAX_ROWS  # activations kept at most, the newest (0: no limit)


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
        prepare_state_dir(state_dir)  # created, or fixed, 0711 with private files (state_dir.py)
        self._state_lock = hold_state_dir(state_dir)
        self.store: Store = SQLiteStore(state_dir / "tidal.db")
        self.keys = KeyRing(self.store)
        self.admin_key_path = self.keys.ensure_admin_key_file(state_dir)
        self.backend = LocalBackend(
            state_dir, template_idle_s=config.template_idle_s, sandbox=choose_mode(config.insecure_no_sandbox)
        )
        isolation = self.backend.describe_isolation()
        level = logging.WARNING if config.insecure_no_sandbox else logging.INFO
        log.log(level, "sandbox: %s; limits: %s", isolation["sandbox"], isolation["limits"])
        self.autoscaler = Autoscaler(lambda: self.router.pools(), config.autoscale_tick_s, self._record_event)
        self.router = Router(self.backend, on_demand=self.autoscaler.poke)
        self.recorder = ActivationRecorder(self.store)
        self.invoker = Invoker(self.router, self.recorder.record, self.recorder.reject)
        self.deployer = Deployer(self.store, state_dir / "code", self.publish)
        self.supervisor = Supervisor()
        self.supervisor.add("activation-writer", self.recorder.run)
        self.supervisor.add("autoscaler", self.autoscaler.run)
        self.supervisor.add("template-reaper", self.backend.reap_templates_forever)
        self.supervisor.add("memory-watchdog", self.backend.watchdog.run)
        policy = RetentionPolicy(config.activation_retention_s, config.activation_max_rows)
        log_dirs = (state_dir / "logs" / "instances", state_dir / "logs" / "templates")
        self.retention = Retention(self.store, policy, log_dirs, default_sink().open_paths)
        self.supervisor.add("retention", self.retention.run)
        self._event_writes: set[asyncio.Task[None]] = set()
        self._chores: set[asyncio.Task[object]] = set()  # background work of admin calls (code removal)

    async def start(self) -> None:
        """Start the loops, serve every function as the store says, then deploy the --deploy paths."""
        self.supervisor.start()
        for name in await asyncio.to_thread(self.store.function_names):
            await self.publish(name)
        self.remove_unused_code_later()  # left by failed deploys, or by removals of earlier releases
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

    def remove_unused_code_later(self) -> None:
        """In the background: once every retired pool drained, delete the code dirs nothing uses."""
        task = asyncio.get_running_loop().create_task(self.remove_unused_code())
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def remove_unused_code(self) -> list[str]:
        """Delete the code dirs no stored revision and no serving pool uses; their digests."""
        await self.router.drained()  # a draining instance may still import from its code dir
        in_use = {Path(pool.launch.code_dir).name for pool in self.router.pools()}
        try:
            removed = await self.deployer.remove_unused_code(in_use)
        except Exception:
            log.exception("removing unused code dirs failed; the next removal or start retries")
            return []
        if removed:
            log.info("removed %d unused code dir(s): %s", len(removed), ", ".join(d[:12] for d in removed))
        return removed

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
        await asyncio.gather(*self._chores, return_exceptions=True)
        await self.recorder.flush()
        await asyncio.gather(*self._event_writes, return_exceptions=True)
        self.store.close()
        os.close(self._state_lock)
