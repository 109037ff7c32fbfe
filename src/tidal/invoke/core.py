"""How any invocation becomes an outcome: route -> revision -> instance -> call -> finish -> record.

``Invoker.invoke`` is the only path from an ``InvocationRequest`` to an ``Outcome``: the HTTP
adapter, async jobs and event triggers all call it, so they share routing, the activator queue,
error mapping and metering. Nothing here knows about HTTP. Every exit returns an outcome (none
raises to the caller), and every request that reached a revision leaves exactly one activation
record, written off the hot path by ``record``; except a 429 (the queue was full), which is only
counted (``reject``): an overload must not become a table of refusals.

``invoke_target`` runs a request on a target chosen by the caller: the shadow mirror
(tidal.shadow.mirror) sends its copies through it, after ``invoke`` knows the primary's outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import msgspec

from tidal.backends.base import COLD_START_DETAIL
from tidal.invoke.outcome import OUTCOMES, Outcome, OutcomeKind
from tidal.invoke.request import Caller, InvocationRequest
from tidal.metering.billing import billed_ms
from tidal.router.connection import Call, InstanceClient, InstanceLost, OutOfMemory, StartFailed
from tidal.router.multiplex import model_of
from tidal.router.pool import QueueFull, RevisionPool, RevisionRetired
from tidal.router.router import Route, Router, Target
from tidal.runtime.capture import cap_logs
from tidal.runtime.codec import BadRequest, check_json, is_raw
from tidal.runtime.protocol import CallStats, Chunk, End, Error, Invoke, Message, Result
from tidal.spec import Style
from tidal.store.models import Activation

if TYPE_CHECKING:
    from tidal.shadow.mirror import Mirror

log = logging.getLogger("tidal.invoke")

DEADLINE_GRACE_S = 2.0  # how long past its deadline an instance may take to say "Timeout" itself
REROUTES = 3  # a revision retired while a request waited hands it to the function's new traffic
NO_STATS = CallStats(0.0, 0.0, 0)
HIDDEN_HEADERS = frozenset({"authorization", "cookie"})  # never forwarded to function code
# Error frames whose type is one of ours, not the name of a user exception.
QUEUE_SLACK_S = 0.05  # a call dispatched with less than (timeout - this) left was shortened by the queue
QUEUE_NOTE = " (its time was cut short by waiting in the queue)"
# tidal.runtime.codec's refusals of a function's answer (too large, or not valid HTTP): a bad gateway.
UNSENDABLE_ANSWERS = frozenset({"BadResponse", "ResponseTooLarge"})
KIND_OF_ERROR_TYPE = {
    "Timeout": OutcomeKind.TIMEOUT,
    "Cancelled": OutcomeKind.CANCELLED,
    "InstanceLost": OutcomeKind.INSTANCE_LOST,
    "OutOfMemory": OutcomeKind.OUT_OF_MEMORY,
}


class ActivationIds:
    """Unique activation ids without a syscall per request: a random per-process prefix + a counter.

    The prefix (5 random bytes) makes ids from different gateway runs and processes distinct.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(5)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):06x}"


def refusal(route: Route | None, function: str, caller: Caller) -> Outcome | None:
    """Why ``caller`` may not invoke ``function`` at all, or None. Cheap: no I/O, no body read."""
    if route is None:
        if not caller.authenticated:  # as for an existing function: no 401-vs-404 oracle of names
            return Outcome.error(
                OutcomeKind.UNAUTHENTICATED, "a valid API key is required (Authorization: Bearer KEY)"
            )
        return Outcome.error(OutcomeKind.NOT_FOUND, f"no function named {function!r}")
    if route.public or caller.may_invoke(function):
        return None
    if not caller.authenticated:
        return Outcome.error(
            OutcomeKind.UNAUTHENTICATED, "a valid API key is required (Authorization: Bearer KEY)"
        )
    return Outcome.error(OutcomeKind.FORBIDDEN, f"this key may not invoke {function!r}")


def outcome_of_error(error: Error) -> Outcome:
    """An instance's Error frame as an outcome: ours (timeout, cancel, lost), the caller's, or the function's."""
    kind = KIND_OF_ERROR_TYPE.get(error.type)
    if kind is None:
        if error.caller_fault:
            kind = OutcomeKind.BAD_INPUT if error.type == "BadRequest" else OutcomeKind.INPUT_REJECTED
        elif error.type in UNSENDABLE_ANSWERS:  # it answered, but not with something HTTP can carry
            kind = OutcomeKind.BAD_RESPONSE
        else:
            kind = OutcomeKind.FUNCTION_ERROR
    outcome = Outcome.error(kind, error.message, error.type)
    outcome.errors = _json_or_empty(error.errors)  # a typed input's validation errors, for the caller
    return outcome


