"""Metering in SQLite: usage sums over the activations table, filtered activation listings, and
the instance_lives table (each instance from start to stop, for the serverless-vs-reserved report).

Sums are taken in SQL (one pass over the ``start`` index), never by loading records: a month of
activations is millions of rows. Pricing them is tidal.metering.usage's job, not the store's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from tidal.store.models import Activation, InstanceLife, UsageSums
from tidal.store.sqlite_base import SQLiteConnection

ACTIVATION_COLUMNS = ", ".join(Activation.__struct_fields__)
LIFE_FIELDS = InstanceLife.__struct_fields__
LIFE_COLUMNS = ", ".join(LIFE_FIELDS)
# A cold call arrives before its instance starts; the search for an instance's calls (on the start
# index) begins this long before the instance did.
COLD_CALL_LEAD_S = 600.0
# `by` -> the SQL expression naming an activation's group. Days are UTC calendar days.
USAGE_GROUPS = {
    "function": "function",
    "revision": "revision",
    "key": "key_id",
    "day": "date(start, 'unixepoch')",
}


class UsageTables(SQLiteConnection):
    def find_activations(
        self, function: str, limit: int = 50, statuses: Sequence[str] = (), since: float = 0.0
    ) -> list[Activation]:
        """The function's newest ``limit`` activations that started at ``since`` or later, with
        one of ``statuses`` (empty: any)."""
        where, params = ["function = ?", "start >= ?"], [function, since]
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        rows = self._query(
            f"SELECT {ACTIVATION_COLUMNS} FROM activations WHERE {' AND '.join(where)} "
            "ORDER BY start DESC LIMIT ?",
            (*params, limit),
        )
        return [_activation(row) for row in rows]

    def usage_sums(self, since: float, until: float, by: str) -> list[UsageSums]:
        """Activations that started in [since, until), summed per ``by`` group (a USAGE_GROUPS key)."""
        group = USAGE_GROUPS.get(by)
        if group is None:
            raise ValueError(f"usage by {by!r}: expected one of {', '.join(USAGE_GROUPS)}")
        rows = self._query(
            f"SELECT {group} AS grp, COUNT(*), SUM(status != 'ok'), SUM(billed_ms), "
            "SUM(billed_ms * memory_mb), SUM(billed_ms * gpus) FROM activations "
            "WHERE start >= ? AND start < ? GROUP BY grp ORDER BY grp",
            (since, until),
        )
        return [
            UsageSums(
                str(key),
                int(requests),
                int(errors or 0),
                int(billed or 0),
                int(mb_ms or 0),
                float(gpu_ms or 0.0),
            )
            for key, requests, errors, billed, mb_ms, gpu_ms in rows
        ]

    def first_activity(self) -> float | None:
        """When the oldest activation or instance life started (epoch s), or None if none."""
        row = self._query(
            "SELECT MIN(first) FROM (SELECT MIN(start) AS first FROM activations "
            "UNION ALL SELECT MIN(started) FROM instance_lives)"
        )
        return float(row[0][0]) if row and row[0][0] is not None else None

    # -- instance lives ------------------------------------------------------------------------

    def add_instance_lives(
        self, started: Iterable[InstanceLife], stopped: Iterable[tuple[str, float]]
    ) -> None:
        """Record instances that started, then the stop time of those that stopped, in one transaction
        (a start and its stop may arrive in the same batch)."""
        placeholders = ", ".join("?" * len(LIFE_FIELDS))
        with self._transaction() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO instance_lives ({LIFE_COLUMNS}) VALUES ({placeholders})",
                [msgspec.structs.astuple(life) for life in started],
            )
            db.executemany(
                "UPDATE instance_lives SET stopped = ? WHERE id = ? AND stopped = 0",
                [(at, instance) for instance, at in stopped],
            )

    def instance_lives(self, since: float, until: float) -> list[InstanceLife]:
        """Instances alive at some moment of [since, until): started before ``until``, not stopped
        before ``since``."""
        rows = self._query(
            f"SELECT {LIFE_COLUMNS} FROM instance_lives WHERE started < ? AND (stopped = 0 OR stopped > ?) "
            "ORDER BY started",
            (until, since),
        )
        return [InstanceLife(*row) for row in rows]

    def busy_ms(self, since: float, until: float) -> dict[str, int]:
        """Billed ms per instance of the activations that started in [since, until)."""
        rows = self._query(
            "SELECT instance, SUM(billed_ms) FROM activations WHERE start >= ? AND start < ? "
            "AND instance != '' GROUP BY instance",
            (since, until),
        )
        return {instance: int(total) for instance, total in rows}

    def close_open_lives(self) -> int:
        """Lives left open by a gateway that stopped without saying (kill -9): one SQLite state dir
        has one gateway, so their instances are gone. Each ends at its last activation's end (or its
        start): the least it surely lived. How many were closed."""
        with self._transaction() as db:
            return db.execute(
                "UPDATE instance_lives SET stopped = MAX(started, COALESCE((SELECT MAX(start + "
                "duration_ms / 1000.0) FROM activations WHERE start >= instance_lives.started - ? "
                "AND instance = instance_lives.id), started)) "
                "WHERE stopped = 0",
                (COLD_CALL_LEAD_S,),
            ).rowcount

    def delete_instance_lives(self, before: float, batch: int) -> int:
        """Delete at most ``batch`` lives that ended before ``before``; how many went."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM instance_lives WHERE rowid IN (SELECT rowid FROM instance_lives "
                "WHERE stopped != 0 AND stopped < ? LIMIT ?)",
                (before, batch),
            ).rowcount


def _activation(row: tuple[Any, ...]) -> Activation:
    activation = Activation(*row)
    activation.cold = bool(activation.cold)  # stored as 0/1
    return activation
