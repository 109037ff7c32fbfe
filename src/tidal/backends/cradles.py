"""Cradles: the control group a template's next instance is born in.

Moving a process into a group takes a kernel lock whose first use after a quiet spell waits for
an RCU grace period: 4-10 ms measured here after 1 s idle, right on a cold start's path. A child
is born in its parent's groups for free, so each template waits, between forks, inside a fresh
group (its cradle) with nothing else in it. A fork then needs no move: the new instance is
already in a group of its own, which takes that instance's limits. Afterwards, off the cold
path, the template moves on into a new cradle. Until it has, a second fork falls back to moving
its child after the fork.

Invariant: a cradle holds its template and nothing else; a taken cradle holds one instance and,
until the template moved on, the template too, which is why groups are discarded with the live
templates' pids excluded (``holders``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

from tidal.backends.cgroups import Cgroups, Group, Limits

log = logging.getLogger("tidal.backends.local")


class Cradles:
    def __init__(self, cgroups: Cgroups) -> None:
        self.cgroups = cgroups
        self._ready: dict[int, Group] = {}  # template pid -> the cradle it sits in now
        self._filling: set[int] = set()
        self._names = itertools.count(1)

    def holders(self) -> set[int]:
        """Templates that may still sit in a group an instance was born in: never killed with it."""
        return set(self._ready) | set(self._filling)

    def take(self, template_pid: int, limits: Limits) -> Group | None:
        """The cradle ``template_pid`` sits in, with ``limits`` applied, for the child it forks next."""
        group = self._ready.pop(template_pid, None)
        if group is not None:
            self.cgroups.apply(group, limits)
        return group

    async def refill(self, template_pid: int) -> None:
        """Move the template into a new, empty cradle (in a thread: the move may wait on the kernel)."""
        if template_pid in self._filling or template_pid in self._ready or not self.cgroups.enforced:
            return
        self._filling.add(template_pid)
        try:
            group = self.cgroups.create(f"cradle-{template_pid}-{next(self._names)}", Limits(64, 1.0))
            try:
                await asyncio.to_thread(group.add, template_pid)
            except OSError:  # the template is gone
                group.remove()
                return
            self._ready[template_pid] = group
        finally:
            self._filling.discard(template_pid)

    def drop(self, template_pid: int) -> None:
        """The template is gone: its cradle is empty (or holds what it left), discard it."""
        group = self._ready.pop(template_pid, None)
        if group is not None:
            with contextlib.suppress(OSError):
                group.kill_all(0.5)
            group.remove()