def _json_or_empty(text: str) -> str:
    """``text`` when it is JSON: it is copied into the answer as it is, and the instance is not trusted."""
    if not text:
        return ""
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError:
        return ""
    return text


def _ignore_rejection(function: str, at: float) -> None:
    pass


class Invoker:
    def __init__(
        self,
        router: Router,
        record: Callable[[Activation], None],
        reject: Callable[[str, float], None] = _ignore_rejection,
        mirror: Mirror | None = None,
    ) -> None:
        self.router = router
        self.record = record
        self.reject = reject  # (function, epoch s): a 429, counted instead of recorded
        self.mirror = mirror  # copies calls of functions with a shadow to the candidate
        self.activation_ids = ActivationIds()

    def check(self, function: str, caller: Caller) -> Outcome | None:
        """The refusal ``invoke`` would give before running anything (adapters ask before reading a body)."""
        return refusal(self.router.route(function), function, caller)

    async def invoke(self, request: InvocationRequest) -> Outcome:
        route = self.router.route(request.function)
        refused = refusal(route, request.function, request.caller)
        if refused is not None:
            return refused
        assert route is not None
        target = self.router.pick(route, request.context)
        if target is None:
            return Outcome.error(
                OutcomeKind.NOT_FOUND,
                f"{request.function!r} has no revision or tag {request.context.revision!r}",
            )
        outcome = await self.invoke_target(request, target)
        if outcome.kind is OutcomeKind.QUEUE_FULL:
            self.reject(request.function, request.received_at)
        elif route.shadow is not None and self.mirror is not None:
            # The copy starts in the background, now that the client's answer is known.
            self.mirror.offer(route.shadow, request, target, outcome)
        return outcome

    async def invoke_target(
        self, request: InvocationRequest, target: Target, reroute: bool = True
    ) -> Outcome:
        """Run ``request`` on ``target`` (routing and refusals are the caller's): deadline, error
        mapping and the activation record as for any call. ``reroute``: a request whose revision
        retired while it waited goes to the function's traffic; without it, it fails (a shadow copy
        must never reach the primary). A 429 leaves no record and is not counted here.
        """
        malformed = _malformed(request, target)
        if malformed is not None:
            return malformed
        activation = self._new_activation(request, target)
        timeout = (
            target.spec.timeout if request.timeout_s is None else min(request.timeout_s, target.spec.timeout)
        )
        deadline = request.received_at + timeout
        try:
            outcome = await self._run(request, target, activation, deadline, reroute)
        except Exception:  # a bug of ours still gives the caller an outcome and leaves a record
            log.exception("invocation %s failed inside the gateway", activation.id)
            outcome = Outcome.error(OutcomeKind.INTERNAL, "the gateway failed; see its log")
        if outcome.kind is OutcomeKind.QUEUE_FULL:  # no activation id: nothing is recorded under it
            return outcome
        outcome.activation, outcome.revision, outcome.cold = (
            activation.id,
            activation.revision,
            activation.cold,
        )
        if outcome.stream is None:
            self._finish(activation, outcome)
        return outcome

    def _new_activation(self, request: InvocationRequest, target: Target) -> Activation:
        return Activation(
            id=self.activation_ids.next(),
            function=request.function,
            revision=target.revision.id,
            instance="",
            start=request.received_at,
            duration_ms=0.0,
            billed_ms=0,
            memory_mb=target.spec.memory,
            cold=False,
            status="ok",
            http_status=200,
            key_id=request.caller.key_id,
            trigger=request.trigger.value,
            model=(model_of(request.context) or "") if target.spec.max_models else "",
        )

    async def _run(
        self, request: InvocationRequest, target: Target, activation: Activation, deadline: float,
        reroute: bool = True,
    ) -> Outcome:  # fmt: skip
        acquired = await self._acquire(request, target, activation, deadline, reroute)
        if isinstance(acquired, Outcome):
            return acquired
        pool, client = acquired
        budget = deadline - time.time()
        if budget <= 0:  # its whole time went waiting for room: not dispatched, the instance not touched
            pool.release(client)
            return Outcome.error(OutcomeKind.TIMEOUT, "the request waited in the queue past its timeout "
                                 f"of {min(request.timeout_s or pool.spec.timeout, pool.spec.timeout):g} s; it did not run")  # fmt: skip
        # A call the queue left less than the function's own timeout is not the function's fault
        # when it runs out: its instance is not recycled for it.
        queue_shortened = budget < pool.spec.timeout - QUEUE_SLACK_S
        outcome = await self._call(request, activation, deadline, pool, client, queue_shortened)
        if activation.cold:  # how the instance it waited for started: x-tidal-cold-start-detail
            outcome.cold_detail = activation.cold_detail = str(client.handle.extra.get(COLD_START_DETAIL, ""))
        return outcome

    async def _call(
        self, request: InvocationRequest, activation: Activation, deadline: float, pool: RevisionPool,
        client: InstanceClient, queue_shortened: bool = False,
    ) -> Outcome:  # fmt: skip
        """Hand the request to the instance ``_acquire`` found: its answer (or stream) as an outcome."""
        context = request.context
        forwarded = {key: value for key, value in context.headers.items() if key not in HIDDEN_HEADERS}

        def build(call_id: int) -> Invoke:
            return Invoke(call_id, activation.id, deadline, request.body, request.content_type, forwarded,
                          context.method, context.path, context.query, context.path_params,
                          context.route_key, deadline - time.time())  # fmt: skip

        try:
            call = client.call(build)
            first = await call.answer(max(0.0, deadline - time.time()) + DEADLINE_GRACE_S)
        except InstanceLost as exc:
            pool.release(client)
            kind = OutcomeKind.OUT_OF_MEMORY if isinstance(exc, OutOfMemory) else OutcomeKind.INSTANCE_LOST
            return Outcome.error(kind, str(exc))
        except TimeoutError:
            # The instance did not even report its own timeout: its event loop is stuck. Replace it.
            client.cancel(call)
            pool.replace(client)
            pool.release(client)
            return self._timed_out(pool)
        if isinstance(first, Chunk):
            return InstanceStream(self, pool, client, call, first, activation, deadline).outcome
        if queue_shortened and isinstance(first, Error) and first.type == "Timeout":
            client.recycle = False  # its thread ends on its own, well within the function's timeout
            first = msgspec.structs.replace(first, message=first.message + QUEUE_NOTE)
        pool.release(client)
        _copy_stats(activation, first)
        if isinstance(first, Result):
            return Outcome(OutcomeKind.OK, first.body, first.content_type, first.status, first.headers)
        if isinstance(first, Error):
            return outcome_of_error(first)
        return Outcome.error(
            OutcomeKind.INTERNAL, f"the instance answered with an unexpected {type(first).__name__}"
        )

    async def _acquire(
        self, request: InvocationRequest, target: Target, activation: Activation, deadline: float,
        reroute: bool = True,
    ) -> tuple[RevisionPool, InstanceClient] | Outcome:  # fmt: skip
        """An instance for this request (waiting through a cold start), or the outcome that ends it."""
        for _ in range(REROUTES):
            pool = target.pool
            try:
                client, waited_ms = await pool.acquire(
                    max(0.0, deadline - time.time()), request.context, len(request.body)
                )
                break
            except RevisionRetired:
                if not reroute:
                    return Outcome.error(
                        OutcomeKind.UNAVAILABLE, f"revision {pool.revision.id} stopped serving"
                    )
                route = self.router.route(request.function)
                successor = self.router.pick(route, request.context) if route is not None else None
                if successor is None:
                    return Outcome.error(OutcomeKind.NOT_FOUND, f"{request.function!r} was removed")
                target = successor
            except QueueFull as exc:
                return Outcome.error(OutcomeKind.QUEUE_FULL, f"{request.function!r} is at capacity: {exc}")
            except StartFailed as exc:
                # No node can hold it (Ray backend): the cluster lacks capacity, the code is not at fault.
                kind = (
                    OutcomeKind.UNAVAILABLE if exc.error_type == "Unplaceable" else OutcomeKind.SETUP_FAILED
                )
                return Outcome.error(kind, f"the function could not start: {exc.message}", exc.error_type)
            except TimeoutError:
                return Outcome.error(OutcomeKind.TIMEOUT, "no instance had room before the function's timeout "
                                     f"of {pool.spec.timeout:g} s")  # fmt: skip
        else:
            return Outcome.error(OutcomeKind.UNAVAILABLE, "the function is being redeployed; retry")
        activation.revision = pool.revision.id
        activation.memory_mb = pool.spec.memory
        activation.gpus = pool.spec.gpu  # GPU-s = gpus x billed time (tidal.metering.usage)
        activation.instance = client.id
        activation.queue_ms = waited_ms
        activation.cold = waited_ms > 0 and client.served == 0  # it waited for this new instance
        if activation.cold and client.ready.done() and not client.ready.exception():
            ready = client.ready.result()
            activation.instance_start_ms = client.start_ms
            activation.import_ms, activation.setup_ms = ready.import_ms, ready.setup_ms
        return pool, client

    @staticmethod
    def _timed_out(pool: RevisionPool) -> Outcome:
        return Outcome.error(
            OutcomeKind.TIMEOUT, f"the function ran past its timeout of {pool.spec.timeout:g} s"
        )

    def _finish(self, activation: Activation, outcome: Outcome) -> None:
        """Fill in how the invocation ended and hand the record to metering (batched, off the hot path)."""
        activation.duration_ms = (time.time() - activation.start) * 1000
        activation.status = OUTCOMES[outcome.kind].activation_status
        activation.http_status = outcome.http_status
        if not outcome.ok or outcome.error_type:
            activation.error_type, activation.error_message = outcome.error_type, outcome.message
        self.record(activation)


