"""The connection every SQLite table group shares: one connection, one lock, transactions.

``SQLiteStore`` (sqlite.py) is made of table groups, each a class of its own module on top of
this one, so no single file holds every table.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tidal.store.migrations import migrate
from tidal.store.models import TrafficTarget

TRAFFIC_QUERY = "SELECT function, revision, percent, tag FROM traffic"
TRAFFIC_ORDER = "function, percent DESC, revision"  # the main share first


class SQLiteConnection:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Off by default in SQLite, and per connection: deleting a function cascades through it.
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """All statements inside see one snapshot and commit (or, on an exception, roll back) at once."""
        with self._lock:
            # IMMEDIATE takes the write lock up front: a read-then-write cannot lose a race.
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def revision_ids(db: sqlite3.Connection, function: str) -> set[str]:
    return {row[0] for row in db.execute("SELECT id FROM revisions WHERE function = ?", (function,))}


def write_traffic(db: sqlite3.Connection, name: str, targets: list[TrafficTarget]) -> None:
    db.execute("DELETE FROM traffic WHERE function = ?", (name,))
    db.executemany(
        "INSERT INTO traffic (function, revision, percent, tag) VALUES (?, ?, ?, ?)",
        [(name, target.revision, target.percent, target.tag) for target in targets],
    )


def traffic_by_function(rows: Iterable[tuple[Any, ...]]) -> dict[str, list[TrafficTarget]]:
    traffic: dict[str, list[TrafficTarget]] = {}
    for function, revision, percent, tag in rows:
        traffic.setdefault(function, []).append(TrafficTarget(revision, percent, tag))
    return traffic
