"""Shadow traffic (tidal.shadow) in SQLite: each function's shadow, the copies' results, skips."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from tidal.store.models import ShadowConfig, ShadowResult
from tidal.store.sqlite_base import SQLiteConnection

SHADOW_FIELDS = ShadowConfig.__struct_fields__
SHADOW_COLUMNS = ", ".join(SHADOW_FIELDS)
SHADOW_RESULT_COLUMNS = ", ".join(ShadowResult.__struct_fields__)


class ShadowTables(SQLiteConnection):
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
