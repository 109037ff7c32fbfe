"""PostgreSQL state (``tidal up --state postgresql://...``): ``Store`` shared by several gateways.

Why it reuses the SQLite table groups: every group (``sqlite.py``, ``sqlite_*.py``) talks to its
database only through ``self._query(sql, params)``, ``with self._transaction() as db:
db.execute(...)`` and, for single statements, ``self._db.execute`` under ``self._lock``.
``PostgresConnection`` offers those three over one psycopg 3 connection and rewrites the few
SQLite-only statements (postgres_sql.translate), so both stores run the very same queries and the
same contract tests, and a new table group works on both at once.

Concurrency, in one process: one connection and one threading.Lock, like SQLite (admin calls
are rare, activations arrive in batches from one writer thread). Across gateways: every write
transaction first takes ``pg_advisory_xact_lock`` on a key of this schema, the equivalent of
SQLite's BEGIN IMMEDIATE, so a read-then-write (numbering a revision, checking a route for
conflicts, an idempotency key) cannot race another gateway. It runs at READ COMMITTED, so each
statement after the lock sees every write committed before it. Job claims take the same lock:
a claim batch reads the due jobs and marks them running in one locked transaction, so each job is
claimed exactly once across gateways (``FOR UPDATE SKIP LOCKED`` would let claims overlap; at a
few milliseconds per claim batch the one lock is not the bottleneck). Reads that span several
statements run in one REPEATABLE READ, READ ONLY transaction: one snapshot, no lock.

A connection lost (a PostgreSQL restart, a failover) is connected again by the next call, whose
first statement is then retried once; a call cut in its middle fails (and its transaction, if
any, was rolled back by the server).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, cast

import psycopg
from psycopg import sql

from tidal.store.errors import StoreError
from tidal.store.models import ActivationRow
from tidal.store.postgres_migrations import migrate
from tidal.store.postgres_sql import RETURNING_ID, parse_state_url, redact, translate
from tidal.store.sqlite import INSERT_ACTIVATIONS, SQLiteStore
from tidal.store.sqlite_base import SQLiteConnection
from tidal.store.sqlite_bulk import bulk_inserts

log = logging.getLogger("tidal.store")

# The first key of the two-key advisory lock space: "ti". The second is the schema's hash, so two
# tidal installations in two schemas of one database do not wait on each other.
LOCK_SPACE = 0x7469
CONNECT_TIMEOUT_S = 10  # unless the URL says (connect_timeout=...)
WRITE_LOCK = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
MAX_PARAMETERS = 65535  # the most bind parameters a PostgreSQL statement takes


class PostgresCursor:
    """What the table groups read of a sqlite3.Cursor: its rows, ``rowcount`` and ``lastrowid``."""

    def __init__(self, cursor: psycopg.Cursor[Any], lastrowid: int | None = None) -> None:
        self._cursor, self.lastrowid = cursor, lastrowid
        self.rowcount = cursor.rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._cursor.fetchall())


class PostgresSession:
    """What the table groups call on a sqlite3.Connection inside a transaction, in PostgreSQL."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, statement: str, params: Sequence[Any] = ()) -> PostgresCursor:
        translated = translate(statement)
        cursor = self._connection.execute(translated, _values(params))
        if translated.endswith(RETURNING_ID):
            row = cursor.fetchone()
            return PostgresCursor(cursor, int(row[0]) if row else None)
        return PostgresCursor(cursor)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        values = [_values(row) for row in rows]
        if values:
            with self._connection.cursor() as cursor:
                cursor.executemany(translate(statement), values)


class PostgresWrites:
    """``self._db`` of the table groups: each statement run on it is a write transaction of its own.

    Its callers hold the store's lock already (``with self._lock: self._db.execute(...)``).
    """

    def __init__(self, store: PostgresConnection) -> None:
        self._store = store

    def execute(self, statement: str, params: Sequence[Any] = ()) -> PostgresCursor:
        with self._store._begin(write=True) as session:
            return session.execute(statement, params)


class PostgresConnection(SQLiteConnection):
    def __init__(self, url: str) -> None:  # the SQLite connection's path is never opened here
        self._url, self.schema = parse_state_url(url)
        self.url = redact(url)
        self._lock = threading.Lock()
        self._connection = self._connect()
        try:
            migrate(self._connection, self.schema)
        except BaseException:
            self._connection.close()
            raise
        # The table groups are typed against sqlite3; these offer the part of it they use.
        self._db = cast(sqlite3.Connection, PostgresWrites(self))

    def _connect(self) -> psycopg.Connection[Any]:
        options: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(self._url):
            options["connect_timeout"] = CONNECT_TIMEOUT_S
        try:
            connection = psycopg.connect(self._url, **options)
        except psycopg.Error as error:
            why = " ".join(str(error).split())  # libpq's message spans lines
            raise StoreError(f"PostgreSQL at {self.url} does not answer: {why}") from error
        connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return connection

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, connected again if the last one was lost (called under the lock)."""
        if self._connection.closed or self._connection.broken:
            log.warning("state: the PostgreSQL connection was lost; connecting again to %s", self.url)
            self._connection = self._connect()
        return self._connection

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def _first(self, statement: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """A call's first statement (under the lock). On a connection found lost (a restart of
        PostgreSQL, a cut idle connection) it connects again and runs it once more: safe, since
        nothing of the call was done yet."""
        try:
            return self._live().execute(statement, params)
        except psycopg.OperationalError:
            if not self._connection.broken:
                raise
            return self._live().execute(statement, params)

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._first(translate(statement), _values(params)).fetchall()

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock, self._begin(write) as session:
            yield cast(sqlite3.Connection, session)

    @contextmanager
    def _begin(self, write: bool) -> Iterator[PostgresSession]:
        """One transaction (the caller holds the lock): written under the schema's write lock, or
        read in one snapshot. Commits at the end, rolls back on an exception."""
        # READ COMMITTED for writes: each statement after the lock sees what committed before it.
        self._first("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        connection = self._connection
        try:
            if write:
                connection.execute(WRITE_LOCK, (LOCK_SPACE, self.schema))
            yield PostgresSession(connection)
        except BaseException:
            with suppress(psycopg.Error):  # the error that got here is the one to report
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")


class PostgresStore(PostgresConnection, SQLiteStore):
    """Every table group of SQLiteStore, on PostgreSQL (see the module's docstring)."""

    def add_activation_rows(self, rows: Sequence[ActivationRow]) -> None:
        # ON CONFLICT cannot change one row twice in a statement: an id named twice keeps its last
        # row, as on SQLite, before the rows are cut into statements.
        if len({row[0] for row in rows}) != len(rows):
            rows = list({row[0]: row for row in rows}.values())
        super().add_activation_rows(rows)

    def _bulk_inserts(
        self, db: sqlite3.Connection, rows: Sequence[ActivationRow]
    ) -> Iterator[tuple[str, list[Any]]]:
        # psycopg's %s cannot name a value twice: each row brings all of its values.
        return bulk_inserts(INSERT_ACTIVATIONS, rows, MAX_PARAMETERS, share=False)


def _values(params: Sequence[Any]) -> tuple[Any, ...]:
    # SQLite stores booleans as 0/1 in INTEGER columns (activations.cold): so does this schema.
    return tuple(int(value) if isinstance(value, bool) else value for value in params)
