"""Keep-alive (tidal.keepalive) in SQLite: the idle_histograms table behind ``KeepAliveStore``.

One row per function: the JSON state the live keep-alive keeps (its idle-time histogram and the
end of its last call), written in batches every few seconds, never per call. Deleting a function
deletes its row (foreign key, ON DELETE CASCADE).
"""

from __future__ import annotations

from collections.abc import Mapping

from tidal.store.sqlite_base import SQLiteConnection

# Only for functions still stored: a function removed between two saves has no row to come back to.
UPSERT = """
INSERT INTO idle_histograms (function, state, updated_at)
SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM functions WHERE name = ?)
ON CONFLICT (function) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at
"""


class KeepAliveTables(SQLiteConnection):
    def idle_histograms(self) -> dict[str, str]:
        return dict(self._query("SELECT function, state FROM idle_histograms ORDER BY function"))

    def save_idle_histograms(self, states: Mapping[str, str], at: float) -> None:
        with self._transaction() as db:
            db.executemany(UPSERT, [(function, state, at, function) for function, state in states.items()])
