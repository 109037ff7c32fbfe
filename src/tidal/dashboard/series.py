"""One function's time series for the dashboard: requests, errors, latency, cold starts, instances.

Pure: the store counts activations per window (``RevisionWindow``), the sampler keeps instance
counts; this module cuts time into buckets and turns both into columns a chart can draw.

Buckets are aligned to multiples of the step in epoch seconds (step 5 s: ..., 100, 105, 110), so
the bucket [100, 105) is the same on every poll and, once settled, is computed once and cached.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tidal.rollout.stats import OK, percentile
from tidal.spec import parse_duration
from tidal.store.models import RevisionWindow

MAX_SINCE_S = 3600.0  # the sampler keeps an hour of instance counts; older buckets would be blank
MIN_STEP_S = 1.0
MAX_BUCKETS = 720  # 1 h at 5 s, 15 min at 1.25 s: enough points for a chart, bounded work a poll
# A bucket is computed again on every poll until it ended this long ago: a call is recorded when it
# ends (in batches), so a bucket's calls still running now appear later. Calls longer than this
# that started in a settled bucket are missing from the chart (never from the store).
SETTLE_S = 60.0


@dataclass(frozen=True, slots=True)
class Window:
    """What the chart covers: the last ``since_s`` seconds in buckets of ``step_s``."""

    since_s: float
    step_s: float

    def starts(self, now: float) -> list[float]:
        """Bucket starts from the one holding ``now - since_s`` to the one holding ``now``.

        >>> Window(20.0, 5.0).starts(112.0)
        [90.0, 95.0, 100.0, 105.0, 110.0]
        """
        first = math.floor((now - self.since_s) / self.step_s)
        last = math.floor(now / self.step_s)
        return [index * self.step_s for index in range(first, last + 1)]


def parse_window(since: str, step: str) -> Window:
    """``since`` and ``step`` as durations (``15m``, ``5s``); ValueError says what is wrong."""
    since_s, step_s = parse_duration(since), parse_duration(step)
    if not 0 < since_s <= MAX_SINCE_S:
        raise ValueError(f"since must be more than 0 and at most {MAX_SINCE_S:g}s (1h); got {since!r}")
    if step_s < MIN_STEP_S:
        raise ValueError(f"step must be at least {MIN_STEP_S:g}s; got {step!r}")
    if since_s / step_s > MAX_BUCKETS:
        raise ValueError(
            f"since/step gives {math.ceil(since_s / step_s)} buckets; at most {MAX_BUCKETS}: "
            f"make the step at least {since_s / MAX_BUCKETS:g}s"
        )
    return Window(since_s, step_s)


@dataclass(frozen=True, slots=True)
class Bucket:
    """The calls that started in [start, start + step)."""

    start: float
    requests: int = 0
    errors: int = 0  # every call that did not end ok (the function's faults and the caller's)
    cold_starts: int = 0
    p50_ms: float | None = None  # of warm calls: cold starts are their own series
    p99_ms: float | None = None


def bucket_of(start: float, windows: Iterable[RevisionWindow]) -> Bucket:
    """Sum the revisions' windows into one bucket; percentiles over all revisions' warm calls.

    >>> w = [RevisionWindow("a", {"ok": 3, "error": 1}, 1, [2.0, 4.0]), RevisionWindow("b", {"ok": 1}, 0, [3.0])]
    >>> bucket_of(100.0, w)
    Bucket(start=100.0, requests=5, errors=1, cold_starts=1, p50_ms=3.0, p99_ms=4.0)
    """
    windows = list(windows)
    requests = sum(sum(window.statuses.values()) for window in windows)
    ok = sum(window.statuses.get(OK, 0) for window in windows)
    warm_ms = list(heapq.merge(*(window.warm_ms for window in windows)))
    return Bucket(
        start,
        requests,
        requests - ok,
        sum(window.cold for window in windows),
        percentile(warm_ms, 50),
        percentile(warm_ms, 99),
    )


def settled(start: float, step_s: float, now: float) -> bool:
    """Whether the bucket ended at least SETTLE_S ago (then it is cached)."""
    return start + step_s <= now - SETTLE_S


@dataclass(frozen=True, slots=True)
class InstanceSample:
    """The function's instances at one moment, summed over its serving revisions."""

    at: float
    ready: int
    desired: int


def instances_per_bucket(
    samples: Sequence[InstanceSample], starts: Sequence[float], step_s: float
) -> tuple[list[int | None], list[int | None]]:
    """Per bucket, the last sample taken in it (ready, desired); None where no sample was taken.

    >>> s = [InstanceSample(101.0, 0, 1), InstanceSample(103.0, 1, 1), InstanceSample(111.0, 0, 0)]
    >>> instances_per_bucket(s, [100.0, 105.0, 110.0], 5.0)
    ([1, None, 0], [1, None, 0])
    """
    ready: list[int | None] = [None] * len(starts)
    desired: list[int | None] = [None] * len(starts)
    if not starts:
        return ready, desired
    first = starts[0]
    for sample in samples:  # oldest first: a later sample in the same bucket overwrites
        index = math.floor((sample.at - first) / step_s)
        if 0 <= index < len(starts):
            ready[index], desired[index] = sample.ready, sample.desired
    return ready, desired


def series_body(
    function: str,
    window: Window,
    now: float,
    buckets: Sequence[Bucket],
    samples: Sequence[InstanceSample],
    events: Iterable[dict[str, object]],
) -> dict[str, object]:
    """The JSON answer of ``GET /v1/functions/NAME/series``: one column a measure, one row a bucket."""
    starts = [bucket.start for bucket in buckets]
    ready, desired = instances_per_bucket(samples, starts, window.step_s)
    since = now - window.since_s
    # The last bucket is still filling: its rate is over the part of it that has passed.
    spans = [min(window.step_s, max(now - start, 1e-9)) for start in starts]
    return {
        "function": function,
        "now": now,
        "since_s": window.since_s,
        "step_s": window.step_s,
        "settle_s": SETTLE_S,
        "buckets": starts,
        "requests": [bucket.requests for bucket in buckets],
        "rps": [round(bucket.requests / span, 3) for bucket, span in zip(buckets, spans, strict=True)],
        "errors": [bucket.errors for bucket in buckets],
        "cold_starts": [bucket.cold_starts for bucket in buckets],
        "p50_ms": [bucket.p50_ms for bucket in buckets],
        "p99_ms": [bucket.p99_ms for bucket in buckets],
        "ready": ready,
        "desired": desired,
        "scaling_events": [event for event in events if _number(event.get("at")) >= since],
        "totals": {
            "requests": sum(bucket.requests for bucket in buckets),
            "errors": sum(bucket.errors for bucket in buckets),
            "cold_starts": sum(bucket.cold_starts for bucket in buckets),
        },
    }


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
