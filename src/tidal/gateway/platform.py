"""Everything the gateway process runs, wired together once: store, keys, backend, router,
invocation core, deployer, and the supervised background loops.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tidal.auth.keys import KeyRing
from tidal.auth.quota import Limiter
from tidal.autoscale.loop import Autoscaler
from tidal.backends.isolation import choose_mode
from tidal.backends.local import LocalBackend
from tidal.backends.logsink import default_sink
from tidal.backends.template_usage import DEFAULT_TEMPLATE_IDLE_S
from tidal.buckets.folder import FolderBuckets
from tidal.cluster import join_cluster
from tidal.dashboard.history import DashboardState
from tidal.deploy.bundle import bundle_path
from tidal.deploy.service import Deployer, DeployOptions
from tidal.environments.builder import EnvironmentBuilder
from tidal.gateway.state_dir import prepare_state_dir
from tidal.gateway.supervisor import Supervisor
from tidal.invoke.core import Invoker
from tidal.jobs.dispatcher import attributed
from tidal.jobs.service import JobService
from tidal.keepalive.keeper import KeepAliveKeeper
from tidal.metering.folding import JournalFolder, folder_store_location
from tidal.metering.journal import ActivationJournal, replay
from tidal.metering.lives import InstanceLives
from tidal.metering.prices import PriceSheet
from tidal.metering.recorder import ActivationRecorder
from tidal.metering.retention import DEFAULT_MAX_ROWS, DEFAULT_RETENTION_S, Retention, RetentionPolicy
from tidal.observability.wiring import activation_writer, observe
from tidal.rollout.controller import RolloutController
from tidal.router.pool import QueuedBodies, ScalingEvent
from tidal.router.router import Route, Router, ServingTarget, ShadowServing
from tidal.routing.service import RouteService
from tidal.shadow.compare import parse_comparator
from tidal.shadow.mirror import Mirror
from tidal.shadow.recorder import ShadowRecorder
from tidal.store.open import open_store
from tidal.store.protocols import JobStore, Store
from tidal.store.redis_jobs import open_job_store
from tidal.triggers.service import TriggerHub, trigger_sources

if TYPE_CHECKING:
    from tidal.backends.ray_backend import RayBackend

log = logging.getLogger("tidal.gateway")

MiB = 1024 * 1024
T = TypeVar("T")


@dataclass
class GatewayConfig:
    state_dir: Path = Path(".tidal")
    max_body_bytes: int = 6 * MiB  # like AWS Lambda's synchronous payload limit
    max_queued_body_bytes: int = 256 * MiB  # bodies of requests waiting for room, all pools (0: no budget)
    max_deploy_bytes: int = 512 * MiB
    deploy_paths: list[Path] = field(default_factory=list)
    autoscale_tick_s: float = 1.0
    template_idle_s: float = DEFAULT_TEMPLATE_IDLE_S  # an unused warm template is stopped after this
    insecure_no_sandbox: bool = False  # debugging only: function code then runs as the gateway does
    activation_retention_s: float = DEFAULT_RETENTION_S  # older records go (0: kept whatever their age)
    activation_max_rows: int = DEFAULT_MAX_ROWS  # activations kept at most, the newest (0: no limit)
    buckets_dir: Path | None = None  # local-folder buckets (default STATE_DIR/buckets)
    prices: PriceSheet = field(default_factory=PriceSheet)  # usage and cost (tidal up --price-sheet)
    code_quota_bytes: int = 20 * 1024 * MiB  # all unpacked code dirs together (0: no quota)
    queue_url: str | None = None  # `--queue redis://...`: async jobs on Redis (default: in tidal.db)
    metrics_public: bool = False  # `--metrics-public`: GET /metrics without the admin key
    otel_endpoint: str | None = None  # `--otel-endpoint`: OTLP/HTTP traces (or OTEL_EXPORTER_OTLP_* vars)
    backend: str = "local"  # `--backend ray`: instances on a Ray cluster's nodes (tidal.backends.ray_backend)
    ray_address: str = "auto"  # `--ray-address`: the cluster to join (auto: the one started on this host)
    state_url: str | None = (
        None  # `--state postgresql://...`: the store several gateways share (default: tidal.db)
    )


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
        # SQLite in the state dir, or PostgreSQL shared with other gateways (`--state`, tidal.store.open).
        self.store: Store = open_store(config.state_url, state_dir)
        self._recover_metering(state_dir / "journal")
        self.keys = KeyRing(self.store)
        # Per-key rate limits and quotas: quota counts read back from the store (tidal.auth.quota).
        self.limiter = Limiter(self.store)
        self.limiter.load()
        self.admin_key_path = self.keys.ensure_admin_key_file(state_dir)
        self.backend: LocalBackend | RayBackend
        if config.backend == "ray":  # RayUnavailable (not installed, no cluster) reaches `tidal up`
            from tidal.backends.ray_backend import RayBackend

            self.backend = RayBackend(state_dir, config.ray_address, config.template_idle_s,
                                      choose_mode(config.insecure_no_sandbox))  # fmt: skip
        else:
            self.backend = LocalBackend(
                state_dir,
                template_idle_s=config.template_idle_s,
                sandbox=choose_mode(config.insecure_no_sandbox),
            )
        isolation = self.backend.describe_isolation()
        level = logging.WARNING if config.insecure_no_sandbox else logging.INFO
        log.log(level, "sandbox: %s; limits: %s", isolation["sandbox"], isolation["limits"])
        # Keep-alive policies (spec `keep_alive`): learn idle times, unload, pre-warm (tidal.keepalive).
        self.keep_alive = KeepAliveKeeper(
            self.store, self.backend, lambda: self.router.pools(), lambda: self.autoscaler.poke()
        )
        self.autoscaler = Autoscaler(lambda: self.router.pools(), config.autoscale_tick_s, self._record_event,
                                     self.keep_alive.wish)  # fmt: skip
        self.lives = InstanceLives(self.store)  # each instance's start and stop (metering)
        self.router = Router(
            self.backend, on_demand=self.autoscaler.poke, lives=self.lives,
            queued_bodies=QueuedBodies(config.max_queued_body_bytes),
        )  # fmt: skip
        self.backend.on_exit(self.router.instance_exited)  # a lost Ray node's connections are closed
        # Each record goes to the journal before its answer is sent (tidal.metering.journal).
        self.journal = ActivationJournal(state_dir / "journal")
        # A process of its own stores the journal's segments: the event loop only journals.
        self.folder = JournalFolder(
            folder_store_location(config.state_url, state_dir), self.store.add_activation_rows
        )
        self.recorder = ActivationRecorder(self.store, journal=self.journal, folder=self.folder)
        # Around the writer (nothing with TIDAL_METRICS=0), each record feeds keep-alive learning
        # and key quotas, and a job's attempt names its job on it (tidal.jobs.dispatcher).
        record = self.keep_alive.observing(activation_writer(self.recorder.record))
        self.invoker = Invoker(self.router, attributed(self.limiter.observing(record)), self.recorder.reject)
        self.shadow_recorder = ShadowRecorder(self.store)
        self.invoker.mirror = self.mirror = Mirror(self.invoker, self.shadow_recorder)
        self.environments = EnvironmentBuilder(state_dir / "envs", state_dir / "cache" / "uv")
        self.deployer = Deployer(
            self.store, state_dir / "code", self.publish, self.backend.environments, self.environments,
            self.backend.isolation, config.code_quota_bytes,
        )  # fmt: skip
        self.supervisor = Supervisor()
        self.supervisor.add("journal-folder", self.folder.run)  # stopped after the writer
        self.supervisor.add("activation-writer", self.recorder.run)
        self.supervisor.add("quota-writer", self.limiter.run)
        self.supervisor.add("instance-lives", self.lives.run)
        self.supervisor.add("shadow-writer", self.shadow_recorder.run)
        self.supervisor.add("autoscaler", self.autoscaler.run)
        self.supervisor.add("keep-alive", self.keep_alive.run)
        self.supervisor.add("template-reaper", self.backend.reap_templates_forever)
        self.supervisor.add("memory-watchdog", self.backend.watchdog.run)
        policy = RetentionPolicy(config.activation_retention_s, config.activation_max_rows)
        log_dirs = (state_dir / "logs" / "instances", state_dir / "logs" / "templates")
        # Async jobs live in tidal.db, or on Redis with `--queue redis://` (tidal.store.redis_jobs).
        self.job_store: JobStore = open_job_store(config.queue_url, self.store)
        self.retention = Retention(
            self.store, policy, log_dirs, default_sink().open_paths, jobs=self.job_store
        )
        self.supervisor.add("retention", self.retention.run)
        # Canary rollouts: judged on the store's activations, applied through publish (tidal.rollout).
        self.rollouts = RolloutController(self.store, self.publish, self.recorder.flush)
        self.supervisor.add("rollouts", self.rollouts.run)
        # Async jobs: the dispatcher runs due jobs through the invoker; callbacks go out on their own.
        # This gateway holds the state dir's lock, so jobs left running by an earlier one are orphans.
        self.jobs = JobService(self.job_store, self.invoker, sole_gateway=True)
        self.supervisor.add("job-dispatcher", self.jobs.dispatcher.run)
        self.supervisor.add("job-callbacks", self.jobs.callbacks.run)
        # Event triggers: one supervised source task per stored trigger; each event becomes a job.
        self.buckets = FolderBuckets((config.buckets_dir or state_dir / "buckets").resolve())
        self.triggers = TriggerHub(self.store, self.jobs, self.buckets, trigger_sources())
        self.supervisor.add("triggers", self.triggers.run)
        # HTTP routes by method and path, and CORS policies (tidal.routing; served by gateway.routed).
        self.routes = RouteService(self.store)
        # The dashboard's charts of instances over time: the router's counts sampled each second.
        self.dashboard = DashboardState(self.router)
        self.supervisor.add("dashboard-sampler", self.dashboard.sampler.run)
        # Function -> the JSON field whose value is its sticky key (spec `sticky_key`), read by the
        # HTTP adapter only when a split has to be drawn.
        self.sticky_fields: dict[str, str] = {}
        self.function_settings: dict[str, dict[str, object]] = {}  # function-level spec fields, as stored
        self._event_writes: set[asyncio.Task[None]] = set()
        self._chores: set[asyncio.Task[Any]] = set()  # background work of admin calls (code removal)
        # Several gateways on PostgreSQL: heartbeat, leader lease, changes heard (None on SQLite).
        self.cluster = join_cluster(self)
        # Last, around the invoker as wired above: /metrics counts, traces (tidal.observability).
        self.observability = observe(self, config.metrics_public, config.otel_endpoint)

    async def start(self) -> None:
        """Start the loops, serve every function as the store says, then deploy the --deploy paths."""
        await asyncio.to_thread(self.keep_alive.load)  # what was learned before a restart
        self.supervisor.start()
        for name in await asyncio.to_thread(self.store.function_names):
            await self.publish(name)
        self.jobs.ready()  # queued jobs find their functions served from here on
        self.triggers.ready()  # and so do the events of triggers
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
        self.keep_alive.configure(function, record.settings.get("keep_alive") if record is not None else None,
                                  stored=record is not None)  # fmt: skip
        await self.routes.sync(function, record.settings if record is not None else None)  # `routes`, `cors`
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
            if not code_dir.exists() and self.cluster is not None:  # deployed through another gateway
                await self.cluster.code.fetch(revision.code_digest, code_dir.parent)
            if self.cluster is not None and code_dir.exists():  # and its requirements, built here too
                await self.deployer.ensure_environment(revision, code_dir)
            if not code_dir.exists():
                log.error("code of %s is missing from %s; not serving it", revision.id, code_dir)
                continue
            serving.append(ServingTarget(revision, str(code_dir), target.percent, target.tag))
        if not serving:
            self.router.remove(function)
            return None
        sticky_field = record.settings.get("sticky_key")
        if isinstance(sticky_field, str) and sticky_field:
            self.sticky_fields[function] = sticky_field
        else:
            self.sticky_fields.pop(function, None)
        self.jobs.configure(function, record.settings)  # retries, max_event_age, destinations
        await self.triggers.sync(function, record.settings)  # the spec's `triggers`, stored
        self.function_settings[function] = dict(record.settings)  # what `tidal status` shows
        shadow = await self._shadow_serving(function)
        return self.router.serve(function, bool(record.settings.get("public", False)), serving, shadow)

    async def _shadow_serving(self, function: str) -> ShadowServing | None:
        """The function's stored shadow, resolved for the router; None if it has none (or it cannot run)."""
        config = await asyncio.to_thread(self.store.shadow, function)
        if config is None:
            return None
        revision = await asyncio.to_thread(self.store.revision, config.revision)
        if revision is None or not (code_dir := self.deployer.code_dir(revision)).exists():
            log.error(
                "shadow of %s names %s, whose code is not stored; not copying", function, config.revision
            )
            return None
        try:
            comparator = parse_comparator(config.compare)
        except ValueError as exc:  # validated when set: only a hand-edited database gets here
            log.error("shadow of %s: %s; not copying", function, exc)
            return None
        return ShadowServing(revision, str(code_dir), config.percent, comparator, config.max_in_flight)

    def remove_unused_code_later(self) -> None:
        """In the background: once every retired pool drained, delete the code dirs nothing uses."""
        self.run_chore(self.remove_unused_code())

    def run_chore(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` in the background, kept until done (and waited for by ``stop``)."""
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        return task

    async def remove_unused_code(self) -> list[str]:
        """Delete the code dirs and environments no stored revision and no serving pool uses;
        the code digests removed.
        """
        await self.router.drained()  # a draining instance may still import from its code dir
        pools = self.router.pools()
        in_use = {Path(pool.launch.code_dir).name for pool in pools}
        environments = {pool.launch.revision.environment for pool in pools} - {""}
        try:
            removed = await self.deployer.remove_unused_code(in_use)
            gone = await self.deployer.remove_unused_environments(environments)
        except Exception:
            log.exception("removing unused code dirs failed; the next removal or start retries")
            return []
        if removed:
            log.info("removed %d unused code dir(s): %s", len(removed), ", ".join(d[:12] for d in removed))
        if gone:
            log.info("removed %d unused environment(s): %s", len(gone), ", ".join(k[:12] for k in gone))
        return removed

    def _recover_metering(self, journal_dir: Path) -> None:
        """What a gateway killed without a stop left: journaled records not yet stored, and instance
        lives never closed (this process holds the state dir's lock, so those instances are gone)."""
        stored = replay(journal_dir, self.store.add_activation_rows)
        # A shared store's open lives may be other gateways' running instances: only SQLite's are ours.
        closed = self.store.close_open_lives() if self.config.state_url is None else 0
        if stored or closed:
            log.warning("metering: stored %d journaled activation(s), closed %d instance life(s) "
                        "left by a gateway that did not stop cleanly", stored, closed)  # fmt: skip

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
        await self.jobs.close()  # attempts in flight get a few seconds to end (else: retried after restart)
        await self.router.close()
        await self.mirror.close()  # copies end with their drained pools: their records are written next
        await self.backend.close()
        await asyncio.gather(*self._chores, return_exceptions=True)
        await self.environments.close()
        await self.recorder.flush()
        await self.limiter.flush()  # after the last records: their GB-s count
        await self.lives.flush()
        self.journal.close()
        await self.shadow_recorder.flush()
        await self.keep_alive.flush()
        await asyncio.gather(*self._event_writes, return_exceptions=True)
        self.observability.close()  # exports the last spans
        if self.job_store is not self.store:
            self.job_store.close()  # type: ignore[attr-defined]
        self.store.close()
        os.close(self._state_lock)
