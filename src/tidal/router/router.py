"""Function name -> the revision serving it -> its pool. Traffic goes to the newest revision.

Traffic splitting between revisions (weights, tags, canaries) will replace ``Route.pool`` with a
choice over several pools; the gateway only ever asks ``router.route(name)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from tidal.backends.base import Backend
from tidal.router.pool import RevisionPool
from tidal.spec import FunctionSpec, validate_spec
from tidal.store.models import Revision

log = logging.getLogger("tidal.router")


@dataclass(frozen=True, slots=True)
class Route:
    """What the hot path needs about a function, resolved once when its revision goes live."""

    function: str
    revision: Revision
    spec: FunctionSpec
    pool: RevisionPool
    style: str


class Router:
    def __init__(self, backend: Backend, on_demand: Callable[[], None] = lambda: None) -> None:
        self.backend = backend
        self.on_demand = on_demand  # the autoscaler's poke
        self.routes: dict[str, Route] = {}
        self._background: set[asyncio.Task[None]] = set()

    def pools(self) -> list[RevisionPool]:
        """The pools serving traffic now (retiring ones drain on their own)."""
        return [route.pool for route in self.routes.values()]

    def route(self, function: str) -> Route | None:
        return self.routes.get(function)

    def activate(self, revision: Revision, code_dir: str) -> Route:
        """Send the function's traffic to ``revision``; the previous revision drains in the background."""
        current = self.routes.get(revision.function)
        if current is not None and current.revision.id == revision.id:
            return current
        spec = validate_spec(dict(revision.spec))  # stored specs predate newer fields: defaults fill in
        pool = RevisionPool(revision, code_dir, self.backend, spec, self.on_demand)
        route = Route(
            function=revision.function, revision=revision, spec=spec, pool=pool, style=revision.style
        )
        self.routes[revision.function] = route
        self._in_background(self.backend.prepare(revision, code_dir))  # warm template: cold starts fork
        pool.scale_to(spec.min_instances, "min_instances")
        if current is not None:
            self._retire(current)
        return route

    def remove(self, function: str) -> bool:
        route = self.routes.pop(function, None)
        if route is not None:
            self._retire(route)
        return route is not None

    def _retire(self, route: Route) -> None:
        self._in_background(self._drain_and_release(route))

    async def _drain_and_release(self, route: Route) -> None:
        await route.pool.drain(grace_s=route.spec.timeout)
        await self.backend.release(route.revision, route.pool.code_dir)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        pools = [route.pool for route in self.routes.values()]
        self.routes.clear()
        await asyncio.gather(
            *(pool.drain(grace_s=2.0) for pool in pools), *self._background, return_exceptions=True
        )
