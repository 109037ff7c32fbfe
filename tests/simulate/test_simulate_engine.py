"""The replay engine on tiny traces whose cold starts and GB-s are computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tidal.keepalive.policy import Fixed, parse_policy
from tidal.simulate.engine import CostModel, billed_gb_s, loaded_seconds, simulate
from tidal.simulate.traces import FunctionCalls, Trace, make_function

# 1 GB of template + 1 GB of instance: every second loaded with no work is 2 GB-s.
MODEL = CostModel(template_mb=1024.0)


def one_function(
    starts: list[float], durations: list[float], span_s: float, memory_mb: float = 1024.0
) -> Trace:
    return Trace([make_function("f", starts, durations, memory_mb)], span_s, "test")


def test_fixed_keep_alive_by_hand() -> None:
    """Calls at 0, 101, 1102 (1 s each): idle gaps of 100 s and 1000 s, then 100 s to the end."""
    trace = one_function([0.0, 101.0, 1102.0], [1.0, 1.0, 1.0], span_s=1203.0)
    ten_minutes, one_minute = simulate(trace, [Fixed(600.0), Fixed(60.0)], MODEL)
    # 10 min: the first call builds the template; 100 s gap warm; 1000 s gap cold.
    assert (ten_minutes.template_cold_starts, ten_minutes.fork_cold_starts) == (2, 0)
    assert ten_minutes.idle_gb_s == pytest.approx((100 + 600 + 100) * 2)
    assert ten_minutes.billed_gb_s == pytest.approx(3.0)
    assert one_minute.template_cold_starts == 3
    assert one_minute.idle_gb_s == pytest.approx((60 + 60 + 60) * 2)
    assert ten_minutes.added_latency_s == pytest.approx(2 * 3.0)  # 3 s per template rebuilt


def test_hybrid_learns_a_period_and_pre_warms() -> None:
    """Every 100 s for 1 s: idle times of 99 s fall in bin [90 s, 100 s) of 10 s bins.

    The first three gaps fall back to 10 min (warm, loaded 99 s each); from then on the policy
    pre-warms at 90 x 0.9 = 81 s and keeps until 100 x 1.1 = 110 s: warm, loaded 18 s per gap;
    the tail (99 s to the end of the trace) also 18 s.
    """
    trace = one_function([100.0 * k for k in range(10)], [1.0] * 10, span_s=1000.0, memory_mb=512.0)
    model = CostModel(template_mb=512.0)  # 1 GB loaded in all
    hybrid, fixed = simulate(
        trace, [parse_policy("hybrid:bin=10s,range=10m,min_samples=3"), Fixed(600.0)], model
    )
    assert hybrid.template_cold_starts == fixed.template_cold_starts == 1
    assert dict(hybrid.modes) == {"fallback": 3, "histogram": 7}
    assert hybrid.idle_gb_s == pytest.approx(3 * 99 + 6 * 18 + 18)
    assert fixed.idle_gb_s == pytest.approx(10 * 99)


def test_a_call_before_the_pre_warm_is_a_template_cold_start() -> None:
    starts = [100.0 * k for k in range(5)] + [430.0]  # the last one comes after 29 s, not 99 s
    trace = one_function(starts, [1.0] * 6, span_s=431.0, memory_mb=512.0)
    [hybrid] = simulate(
        trace, [parse_policy("hybrid:bin=10s,range=10m,min_samples=3")], CostModel(template_mb=512.0)
    )
    assert hybrid.template_cold_starts == 2  # the first call and the early one
    assert hybrid.idle_gb_s == pytest.approx(3 * 99 + 18 + 0)  # nothing loaded in the early gap


def test_overlapping_calls_fork_and_reuse_extra_instances() -> None:
    """A runs 0..10; B (1..2) forks; C (5..6) reuses B's instance idle since 2; D at 100 finds the
    function idle 90 s (warm under 10 min); E (100.5) forks again: C's instance went at 66."""
    trace = one_function([0.0, 1.0, 5.0, 100.0, 100.5], [10.0, 1.0, 1.0, 1.0, 1.0], span_s=200.0)
    [result] = simulate(trace, [Fixed(600.0)], MODEL)
    assert (result.template_cold_starts, result.fork_cold_starts) == (1, 2)
    assert result.cold_starts == 3
    # policy: 90 s gap + 98.5 s tail at 2 GB; extra instances (1 GB): 3 s + 60 s + 60 s (D's, after 101).
    assert result.idle_gb_s == pytest.approx((90 + 98.5) * 2 + 123)
    assert result.billed_gb_s == pytest.approx(14.0)
    assert result.added_latency_s == pytest.approx(3.0 + 2 * 0.009)


def test_billing_rounds_each_call_up_to_a_millisecond() -> None:
    function = FunctionCalls("f", np.array([0.0, 1.0]), np.array([0.1234, 0.0001]), 2048.0)
    assert billed_gb_s(function) == pytest.approx((0.124 + 0.001) * 2)


def test_loaded_seconds_cuts_windows_at_the_gap() -> None:
    gaps = np.array([300.0, 300.0, 1000.0, 100.0])
    prewarm = np.array([0.0, 216.0, 0.0, 216.0])
    keep = np.array([600.0, 330.0, 600.0, 330.0])
    assert loaded_seconds(gaps, prewarm, keep).tolist() == [300.0, 84.0, 600.0, 0.0]


def test_many_functions_add_up() -> None:
    trace = Trace(
        [make_function("a", [0.0, 10.0], [1.0, 1.0], 1024.0), make_function("b", [5.0], [0.5], 2048.0)],
        20.0,
        "test",
    )
    [result] = simulate(trace, [Fixed(60.0)], CostModel(template_mb=0.0))
    assert (result.invocations, result.template_cold_starts) == (3, 2)
    # a: 9 s gap + 9 s tail at 1 GB; b: 14.5 s tail at 2 GB
    assert result.idle_gb_s == pytest.approx(9 + 9 + 14.5 * 2)
