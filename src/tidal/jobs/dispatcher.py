"""The job dispatcher: a supervised loop that runs due jobs through ``Invoker.invoke``.

Each tick it asks the store which functions have due jobs and claims as many of each as the
function has free job slots (``policy.job_slots``: what its instances can serve together), under a
lease of the function's timeout + 30 s. Each claimed job is one attempt: an ``InvocationRequest``
with ``Trigger.JOB`` and the submitter's identity, through the same router as a synchronous call
(so the autoscaler sees async load, and the function's own queue holds what waits for an
instance). The attempt's outcome goes through ``policy.after_attempt``; the job's next state, a
pending callback and a destination's job are written in one transaction, fenced by the attempt
number.

Delivery: at least once. An attempt whose gateway died (``kill -9``) left its job ``running``
with a lease; a new gateway on the same SQLite state dir holds the state dir's lock, so every
``running`` job it finds at start is orphaned and is retried at once (counted as an attempt that
failed with ``GatewayLost``). The function may thus run twice for one job; the job still ends in
exactly one final state, and an idempotency key still names one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from contextvars import ContextVar

import msgspec

from tidal.invoke.core import Invoker
from tidal.invoke.outcome import Outcome, OutcomeKind
from tidal.invoke.request import PLATFORM, InvocationRequest, Trigger
from tidal.jobs.model import (
    EVENT_TRIGGERS,
    PLATFORM_OWNER,
    TRIGGER_HEADER,
    JobSettings,
    destination_event,
    invocation_of,
    new_job,
)
from tidal.jobs.policy import Next, after_attempt, job_slots, too_old
from tidal.store.models import Activation, Job
from tidal.store.protocols import JobStore

log = logging.getLogger("tidal.jobs")

POLL_S = 0.25  # how often due retries are looked for (a new job wakes the loop at once)
LEASE_MARGIN_S = 30.0  # beyond the function's timeout, before an attempt is presumed lost
RECOVER_EVERY_S = 5.0
RECOVER_BATCH = 1000
DEFAULT_TIMEOUT_S = 60.0  # the lease of a job whose function is not served (it fails at once)
RESULT_LIMIT = 6 * 1024 * 1024  # a larger answer fails the job: results live in the store
CLOSE_GRACE_S = 5.0

# The job whose attempt is running in this task: the activation recorder names it on the record.
CURRENT_JOB: ContextVar[str] = ContextVar("tidal_current_job", default="")
CURRENT_TRIGGER: ContextVar[str] = ContextVar("tidal_current_trigger", default="")  # its event trigger's id
JOB_TRIGGERS = frozenset({Trigger.JOB, *EVENT_TRIGGERS})


def attributed(record: Callable[[Activation], None]) -> Callable[[Activation], None]:
    """``record`` (the activation writer), naming on each job attempt's record the job it served
    (and, for an event's job, the trigger)."""

    def record_naming_the_job(activation: Activation) -> None:
        if activation.trigger in JOB_TRIGGERS:  # a shadow copy of a job's call is no attempt of it
            activation.job = CURRENT_JOB.get()
            activation.trigger_id = CURRENT_TRIGGER.get()
        record(activation)

    return record_naming_the_job


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        invoker: Invoker,
        settings: Callable[[str], JobSettings],
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
        sole_gateway: bool = True,
    ) -> None:
        self.store, self.invoker, self.settings = store, invoker, settings
        self.clock, self.draw = clock, draw
        # One SQLite state dir has one gateway (its lock): a job running at start is orphaned.
        self.sole_gateway = sole_gateway
        self.finished: Callable[[], None] = lambda: None  # told when a job ended (callbacks are due)
        self._running: dict[str, int] = {}  # function -> attempts in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._recovered = False

    def wake(self) -> None:
        self._wake.set()

    def ready(self) -> None:
        """The platform serves its functions now: jobs may run (before, they would find none)."""
        self._ready.set()

    @property
    def in_flight(self) -> int:
        return sum(self._running.values())

    async def run(self) -> None:
        await self._ready.wait()
        if not self._recovered:
            await self.recover(everything_running=self.sole_gateway)
            self._recovered = True
        last_recovery = self.clock()
        while True:
            self._wake.clear()
            now = self.clock()
            if now - last_recovery >= RECOVER_EVERY_S:
                await self.recover()
                last_recovery = now
            await self.dispatch(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def dispatch(self, now: float) -> int:
        """Claim and start the due jobs there are slots for; how many started."""
        started = 0
        for function in await asyncio.to_thread(self.store.due_functions, now):
            slots, timeout_s = self._capacity(function)
            free = slots - self._running.get(function, 0)
            if free <= 0:
                continue
            lease_until = now + timeout_s + LEASE_MARGIN_S
            for job in await asyncio.to_thread(self.store.claim_jobs, function, now, lease_until, free):
                self._start(job)
                started += 1
        return started

    def _capacity(self, function: str) -> tuple[int, float]:
        """(job slots, longest timeout) of the function as it is served now."""
        route = self.invoker.router.route(function)
        if route is None:
            return 1, DEFAULT_TIMEOUT_S
        spec = route.primary.spec
        return job_slots(spec.max_instances, spec.concurrency), max(t.spec.timeout for t in route.targets)

    def _start(self, job: Job) -> None:
        self._running[job.function] = self._running.get(job.function, 0) + 1
        task = asyncio.get_running_loop().create_task(self._attempt(job), name=f"job:{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, job: Job) -> None:
        try:
            await self.run_attempt(job)
        except Exception:  # the job stays running; its lease runs out and a recovery retries it
            log.exception("job %s: attempt %d failed inside the gateway", job.id, job.attempts)
        finally:
            self._running[job.function] -= 1
            self.wake()  # a slot is free

    async def run_attempt(self, job: Job) -> None:
        """One attempt of a claimed job, start to recorded end."""
        if too_old(self.clock(), job.expires_at):
            past = Outcome.error(OutcomeKind.TIMEOUT, "the job passed its max_event_age before it could run",
                                 "MaxEventAgeExceeded")  # fmt: skip
            await self.conclude(job, past, Next("dead", counted=False))
            return
        token = CURRENT_JOB.set(job.id)
        trigger_token = CURRENT_TRIGGER.set(_trigger_id(job))
        try:
            outcome = await self.invoker.invoke(invocation_of(job, self.clock()))
            if outcome.stream is not None:
                outcome = await _drain(outcome)
        finally:
            CURRENT_JOB.reset(token)
            CURRENT_TRIGGER.reset(trigger_token)
        if outcome.ok and len(outcome.body) > RESULT_LIMIT:
            outcome = _too_large(outcome)
        await self.conclude(job, outcome)

    async def recover(self, everything_running: bool = False) -> int:
        """Retry the jobs whose attempt was lost with its gateway; how many."""
        now = math.inf if everything_running else self.clock()
        recovered = 0
        while lost := await asyncio.to_thread(self.store.expired_leases, now, RECOVER_BATCH):
            for job in lost:
                gone = Outcome.error(OutcomeKind.INSTANCE_LOST, f"the gateway stopped during attempt "
                                     f"{job.attempts}; its outcome is unknown", "GatewayLost")  # fmt: skip
                await self.conclude(job, gone)
            recovered += len(lost)
            if len(lost) < RECOVER_BATCH:
                break
        if recovered:
            log.warning("jobs: %d attempt(s) lost with a stopped gateway were queued again", recovered)
        return recovered

    async def conclude(self, job: Job, outcome: Outcome, decided: Next | None = None) -> bool:
        """Write how attempt ``job.attempts`` ended: the job's next state, and for a final state
        the pending callback and the destination's job, at once. False if the job had moved on."""
        now = self.clock()
        decision = decided or after_attempt(
            outcome.kind, job.attempts, job.max_attempts, now, job.expires_at, self.draw()
        )
        ended = _after(job, outcome, decision, now)
        follow_up = self._destination_job(ended, now) if ended.finished_at is not None else None
        written = await asyncio.to_thread(self.store.finish_attempt, ended, job.attempts, follow_up)
        if not written:
            log.info(
                "job %s: attempt %d ended after the job moved on; its outcome is dropped",
                job.id,
                job.attempts,
            )
        elif ended.finished_at is not None:
            log.debug("job %s %s: %s", job.id, ended.state, decision.reason)
            self.finished()
            if follow_up is not None:
                self.wake()
        return written

    def _destination_job(self, job: Job, now: float) -> Job | None:
        """The job for the function's ``on_success`` / ``on_failure``, if it names one.

        A destination's own job fires no destination: a function that names itself cannot loop.
        """
        if job.source or job.state == "cancelled":
            return None
        settings = self.settings(job.function)
        destination = settings.on_success if job.state == "succeeded" else settings.on_failure
        if destination is None:
            return None
        request = InvocationRequest(destination, destination_event(job), caller=PLATFORM, trigger=Trigger.JOB)
        follow_up = new_job(request, self.settings(destination), now, source=job.id)
        return msgspec.structs.replace(follow_up, owner=PLATFORM_OWNER)

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Give attempts in flight ``grace_s`` to end; any still running is retried after a restart."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)


def _after(job: Job, outcome: Outcome, decision: Next, now: float) -> Job:
    """The job after an attempt that ended with ``outcome``, as ``decision`` says."""
    replace = msgspec.structs.replace
    ended = replace(
        job,
        state=decision.state,
        lease_until=0.0,
        attempts=job.attempts if decision.counted else job.attempts - 1,
        revision=outcome.revision or job.revision,
        activation=outcome.activation or job.activation,
    )
    if decision.state == "succeeded":
        ended = replace(ended, result=outcome.body, result_type=outcome.content_type,
                        error_type="", error_message="", error_kind="")  # fmt: skip
    else:
        ended = replace(ended, error_type=outcome.error_type or "Error", error_message=outcome.message,
                        error_kind=str(outcome.kind))  # fmt: skip
    if decision.state == "queued":
        return replace(ended, run_at=now + decision.delay_s)
    ended = replace(ended, finished_at=now)
    if job.callback_url is not None:
        ended = replace(
            ended, callback_state="pending", callback_attempts=0, callback_at=now, callback_error=""
        )
    return ended


def _trigger_id(job: Job) -> str:
    """The trigger an event's job came from (a client's own header on an HTTP job names none)."""
    if "trigger" not in job.context:
        return ""
    headers = job.context.get("headers")
    value = headers.get(TRIGGER_HEADER, "") if isinstance(headers, dict) else ""
    return value if isinstance(value, str) else ""


async def _drain(outcome: Outcome) -> Outcome:
    """A streamed answer read to its end: the chunks joined as the result (raw bytes)."""
    stream = outcome.stream
    assert stream is not None
    chunks, size = [], 0
    while (chunk := await stream.next_chunk()) is not None:
        size += len(chunk)
        if size > RESULT_LIMIT:
            stream.cancel()
            return _too_large(stream.outcome)
        chunks.append(chunk)
    ended = stream.outcome
    if ended.ok:
        ended.body, ended.content_type = b"".join(chunks), "application/octet-stream"
    return ended


def _too_large(outcome: Outcome) -> Outcome:
    failed = Outcome.error(
        OutcomeKind.TOO_LARGE, f"the result exceeds {RESULT_LIMIT} bytes", "ResultTooLarge"
    )
    failed.activation, failed.revision = outcome.activation, outcome.revision
    return failed
