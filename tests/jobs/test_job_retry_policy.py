"""The pure decisions of async jobs: retries and backoff, callbacks, who may see a job, URLs."""

from __future__ import annotations

import pytest

from tidal.auth.keys import ANONYMOUS, PLATFORM, Caller
from tidal.gateway.jobs_api import wants_async
from tidal.invoke.outcome import OUTCOMES, OutcomeKind
from tidal.jobs.callbacks import check_callback_url
from tidal.jobs.model import DEFAULT_SETTINGS, check_idempotency_key, job_settings
from tidal.jobs.policy import after_attempt, after_delivery, job_slots, retry_delay_s, too_old
from tidal.jobs.service import may_see
from tidal.store.models import Job

NOW = 1_000.0
LATER = NOW + 3600


def test_backoff_is_exponential_with_full_jitter() -> None:
    # The ceiling doubles per failed attempt (1, 2, 4 ... s) up to 300 s; the draw scales it.
    assert [retry_delay_s(n, 0.999) for n in (1, 2, 3, 4)] == pytest.approx([0.999, 1.998, 3.996, 7.992])
    assert retry_delay_s(20, 0.5) == 150.0
    assert retry_delay_s(3, 0.0) == 0.0  # full jitter reaches down to no wait at all


def test_a_function_error_is_retried_until_the_attempts_run_out() -> None:
    first = after_attempt(OutcomeKind.FUNCTION_ERROR, 1, 3, NOW, LATER, draw=0.5)
    assert (first.state, first.delay_s, first.counted) == ("queued", 0.5, True)
    second = after_attempt(OutcomeKind.FUNCTION_ERROR, 2, 3, NOW, LATER, draw=0.5)
    assert (second.state, second.delay_s) == ("queued", 1.0)
    third = after_attempt(OutcomeKind.FUNCTION_ERROR, 3, 3, NOW, LATER, draw=0.5)
    assert third.state == "dead" and "all 3 attempt(s) failed" in third.reason


@pytest.mark.parametrize("kind", [kind for kind, meaning in OUTCOMES.items() if not meaning.retryable])
def test_what_cannot_succeed_later_fails_at_once(kind: OutcomeKind) -> None:
    decision = after_attempt(kind, 1, 3, NOW, LATER, draw=0.5)
    assert decision.state == ("succeeded" if kind is OutcomeKind.OK else "failed")


@pytest.mark.parametrize("kind", [kind for kind, meaning in OUTCOMES.items() if meaning.retryable])
def test_every_retryable_outcome_is_retried(kind: OutcomeKind) -> None:
    assert after_attempt(kind, 1, 2, NOW, LATER, draw=0.1).state == "queued"


def test_a_full_queue_is_backpressure_not_a_failed_attempt() -> None:
    throttled = after_attempt(OutcomeKind.QUEUE_FULL, 3, 3, NOW, LATER, draw=0.5)
    assert (throttled.state, throttled.counted) == ("queued", False)


def test_no_attempt_starts_past_the_max_event_age() -> None:
    # The next attempt would wait up to 4 s (draw 0.9 -> 3.6 s) but the job expires in 2 s.
    assert after_attempt(OutcomeKind.TIMEOUT, 3, 10, NOW, NOW + 2.0, draw=0.9).state == "dead"
    assert after_attempt(OutcomeKind.TIMEOUT, 3, 10, NOW, NOW + 5.0, draw=0.9).state == "queued"
    assert too_old(NOW, NOW) and not too_old(NOW, NOW + 0.001)


def test_job_slots_follow_what_the_instances_can_serve() -> None:
    assert [job_slots(1, 1), job_slots(2, 4), job_slots(10, 10), job_slots(0, 5)] == [1, 8, 64, 1]


def test_callback_deliveries() -> None:
    assert after_delivery(200, 1).state == "delivered"
    retried = after_delivery(500, 1)
    assert (retried.state, retried.delay_s) == ("pending", 1.0)
    assert after_delivery(None, 2).delay_s == 2.0  # no answer at all: tried again
    assert after_delivery(429, 1).state == "pending"
    assert after_delivery(410, 1).state == "failed"  # the receiver refused it: final
    assert after_delivery(503, 5).state == "failed"  # out of attempts


GATEWAY = [("127.0.0.1", 8080), ("tidal.example.com", 8080)]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000/hook", "https://hooks.example.com/x?y=1", "http://10.0.0.5:8080/done"]
)
def test_callback_urls_that_are_fine(url: str) -> None:
    assert check_callback_url(url, GATEWAY) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("http:///nohost", "with a host"),
        ("not a url", "http:// or https://"),
        ("http://user:secret@example.com/", "user:password"),
        ("http://127.0.0.1:8080/v1/keys", "the gateway itself"),
        ("http://localhost:8080/v1/functions", "the gateway itself"),
        ("http://[::1]:8080/", "the gateway itself"),
        ("http://0.0.0.0:8080/", "the gateway itself"),
        ("http://tidal.example.com:8080/v1/keys", "the gateway itself"),
        ("http://example.com:99999/", "not a URL"),
        ("http://example.com/" + "x" * 3000, "longer than"),
    ],
)
def test_callback_urls_that_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_callback_url(url, GATEWAY)


def test_idempotency_keys() -> None:
    assert (
        check_idempotency_key("8e03978e-40d5-43e8-bc93-6894a57f9324")
        == "8e03978e-40d5-43e8-bc93-6894a57f9324"
    )
    for bad in ("", "has space", "x" * 256, "naïve"):
        with pytest.raises(ValueError, match="Idempotency-Key"):
            check_idempotency_key(bad)


def test_asking_for_an_async_answer() -> None:
    assert wants_async({"prefer": "respond-async"}, "")
    assert wants_async({"prefer": "wait=10, Respond-Async"}, "")
    assert wants_async({}, "mode=async") and wants_async({}, "a=1&mode=async")
    assert not wants_async({"prefer": "return=minimal"}, "")
    assert not wants_async({}, "mode=asynchronous") and not wants_async({}, "")


def test_settings_default_for_functions_deployed_before_jobs() -> None:
    assert job_settings({"public": True}) == DEFAULT_SETTINGS
    assert (DEFAULT_SETTINGS.retries, DEFAULT_SETTINGS.max_event_age_s, DEFAULT_SETTINGS.max_attempts) == (
        2, 21600.0, 3
    )  # fmt: skip
    chosen = job_settings({"retries": 0, "max_event_age": 60.0, "on_failure": "alert"})
    assert (chosen.max_attempts, chosen.max_event_age_s, chosen.on_success, chosen.on_failure) == (
        1,
        60.0,
        None,
        "alert",
    )


def _job(owner: str) -> Job:
    return Job(
        "job-1", "f", "queued", b"", "application/json", {}, owner, [], None, "", None, 3, LATER, NOW, NOW
    )


def test_who_may_see_a_job() -> None:
    alice = Caller("a1", frozenset({"invoke:f"}), presented=True)
    bob = Caller("b2", frozenset({"invoke:*"}), presented=True)
    admin = Caller("c3", frozenset({"admin"}), presented=True)
    assert may_see(alice, _job("a1")) and may_see(admin, _job("a1"))
    assert not may_see(bob, _job("a1")) and not may_see(ANONYMOUS, _job("a1"))
    # Submitted without a key: the id is the capability.
    assert may_see(ANONYMOUS, _job("")) and may_see(bob, _job(""))
    # A destination's job is the platform's.
    assert may_see(PLATFORM, _job("platform")) and not may_see(alice, _job("platform"))
