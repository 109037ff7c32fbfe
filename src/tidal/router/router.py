"""Function name -> its route: the revisions serving it, each with a share of the traffic.

Which revisions serve is stored state (the store's ``traffic``), handed to ``Router.serve``; the
router keeps one pool per serving revision, so each revision scales on its own, and retires a
pool (drains it, then releases what the backend warmed for it) once no route holds it.
Choosing a revision for a request is the pure ``choose_target``; the draw is injected.
A route may also hold a shadow (``tidal shadow``): a candidate revision with a pool of its own that
gets copies of calls (tidal.shadow.mirror); it autoscales like any other, and retires the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from tidal.backends.base import LOST, Backend, InstanceHandle, InstanceSpec
from tidal.invoke.request import RequestContext
from tidal.router.multiplex import choose_for_model
from tidal.router.pool import LifeLog, QueuedBodies, RevisionPool, least_loaded
from tidal.shadow.compare import Comparator
from tidal.spec import FunctionSpec, Style, validate_spec
from tidal.store.models import Revision

log = logging.getLogger("tidal.router")


@dataclass(frozen=True, slots=True)
class Target:
    """One revision of a route and its share of the requests."""

    revision: Revision
    spec: FunctionSpec
    pool: RevisionPool
    percent: int
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class ServingTarget:
    """What ``Router.serve`` is told about one revision: stored state, resolved to a code dir."""

    revision: Revision
    code_dir: str
    percent: int = 100
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class ShadowTarget:
    """A candidate revision that gets a copy of ``percent`` % of the function's calls; its answers
    are compared with the primary's by ``comparator`` and never reach the client."""

    target: Target  # the candidate, with its own pool
    percent: int
    comparator: Comparator
    max_in_flight: int  # copies running at once at most; one more is dropped


@dataclass(frozen=True, slots=True)
class ShadowServing:
    """What ``Router.serve`` is told about a function's shadow: stored state, resolved."""

    revision: Revision
    code_dir: str
    percent: int
    comparator: Comparator
    max_in_flight: int


@dataclass(frozen=True, slots=True)
class Route:
    """What the hot path needs about a function, resolved once when its traffic changes."""

    function: str
    public: bool
    targets: tuple[Target, ...]
    shadow: ShadowTarget | None = None  # None on the hot path costs one attribute check

    @property
    def pools(self) -> list[RevisionPool]:
        """Every pool the route holds: its targets' and its shadow's."""
        pools = [target.pool for target in self.targets]
        return pools if self.shadow is None else [*pools, self.shadow.target.pool]

    @property
    def any_method(self) -> bool:
        """lambda-http handlers take every method and sub-path; native ones only POST."""
        return any(target.revision.style == Style.LAMBDA_HTTP for target in self.targets)

    @property
    def primary(self) -> Target:
        """The target with the largest share (what `tidal ls` calls the serving revision)."""
        return max(self.targets, key=lambda target: target.percent)


