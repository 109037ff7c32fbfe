"""Local backend: each instance is its own OS process on this host, forked from a warm template.

The backend binds a listening Unix socket for each instance and returns at once; the router
connects immediately (the kernel queues the connection until the instance accepts), so readiness
is a Ready frame, not polling.

An instance is started one of two ways (``InstanceHandle.extra["started_via"]``):
- "template": forked by the revision's template (``tidal.runtime.template``), a warm process that
  already imported the module, and with ``load_once`` also ran ``setup()``; the listening socket
  travels to it over its control socket. A cold start is then a fork: milliseconds.
- "spawn": a fresh ``python -m tidal.runtime.worker`` that imports and sets up on its own. Used
  when templates are off (``TIDAL_TEMPLATES=0``, ``use_templates=False``) or the template cannot
  be had (its import failed, it crashed, the fork failed); the reason is logged.

Templates are kept by ``template_registry.Templates``: started on first use, or ahead of it by
``prepare()``, replaced when they die, and stopped by ``reap_templates`` (a supervised loop of the
gateway) once unused for ``template_idle_s``; the next start builds one again.
Spawned instances die with the gateway (PR_SET_PDEATHSIG); every instance also exits when its
gateway connection closes, which is what ends forked ones (they do not die with their template).

GPUs: each start first claims the instance's GPUs (``GpuHost``, placed by ``gpu_placement``); a
start no GPU can host fails there with the reason, before any process exists. The claim rides in
``InstanceConfig.visible_gpus`` (CUDA_VISIBLE_DEVICES, set before user code runs) and is given
back when the instance exits. A GPU function's template that initialised CUDA refuses for good
(``lasting``): its instances are spawned until the code changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from tidal.backends.base import (
    COLD_START_DETAIL,
    CONNECT_TOKEN,
    Capacity,
    ExitCallback,
    InstanceHandle,
    InstanceSpec,
)
from tidal.backends.cgroups import Cgroups, Group, Limits, sweep_stale
from tidal.backends.cradles import Cradles
from tidal.backends.gpu_placement import GpuUnavailable
from tidal.backends.gpus import GpuHost
from tidal.backends.isolation import Isolation, SandboxMode, choose_mode, instance_env
from tidal.backends.listeners import address_of, listen
from tidal.backends.spawn import spawn_module
from tidal.backends.template_registry import Templates
from tidal.backends.template_usage import DEFAULT_TEMPLATE_IDLE_S, cold_start_detail
from tidal.backends.templates import TemplateKey, TemplateProcess, TemplateUnavailable
from tidal.backends.watchdog import MemoryWatchdog
from tidal.environments.runtime import Environments, Interpreter
from tidal.runtime.batching import BatchConfig
from tidal.runtime.worker import InstanceConfig, gpu_env

log = logging.getLogger("tidal.backends.local")

STOP_AFTER_KILL_S = 10.0
GPU_RELEASE_WAIT_S = 15.0  # a start waits this long for GPUs held by instances being stopped


def templates_enabled_by_env() -> bool:
    return os.environ.get("TIDAL_TEMPLATES", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class _Running:
    handle: InstanceHandle
    socket_path: Path
    exited: asyncio.Future[int | None]  # its exit code (-N: killed by signal N; None: unknown)
    process: asyncio.subprocess.Process | None = None  # spawned: our child
    group: Group | None = None  # its control group: its limits, and every process it started
    stopping: bool = False  # asked to stop (scale-down, retirement): what it holds is about to free


class LocalBackend:
    name = "local"

    def __init__(
        self,
        state_dir: Path,
        python: str = sys.executable,
        use_templates: bool = True,
        template_idle_s: float = DEFAULT_TEMPLATE_IDLE_S,
        sandbox: SandboxMode | None = None,
        listen_host: str | None = None,
    ) -> None:
        self.python = python
        # Instances listen on TCP at this address (port chosen by the kernel) instead of a Unix
        # socket: the Ray backend's node hosts, whose instances the gateway reaches over the network.
        self.listen_host = listen_host
        self.several_gateways = False  # a Ray node host of several gateways (tidal.cluster.fleet)
        self.environments = Environments(state_dir, python)  # a revision's own requirements, or ours
        self.isolation = Isolation(state_dir, sandbox or choose_mode(False))
        sweep_stale()  # groups (and processes) left by a gateway that was killed
        self.cgroups = Cgroups.detect(f"tidal-{os.getpid()}")
        self.cradles = Cradles(self.cgroups)
        self.watchdog = MemoryWatchdog()  # memory limits where no control group enforces them
        self.gpus = GpuHost()  # which instance holds which GPU (or share of one)
        self.use_templates = use_templates and templates_enabled_by_env()
        self.log_dir = state_dir / "logs" / "instances"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.template_log_dir = state_dir / "logs" / "templates"
        self.template_log_dir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to ~107 bytes: keep them short, in a per-state-dir temp folder.
        tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
        self.socket_dir = Path(tempfile.gettempdir()) / f"tidal-{tag}"
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        for stale in self.socket_dir.glob("*.sock"):  # left by a gateway of this state dir that was killed
            stale.unlink(missing_ok=True)
        self._running: dict[str, _Running] = {}
        self._callbacks: list[ExitCallback] = []
        self._watchers: set[asyncio.Task[Any]] = set()
        self._templates = Templates(self._make_template, template_idle_s, self._template_died)

    # -- templates (template_registry.Templates keeps them) -------------------------------------

    async def prepare(self, launch: InstanceSpec) -> None:
        """Start the revision's template in the background, so its first cold start is a fork."""
        if self.use_templates:
            await self._templates.prepare(launch)

    async def release(self, launch: InstanceSpec) -> None:
        """The revision is retired: stop its template unless another live revision shares it."""
        await self._templates.release(launch)

    def templates(self) -> list[dict[str, object]]:
        """What each live template is: pid, state, module, import/setup ms, forks, live instances,
        memory (RSS, PSS), idle seconds, and the revisions that use it.
        """
        return self._templates.describe_all()

    def template_of(self, launch: InstanceSpec) -> dict[str, object] | None:
        """The template ``launch``'s instances fork from now, its failure while they spawn, or None."""
        return self._templates.describe(launch)

    async def reap_templates(self, now: float | None = None) -> int:
        """Stop the templates idle past ``template_idle_s``; how many (``Templates.reap``)."""
        return await self._templates.reap(now)

    async def drop_template(self, launch: InstanceSpec) -> bool:
        """Stop the revision's template now unless it builds or has live instances (keep-alive's
        unload); whether it went. The next start, or a pre-warm, builds it again."""
        return await self._templates.drop(launch)

    async def reap_templates_forever(self) -> None:
        await self._templates.reap_forever()

    def _make_template(
        self, key: TemplateKey, memory_mb: int, on_death: Callable[[TemplateProcess], None]
    ) -> TemplateProcess:
        name = hashlib.sha256(repr(key).encode()).hexdigest()[:12]
        log_path = self.template_log_dir / f"{Path(key.code_dir).name[:16]}-{key.module}-{name}.log"
        interpreter = self._interpreter(key.environment, dict(key.env))
        sandbox = self.isolation.plan(key.function, key.code_dir, interpreter.paths)
        self.isolation.prepare_code(key.code_dir)
        # The template holds what instances share (the imported modules, with load_once the model).
        group = self._group(f"template-{name}", Limits(memory_mb, 1.0))
        extra_env = {**interpreter.env, **self.gpus.template_env(key.gpu)}
        return TemplateProcess(key, interpreter.python, log_path, on_death, sandbox, group, extra_env)

    def _template_died(self, template: TemplateProcess) -> None:
        if template.pid is not None:
            self.cradles.drop(template.pid)

    # -- instances --------------------------------------------------------------------------------

    async def start(self, launch: InstanceSpec, count: int = 1) -> list[InstanceHandle]:
        return [await self._start_and_tell_how(launch) for _ in range(count)]

    async def _start_and_tell_how(self, launch: InstanceSpec) -> InstanceHandle:
        """Start one instance and note in ``extra`` whether its template was ready or built for it."""
        template = self._templates.get(TemplateKey.of(launch))
        ready_pid = template.pid if template is not None and template.built_at and template.alive else None
        handle = await self._start_one(launch)
        handle.extra[COLD_START_DETAIL] = cold_start_detail(
            handle.extra.get("started_via"), handle.extra.get("template_pid"), ready_pid
        )
        return handle

    async def _start_one(self, launch: InstanceSpec) -> InstanceHandle:
        revision, spec = launch.revision, launch.spec
        instance_id = f"{revision.id}-{secrets.token_hex(3)}"
        visible_gpus = await self._claim_gpus(instance_id, spec.gpu)
        try:
            return await self._start_placed(launch, instance_id, visible_gpus)
        except BaseException:
            self.gpus.release(instance_id)
            raise

    async def _claim_gpus(self, instance_id: str, gpu: float) -> str | None:
        """The instance's CUDA_VISIBLE_DEVICES; GpuUnavailable, saying why, when no GPU can host it.

        GPUs held by instances on their way out (a scale-down just stopped the last one; a GPU
        process takes a moment to release its context) free up within seconds: wait for those
        exits, bounded, rather than fail the start and put the function into start backoff.
        """
        try:
            return self.gpus.claim(instance_id, gpu)
        except GpuUnavailable:
            leaving = [running.exited for running in self._running.values() if running.stopping]
            if not leaving:
                raise
        await asyncio.wait([asyncio.shield(exit) for exit in leaving], timeout=GPU_RELEASE_WAIT_S)
        await asyncio.sleep(0)  # their exit watchers release their GPUs
        return self.gpus.claim(instance_id, gpu)

    async def _start_placed(
        self, launch: InstanceSpec, instance_id: str, visible_gpus: str | None
    ) -> InstanceHandle:
        revision, spec = launch.revision, launch.spec
        socket_path = self.socket_dir / f"{instance_id}.sock"
        config = InstanceConfig(
            instance_id=instance_id,
            function=revision.function,
            revision=revision.id,
            code_dir=launch.code_dir,
            module=revision.module,
            attribute=revision.attribute,
            is_class=revision.is_class,
            style=revision.style,
            timeout=spec.timeout,
            concurrency=spec.concurrency,
            memory_mb=spec.memory,
            visible_gpus=visible_gpus,
            batch=BatchConfig(**spec.batch.model_dump()) if spec.batch is not None else None,
            max_models=spec.max_models,
            several_gateways=self.several_gateways,
            # A TCP port is open to every process of the node: only the gateway may know this.
            connect_token=secrets.token_hex(16) if self.listen_host is not None else "",
        )
        listener = listen(socket_path, self.listen_host)
        handle = InstanceHandle(
            id=instance_id,
            revision=revision.id,
            address=address_of(listener, socket_path),
            capacity=Capacity(cpu=spec.cpu, memory_mb=spec.memory, gpu=spec.gpu),
            started_at=time.time(),
            log_path=str(self.log_dir / f"{instance_id}.log"),
        )
        if config.connect_token:
            handle.extra[CONNECT_TOKEN] = config.connect_token
        if spec.gpu > 0 and visible_gpus is not None:
            handle.extra["gpus"] = visible_gpus  # CUDA_VISIBLE_DEVICES of the instance
        limits = Limits(spec.memory, spec.cpu)
        try:
            running = None
            if self.use_templates:
                running = await self._fork(launch, config, listener, handle, socket_path, limits)
            if running is None:
                group = self._group(instance_id, limits)
                running = await self._spawn(launch, config, listener, handle, socket_path, group)
                running.group = group
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            raise
        finally:
            listener.close()  # the instance holds its own copy
        group = running.group
        if group is not None:
            handle.loss_reason = lambda: _oom_reason(group, spec.memory)
        elif handle.pid is not None:
            self.watchdog.watch(instance_id, handle.pid, spec.memory)
            handle.loss_reason = lambda: _watchdog_reason(self.watchdog, instance_id, spec.memory)
        self._running[instance_id] = running
        watcher = asyncio.create_task(self._watch(running))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return handle

    async def _fork(
        self,
        launch: InstanceSpec,
        config: InstanceConfig,
        listener: socket.socket,
        handle: InstanceHandle,
        socket_path: Path,
        limits: Limits,
    ) -> _Running | None:
        try:
            template = await self._templates.ready_for(launch)
            assert template.pid is not None
            cradle = self.cradles.take(template.pid, limits)  # the child is born in it: no move
            pid, fork_ms, exited = await template.fork(
                config, listener, handle.log_path or "/dev/null", launch.spec.cpu
            )
        except TemplateUnavailable as exc:
            quiet = self._templates.note_fallback(launch, exc)  # one warning per template failure
            level = logging.DEBUG if quiet else logging.WARNING
            log.log(level, "instance of %s starts as a fresh process: %s", launch.revision.id, exc)
            handle.extra["template_error"] = str(exc)[:500]
            return None
        handle.pid = pid
        handle.extra.update(started_via="template", fork_ms=f"{fork_ms:.2f}", template_pid=str(template.pid))
        group = cradle
        if group is None and self.cgroups.bases:  # no cradle ready (a burst): move the child now
            group = self._group(handle.id, limits)
            if group is not None:
                with contextlib.suppress(OSError):  # before the gateway connects: no user code ran yet
                    await asyncio.to_thread(group.add, pid)
        self._in_background(self.cradles.refill(template.pid))  # the template moves on, off the cold path
        return _Running(handle, socket_path, exited, group=group)

    async def _spawn(
        self,
        launch: InstanceSpec,
        config: InstanceConfig,
        listener: socket.socket,
        handle: InstanceHandle,
        socket_path: Path,
        group: Group | None,
    ) -> _Running:
        own = {
            "TIDAL_INSTANCE": msgspec.json.encode(config).decode(),
            "TIDAL_LISTEN_FD": str(listener.fileno()),
        }
        interpreter = self._interpreter(launch.revision.environment, launch.spec.env)
        own.update(interpreter.env)
        if config.visible_gpus is not None:
            own.update(gpu_env(config.visible_gpus))
        sandbox = self.isolation.plan(launch.revision.function, launch.code_dir, interpreter.paths)
        if sandbox is not None:
            self.isolation.prepare_code(launch.code_dir)
            own["TIDAL_SANDBOX"] = msgspec.json.encode(sandbox).decode()
        env = instance_env(launch.spec.env, own)
        join = (lambda: group.add(os.getpid())) if group is not None else None
        started = time.perf_counter()
        assert handle.log_path is not None
        process = await spawn_module(
            interpreter.python,
            "tidal.runtime.worker",
            env,
            handle.log_path,
            listener.fileno(),
            config.code_dir,
            join,
        )
        handle.pid = process.pid
        handle.extra.update(started_via="spawn", spawn_ms=f"{(time.perf_counter() - started) * 1000:.2f}")
        exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

        def reaped(task: asyncio.Task[int]) -> None:
            self._watchers.discard(task)
            if not exited.done():
                exited.set_result(None if task.cancelled() else task.result())

        waiter = asyncio.create_task(process.wait())
        self._watchers.add(waiter)
        waiter.add_done_callback(reaped)
        return _Running(handle, socket_path, exited, process)

    async def _watch(self, running: _Running) -> None:
        handle = running.handle
        handle.exit_code = await running.exited
        self._running.pop(handle.id, None)
        self.gpus.release(handle.id)
        with contextlib.suppress(FileNotFoundError):
            running.socket_path.unlink()
        if handle.exit_code not in (0, -15, None):
            log.warning(
                "instance %s exited with code %s (log: %s)", handle.id, handle.exit_code, handle.log_path
            )
        for callback in self._callbacks:
            try:
                result = callback(handle)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("exit callback failed for %s", handle.id)
        if running.group is not None:  # whatever it forked, detached or not, goes with it
            await asyncio.to_thread(_discard, running.group, frozenset(self.cradles.holders()))
        self.watchdog.forget(handle.id)

    def _signal(self, running: _Running, signum: int) -> None:
        if running.exited.done():
            return
        with contextlib.suppress(ProcessLookupError):
            if running.process is not None:
                running.process.send_signal(signum)
            elif running.handle.pid is not None:
                os.kill(running.handle.pid, signum)

    async def stop(self, instance: InstanceHandle, grace_s: float = 5.0) -> None:
        running = self._running.get(instance.id)
        if running is None:
            return
        running.stopping = True
        self._signal(running, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(running.exited), grace_s)
        except TimeoutError:
            self._signal(running, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running.exited), STOP_AFTER_KILL_S)

    def instances(self, revision: str | None = None) -> list[InstanceHandle]:
        return [r.handle for r in self._running.values() if revision in (None, r.handle.revision)]

    def on_exit(self, callback: ExitCallback) -> None:
        self._callbacks.append(callback)

    async def close(self) -> None:
        self._templates.closed = True
        await asyncio.gather(*(self.stop(handle, grace_s=2.0) for handle in self.instances()))
        await self._templates.close()
        for watcher in list(self._watchers):
            watcher.cancel()
        with contextlib.suppress(OSError):
            self.socket_dir.rmdir()  # only when empty: nothing of a live instance is removed
        await asyncio.to_thread(self.cgroups.close)

    def _interpreter(self, environment: str, spec_env: dict[str, str]) -> Interpreter:
        """The Python of a revision's environment (its requirements) or tidal's own."""
        return self.environments.interpreter(environment, spec_env.get("PYTHONPATH"))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def _group(self, name: str, limits: Limits) -> Group | None:
        """A control group with ``limits``, or None where this host enforces none."""
        if not self.cgroups.bases:
            return None
        try:
            return self.cgroups.create(name, limits)
        except OSError as exc:
            log.warning("no control group for %s, its limits are not enforced: %s", name, exc)
            return None

    def describe_isolation(self) -> dict[str, str]:
        """What `tidal status` and the start banner say about the sandbox and the limits."""
        limits = self.cgroups.describe()
        if not self.cgroups.enforced:
            limits = f"memory by an RSS watchdog (every {self.watchdog.interval_s:g} s; cpu and processes not limited): {limits}"
        return {"sandbox": self.isolation.describe(), "limits": limits}


def _discard(group: Group, spare: frozenset[int] = frozenset()) -> None:
    group.kill_all(spare=spare)
    group.remove()


def _watchdog_reason(watchdog: MemoryWatchdog, instance: str, memory_mb: int) -> str | None:
    if watchdog.killed(instance):
        return f"the instance used more than its memory limit of {memory_mb} MiB and was killed"
    return None


def _oom_reason(group: Group, memory_mb: int) -> str | None:
    if group.oom_killed():
        return f"the instance used more than its memory limit of {memory_mb} MiB and was killed"
    return None
