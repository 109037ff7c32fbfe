"""Building the environment a revision runs in, with uv, once per set of resolved requirements.

    STATE_DIR/envs/<key>/            a virtualenv: bin/python, lib/python3.X/site-packages
      tidal-environment.json         what it holds: the requirements, the lock, when it was built
      .complete                      written last: a folder without it is a build that died
    STATE_DIR/envs/.inputs/<digest>  the key that these requirements resolved to (no resolving again)

``ensure`` resolves the requirements (``uv pip compile``, hashes included) and hashes the lock:
that is the key, so two functions, or two revisions, whose requirements resolve to the same set
share one environment, and one whose exact requirements were seen before skips resolving too.
A new key is installed with ``uv pip sync`` into a fresh virtualenv (files hard-linked from uv's
cache: a warm build takes well under a second).

Only wheels are installed (``--no-build``): building a source distribution runs the package's
own code, on the platform's host, outside any sandbox. The environment holds exactly the
resolved requirements; the runtime tidal adds at launch is described in ``runtime.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tidal.environments.requirements import (
    ENVIRONMENT_FORMAT,
    Requirements,
    host_source_args,
    pip_cert,
    pip_config_files,
    python_tag,
)

log = logging.getLogger("tidal.environments")

KEY = re.compile(r"^[0-9a-f]{64}$")
COMPLETE = ".complete"
MANIFEST = "tidal-environment.json"
UV_TIMEOUT_S = 900.0  # a first download of large wheels may be slow; a hung index must not hang deploys
MESSAGE_LINES = 12  # of uv's output, in a failed deploy's message

Progress = Callable[[str], None]


class EnvironmentBuildError(RuntimeError):
    """The requirements could not be resolved or installed; the message is uv's own."""


def uv_binary() -> str:
    """The uv executable shipped by the ``uv`` package (a dependency of tidal)."""
    from uv import find_uv_bin  # imported here: the gateway needs it only to build environments

    return str(find_uv_bin())


