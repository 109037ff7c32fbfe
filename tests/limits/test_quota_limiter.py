"""The gateway's limiter over a real SQLite store: counts written in batches, read back at start,
GB-s added from activation records; on a virtual clock."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import activation
from services import STORE_KINDS, open_test_store
from tidal.auth.limits import KeyLimits, Quota, Rate
from tidal.auth.quota import Limiter
from tidal.store import SQLiteStore


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """This file's contract on SQLite and on PostgreSQL."""
    yield from open_test_store(request, tmp_path)


NOON = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC).timestamp()
DAY_START = NOON - 12 * 3600
MONTH_START = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_counts_survive_a_new_limiter_and_gb_s_come_from_records(store: SQLiteStore) -> None:
    clock = Clock(NOON)
    limits = KeyLimits(quotas=(Quota(3, "requests", "day"), Quota(1.0, "gb-s", "month")))
    limiter = Limiter(store, clock)
    assert [limiter.admit("k1", limits).allowed for _ in range(2)] == [True, True]
    recorded = []
    record = limiter.observing(recorded.append)
    call = activation(1, NOON)
    call.key_id, call.memory_mb, call.billed_ms = "k1", 512, 1000  # 0.5 GB x 1 s
    record(call)
    assert recorded == [call]
    await limiter.flush()
    assert sorted(store.quota_usage(MONTH_START)) == [
        ("k1", "day", DAY_START, 2, 0.5),
        ("k1", "month", MONTH_START, 2, 0.5),
    ]
    # A restarted gateway: one more call passes the day's quota, then it is refused.
    restarted = Limiter(store, clock)
    restarted.load()
    assert restarted.admit("k1", limits).allowed
    refused = restarted.admit("k1", limits)
    assert (refused.allowed, refused.error_type) == (False, "QuotaExceeded")
    await restarted.flush()
    assert ("k1", "day", DAY_START, 3, 0.5) in store.quota_usage(DAY_START)
    # Another 0.6 GB-s passes the month's GB-s quota; tomorrow's request quota does not help.
    restarted.add_gb_s("k1", limits, 0.6)
    clock.now = NOON + 86400
    assert restarted.admit("k1", limits).error_type == "QuotaExceeded"


async def test_a_rate_only_key_writes_nothing_and_keys_without_limits_add_no_gb_s(store: SQLiteStore) -> None:
    limiter = Limiter(store, Clock(NOON))
    assert limiter.admit("fast", KeyLimits(Rate(10.0, 10))).allowed
    call = activation(2, NOON)
    call.key_id, call.billed_ms = "someone", 50
    limiter.observing(lambda _: None)(call)
    await limiter.flush()
    assert store.quota_usage(0.0) == []


def test_keys_limits_are_stored_and_changed(store: SQLiteStore) -> None:
    store.add_key("abc", "hash", ["invoke:*"])
    assert store.set_key_limits("abc", KeyLimits(Rate(5.0, 5)).to_json())
    assert store.list_keys()[0].limits == KeyLimits(Rate(5.0, 5)).to_json()
    assert not store.set_key_limits("nope", "{}")
    store.revoke_key("abc")
    assert not store.set_key_limits("abc", "{}")
