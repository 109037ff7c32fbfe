"""What a function's processes may see, who they run as and what environment they get.

Decided here, in the gateway, and carried out by ``tidal.runtime.sandbox`` inside the template
(or a spawned instance) before user code runs. Three modes:

- ``users`` (tidal runs as root): a mount namespace per template that hides the state dir, /tmp
  and root's home (the function's code, the interpreter and the virtualenv are bound back,
  read-only), and a uid of the function's own.
- ``namespace`` (tidal runs as an ordinary user): the same mount view inside a user namespace.
  The uid stays the gateway's, so the kernel still lets an instance signal the gateway; only
  ``users`` separates processes.
- ``off`` (``tidal up --insecure-no-sandbox``): no sandbox, said loudly at start and in status.

Whatever the mode, instances never inherit the gateway's environment (keys, URLs, cloud
credentials): they get a short fixed list plus the spec's ``env``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path, PurePosixPath

import tidal
from tidal.runtime.sandbox import SandboxPlan

log = logging.getLogger("tidal.backends.local")

# Function uids live far above any real account's (ordinary ones start at 1000, nobody is 65534).
UID_BASE = 1 << 24
UID_SPAN = 1 << 24
# Scratch space of a function: an empty tmpfs of its own over each of these.
SCRATCH_PATHS = ("/tmp", "/var/tmp", "/dev/shm")
# What an instance inherits from the gateway's environment; everything else is dropped.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class SandboxMode(StrEnum):
    USERS = "users"
    NAMESPACE = "namespace"
    OFF = "off"


def choose_mode(insecure_no_sandbox: bool, euid: int | None = None) -> SandboxMode:
    if insecure_no_sandbox:
        return SandboxMode.OFF
    return SandboxMode.USERS if (os.geteuid() if euid is None else euid) == 0 else SandboxMode.NAMESPACE


def function_uid(state_dir: Path, function: str) -> int:
    """A uid for ``function`` of this state dir: stable across restarts, distinct across functions.

    Hashed, not allocated: nothing to store, the same after a restart, and two gateways on
    one host (two state dirs) land on different uids for their functions.
    """
    digest = hashlib.blake2b(f"{state_dir}\0{function}".encode(), digest_size=8).digest()
    return UID_BASE + int.from_bytes(digest, "big") % UID_SPAN


def _contains(path: str, inner: str) -> bool:
    return PurePosixPath(inner).is_relative_to(path)


def _minimal(paths: list[str]) -> list[str]:
    """Drop paths that lie inside another one of the list."""
    unique = sorted(set(paths), key=len)
    kept: list[str] = []
    for path in unique:
        if not any(PurePosixPath(path).is_relative_to(parent) for parent in kept):
            kept.append(path)
    return sorted(kept)


def runtime_paths() -> list[str]:
    """What an instance needs to run Python and tidal's worker: interpreter, stdlib, virtualenv."""
    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
    ]
    candidates += [entry for entry in sys.path if entry]
    candidates.append(str(Path(tidal.__file__).resolve().parent.parent))  # an editable install's src/
    found = []
    for path in candidates:
        real = os.path.realpath(path)
        if os.path.exists(real):
            found.append(real)
            if real != os.path.abspath(path) and os.path.exists(path):
                found.append(os.path.abspath(path))  # the symlinked spelling too (venv/bin/python)
    return _minimal(found)


class Isolation:
    """The sandbox plans and environments of one gateway's functions."""

    def __init__(self, state_dir: Path, mode: SandboxMode) -> None:
        self.state_dir = state_dir.resolve()
        self.mode = mode
        self._runtime = runtime_paths() if mode is not SandboxMode.OFF else []
        self._uids: dict[str, int] = {}

    def describe(self) -> str:
        return {
            SandboxMode.USERS: "users (a uid and a mount view per function)",
            SandboxMode.NAMESPACE: "namespace (a mount view per function; same uid as the gateway)",
            SandboxMode.OFF: "OFF (--insecure-no-sandbox: function code can read tidal's state and keys)",
        }[self.mode]

    def uid(self, function: str) -> int | None:
        if self.mode is not SandboxMode.USERS:
            return None
        uid = self._uids.get(function)
        if uid is None:
            uid = function_uid(self.state_dir, function)
            taken = set(self._uids.values())
            while uid in taken:  # a hash collision within this gateway: take the next free one
                uid = UID_BASE + (uid - UID_BASE + 1) % UID_SPAN
            self._uids[function] = uid
        return uid

    def plan(self, function: str, code_dir: str, shown: Sequence[str] = ()) -> SandboxPlan | None:
        """``shown``: more paths inside hidden ones to bind back read-only (an environment)."""
        if self.mode is SandboxMode.OFF:
            return None
        home = os.path.expanduser("~")
        hide = [str(self.state_dir), *SCRATCH_PATHS, "/root", home]
        uid = self.uid(function)
        hidden = _minimal([path for path in hide if path != "/"])
        # A runtime path that holds a hidden one (a script's folder in /tmp, say) cannot come back whole.
        runtime = [path for path in self._runtime if not any(_contains(path, h) for h in hidden)]
        return SandboxPlan(
            code_dir=code_dir,
            hide=hidden,
            keep=_minimal([*runtime, code_dir, *shown]),
            scratch=list(SCRATCH_PATHS),
            uid=uid,
            gid=uid,
            user_namespace=self.mode is SandboxMode.NAMESPACE,
        )

    def prepare_code(self, code_dir: str) -> None:
        """Code is read by the function's own uid: world-readable files in a dir only its
        namespace shows (the state dir itself stays closed to everyone else).
        """
        if self.mode is not SandboxMode.USERS:
            return
        for folder, _dirs, files in os.walk(code_dir):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)


def instance_env(spec_env: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """An instance's whole environment: a short fixed list, the spec's ``env``, then tidal's own."""
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    # USER and LOGNAME too: a function's uid has no passwd entry, so getpass.getuser() (torch's cache
    # paths call it at import) would fail, and a torch import then broke half-way (seen on a GPU host).
    env.update(
        {"HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1", "USER": "tidal-fn", "LOGNAME": "tidal-fn"}
    )
    env.update(spec_env)
    env.update(extra)
    return env
