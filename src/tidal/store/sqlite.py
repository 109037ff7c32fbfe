"""SQLite (WAL) state in ``<state-dir>/tidal.db``: the default implementation of ``Store``.

One connection guarded by a lock: admin calls are rare and short, and activations arrive in
batches from the metering writer's thread, so contention is negligible. WAL lets the CLI read
while the gateway writes. Opening the store applies the pending schema migrations (migrations.py);
a state dir written by a newer release is refused with StoreError.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from tidal.store.migrations import migrate
from tidal.store.models import (
    Activation,
    FunctionRecord,
    KeyRecord,
    Revision,
    RevisionWindow,
    Rollout,
    RolloutDecision,
    ShadowConfig,
    ShadowResult,
    TrafficTarget,
    check_traffic,
)

# The SQL column lists are the records' fields: one list, one place.
ACTIVATION_FIELDS = Activation.__struct_fields__
ACTIVATION_COLUMNS = ", ".join(ACTIVATION_FIELDS)
REVISION_COLUMNS = ", ".join(Revision.__struct_fields__)
KEY_COLUMNS = ", ".join(KeyRecord.__struct_fields__)
SCALING_EVENT_COLUMNS = ("revision", "at", "from_count", "to_count", "reason")
TRAFFIC_QUERY = "SELECT function, revision, percent, tag FROM traffic"
TRAFFIC_ORDER = "function, percent DESC, revision"  # the main share first
SMALLEST_ROWID = -(2**63)
SHADOW_FIELDS = ShadowConfig.__struct_fields__
SHADOW_COLUMNS = ", ".join(SHADOW_FIELDS)
SHADOW_RESULT_COLUMNS = ", ".join(ShadowResult.__struct_fields__)
ROLLOUT_COLUMNS = ", ".join(Rollout.__struct_fields__)
DECISION_COLUMNS = ", ".join(RolloutDecision.__struct_fields__)


class SQLiteStore:
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
                _write_traffic(db, draft.function, [TrafficTarget(revision.id, 100)])
        return revision, created

    def function_names(self) -> list[str]:
        return [row[0] for row in self._query("SELECT name FROM functions ORDER BY name")]

    def functions(self) -> list[FunctionRecord]:
        with self._transaction(write=False) as db:
            rows = db.execute("SELECT name, created_at, settings FROM functions ORDER BY name").fetchall()
            traffic = _traffic_by_function(db.execute(f"{TRAFFIC_QUERY} ORDER BY {TRAFFIC_ORDER}"))
        return [_function(row, traffic.get(row[0], [])) for row in rows]

    def function(self, name: str) -> FunctionRecord | None:
        with self._transaction(write=False) as db:
            row = db.execute(
                "SELECT name, created_at, settings FROM functions WHERE name = ?", (name,)
            ).fetchone()
            traffic = _traffic_by_function(
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
            revision_ids = {
                row[0] for row in db.execute("SELECT id FROM revisions WHERE function = ?", (name,))
            }
            check_traffic(name, targets, revision_ids)
            _write_traffic(db, name, targets)

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
        rows = [msgspec.structs.astuple(activation) for activation in activations]
        placeholders = ", ".join("?" * len(ACTIVATION_FIELDS))
        with self._transaction() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO activations ({ACTIVATION_COLUMNS}) VALUES ({placeholders})", rows
            )

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
        ``start`` are cut exactly at the ``keep_newest`` edge and each batch reads only what it deletes.
        """
        with self._transaction() as db:
            bound = (before, SMALLEST_ROWID)  # (start, rowid) below this: older than ``before``
            if keep_newest > 0:
                edge = db.execute(
                    "SELECT start, rowid FROM activations ORDER BY start DESC, rowid DESC LIMIT 1 OFFSET ?",
                    (keep_newest,),
                ).fetchone()  # the newest row beyond the newest ``keep_newest``
                if edge is not None and edge[0] >= before:
                    bound = (edge[0], edge[1] + 1)
            cursor = db.execute(
                "DELETE FROM activations WHERE rowid IN (SELECT rowid FROM activations "
                "WHERE (start, rowid) < (?, ?) ORDER BY start, rowid LIMIT ?)",
                (*bound, batch),
            )
            return cursor.rowcount

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

    # -- per-revision windows and canary rollouts (tidal.rollout) ----------------------------------

    def revision_windows(self, function: str, since: float, until: float) -> list[RevisionWindow]:
        window = (function, since, until)
        where = "WHERE function = ? AND start >= ? AND start < ?"  # the (function, start) index
        with self._transaction(write=False) as db:
            counts = db.execute(
                f"SELECT revision, status, COUNT(*), SUM(cold) FROM activations {where} GROUP BY revision, status",
                window,
            ).fetchall()
            warm = db.execute(
                f"SELECT revision, duration_ms FROM activations {where} AND cold = 0 "
                "ORDER BY revision, duration_ms",
                window,
            ).fetchall()
        statuses: dict[str, dict[str, int]] = {}
        cold: dict[str, int] = {}
        for revision, status, count, colds in counts:
            statuses.setdefault(revision, {})[status] = count
            cold[revision] = cold.get(revision, 0) + int(colds or 0)
        warm_ms: dict[str, list[float]] = {}
        for revision, duration_ms in warm:
            warm_ms.setdefault(revision, []).append(duration_ms)
        return [
            RevisionWindow(revision, statuses[revision], cold[revision], warm_ms.get(revision, []))
            for revision in sorted(statuses)
        ]

    def start_rollout(
        self, draft: Rollout, traffic: list[TrafficTarget], decision: RolloutDecision | None = None
    ) -> Rollout:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM functions WHERE name = ?", (draft.function,)).fetchone() is None:
                raise KeyError(draft.function)
            running = "SELECT 1 FROM rollouts WHERE function = ? AND state = 'running'"
            if db.execute(running, (draft.function,)).fetchone() is not None:
                raise ValueError(f"a rollout of {draft.function!r} is already running")
            revision_ids = {
                row[0] for row in db.execute("SELECT id FROM revisions WHERE function = ?", (draft.function,))
            }
            check_traffic(draft.function, traffic, revision_ids)
            _write_traffic(db, draft.function, traffic)
            fields = Rollout.__struct_fields__[1:]  # all but the id SQLite assigns
            cursor = db.execute(
                f"INSERT INTO rollouts ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
                _rollout_row(draft)[1:],
            )
            assert cursor.lastrowid is not None
            rollout = msgspec.structs.replace(draft, id=cursor.lastrowid)
            if decision is not None:
                _write_decision(db, msgspec.structs.replace(decision, rollout=rollout.id))
        return rollout

    def rollout(self, function: str) -> Rollout | None:
        rows = self._query(
            f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE function = ? ORDER BY id DESC LIMIT 1", (function,)
        )
        return _rollout(rows[0]) if rows else None

    def running_rollouts(self) -> list[Rollout]:
        rows = self._query(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE state = 'running' ORDER BY id")
        return [_rollout(row) for row in rows]

    def rollout_decisions(self, rollout_id: int) -> list[RolloutDecision]:
        rows = self._query(
            f"SELECT {DECISION_COLUMNS} FROM rollout_decisions WHERE rollout = ? ORDER BY at, rowid",
            (rollout_id,),
        )
        return [_decision(row) for row in rows]

    def save_rollout(
        self,
        rollout: Rollout,
        decision: RolloutDecision | None = None,
        traffic: list[TrafficTarget] | None = None,
        expected: list[TrafficTarget] | None = None,
    ) -> bool:
        with self._transaction() as db:
            state = db.execute("SELECT state FROM rollouts WHERE id = ?", (rollout.id,)).fetchone()
            if state is None or state[0] != "running":
                return False
            if expected is not None:
                current = _traffic_by_function(
                    db.execute(f"{TRAFFIC_QUERY} WHERE function = ?", (rollout.function,))
                ).get(rollout.function, [])
                if set(current) != set(expected):
                    return False
            if traffic is not None:
                revision_ids = {
                    row[0]
                    for row in db.execute("SELECT id FROM revisions WHERE function = ?", (rollout.function,))
                }
                check_traffic(rollout.function, traffic, revision_ids)
                _write_traffic(db, rollout.function, traffic)
            db.execute(
                "UPDATE rollouts SET step = ?, step_started_at = ?, state = ?, reason = ?, finished_at = ? "
                "WHERE id = ?",
                (rollout.step, rollout.step_started_at, rollout.state, rollout.reason, rollout.finished_at,
                 rollout.id),
            )  # fmt: skip
            if decision is not None:
                _write_decision(db, decision)
        return True

    # -- shadow traffic (tidal.shadow) --------------------------------------------------------------

    def set_shadow(self, config: ShadowConfig) -> None:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM functions WHERE name = ?", (config.function,)).fetchone() is None:
                raise KeyError(config.function)
            owner = db.execute("SELECT function FROM revisions WHERE id = ?", (config.revision,)).fetchone()
            if owner is None or owner[0] != config.function:
                raise ValueError(
                    f"revision {config.revision!r} is not a revision of function {config.function!r}"
                )
            db.execute(
                f"INSERT OR REPLACE INTO shadows ({SHADOW_COLUMNS}) VALUES ({', '.join('?' * len(SHADOW_FIELDS))})",
                msgspec.structs.astuple(config),
            )

    def shadow(self, function: str) -> ShadowConfig | None:
        rows = self._query(f"SELECT {SHADOW_COLUMNS} FROM shadows WHERE function = ?", (function,))
        return ShadowConfig(*rows[0]) if rows else None

    def delete_shadow(self, function: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM shadows WHERE function = ?", (function,)).rowcount > 0

    def add_shadow_results(
        self, results: Iterable[ShadowResult], skips: Mapping[tuple[str, str, int, str], int]
    ) -> None:
        rows = [msgspec.structs.astuple(result) for result in results]
        with self._transaction() as db:
            db.executemany(
                f"INSERT INTO shadow_results ({SHADOW_RESULT_COLUMNS}) "
                f"VALUES ({', '.join('?' * len(ShadowResult.__struct_fields__))})",
                rows,
            )
            db.executemany(
                "INSERT INTO shadow_skips (function, revision, minute, reason, count) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (function, revision, minute, reason) DO UPDATE SET count = count + excluded.count",
                [(*key, count) for key, count in skips.items()],
            )

    def shadow_results(
        self, function: str, since: float, revision: str | None = None, limit: int = 100_000
    ) -> list[ShadowResult]:
        only = "" if revision is None else " AND revision = ?"
        rows = self._query(
            f"SELECT {SHADOW_RESULT_COLUMNS} FROM shadow_results WHERE function = ? AND at >= ?{only} "
            "ORDER BY at DESC LIMIT ?",
            (function, since, *([] if revision is None else [revision]), limit),
        )
        return [ShadowResult(*row) for row in rows]

    def shadow_skips(self, function: str, since: float, revision: str | None = None) -> dict[str, int]:
        only = "" if revision is None else " AND revision = ?"
        # A minute counts when it ends after ``since``: a report "since 10 s ago" shows this minute's.
        rows = self._query(
            f"SELECT reason, SUM(count) FROM shadow_skips WHERE function = ? AND minute > ? - 60{only} "
            "GROUP BY reason",
            (function, since, *([] if revision is None else [revision])),
        )
        return {reason: int(total) for reason, total in rows}

    def delete_shadow_results(self, before: float, batch: int) -> int:
        with self._transaction() as db:
            results = db.execute(
                "DELETE FROM shadow_results WHERE rowid IN "
                "(SELECT rowid FROM shadow_results WHERE at < ? ORDER BY at LIMIT ?)",
                (before, batch),
            ).rowcount
            skips = db.execute(
                "DELETE FROM shadow_skips WHERE rowid IN "
                "(SELECT rowid FROM shadow_skips WHERE minute < ? ORDER BY minute LIMIT ?)",
                (before, batch),
            ).rowcount
        return results + skips


# -- rows <-> records (inside a transaction where it matters) ------------------------------------------


def _write_settings(db: sqlite3.Connection, name: str, settings: dict[str, object]) -> None:
    cursor = db.execute("UPDATE functions SET settings = ? WHERE name = ?", (json.dumps(settings), name))
    if cursor.rowcount == 0:
        raise KeyError(name)


def _write_traffic(db: sqlite3.Connection, name: str, targets: list[TrafficTarget]) -> None:
    db.execute("DELETE FROM traffic WHERE function = ?", (name,))
    db.executemany(
        "INSERT INTO traffic (function, revision, percent, tag) VALUES (?, ?, ?, ?)",
        [(name, target.revision, target.percent, target.tag) for target in targets],
    )


def _traffic_by_function(rows: Iterable[tuple[Any, ...]]) -> dict[str, list[TrafficTarget]]:
    traffic: dict[str, list[TrafficTarget]] = {}
    for function, revision, percent, tag in rows:
        traffic.setdefault(function, []).append(TrafficTarget(revision, percent, tag))
    return traffic


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


def _rollout_row(rollout: Rollout) -> tuple[Any, ...]:
    row = msgspec.structs.asdict(rollout)
    row["steps"] = json.dumps(rollout.steps)
    return tuple(row.values())


def _rollout(row: tuple[Any, ...]) -> Rollout:
    values = dict(zip(Rollout.__struct_fields__, row, strict=True))
    values["steps"] = json.loads(values["steps"])
    return Rollout(**values)


def _decision(row: tuple[Any, ...]) -> RolloutDecision:
    values = dict(zip(RolloutDecision.__struct_fields__, row, strict=True))
    values["canary"], values["stable"] = json.loads(values["canary"]), json.loads(values["stable"])
    return RolloutDecision(**values)


def _write_decision(db: sqlite3.Connection, decision: RolloutDecision) -> None:
    row = msgspec.structs.asdict(decision)
    row["canary"], row["stable"] = json.dumps(decision.canary), json.dumps(decision.stable)
    db.execute(
        f"INSERT INTO rollout_decisions ({DECISION_COLUMNS}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()),
    )


def _key(row: tuple[Any, ...]) -> KeyRecord:
    values = dict(zip(KeyRecord.__struct_fields__, row, strict=True))
    values["scopes"] = json.loads(values["scopes"])
    return KeyRecord(**values)
