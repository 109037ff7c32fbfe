"""Canary rollout decisions, pure: a step's window of numbers in, a verdict out.

The rule, after a step has run for its interval (window = [step start, now)):

1. Fewer than ``min_requests`` judged canary calls (ok + the revision's errors): **Wait**. The
   step goes on and its window keeps growing; nothing is judged on too little evidence.
2. Errors: the canary's error rate must be at most
   ``max(max_error_rate, stable's error rate + 1 percentage point)``. The stable's rate counts
   only when the stable had ``min_requests`` judged calls in the same window; otherwise the limit
   is ``max_error_rate`` alone. So a canary is blamed only when it breaks the limit *and* is worse
   than what serves today (a failing dependency that fails both does not roll the canary back).
3. Latency, only when ``max_p99_ms`` is set: the canary's warm p99 must be at most
   ``max(max_p99_ms, stable's warm p99 x 1.2)`` (the stable's counts with ``min_requests`` judged
   calls, as above).
4. Breaking 2 or 3: **RollBack**, with the numbers that decided it. Passing both: **Next** step,
   or **Promote** when the next step is the last (100%): the 100% step has no stable left to
   compare with, so reaching it ends the rollout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from tidal.rollout.stats import RevisionStats
from tidal.store.models import TrafficTarget

ERROR_MARGIN = 0.01  # a canary may fail 1 percentage point more than a stable that fails too
LATENCY_MARGIN = 1.2  # ... and be 20% slower than a stable that is itself over the p99 limit
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 86_400.0
MAX_MIN_REQUESTS = 1_000_000


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_error_rate: float  # a fraction: 0.01 is 1%
    max_p99_ms: float | None  # None: latency is not judged
    min_requests: int


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


@dataclass(frozen=True, slots=True)
class Next:
    step: int  # the index of the next step
    percent: int
    reason: str


@dataclass(frozen=True, slots=True)
class Promote:
    reason: str


@dataclass(frozen=True, slots=True)
class RollBack:
    reason: str


Verdict = Wait | Next | Promote | RollBack
VERDICT_NAMES: dict[type, str] = {Wait: "wait", Next: "next", Promote: "promote", RollBack: "roll_back"}


def check_plan(steps: Sequence[int], interval_s: float, thresholds: Thresholds) -> None:
    """Raise ValueError, saying what to give instead, unless the plan can run.

    >>> check_plan([5, 25, 50, 100], 60.0, Thresholds(0.01, None, 50))
    """
    if len(steps) < 2:
        raise ValueError("steps need at least one percent below 100 before the final 100, e.g. 10,50,100")
    if any(not 1 <= step <= 100 for step in steps):
        raise ValueError(f"steps {list(steps)}: each must be a percent from 1 to 100")
    if any(later <= earlier for earlier, later in pairwise(steps)):
        raise ValueError(f"steps {list(steps)} must increase, e.g. 5,25,50,100")
    if steps[-1] != 100:
        raise ValueError(f"steps {list(steps)} must end at 100 (the canary then serves everything)")
    if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
        raise ValueError(f"interval {interval_s:g} s: must be from {MIN_INTERVAL_S:g} s to 24 h")
    if not 0 <= thresholds.max_error_rate <= 1:
        raise ValueError(f"max error rate {thresholds.max_error_rate:g}: must be a fraction from 0 to 1")
    if thresholds.max_p99_ms is not None and not thresholds.max_p99_ms > 0:
        raise ValueError(f"max p99 {thresholds.max_p99_ms:g} ms: must be above 0")
    if not 1 <= thresholds.min_requests <= MAX_MIN_REQUESTS:
        raise ValueError(f"min requests {thresholds.min_requests}: must be from 1 to {MAX_MIN_REQUESTS}")


def due(now: float, step_started_at: float, interval_s: float) -> bool:
    """Whether a step has run its interval and may be judged."""
    return now - step_started_at >= interval_s


def judge(
    steps: Sequence[int], step: int, canary: RevisionStats, stable: RevisionStats, thresholds: Thresholds
) -> Verdict:
    """The verdict on step ``step`` (not the last) from the window's numbers (see the module doc).

    >>> limits = Thresholds(0.01, None, 20)
    >>> judge([10, 100], 0, RevisionStats("c", 20, 16, 4), RevisionStats("s", 180, 180), limits)
    RollBack(reason='canary error rate 20.00% (4 of 20) is above the limit 1.00% (stable 0.00%, 0 of 180)')
    """
    if canary.judged < thresholds.min_requests:
        return Wait(f"{canary.judged} of {thresholds.min_requests} canary calls so far: the step goes on")
    error_limit = thresholds.max_error_rate
    stable_counts = stable.judged >= thresholds.min_requests
    if stable_counts and stable.error_rate is not None:
        error_limit = max(error_limit, stable.error_rate + ERROR_MARGIN)
    canary_rate = canary.error_rate or 0.0
    if canary_rate > error_limit:
        return RollBack(
            f"canary error rate {_pct(canary_rate)} ({canary.errors} of {canary.judged}) is above the "
            f"limit {_pct(error_limit)} ({_stable_errors(stable)})"
        )
    latency = ""
    if thresholds.max_p99_ms is not None and canary.p99_ms is not None:  # no warm call: nothing to judge
        latency_limit = thresholds.max_p99_ms
        if stable_counts and stable.p99_ms is not None:
            latency_limit = max(latency_limit, stable.p99_ms * LATENCY_MARGIN)
        if canary.p99_ms > latency_limit:
            return RollBack(
                f"canary p99 {canary.p99_ms:.1f} ms is above the limit {latency_limit:.1f} ms "
                f"(stable p99 {_ms(stable.p99_ms)})"
            )
        latency = f", p99 {canary.p99_ms:.1f} ms within {latency_limit:.1f} ms"
    healthy = f"healthy: canary error rate {_pct(canary_rate)} within {_pct(error_limit)}{latency}"
    following = step + 1
    if following >= len(steps) - 1:
        return Promote(f"{healthy}; promoted to 100%")
    return Next(following, steps[following], f"{healthy}; on to {steps[following]}%")


def split(stable: str, canary: str, percent: int) -> list[TrafficTarget]:
    """The traffic of a rollout at ``percent``: both revisions tagged, so each stays reachable
    as ``NAME@stable`` and ``NAME@canary`` (the stable first: its slice of sticky keys stays put).
    """
    return [TrafficTarget(stable, 100 - percent, "stable"), TrafficTarget(canary, percent, "canary")]


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f} ms"


def _stable_errors(stable: RevisionStats) -> str:
    if stable.error_rate is None:
        return "stable: no calls in the window"
    return f"stable {_pct(stable.error_rate)}, {stable.errors} of {stable.judged}"
