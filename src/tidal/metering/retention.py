"""Records do not pile up: what is older than the retention goes, and activations past a row cap.

Defaults (``tidal up --activation-retention 7d --activation-max-rows 1000000``): activations,
scaling events, rejection counts, shadow results (and their skip counts), jobs that finished
(succeeded, failed, dead or cancelled) and instance/template log files older than 7 days are deleted,
and activations beyond the newest 1,000,000 too (0 turns either limit off). ``plan_sweep`` is the
decision, a function of the policy and the clock; ``Retention`` is the loop around it: a sweep a
minute, 2,000 rows a batch, each batch one short transaction in a thread, so neither the event
loop nor the activation writer waits on it for long. A sweep finds where the row cap cuts once,
as it starts, and deletes below that point: rows that arrive during the sweep wait for the next.
Each kind of record is swept on its own: one that fails is logged and the others are still trimmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tidal.store.protocols import ActivationStore, JobStore, ScalingEventStore, ShadowStore, UsageStore

log = logging.getLogger("tidal.metering")

DAY_S = 86_400.0
DEFAULT_RETENTION = "7d"  # as `tidal up --activation-retention` takes it (tidal.spec.parse_duration)
DEFAULT_RETENTION_S = 7 * DAY_S
DEFAULT_MAX_ROWS = 1_000_000
SWEEP_EVERY_S = 60.0
BATCH_ROWS = 2_000
BATCH_PAUSE_S = 0.01  # between batches: the activation writer gets the database in between


class RecordStore(ActivationStore, ScalingEventStore, ShadowStore, JobStore, UsageStore, Protocol):
    """The part of the store that retention trims."""


@dataclass(frozen=True)
class RetentionPolicy:
    max_age_s: float = DEFAULT_RETENTION_S  # 0: records are kept whatever their age
    max_rows: int = DEFAULT_MAX_ROWS  # activations kept at most; 0: no row limit


@dataclass(frozen=True)
class Sweep:
    """What one sweep deletes: records from before ``before`` (epoch s; 0: none by age), and the
    activations beyond the newest ``keep_newest`` (0: none by count)."""

    before: float
    keep_newest: int


def plan_sweep(policy: RetentionPolicy, now: float) -> Sweep:
    """The sweep at ``now``: with 7 days and 1,000 rows, at day 10 everything from before day 3 goes.

    >>> plan_sweep(RetentionPolicy(max_age_s=7 * DAY_S, max_rows=1000), now=10 * DAY_S)
    Sweep(before=259200.0, keep_newest=1000)
    """
    before = max(0.0, now - policy.max_age_s) if policy.max_age_s > 0 else 0.0
    return Sweep(before, max(0, policy.max_rows))


def stale_logs(log_dirs: Iterable[Path], before: float, open_paths: set[Path]) -> list[Path]:
    """Log files (``*.log``, ``*.log.1``) last written before ``before``, except those still open."""
    stale = []
    for folder in log_dirs:
        for path in folder.glob("*.log*"):
            with contextlib.suppress(FileNotFoundError):
                if path not in open_paths and path.stat().st_mtime < before:
                    stale.append(path)
    return stale


class Retention:
    def __init__(
        self,
        store: RecordStore,
        policy: RetentionPolicy,
        log_dirs: Iterable[Path] = (),
        open_logs: Callable[[], set[Path]] = set,
        every_s: float = SWEEP_EVERY_S,
        batch: int = BATCH_ROWS,
        clock: Callable[[], float] = time.time,
        jobs: JobStore | None = None,
    ) -> None:
        self.store = store
        self.jobs = jobs or store  # `tidal up --queue redis://` keeps jobs out of the main store
        self.policy = policy
        self.log_dirs = list(log_dirs)
        self.open_logs = open_logs  # the log files a live process may still write
        self.every_s = every_s
        self.batch = batch
        self.clock = clock

    async def run(self) -> None:
        """Sweep now, then every ``every_s``; runs under the gateway's supervisor."""
        while True:
            await self.sweep(self.clock())
            await asyncio.sleep(self.every_s)

    async def sweep(self, now: float) -> dict[str, int]:
        """Delete what the policy says at ``now``; how many of each kind went."""
        plan = plan_sweep(self.policy, now)
        # The cutoff once a sweep, not once a batch: finding the row cap's edge walks past the newest
        # max_rows activations (a million by default), which cost more than deleting the batch did:
        # 10.5 against 3.0 us of CPU a deleted row at the cap (bench/retention.py).
        cutoff = functools.cache(lambda: self.store.activations_cutoff(plan.before, plan.keep_newest))
        parts: dict[str, Callable[[], int]] = {
            "activations": lambda: self.store.delete_activations_below(cutoff(), self.batch)
        }
        if plan.before > 0:
            parts["scaling events"] = lambda: self.store.delete_scaling_events(plan.before, self.batch)
            parts["rejection counts"] = lambda: self.store.delete_rejections(plan.before, self.batch)
            parts["shadow results"] = lambda: self.store.delete_shadow_results(plan.before, self.batch)
            parts["instance lives"] = lambda: self.store.delete_instance_lives(plan.before, self.batch)
            # Finished jobs (dead ones too) by when they ended; their idempotency keys go with them.
            parts["jobs"] = lambda: self.jobs.delete_jobs(plan.before, self.batch)
        deleted = {kind: await self._in_batches(kind, delete) for kind, delete in parts.items()}
        if plan.before > 0 and self.log_dirs:
            deleted["log files"] = await self._remove_logs(plan.before)
        if any(deleted.values()):
            log.info("retention: deleted %s", ", ".join(f"{n} {kind}" for kind, n in deleted.items() if n))
        return deleted

    async def _in_batches(self, kind: str, delete: Callable[[], int]) -> int:
        total = 0
        try:
            while (count := await asyncio.to_thread(delete)) > 0:
                total += count
                if count < self.batch:
                    break
                await asyncio.sleep(BATCH_PAUSE_S)
        except Exception:
            log.exception(
                "retention: deleting old %s failed (%d deleted); the next sweep retries", kind, total
            )
        return total

    async def _remove_logs(self, before: float) -> int:
        def remove() -> int:
            removed = 0
            for path in stale_logs(self.log_dirs, before, self.open_logs()):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
            return removed

        try:
            return await asyncio.to_thread(remove)
        except OSError:
            log.exception("retention: removing old log files failed; the next sweep retries")
            return 0