def sticky_draw(key: str) -> float:
    """A stable number in [0, 1) for a sticky key: the same key always draws the same number.

    Targets hold consecutive slices of [0, 1) in revision order, so moving 10% from one revision to
    another moves only the keys inside the slice that changed hands.
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose_target(targets: Sequence[Target], context: RequestContext, draw: float) -> Target | None:
    """The target for a request: the one it names, or one by weight (``draw`` in [0, 1)).

    >>> # with 90/10 targets, draws below 0.9 go to the first, the rest to the second
    """
    if context.revision is not None:
        for target in targets:
            if context.revision in (target.revision.id, target.tag):
                return target
        return None
    if len(targets) == 1:
        return targets[0]
    if context.sticky_key is not None:
        draw = sticky_draw(context.sticky_key)
    point = draw * 100
    for target in targets:
        if point < target.percent:
            return target
        point -= target.percent
    weighted = [target for target in targets if target.percent > 0]
    return weighted[-1] if weighted else None


class Router:
    def __init__(
        self,
        backend: Backend,
        on_demand: Callable[[], None] = lambda: None,
        draw: Callable[[], float] = random.random,
        lives: LifeLog | None = None,
        queued_bodies: QueuedBodies | None = None,
    ) -> None:
        self.backend = backend
        self.queued_bodies = queued_bodies or QueuedBodies()  # one budget for every pool's queue
        self.on_demand = on_demand  # the autoscaler's poke
        self.lives = lives  # told of each instance's start and stop (metering)
        self.draw = draw
        self.routes: dict[str, Route] = {}
        self._pools: dict[str, RevisionPool] = {}  # revision id -> pool, for every serving revision
        self._background: set[asyncio.Task[None]] = set()
        self._retiring: set[asyncio.Task[None]] = set()  # pools draining, then released
        # Several gateways, local backend: this gateway's share of min/max instances (tidal.cluster).
        self.share_bounds: Callable[[FunctionSpec], FunctionSpec] = lambda spec: spec

    def pools(self) -> list[RevisionPool]:
        """The pools of serving revisions (retiring ones drain on their own)."""
        return list(self._pools.values())

    def route(self, function: str) -> Route | None:
        return self.routes.get(function)

    def instance_exited(self, handle: InstanceHandle) -> None:
        """A backend's exit callback: an instance whose host was lost (``extra["lost"]``) may keep
        an open connection that nothing answers; closing it fails its calls now (instance lost)
        and makes its pool start a replacement."""
        why = handle.extra.get(LOST)
        if not why:
            return  # its process exited: its connection dropped by itself
        for pool in self.pools():
            for client in list(pool.ready):  # a draining one gives up at its grace's end
                if client.id == handle.id:
                    client.close()
            # Its connection may have closed before the backend heard of the host: name the cause.
            pool.name_loss(handle.id, str(why))

    def pick(self, route: Route, context: RequestContext) -> Target | None:
        if len(route.targets) == 1 and context.revision is None:
            return route.targets[0]  # the common case: no split, nothing to draw
        return choose_target(route.targets, context, self.draw())

    def serve(
        self,
        function: str,
        public: bool,
        serving: Sequence[ServingTarget],
        shadow: ShadowServing | None = None,
    ) -> Route:
        """Make ``serving`` the function's traffic and ``shadow`` its shadow; revisions it no longer
        holds (a stopped or changed shadow's candidate too) drain in the background."""
        if not serving:
            raise ValueError(f"{function!r} needs at least one revision to serve")
        # In revision order, whatever the shares: each revision's slice of [0, 1) stays where it
        # is when shares change (even when the larger becomes the smaller), so a sticky key moves
        # only if its point changed hands.
        targets = tuple(
            Target(item.revision, pool.spec, pool, item.percent, item.tag)
            for item in sorted(serving, key=lambda item: item.revision.number)
            for pool in [self._pool(item)]
        )
        shadow_target = None
        if shadow is not None:
            pool = self._pool(ServingTarget(shadow.revision, shadow.code_dir, 0))
            candidate = Target(shadow.revision, pool.spec, pool, 0)
            shadow_target = ShadowTarget(candidate, shadow.percent, shadow.comparator, shadow.max_in_flight)
        route = Route(function, public, targets, shadow_target)
        previous = self.routes.get(function)
        self.routes[function] = route
        if previous is not None:
            kept = {pool.revision.id for pool in route.pools}
            for pool in previous.pools:
                if pool.revision.id not in kept:
                    self._retire(pool)
        return route

    def set_public(self, function: str, public: bool) -> None:
        route = self.routes.get(function)
        if route is not None and route.public != public:
            self.routes[function] = Route(function, public, route.targets, route.shadow)

    def _pool(self, item: ServingTarget) -> RevisionPool:
        pool = self._pools.get(item.revision.id)
        if pool is None:
            spec = validate_spec(dict(item.revision.spec))  # stored specs predate newer fields
            launch = InstanceSpec(item.revision, spec, item.code_dir)
            # A multiplexed revision sends each model's requests to an instance that holds it.
            choose = choose_for_model if spec.max_models else least_loaded
            pool = RevisionPool(
                launch, self.backend, on_demand=self.on_demand, lives=self.lives, choose=choose,
                queued_bodies=self.queued_bodies,
            )  # fmt: skip
            self._pools[item.revision.id] = pool
            self._in_background(self.backend.prepare(launch))  # warm template: cold starts fork
            pool.spec = self.share_bounds(spec)
            pool.scale_to(pool.spec.min_instances, "min_instances")
        return pool

    def remove(self, function: str) -> bool:
        route = self.routes.pop(function, None)
        if route is not None:
            for pool in route.pools:
                self._retire(pool)
        return route is not None

    def _retire(self, pool: RevisionPool) -> None:
        if self._pools.get(pool.revision.id) is pool:
            del self._pools[pool.revision.id]
            task = self._in_background(self._drain_and_release(pool))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def drained(self) -> None:
        """Return once every pool retired until now has drained and released what the backend
        warmed for it (its code dir is then no longer used by any process)."""
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _drain_and_release(self, pool: RevisionPool) -> None:
        await pool.drain(grace_s=pool.spec.timeout)
        await self.backend.release(pool.launch)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        pools = list(self._pools.values())
        self.routes.clear()
        self._pools.clear()
        await asyncio.gather(
            *(pool.drain(grace_s=2.0) for pool in pools), *self._background, return_exceptions=True
        )
