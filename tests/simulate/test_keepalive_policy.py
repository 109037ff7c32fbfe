"""The pure keep-alive policies: parsing, the idle histogram and the windows they decide."""

from __future__ import annotations

import math

import msgspec
import pytest

from tidal.keepalive.histogram import IdleHistogram, decode, encode
from tidal.keepalive.policy import (
    Fixed,
    Hybrid,
    describe,
    forecast_idle_s,
    new_histogram,
    parse_policy,
    windows,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(600, 600.0), (90.5, 90.5), ("600", 600.0), ("600s", 600.0), ("10m", 600.0), ("fixed:10m", 600.0),
     ("fixed:1h", 3600.0), (" fixed: 500ms ", 0.5), (0, 0.0)],
)  # fmt: skip
def test_fixed_policies_parse(text: str | float, seconds: float) -> None:
    assert parse_policy(text) == Fixed(seconds)


def test_hybrid_parses_with_and_without_parameters() -> None:
    assert parse_policy("hybrid") == Hybrid()
    tuned = parse_policy("hybrid:bin=1s,range=2m,min_samples=5,head=5,tail=99,margin=0.1,cv=2,fallback=10m")
    assert tuned == Hybrid(bin_s=1.0, range_s=120.0, min_samples=5, min_cv=2.0)
    assert parse_policy("hybrid:oor=0.3,cv=5") == Hybrid(oor_share=0.3, min_cv=5.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("forever", "is not a keep-alive policy"),
        ("-5", "is not a keep-alive policy"),
        ("fixed:", "fixed needs a duration"),
        ("fixed:soon", "'soon' is not a duration"),
        ("lru:10m", "is not a keep-alive policy"),
        ("hybrid:speed=3", "unknown hybrid parameter 'speed'"),
        ("hybrid:bin", "'bin' is not key=value"),
        ("hybrid:head=99,tail=5", "head < tail"),
        ("hybrid:margin=1.5", "margin is a fraction"),
        ("hybrid:min_samples=2.5", "not a whole number"),
        ("hybrid:range=10s,bin=1m", "at least one bin"),
        ("hybrid:cv=x", "'x' is not a number"),
        ("hybrid:oor=0", "0 < oor <= 1"),
    ],
)
def test_parse_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_policy(text)


@pytest.mark.parametrize("value", [True, -1, math.inf, math.nan])
def test_parse_rejects_odd_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        parse_policy(value)


@pytest.mark.parametrize(
    "text",
    ["fixed:10m", "fixed:90s", "fixed:2h", "fixed:250ms", "hybrid", "hybrid:bin=1s,range=2m,min_samples=5"],
)
def test_describe_reads_back(text: str) -> None:
    assert describe(parse_policy(text)) == text
    assert parse_policy(describe(parse_policy(text))) == parse_policy(text)


def test_histogram_bins_percentiles_and_round_trip() -> None:
    histogram = IdleHistogram()
    for idle_s in (30.0, 65.0, 70.0, 75.0, 130.0):
        histogram.add(idle_s)
    histogram.add(5 * 3600.0)  # beyond the 4 h range
    histogram.add(-2.0)  # overlapping calls: counted as 0
    assert histogram.counts == [2, 3, 1]
    assert (histogram.total, histogram.out_of_range, histogram.recent_out_of_range) == (7, 1, [18000.0])
    assert histogram.percentile(5) == 60.0  # upper edge of bin 0
    assert histogram.percentile(50) == 120.0
    assert histogram.percentile(100) == 180.0
    assert decode(encode(histogram)) == histogram
    with pytest.raises(msgspec.ValidationError):
        decode(b'{"counts": "nope"}')


def test_coefficient_of_variation_tells_peaked_from_spread() -> None:
    peaked, spread = IdleHistogram(), IdleHistogram()
    for index in range(240):
        peaked.add(300.0)
        spread.add(index * 60.0 + 1)
    assert peaked.coefficient_of_variation() == pytest.approx(math.sqrt(239))
    assert spread.coefficient_of_variation() == 0.0
    assert IdleHistogram().coefficient_of_variation() == 0.0


def test_recent_out_of_range_keeps_the_last_32() -> None:
    histogram = IdleHistogram(range_s=60.0)
    for index in range(40):
        histogram.add(100.0 + index)
    assert histogram.recent_out_of_range == [100.0 + index for index in range(8, 40)]


def test_periodic_function_gets_windows_around_its_period() -> None:
    """Every 5 minutes, 1 s of work: idle times of 299 s all fall in bin [240 s, 300 s)."""
    policy = Hybrid()
    histogram = new_histogram(policy)
    for _ in range(12):
        histogram.add(299.0)
    chosen = windows(policy, histogram)
    assert chosen.mode == "histogram"
    assert chosen.prewarm_s == pytest.approx(240 * 0.9)  # head bin's lower edge - 10%
    assert chosen.keep_alive_s == pytest.approx(300 * 1.1)  # tail bin's upper edge + 10%
    assert chosen.prewarm_s < 299.0 < chosen.keep_alive_s
    assert chosen.reason == "12 idle times, CV 15.5: pre-warm at 3m36s, keep until 5m30s"


def test_frequent_function_keeps_without_pre_warm() -> None:
    policy = Hybrid()
    histogram = new_histogram(policy)
    for _ in range(20):
        histogram.add(5.0)
    chosen = windows(policy, histogram)
    assert (chosen.mode, chosen.prewarm_s, chosen.keep_alive_s) == ("histogram", 0.0, pytest.approx(66.0))


def test_no_samples_falls_back_to_fixed() -> None:
    chosen = windows(Hybrid(), IdleHistogram())
    assert (chosen.mode, chosen.prewarm_s, chosen.keep_alive_s) == ("fallback", 0.0, 600.0)
    assert chosen.reason == "0 idle times, fewer than 10: fixed keep-alive of 10m"


def test_spread_idle_times_fall_back_too() -> None:
    histogram = IdleHistogram()
    for index in range(240):
        histogram.add(index * 60.0 + 1)
    chosen = windows(Hybrid(fallback_s=120.0), histogram)
    assert (chosen.mode, chosen.keep_alive_s) == ("fallback", 120.0)
    assert "CV 0.0 below 6" in chosen.reason


def test_idle_times_beyond_the_range_are_forecast() -> None:
    histogram = IdleHistogram()
    for _ in range(12):
        histogram.add(6 * 3600.0)
    chosen = windows(Hybrid(), histogram)
    assert chosen.mode == "forecast"
    assert (chosen.prewarm_s, chosen.keep_alive_s) == (
        pytest.approx(6 * 3600 * 0.9),
        pytest.approx(6 * 3600 * 1.1),
    )
    assert forecast_idle_s([5.0, 100.0, 6.0, 7.0, 8.0, 9.0]) == 8.0  # median of the last five
    assert forecast_idle_s([]) == 0.0


def test_fixed_windows_ignore_the_histogram() -> None:
    chosen = windows(Fixed(600.0), IdleHistogram())
    assert (chosen.prewarm_s, chosen.keep_alive_s, chosen.mode) == (0.0, 600.0, "fixed")
    assert chosen.reason == "fixed keep-alive: keep loaded 10m after each call"
    assert new_histogram(Hybrid(bin_s=1.0, range_s=120.0)).bin_count == 120
