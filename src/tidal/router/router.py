"""Function name -> the revision serving it -> its pool. Traffic goes to the newest revision.

Traffic splitting between revisions (weights, tags, canaries) will replace ``Route.pool`` with a
choice over several pools; the gateway only ever asks ``router.route(name)``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tidal.backends.base import Backend
from tidal.router.pool import RevisionPool
from tidal.store.models import Revision

log = logging.getLogger("tidal.router")


@dataclass(frozen=True, slots=True)
class Route:
    """What the hot path needs about a function, resolved once when its revision goes live."""

    function: str
    revision: Revision
    pool: RevisionPool
    public: bool
    timeout: float
    memory_mb: int
    style: str


class Router:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.routes: dict[str, Route] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def route(self, function: str) -> Route | None:
        return self.routes.get(function)

    def activate(self, revision: Revision, code_dir: str) -> Route:
        """Send the function's traffic to ``revision``; the previous revision drains in the background."""
        current = self.routes.get(revision.function)
        if current is not None and current.revision.id == revision.id:
            return current
        spec = revision.spec
        pool = RevisionPool(revision, code_dir, self.backend)
        route = Route(
            function=revision.function,
            revision=revision,
            pool=pool,
            public=bool(spec.get("public", False)),
            timeout=float(spec["timeout"]),  # type: ignore[arg-type]
            memory_mb=int(spec["memory"]),  # type: ignore[call-overload]
            style=revision.style,
        )
        self.routes[revision.function] = route
        pool.ensure_min_instances()
        if current is not None:
            self._retire(current)
        return route

    def remove(self, function: str) -> bool:
        route = self.routes.pop(function, None)
        if route is not None:
            self._retire(route)
        return route is not None

    def _retire(self, route: Route) -> None:
        task = asyncio.get_running_loop().create_task(route.pool.drain(grace_s=route.timeout))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        pools = [route.pool for route in self.routes.values()]
        self.routes.clear()
        await asyncio.gather(
            *(pool.drain(grace_s=2.0) for pool in pools), *self._retiring, return_exceptions=True
        )
