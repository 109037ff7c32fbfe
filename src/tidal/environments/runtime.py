"""What an instance of a revision with requirements runs, and sees of tidal: the runtime only.

Such an instance runs ``envs/<key>/bin/python`` (the gateway's interpreter, in the revision's
virtualenv), and its ``sys.path`` is, in order:

1. ``runtime/<digest>/first`` (``PYTHONPATH``): a copy of the ``tidal`` package, so the worker
   and ``import tidal`` work; nothing else is in that folder.
2. The standard library.
3. The environment's site-packages: the bundle's resolved requirements, exactly.
4. ``runtime/<digest>/last`` (appended by ``tidal.runtime`` at import): ``msgspec``, the runtime's
   one dependency. Last, so a ``msgspec`` among the requirements is the one both use.

None of tidal's other dependencies (FastAPI, pydantic, uvicorn ...) and none of the gateway's
virtualenv is on that path. ``runtime/<digest>`` is keyed by the contents it copies, so an
upgraded tidal gets a fresh copy and instances still running keep the old one.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

import tidal

RUNTIME_DEPS_VARIABLE = "TIDAL_RUNTIME_DEPS"


@dataclass(frozen=True)
class Interpreter:
    """How to start Python for one revision: the executable, what to add to its environment,
    and the paths its sandbox must show (read-only)."""

    python: str
    env: dict[str, str] = field(default_factory=dict)
    paths: tuple[str, ...] = ()


def _packages() -> dict[str, Path]:
    return {"first": Path(tidal.__file__).resolve().parent, "last": Path(msgspec.__file__).resolve().parent}


def _digest(packages: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for slot, folder in sorted(packages.items()):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                relative = path.relative_to(folder.parent).as_posix()
                digest.update(f"{slot}/{relative}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


def build_runtime(root: Path) -> Path:
    """``root/<digest>`` holding first/tidal and last/msgspec, copied once; its path."""
    packages = _packages()
    target = root / _digest(packages)
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".runtime-", dir=root))
    try:
        for slot, folder in packages.items():
            shutil.copytree(
                folder, staging / slot / folder.name, ignore=shutil.ignore_patterns("__pycache__")
            )
        # Instances see this read-only: without bytecode every template would compile tidal again.
        compileall.compile_dir(str(staging), quiet=1)
        for walked, _dirs, files in os.walk(staging):
            os.chmod(walked, 0o755)
            for name in files:
                os.chmod(os.path.join(walked, name), 0o644)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():
            raise
    # Copies of earlier releases: no instance uses them (instances end with their gateway).
    for old in root.iterdir():
        if old != target and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return target


class Environments:
    """Where each revision's Python comes from: tidal's own (no requirements) or ``envs/<key>``."""

    def __init__(self, state_dir: Path, default_python: str = sys.executable) -> None:
        self.root = state_dir / "envs"
        self.runtime_root = state_dir / "runtime"
        self.default_python = default_python
        self._runtime: Path | None = None

    def path(self, key: str) -> Path:
        return self.root / key

    def runtime(self) -> Path:
        if self._runtime is None:
            self._runtime = build_runtime(self.runtime_root)
        return self._runtime

    def interpreter(self, key: str, python_path: str | None = None) -> Interpreter:
        """The interpreter of environment ``key`` ("" = tidal's own). ``python_path``: the spec's
        own PYTHONPATH, kept after the runtime's.
        """
        if not key:
            return Interpreter(self.default_python)
        environment, runtime = self.path(key), self.runtime()
        first = str(runtime / "first")
        env = {
            "PYTHONPATH": f"{first}:{python_path}" if python_path else first,
            RUNTIME_DEPS_VARIABLE: str(runtime / "last"),
            "VIRTUAL_ENV": str(environment),
        }
        return Interpreter(str(environment / "bin" / "python"), env, (str(environment), str(runtime)))
