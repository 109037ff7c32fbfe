"""A state dir written by tidal 0.1.0 opens in this release with its functions, keys and activations."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
from store_helpers import connect, copy_state_0_1_0, dump, recorded_migrations, schema, user_version

from tidal.auth.keys import hash_key
from tidal.store import SQLiteStore, TrafficTarget, revision_digest
from tidal.store.migrations import MIGRATIONS, latest_version, migrate


def raw_rows(db: Path, table: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()


def test_opening_it_stamps_the_baseline_and_runs_the_rest(tmp_path: Path) -> None:
    db = copy_state_0_1_0(tmp_path) / "tidal.db"
    assert user_version(db) == 0

    with closing(connect(db)) as connection:
        assert migrate(connection, clock=lambda: 1234.5) == [m.version for m in MIGRATIONS]

    assert user_version(db) == latest_version() == MIGRATIONS[-1].version
    assert recorded_migrations(db) == [(m.version, m.description) for m in MIGRATIONS]


def test_functions_revisions_and_traffic_survive(tmp_path: Path) -> None:
    db = copy_state_0_1_0(tmp_path) / "tidal.db"
    store = SQLiteStore(db)
    try:
        functions = store.functions()
        assert [function.name for function in functions] == ["echo"]
        assert functions[0].settings == {"public": True}  # both 0.1.0 deploys used --public
        assert functions[0].traffic == [TrafficTarget("echo-00002", 100)]
        assert store.function("echo") == functions[0]

        revisions = {revision.id: revision for revision in store.revisions("echo")}
        assert sorted(revisions) == ["echo-00001", "echo-00002"]
        for rev_id, memory in (("echo-00001", 128), ("echo-00002", 256)):
            revision = revisions[rev_id]
            assert store.revision(rev_id) == revision
            assert revision.spec["memory"] == memory
            assert "public" not in revision.spec
            assert revision.environment == ""  # migration 4: 0.1.0 revisions run in tidal's own
            assert (revision.module, revision.attribute, revision.is_class, revision.style) == (
                "echo",
                "echo",
                False,
                "native",
            )
            assert revision.digest == revision_digest(
                revision.code_digest,
                revision.module,
                revision.attribute,
                revision.is_class,
                revision.style,
                revision.spec,
            )
        assert [revision.id for revision in store.latest_revisions()] == ["echo-00002"]
    finally:
        store.close()


def test_an_identical_redeploy_after_the_upgrade_is_unchanged(tmp_path: Path) -> None:
    db = copy_state_0_1_0(tmp_path) / "tidal.db"
    (_, _, _, _, code_digest, module, attribute, is_class, style, spec_json, _) = raw_rows(db, "revisions")[1]
    # What the deployer of this release builds from the same `tidal deploy --memory 256 --public`.
    spec = json.loads(spec_json)
    spec.pop("public")
    store = SQLiteStore(db)
    try:
        newest = store.revision("echo-00002")
        assert newest is not None
        digest = revision_digest(code_digest, module, attribute, bool(is_class), style, spec)
        draft = msgspec.structs.replace(newest, id="", number=0, digest=digest, created_at=2e9)
        revision, created = store.add_revision(draft, settings={"public": True})
        assert (revision, created) == (newest, False)
    finally:
        store.close()


def test_keys_are_found_by_their_secret(tmp_path: Path) -> None:
    state_dir = copy_state_0_1_0(tmp_path)
    store = SQLiteStore(state_dir / "tidal.db")
    try:
        admin = store.key_by_hash(hash_key((state_dir / "admin.key").read_text().strip()))
        invoke = store.key_by_hash(hash_key((state_dir / "invoke-echo.key").read_text().strip()))
        assert admin is not None and invoke is not None
        assert (admin.id, admin.scopes, admin.revoked_at) == ("5649585d", ["admin"], None)
        assert (invoke.id, invoke.scopes, invoke.description) == (
            "0aa8459f",
            ["invoke:echo"],
            "fixture invoke key",
        )
        assert [key.id for key in store.list_keys()] == ["5649585d", "0aa8459f"]
    finally:
        store.close()


def test_activations_survive_with_the_new_fields_defaulted(tmp_path: Path) -> None:
    db = copy_state_0_1_0(tmp_path) / "tidal.db"
    before = raw_rows(db, "activations")
    store = SQLiteStore(db)
    try:
        activations = sorted(store.activations("echo"), key=lambda activation: activation.id)
    finally:
        store.close()

    summary = [(a.id, a.revision, a.cold, a.status, a.http_status, a.memory_mb) for a in activations]
    assert summary == [
        ("8b1f75a1d6000001", "echo-00001", True, "ok", 200, 128),
        ("8b1f75a1d6000002", "echo-00001", False, "ok", 200, 128),
        ("8b1f75a1d6000003", "echo-00002", True, "ok", 200, 256),
    ]
    assert all((a.key_id, a.trigger) == ("", "http") for a in activations)
    # Every 0.1.0 column keeps its value (cold read back as a bool, stored as 0/1).
    for row, activation in zip(before, activations, strict=True):
        assert msgspec.structs.astuple(activation)[: len(row)] == tuple(row)


def test_a_second_open_runs_nothing_and_changes_nothing(tmp_path: Path) -> None:
    db = copy_state_0_1_0(tmp_path) / "tidal.db"
    SQLiteStore(db).close()
    migrated = (dump(db), user_version(db))

    with closing(connect(db)) as connection:
        assert migrate(connection) == []
    SQLiteStore(db).close()

    assert (dump(db), user_version(db)) == migrated


def test_it_ends_with_the_schema_of_a_fresh_state_dir(tmp_path: Path) -> None:
    upgraded = copy_state_0_1_0(tmp_path) / "tidal.db"
    fresh = tmp_path / "fresh" / "tidal.db"
    SQLiteStore(upgraded).close()
    SQLiteStore(fresh).close()
    assert schema(upgraded) == schema(fresh)
