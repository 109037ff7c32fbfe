"""SQLite (WAL) state in ``<state-dir>/tidal.db``: the default implementation of ``Store``.

One connection guarded by a lock: admin calls are rare and short, and activations arrive in
batches from the metering writer's thread, so contention is negligible. WAL lets the CLI read
while the gateway writes. Opening the store applies the pending schema migrations (migrations.py);
a state dir written by a newer release is refused with StoreError.

The connection is ``sqlite_base.SQLiteConnection``; functions, revisions, keys, activations and
scaling events are here, and the later table groups each have a module of their own
(``sqlite_rollouts.py``, ``sqlite_shadow.py``, ``sqlite_jobs.py``), joined by ``SQLiteStore``'s bases.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgspec

from tidal.store.models import (
    Activation,
    ActivationCutoff,
    ActivationRow,
    FunctionRecord,
    KeyRecord,
    Revision,
    TrafficTarget,
    check_traffic,
)
from tidal.store.sqlite_base import (
    TRAFFIC_ORDER,
    TRAFFIC_QUERY,
    revision_ids,
    traffic_by_function,
    write_traffic,
)
from tidal.store.sqlite_bulk import bulk_inserts
from tidal.store.sqlite_jobs import JobTables
from tidal.store.sqlite_keepalive import KeepAliveTables
from tidal.store.sqlite_limits import LimitTables
from tidal.store.sqlite_rollouts import RolloutTables
from tidal.store.sqlite_routes import RouteTables
from tidal.store.sqlite_shadow import ShadowTables
from tidal.store.sqlite_triggers import TriggerTables
from tidal.store.sqlite_usage import UsageTables

# The SQL column lists are the records' fields: one list, one place.
ACTIVATION_FIELDS = Activation.__struct_fields__
ACTIVATION_COLUMNS = ", ".join(ACTIVATION_FIELDS)
REVISION_COLUMNS = ", ".join(Revision.__struct_fields__)
KEY_COLUMNS = ", ".join(KeyRecord.__struct_fields__)
SCALING_EVENT_COLUMNS = ("revision", "at", "from_count", "to_count", "reason")
SMALLEST_ROWID = -(2**63)
INSERT_ACTIVATIONS = f"INSERT OR REPLACE INTO activations ({ACTIVATION_COLUMNS})"


class SQLiteStore(
    RolloutTables, ShadowTables, JobTables, TriggerTables, UsageTables, KeepAliveTables, LimitTables,
    RouteTables,
):  # fmt: skip
    # -- functions and revisions ---------------------------------------------------------------

    def add_revision(
        self, draft: Revision, settings: dict[str, object] | None = None, serve: bool = True
    ) -> tuple[Revision, bool]:
        """Store ``draft`` as the function's next revision unless it equals the latest one.

        Returns (revision, created). The number is assigned here, inside one transaction, so two
        concurrent deploys cannot take the same number. In the same transaction: ``settings``, if
        given, replaces the function's settings (a changed ``public`` needs no new revision), and
        ``serve`` sends all traffic to the returned revision (a redeploy of the same code too).
        """
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {REVISION_COLUMNS} FROM revisions WHERE function = ? ORDER BY number DESC LIMIT 1",
                (draft.function,),
            ).fetchone()
            latest = _revision(row) if row else None
            if latest is not None and latest.digest == draft.digest:
                revision, created = latest, False
            else:
                number = (latest.number if latest else 0) + 1
                revision = msgspec.structs.replace(draft, number=number, id=f"{draft.function}-{number:05d}")
                created = True
                db.execute(
                    "INSERT OR IGNORE INTO functions (name, created_at) VALUES (?, ?)",
                    (draft.function, revision.created_at),
                )
                placeholders = ", ".join("?" * len(Revision.__struct_fields__))
                db.execute(
                    f"INSERT INTO revisions ({REVISION_COLUMNS}) VALUES ({placeholders})",
                    _revision_row(revision),
                )
            if settings is not None:
                _write_settings(db, draft.function, settings)
            if serve:
                write_traffic(db, draft.function, [TrafficTarget(revision.id, 100)])
        return revision, created

    def function_names(self) -> list[str]:
        return [row[0] for row in self._query("SELECT name FROM functions ORDER BY name")]

    def functions(self) -> list[FunctionRecord]:
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT name, created_at, settings FROM functions ORDER BY name").fetchall()
            traffic = traffic_by_function(db.execute(f"{TRAFFIC_QUERY} ORDER BY {TRAFFIC_ORDER}"))
        return [_function(row, traffic.get(row[0], [])) for row in rows]

    def function(self, name: str) -> FunctionRecord | None:
        with self._transaction(write=False) as db:
            row = db.execute(
                "SELECT name, created_at, settings FROM functions WHERE name = ?", (name,)
            ).fetchone()
            traffic = traffic_by_function(
                db.execute(f"{TRAFFIC_QUERY} WHERE function = ? ORDER BY {TRAFFIC_ORDER}", (name,))
            )
        return _function(row, traffic.get(name, [])) if row else None

    def revision(self, revision_id: str) -> Revision | None:
        rows = self._query(f"SELECT {REVISION_COLUMNS} FROM revisions WHERE id = ?", (revision_id,))
        return _revision(rows[0]) if rows else None

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

    def set_function_settings(self, name: str, settings: dict[str, object]) -> None:
        with self._transaction() as db:
            _write_settings(db, name, settings)

    def set_traffic(self, name: str, targets: list[TrafficTarget]) -> None:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM functions WHERE name = ?", (name,)).fetchone() is None:
                raise KeyError(name)
            check_traffic(name, targets, revision_ids(db, name))
            write_traffic(db, name, targets)

    def delete_function(self, name: str) -> bool:
        # Revisions and traffic go with it (ON DELETE CASCADE, foreign_keys is on).
        with self._lock:
            cursor = self._db.execute("DELETE FROM functions WHERE name = ?", (name,))
            return cursor.rowcount > 0

    def code_digests(self) -> set[str]:
        return {row[0] for row in self._query("SELECT DISTINCT code_digest FROM revisions")}

    def environments(self) -> set[str]:
        return {row[0] for row in self._query("SELECT DISTINCT environment FROM revisions") if row[0]}

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
        rows = self._query(f"SELECT {KEY_COLUMNS} FROM keys WHERE hash = ?", (key_hash,))
        return _key(rows[0]) if rows else None

    def list_keys(self) -> list[KeyRecord]:
        rows = self._query(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at")
        return [_key(row) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
            return cursor.rowcount > 0

    # -- activations -----------------------------------------------------------------------------

    def add_activations(self, activations: Iterable[Activation]) -> None:
        self.add_activation_rows([msgspec.structs.astuple(activation) for activation in activations])

    def add_activation_rows(self, rows: Sequence[ActivationRow]) -> None:
        """Up to ``ROWS_PER_INSERT`` rows a statement, the values they share bound once
        (tidal.store.sqlite_bulk): this is most of what the journal folder does per record. An id
        named twice keeps its last row (INSERT OR REPLACE, row after row)."""
        with self._transaction() as db:
            for sql, parameters in self._bulk_inserts(db, rows):
                db.execute(sql, parameters)

    def _bulk_inserts(
        self, db: sqlite3.Connection, rows: Sequence[ActivationRow]
    ) -> Iterator[tuple[str, list[Any]]]:
        return bulk_inserts(INSERT_ACTIVATIONS, rows, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))

    def activations(
        self, function: str, limit: int = 50, activation_id: str | None = None
    ) -> list[Activation]:
        if activation_id is not None:
            rows = self._query(
                f"SELECT {ACTIVATION_COLUMNS} FROM activations WHERE function = ? AND id = ?",
                (function, activation_id),
            )
        else:
            rows = self._query(
                f"SELECT {ACTIVATION_COLUMNS} FROM activations WHERE function = ? ORDER BY start DESC LIMIT ?",
                (function, limit),
            )
        return [_activation(row) for row in rows]

    def activation(self, activation_id: str) -> Activation | None:
        rows = self._query(f"SELECT {ACTIVATION_COLUMNS} FROM activations WHERE id = ?", (activation_id,))
        return _activation(rows[0]) if rows else None

    def delete_activations(self, before: float, keep_newest: int, batch: int) -> int:
        """One batch, oldest first, by (start, rowid): the index on start holds both, so ties on
        ``start`` are cut exactly at the ``keep_newest`` edge. Finds the edge anew (a walk past the
        newest ``keep_newest`` rows): a sweep of many batches asks ``activations_cutoff`` once instead.
        """
        with self._transaction() as db:
            return self._delete_below(db, self._cutoff(db, before, keep_newest), batch)

    def activations_cutoff(self, before: float, keep_newest: int) -> ActivationCutoff:
        with self._transaction(write=False) as db:
            return self._cutoff(db, before, keep_newest)

    def delete_activations_below(self, cutoff: ActivationCutoff, batch: int) -> int:
        with self._transaction() as db:
            return self._delete_below(db, cutoff, batch)

    @staticmethod
    def _cutoff(db: sqlite3.Connection, before: float, keep_newest: int) -> ActivationCutoff:
        """The older of ``before`` and the newest row beyond the newest ``keep_newest``: SQLite steps
        through the ``keep_newest`` rows of the index on start to find it (an OFFSET is a walk)."""
        cutoff = (before, SMALLEST_ROWID)  # (start, rowid) below this: older than ``before``
        if keep_newest > 0:
            edge = db.execute(
                "SELECT start, rowid FROM activations ORDER BY start DESC, rowid DESC LIMIT 1 OFFSET ?",
                (keep_newest,),
            ).fetchone()
            if edge is not None and edge[0] >= before:
                cutoff = (edge[0], edge[1] + 1)
        return cutoff

    @staticmethod
    def _delete_below(db: sqlite3.Connection, cutoff: ActivationCutoff, batch: int) -> int:
        """Reads only what it deletes: the first ``batch`` entries of the index on start."""
        cursor = db.execute(
            "DELETE FROM activations WHERE rowid IN (SELECT rowid FROM activations "
            "WHERE (start, rowid) < (?, ?) ORDER BY start, rowid LIMIT ?)",
            (*cutoff, batch),
        )
        return int(cursor.rowcount)

    def add_rejections(self, counts: Mapping[tuple[str, int], int]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO rejections (function, minute, count) VALUES (?, ?, ?) "
                "ON CONFLICT (function, minute) DO UPDATE SET count = count + excluded.count",
                [(function, minute, count) for (function, minute), count in counts.items()],
            )

    def rejections(self, function: str, since: float) -> list[dict[str, int]]:
        rows = self._query(
            "SELECT minute, count FROM rejections WHERE function = ? AND minute >= ? ORDER BY minute DESC",
            (function, since),
        )
        return [{"minute": minute, "count": count} for minute, count in rows]

    def delete_rejections(self, before: float, batch: int) -> int:
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM rejections WHERE rowid IN "
                "(SELECT rowid FROM rejections WHERE minute < ? ORDER BY minute LIMIT ?)",
                (before, batch),
            )
            return cursor.rowcount

    # -- scaling events --------------------------------------------------------------------------

    def add_scaling_event(
        self, function: str, revision: str, at: float, from_count: int, to_count: int, reason: str
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO scaling_events (function, revision, at, from_count, to_count, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (function, revision, at, from_count, to_count, reason),
            )

    def scaling_events(self, function: str, limit: int = 20) -> list[dict[str, object]]:
        rows = self._query(
            f"SELECT {', '.join(SCALING_EVENT_COLUMNS)} FROM scaling_events WHERE function = ? "
            "ORDER BY at DESC LIMIT ?",
            (function, limit),
        )
        return [dict(zip(SCALING_EVENT_COLUMNS, row, strict=True)) for row in rows]

    def delete_scaling_events(self, before: float, batch: int) -> int:
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM scaling_events WHERE rowid IN "
                "(SELECT rowid FROM scaling_events WHERE at < ? ORDER BY at LIMIT ?)",
                (before, batch),
            )
            return cursor.rowcount


def _write_settings(db: sqlite3.Connection, name: str, settings: dict[str, object]) -> None:
    cursor = db.execute("UPDATE functions SET settings = ? WHERE name = ?", (json.dumps(settings), name))
    if cursor.rowcount == 0:
        raise KeyError(name)


def _function(row: tuple[Any, ...], traffic: list[TrafficTarget]) -> FunctionRecord:
    name, created_at, settings = row
    return FunctionRecord(name, created_at, json.loads(settings), traffic)


def _revision_row(revision: Revision) -> tuple[Any, ...]:
    row = msgspec.structs.asdict(revision)
    row["is_class"] = int(revision.is_class)
    row["spec"] = json.dumps(revision.spec)
    return tuple(row.values())


def _revision(row: tuple[Any, ...]) -> Revision:
    values = dict(zip(Revision.__struct_fields__, row, strict=True))
    values["is_class"] = bool(values["is_class"])
    values["spec"] = json.loads(values["spec"])
    return Revision(**values)


def _activation(row: tuple[Any, ...]) -> Activation:
    activation = Activation(*row)
    activation.cold = bool(activation.cold)  # stored as 0/1
    return activation


def _key(row: tuple[Any, ...]) -> KeyRecord:
    values = dict(zip(KeyRecord.__struct_fields__, row, strict=True))
    values["scopes"] = json.loads(values["scopes"])
    return KeyRecord(**values)
