"""Per-revision statistics of a time window: request counts, error rate, latency percentiles.

Pure: the store counts activations per revision (``RevisionWindow``); this module decides what
counts as the revision's error and computes the numbers ``tidal ab`` shows and rollouts judge.

Errors are the outcomes that are the revision's fault (outcome.py's table): the function raised,
timed out, ran out of memory, lost its instance or failed to start. The caller's faults (400, 422,
401/403, 404, a client that went away) and 503s while a redeploy went on are not: they would be
the same on any revision. ``error_rate = errors / (ok + errors)``: calls the revision answered on
its merits. Latency percentiles are over warm calls only; cold starts are counted apart, since a
new revision always starts cold and its first calls would otherwise decide its p99.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tidal.invoke.outcome import OUTCOMES, OutcomeKind
from tidal.store.models import RevisionWindow

REVISION_FAULTS: frozenset[str] = frozenset(
    OUTCOMES[kind].activation_status
    for kind in (
        OutcomeKind.FUNCTION_ERROR,
        OutcomeKind.INTERNAL,
        OutcomeKind.INSTANCE_LOST,
        OutcomeKind.OUT_OF_MEMORY,
        OutcomeKind.SETUP_FAILED,
        OutcomeKind.TIMEOUT,
    )
)
OK = OUTCOMES[OutcomeKind.OK].activation_status


def percentile(ascending: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ascending values; None for none.

    >>> percentile([10.0, 20.0, 30.0, 40.0], 50), percentile([10.0, 20.0, 30.0, 40.0], 99)
    (20.0, 40.0)
    """
    if not ascending:
        return None
    rank = max(1, math.ceil(q / 100 * len(ascending)))  # 50% of 4 values: the 2nd
    return ascending[rank - 1]


@dataclass(frozen=True, slots=True)
class RevisionStats:
    """What ``tidal ab`` shows for one revision, and what a rollout judges."""

    revision: str
    requests: int = 0  # every recorded call, whoever's fault it was
    ok: int = 0
    errors: int = 0  # the revision's faults (REVISION_FAULTS)
    caller_faults: int = 0  # everything else that was not ok: not counted against the revision
    cold: int = 0
    p50_ms: float | None = None  # of warm calls
    p99_ms: float | None = None

    @property
    def judged(self) -> int:
        """Calls the revision answered on its merits: the denominator of ``error_rate``."""
        return self.ok + self.errors

    @property
    def error_rate(self) -> float | None:
        """errors / (ok + errors): 3 errors and 97 ok -> 0.03; None without a judged call."""
        return self.errors / self.judged if self.judged else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "judged": self.judged, "error_rate": self.error_rate}


def summarize(window: RevisionWindow) -> RevisionStats:
    """One revision's window as numbers: 97 ok, 3 error, 1 bad_input -> 101 requests, 3 errors."""
    requests = sum(window.statuses.values())
    ok = window.statuses.get(OK, 0)
    errors = sum(count for status, count in window.statuses.items() if status in REVISION_FAULTS)
    return RevisionStats(
        revision=window.revision,
        requests=requests,
        ok=ok,
        errors=errors,
        caller_faults=requests - ok - errors,
        cold=window.cold,
        p50_ms=percentile(window.warm_ms, 50),
        p99_ms=percentile(window.warm_ms, 99),
    )


def by_revision(windows: Sequence[RevisionWindow]) -> dict[str, RevisionStats]:
    return {window.revision: summarize(window) for window in windows}
