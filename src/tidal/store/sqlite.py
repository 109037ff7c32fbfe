"""SQLite (WAL) state in ``<state-dir>/tidal.db``.

One connection guarded by a lock: admin calls are rare and short, and activations arrive in
batches from the metering writer's thread, so contention is negligible. WAL lets the CLI read
while the gateway writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from tidal.store.models import Activation, KeyRecord, Revision

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revisions (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    digest TEXT NOT NULL,
    code_digest TEXT NOT NULL,
    module TEXT NOT NULL,
    attribute TEXT NOT NULL,
    is_class INTEGER NOT NULL,
    style TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (function, number)
);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS activations (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    revision TEXT NOT NULL,
    instance TEXT NOT NULL,
    start REAL NOT NULL,
    duration_ms REAL NOT NULL,
    billed_ms INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    cold INTEGER NOT NULL,
    status TEXT NOT NULL,
    http_status INTEGER NOT NULL,
    error_type TEXT NOT NULL,
    error_message TEXT NOT NULL,
    cpu_ms REAL NOT NULL,
    peak_rss_kb INTEGER NOT NULL,
    queue_ms REAL NOT NULL,
    instance_start_ms REAL NOT NULL,
    import_ms REAL NOT NULL,
    setup_ms REAL NOT NULL,
    logs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS activations_by_function ON activations (function, start);
CREATE TABLE IF NOT EXISTS scaling_events (
    function TEXT NOT NULL,
    revision TEXT NOT NULL,
    at REAL NOT NULL,
    from_count INTEGER NOT NULL,
    to_count INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS scaling_events_by_function ON scaling_events (function, at);
"""

ACTIVATION_FIELDS = Activation.__struct_fields__
REVISION_COLUMNS = (
    "id, function, number, digest, code_digest, module, attribute, is_class, style, spec, created_at"
)


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- functions and revisions ---------------------------------------------------------------

    def add_revision(self, draft: Revision) -> tuple[Revision, bool]:
        """Store ``draft`` as the function's next revision unless it equals the latest one.

        Returns (revision, created). The number is assigned here, inside one transaction, so two
        concurrent deploys cannot take the same number.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                latest = self._db.execute(
                    f"SELECT {REVISION_COLUMNS} FROM revisions WHERE function = ? ORDER BY number DESC LIMIT 1",
                    (draft.function,),
                ).fetchone()
                if latest is not None and latest[3] == draft.digest:
                    self._db.execute("COMMIT")
                    return _revision(latest), False
                number = (latest[2] if latest else 0) + 1
                revision = msgspec.structs.replace(draft, number=number, id=f"{draft.function}-{number:05d}")
                self._db.execute(
                    "INSERT OR IGNORE INTO functions (name, created_at) VALUES (?, ?)",
                    (draft.function, revision.created_at),
                )
                self._db.execute(
                    f"INSERT INTO revisions ({REVISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        revision.id,
                        revision.function,
                        revision.number,
                        revision.digest,
                        revision.code_digest,
                        revision.module,
                        revision.attribute,
                        int(revision.is_class),
                        revision.style,
                        json.dumps(revision.spec),
                        revision.created_at,
                    ),
                )
                self._db.execute("COMMIT")
                return revision, True
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def function_names(self) -> list[str]:
        return [row[0] for row in self._query("SELECT name FROM functions ORDER BY name")]

    def revisions(self, function: str) -> list[Revision]:
        rows = self._query(
            f"SELECT {REVISION_COLUMNS} FROM revisions WHERE function = ? ORDER BY number DESC", (function,)
        )
        return [_revision(row) for row in rows]

    def latest_revisions(self) -> list[Revision]:
        rows = self._query(
            f"SELECT {REVISION_COLUMNS} FROM revisions r WHERE number = "
            "(SELECT MAX(number) FROM revisions WHERE function = r.function) ORDER BY function"
        )
        return [_revision(row) for row in rows]

    def delete_function(self, name: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM functions WHERE name = ?", (name,))
            return cursor.rowcount > 0

    # -- keys -------------------------------------------------------------------------------------

    def add_key(self, key_id: str, key_hash: str, scopes: list[str], description: str = "") -> KeyRecord:
        record = KeyRecord(key_id, scopes, time.time(), description)
        with self._lock:
            self._db.execute(
                "INSERT INTO keys (id, hash, scopes, description, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, key_hash, json.dumps(scopes), description, record.created_at),
            )
        return record

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        rows = self._query(
            "SELECT id, scopes, created_at, description, revoked_at FROM keys WHERE hash = ?", (key_hash,)
        )
        return _key(rows[0]) if rows else None

    def list_keys(self) -> list[KeyRecord]:
        rows = self._query(
            "SELECT id, scopes, created_at, description, revoked_at FROM keys ORDER BY created_at"
        )
        return [_key(row) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
            return cursor.rowcount > 0

    # -- activations -----------------------------------------------------------------------------

    def add_activations(self, activations: Iterable[Activation]) -> None:
        rows = [msgspec.structs.astuple(activation) for activation in activations]
        placeholders = ", ".join("?" * len(ACTIVATION_FIELDS))
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                f"INSERT OR REPLACE INTO activations ({', '.join(ACTIVATION_FIELDS)}) VALUES ({placeholders})",
                rows,
            )
            self._db.execute("COMMIT")

    def activations(
        self, function: str, limit: int = 50, activation_id: str | None = None
    ) -> list[Activation]:
        columns = ", ".join(ACTIVATION_FIELDS)
        if activation_id is not None:
            rows = self._query(
                f"SELECT {columns} FROM activations WHERE function = ? AND id = ?", (function, activation_id)
            )
        else:
            rows = self._query(
                f"SELECT {columns} FROM activations WHERE function = ? ORDER BY start DESC LIMIT ?",
                (function, limit),
            )
        return [Activation(*row) for row in rows]

    def add_scaling_event(self, function: str, revision: str, at: float, from_count: int, to_count: int,
                          reason: str) -> None:  # fmt: skip
        with self._lock:
            self._db.execute(
                "INSERT INTO scaling_events (function, revision, at, from_count, to_count, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (function, revision, at, from_count, to_count, reason),
            )

    def scaling_events(self, function: str, limit: int = 20) -> list[dict[str, object]]:
        rows = self._query(
            "SELECT revision, at, from_count, to_count, reason FROM scaling_events WHERE function = ? "
            "ORDER BY at DESC LIMIT ?",
            (function, limit),
        )
        keys = ("revision", "at", "from_count", "to_count", "reason")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def activation(self, activation_id: str) -> Activation | None:
        columns = ", ".join(ACTIVATION_FIELDS)
        rows = self._query(f"SELECT {columns} FROM activations WHERE id = ?", (activation_id,))
        return Activation(*rows[0]) if rows else None


def _revision(row: tuple[Any, ...]) -> Revision:
    (rev_id, function, number, digest, code_digest, module, attribute, is_class, style, spec, created_at) = (
        row
    )
    return Revision(
        rev_id,
        function,
        number,
        digest,
        code_digest,
        module,
        attribute,
        bool(is_class),
        style,
        json.loads(spec),
        created_at,
    )


def _key(row: tuple[Any, ...]) -> KeyRecord:
    key_id, scopes, created_at, description, revoked_at = row
    return KeyRecord(key_id, json.loads(scopes), created_at, description, revoked_at)
