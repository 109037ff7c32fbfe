"""The rollout loop: every tick, each running rollout whose step has run its interval is judged
(``policy.judge``) on the store's activations, and the verdict is applied: the next step's split,
the promotion, or the rollback, written with its decision in one store transaction, then
published to the router.

A rollout is stored state, so a gateway restart resumes it at its step. The step's clock
continues across a restart: ``step_started_at`` is stored, and the calls of the step's window are
in the store, so the step is judged on time on everything it saw before and after the restart.

A rollout owns its function's traffic. A change made outside it (``tidal traffic``, a deploy that
sends traffic) ends it at once as ``aborted`` and keeps the new traffic: the controller only ever
writes traffic if the function's traffic is still what the rollout set (compare-and-set in the
store), so a change by hand is never overwritten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from tidal.rollout.policy import (
    VERDICT_NAMES,
    Next,
    Promote,
    Thresholds,
    Verdict,
    Wait,
    check_plan,
    due,
    judge,
    split,
)
from tidal.rollout.stats import RevisionStats, by_revision
from tidal.store.models import Rollout, RolloutDecision, TrafficTarget
from tidal.store.protocols import Store

log = logging.getLogger("tidal.rollout")

TICK_S = 0.5
TRAFFIC_BY_HAND = "traffic changed by hand"
TRAFFIC_OUTSIDE = "the function's traffic was changed outside the rollout (tidal traffic or a deploy)"


class RolloutError(Exception):
    """A refused rollout request: the API answers ``status`` with ``error_type`` and the message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type = status, error_type


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    canary: str
    steps: tuple[int, ...]
    interval_s: float
    thresholds: Thresholds


@dataclass(frozen=True, slots=True)
class Window:
    """The numbers of a rollout's current step so far."""

    since: float
    until: float
    canary: RevisionStats
    stable: RevisionStats


def thresholds_of(rollout: Rollout) -> Thresholds:
    return Thresholds(rollout.max_error_rate, rollout.max_p99_ms, rollout.min_requests)


def expected_traffic(rollout: Rollout) -> list[TrafficTarget]:
    """What the function's traffic is while ``rollout`` runs at its step."""
    return split(rollout.stable, rollout.canary, rollout.percent)


