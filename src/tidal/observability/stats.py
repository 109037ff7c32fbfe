"""Invocation counts kept on the hot path: one dict lookup and a few integer additions per record.

The gateway observes every activation record here (the Invoker's ``record`` callback is wrapped);
nothing is formatted until a scrape asks. Counts never go down while the gateway runs, as
Prometheus counters must; they start from zero with each gateway process.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tidal.router.pool import ScalingEvent
from tidal.store.models import Activation

# Upper bounds (seconds) of the duration histogram: doubling from 0.25 ms to about 2 minutes, so
# a warm echo (0.5 ms) and a model load (tens of seconds) both land in a bucket of their own size.
DURATION_BUCKETS_S: tuple[float, ...] = tuple(0.00025 * 2**step for step in range(20))

SeriesKey = tuple[str, str]  # (function, revision)


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

    def observe(self, activation: Activation, cold_kind: str = "") -> None:
        """Count one finished invocation (about a microsecond: one dict lookup, a bisect, additions).
        ``cold_kind``: how its instance started, when it was cold."""
        key = (activation.function, activation.revision)
        series = self.revisions.get(key)
        if series is None:
            series = self.revisions[key] = RevisionSeries([0] * (len(self.bounds) + 1))
        calls = series.calls
        calls[activation.status] = calls.get(activation.status, 0) + 1
        seconds = activation.duration_ms / 1000
        series.counts[bisect_left(self.bounds, seconds)] += 1  # first bound >= seconds: its `le`
        series.total_s += seconds
        series.billed_ms += activation.billed_ms
        if activation.cold:
            kind = cold_kind or "unknown"
            series.cold_starts[kind] = series.cold_starts.get(kind, 0) + 1

    def observe_scaling(self, event: ScalingEvent) -> None:
        direction = "up" if event.to_count > event.from_count else "down"
        key = (event.function, event.revision, direction)
        self.scale_events[key] = self.scale_events.get(key, 0) + 1

    def recording(
        self, record: Callable[[Activation], None], cold_kind: Callable[[Activation], str]
    ) -> Callable[[Activation], None]:
        """``record`` (the activation writer), counting each record here first."""
        observe = self.observe

        def record_and_count(activation: Activation) -> None:
            observe(activation, cold_kind(activation) if activation.cold else "")
            record(activation)

        return record_and_count


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
