"""Per-revision statistics (`tidal ab`, rollout windows): what counts as an error, percentiles."""

from __future__ import annotations

from tidal.rollout.stats import REVISION_FAULTS, percentile, summarize
from tidal.store.models import RevisionWindow


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_the_revisions_faults_are_errors_and_the_callers_are_not() -> None:
    assert {"error", "timeout", "oom", "lost", "setup_failed"} == REVISION_FAULTS
    window = RevisionWindow(
        "f-00002",
        {"ok": 90, "error": 6, "timeout": 2, "bad_input": 5, "denied": 1, "cancelled": 1},
        cold=3,
        warm_ms=[1.0, 2.0, 3.0, 40.0],
    )
    stats = summarize(window)
    assert (stats.requests, stats.ok, stats.errors, stats.caller_faults, stats.cold) == (105, 90, 8, 7, 3)
    assert stats.judged == 98 and stats.error_rate == 8 / 98
    assert (stats.p50_ms, stats.p99_ms) == (2.0, 40.0)
    assert stats.as_dict()["error_rate"] == 8 / 98


def test_a_window_without_judged_calls_has_no_rate() -> None:
    stats = summarize(RevisionWindow("f-00001", {"bad_input": 3}, 0, []))
    assert (stats.error_rate, stats.p99_ms, stats.caller_faults) == (None, None, 3)
