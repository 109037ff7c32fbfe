"""What the dashboard remembers in memory: instance counts over time, and settled buckets.

The router knows only how many instances each revision has *now*; the sampler asks it every
``interval_s`` and keeps the last hour per function, so a chart can show ready vs desired over
time. Activation buckets come from the store; the ones that can no longer change are cached here,
so a page polling every second reads only the last minute's buckets again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tidal.dashboard.series import MAX_SINCE_S, Bucket, InstanceSample, Window, bucket_of, settled
from tidal.router.router import Router
from tidal.store.protocols import ActivationStore

SAMPLE_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class FunctionCounts:
    """One function's instances now (what the sampler reads from the router)."""

    function: str
    ready: int
    desired: int


class InstanceHistory:
    """Samples per function, oldest first, at most ``keep_s`` old (pure: the clock is an argument)."""

    def __init__(self, keep_s: float = MAX_SINCE_S) -> None:
        self.keep_s = keep_s
        self._samples: dict[str, deque[InstanceSample]] = {}

    def add(self, at: float, counts: Iterable[FunctionCounts]) -> None:
        for count in counts:
            self._samples.setdefault(count.function, deque()).append(
                InstanceSample(at, count.ready, count.desired)
            )
        self._forget(at - self.keep_s)

    def samples(self, function: str, since: float) -> list[InstanceSample]:
        return [sample for sample in self._samples.get(function, ()) if sample.at >= since]

    def _forget(self, before: float) -> None:
        for function in list(self._samples):
            samples = self._samples[function]
            while samples and samples[0].at < before:
                samples.popleft()
            if not samples:  # a removed function's history ends when its last sample ages out
                del self._samples[function]


class InstanceSampler:
    """The supervised loop that feeds an InstanceHistory from the router every ``interval_s``."""

    def __init__(
        self,
        read_counts: Callable[[], list[FunctionCounts]],
        interval_s: float = SAMPLE_INTERVAL_S,
        clock: Callable[[], float] = time.time,  # epoch, like activation starts
    ) -> None:
        self.read_counts = read_counts
        self.interval_s = interval_s
        self.clock = clock
        self.history = InstanceHistory()

    def sample(self) -> None:
        self.history.add(self.clock(), self.read_counts())

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)


class BucketCache:
    """Settled buckets per (function, step, start); entries older than an hour are dropped."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, float, float], Bucket] = {}
        self._lock = threading.Lock()  # polls of two pages run in two threads

    def buckets(self, store: ActivationStore, function: str, window: Window, now: float) -> list[Bucket]:
        """Every bucket of ``window`` up to ``now``: cached when settled, else counted by the store.

        Blocking (store reads): call it in a thread.
        """
        result = []
        for start in window.starts(now):
            key = (function, window.step_s, start)
            with self._lock:
                bucket = self._buckets.get(key)
            if bucket is None:
                bucket = bucket_of(start, store.revision_windows(function, start, start + window.step_s))
                if settled(start, window.step_s, now):
                    with self._lock:
                        self._buckets[key] = bucket
            result.append(bucket)
        self._forget(now - MAX_SINCE_S - window.step_s)
        return result

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget(self, before: float) -> None:
        with self._lock:
            for key in [key for key in self._buckets if key[2] < before]:
                del self._buckets[key]


def function_counts(router: Router) -> list[FunctionCounts]:
    """Each served function's ready and desired instances, summed over the revisions it splits over."""
    return [
        FunctionCounts(
            name,
            sum(len(target.pool.ready) for target in route.targets),
            sum(target.pool.desired for target in route.targets),
        )
        for name, route in router.routes.items()
    ]


class DashboardState:
    """What the gateway keeps for the dashboard: the instance sampler (a supervised loop) and the cache."""

    def __init__(self, router: Router) -> None:
        self.sampler = InstanceSampler(lambda: function_counts(router))
        self.buckets = BucketCache()
