"""The shadow's stored state: its config, results, skip counts, and their retention by age."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import STORE_KINDS, open_test_store
from tidal.metering.retention import DAY_S, Retention, RetentionPolicy
from tidal.store import SQLiteStore
from tidal.store.models import Revision, ShadowConfig, ShadowResult


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """This file's contract on SQLite and on PostgreSQL."""
    yield from open_test_store(request, tmp_path)


NOW = 100 * DAY_S


def draft(function: str, memory: int = 128) -> Revision:
    return Revision("", function, 0, f"{function}-{memory}", "code", "m", "f", False, "native",
                    {"memory": memory}, time.time())  # fmt: skip


def result(function: str, at: float, verdict: str = "agree", revision: str = "fn-00002") -> ShadowResult:
    return ShadowResult(function, revision, "fn-00001", "p", "c", at, verdict, "", None, 1.0, 2.0)


def test_a_shadow_is_set_replaced_read_and_deleted(store: SQLiteStore) -> None:
    store.add_revision(draft("fn"))
    store.add_revision(draft("fn", memory=256), serve=False)
    store.add_revision(draft("other"))
    config = ShadowConfig("fn", "fn-00002", 20, "cosine>=0.99", 16, 1.0)
    store.set_shadow(config)
    assert store.shadow("fn") == config
    store.set_shadow(ShadowConfig("fn", "fn-00001", 50, "exact", 4, 2.0))
    assert store.shadow("fn") == ShadowConfig("fn", "fn-00001", 50, "exact", 4, 2.0)

    with pytest.raises(ValueError, match="'other-00001' is not a revision of function 'fn'"):
        store.set_shadow(ShadowConfig("fn", "other-00001", 20, "exact", 16, 1.0))
    with pytest.raises(KeyError):
        store.set_shadow(ShadowConfig("ghost", "fn-00001", 20, "exact", 16, 1.0))

    assert store.delete_shadow("fn") and store.shadow("fn") is None and not store.delete_shadow("fn")
    store.set_shadow(config)
    store.delete_function("fn")
    assert store.shadow("fn") is None, "a removed function's shadow goes with it"


def test_results_and_skips_are_read_by_window_and_candidate(store: SQLiteStore) -> None:
    minute = int(NOW // 60) * 60
    store.add_shadow_results(
        [result("fn", NOW - 10), result("fn", NOW - 5, "disagree"), result("fn", NOW - 7200),
         result("fn", NOW - 1, revision="fn-00003"), result("other", NOW)],
        {("fn", "fn-00002", minute, "dropped"): 2, ("fn", "fn-00002", minute - 7200, "dropped"): 5},
    )  # fmt: skip
    store.add_shadow_results(
        [], {("fn", "fn-00002", minute, "dropped"): 1, ("fn", "fn-00002", minute, "streamed"): 1}
    )

    recent = store.shadow_results("fn", NOW - 60, "fn-00002")
    assert [(item.at, item.verdict) for item in recent] == [(NOW - 5, "disagree"), (NOW - 10, "agree")]
    assert len(store.shadow_results("fn", NOW - 60)) == 3 and len(store.shadow_results("fn", 0, limit=2)) == 2
    assert store.shadow_skips("fn", NOW - 10, "fn-00002") == {"dropped": 3, "streamed": 1}
    assert store.shadow_skips("fn", 0)["dropped"] == 8


async def test_retention_prunes_results_and_skips_by_age(store: SQLiteStore) -> None:
    old_minute = int((NOW - 8 * DAY_S) // 60) * 60
    store.add_shadow_results(
        [result("fn", NOW - 8 * DAY_S), result("fn", NOW - 9 * DAY_S), result("fn", NOW - DAY_S)],
        {("fn", "fn-00002", old_minute, "dropped"): 4, ("fn", "fn-00002", int(NOW // 60) * 60, "dropped"): 1},
    )
    retention = Retention(store, RetentionPolicy(7 * DAY_S, 0), batch=1)

    deleted = await retention.sweep(NOW)

    assert deleted["shadow results"] == 3  # two results and one minute of skips, one row a batch
    assert [item.at for item in store.shadow_results("fn", 0)] == [NOW - DAY_S]
    assert store.shadow_skips("fn", 0) == {"dropped": 1}
    kept = Retention(store, RetentionPolicy(0, 0))  # no age limit: kept whatever their age
    assert "shadow results" not in await kept.sweep(NOW + 365 * DAY_S)
