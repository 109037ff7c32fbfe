"""The autoscaler loop: every tick, sample each serving pool, ask the pure decider, apply.

A request that has to wait pokes the loop so it decides at once instead of at the next tick (the
activator's signal); so does the keep-alive keeper at the edges of its windows. Each pool is handled in its own try/except: one failing function never stops
the scaling of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tidal.autoscale.decider import DeciderState, KeepAliveWish, Sample, decide, delayed_scale_down
from tidal.router.pool import RevisionPool, ScalingEvent

log = logging.getLogger("tidal.autoscale")


@dataclass
class PoolHistory:
    samples: deque[Sample] = field(default_factory=deque)
    state: DeciderState = field(default_factory=DeciderState)


class FleetScaling(Protocol):
    """Several gateways sharing one Ray fleet (tidal.cluster.fleet): the leader decides over the
    summed demand; a follower's pools follow the fleet's registered instances."""

    def demand(self, pool: RevisionPool, local: float) -> float:
        """Note this gateway's sample; the value to decide on (the leader: the fleet's sum)."""
        ...

    def follows(self, pool: RevisionPool) -> int | None:
        """The fleet's instance count to follow, or None to decide (the leader)."""
        ...


class Autoscaler:
    def __init__(
        self,
        pools: Callable[[], list[RevisionPool]],
        tick_s: float = 1.0,
        on_event: Callable[[ScalingEvent], None] = lambda _: None,
        keep_alive: Callable[[RevisionPool], KeepAliveWish | None] = lambda _: None,
    ) -> None:
        self.pools = pools
        self.tick_s = tick_s
        self.on_event = on_event
        self.keep_alive = keep_alive  # the function's keep-alive wish (tidal.keepalive.live), if any
        self._history: dict[str, PoolHistory] = {}
        self._poked = asyncio.Event()
        self.fleet: FleetScaling | None = None  # set with --backend ray on a PostgreSQL store

    def poke(self) -> None:
        self._poked.set()

    async def run(self) -> None:
        """Decide every tick, or at once when poked; runs under the gateway's supervisor."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.tick_s)
            self._poked.clear()
            self.step(time.monotonic())

    def step(self, now: float) -> None:
        pools = self.pools()
        for pool in pools:
            try:
                self._step_pool(pool, now)
            except Exception:
                log.exception("autoscaling %s failed; the others go on", pool.revision.id)
        live = {pool.revision.id for pool in pools}
        for revision in list(self._history):
            if revision not in live:
                del self._history[revision]

    def _step_pool(self, pool: RevisionPool, now: float) -> None:
        history = self._history.setdefault(pool.revision.id, PoolHistory())
        value = pool.meter.take(now)
        if self.fleet is not None:
            value = self.fleet.demand(pool, value)
        history.samples.append((now, value))
        while history.samples and history.samples[0][0] <= now - pool.spec.stable_window:
            history.samples.popleft()
        wish = self.keep_alive(pool)
        decision, history.state = decide(now, history.samples, pool.size, pool.spec, history.state, wish)
        # A follower decides too (its history and state are ready the moment it leads) but follows.
        following = self.fleet.follows(pool) if self.fleet is not None else None
        if following is not None:
            # The leader's count is the fleet's wish: remembered as this gateway's, so that after a
            # takeover scale_down_delay still counts from the leader's last wish, not from ours.
            _, history.state = delayed_scale_down(now, following, pool.spec, history.state)
            pool.scale_to(following, "the instances the leader gateway runs")  # its event, not ours
            return
        pool.panic = decision.panic
        event = pool.scale_to(decision.desired, decision.reason)
        if event is not None:
            self.on_event(event)
