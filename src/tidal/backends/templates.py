"""The local backend's side of a template (zygote) process: start it, ask it to fork, hear of exits.

One ``TemplateProcess`` per ``TemplateKey``. The control socket is a SOCK_SEQPACKET socketpair
(one JSON datagram a message, see ``tidal.runtime.template``), read with ``loop.add_reader`` so
it works the same on asyncio's and uvloop's loops. A forked instance is the template's child,
not ours: its exit is known from the template's ``Exited`` report, or, once the template itself is
gone, from a pidfd (the orphan's exit code is then unknown: None).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import msgspec

from tidal.backends.base import InstanceSpec
from tidal.backends.cgroups import Group
from tidal.backends.isolation import instance_env
from tidal.backends.logsink import open_log
from tidal.backends.spawn import spawn_module
from tidal.backends.template_usage import memory_mb
from tidal.runtime.sandbox import SandboxPlan
from tidal.runtime.template import (
    CUDA_INITIALISED,
    MAX_MESSAGE,
    Exited,
    Fork,
    Forked,
    ForkFailed,
    TemplateConfig,
    TemplateFailed,
    TemplateReady,
    decode,
    encode,
    pinned_env,
)
from tidal.runtime.worker import InstanceConfig

log = logging.getLogger("tidal.backends.local")

FORK_TIMEOUT_S = 10.0  # a fork takes milliseconds; a template this slow to answer is broken
CLOSE_GRACE_S = 3.0
ORPHAN_POLL_S = 0.2

_background: set[asyncio.Task[None]] = set()


class TemplateUnavailable(Exception):
    """No instance can be forked (the template failed to start, died, or refused); spawn instead.

    ``lasting``: the template refused for a reason only new code can change (it initialised CUDA
    for a GPU function), so it is not rebuilt until the gateway restarts or the code changes.
    """

    def __init__(self, message: str, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


class TemplateKey(NamedTuple):
    """What makes two revisions' instances forkable from the same template."""

    code_dir: str
    module: str
    attribute: str | None  # only with load_once: the target is then built in the template
    is_class: bool
    env: tuple[tuple[str, str], ...]
    load_once: bool
    # A function's processes run under its own uid: templates are never shared across functions.
    function: str = ""
    environment: str = ""  # the revision's environment key ("" = tidal's own virtualenv)
    gpu: bool = False  # gpu > 0: children use CUDA, so the template must never initialise it

    @classmethod
    def of(cls, launch: InstanceSpec) -> TemplateKey:
        revision, spec = launch.revision, launch.spec
        env = tuple(sorted(spec.env.items()))
        attribute, is_class = (revision.attribute, revision.is_class) if spec.load_once else (None, False)
        return cls(
            launch.code_dir, revision.module, attribute, is_class, env, spec.load_once, revision.function,
            revision.environment, spec.gpu > 0,
        )  # fmt: skip


