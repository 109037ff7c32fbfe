"""The store's side of rollouts and `tidal ab`: per-revision windows, rollout state, compare-and-set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from conftest import activation
from services import STORE_KINDS, open_test_store
from tidal.store import Revision, SQLiteStore, TrafficTarget, revision_digest
from tidal.store.models import Rollout, RolloutDecision


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """This file's contract on SQLite and on PostgreSQL."""
    yield from open_test_store(request, tmp_path)


def deploy(store: SQLiteStore, code: str) -> Revision:
    spec: dict[str, object] = {"name": "echo"}
    digest = revision_digest(code, "echo", "handler", False, "native", spec)
    draft = Revision("", "echo", 0, digest, code, "echo", "handler", False, "native", spec, 1000.0)
    return (
        store.add_revision(draft, serve=False)[0] if store.function("echo") else store.add_revision(draft)[0]
    )


def draft_rollout(canary: str = "echo-00002", stable: str = "echo-00001") -> Rollout:
    return Rollout(
        0, "echo", canary, stable, [10, 50, 100], 60.0, 0.01, None, 20, 0, 2000.0, "running", "", 2000.0
    )


SPLIT = [TrafficTarget("echo-00001", 90, "stable"), TrafficTarget("echo-00002", 10, "canary")]


@pytest.fixture
def two_revisions(store: SQLiteStore) -> SQLiteStore:
    deploy(store, "code-1")
    deploy(store, "code-2")
    return store


def test_windows_count_per_revision_inside_since_until(store: SQLiteStore) -> None:
    records = []
    for number, (revision, start, status, cold, ms) in enumerate([
        ("echo-00001", 100.0, "ok", False, 5.0),
        ("echo-00001", 101.0, "ok", False, 3.0),
        ("echo-00001", 102.0, "error", True, 900.0),
        ("echo-00002", 150.0, "timeout", False, 60.0),
        ("echo-00002", 99.0, "ok", False, 1.0),  # before the window
        ("echo-00002", 200.0, "ok", False, 1.0),  # at until: outside [since, until)
    ]):  # fmt: skip
        record = msgspec.structs.replace(
            activation(number, start), revision=revision, status=status, cold=cold, duration_ms=ms
        )
        records.append(record)
    records.append(activation(99, 150.0, function="other"))
    store.add_activations(records)

    windows = store.revision_windows("echo", 100.0, 200.0)
    assert [(w.revision, w.statuses, w.cold, w.warm_ms) for w in windows] == [
        ("echo-00001", {"ok": 2, "error": 1}, 1, [3.0, 5.0]),
        ("echo-00002", {"timeout": 1}, 0, [60.0]),
    ]
    assert store.revision_windows("echo", 300.0, 400.0) == []


def test_a_rollout_starts_with_its_traffic_and_first_decision(two_revisions: SQLiteStore) -> None:
    store = two_revisions
    first = RolloutDecision(0, 2000.0, 0, 10, "start", "echo-00002 gets 10%")
    rollout = store.start_rollout(draft_rollout(), SPLIT, first)
    assert rollout.id > 0 and store.rollout("echo") == rollout and store.running_rollouts() == [rollout]
    record = store.function("echo")
    assert record is not None and set(record.traffic) == set(SPLIT)
    assert store.rollout_decisions(rollout.id) == [msgspec.structs.replace(first, rollout=rollout.id)]
    with pytest.raises(ValueError, match="already running"):
        store.start_rollout(draft_rollout(), SPLIT)
    with pytest.raises(KeyError):
        store.start_rollout(msgspec.structs.replace(draft_rollout(), function="ghost"), SPLIT)


def test_save_writes_only_over_the_expected_traffic(two_revisions: SQLiteStore) -> None:
    store = two_revisions
    rollout = store.start_rollout(draft_rollout(), SPLIT)
    moved = msgspec.structs.replace(rollout, step=1, step_started_at=2060.0)
    half = [TrafficTarget("echo-00001", 50, "stable"), TrafficTarget("echo-00002", 50, "canary")]
    decision = RolloutDecision(rollout.id, 2060.0, 0, 10, "next", "healthy", {"errors": 0}, {"errors": 1})
    assert store.save_rollout(moved, decision, half, expected=SPLIT)
    assert store.rollout("echo") == moved and store.rollout_decisions(rollout.id) == [decision]

    store.set_traffic("echo", [TrafficTarget("echo-00002", 100)])  # by hand
    later = msgspec.structs.replace(moved, step=2)
    assert not store.save_rollout(later, None, [TrafficTarget("echo-00002", 100)], expected=half)
    assert store.rollout("echo") == moved  # untouched

    ended = msgspec.structs.replace(
        moved, state="aborted", reason="traffic changed by hand", finished_at=2070.0
    )
    assert store.save_rollout(ended)
    assert store.running_rollouts() == [] and store.rollout("echo") == ended
    assert not store.save_rollout(ended), "a finished rollout is not written again"
    store.start_rollout(draft_rollout(), SPLIT)  # the next one may start


def test_rollouts_go_with_their_function(two_revisions: SQLiteStore) -> None:
    store = two_revisions
    store.start_rollout(draft_rollout(), SPLIT)
    assert store.delete_function("echo")
    assert store.rollout("echo") is None and store.running_rollouts() == []
