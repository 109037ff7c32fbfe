"""The canary decision rule, pure: a step's numbers in, a verdict out (no clock, no I/O)."""

from __future__ import annotations

import pytest

from tidal.rollout.policy import (
    Next,
    Promote,
    RollBack,
    Thresholds,
    Wait,
    check_plan,
    due,
    judge,
    split,
)
from tidal.rollout.stats import RevisionStats
from tidal.store.models import TrafficTarget

STEPS = [5, 25, 50, 100]
LIMITS = Thresholds(max_error_rate=0.01, max_p99_ms=None, min_requests=50)


def stats(name: str, ok: int, errors: int = 0, p99: float | None = 10.0) -> RevisionStats:
    return RevisionStats(name, ok + errors, ok, errors, p50_ms=p99, p99_ms=p99)


def test_too_few_canary_calls_wait_and_say_how_many() -> None:
    verdict = judge(STEPS, 0, stats("c", 40, 9), stats("s", 900), LIMITS)
    assert verdict == Wait("49 of 50 canary calls so far: the step goes on")


def test_caller_faults_do_not_count_towards_min_requests() -> None:
    canary = RevisionStats("c", requests=100, ok=30, errors=0, caller_faults=70)
    assert isinstance(judge(STEPS, 0, canary, stats("s", 900), LIMITS), Wait)


def test_a_healthy_step_moves_on_and_the_step_before_100_promotes() -> None:
    assert judge(STEPS, 0, stats("c", 100), stats("s", 1900), LIMITS) == Next(
        1, 25, "healthy: canary error rate 0.00% within 1.00%; on to 25%"
    )
    assert isinstance(judge(STEPS, 1, stats("c", 100), stats("s", 300), LIMITS), Next)
    promoted = judge(STEPS, 2, stats("c", 100), stats("s", 100), LIMITS)
    assert isinstance(promoted, Promote) and promoted.reason.endswith("promoted to 100%")


def test_a_canary_failing_20_percent_rolls_back_with_the_numbers() -> None:
    verdict = judge(STEPS, 0, stats("c", 80, 20), stats("s", 1000), LIMITS)
    assert verdict == RollBack(
        "canary error rate 20.00% (20 of 100) is above the limit 1.00% (stable 0.00%, 0 of 1000)"
    )


def test_exactly_at_the_limit_is_healthy() -> None:
    assert isinstance(judge(STEPS, 0, stats("c", 99, 1), stats("s", 1000), LIMITS), Next)
    assert isinstance(judge(STEPS, 0, stats("c", 98, 2), stats("s", 1000), LIMITS), RollBack)


def test_a_stable_that_fails_too_raises_the_limit_by_one_point() -> None:
    failing_stable = stats("s", 900, 100)  # 10%
    assert isinstance(judge(STEPS, 0, stats("c", 90, 10), failing_stable, LIMITS), Next)  # 10% <= 11%
    worse = judge(STEPS, 0, stats("c", 88, 12), failing_stable, LIMITS)  # 12% > 11%
    assert isinstance(worse, RollBack) and "limit 11.00%" in worse.reason


def test_a_stable_with_too_few_calls_does_not_raise_the_limit() -> None:
    thin_stable = stats("s", 2, 2)  # 50%, but only 4 calls: not evidence
    verdict = judge(STEPS, 0, stats("c", 90, 10), thin_stable, LIMITS)
    assert isinstance(verdict, RollBack) and "limit 1.00%" in verdict.reason


def test_latency_is_judged_only_with_a_limit() -> None:
    slow = stats("c", 100, p99=900.0)
    assert isinstance(judge(STEPS, 0, slow, stats("s", 1000, p99=20.0), LIMITS), Next)
    limited = Thresholds(0.01, 500.0, 50)
    verdict = judge(STEPS, 0, slow, stats("s", 1000, p99=20.0), limited)
    assert verdict == RollBack("canary p99 900.0 ms is above the limit 500.0 ms (stable p99 20.0 ms)")


def test_a_slow_stable_raises_the_latency_limit_by_a_fifth() -> None:
    limited = Thresholds(0.01, 500.0, 50)
    slow_stable = stats("s", 1000, p99=700.0)  # limit becomes 840 ms
    assert isinstance(judge(STEPS, 0, stats("c", 100, p99=800.0), slow_stable, limited), Next)
    assert isinstance(judge(STEPS, 0, stats("c", 100, p99=900.0), slow_stable, limited), RollBack)


def test_a_canary_with_no_warm_call_is_not_judged_on_latency() -> None:
    limited = Thresholds(0.01, 500.0, 50)
    assert isinstance(judge(STEPS, 0, stats("c", 100, p99=None), stats("s", 100), limited), Next)


def test_due_after_the_interval() -> None:
    assert not due(now=1059.9, step_started_at=1000.0, interval_s=60.0)
    assert due(now=1060.0, step_started_at=1000.0, interval_s=60.0)


def test_split_keeps_both_revisions_reachable_by_tag() -> None:
    assert split("f-00001", "f-00002", 25) == [
        TrafficTarget("f-00001", 75, "stable"),
        TrafficTarget("f-00002", 25, "canary"),
    ]


@pytest.mark.parametrize(
    ("steps", "interval", "limits", "message"),
    [
        ([100], 60.0, LIMITS, "at least one percent below 100"),
        ([10, 10, 100], 60.0, LIMITS, "must increase"),
        ([50, 25, 100], 60.0, LIMITS, "must increase"),
        ([10, 50], 60.0, LIMITS, "must end at 100"),
        ([0, 50, 100], 60.0, LIMITS, "from 1 to 100"),
        ([10, 100], 0.2, LIMITS, "interval 0.2 s"),
        ([10, 100], 60.0, Thresholds(1.5, None, 50), "fraction from 0 to 1"),
        ([10, 100], 60.0, Thresholds(0.01, 0.0, 50), "max p99 0 ms"),
        ([10, 100], 60.0, Thresholds(0.01, None, 0), "min requests 0"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(
    steps: list[int], interval: float, limits: Thresholds, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_plan(steps, interval, limits)


def test_a_good_plan_passes() -> None:
    check_plan([5, 25, 50, 100], 2.0, Thresholds(0.01, 500.0, 50))
