"""Routes between the store and the hot path: the served ``RouteTable`` and the CORS policies.

Every change goes store first, then the table is rebuilt from the store and swapped in whole,
so a request sees the old table or the new one, never half of a change.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from tidal.routing.model import (
    CorsPolicy,
    RouteError,
    RouteRecord,
    check_method,
    compile_template,
    parse_cors,
)
from tidal.routing.spec import declared_routes
from tidal.routing.table import EMPTY, RouteTable
from tidal.store.protocols import RouteStore

log = logging.getLogger("tidal.routing")


class RouteConflict(Exception):
    """The new route would take requests an existing one takes (HTTP 409)."""

    def __init__(self, route: RouteRecord, other: RouteRecord) -> None:
        super().__init__(
            f"{route.key} takes the same requests as route {other.id} ({other.key} -> {other.function})"
        )
        self.other = other


class RouteService:
    def __init__(self, store: RouteStore) -> None:
        self.store = store
        self.table: RouteTable = EMPTY
        self.function_cors: dict[str, CorsPolicy] = {}  # spec `cors`: its routes and POST /fn/NAME

    def policy(self, route: RouteRecord) -> CorsPolicy | None:
        """A route's own CORS policy, else its function's."""
        return route.cors or self.function_cors.get(route.function)

    async def reload(self) -> None:
        routes = await asyncio.to_thread(self.store.routes)
        self.table = RouteTable(routes)

    async def add(
        self, method: str, path: str, function: str, cors: dict[str, Any] | None = None
    ) -> RouteRecord:
        """Store and serve a route; RouteError (bad input), RouteConflict, LookupError (no function)."""
        route = RouteRecord(
            f"rt-{secrets.token_hex(6)}", check_method(method), compile_template(path).path, function, "cli",
            parse_cors(cors), time.time(),
        )  # fmt: skip
        other = await asyncio.to_thread(self.store.add_route, route)
        if other is not None:
            raise RouteConflict(route, other)
        await self.reload()
        return route

    async def remove(self, route_id: str) -> bool:
        removed = await asyncio.to_thread(self.store.delete_route, route_id)
        await self.reload()
        return removed

    async def sync(self, function: str, settings: dict[str, Any] | None) -> None:
        """Serve the function's declared routes and CORS as its stored settings say (None: it is gone)."""
        if settings is None:
            self.function_cors.pop(function, None)
        else:
            try:
                cors = parse_cors(settings.get("cors") or None)
                declared = declared_routes(function, settings, time.time())
            except RouteError as exc:  # checked at deploy: only a hand-edited database gets here
                log.error("routes of %s: %s; serving none of its declared routes", function, exc)
                cors, declared = None, []
            if cors is None:
                self.function_cors.pop(function, None)
            else:
                self.function_cors[function] = cors
            refused = await asyncio.to_thread(self.store.sync_spec_routes, function, declared)
            for route, other in refused:
                log.error("route %s of %s not served: %s", route.key, function, RouteConflict(route, other))
        await self.reload()
