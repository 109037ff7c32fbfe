"""The live keep-alive: learns each function's idle times and applies its windows in the gateway.

- Learning: every activation record passes ``observe`` (the gateway wraps the metering writer).
  An idle time is a call's start minus the end of the function's previous call, counted only
  when the calls did not overlap; it waits in a list and is folded into the function's
  ``IdleHistogram`` by the keeper's loop, off the request's path.
- Deciding: the autoscaler asks ``wish(pool)`` each tick (the keep-alive stage of its decider);
  the keeper's loop reaps the templates of unloaded revisions (``drop_template``) and pokes the
  autoscaler when a window's edge passes, so a pre-warm starts on time, not a tick late.
- Persisting: changed states are written together every ``save_every_s`` (and at shutdown) to the
  store's ``idle_histograms`` table, so a restart keeps what was learned and when the last call ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from tidal.autoscale.decider import KeepAliveWish
from tidal.backends.base import InstanceSpec
from tidal.keepalive.histogram import IdleHistogram
from tidal.keepalive.live import LiveState, Phase, live_state
from tidal.keepalive.policy import KeepAlivePolicy, Windows, describe, new_histogram, parse_policy, windows
from tidal.router.pool import RevisionPool
from tidal.store.models import Activation
from tidal.store.protocols import KeepAliveStore

log = logging.getLogger("tidal.keepalive")

SAVE_EVERY_S = 5.0  # changed histograms are written at most this often (and at shutdown)
TICK_S = 1.0  # the loop's longest sleep; it wakes sooner for a window's edge
NOT_LEARNED = frozenset({"shadow"})  # copies sent to a shadow candidate are no calls of the function


class KeptState(msgspec.Struct):
    """What is persisted per function (``idle_histograms.state``, JSON)."""

    histogram: IdleHistogram
    last_end: float | None = None  # epoch seconds: the end of the function's last call


@dataclass
class Learned:
    """One function with a policy: what it learned and the windows that follows from it."""

    policy: KeepAlivePolicy
    name: str  # the policy's text: "hybrid:bin=1s", "fixed:5m"
    state: KeptState
    windows: Windows
    dirty: bool = False  # changed since it was last saved


class TemplateControl(Protocol):
    """The backend's part: whether a revision's template is loaded, and unloading it now."""

    def template_of(self, launch: InstanceSpec) -> dict[str, object] | None: ...

    async def drop_template(self, launch: InstanceSpec) -> bool: ...


class KeepAliveKeeper:
    def __init__(
        self,
        store: KeepAliveStore,
        templates: TemplateControl,
        pools: Callable[[], Sequence[RevisionPool]],
        poke: Callable[[], None],
        clock: Callable[[], float] = time.time,
        save_every_s: float = SAVE_EVERY_S,
    ) -> None:
        self.store = store
        self.templates = templates
        self.pools = pools
        self.poke = poke  # wakes the autoscaler
        self.clock = clock  # epoch seconds, like the activation records' times
        self.save_every_s = save_every_s
        self._learned: dict[str, Learned] = {}
        self._stored: dict[str, KeptState] = {}  # loaded at start, taken up by ``configure``
        self._idle_times: list[tuple[Learned, float]] = []  # observed, not yet in the histograms
        self._phases: dict[str, Phase] = {}  # per revision, as the loop saw them last
        self._pool_of: dict[str, RevisionPool] = {}  # revision id -> its pool, as the loop saw them last
        self._saved_at = 0.0

    # -- configuration ------------------------------------------------------------------------

    def load(self) -> None:
        """Read every stored state (blocking: run in a thread, before functions are published)."""
        for function, text in self.store.idle_histograms().items():
            try:
                self._stored[function] = msgspec.json.decode(text, type=KeptState)
            except msgspec.DecodeError as exc:  # written by us: only a hand-edited database gets here
                log.error("keep-alive state of %s is unreadable (%s); it learns again", function, exc)

    def configure(self, function: str, setting: object, stored: bool = True) -> None:
        """Apply the function's ``keep_alive`` setting (None: no policy, today's behaviour);
        ``stored`` False: the function was removed, and what it learned goes with it."""
        if setting is None:
            gone = self._learned.pop(function, None)
            self._stored.pop(function, None)
            if gone is not None and stored:
                self._stored[function] = gone.state  # a later policy starts from what was learned
            return
        try:
            policy = parse_policy(setting if isinstance(setting, str | int | float) else str(setting))
        except ValueError as exc:  # validated at deploy: only a hand-edited database gets here
            log.error("keep_alive of %s: %s; it keeps no policy", function, exc)
            return
        known = self._learned.get(function)
        if known is not None and known.policy == policy:
            return
        state = known.state if known is not None else self._stored.pop(function, None)
        empty = new_histogram(policy)
        if state is None:
            state = KeptState(empty)
        elif (state.histogram.bin_s, state.histogram.range_s) != (empty.bin_s, empty.range_s):
            log.info("keep-alive of %s: new bins (%s); its idle times are learned again", function, policy)
            state = KeptState(empty, state.last_end)
        self._learned[function] = Learned(policy, describe(policy), state, windows(policy, state.histogram))
        self._learned[function].dirty = True

    # -- learning ------------------------------------------------------------------------------

    def observing(self, record: Callable[[Activation], None]) -> Callable[[Activation], None]:
        """``record`` (the activation writer), telling this keeper of each finished call first."""

        def observe_then_record(activation: Activation) -> None:
            self.observe(activation)
            record(activation)

        return observe_then_record

    def observe(self, activation: Activation) -> None:
        """A call ended: note its end, and the idle time before it unless it overlapped another:
        one that ended after it started, or one still in flight now (its pool's meter counts it)."""
        learned = self._learned.get(activation.function)
        if learned is None or activation.trigger in NOT_LEARNED:
            return
        end = activation.start + activation.duration_ms / 1000
        previous = learned.state.last_end
        pool = self._pool_of.get(activation.revision)
        alone = pool is None or pool.meter.count == 0
        if previous is not None and activation.start >= previous and alone:
            self._idle_times.append((learned, activation.start - previous))
        learned.state.last_end = end if previous is None else max(previous, end)
        learned.dirty = True
        if learned.windows.prewarm_s > 0:
            self.poke()  # unload now, not at the next tick

    def fold(self) -> None:
        """Add the observed idle times to their histograms and recompute those functions' windows."""
        idle_times, self._idle_times = self._idle_times, []
        changed = {id(learned): learned for learned, _ in idle_times}
        for learned, idle_s in idle_times:
            learned.state.histogram.add(idle_s)
        for learned in changed.values():
            learned.windows = windows(learned.policy, learned.state.histogram)

    # -- deciding ------------------------------------------------------------------------------

    def live(self, pool: RevisionPool, now: float) -> LiveState | None:
        """Where ``pool``'s function stands in its windows; None when it has no policy."""
        learned = self._learned.get(pool.revision.function)
        if learned is None:
            return None
        busy = pool.meter.count > 0 or bool(pool.waiters)
        short = learned.name.partition(":")[0] if learned.name.startswith("hybrid") else learned.name
        return live_state(now, learned.state.last_end, busy, learned.windows, short)

    def wish(self, pool: RevisionPool) -> KeepAliveWish | None:
        """The autoscaler's keep-alive stage for ``pool`` now (None: it decides as without a policy)."""
        state = self.live(pool, self.clock())
        return state.wish if state is not None else None

    async def step(self) -> float | None:
        """Fold idle times, unload the templates the windows say go, poke the autoscaler when a
        revision changed phase; when the next edge comes (None: none ahead)."""
        self.fold()
        now = self.clock()
        edges: list[float] = []
        changed = False
        pools = self.pools()
        self._pool_of = {pool.revision.id: pool for pool in pools}
        for pool in pools:
            try:
                state = self.live(pool, now)
                if state is None:
                    continue
                if state.next_edge is not None:
                    edges.append(state.next_edge)
                changed |= self._phases.get(pool.revision.id) != state.phase
                self._phases[pool.revision.id] = state.phase
                if state.drop_template and pool.size == 0:
                    await self._drop_template(pool, state)
            except Exception:
                log.exception("keep-alive of %s failed; the others go on", pool.revision.id)
        if changed:
            self.poke()
        if now - self._saved_at >= self.save_every_s:
            await self.flush()
        return min(edges, default=None)

    async def _drop_template(self, pool: RevisionPool, state: LiveState) -> None:
        if self.templates.template_of(pool.launch) is None:
            return
        if await self.templates.drop_template(pool.launch):
            log.info("%s: template unloaded (%s)", pool.revision.id, state.wish.reason if state.wish else "")

    async def run(self) -> None:
        """The gateway's keep-alive loop: a step each second, or at the next window's edge."""
        while True:
            edge = await self.step()
            delay = TICK_S if edge is None else min(TICK_S, max(0.01, edge - self.clock()))
            await asyncio.sleep(delay)

    # -- persisting and showing ---------------------------------------------------------------

    async def flush(self) -> None:
        """Write the states changed since the last write, in one transaction."""
        self.fold()
        self._saved_at = self.clock()
        dirty = {function: learned for function, learned in self._learned.items() if learned.dirty}
        if not dirty:
            return
        states = {
            function: msgspec.json.encode(learned.state).decode() for function, learned in dirty.items()
        }
        try:
            await asyncio.to_thread(self.store.save_idle_histograms, states, self._saved_at)
        except Exception:
            log.exception("saving keep-alive states failed; the next save retries")
            return
        for learned in dirty.values():
            learned.dirty = False

    def describe(self, function: str) -> dict[str, object] | None:
        """The policy, its windows and why, the idle times learned, and where the function stands."""
        learned = self._learned.get(function)
        if learned is None:
            return None
        self.fold()
        now = self.clock()
        pools = [pool for pool in self.pools() if pool.revision.function == function]
        states = [state for pool in pools if (state := self.live(pool, now)) is not None]
        histogram, windows_now, last_end = learned.state.histogram, learned.windows, learned.state.last_end
        return {
            "policy": learned.name,
            "mode": windows_now.mode,
            "prewarm_s": round(windows_now.prewarm_s, 3),
            "keep_alive_s": round(windows_now.keep_alive_s, 3),
            "reason": windows_now.reason,
            "samples": histogram.total,
            "out_of_range": histogram.out_of_range,
            "last_call_end": last_end,
            "phase": str(states[0].phase) if states else str(Phase.NO_CALL),
            "prewarm_at": last_end + windows_now.prewarm_s
            if last_end is not None and windows_now.prewarm_s > 0
            else None,
            "keep_until": last_end + windows_now.keep_alive_s if last_end is not None else None,
        }
