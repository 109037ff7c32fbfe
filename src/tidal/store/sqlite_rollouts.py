"""Per-revision windows of activations and canary rollouts (tidal.rollout), in SQLite."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import msgspec

from tidal.store.models import RevisionWindow, Rollout, RolloutDecision, TrafficTarget, check_traffic
from tidal.store.sqlite_base import (
    TRAFFIC_QUERY,
    SQLiteConnection,
    revision_ids,
    traffic_by_function,
    write_traffic,
)

ROLLOUT_COLUMNS = ", ".join(Rollout.__struct_fields__)
DECISION_COLUMNS = ", ".join(RolloutDecision.__struct_fields__)


class RolloutTables(SQLiteConnection):
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
            check_traffic(draft.function, traffic, revision_ids(db, draft.function))
            write_traffic(db, draft.function, traffic)
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
                current = traffic_by_function(
                    db.execute(f"{TRAFFIC_QUERY} WHERE function = ?", (rollout.function,))
                ).get(rollout.function, [])
                if set(current) != set(expected):
                    return False
            if traffic is not None:
                check_traffic(rollout.function, traffic, revision_ids(db, rollout.function))
                write_traffic(db, rollout.function, traffic)
            db.execute(
                "UPDATE rollouts SET step = ?, step_started_at = ?, state = ?, reason = ?, finished_at = ? "
                "WHERE id = ?",
                (rollout.step, rollout.step_started_at, rollout.state, rollout.reason, rollout.finished_at,
                 rollout.id),
            )  # fmt: skip
            if decision is not None:
                _write_decision(db, decision)
        return True


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
