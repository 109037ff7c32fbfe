"""HTTP routes (tidal.routing) in SQLite: the ``routes`` table (migration 13) behind ``RouteStore``.

A route is checked against every stored route inside the transaction that inserts it, so two
concurrent ``route add`` calls cannot both take the same requests. A function's declared routes
(origin 'spec') are replaced as a set at each publish; deleting a function deletes its routes.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from tidal.routing.model import RouteRecord, cors_document, parse_cors
from tidal.routing.table import conflicting
from tidal.store.sqlite_base import SQLiteConnection

ROUTE_COLUMNS = ", ".join(RouteRecord.__struct_fields__)


class RouteTables(SQLiteConnection):
    def add_route(self, route: RouteRecord) -> RouteRecord | None:
        """Store ``route``; the stored route it conflicts with instead (nothing is written then).

        Raises LookupError when its function does not exist.
        """
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM functions WHERE name = ?", (route.function,)).fetchone() is None:
                raise LookupError(route.function)
            other = conflicting(_all(db), route.method, route.path)
            if other is not None:
                return other
            _insert(db, route)
        return None

    def route(self, route_id: str) -> RouteRecord | None:
        rows = self._query(f"SELECT {ROUTE_COLUMNS} FROM routes WHERE id = ?", (route_id,))
        return _route(rows[0]) if rows else None

    def routes(self, function: str | None = None) -> list[RouteRecord]:
        where, params = ("WHERE function = ?", (function,)) if function is not None else ("", ())
        rows = self._query(f"SELECT {ROUTE_COLUMNS} FROM routes {where} ORDER BY path, method", params)
        return [_route(row) for row in rows]

    def delete_route(self, route_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM routes WHERE id = ?", (route_id,)).rowcount > 0

    def sync_spec_routes(
        self, function: str, declared: list[RouteRecord]
    ) -> list[tuple[RouteRecord, RouteRecord]]:
        """Make the function's 'spec' routes exactly ``declared`` (unchanged ones keep their row);
        the declared routes refused, each with the stored route it conflicts with.
        """
        refused: list[tuple[RouteRecord, RouteRecord]] = []
        with self._transaction() as db:
            keep = [route.id for route in declared]
            marks = ", ".join("?" * len(keep))
            db.execute(
                f"DELETE FROM routes WHERE function = ? AND origin = 'spec' AND id NOT IN ({marks})",
                (function, *keep),
            )
            for route in declared:
                stored = db.execute(
                    f"SELECT {ROUTE_COLUMNS} FROM routes WHERE id = ?", (route.id,)
                ).fetchone()
                if stored is not None:
                    if _route(stored).cors != route.cors:
                        db.execute("UPDATE routes SET cors = ? WHERE id = ?", (_cors_text(route), route.id))
                    continue
                other = conflicting(_all(db), route.method, route.path)
                if other is not None:
                    refused.append((route, other))
                    continue
                _insert(db, route)
        return refused


def _all(db: sqlite3.Connection) -> list[RouteRecord]:
    return [_route(row) for row in db.execute(f"SELECT {ROUTE_COLUMNS} FROM routes")]


def _cors_text(route: RouteRecord) -> str:
    return json.dumps(cors_document(route.cors)) if route.cors is not None else ""


def _insert(db: sqlite3.Connection, route: RouteRecord) -> None:
    db.execute(
        f"INSERT INTO routes ({ROUTE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            route.id,
            route.method,
            route.path,
            route.function,
            route.origin,
            _cors_text(route),
            route.created_at,
        ),
    )


def _route(row: tuple[Any, ...]) -> RouteRecord:
    route_id, method, path, function, origin, cors, created_at = row
    return RouteRecord(route_id, method, path, function, origin, parse_cors(json.loads(cors)) if cors else None,
                       created_at)  # fmt: skip
