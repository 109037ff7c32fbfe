"""What the gateway does with jobs, apart from HTTP: submit, read, cancel, list, redrive; and
the two loops (the dispatcher, the callback sender) the platform supervises.

Who may read or cancel a job: the key that submitted it, or an admin key. A job submitted
without a key (a public function) belongs to nobody: its id (128 random bits) is the
capability, and whoever holds it may read or cancel it. Destinations' jobs are the platform's:
admin only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import NamedTuple

from tidal.auth.keys import Caller
from tidal.invoke.core import Invoker
from tidal.invoke.request import InvocationRequest
from tidal.jobs.callbacks import CallbackSender
from tidal.jobs.dispatcher import Dispatcher
from tidal.jobs.model import DEFAULT_SETTINGS, JobSettings, job_settings, new_job
from tidal.store.models import FINAL_JOB_STATES, Job
from tidal.store.protocols import JobStore


class IdempotencyConflict(ValueError):
    """An Idempotency-Key already used (by this caller, for this function) with another request."""


class JobRunning(RuntimeError):
    """A running attempt cannot be stopped: once an instance has the call, it runs to its end."""


class JobFinished(RuntimeError):
    """The job already ended; there is nothing to cancel."""


class Submitted(NamedTuple):
    job: Job
    created: bool  # False: the Idempotency-Key named a job submitted before


class JobService:
    def __init__(
        self,
        store: JobStore,
        invoker: Invoker,
        clock: Callable[[], float] = time.time,
        sole_gateway: bool = True,
    ) -> None:
        self.store, self.clock = store, clock
        self._settings: dict[str, JobSettings] = {}
        self.dispatcher = Dispatcher(store, invoker, self.settings_of, clock, sole_gateway=sole_gateway)
        self.callbacks = CallbackSender(store, clock)
        self.dispatcher.finished = self.callbacks.wake

    def configure(self, function: str, settings: Mapping[str, object]) -> None:
        """The function's stored settings as published (retries, max_event_age, destinations)."""
        self._settings[function] = job_settings(settings)

    def settings_of(self, function: str) -> JobSettings:
        return self._settings.get(function, DEFAULT_SETTINGS)

    async def submit(
        self, request: InvocationRequest, idempotency_key: str | None = None, callback_url: str | None = None,
        max_attempts: int | None = None,
    ) -> Submitted:  # fmt: skip
        """Store the request as a queued job (durable before this returns) and wake the dispatcher.

        ``max_attempts`` overrides the function's ``retries`` + 1 (a queue trigger's ``max_deliveries``).
        """
        settings = self.settings_of(request.function)
        if max_attempts is not None:
            settings = replace(settings, retries=max_attempts - 1)
        job = new_job(request, settings, self.clock(), idempotency_key, callback_url)
        stored, created = await asyncio.to_thread(self.store.add_job, job)
        if not created and stored.request_digest != job.request_digest:
            raise IdempotencyConflict(
                f"Idempotency-Key {idempotency_key!r} was used for another request to {request.function!r}"
            )
        if created:
            self.dispatcher.wake()
        return Submitted(stored, created)

    async def get(self, job_id: str, caller: Caller) -> Job | None:
        """The job, if ``caller`` may see it (else None, as if there were none)."""
        job = await asyncio.to_thread(self.store.job, job_id)
        return job if job is not None and may_see(caller, job) else None

    async def cancel(self, job_id: str, caller: Caller) -> Job | None:
        """Cancel a queued job; None if there is none ``caller`` may see. JobRunning / JobFinished
        when it cannot be cancelled (any more)."""
        job = await self.get(job_id, caller)
        if job is None:
            return None
        if job.state == "queued":
            job = await asyncio.to_thread(self.store.cancel_job, job_id, self.clock()) or job
        if job.state == "running":
            raise JobRunning(
                f"job {job_id} is running attempt {job.attempts}: a call handed to an instance runs to its "
                "end; cancel it again if it is queued for a retry"
            )
        if job.state in FINAL_JOB_STATES and job.state != "cancelled":
            raise JobFinished(f"job {job_id} already ended: {job.state}")
        return job

    async def redrive(self, function: str, job_id: str | None = None) -> list[str]:
        """Queue the function's dead jobs (or one dead or failed job) again, attempts reset and
        their event age counted from now."""
        now = self.clock()
        expires_at = now + self.settings_of(function).max_event_age_s
        ids = await asyncio.to_thread(self.store.redrive_jobs, function, job_id, now, expires_at)
        if ids:
            self.dispatcher.wake()
        return ids

    def ready(self) -> None:
        self.dispatcher.ready()

    async def close(self) -> None:
        await self.dispatcher.close()


def may_see(caller: Caller, job: Job) -> bool:
    """The submitting key, an admin key, or anyone holding the id of a job submitted without a key.

    >>> from tidal.auth.keys import ANONYMOUS
    >>> may_see(ANONYMOUS, Job("job-1", "f", "queued", b"", "", {}, "", [], None, "", None, 3, 0.0, 0.0, 0.0))
    True
    """
    if caller.may("admin"):
        return True
    if not job.owner:
        return True
    return bool(caller.key_id) and caller.key_id == job.owner and caller.authenticated
