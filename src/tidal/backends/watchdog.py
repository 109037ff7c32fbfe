"""Memory limits where no control group can be made (an ordinary user, or a host whose cgroups are
not writable): an RSS watchdog, the fallback the sandbox issue asks for.

Every ``interval_s`` it sums the resident memory of each instance and the processes it started
(read from /proc), and SIGKILLs an instance, with what it started, once the sum passes its
``memory``. It samples, so a spike shorter than the interval can slip through, and it enforces
neither CPU nor a process count: ``tidal status`` says so. The decision is ``over_limit``, pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass

log = logging.getLogger("tidal.backends.local")

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
INTERVAL_S = 0.2


def over_limit(resident_kb: dict[str, int], limits_mb: dict[str, int]) -> list[str]:
    """The instances whose resident memory passed their limit.

    >>> over_limit({"a": 300 * 1024, "b": 10}, {"a": 256, "b": 256})
    ['a']
    """
    return [name for name, kb in resident_kb.items() if kb > limits_mb.get(name, 1 << 30) * 1024]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of each of its threads, recursively)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as file:
                    queue.extend(int(child) for child in file.read().split())
    return found


def resident_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as file:
            total += int(file.read().split()[1]) * PAGE_KB
    return total


@dataclass
class _Watched:
    pid: int
    limit_mb: int
    killed: bool = False


class MemoryWatchdog:
    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._watched: dict[str, _Watched] = {}
        # Killed instances, kept after ``forget``: the router may ask why one died after the
        # backend already saw it exit.
        self._killed: set[str] = set()

    def watch(self, instance: str, pid: int, limit_mb: int) -> None:
        self._watched[instance] = _Watched(pid, limit_mb)

    def forget(self, instance: str) -> None:
        self._watched.pop(instance, None)

    def killed(self, instance: str) -> bool:
        return instance in self._killed

    def check(self) -> list[str]:
        """Sample every instance once; kill those over their limit. Returns who was killed."""
        trees = {name: descendants(w.pid) for name, w in self._watched.items() if not w.killed}
        usage = {name: resident_kb(pids) for name, pids in trees.items()}
        limits = {name: self._watched[name].limit_mb for name in trees}
        victims = over_limit(usage, limits)
        for name in victims:
            self._watched[name].killed = True
            if len(self._killed) > 10_000:
                self._killed.clear()
            self._killed.add(name)  # before the kill: the connection drops as soon as it dies
            log.warning("instance %s uses %d MiB, over its memory limit of %d MiB: killed",
                        name, usage[name] // 1024, limits[name])  # fmt: skip
            for pid in trees[name]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return victims

    async def run(self) -> None:
        """The gateway's memory-watchdog loop (idle where control groups enforce memory)."""
        while True:
            await asyncio.sleep(self.interval_s)
            if self._watched:
                await asyncio.to_thread(self.check)