class RolloutController:
    def __init__(
        self,
        store: Store,
        publish: Callable[[str], Awaitable[object]],
        flush: Callable[[], Awaitable[None]],
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.publish, self.flush = store, publish, flush
        self.tick_s, self.clock = tick_s, clock
        # Held while a rollout's state or its function's traffic changes: the loop, the API and
        # `tidal traffic` take turns, so none of them acts on what another is rewriting.
        self.lock = asyncio.Lock()
        self._waits_recorded: set[tuple[int, int]] = set()  # (rollout, step): one "wait" entry each

    async def run(self) -> None:
        """Tick until cancelled (runs under the gateway's supervisor)."""
        while True:
            await self.tick()
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> None:
        for rollout in await asyncio.to_thread(self.store.running_rollouts):
            try:  # one broken rollout must not stop the others
                async with self.lock:
                    await self._advance(rollout)
            except Exception:
                log.exception("rollout %d of %s failed this tick", rollout.id, rollout.function)

    # -- the API's side --------------------------------------------------------------------------

    async def start(self, function: str, plan: RolloutPlan) -> Rollout:
        """Start rolling ``plan.canary`` out over the revision serving the most traffic now."""
        async with self.lock:
            record = await asyncio.to_thread(self.store.function, function)
            if record is None:
                raise RolloutError(404, "NotFound", f"no function named {function!r}")
            try:
                check_plan(plan.steps, plan.interval_s, plan.thresholds)
            except ValueError as exc:
                raise RolloutError(400, "BadRollout", str(exc)) from None
            canary = await asyncio.to_thread(self.store.revision, plan.canary)
            if canary is None or canary.function != function:
                raise RolloutError(400, "BadRollout", f"{plan.canary!r} is not a revision of {function!r}")
            if not record.traffic:
                raise RolloutError(409, "NotServed", f"{function!r} serves no traffic to roll out from")
            stable = max(record.traffic, key=lambda target: target.percent).revision
            if stable == canary.id:
                raise RolloutError(400, "BadRollout", f"{canary.id} already serves the most traffic of "
                                   f"{function!r}: roll out a newer revision (deploy it with --no-traffic)")  # fmt: skip
            running = await asyncio.to_thread(self.store.rollout, function)
            if running is not None and running.state == "running":
                raise RolloutError(409, "RolloutRunning", f"a rollout of {function!r} to {running.canary} "
                                   f"is running; `tidal rollout abort {function}` first")  # fmt: skip
            now = self.clock()
            draft = Rollout(0, function, canary.id, stable, list(plan.steps), plan.interval_s,
                            plan.thresholds.max_error_rate, plan.thresholds.max_p99_ms,
                            plan.thresholds.min_requests, 0, now, "running", "", now)  # fmt: skip
            first = plan.steps[0]
            decision = RolloutDecision(
                0, now, 0, first, "start", f"{canary.id} gets {first}%, {stable} the rest"
            )
            try:
                rollout = await asyncio.to_thread(
                    self.store.start_rollout, draft, expected_traffic(draft), decision
                )
            except (KeyError, ValueError) as exc:
                raise RolloutError(409, "RolloutRefused", str(exc).strip("'\"")) from None
            await self.publish(function)
        log.info("rollout %d of %s: %s at %d%% over %s", rollout.id, function, canary.id, first, stable)
        return rollout

    async def abort(self, function: str, reason: str = "aborted by hand") -> Rollout:
        """Stop the running rollout of ``function`` and send all traffic back to its stable revision."""
        async with self.lock:
            rollout = await asyncio.to_thread(self.store.rollout, function)
            if rollout is None or rollout.state != "running":
                if await asyncio.to_thread(self.store.function, function) is None:
                    raise RolloutError(404, "NotFound", f"no function named {function!r}")
                raise RolloutError(409, "NoRollout", f"no rollout of {function!r} is running")
            stable_only = [TrafficTarget(rollout.stable, 100)]
            ended = await self._finish(rollout, "aborted", reason, stable_only, expected=None)
            assert ended is not None  # under the lock a running rollout stays running
            return ended

    async def stop_kept_traffic(self, function: str, reason: str) -> Rollout | None:
        """End the running rollout of ``function`` (if any) as aborted, keeping the function's
        traffic as it is now. The caller holds ``lock`` and has just changed that traffic."""
        rollout = await asyncio.to_thread(self.store.rollout, function)
        if rollout is None or rollout.state != "running":
            return None
        return await self._finish(rollout, "aborted", reason, None, expected=None)

    async def window(self, rollout: Rollout) -> Window:
        """The current step's numbers so far: canary and stable over [step start, now)."""
        now = self.clock()
        await self.flush()  # activations are written in batches; the window should hold the newest
        windows = await asyncio.to_thread(
            self.store.revision_windows, rollout.function, rollout.step_started_at, now
        )
        stats = by_revision(windows)
        canary = stats.get(rollout.canary, RevisionStats(rollout.canary))
        stable = stats.get(rollout.stable, RevisionStats(rollout.stable))
        return Window(rollout.step_started_at, now, canary, stable)

    # -- the loop's side -------------------------------------------------------------------------

    async def _advance(self, rollout: Rollout) -> None:
        record = await asyncio.to_thread(self.store.function, rollout.function)
        if record is None:
            return  # removed; its rollouts went with it
        if set(record.traffic) != set(expected_traffic(rollout)):
            await self._finish(rollout, "aborted", TRAFFIC_OUTSIDE, None, expected=None)
            return
        if not due(self.clock(), rollout.step_started_at, rollout.interval_s):
            return
        window = await self.window(rollout)
        verdict = judge(rollout.steps, rollout.step, window.canary, window.stable, thresholds_of(rollout))
        await self._apply(rollout, verdict, window)

    async def _apply(self, rollout: Rollout, verdict: Verdict, window: Window) -> None:
        now = self.clock()
        if isinstance(verdict, Wait):
            if (rollout.id, rollout.step) not in self._waits_recorded:  # once a step, not every tick
                self._waits_recorded.add((rollout.id, rollout.step))
                decision = self._decision(rollout, verdict, window, now)
                await asyncio.to_thread(self.store.save_rollout, rollout, decision)
            return
        if isinstance(verdict, Next):
            moved = msgspec.structs.replace(rollout, step=verdict.step, step_started_at=now)
            decision = self._decision(rollout, verdict, window, now)
            saved = await asyncio.to_thread(
                self.store.save_rollout, moved, decision, expected_traffic(moved), expected_traffic(rollout)
            )
            if not saved:  # the traffic changed under us: the change by hand wins
                await self._finish(rollout, "aborted", TRAFFIC_OUTSIDE, None, expected=None)
                return
            log.info("rollout %d of %s: %s", rollout.id, rollout.function, verdict.reason)
            await self.publish(rollout.function)
            return
        if isinstance(verdict, Promote):
            last = msgspec.structs.replace(rollout, step=len(rollout.steps) - 1)
            traffic, state = [TrafficTarget(rollout.canary, 100)], "promoted"
        else:
            last, traffic, state = rollout, [TrafficTarget(rollout.stable, 100)], "rolled_back"
        decision = self._decision(rollout, verdict, window, now)
        ended = await self._finish(last, state, verdict.reason, traffic, expected_traffic(rollout), decision)
        if ended is None:
            await self._finish(rollout, "aborted", TRAFFIC_OUTSIDE, None, expected=None)

    async def _finish(
        self,
        rollout: Rollout,
        state: str,
        reason: str,
        traffic: list[TrafficTarget] | None,
        expected: list[TrafficTarget] | None,
        decision: RolloutDecision | None = None,
    ) -> Rollout | None:
        """Mark ``rollout`` ended (``state``), set ``traffic`` if given, publish; None if not saved."""
        now = self.clock()
        ended = msgspec.structs.replace(rollout, state=state, reason=reason, finished_at=now)
        if decision is None:
            verdict = "abort" if state == "aborted" else state
            decision = RolloutDecision(rollout.id, now, rollout.step, rollout.percent, verdict, reason)
        saved = await asyncio.to_thread(self.store.save_rollout, ended, decision, traffic, expected)
        if not saved:
            return None
        log.info("rollout %d of %s %s: %s", rollout.id, rollout.function, state, reason)
        if traffic is not None:
            await self.publish(rollout.function)
        return ended

    @staticmethod
    def _decision(rollout: Rollout, verdict: Verdict, window: Window, now: float) -> RolloutDecision:
        return RolloutDecision(
            rollout.id, now, rollout.step, rollout.percent, VERDICT_NAMES[type(verdict)], verdict.reason,
            window.canary.as_dict(), window.stable.as_dict(),
        )  # fmt: skip