class InstanceStream:
    """A streaming answer: chunks as the instance yields them; finished and recorded exactly once."""

    def __init__(
        self, invoker: Invoker, pool: RevisionPool, client: InstanceClient, call: Call, first: Chunk,
        activation: Activation, deadline: float,
    ) -> None:  # fmt: skip
        self.outcome = Outcome(OutcomeKind.OK, status=200, stream=self)
        self._invoker, self._pool, self._client, self._call = invoker, pool, client, call
        self._pending: bytes | None = first.data
        self._activation, self._deadline = activation, deadline
        self._done = False

    async def next_chunk(self) -> bytes | None:
        """The next chunk, or None once the stream ended (``outcome`` then says how)."""
        if self._pending is not None:
            chunk, self._pending = self._pending, None
            return chunk
        if self._done:
            return None
        timeout = max(0.0, self._deadline - time.time()) + DEADLINE_GRACE_S
        try:
            frame = await asyncio.wait_for(self._call.next_stream_frame(), timeout)
        except TimeoutError:
            self.cancel(OutcomeKind.TIMEOUT)
            return None
        if isinstance(frame, Chunk):
            return frame.data
        self._end(frame)
        return None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    def cancel(self, kind: OutcomeKind = OutcomeKind.CANCELLED) -> None:
        """Stop the stream early (the caller left, or it ran past its deadline)."""
        if self._done:
            return
        self._client.cancel(self._call)
        message = (
            "the client went away" if kind is OutcomeKind.CANCELLED else "the stream ran past its timeout"
        )
        self._close(Outcome.error(kind, message))

    def _end(self, frame: Message) -> None:
        _copy_stats(self._activation, frame)
        if isinstance(frame, Error):
            ended = outcome_of_error(frame)
        elif isinstance(frame, End) and frame.error_type:
            ended = Outcome.error(OutcomeKind.FUNCTION_ERROR, frame.error_message, frame.error_type)
        else:
            ended = Outcome(OutcomeKind.OK)
        self._close(_streamed(ended))

    def _close(self, outcome: Outcome) -> None:
        self._done = True
        outcome.activation, outcome.revision, outcome.cold, outcome.cold_detail = (
            self.outcome.activation,
            self.outcome.revision,
            self.outcome.cold,
            self.outcome.cold_detail,
        )
        self.outcome = outcome
        self._pool.release(self._client)
        self._invoker._finish(self._activation, outcome)


def _streamed(outcome: Outcome) -> Outcome:
    """A stream that ran to its end answered 200 with its first chunk, however the function ended."""
    outcome.status = 200
    return outcome


def _malformed(request: InvocationRequest, target: Target) -> Outcome | None:
    """A JSON body that does not parse is the caller's fault, found before any instance is used."""
    if not request.body or target.revision.style == Style.LAMBDA_HTTP or is_raw(request.content_type):
        return None
    try:
        check_json(request.body)  # invalid UTF-8 and deep nesting included: a 400, never a 500
    except BadRequest as exc:
        return Outcome.error(OutcomeKind.BAD_INPUT, str(exc))
    return None


def _copy_stats(activation: Activation, message: Message) -> None:
    """What the instance measured: billed time, CPU, peak memory, captured output."""
    stats: CallStats = getattr(message, "stats", NO_STATS)
    activation.billed_ms = billed_ms(stats.duration_ms)
    activation.cpu_ms = stats.cpu_ms
    activation.peak_rss_kb = stats.peak_rss_kb
    activation.batch_size = stats.batch_size
    activation.logs = cap_logs(getattr(message, "logs", ""))
