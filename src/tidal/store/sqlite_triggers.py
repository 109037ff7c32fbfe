"""Event triggers (tidal.triggers) in SQLite: the triggers table behind ``TriggerStore``.

A function's declared triggers are replaced as a set at each publish (``sync_spec_triggers``): an
unchanged declaration keeps its id and so its state (cron's last fire, a bucket's cursor).
Deleting a function deletes its triggers (foreign key, ON DELETE CASCADE).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from tidal.store.models import TriggerRecord
from tidal.store.sqlite_base import SQLiteConnection

TRIGGER_FIELDS = TriggerRecord.__struct_fields__
TRIGGER_COLUMNS = ", ".join(TRIGGER_FIELDS)
TRIGGER_PLACEHOLDERS = ", ".join("?" * len(TRIGGER_FIELDS))
JSON_FIELDS = ("config", "state")


class TriggerTables(SQLiteConnection):
    def add_trigger(self, trigger: TriggerRecord) -> bool:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM functions WHERE name = ?", (trigger.function,)).fetchone() is None:
                return False
            _insert(db, trigger)
        return True

    def trigger(self, trigger_id: str) -> TriggerRecord | None:
        rows = self._query(f"SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = ?", (trigger_id,))
        return _trigger(rows[0]) if rows else None

    def triggers(self, function: str | None = None) -> list[TriggerRecord]:
        where, params = ("WHERE function = ?", (function,)) if function is not None else ("", ())
        rows = self._query(
            f"SELECT {TRIGGER_COLUMNS} FROM triggers {where} ORDER BY function, created_at, id", params
        )
        return [_trigger(row) for row in rows]

    def delete_trigger(self, trigger_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM triggers WHERE id = ?", (trigger_id,)).rowcount > 0

    def sync_spec_triggers(self, function: str, declared: list[TriggerRecord]) -> None:
        with self._transaction() as db:
            keep = [trigger.id for trigger in declared]
            marks = ", ".join("?" * len(keep))
            db.execute(
                f"DELETE FROM triggers WHERE function = ? AND origin = 'spec' AND id NOT IN ({marks})",
                (function, *keep),
            )
            for trigger in declared:
                if db.execute("SELECT 1 FROM triggers WHERE id = ?", (trigger.id,)).fetchone() is None:
                    _insert(db, trigger)

    def save_trigger_state(self, trigger_id: str, state: dict[str, object], events: int, at: float) -> None:
        """The source's new state, ``events`` more events, and no error any more."""
        with self._transaction() as db:
            db.execute(
                "UPDATE triggers SET state = ?, events = events + ?, "
                "last_event_at = CASE WHEN ? > 0 THEN ? ELSE last_event_at END, last_error = '' WHERE id = ?",
                (json.dumps(state), events, events, at, trigger_id),
            )

    def add_trigger_events(self, trigger_id: str, events: int, at: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE triggers SET events = events + ?, last_event_at = ?, last_error = '' WHERE id = ?",
                (events, at, trigger_id),
            )

    def set_trigger_error(self, trigger_id: str, error: str, at: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE triggers SET last_error = ?, last_error_at = ? WHERE id = ?",
                (error[:1000], at, trigger_id),
            )


def _insert(db: sqlite3.Connection, trigger: TriggerRecord) -> None:
    row = [
        json.dumps(getattr(trigger, name)) if name in JSON_FIELDS else getattr(trigger, name)
        for name in TRIGGER_FIELDS
    ]
    db.execute(f"INSERT INTO triggers ({TRIGGER_COLUMNS}) VALUES ({TRIGGER_PLACEHOLDERS})", row)


def _trigger(row: tuple[Any, ...]) -> TriggerRecord:
    values = dict(zip(TRIGGER_FIELDS, row, strict=True))
    for name in JSON_FIELDS:
        values[name] = json.loads(values[name])
    return TriggerRecord(**values)
