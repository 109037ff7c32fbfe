"""Enforced limits: each instance (and each template) in a control group of its own.

memory -> the kernel kills the group's process past it (OOM), cpu -> a CFS quota of ``cpu``
cores per 100 ms, pids -> a process and thread count (fork bombs); and the group is how every
process of an instance is found and killed when it stops, whatever it forked or however it
detached (``setsid``).

Two layouts, one interface:
- cgroup v1 (this host): the groups are made under the gateway's own group of each controller
  (memory, cpu, pids, freezer), as ``tidal-<gateway pid>/NAME``.
- cgroup v2 (unified): one tree. Controllers reach child groups only through a group with no
  processes of its own, so the gateway first moves itself into a leaf (``tidal-<pid>-gateway``)
  beside its subtree (``tidal-<pid>``), then enables memory, cpu and pids for both levels. That
  needs a delegated group (root, or systemd's ``Delegate=yes``); where any step is refused,
  nothing is enforced by groups and the RSS watchdog limits memory instead.
Without either, ``tidal status`` says what is and is not enforced.
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
CONTROLLERS = ("memory", "cpu", "pids", "freezer")  # v1 hierarchies used
V2_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
DEFAULT_PIDS_MAX = 512  # threads count too: torch and onnxruntime start a few per core


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu: float
    pids: int = DEFAULT_PIDS_MAX


def _own_group(controller: str, proc_cgroup: str) -> str | None:
    """The gateway's path in ``controller``'s hierarchy, from /proc/self/cgroup ("4:memory:/a/b";
    v2's line is "0::/a/b", asked for as controller "").
    """
    for line in proc_cgroup.splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(",") or (controller == "" and names == ""):
            return path
    return None


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class Group:
    """One instance's (or template's) group: a folder per controller (v1), or one folder (v2)."""

    def __init__(self, dirs: dict[str, Path], limits: Limits, unified: bool = False) -> None:
        self.dirs = dirs
        self.limits = limits
        self.unified = unified

    def _folders(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))  # v2 maps every controller to one folder

    def add(self, pid: int) -> None:
        for folder in self._folders():
            _write(folder / "cgroup.procs", str(pid))

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
        events = folder / ("memory.events" if self.unified else "memory.oom_control")
        with contextlib.suppress(OSError, ValueError):
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
        return False

    def kill_all(self, timeout_s: float = 2.0, spare: frozenset[int] = frozenset()) -> int:
        """SIGKILL every process of the group but ``spare`` (frozen first, so none can fork meanwhile)."""
        freeze = self._freezer()
        killed = 0
        deadline = time.monotonic() + timeout_s
        while (pids := [pid for pid in self.pids() if pid not in spare]) and time.monotonic() < deadline:
            if freeze is not None:
                with contextlib.suppress(OSError):
                    _write(freeze[0], freeze[1])
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            if freeze is not None:
                with contextlib.suppress(OSError):
                    _write(freeze[0], freeze[2])  # killed processes die once thawed
            time.sleep(0.005)
        return killed

    def _freezer(self) -> tuple[Path, str, str] | None:
        if self.unified:
            folder = self.dirs.get("pids")
            return (folder / "cgroup.freeze", "1", "0") if folder is not None else None
        folder = self.dirs.get("freezer")
        return (folder / "freezer.state", "FROZEN", "THAWED") if folder is not None else None

    def remove(self) -> None:
        for folder in self._folders():
            with contextlib.suppress(OSError):
                folder.rmdir()


class Cgroups:
    """Where this gateway's groups live; ``enforced`` is False when no controller is writable."""

    def __init__(self, bases: dict[str, Path], unified: bool = False) -> None:
        self.bases = bases
        self.unified = unified

    @property
    def enforced(self) -> bool:
        return "memory" in self.bases and "pids" in self.bases

    def describe(self) -> str:
        if not self.bases:
            return "no writable cgroup controllers (run tidal as root, or in a delegated cgroup)"
        return ("cgroup v2: " if self.unified else "cgroup v1: ") + ", ".join(sorted(self.bases))

    @classmethod
    def detect(cls, name: str, root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> Cgroups:
        """Make ``name`` under the gateway's own group: v1 controllers where mounted, else v2.

        ``TIDAL_CGROUPS=0`` makes none (the RSS watchdog then limits memory; for tests of it).
        """
        if os.environ.get("TIDAL_CGROUPS", "1") == "0":
            return cls({})
        if proc_cgroup is None:
            try:
                proc_cgroup = Path("/proc/self/cgroup").read_text()
            except OSError:
                return cls({})
        bases = _detect_v1(name, root, proc_cgroup)
        if bases:
            return cls(bases)
        return _detect_v2(name, root, proc_cgroup)

    def create(self, name: str, limits: Limits) -> Group:
        dirs: dict[str, Path] = {}
        for controller, base in self.bases.items():
            folder = base / name
            folder.mkdir(exist_ok=True)
            dirs[controller] = folder
        group = Group(dirs, limits, self.unified)
        self.apply(group, limits)
        return group

    def apply(self, group: Group, limits: Limits) -> None:
        memory, quota = limits.memory_mb * 1024 * 1024, max(1000, int(limits.cpu * CPU_PERIOD_US))
        writes: list[tuple[str, str, str]]
        if self.unified:
            writes = [
                ("memory", "memory.max", str(memory)),
                ("memory", "memory.swap.max", "0"),  # over the limit means killed, not swapped out
                ("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}"),
                ("pids", "pids.max", str(limits.pids)),
            ]
        else:
            writes = [
                ("memory", "memory.limit_in_bytes", str(memory)),
                ("memory", "memory.swappiness", "0"),
                ("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
                ("cpu", "cpu.cfs_quota_us", str(quota)),
                ("pids", "pids.max", str(limits.pids)),
            ]
        for controller, filename, value in writes:
            folder = group.dirs.get(controller)
            if folder is not None:
                with contextlib.suppress(OSError):  # swap files are absent without swap: not vital
                    _write(folder / filename, value)

    def close(self) -> None:
        """Remove this gateway's (empty) groups, killing whatever is still in them."""
        for base in dict.fromkeys(self.bases.values()):
            for folder in sorted(base.glob("*"), reverse=True):
                if folder.is_dir():
                    Group({"pids": folder}, Limits(0, 0), self.unified).kill_all(0.5)
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()


def _detect_v1(name: str, root: Path, proc_cgroup: str) -> dict[str, Path]:
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
    return bases


def _detect_v2(name: str, root: Path, proc_cgroup: str) -> Cgroups:
    """Our subtree in a unified hierarchy, or none (see the module docstring)."""
    own = _own_group("", proc_cgroup)
    if own is None or not (root / "cgroup.controllers").exists():
        return Cgroups({})
    parent = root / own.lstrip("/")
    try:
        available = set((parent / "cgroup.controllers").read_text().split())
        wanted = [c for c in V2_CONTROLLERS if c in available]
        if "memory" not in wanted or "pids" not in wanted:
            return Cgroups({})
        leaf = parent / f"{name}-gateway"  # no internal processes: the gateway moves into a leaf
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
        enable = " ".join(f"+{controller}" for controller in wanted)
        _write(parent / "cgroup.subtree_control", enable)
        base = parent / name
        base.mkdir(exist_ok=True)
        _write(base / "cgroup.subtree_control", enable)
    except OSError as exc:
        log.info("cgroup v2 not usable here (%s): limits fall back to the RSS watchdog", exc)
        return Cgroups({})
    return Cgroups({controller: base for controller in wanted}, unified=True)


def sweep_stale(prefix: str = "tidal-", root: Path = CGROUP_ROOT) -> None:
    """Remove groups left by gateways that were killed (their pid is gone), and their processes."""
    with contextlib.suppress(OSError):
        proc_cgroup = Path("/proc/self/cgroup").read_text()
        for controller in (*CONTROLLERS, ""):
            own = _own_group(controller, proc_cgroup)
            if own is None:
                continue
            parent = (root / controller if controller else root) / own.lstrip("/")
            for stale in parent.glob(prefix + "*"):
                pid = stale.name.removeprefix(prefix).removesuffix("-gateway")
                if stale.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    Cgroups({"pids": stale}, unified=not controller).close()
