"""Local backend: each instance is its own OS process on this host.

The backend binds a listening Unix socket, hands it to the child as an inherited fd, and returns
at once; the router connects immediately (the kernel queues the connection until the child
accepts), so readiness is a Ready frame, not polling. The child dies with the gateway
(PR_SET_PDEATHSIG) and also exits when its connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from tidal.backends.base import Capacity, ExitCallback, InstanceHandle
from tidal.runtime.worker import InstanceConfig
from tidal.store.models import Revision

log = logging.getLogger("tidal.backends.local")


class LocalBackend:
    name = "local"

    def __init__(self, state_dir: Path, python: str = sys.executable) -> None:
        self.python = python
        self.log_dir = state_dir / "logs" / "instances"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to ~107 bytes: keep them short, in a per-state-dir temp folder.
        tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
        self.socket_dir = Path(tempfile.gettempdir()) / f"tidal-{tag}"
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._processes: dict[str, tuple[InstanceHandle, asyncio.subprocess.Process]] = {}
        self._callbacks: list[ExitCallback] = []
        self._watchers: set[asyncio.Task[None]] = set()

    async def start(self, revision: Revision, code_dir: str, count: int = 1) -> list[InstanceHandle]:
        return [await self._start_one(revision, code_dir) for _ in range(count)]

    async def _start_one(self, revision: Revision, code_dir: str) -> InstanceHandle:
        spec = revision.spec
        instance_id = f"{revision.id}-{secrets.token_hex(3)}"
        socket_path = self.socket_dir / f"{instance_id}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        listener.bind(str(socket_path))
        listener.listen(8)
        config = InstanceConfig(
            instance_id=instance_id,
            function=revision.function,
            revision=revision.id,
            code_dir=code_dir,
            module=revision.module,
            attribute=revision.attribute,
            is_class=revision.is_class,
            style=revision.style,
            timeout=float(spec["timeout"]),  # type: ignore[arg-type]
            concurrency=int(spec["concurrency"]),  # type: ignore[call-overload]
            memory_mb=int(spec["memory"]),  # type: ignore[call-overload]
        )
        env = {
            **os.environ,
            **{str(key): str(value) for key, value in dict(spec.get("env") or {}).items()},  # type: ignore[call-overload]
            "TIDAL_INSTANCE": msgspec.json.encode(config).decode(),
            "TIDAL_LISTEN_FD": str(listener.fileno()),
            "PYTHONUNBUFFERED": "1",
        }
        log_path = self.log_dir / f"{instance_id}.log"
        with open(log_path, "ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "tidal.runtime.worker",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(listener.fileno(),),
                cwd=code_dir,
            )
        listener.close()  # the child holds its own copy
        handle = InstanceHandle(
            id=instance_id,
            revision=revision.id,
            address=f"unix:{socket_path}",
            capacity=Capacity(cpu=float(spec["cpu"]), memory_mb=int(spec["memory"]), gpu=int(spec["gpu"])),  # type: ignore[arg-type, call-overload]
            started_at=time.time(),
            pid=process.pid,
            log_path=str(log_path),
        )
        self._processes[instance_id] = (handle, process)
        watcher = asyncio.create_task(self._watch(handle, process, socket_path))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return handle

    async def _watch(
        self, handle: InstanceHandle, process: asyncio.subprocess.Process, socket_path: Path
    ) -> None:
        handle.exit_code = await process.wait()
        self._processes.pop(handle.id, None)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        if handle.exit_code not in (0, -15):
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

    async def stop(self, instance: InstanceHandle, grace_s: float = 5.0) -> None:
        entry = self._processes.get(instance.id)
        if entry is None:
            return
        _, process = entry
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def instances(self, revision: str | None = None) -> list[InstanceHandle]:
        return [handle for handle, _ in self._processes.values() if revision in (None, handle.revision)]

    def on_exit(self, callback: ExitCallback) -> None:
        self._callbacks.append(callback)

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(handle, grace_s=2.0) for handle in self.instances()))
        for watcher in list(self._watchers):
            watcher.cancel()
