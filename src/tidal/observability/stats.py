"""Invocation counts for /metrics, counted from the activation records as they are stored.

The journal folder (tidal.metering.folder) counts the records of each segment it folds and sends
the counts back with its answer (``count_rows`` then ``series``); the gateway adds them here
(``add``). So the request path counts nothing: it only journals the record, which it must do
anyway. A scrape flushes the recorder first, so it sees every call answered before it. Records
kept in memory (no journal, or its write failed) are counted as they are made (``observe``).
Counts never go down while the gateway runs, as Prometheus counters must; they start from zero
with each gateway process (records replayed from an earlier one's journal are not counted).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import TYPE_CHECKING

from msgspec.structs import astuple

from tidal.store.models import Activation, ActivationRow

if TYPE_CHECKING:
    from tidal.router.pool import ScalingEvent

# Upper bounds (seconds) of the duration histogram: doubling from 0.25 ms to about 2 minutes, so
# a warm echo (0.5 ms) and a model load (tens of seconds) both land in a bucket of their own size.
DURATION_BUCKETS_S: tuple[float, ...] = tuple(0.00025 * 2**step for step in range(20))

SeriesKey = tuple[str, str]  # (function, revision)

# Where a row (an Activation's fields in order, as the journal folder reads them) holds what is counted.
_COLUMN = {name: index for index, name in enumerate(Activation.__struct_fields__)}
_REVISION = itemgetter(_COLUMN["function"], _COLUMN["revision"])
_STATUS, _DURATION_MS, _BILLED_MS = (
    itemgetter(_COLUMN[name]) for name in ("status", "duration_ms", "billed_ms")
)
_COLD, _COLD_DETAIL = itemgetter(_COLUMN["cold"]), itemgetter(_COLUMN["cold_detail"])


@dataclass
class RevisionSeries:
    """Everything counted for one revision. ``counts[i]``: calls that took at most ``bounds[i]`` s
    (and more than the bound before it); the last slot counts what took longer than every bound."""

    counts: list[int]
    total_s: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)  # activation status -> calls
    billed_ms: int = 0
    cold_starts: dict[str, int] = field(default_factory=dict)  # fork | template-built | spawn -> calls


@dataclass
class InvocationStats:
    bounds: Sequence[float] = DURATION_BUCKETS_S
    revisions: dict[SeriesKey, RevisionSeries] = field(default_factory=dict)
    scale_events: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (fn, revision, up|down)

    def observe(self, activation: Activation) -> None:
        """Count one finished invocation (a record the journal could not take)."""
        self.count_rows((astuple(activation),))

    def count_rows(self, rows: Sequence[ActivationRow]) -> None:
        """Count finished invocations from their records as rows (Activation's fields in order)."""
        keys = list(map(_REVISION, rows))
        if not keys:
            return
        bounds_ms = [bound * 1000 for bound in self.bounds]
        # A segment usually holds one revision's records: no sort. Else a stable one, in C.
        by_revision = rows if keys.count(keys[0]) == len(keys) else sorted(rows, key=_REVISION)
        self.add(
            (function, revision, tally(list(group), bounds_ms))
            for (function, revision), group in groupby(by_revision, _REVISION)
        )

    def series(self) -> list[tuple[str, str, RevisionSeries]]:
        """What was counted, per (function, revision): what the journal folder sends the gateway."""
        return [(function, revision, series) for (function, revision), series in self.revisions.items()]

    def add(self, counted: Iterable[tuple[str, str, RevisionSeries]]) -> None:
        """Add counts made elsewhere (``series`` of the journal folder's count of a segment)."""
        for function, revision, other in counted:
            if len(other.counts) != len(self.bounds) + 1:
                raise ValueError(
                    f"{len(other.counts)} duration buckets, this histogram has {len(self.bounds) + 1}"
                )
            key = (function, revision)
            series = self.revisions.get(key) or self._new_series(key)
            series.counts = [mine + theirs for mine, theirs in zip(series.counts, other.counts, strict=True)]
            series.total_s += other.total_s
            series.billed_ms += other.billed_ms
            for status, calls in other.calls.items():
                series.calls[status] = series.calls.get(status, 0) + calls
            for kind, starts in other.cold_starts.items():
                series.cold_starts[kind] = series.cold_starts.get(kind, 0) + starts

    def _new_series(self, key: SeriesKey) -> RevisionSeries:
        series = self.revisions[key] = RevisionSeries([0] * (len(self.bounds) + 1))
        return series

    def observe_scaling(self, event: ScalingEvent) -> None:
        direction = "up" if event.to_count > event.from_count else "down"
        key = (event.function, event.revision, direction)
        self.scale_events[key] = self.scale_events.get(key, 0) + 1


def tally(rows: Sequence[ActivationRow], bounds_ms: Sequence[float]) -> RevisionSeries:
    """What ``rows`` (of one revision) count. The journal folder counts every record, thousands a
    segment: each step here is a loop in C (bisect, Counter, map, itemgetter), no Python code a
    row. Still about 3,900 instructions a record (callgrind): a tenth of what storing it costs."""
    durations = list(map(_DURATION_MS, rows))
    # A call's bucket: the first bound at or above its duration (its `le`); past them all, the last.
    buckets = Counter(map(partial(bisect_left, bounds_ms), durations))
    counts = [buckets.get(index, 0) for index in range(len(bounds_ms) + 1)]
    cold_starts = Counter(map(_COLD_DETAIL, filter(_COLD, rows)))
    if "" in cold_starts:  # a backend that does not say how its instances start
        cold_starts["unknown"] = cold_starts.pop("")
    calls = Counter(map(_STATUS, rows))
    total_s = sum(durations) / 1000
    return RevisionSeries(counts, total_s, dict(calls), sum(map(_BILLED_MS, rows)), dict(cold_starts))


def quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, interpolated linearly inside its bucket, as
    Prometheus' ``histogram_quantile`` does; ``counts`` per bucket (not cumulative), the last +Inf.
    None without observations. Past the last bound it answers the last bound.

    >>> quantile([1.0, 2.0, 4.0], [0, 10, 0, 0], 0.5)  # 10 calls in (1, 2]: the middle is 1.5
    1.5
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(bounds):
                return float(bounds[-1])
            lower = bounds[index - 1] if index > 0 else 0.0
            return float(lower + (bounds[index] - lower) * (rank - seen) / count)
        seen += count
    return float(bounds[-1])
