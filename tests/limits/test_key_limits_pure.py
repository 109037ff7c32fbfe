"""The token bucket and the quota windows of tidal.auth.limits, on a virtual clock."""

from __future__ import annotations

import datetime

import pytest

from tidal.auth.limits import (
    KeyLimits,
    KeyState,
    Quota,
    Rate,
    add_gb_s,
    admit,
    build_limits,
    limits_from_json,
    parse_quota,
    parse_rate,
    period_end,
    period_start,
)

NOON = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC).timestamp()


def run(limits: KeyLimits, times: list[float], state: KeyState | None = None) -> tuple[list[bool], KeyState]:
    state = state or KeyState()
    allowed = []
    for now in times:
        verdict = admit(limits, state, now)
        state = verdict.state
        allowed.append(verdict.allowed)
    return allowed, state


def test_a_bucket_lets_the_burst_through_then_refills_at_the_rate() -> None:
    limits = KeyLimits(Rate(5.0, 5))
    allowed, state = run(limits, [NOON] * 6)
    assert allowed == [True] * 5 + [False]
    refused = admit(limits, state, NOON)
    assert (refused.error_type, refused.retry_after_s, refused.remaining, refused.limit) == (
        "RateLimited",
        1,
        0,
        5,
    )
    # 0.2 s later one token came back; 1 s later five.
    assert admit(limits, state, NOON + 0.2).allowed
    allowed, _ = run(limits, [NOON + 1.0] * 6, state)
    assert allowed == [True] * 5 + [False]


def test_a_slow_rate_asks_for_a_longer_wait() -> None:
    limits = KeyLimits(Rate(0.1, 1))  # one call each 10 s
    allowed, state = run(limits, [NOON, NOON + 1])
    assert allowed == [True, False]
    assert admit(limits, state, NOON + 1).retry_after_s == 9


def test_a_request_quota_counts_per_utc_day_and_renews_at_midnight() -> None:
    limits = KeyLimits(quotas=(Quota(3, "requests", "day"),))
    allowed, state = run(limits, [NOON, NOON + 1, NOON + 2, NOON + 3])
    assert allowed == [True, True, True, False]
    refused = admit(limits, state, NOON + 3)
    assert refused.error_type == "QuotaExceeded"
    assert refused.retry_after_s == 12 * 3600 - 3  # until 00:00 UTC
    allowed, _ = run(limits, [NOON + 12 * 3600], state)
    assert allowed == [True]


def test_a_refused_call_is_not_counted_and_a_quota_refusal_spends_no_token() -> None:
    limits = KeyLimits(Rate(1.0, 1), (Quota(1, "requests", "day"),))
    allowed, state = run(limits, [NOON, NOON + 0.1, NOON + 5])
    assert allowed == [True, False, False]
    assert state.windows["day"].requests == 1


def test_gb_s_quota_refuses_once_used_up() -> None:
    limits = KeyLimits(quotas=(Quota(2, "gb-s", "month"),))
    state = admit(limits, KeyState(), NOON).state
    state = add_gb_s(limits, state, 2.5, NOON + 1)
    verdict = admit(limits, state, NOON + 2)
    assert (verdict.allowed, verdict.error_type) == (False, "QuotaExceeded")
    # December 1st: a fresh window.
    december = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC).timestamp()
    assert admit(limits, state, december).allowed


def test_remaining_and_reset_follow_the_tightest_limit() -> None:
    limits = KeyLimits(Rate(100.0, 100), (Quota(10, "requests", "day"),))
    verdict = admit(limits, KeyState(), NOON)
    assert (verdict.limit, verdict.remaining) == (10, 9)


def test_calendar_windows() -> None:
    assert period_start("day", NOON) == NOON - 12 * 3600
    november = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC).timestamp()
    assert period_start("month", NOON) == november
    assert period_end("month", NOON) == datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC).timestamp()
    february = datetime.datetime(2028, 2, 10, tzinfo=datetime.UTC).timestamp()
    assert period_end("month", february) - period_start("month", february) == 29 * 86400


def test_parsing_what_users_type() -> None:
    assert parse_rate("50/s") == Rate(50.0, 50)
    assert parse_rate("600/min", 3) == Rate(10.0, 3)
    assert parse_quota("100000/day") == Quota(100000, "requests", "day")
    assert parse_quota("2000gb-s/month") == Quota(2000, "gb-s", "month")
    limits = build_limits("50/s", 100, ["100000/day", "2000gb-s/month"])
    assert limits_from_json(limits.to_json()) == limits
    assert limits.describe() == {"rate": "50/s", "burst": 100, "quotas": ["100000/day", "2000gb-s/month"]}
    assert limits_from_json("{}").empty


@pytest.mark.parametrize(
    ("rate", "burst", "quotas", "says"),
    [
        ("fast", None, [], "invalid rate"),
        ("0/s", None, [], "above 0"),
        ("5/week", None, [], "invalid rate"),
        (None, 5, [], "--burst needs --rate"),
        ("5/s", 0, [], "invalid burst"),
        (None, None, ["10/year"], "invalid quota"),
        (None, None, ["10/day", "20/day"], "at most one quota"),
    ],
)
def test_bad_limits_are_refused_with_a_reason(
    rate: str | None, burst: int | None, quotas: list[str], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        build_limits(rate, burst, quotas)
