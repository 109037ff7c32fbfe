"""What is PostgreSQL's own in the PostgreSQL store: its URL, its SQL rewrites, its migrations, and
two stores on one schema (two gateways) writing at once. The contract every store keeps runs on
both stores in the table groups' own test files (`store` fixtures over STORE_KINDS)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from store_helpers import draft

from tidal.auth.keys import Caller
from tidal.invoke.request import InvocationRequest
from tidal.jobs.model import DEFAULT_SETTINGS, new_job
from tidal.routing.model import RouteRecord
from tidal.store import SQLiteStore, StoreError, TrafficTarget
from tidal.store.models import InstanceLife
from tidal.store.postgres import PostgresStore
from tidal.store.postgres_migrations import MIGRATIONS, Migration, migrate, schema_version
from tidal.store.postgres_sql import parse_state_url, redact, translate

# -- the URL and the SQL rewrites (pure) -------------------------------------------------------------


def test_a_state_url_names_a_database_and_may_name_a_schema() -> None:
    assert parse_state_url("postgresql://u@h:5432/db") == ("postgresql://u@h:5432/db", "public")
    assert parse_state_url("postgres://u@h/db?schema=team_a&sslmode=require") == (
        "postgres://u@h/db?sslmode=require",
        "team_a",
    )
    for url, why in [
        ("mysql://u@h/db", "expected a postgresql:// URL"),
        ("postgresql://u@h:5432", "name the database"),
        ("postgresql://u@h/db?schema=a;drop", "not a plain name"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_state_url(url)
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT a FROM t WHERE b = ? AND c LIKE 'x%'", "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%'"),
        (
            "INSERT OR REPLACE INTO shadows (function, revision, percent) VALUES (?, ?, ?)",
            "INSERT INTO shadows (function, revision, percent) VALUES (%s, %s, %s) "
            "ON CONFLICT (function) DO UPDATE SET revision = EXCLUDED.revision, percent = EXCLUDED.percent",
        ),
        (
            "INSERT INTO rejections (function, minute, count) VALUES (?, ?, ?) "
            "ON CONFLICT (function, minute) DO UPDATE SET count = count + excluded.count",
            "INSERT INTO rejections (function, minute, count) VALUES (%s, %s, %s) "
            "ON CONFLICT (function, minute) DO UPDATE SET count = rejections.count + excluded.count",
        ),
        (  # nothing declared any more: every spec route goes
            "DELETE FROM routes WHERE function = ? AND origin = 'spec' AND id NOT IN ()",
            "DELETE FROM routes WHERE function = %s AND origin = 'spec'",
        ),
        (
            "INSERT INTO rollouts (function) VALUES (?)",
            "INSERT INTO rollouts (function) VALUES (%s) RETURNING id",
        ),
    ],
)
def test_sqlite_forms_are_rewritten(sqlite: str, postgres: str) -> None:
    assert translate(sqlite) == postgres


# -- migrations -----------------------------------------------------------------------------------------


@pytest.fixture
def connection(postgres_state_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    url, schema = parse_state_url(postgres_state_url)
    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as connection:
        yield connection


def test_a_fresh_schema_reaches_the_latest_version_once(
    postgres_state_url: str, connection: psycopg.Connection[tuple[object, ...]]
) -> None:
    schema = parse_state_url(postgres_state_url)[1]
    assert migrate(connection, schema) == [migration.version for migration in MIGRATIONS]
    assert migrate(connection, schema) == []  # a second gateway starting later applies nothing
    assert schema_version(connection) == MIGRATIONS[-1].version
    PostgresStore(postgres_state_url).close()  # and the store opens it as it is


def test_a_schema_written_by_a_newer_release_is_refused(
    postgres_state_url: str, connection: psycopg.Connection[tuple[object, ...]]
) -> None:
    schema = parse_state_url(postgres_state_url)[1]
    newer = Migration(len(MIGRATIONS) + 1, "from the future", lambda _: None)
    migrate(connection, schema, (*MIGRATIONS, newer))
    with pytest.raises(StoreError, match=r"newer tidal \(schema \d+, this release knows \d+\)"):
        PostgresStore(postgres_state_url)


def test_a_failed_step_leaves_the_previous_version(
    postgres_state_url: str, connection: psycopg.Connection[tuple[object, ...]]
) -> None:
    schema = parse_state_url(postgres_state_url)[1]
    broken = Migration(len(MIGRATIONS) + 1, "broken", lambda db: db.execute("CREATE TABLE functions ()"))
    with pytest.raises(StoreError, match=r"broken.*stays at version"):
        migrate(connection, schema, (*MIGRATIONS, broken))
    assert schema_version(connection) == MIGRATIONS[-1].version


def test_every_table_has_the_columns_of_sqlites_latest_schema(
    postgres_state_url: str, connection: psycopg.Connection[tuple[object, ...]], tmp_path: Path
) -> None:
    SQLiteStore(tmp_path / "tidal.db").close()
    with closing(sqlite3.connect(tmp_path / "tidal.db")) as lite:
        tables = [row[0] for row in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        expected = {
            table: {row[1] for row in lite.execute(f"PRAGMA table_info({table})")}
            for table in tables
            if table != "sqlite_sequence"
        }
    PostgresStore(postgres_state_url).close()
    schema = parse_state_url(postgres_state_url)[1]
    rows = connection.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s", (schema,)
    ).fetchall()
    found: dict[str, set[str]] = {}
    for table, column in rows:
        if column != "rowid":  # SQLite's is implicit; PostgreSQL's is a column of its own
            found.setdefault(str(table), set()).add(str(column))
    assert {table: found.get(table) for table in expected} == expected


def test_an_unreachable_server_is_a_store_error_that_says_where() -> None:
    with pytest.raises(
        StoreError, match=r"PostgreSQL at postgresql://u:\*\*\*@127.0.0.1:1/db does not answer"
    ):
        PostgresStore("postgresql://u:pw@127.0.0.1:1/db")  # refused at once


@pytest.fixture
def store_on_postgres(postgres_state_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(postgres_state_url)
    yield store
    store.close()


# -- two gateways on one schema ---------------------------------------------------------------------------


@pytest.fixture
def two_stores(postgres_state_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    first, second = PostgresStore(postgres_state_url), PostgresStore(postgres_state_url)
    yield first, second
    first.close()
    second.close()


def test_deploys_through_two_gateways_at_once_take_distinct_numbers(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    def deploy(index: int) -> None:
        two_stores[index % 2].add_revision(draft(code_digest=f"code-{index}"))

    threads = [threading.Thread(target=deploy, args=(index,)) for index in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, second = two_stores
    assert sorted(revision.number for revision in second.revisions("echo")) == list(range(1, 11))
    record = first.function("echo")
    assert record is not None and record.traffic == [TrafficTarget("echo-00010", 100)]


def test_jobs_are_claimed_exactly_once_across_gateways(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    caller = Caller("k1", frozenset({"invoke:f"}), presented=True)
    submitted = {
        two_stores[n % 2]
        .add_job(new_job(InvocationRequest("f", b"{}", caller=caller), DEFAULT_SETTINGS, 100.0))[0]
        .id
        for n in range(60)
    }
    claimed: list[list[str]] = [[], [], [], []]

    def claim(worker: int) -> None:
        while batch := two_stores[worker % 2].claim_jobs("f", 200.0, 300.0, 4):
            claimed[worker] += [job.id for job in batch]

    threads = [threading.Thread(target=claim, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [job_id for ids in claimed for job_id in ids]
    assert sorted(everything) == sorted(submitted)  # each once, none lost


def test_routes_conflict_across_gateways_and_declared_sets_shrink_to_nothing(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    first, second = two_stores
    first.add_revision(draft("echo"))
    route = RouteRecord("r1", "GET", "/hello", "echo", "spec", None, 1.0)
    assert first.sync_spec_routes("echo", [route]) == []
    clash = RouteRecord("r2", "GET", "/hello", "echo", "cli", None, 2.0)
    assert second.add_route(clash) == route  # the stored route it conflicts with; nothing written
    assert second.sync_spec_routes("echo", []) == []
    assert first.routes() == []
    assert second.add_route(clash) is None and first.delete_route("r2") and first.routes() == []


def test_instance_lives_end_and_go_by_age(store_on_postgres: PostgresStore) -> None:
    store = store_on_postgres
    store.add_instance_lives([InstanceLife("i1", "f", "f-00001", 128, 0.0, 100.0)], [("i1", 160.0)])
    assert store.delete_instance_lives(before=150.0, batch=10) == 0  # ended after the cutoff
    assert store.delete_instance_lives(before=200.0, batch=10) == 1 and store.instance_lives(0, 1e9) == []


def test_a_lost_connection_is_opened_again_by_the_next_call(
    postgres_state_url: str, connection: psycopg.Connection[tuple[object, ...]]
) -> None:
    store = PostgresStore(postgres_state_url)
    try:
        store.add_revision(draft())
        (pid,) = store._query("SELECT pg_backend_pid()")[0]
        connection.execute("SELECT pg_terminate_backend(%s)", (pid,))  # as a restart of PostgreSQL would
        assert [revision.id for revision in store.revisions("echo")] == ["echo-00001"]
        store.add_revision(draft(memory=256))  # and writes go on
        assert store._query("SELECT pg_backend_pid()")[0][0] != pid
    finally:
        store.close()
