"""The migration runner: versions, bookkeeping, refusals and rollback."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from store_helpers import connect, copy_state_0_1_0, recorded_migrations, user_version

from tidal.store import SQLiteStore, StoreError
from tidal.store.migrations import MIGRATIONS, Migration, latest_version, migrate


def tables(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_fresh_db_runs_every_migration(tmp_path: Path) -> None:
    db = tmp_path / "tidal.db"
    with closing(connect(db)) as connection:
        assert migrate(connection, clock=lambda: 42.0) == [m.version for m in MIGRATIONS]
        applied_at = {row[0] for row in connection.execute("SELECT applied_at FROM schema_migrations")}

    assert user_version(db) == latest_version() == MIGRATIONS[-1].version
    assert recorded_migrations(db) == [(m.version, m.description) for m in MIGRATIONS]
    assert applied_at == {42.0}
    assert {"functions", "revisions", "keys", "activations", "scaling_events", "traffic"} <= tables(db)


def test_opening_the_store_migrates(tmp_path: Path) -> None:
    db = tmp_path / "tidal.db"
    SQLiteStore(db).close()
    assert user_version(db) == latest_version()
    with closing(connect(db)) as connection:
        assert migrate(connection) == []


def test_a_newer_state_dir_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state" / "tidal.db"
    SQLiteStore(db).close()
    with closing(sqlite3.connect(db)) as connection:
        connection.execute(f"PRAGMA user_version = {latest_version() + 1}")

    expected = (
        f"state dir {db.parent} was written by a newer tidal "
        f"(schema {latest_version() + 1}, this release knows {latest_version()})"
    )
    with pytest.raises(StoreError) as refused:
        SQLiteStore(db)
    assert str(refused.value) == expected
    assert user_version(db) == latest_version() + 1  # refused, not touched


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    db = tmp_path / "tidal.db"
    SQLiteStore(db).close()

    def half_done(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE half_done (x INTEGER)")
        connection.execute("ALTER TABLE keys ADD COLUMN half_done TEXT")
        raise RuntimeError("disk on fire")

    broken = (*MIGRATIONS, Migration(latest_version() + 1, "breaks halfway", half_done))
    with closing(connect(db)) as connection, pytest.raises(StoreError) as failed:
        migrate(connection, broken)

    assert f"schema migration {latest_version() + 1} (breaks halfway) failed" in str(failed.value)
    assert "disk on fire" in str(failed.value)
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert user_version(db) == latest_version()
    assert "half_done" not in tables(db)
    assert [version for version, _ in recorded_migrations(db)] == [m.version for m in MIGRATIONS]
    with closing(sqlite3.connect(db)) as connection:
        assert "half_done" not in {row[1] for row in connection.execute("PRAGMA table_info(keys)")}


def test_a_failing_migration_2_keeps_a_0_1_0_state_dir_as_it_was(tmp_path: Path) -> None:
    db = copy_state_0_1_0(tmp_path) / "tidal.db"

    def migration_2_then_crash(connection: sqlite3.Connection) -> None:
        MIGRATIONS[1].apply(connection)
        raise RuntimeError("power cut")

    broken = (MIGRATIONS[0], Migration(2, MIGRATIONS[1].description, migration_2_then_crash))
    with closing(connect(db)) as connection, pytest.raises(StoreError, match="power cut"):
        migrate(connection, broken)

    assert user_version(db) == 1  # the baseline stamp is its own step, and it committed
    assert "traffic" not in tables(db)
    with closing(sqlite3.connect(db)) as connection:
        spec = connection.execute("SELECT spec FROM revisions WHERE id = 'echo-00001'").fetchone()[0]
        assert '"public": true' in spec
        assert "key_id" not in {row[1] for row in connection.execute("PRAGMA table_info(activations)")}

    SQLiteStore(db).close()  # the real list then finishes the job
    assert user_version(db) == latest_version()


def test_an_unversioned_db_with_only_some_0_1_0_tables_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "tidal.db"
    with closing(sqlite3.connect(db)) as connection:
        connection.execute("CREATE TABLE functions (name TEXT PRIMARY KEY, created_at REAL NOT NULL)")
    with pytest.raises(StoreError, match=r"not a tidal 0\.1\.0 database"):
        SQLiteStore(db)
    assert user_version(db) == 0


def test_migrations_must_be_numbered_in_order(tmp_path: Path) -> None:
    with closing(connect(tmp_path / "tidal.db")) as connection:
        with pytest.raises(ValueError, match=r"numbered 1, 2, 3\.\.\. in order, got \[2, 1\]"):
            migrate(connection, (MIGRATIONS[1], MIGRATIONS[0]))
        assert user_version(tmp_path / "tidal.db") == 0


def test_migrate_needs_an_autocommit_connection(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "tidal.db")  # isolation_level "" (deferred) by default
    with closing(connection), pytest.raises(ValueError, match="isolation_level=None"):
        migrate(connection)
