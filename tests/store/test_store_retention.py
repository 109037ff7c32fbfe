"""What the store deletes for retention, counts of 429s, and the migration that made both cheap."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import msgspec
import pytest
from store_helpers import connect, draft, user_version

from conftest import activation
from services import STORE_KINDS, open_test_store
from tidal.store import SQLiteStore
from tidal.store.migrations import MIGRATIONS, latest_version, migrate


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """This file's contract on SQLite and on PostgreSQL."""
    yield from open_test_store(request, tmp_path)


def starts(store: SQLiteStore, function: str = "echo") -> list[float]:
    return sorted(item.start for item in store.activations(function, limit=10_000))


def test_activations_older_than_the_cutoff_go_in_batches(store: SQLiteStore) -> None:
    store.add_activations(activation(n, 1000.0 + n) for n in range(10))  # starts 1000 ... 1009

    assert store.delete_activations(before=1006.0, keep_newest=0, batch=4) == 4
    assert store.delete_activations(before=1006.0, keep_newest=0, batch=4) == 2
    assert store.delete_activations(before=1006.0, keep_newest=0, batch=4) == 0
    assert starts(store) == [1006.0, 1007.0, 1008.0, 1009.0]


def test_only_the_newest_rows_are_kept_even_when_starts_tie(store: SQLiteStore) -> None:
    store.add_activations(activation(n, 1000.0 + n // 2) for n in range(10))  # pairs share a start

    assert store.delete_activations(before=0.0, keep_newest=3, batch=100) == 7
    kept = store.activations("echo", limit=100)
    assert len(kept) == 3
    assert sorted(item.id for item in kept) == ["a00007", "a00008", "a00009"]  # the last inserted


def test_the_row_limit_and_the_age_limit_together_keep_the_stricter(store: SQLiteStore) -> None:
    store.add_activations(activation(n, 1000.0 + n) for n in range(10))

    assert store.delete_activations(before=1008.0, keep_newest=5, batch=100) == 8  # age is stricter
    assert starts(store) == [1008.0, 1009.0]
    store.add_activations(activation(n, 2000.0 + n) for n in range(10, 20))
    assert store.delete_activations(before=1008.0, keep_newest=5, batch=100) == 7  # rows are stricter
    assert starts(store) == [2015.0, 2016.0, 2017.0, 2018.0, 2019.0]


def test_a_cutoff_taken_once_deletes_in_batches_what_was_past_it_then(store: SQLiteStore) -> None:
    store.add_activations(activation(n, 1000.0 + n // 2) for n in range(10))  # pairs share a start
    assert store.activations_cutoff(before=0.0, keep_newest=0) == (0.0, -(2**63))  # no limit: nothing goes
    cutoff = store.activations_cutoff(before=1001.0, keep_newest=3)  # the rows cap is stricter

    store.add_activations(activation(n, 1000.0 + n) for n in range(10, 13))  # newer, after the cutoff
    assert store.delete_activations_below(cutoff, batch=4) == 4
    assert store.delete_activations_below(cutoff, batch=4) == 3
    assert store.delete_activations_below(cutoff, batch=4) == 0
    assert sorted(item.id for item in store.activations("echo", limit=100)) == [
        "a00007", "a00008", "a00009", "a00010", "a00011", "a00012"
    ]  # fmt: skip


def test_old_scaling_events_go(store: SQLiteStore) -> None:
    for at in (100.0, 200.0, 300.0):
        store.add_scaling_event("echo", "echo-00001", at, 0, 1, "demand")

    assert store.delete_scaling_events(before=250.0, batch=1) == 1
    assert store.delete_scaling_events(before=250.0, batch=1) == 1
    assert store.delete_scaling_events(before=250.0, batch=1) == 0
    assert [event["at"] for event in store.scaling_events("echo")] == [300.0]


def test_rejections_add_up_per_function_and_minute(store: SQLiteStore) -> None:
    store.add_rejections({("echo", 60): 5, ("echo", 120): 1, ("other", 60): 2})
    store.add_rejections({("echo", 120): 4})

    assert store.rejections("echo", since=0.0) == [{"minute": 120, "count": 5}, {"minute": 60, "count": 5}]
    assert store.rejections("echo", since=100.0) == [{"minute": 120, "count": 5}]
    assert store.delete_rejections(before=100.0, batch=10) == 2  # echo's and other's minute 60
    assert store.rejections("other", since=0.0) == []


def test_code_digests_are_those_of_every_stored_revision(store: SQLiteStore) -> None:
    store.add_revision(draft("one", code_digest="shared"))
    store.add_revision(draft("two", code_digest="shared"))
    store.add_revision(draft("two", memory=256, code_digest="own"))
    assert store.code_digests() == {"shared", "own"}

    store.delete_function("two")
    assert store.code_digests() == {"shared"}


def test_environments_are_those_of_stored_revisions_that_have_one(store: SQLiteStore) -> None:
    store.add_revision(msgspec.structs.replace(draft("one"), environment="e" * 64))
    store.add_revision(draft("two"))  # no requirements: tidal's own environment, not listed
    assert store.environments() == {"e" * 64}
    assert store.revision("one-00001").environment == "e" * 64  # type: ignore[union-attr]
    store.delete_function("one")
    assert store.environments() == set()


def test_a_schema_2_state_dir_gains_the_indexes_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "tidal.db"
    with closing(connect(db)) as connection:
        assert migrate(connection, MIGRATIONS[:2]) == [1, 2]  # as the release before this one left it
    with closing(sqlite3.connect(db)) as connection:
        connection.execute(
            "INSERT INTO activations (id, function, revision, instance, start, duration_ms, billed_ms, "
            "memory_mb, cold, status, http_status, error_type, error_message, cpu_ms, peak_rss_kb, queue_ms, "
            "instance_start_ms, import_ms, setup_ms, logs) "
            "VALUES ('old', 'echo', 'echo-00001', 'i', 5.0, 1, 1, 128, 0, 'ok', 200, '', '', 0, 0, 0, 0, 0, 0, '')"
        )
        connection.commit()

    store = SQLiteStore(db)
    try:
        assert user_version(db) == latest_version()
        assert [item.id for item in store.activations("echo")] == ["old"]
        plan = store._query("EXPLAIN QUERY PLAN SELECT rowid FROM activations WHERE start < 1 ORDER BY start")
        assert "activations_by_start" in str(plan)
        assert store.delete_activations(before=10.0, keep_newest=0, batch=10) == 1
    finally:
        store.close()


def test_a_batch_of_rows_is_stored_whole_and_a_repeated_id_keeps_its_last_row(store: SQLiteStore) -> None:
    # 300 rows: several multi-row INSERTs (tidal.store.sqlite_bulk) in one transaction, and a last short one.
    rows = [msgspec.structs.astuple(activation(n, 1000.0 + n)) for n in range(300)]
    again = msgspec.structs.replace(activation(7, 1000.0 + 7), status="error", http_status=500)
    store.add_activation_rows([*rows, msgspec.structs.astuple(again)])
    assert starts(store) == [1000.0 + n for n in range(300)]
    assert store.activation(again.id) == again
