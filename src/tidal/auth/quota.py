"""The gateway's side of per-key limits: each limited key's state in memory, decided by the pure
``tidal.auth.limits.admit``, and the quota counts written to the store in batches.

Requests are counted when admitted (on the hot path: a dict lookup and some arithmetic, no I/O);
GB-s when the call's activation record is written (``observing`` wraps the record callback).
Counts go to ``quota_usage`` about once a second and at stop, and are read back at start, so a
used quota stays used across a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from tidal.auth.limits import (
    PERIODS,
    KeyLimits,
    KeyState,
    Period,
    Verdict,
    Window,
    add_gb_s,
    admit,
    period_start,
)
from tidal.store.models import Activation
from tidal.store.protocols import LimitStore

log = logging.getLogger("tidal.limits")

FLUSH_EVERY_S = 1.0
MB_PER_GB = 1024  # as metering bills: GB-s = memory MB / 1024 x billed ms / 1000
UsageKey = tuple[str, str, float]  # (key id, period, period start)


class Limiter:
    def __init__(self, store: LimitStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.states: dict[str, KeyState] = {}
        self.limits_of: dict[str, KeyLimits] = {}  # keys seen with limits: their calls add GB-s
        self._pending: dict[UsageKey, tuple[int, float]] = {}

    def load(self) -> None:
        """Read the usage of the current day and month windows (once, at start)."""
        now = self.clock()
        month_start = period_start("month", now)
        current: dict[str, tuple[Period, float]] = {
            period: (period, period_start(period, now)) for period in PERIODS
        }
        for key_id, name, start, requests, gb_s in self.store.quota_usage(month_start):
            period, current_start = current.get(name, ("day", -1.0))
            if start == current_start:  # older windows are over: nothing to load
                state = self.states.get(key_id, KeyState())
                windows = {**state.windows, period: Window(start, requests, gb_s)}
                self.states[key_id] = replace(state, windows=windows)

    def admit(self, key_id: str, limits: KeyLimits) -> Verdict:
        """Decide one request of a limited key, counting it when it is allowed."""
        now = self.clock()
        self.limits_of[key_id] = limits
        verdict = admit(limits, self.states.get(key_id, KeyState()), now)
        self.states[key_id] = verdict.state
        if verdict.allowed:
            for period in {quota.period for quota in limits.quotas}:
                self._count(key_id, period, verdict.state.windows[period].start, 1, 0.0)
        return verdict

    def observing(self, record: Callable[[Activation], None]) -> Callable[[Activation], None]:
        """``record`` (the activation writer), adding each limited key's GB-s first."""

        def count_then_record(activation: Activation) -> None:
            limits = self.limits_of.get(activation.key_id) if activation.key_id else None
            if limits is not None and limits.quotas and activation.billed_ms:
                self.add_gb_s(
                    activation.key_id, limits, activation.memory_mb / MB_PER_GB * activation.billed_ms / 1000
                )
            record(activation)

        return count_then_record

    def add_gb_s(self, key_id: str, limits: KeyLimits, gb_s: float) -> None:
        now = self.clock()
        state = add_gb_s(limits, self.states.get(key_id, KeyState()), gb_s, now)
        self.states[key_id] = state
        for period in {quota.period for quota in limits.quotas}:
            self._count(key_id, period, state.windows[period].start, 0, gb_s)

    def _count(self, key_id: str, period: str, start: float, requests: int, gb_s: float) -> None:
        counted = self._pending.get((key_id, period, start), (0, 0.0))
        self._pending[(key_id, period, start)] = (counted[0] + requests, counted[1] + gb_s)

    async def flush(self) -> None:
        """Write the counts gathered since the last flush (added to the stored ones)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            await asyncio.to_thread(self.store.add_quota_usage, pending)
        except Exception:
            log.exception("writing quota usage failed; retrying with the next batch")
            for (key_id, period, start), (requests, gb_s) in pending.items():
                self._count(key_id, period, start, requests, gb_s)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self.flush()
