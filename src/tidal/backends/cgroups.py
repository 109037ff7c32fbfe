"""Enforced limits: each instance (and each template) in a control group of its own.

memory -> ``memory.limit_in_bytes`` (the kernel kills the group's process past it: OOM),
cpu -> a CFS quota of ``cpu`` cores per 100 ms, pids -> ``pids.max`` (fork bombs), and the
group is how every process of an instance is found and killed when it stops, whatever it
forked or however it detached (``setsid``). This host mounts cgroup v1 controllers; the
groups are made under the gateway's own group of each controller, as ``tidal-<gateway pid>/NAME``.
Without writable controllers nothing is enforced, and ``tidal status`` says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tidal.backends.local")

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu", "pids", "freezer")
CPU_PERIOD_US = 100_000
DEFAULT_PIDS_MAX = 512  # threads count too: torch and onnxruntime start a few per core


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu: float
    pids: int = DEFAULT_PIDS_MAX


def _own_group(controller: str, proc_cgroup: str) -> str | None:
    """The gateway's path in ``controller``'s hierarchy, from /proc/self/cgroup ("4:memory:/a/b")."""
    for line in proc_cgroup.splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path
    return None


class Group:
    """One instance's (or template's) group in every controller that is available."""

    def __init__(self, dirs: dict[str, Path], limits: Limits) -> None:
        self.dirs = dirs
        self.limits = limits

    def add(self, pid: int) -> None:
        for folder in self.dirs.values():
            (folder / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        folder = self.dirs.get("pids") or self.dirs.get("memory") or next(iter(self.dirs.values()), None)
        if folder is None:
            return []
        with contextlib.suppress(OSError):
            return [int(line) for line in (folder / "cgroup.procs").read_text().split()]
        return []

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this group for passing its memory limit."""
        folder = self.dirs.get("memory")
        if folder is None:
            return False
        with contextlib.suppress(OSError, ValueError):
            for line in (folder / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
        return False

    def kill_all(self, timeout_s: float = 2.0, spare: frozenset[int] = frozenset()) -> int:
        """SIGKILL every process of the group but ``spare`` (frozen first, so none can fork meanwhile)."""
        freezer = self.dirs.get("freezer")
        killed = 0
        deadline = time.monotonic() + timeout_s
        while (pids := [pid for pid in self.pids() if pid not in spare]) and time.monotonic() < deadline:
            if freezer is not None:
                with contextlib.suppress(OSError):
                    (freezer / "freezer.state").write_text("FROZEN")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            if freezer is not None:
                with contextlib.suppress(OSError):
                    (freezer / "freezer.state").write_text("THAWED")  # killed processes die once thawed
            time.sleep(0.005)
        return killed

    def remove(self) -> None:
        for folder in self.dirs.values():
            with contextlib.suppress(OSError):
                folder.rmdir()


class Cgroups:
    """Where this gateway's groups live; ``enforced`` is False when no controller is writable."""

    def __init__(self, bases: dict[str, Path]) -> None:
        self.bases = bases

    @property
    def enforced(self) -> bool:
        return "memory" in self.bases and "pids" in self.bases

    def describe(self) -> str:
        if not self.bases:
            return "not enforced (no writable cgroup controllers; run tidal as root on a host with cgroups)"
        return "cgroup v1: " + ", ".join(sorted(self.bases))

    @classmethod
    def detect(cls, name: str, root: Path = CGROUP_ROOT) -> Cgroups:
        """Make ``name`` under the gateway's own group in each writable v1 controller.

        ``TIDAL_CGROUPS=0`` makes none (the RSS watchdog then limits memory; for tests of it).
        """
        if os.environ.get("TIDAL_CGROUPS", "1") == "0":
            return cls({})
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return cls({})
        bases: dict[str, Path] = {}
        for controller in CONTROLLERS:
            own = _own_group(controller, proc_cgroup)
            mount = root / controller
            if own is None or not (mount / "cgroup.procs").exists():
                continue
            base = mount / own.lstrip("/") / name
            try:
                base.mkdir(exist_ok=True)
            except OSError as exc:
                log.debug("cgroup controller %s not usable: %s", controller, exc)
                continue
            bases[controller] = base
        return cls(bases)

    def create(self, name: str, limits: Limits) -> Group:
        dirs: dict[str, Path] = {}
        for controller, base in self.bases.items():
            folder = base / name
            folder.mkdir(exist_ok=True)
            dirs[controller] = folder
        group = Group(dirs, limits)
        self.apply(group, limits)
        return group

    def apply(self, group: Group, limits: Limits) -> None:
        writes: list[tuple[str, str, str]] = [
            ("memory", "memory.limit_in_bytes", str(limits.memory_mb * 1024 * 1024)),
            ("memory", "memory.swappiness", "0"),  # over the limit means killed, not swapped out
            ("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
            ("cpu", "cpu.cfs_quota_us", str(max(1000, int(limits.cpu * CPU_PERIOD_US)))),
            ("pids", "pids.max", str(limits.pids)),
        ]
        for controller, filename, value in writes:
            folder = group.dirs.get(controller)
            if folder is not None:
                with contextlib.suppress(OSError):  # swappiness is refused on some kernels: not vital
                    (folder / filename).write_text(value)

    def close(self) -> None:
        """Remove this gateway's (empty) groups, killing whatever is still in them."""
        for base in self.bases.values():
            for folder in sorted(base.glob("*"), reverse=True):
                if folder.is_dir():
                    Group({"x": folder}, Limits(0, 0)).kill_all(0.5)
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()


def sweep_stale(prefix: str = "tidal-", root: Path = CGROUP_ROOT) -> None:
    """Remove groups left by gateways that were killed (their pid is gone), and their processes."""
    with contextlib.suppress(OSError):
        proc_cgroup = Path("/proc/self/cgroup").read_text()
        for controller in CONTROLLERS:
            own = _own_group(controller, proc_cgroup)
            if own is None:
                continue
            parent = root / controller / own.lstrip("/")
            for stale in parent.glob(prefix + "*"):
                pid = stale.name.removeprefix(prefix)
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    Cgroups({controller: stale}).close()