class TemplateProcess:
    """A running (or starting) template and the instances it forked that are still alive."""

    def __init__(
        self,
        key: TemplateKey,
        python: str,
        log_path: Path,
        on_death: Callable[[TemplateProcess], None],
        sandbox: SandboxPlan | None = None,
        group: Group | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.extra_env = extra_env or {}  # the interpreter's own (an environment's PYTHONPATH)
        self.sandbox = sandbox  # entered by the template before it imports the function's module
        self.group = group  # its control group (limits; every process it leaves is killed with it)
        self.key = key
        self.python = python
        self.log_path = log_path
        self.on_death = on_death
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[TemplateReady] = self.loop.create_future()
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        self.process: asyncio.subprocess.Process | None = None
        self.children: dict[int, asyncio.Future[int | None]] = {}
        self.created_at = time.time()
        self.built_at: float | None = None  # epoch seconds it became ready
        # Monotonic: when it was last built, asked for, forked or saw an instance exit (reaping).
        self.last_used = time.monotonic()
        self.forks = 0
        self.closing = False
        self.exit_code: int | None = None
        self._sock: socket.socket | None = None
        self._pending: dict[int, asyncio.Future[tuple[Forked, asyncio.Future[int | None]]]] = {}
        self._ids = itertools.count(1)
        self._watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.exit_code is None and not self.closing

    @property
    def live_instances(self) -> int:
        """Instances it forked that still run, and forks asked for and not yet answered."""
        return len(self.children) + len(self._pending)

    def touch(self) -> None:
        """It is in use now: its idle time (what reaping looks at) starts again."""
        self.last_used = time.monotonic()

    def idle_s(self, now: float) -> float:
        """Seconds without a live instance or a start (0 while it has one); ``now`` is monotonic."""
        return 0.0 if self.live_instances else max(0.0, now - self.last_used)

    async def launch(self) -> None:
        """Start the process; ``ready`` resolves when it has imported (and set up) the code."""
        key = self.key
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = instance_env(dict(key.env), self.extra_env)  # never the gateway's own environment
        config = TemplateConfig(
            code_dir=key.code_dir,
            module=key.module,
            attribute=key.attribute,
            is_class=key.is_class,
            load_once=key.load_once,
            restore_env={name: env.get(name) for name in pinned_env(key.gpu)},
            gpu=key.gpu,
        )
        env.update(pinned_env(key.gpu))
        env.update(
            {
                "TIDAL_TEMPLATE_CONFIG": msgspec.json.encode(config).decode(),
                "TIDAL_CONTROL_FD": str(theirs.fileno()),
                "TIDAL_PARENT_PID": str(os.getpid()),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.sandbox is not None:
            env["TIDAL_SANDBOX"] = msgspec.json.encode(self.sandbox).decode()
        group = self.group
        join = (lambda: group.add(os.getpid())) if group is not None else None
        try:
            self.process = await spawn_module(
                self.python, "tidal.runtime.template", env, self.log_path, theirs.fileno(), key.code_dir, join
            )
        except BaseException as exc:
            ours.close()
            if not self.ready.done():
                self.ready.set_exception(TemplateUnavailable(f"could not start the template: {exc}"))
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self.loop.add_reader(ours.fileno(), self._readable)
        self._watcher = self.loop.create_task(self._watch())

    async def wait_ready(self, timeout_s: float) -> TemplateReady:
        try:
            return await asyncio.wait_for(asyncio.shield(self.ready), timeout_s)
        except TimeoutError:
            self.kill()
            raise TemplateUnavailable(f"the template was not ready within {timeout_s:g} s") from None

    async def fork(
        self, config: InstanceConfig, listener: socket.socket, log_path: str, cpu: float
    ) -> tuple[int, float, asyncio.Future[int | None]]:
        """Fork an instance serving ``listener``: (pid, ms from request to pid, its exit code future)."""
        if not self.alive or self._sock is None:
            raise TemplateUnavailable("the template is gone")
        request_id = next(self._ids)
        answer: asyncio.Future[tuple[Forked, asyncio.Future[int | None]]] = self.loop.create_future()
        self._pending[request_id] = answer
        started = time.perf_counter()
        try:
            data = encode(Fork(request_id, config, cpu))
            # The gateway opens the log: the template's mount view has no state dir to open it in.
            log_fd = open_log(log_path)  # a pipe the gateway drains into the file, capped (logsink.py)
            try:
                await self._send(data, [listener.fileno(), log_fd])
            finally:
                os.close(log_fd)
            forked, exited = await asyncio.wait_for(answer, FORK_TIMEOUT_S)
        except TimeoutError:
            self.kill()  # a template this slow is broken: it is rebuilt on the next start
            raise TemplateUnavailable(f"the template did not fork within {FORK_TIMEOUT_S:g} s") from None
        finally:
            self._pending.pop(request_id, None)
        self.forks += 1
        self.touch()
        return forked.pid, (time.perf_counter() - started) * 1000, exited

    async def _send(self, data: bytes, fds: list[int]) -> None:
        while True:
            sock = self._sock
            if sock is None or not self.alive:
                raise TemplateUnavailable("the template is gone")
            try:
                socket.send_fds(sock, [data], fds)
                return
            except BlockingIOError:
                await asyncio.sleep(0.002)
            except OSError as exc:
                raise TemplateUnavailable(f"the template's control socket failed: {exc}") from None

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._stop_reading()
                return
            try:
                message = decode(data)
            except msgspec.DecodeError as exc:
                log.error("template %s sent a bad control message: %s", self.pid, exc)
                continue
            self._dispatch(message)

    def _dispatch(self, message: object) -> None:
        if isinstance(message, Exited):
            self.touch()  # with its last instance gone, its idle time starts now
            future = self.children.pop(message.pid, None)
            if future is not None and not future.done():
                future.set_result(message.code)
        elif isinstance(message, Forked):
            exited: asyncio.Future[int | None] = self.loop.create_future()
            self.children[message.pid] = exited
            pending = self._pending.get(message.id)
            if pending is not None and not pending.done():
                pending.set_result((message, exited))
            else:  # its start was given up (cancelled, timed out): nobody will connect to it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(message.pid, signal.SIGTERM)
        elif isinstance(message, ForkFailed):
            pending = self._pending.get(message.id)
            if pending is not None and not pending.done():
                pending.set_exception(TemplateUnavailable(message.message, message.lasting))
        elif isinstance(message, TemplateReady) and not self.ready.done():
            self.built_at = time.time()
            self.touch()  # a slow build is not idle time: the start that waits for it forks next
            self.ready.set_result(message)
        elif isinstance(message, TemplateFailed) and not self.ready.done():
            lasting = message.type == CUDA_INITIALISED
            self.ready.set_exception(TemplateUnavailable(f"{message.type}: {message.message}", lasting))

    def _stop_reading(self) -> None:
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def _watch(self) -> None:
        assert self.process is not None
        self.exit_code = await self.process.wait()
        self._readable()  # the last reports it wrote before it died
        self._stop_reading()
        if not self.ready.done():
            self.ready.set_exception(
                TemplateUnavailable(
                    f"the template exited with code {self.exit_code} before it was ready (log: {self.log_path})"
                )
            )
        for pending in self._pending.values():
            if not pending.done():
                pending.set_exception(TemplateUnavailable(f"the template exited with code {self.exit_code}"))
        for pid, exited in self.children.items():
            watch_orphan(pid, exited)  # our instances outlive their template
        self.children = {}
        if self.group is not None:  # what its user code forked at import goes with it
            await asyncio.to_thread(self.group.kill_all)
            self.group.remove()
        self.on_death(self)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def close(self) -> None:
        """Stop the template (its instances are not touched); waits for it to exit."""
        self.closing = True
        self._stop_reading()  # EOF on its control socket: it exits by itself
        if self.process is None or self._watcher is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._watcher), CLOSE_GRACE_S)
        except TimeoutError:
            self.kill()
            await self._watcher

    def info(self) -> dict[str, object]:
        """What it is and costs (memory read from /proc now; PSS counts shared pages once)."""
        ready = self.ready.result() if self.ready.done() and not self.ready.exception() else None
        rss_mb, pss_mb = memory_mb(self.pid) if self.pid is not None and self.alive else (None, None)
        return {
            "pid": self.pid,
            "state": "ready" if ready else ("starting" if not self.ready.done() else "failed"),
            "code_dir": self.key.code_dir,
            "module": self.key.module,
            "attribute": self.key.attribute,
            "load_once": self.key.load_once,
            "gpu": self.key.gpu,
            "import_ms": ready.import_ms if ready else None,
            "setup_ms": ready.setup_ms if ready else None,
            "threads": ready.threads if ready else None,
            "forks": self.forks,
            "instances": sorted(self.children),
            "created_at": self.created_at,
            "built_at": self.built_at,
            "idle_s": round(self.idle_s(time.monotonic()), 1),
            "rss_mb": rss_mb,
            "pss_mb": pss_mb,
            "log": str(self.log_path),
        }


def watch_orphan(pid: int, exited: asyncio.Future[int | None]) -> None:
    """Resolve ``exited`` (with None: no code known) when ``pid``, not our child, is gone."""
    if exited.done():
        return
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        exited.set_result(None)
        return
    except (OSError, AttributeError):  # no pidfd here (old kernel, not Linux): poll
        task = loop.create_task(_poll_orphan(pid, exited))
        _background.add(task)
        task.add_done_callback(_background.discard)
        return

    def gone() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, gone)


async def _poll_orphan(pid: int, exited: asyncio.Future[int | None]) -> None:
    while process_alive(pid) and not exited.done():
        await asyncio.sleep(ORPHAN_POLL_S)
    if not exited.done():
        exited.set_result(None)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped by its parent, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
