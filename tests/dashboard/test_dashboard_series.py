"""The dashboard's series arithmetic and its in-memory history, with a virtual clock and a real store."""

from __future__ import annotations

import msgspec
import pytest

from conftest import activation
from tidal.dashboard.history import BucketCache, FunctionCounts, InstanceHistory, InstanceSampler
from tidal.dashboard.series import (
    SETTLE_S,
    InstanceSample,
    Window,
    bucket_of,
    instances_per_bucket,
    parse_window,
    series_body,
)
from tidal.store import SQLiteStore
from tidal.store.models import RevisionWindow


def test_window_parses_durations_and_refuses_bad_ones() -> None:
    assert parse_window("15m", "5s") == Window(900.0, 5.0)
    assert parse_window("90", "1s") == Window(90.0, 1.0)
    for since, step, says in [
        ("soon", "5s", "not a duration"),
        ("15m", "0.5s", "step must be at least 1s"),
        ("2h", "10s", "at most 3600s"),
        ("0s", "1s", "more than 0"),
        ("1h", "1s", "3600 buckets; at most 720: make the step at least 5s"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_window(since, step)


def test_buckets_are_aligned_to_the_step() -> None:
    window = Window(20.0, 5.0)
    assert window.starts(112.0) == [90.0, 95.0, 100.0, 105.0, 110.0]
    assert window.starts(113.9) == window.starts(112.0)  # the same buckets until the next one opens


def test_a_bucket_sums_revisions_and_takes_percentiles_over_their_warm_calls() -> None:
    windows = [
        RevisionWindow("echo-00001", {"ok": 98, "error": 2}, 1, [float(n) for n in range(1, 100)]),
        RevisionWindow("echo-00002", {"ok": 1, "timeout": 1}, 1, [1000.0]),
    ]
    bucket = bucket_of(100.0, windows)
    assert (bucket.requests, bucket.errors, bucket.cold_starts) == (102, 3, 2)
    assert (bucket.p50_ms, bucket.p99_ms) == (50.0, 99.0)  # 100 warm calls: the 50th and the 99th
    assert bucket_of(100.0, []).p50_ms is None


def test_instances_take_the_last_sample_of_each_bucket() -> None:
    samples = [InstanceSample(100.5, 0, 1), InstanceSample(104.0, 1, 1), InstanceSample(112.0, 2, 3)]
    assert instances_per_bucket(samples, [100.0, 105.0, 110.0], 5.0) == ([1, None, 2], [1, None, 3])


def test_history_keeps_an_hour_and_forgets_removed_functions() -> None:
    history = InstanceHistory(keep_s=60.0)
    history.add(1000.0, [FunctionCounts("echo", 0, 1), FunctionCounts("gone", 1, 1)])
    history.add(1030.0, [FunctionCounts("echo", 1, 1)])
    history.add(1070.0, [FunctionCounts("echo", 1, 0)])
    assert [s.at for s in history.samples("echo", since=0.0)] == [1030.0, 1070.0]
    assert history.samples("gone", since=0.0) == []
    assert [s.ready for s in history.samples("echo", since=1050.0)] == [1]


def test_the_sampler_reads_the_router_counts_at_its_clock() -> None:
    sampler = InstanceSampler(lambda: [FunctionCounts("echo", 2, 3)], clock=lambda: 500.0)
    sampler.sample()
    assert sampler.history.samples("echo", 0.0) == [InstanceSample(500.0, 2, 3)]


def test_settled_buckets_are_cached_and_recent_ones_read_again(store: SQLiteStore) -> None:
    now = 10_000.0
    store.add_activations(
        [
            activation(1, now - 200.0),  # settled bucket [9800, 9810)
            msgspec.structs.replace(activation(2, now - 199.0), status="error", cold=True),
            activation(3, now - 5.0),  # the newest bucket: still counted again on each poll
        ]
    )
    cache, window = BucketCache(), Window(300.0, 10.0)
    first = {bucket.start: bucket for bucket in cache.buckets(store, "echo", window, now)}
    assert (first[9800.0].requests, first[9800.0].errors, first[9800.0].cold_starts) == (2, 1, 1)
    assert first[9990.0].requests == 1
    cached = len(cache)
    assert cached == sum(1 for start in first if start + 10.0 <= now - SETTLE_S)
    # Records written later: the settled bucket keeps its cached numbers, the open one sees them.
    store.add_activations([activation(4, now - 195.0), activation(5, now - 4.0)])
    again = {bucket.start: bucket for bucket in cache.buckets(store, "echo", window, now)}
    assert again[9800.0].requests == 2
    assert again[9990.0].requests == 2


def test_the_series_body_has_one_column_a_measure() -> None:
    window = Window(10.0, 5.0)
    buckets = [bucket_of(90.0, []), bucket_of(95.0, [RevisionWindow("r", {"ok": 4}, 1, [2.0, 2.0, 3.0])])]
    buckets.append(bucket_of(100.0, [RevisionWindow("r", {"ok": 1}, 0, [1.0])]))
    events = [{"at": 99.0, "to_count": 1}, {"at": 10.0, "to_count": 0}]
    body = series_body("echo", window, 102.0, buckets, [InstanceSample(96.0, 1, 1)], events)
    assert body["buckets"] == [90.0, 95.0, 100.0]
    assert body["requests"] == [0, 4, 1]
    assert body["rps"] == [0.0, 0.8, 0.5]  # the open bucket: 1 call in the 2 s that passed
    assert body["ready"] == [None, 1, None]
    assert body["scaling_events"] == [{"at": 99.0, "to_count": 1}]  # only the window's
    assert body["totals"] == {"requests": 5, "errors": 0, "cold_starts": 1}
