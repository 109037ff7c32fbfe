"""Per-key limits (tidal.auth.limits) in SQLite: the keys' ``limits`` column and ``quota_usage``.

``quota_usage`` holds, per key and calendar window, the requests and GB-s counted so far. The
gateway adds its counts in batches (about once a second and at stop), so a restart loses at most
the last batch of a gateway that was killed, and a quota stays used across restarts.
"""

from __future__ import annotations

from collections.abc import Mapping

from tidal.store.sqlite_base import SQLiteConnection

ADD_USAGE = """
INSERT INTO quota_usage (key_id, period, period_start, requests, gb_s) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key_id, period, period_start) DO UPDATE SET
    requests = requests + excluded.requests, gb_s = gb_s + excluded.gb_s
"""


class LimitTables(SQLiteConnection):
    def set_key_limits(self, key_id: str, limits: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE keys SET limits = ? WHERE id = ? AND revoked_at IS NULL", (limits, key_id)
            )
            return cursor.rowcount > 0

    def add_quota_usage(self, deltas: Mapping[tuple[str, str, float], tuple[int, float]]) -> None:
        with self._transaction() as db:
            db.executemany(
                ADD_USAGE,
                [(key_id, period, start, requests, gb_s)
                 for (key_id, period, start), (requests, gb_s) in deltas.items()],
            )  # fmt: skip

    def quota_usage(self, since: float) -> list[tuple[str, str, float, int, float]]:
        return [
            (str(key_id), str(period), float(start), int(requests), float(gb_s))
            for key_id, period, start, requests, gb_s in self._query(
                "SELECT key_id, period, period_start, requests, gb_s FROM quota_usage"
                " WHERE period_start >= ? ORDER BY key_id, period",
                (since,),
            )
        ]