class EnvironmentBuilder:
    """Environments of one state dir: built on demand, shared by key, removed when unused."""

    def __init__(self, root: Path, cache_dir: Path, base_python: str | None = None) -> None:
        self.root = root
        self.cache_dir = cache_dir
        # The interpreter itself, not tidal's virtualenv: an environment inherits none of its packages.
        self.base_python: str = base_python or getattr(sys, "_base_executable", None) or sys.executable
        self._locks: dict[str, asyncio.Lock] = {}
        self._in_use: Counter[str] = Counter()  # keys of deploys under way: not to be removed
        self._background: set[asyncio.Task[None]] = set()

    def path(self, key: str) -> Path:
        return self.root / key

    def ready(self, key: str) -> bool:
        return (self.root / key / COMPLETE).exists()

    @asynccontextmanager
    async def environment(
        self, requirements: Requirements, code_dir: Path, progress: Progress
    ) -> AsyncIterator[str]:
        """The key of an environment holding ``requirements`` (built now if need be), kept from
        ``remove_unused`` until the block ends (the deploy has stored a revision using it).
        """
        key = await self._ensure(requirements, code_dir, progress)
        try:
            yield key
        finally:
            self._release(key)

    def _release(self, key: str) -> None:
        self._in_use[key] -= 1
        if not self._in_use[key]:
            del self._in_use[key]

    async def _ensure(self, requirements: Requirements, code_dir: Path, progress: Progress) -> str:
        host = self._host_sources()
        input_key = await asyncio.to_thread(requirements.input_key, code_dir, host)
        # The bundle's wheels are in the input key by content; their folder differs per code dir.
        sources = host + (["--find-links", str(code_dir / "wheels")] if requirements.wheels else [])
        known = self._known(input_key)
        if known is not None and self.ready(known):
            self._in_use[known] += 1
            progress(f"requirements unchanged: environment {known[:12]} reused")
            return known
        progress(f"resolving the requirements from {requirements.source}")
        lock = await self._resolve(requirements, code_dir, sources, progress)
        key = hashlib.sha256(f"{ENVIRONMENT_FORMAT}\0{python_tag()}\0{lock}".encode()).hexdigest()
        self._in_use[key] += 1  # from here: a removal running meanwhile leaves it (and its build) alone
        try:
            async with self._locks.setdefault(key, asyncio.Lock()):
                if self.ready(key):
                    progress(f"the same packages are installed already: environment {key[:12]} reused")
                else:
                    await self._build(key, requirements, lock, code_dir, sources, progress)
        except BaseException:
            self._release(key)
            raise
        await asyncio.to_thread(_write_atomically, self.root / ".inputs" / input_key, key)
        return key

    async def remove_unused(self, keep: Collection[str]) -> list[str]:
        """Delete environments not in ``keep`` and not held by a deploy; their keys, sorted."""
        keep = set(keep) | set(self._in_use)
        return await asyncio.to_thread(self._remove_unused, keep)

    def _remove_unused(self, keep: set[str]) -> list[str]:
        if not self.root.is_dir():
            return []
        removed = []
        for entry in sorted(self.root.iterdir()):
            if KEY.match(entry.name) and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        inputs = self.root / ".inputs"
        if inputs.is_dir():
            for pointer in inputs.iterdir():
                key = _read(pointer)
                if key is None or not (self.root / key).exists():
                    pointer.unlink(missing_ok=True)
        return removed

    def _known(self, input_key: str) -> str | None:
        key = _read(self.root / ".inputs" / input_key)
        return key if key is not None and KEY.match(key) else None

    def _host_sources(self) -> list[str]:
        sources = host_source_args()
        if "--extra-index-url" in sources and "UV_INDEX_STRATEGY" not in os.environ:
            sources += ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version of any index
        return sources

    def _uv_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("UV_CACHE_DIR", str(self.cache_dir))
        env["UV_PYTHON_DOWNLOADS"] = "never"  # the environment uses the gateway's own interpreter
        env["UV_NO_PROGRESS"] = "1"
        env.pop("VIRTUAL_ENV", None)
        cert = pip_cert(os.environ, pip_config_files(os.environ, os.path.expanduser("~"), sys.prefix))
        if cert and "SSL_CERT_FILE" not in env:
            env["SSL_CERT_FILE"] = cert
        return env

    async def _resolve(
        self, requirements: Requirements, code_dir: Path, sources: list[str], progress: Progress
    ) -> str:
        with tempfile.TemporaryDirectory(prefix="tidal-resolve-") as scratch:
            if requirements.file is not None:
                wanted = str(code_dir / requirements.file)
            else:
                wanted = os.path.join(scratch, "requirements.in")
                Path(wanted).write_text(requirements.text)
            lock = os.path.join(scratch, "requirements.lock")
            await self._uv(
                ["pip", "compile", wanted, "--output-file", lock, "--python", self.base_python, "--no-build",
                 "--generate-hashes", "--no-header", "--no-annotate", "--quiet", *sources],
                code_dir, progress, "resolving the requirements failed",
            )  # fmt: skip
            return Path(lock).read_text()

    async def _build(
        self, key: str, requirements: Requirements, lock: str, code_dir: Path, sources: list[str],
        progress: Progress,
    ) -> None:  # fmt: skip
        target = self.path(key)
        started = time.perf_counter()
        await asyncio.to_thread(shutil.rmtree, target, True)  # a build that died half-way
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            await self._uv(
                ["venv", str(target), "--python", self.base_python, "--no-project", "--quiet"],
                code_dir, progress, "creating the environment failed",
            )  # fmt: skip
            lock_path = target / "requirements.lock"
            lock_path.write_text(lock)
            python = str(target / "bin" / "python")
            await self._uv(
                ["pip", "sync", str(lock_path), "--python", python, "--no-build", *sources],
                code_dir, progress, "installing the requirements failed",
            )  # fmt: skip
            manifest = {
                "key": key,
                "requirements": requirements.text,
                "source": requirements.source,
                "python": python_tag(),
                "built_at": time.time(),
                "build_s": round(time.perf_counter() - started, 3),
            }
            (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
            await asyncio.to_thread(_readable_by_all, target)  # functions run as uids of their own
            (target / COMPLETE).touch()
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, target, True)
            raise
        progress(f"environment {key[:12]} built in {time.perf_counter() - started:.1f} s")
        self._in_background(self._compile(target))

    async def _compile(self, target: Path) -> None:
        """Write the environment's bytecode, after the deploy and at low priority.

        Instances see the environment read-only, so without it every template build would compile
        the packages it imports again (about 1 s more for scikit-learn here); compiling during the
        deploy would make it several seconds slower. Each .pyc is written atomically: a template
        importing meanwhile reads the source or a whole file.
        """
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            "nice", "-n", "10", str(target / "bin" / "python"), "-m", "compileall", "-q", "-j", "0", str(target / "lib"),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await process.wait()
        except BaseException:
            process.kill()
            raise
        if target.exists():
            await asyncio.to_thread(_readable_by_all, target)
            log.info(
                "environment %s: bytecode written in %.1f s", target.name[:12], time.perf_counter() - started
            )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop background work (bytecode compiling): what it did not write, imports compile."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _uv(self, args: list[str], cwd: Path, progress: Progress, failure: str) -> None:
        """Run uv, streaming its output lines to ``progress``; EnvironmentBuildError with its last
        lines when it fails.
        """
        process = await asyncio.create_subprocess_exec(
            uv_binary(), *args, cwd=cwd, env=self._uv_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        lines: list[str] = []

        async def read() -> None:
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    lines.append(line)
                    progress(line)

        try:
            await asyncio.wait_for(asyncio.gather(read(), process.wait()), UV_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            raise EnvironmentBuildError(f"{failure}: uv took longer than {UV_TIMEOUT_S:g} s") from None
        except BaseException:
            process.kill()
            raise
        if process.returncode != 0:
            detail = "\n".join(lines[-MESSAGE_LINES:]) or f"uv exited with code {process.returncode}"
            raise EnvironmentBuildError(f"{failure}:\n{detail}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(staging, path)


def _readable_by_all(root: Path) -> None:
    """Directories 0755, files 0644 (0755 when executable): read-only for everyone but us."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            os.chmod(path, 0o755 if mode & 0o111 else 0o644)
