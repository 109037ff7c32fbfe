"""Copies of live calls to a function's shadow candidate, in the background, compared and recorded.

``Invoker.invoke`` calls ``Mirror.offer`` once the primary's outcome is known (only when the route
has a shadow). ``offer`` never waits: it draws whether this call is sampled (``percent``), and
either starts a copy as a task or counts why not:

- ``streamed``: the primary streamed its answer (streams are not compared);
- ``primary_failed``: the primary did not answer 2xx (nothing to compare with);
- ``dropped``: ``max_in_flight`` copies of this function were already running, or the
  candidate's queue was full (a copy never waits for room: shadow load stays bounded).

A copy goes through ``Invoker.invoke_target`` to the candidate's own pool (deadline, error mapping,
activation record with trigger "shadow", billed to the platform, never to the client's key), and
is never rerouted to the primary. What came of it is one ``ShadowResult``: agree, disagree (with a
short diff), or error (the candidate's error message). The client's answer was sent already: the
candidate's answer, error or timeout cannot reach it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from tidal.invoke.outcome import Outcome, OutcomeKind
from tidal.invoke.request import PLATFORM, InvocationRequest, RequestContext, Trigger
from tidal.router.router import ShadowTarget, Target
from tidal.shadow.compare import DETAIL_CHARS, Comparator, Verdict
from tidal.shadow.recorder import ShadowSink
from tidal.store.models import ShadowResult

if TYPE_CHECKING:
    from tidal.invoke.core import Invoker

log = logging.getLogger("tidal.shadow")

COMPARE_IN_THREAD_BYTES = 64 * 1024  # larger answers are compared off the event loop
CLOSE_GRACE_S = 5.0  # at shutdown, copies still running after this are cancelled


def sampled(percent: int, draw: float) -> bool:
    """Whether a call with ``draw`` in [0, 1) is copied at ``percent``: 20% copies draws below 0.2."""
    return draw * 100 < percent


def skip_reason(outcome: Outcome, in_flight: int, max_in_flight: int) -> str | None:
    """Why a sampled call is not copied (a word of SHADOW_SKIPS), or None: copy it."""
    if outcome.stream is not None:
        return "streamed"
    if not outcome.ok or not 200 <= outcome.http_status < 300:
        return "primary_failed"
    if in_flight >= max_in_flight:
        return "dropped"
    return None


def copy_of(request: InvocationRequest, revision: str, at: float) -> InvocationRequest:
    """The candidate's request: the client's body and HTTP details, pinned to ``revision``, made by
    the platform (trigger "shadow"), with the candidate's own timeout from ``at`` on."""
    context = request.context
    pinned = RequestContext(
        revision=revision,
        headers=context.headers,
        method=context.method,
        path=context.path,
        query=context.query,
    )
    return InvocationRequest(
        request.function, request.body, request.content_type, PLATFORM, Trigger.SHADOW, pinned, None, at
    )


def judge(comparator: Comparator, primary: Outcome, candidate: Outcome) -> tuple[str, str, float | None]:
    """(verdict, detail, score) of a candidate's finished, non-streamed outcome."""
    if not candidate.ok or not 200 <= candidate.http_status < 300:
        reason = candidate.error_type or f"HTTP {candidate.http_status}"
        detail = f"{reason}: {candidate.message}" if candidate.message else reason
        return "error", detail[:DETAIL_CHARS], None
    try:
        verdict: Verdict = comparator.compare(primary.body, candidate.body)
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:  # an answer nested beyond reason
        return "disagree", f"could not compare the answers: {type(exc).__name__}", None
    return ("agree" if verdict.agree else "disagree"), verdict.detail, verdict.score


class Mirror:
    def __init__(
        self,
        invoker: Invoker,
        sink: ShadowSink,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.invoker = invoker
        self.sink = sink
        self.draw = draw
        self.clock = clock
        self.in_flight: Counter[str] = Counter()  # function -> copies running
        self._copies: set[asyncio.Task[None]] = set()

    def offer(
        self, shadow: ShadowTarget, request: InvocationRequest, primary: Target, outcome: Outcome
    ) -> None:
        """Copy this call to the shadow candidate in the background, or count why not. Never waits."""
        if shadow.percent < 100 and not sampled(shadow.percent, self.draw()):
            return
        now = self.clock()
        function, candidate = request.function, shadow.target.revision.id
        reason = skip_reason(outcome, self.in_flight[function], shadow.max_in_flight)
        if reason is not None:
            self.sink.skip(function, candidate, reason, now)
            return
        self.in_flight[function] += 1
        primary_ms = (now - request.received_at) * 1000
        work = self._copy(shadow, request, primary.revision.id, outcome, primary_ms, now)
        task = asyncio.get_running_loop().create_task(work)
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)

    async def _copy(
        self, shadow: ShadowTarget, request: InvocationRequest, primary_revision: str, primary: Outcome,
        primary_ms: float, started: float,
    ) -> None:  # fmt: skip
        function, candidate = request.function, shadow.target.revision.id
        try:
            copy = copy_of(request, candidate, started)
            answer = await self.invoker.invoke_target(copy, shadow.target, reroute=False)
            candidate_ms = (self.clock() - started) * 1000
            if answer.kind is OutcomeKind.QUEUE_FULL:
                self.sink.skip(function, candidate, "dropped", started)
                return
            if answer.stream is not None:
                answer.stream.cancel()  # finishes and records the candidate's activation
                verdict, detail, score = (
                    "error",
                    "the candidate streamed its answer; the primary did not",
                    None,
                )
            elif len(primary.body) + len(answer.body) > COMPARE_IN_THREAD_BYTES:
                verdict, detail, score = await asyncio.to_thread(judge, shadow.comparator, primary, answer)
            else:
                verdict, detail, score = judge(shadow.comparator, primary, answer)
            self.sink.add(
                ShadowResult(function, candidate, primary_revision, primary.activation, answer.activation,
                             started, verdict, detail, score, primary_ms, candidate_ms)
            )  # fmt: skip
        except Exception:  # a bug of ours: the client is long answered; log it and go on
            log.exception("shadow copy of %s to %s failed inside the gateway", primary.activation, candidate)
        finally:
            self.in_flight[function] -= 1

    async def settled(self) -> None:
        """Return once the copies running now have finished and handed over their results."""
        await asyncio.gather(*self._copies, return_exceptions=True)

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Let running copies finish (their candidate's pool drains meanwhile), cancel the rest."""
        if not self._copies:
            return
        _, pending = await asyncio.wait(set(self._copies), timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
