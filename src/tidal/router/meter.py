"""Concurrency metering for the autoscaler: the time-average of requests in flight or queued.

Every change of the count adds ``count x elapsed`` to an integral; ``take(now)`` returns the
integral over the time since the previous take, i.e. the average concurrency of that interval.
2 requests held for the whole of a 1 s tick plus 1 for half of it average 2.5.
"""

from __future__ import annotations


class ConcurrencyMeter:
    def __init__(self, now: float) -> None:
        self.count = 0
        self._since = now
        self._changed = now
        self._area = 0.0
        self.arrivals = 0

    def change(self, delta: int, now: float) -> None:
        self._area += self.count * (now - self._changed)
        self._changed = now
        self.count += delta
        if delta > 0:
            self.arrivals += delta

    def take(self, now: float) -> float:
        """Average concurrency since the last take (the current count if no time passed)."""
        self._area += self.count * (now - self._changed)
        elapsed = now - self._since
        average = self._area / elapsed if elapsed > 0 else float(self.count)
        # A request that arrived and left within the interval still counts as activity.
        if average == 0 and self.arrivals:
            average = 1e-6
        self._since = self._changed = now
        self._area = 0.0
        self.arrivals = 0
        return average
