"""Every background loop of the gateway runs under one supervisor.

A loop is a coroutine meant to run until cancelled (the autoscaler's ticks, the activation
writer, later trigger sources and the job dispatcher). If it raises, or returns, the supervisor
logs why and starts it again after a backoff (1, 2, 4 ... 30 s; back to 1 s once a run lasted a
minute), so one broken loop never takes the others down and is never silently gone.
``stop`` cancels the loops in the reverse order they were added: a loop may rely on the ones
added before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tidal.retry import backoff_s

log = logging.getLogger("tidal.supervisor")

RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a run that lasted this long resets the backoff


@dataclass
class LoopStatus:
    """What `tidal status`-style views show about one loop."""

    name: str
    running: bool = False
    restarts: int = 0
    last_error: str = ""
    next_start_in_s: float = 0.0


@dataclass
class _Loop:
    status: LoopStatus
    run: Callable[[], Awaitable[None]]
    task: asyncio.Task[None] | None = None
    failures_in_a_row: int = 0
    restart_at: float = field(default=0.0)


class Supervisor:
    def __init__(
        self,
        first_s: float = RESTART_FIRST_S,
        max_s: float = RESTART_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_s, self.max_s, self.clock = first_s, max_s, clock
        self._loops: dict[str, _Loop] = {}
        self._started = False

    def add(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Supervise ``run()`` under ``name``; it starts now if the supervisor already runs."""
        if name in self._loops:
            raise ValueError(f"a loop named {name!r} is already supervised")
        loop = _Loop(LoopStatus(name), run)
        self._loops[name] = loop
        if self._started:
            self._launch(loop)

    def wrap(
        self,
        name: str,
        wrapper: Callable[[Callable[[], Awaitable[None]]], Callable[[], Awaitable[None]]],
    ) -> None:
        """Run loop ``name`` through ``wrapper`` from its next start (tidal.cluster: leader only)."""
        self._loops[name].run = wrapper(self._loops[name].run)

    def start(self) -> None:
        self._started = True
        for loop in self._loops.values():
            self._launch(loop)

    def _launch(self, loop: _Loop) -> None:
        loop.task = asyncio.get_running_loop().create_task(self._keep(loop), name=f"loop:{loop.status.name}")

    async def _keep(self, loop: _Loop) -> None:
        status = loop.status
        while True:
            started = self.clock()
            status.running, status.next_start_in_s = True, 0.0
            try:
                await loop.run()
                error = "the loop returned"
                log.error("loop %s returned; it should run until stopped", status.name)
            except asyncio.CancelledError:
                status.running = False
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.exception("loop %s crashed", status.name)
            status.running = False
            if self.clock() - started >= HEALTHY_AFTER_S:
                loop.failures_in_a_row = 0
            loop.failures_in_a_row += 1
            delay = backoff_s(loop.failures_in_a_row, self.first_s, self.max_s)
            status.restarts += 1
            status.last_error = error
            status.next_start_in_s = delay
            loop.restart_at = self.clock() + delay
            log.warning("restarting loop %s in %.1f s (%d failures in a row)", status.name, delay,
                        loop.failures_in_a_row)  # fmt: skip
            await asyncio.sleep(delay)

    def status(self) -> list[LoopStatus]:
        now = self.clock()
        for loop in self._loops.values():
            if not loop.status.running:
                loop.status.next_start_in_s = round(max(0.0, loop.restart_at - now), 1)
        return [loop.status for loop in self._loops.values()]

    async def stop(self) -> None:
        """Cancel every loop, the last added first, each after the previous one has stopped."""
        for loop in reversed(list(self._loops.values())):
            if loop.task is not None:
                loop.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop.task
        self._started = False
