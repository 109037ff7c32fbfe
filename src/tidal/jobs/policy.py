"""What happens after a job's attempt, or a callback's delivery: pure decisions, no clock, no I/O.

The callers (tidal.jobs.dispatcher, tidal.jobs.callbacks) pass the time and a random draw in, so
the tests here move time by hand and pin the jitter.

Retries follow ``OUTCOMES``' ``retryable`` flag (tidal.invoke.outcome): a function that raised is
retried (as AWS Lambda retries async invocations), a timeout, a lost instance or a failed setup
too; bad input, a refusal or running out of memory are not (the same request would fail the same
way): the job is then ``failed`` at once. A retryable failure with no attempt left, or whose next
attempt would start past the job's ``max_event_age``, makes it ``dead`` (the dead-letter queue).
A 429 from the function's own queue (``queue_full``) is backpressure, not a failure: it is
retried without using up an attempt, until the event age runs out.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidal.invoke.outcome import OUTCOMES, OutcomeKind
from tidal.retry import backoff_s

RETRY_FIRST_S = 1.0  # the first retry waits up to 1 s, the second up to 2 s, ... (full jitter)
RETRY_MAX_S = 300.0
THROTTLES = frozenset({OutcomeKind.QUEUE_FULL})  # retried without counting as an attempt
JOB_SLOTS_MAX = 64  # jobs of one function in flight at once, at most
CALLBACK_ATTEMPTS = 5  # deliveries of one callback, at most
CALLBACK_FIRST_S = 1.0
CALLBACK_MAX_S = 60.0
CALLBACK_RETRIED_4XX = frozenset({408, 425, 429})  # other 4xx answers are final: the receiver refused


@dataclass(frozen=True)
class Next:
    """A job's state after an attempt: ``queued`` again after ``delay_s``, or final."""

    state: str  # "succeeded" | "queued" | "failed" | "dead"
    delay_s: float = 0.0
    counted: bool = True  # False: the attempt does not count against the job's attempts
    reason: str = ""


def retry_delay_s(
    attempt: int, draw: float, first_s: float = RETRY_FIRST_S, max_s: float = RETRY_MAX_S
) -> float:
    """Full jitter: ``draw`` (uniform in [0, 1)) times the exponential ceiling after ``attempt``
    failed attempts (1 s, 2 s, 4 s ... capped at 300 s).

    >>> [retry_delay_s(n, 0.5) for n in (1, 2, 3, 12)]
    [0.5, 1.0, 2.0, 150.0]
    """
    return draw * backoff_s(attempt, first_s, max_s)


def after_attempt(
    kind: OutcomeKind, attempts: int, max_attempts: int, now: float, expires_at: float, draw: float
) -> Next:
    """What follows attempt number ``attempts`` of a job that may make ``max_attempts``.

    >>> after_attempt(OutcomeKind.FUNCTION_ERROR, 1, 3, now=100.0, expires_at=200.0, draw=0.5)
    Next(state='queued', delay_s=0.5, counted=True, reason='function_error: retry 1 of 2')
    >>> after_attempt(OutcomeKind.FUNCTION_ERROR, 3, 3, now=100.0, expires_at=200.0, draw=0.5).state
    'dead'
    """
    if kind is OutcomeKind.OK:
        return Next("succeeded")
    if not OUTCOMES[kind].retryable:
        return Next("failed", reason=f"{kind}: not retried (the same request would fail the same way)")
    counted = kind not in THROTTLES
    if counted and attempts >= max_attempts:
        return Next("dead", reason=f"{kind}: all {max_attempts} attempt(s) failed")
    delay = retry_delay_s(max(1, attempts), draw)
    if now + delay >= expires_at:
        return Next("dead", reason=f"{kind}: the next attempt would start past the job's max_event_age")
    retry = f"retry {attempts} of {max_attempts - 1}" if counted else "retry (throttled: no attempt used)"
    return Next("queued", delay, counted, f"{kind}: {retry}")


def too_old(now: float, expires_at: float) -> bool:
    """Whether a job is past its ``max_event_age``: it then goes dead without another attempt."""
    return now >= expires_at


def job_slots(max_instances: int, concurrency: int) -> int:
    """Jobs of one function run at once at most: what its instances can serve together, capped,
    so a burst of jobs waits in the durable queue instead of flooding the router's queue.

    >>> job_slots(10, 1), job_slots(1, 1), job_slots(100, 8)
    (10, 1, 64)
    """
    return max(1, min(JOB_SLOTS_MAX, max_instances * concurrency))


@dataclass(frozen=True)
class Delivery:
    """A callback's state after one delivery: ``pending`` again after ``delay_s``, or final."""

    state: str  # "delivered" | "pending" | "failed"
    delay_s: float = 0.0


def after_delivery(status: int | None, attempts: int, max_attempts: int = CALLBACK_ATTEMPTS) -> Delivery:
    """What follows delivery number ``attempts`` that got HTTP ``status`` (None: no answer at all).

    A 2xx is delivered; a 5xx, 408/425/429 or no answer is tried again (1, 2, 4 ... 60 s later)
    until ``max_attempts``; any other answer is final (the receiver refused it).

    >>> after_delivery(204, 1), after_delivery(500, 1), after_delivery(500, 5), after_delivery(404, 1)
    (Delivery(state='delivered', delay_s=0.0), Delivery(state='pending', delay_s=1.0), \
Delivery(state='failed', delay_s=0.0), Delivery(state='failed', delay_s=0.0))
    """
    if status is not None and 200 <= status < 300:
        return Delivery("delivered")
    retryable = status is None or status >= 500 or status in CALLBACK_RETRIED_4XX
    if not retryable or attempts >= max_attempts:
        return Delivery("failed")
    return Delivery("pending", backoff_s(attempts, CALLBACK_FIRST_S, CALLBACK_MAX_S))
