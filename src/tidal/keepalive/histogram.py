"""IdleHistogram: a function's idle times (end of one invocation to start of the next) in bins.

The shape follows the hybrid policy of Shahrad et al. (USENIX ATC 2020): 1-minute bins over a 4 h
range; idle times beyond the range are counted apart and the last few are kept for a forecaster.
Bins are grown lazily so a rarely invoked function costs a few bytes when persisted.
"""

from __future__ import annotations

import math

import msgspec

RECENT_OUT_OF_RANGE_KEPT = 32


class IdleHistogram(msgspec.Struct):
    """Counts of idle times per ``bin_s`` bin over ``[0, range_s)``.

    >>> h = IdleHistogram()
    >>> for idle_s in (30.0, 290.0, 295.0, 299.0):
    ...     h.add(idle_s)
    >>> h.percentile(50), h.percentile(99)
    (300.0, 300.0)
    """

    bin_s: float = 60.0
    range_s: float = 4 * 3600.0
    counts: list[int] = []
    out_of_range: int = 0
    recent_out_of_range: list[float] = []
    total: int = 0

    @property
    def bin_count(self) -> int:
        """Bins over the whole range: 4 h of 1-minute bins -> 240."""
        return max(1, math.ceil(self.range_s / self.bin_s))

    @property
    def in_range(self) -> int:
        return self.total - self.out_of_range

    def add(self, idle_s: float) -> None:
        """Count one idle time (seconds; a negative one, from overlapping calls, counts as 0)."""
        idle_s = max(0.0, float(idle_s))
        self.total += 1
        if idle_s >= self.range_s:
            self.out_of_range += 1
            self.recent_out_of_range.append(idle_s)
            del self.recent_out_of_range[:-RECENT_OUT_OF_RANGE_KEPT]
            return
        index = min(int(idle_s // self.bin_s), self.bin_count - 1)
        if index >= len(self.counts):
            self.counts.extend([0] * (index + 1 - len(self.counts)))
        self.counts[index] += 1

    def percentile(self, p: float) -> float:
        """Seconds: the upper edge of the bin holding the ``p``-th percentile of in-range idle times.

        Out-of-range idle times are not part of it (the policy looks at their share apart);
        0.0 when no idle time fell in range. With counts [0, 3, 1] and 1-minute bins, the 50th
        percentile is in bin 1 -> 120.0 s and the 99th in bin 2 -> 180.0 s.
        """
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"a percentile is between 0 and 100, not {p}")
        samples = self.in_range
        if samples <= 0:
            return 0.0
        rank = max(1, math.ceil(p / 100.0 * samples))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min((index + 1) * self.bin_s, self.range_s)
        return min(len(self.counts) * self.bin_s, self.range_s)

    def coefficient_of_variation(self) -> float:
        """Standard deviation / mean of the counts over all ``bin_count`` bins (the paper's test of
        representativeness: one sharp peak gives a high CV, idle times spread evenly a low one).

        Everything in one of 240 bins -> sqrt(239) ~ 15.5; equal counts in every bin -> 0.0;
        no in-range idle time -> 0.0.
        """
        bins = self.bin_count
        samples = sum(self.counts)
        if samples == 0:
            return 0.0
        mean = samples / bins
        squares = sum((count - mean) ** 2 for count in self.counts)
        squares += (bins - len(self.counts)) * mean * mean  # the bins never grown hold 0
        return math.sqrt(squares / bins) / mean


def encode(histogram: IdleHistogram) -> bytes:
    """JSON bytes, for persisting a histogram (SQLite) so a restart keeps what was learned."""
    return msgspec.json.encode(histogram)


def decode(data: bytes) -> IdleHistogram:
    """The histogram ``encode`` wrote; ``msgspec.ValidationError`` on malformed data."""
    return msgspec.json.decode(data, type=IdleHistogram)
