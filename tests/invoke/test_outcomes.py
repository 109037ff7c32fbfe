"""The one table of outcomes, and how instance errors and refusals map onto it."""

from __future__ import annotations

import time
from typing import Any

from tidal.auth.keys import ANONYMOUS, UNKNOWN_KEY, Caller
from tidal.invoke.core import outcome_of_error, refusal
from tidal.invoke.outcome import OUTCOMES, Outcome, OutcomeKind
from tidal.router.router import Route, Target
from tidal.runtime.protocol import CallStats, Error
from tidal.spec import validate_spec
from tidal.store.models import Revision

STATS = CallStats(1.0, 1.0, 1)


def test_every_outcome_has_one_meaning_and_retries_only_help_transient_ones() -> None:
    assert set(OUTCOMES) == set(OutcomeKind)
    retryable = {kind for kind, meaning in OUTCOMES.items() if meaning.retryable}
    assert OutcomeKind.QUEUE_FULL in retryable and OutcomeKind.INSTANCE_LOST in retryable
    assert not retryable & {OutcomeKind.BAD_INPUT, OutcomeKind.INPUT_REJECTED, OutcomeKind.NOT_FOUND,
                            OutcomeKind.FORBIDDEN, OutcomeKind.UNAUTHENTICATED}  # fmt: skip
    assert Outcome.error(OutcomeKind.QUEUE_FULL, "x").http_status == 429
    assert Outcome(OutcomeKind.OK, status=201).http_status == 201, "a lambda-http handler's own status"


def test_instance_errors_map_to_theirs_the_callers_or_the_functions() -> None:
    assert outcome_of_error(Error(1, "Timeout", "late", STATS)).kind is OutcomeKind.TIMEOUT
    assert outcome_of_error(Error(1, "Cancelled", "gone", STATS)).kind is OutcomeKind.CANCELLED
    rejected = outcome_of_error(Error(1, "InputError", "pixels must be 64 numbers", STATS, caller_fault=True))
    assert (rejected.kind, rejected.http_status, rejected.error_type) == (
        OutcomeKind.INPUT_REJECTED, 422, "InputError"
    )  # fmt: skip
    assert outcome_of_error(Error(1, "BadRequest", "bad JSON", STATS, caller_fault=True)).http_status == 400
    crashed = outcome_of_error(Error(1, "ZeroDivisionError", "division by zero", STATS))
    assert (crashed.kind, crashed.http_status, crashed.error_type) == (
        OutcomeKind.FUNCTION_ERROR, 500, "ZeroDivisionError"
    )  # fmt: skip


def route(public: bool) -> Route:
    revision = Revision("fn-00001", "fn", 1, "d", "c", "m", "f", False, "native", {}, time.time())
    pool: Any = object()
    return Route("fn", public, (Target(revision, validate_spec({"name": "fn"}), pool, 100),))


def test_refusals_before_anything_runs() -> None:
    invoker_key = Caller("k1", frozenset({"invoke:fn"}), presented=True)
    other_key = Caller("k2", frozenset({"invoke:other"}), presented=True)
    assert refusal(None, "fn", invoker_key).kind is OutcomeKind.NOT_FOUND  # type: ignore[union-attr]
    assert refusal(route(False), "fn", ANONYMOUS).kind is OutcomeKind.UNAUTHENTICATED  # type: ignore[union-attr]
    assert refusal(route(False), "fn", UNKNOWN_KEY).kind is OutcomeKind.UNAUTHENTICATED  # type: ignore[union-attr]
    assert refusal(route(False), "fn", other_key).kind is OutcomeKind.FORBIDDEN  # type: ignore[union-attr]
    assert refusal(route(False), "fn", invoker_key) is None
    assert refusal(route(True), "fn", ANONYMOUS) is None
