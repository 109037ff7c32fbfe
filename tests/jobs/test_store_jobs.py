"""The job store's contract: idempotency, claims under a lease, the fenced finish, cancel,
redrive, callbacks and retention; each test runs on a real SQLite store, on a real Redis
(`tidal up --queue redis://`, with the activations in SQLite as there) and on a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from conftest import activation
from services import open_test_store
from tidal.auth.keys import Caller
from tidal.invoke.request import InvocationRequest, RequestContext
from tidal.jobs.model import DEFAULT_SETTINGS, invocation_of, new_job
from tidal.store import SQLiteStore
from tidal.store.models import Job
from tidal.store.redis_jobs import RedisJobStore, parse_queue_url


class JobsOnRedis:
    """The jobs on Redis, everything else (activations) in SQLite: what the gateway runs with."""

    def __init__(self, jobs: RedisJobStore, main: SQLiteStore) -> None:
        self.jobs_store, self.main = jobs, main

    def __getattr__(self, name: str) -> Any:
        if hasattr(self.jobs_store, name):
            return getattr(self.jobs_store, name)
        return getattr(self.main, name)


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "postgres":  # `tidal up --state postgresql://...`: jobs beside everything else
        yield from open_test_store(request, tmp_path)
        return
    main = SQLiteStore(tmp_path / "tidal.db")
    if request.param == "sqlite":
        yield main
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"tidal-test-{uuid.uuid4().hex[:8]}:"
        jobs = RedisJobStore(url, main.job_activations, prefix=prefix)
        yield JobsOnRedis(jobs, main)
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        jobs.close()
    main.close()


NOW = 10_000.0
ALICE = Caller("a1", frozenset({"invoke:f"}), presented=True)


def submit(store: SQLiteStore, body: bytes = b'{"x": 1}', key: str | None = None, at: float = NOW,
           function: str = "f", callback_url: str | None = None) -> tuple[Job, bool]:  # fmt: skip
    headers = {"authorization": "Bearer s", "x-trace": "t1"}
    request = InvocationRequest(function, body, caller=ALICE, context=RequestContext(headers=headers))
    return store.add_job(new_job(request, DEFAULT_SETTINGS, at, key, callback_url))


def test_a_job_keeps_the_request_but_never_the_credentials(store: SQLiteStore) -> None:
    job, created = submit(store)
    stored = store.job(job.id)
    assert created and stored == job
    assert "authorization" not in stored.context["headers"]  # type: ignore[operator]
    replayed = invocation_of(msgspec.structs.replace(stored, attempts=2), NOW)
    assert replayed.caller == ALICE and replayed.trigger == "job"
    assert replayed.context.headers == {"x-trace": "t1", "x-tidal-job": job.id, "x-tidal-attempt": "2"}


def test_an_idempotency_key_names_one_job_per_caller_and_function(store: SQLiteStore) -> None:
    first, created = submit(store, key="k1")
    again, created_again = submit(store, key="k1")
    assert created and not created_again and again.id == first.id
    other_function, created_other = submit(store, key="k1", function="g")
    assert created_other and other_function.id != first.id
    assert len(store.jobs()) == 2


def test_claims_take_due_jobs_oldest_first_under_a_lease(store: SQLiteStore) -> None:
    jobs = [submit(store, at=NOW + n)[0] for n in range(3)]
    # (Asked in clock order: on Redis a job once due stays in its function's stream.)
    assert store.due_functions(NOW - 1) == [] and store.due_functions(NOW) == ["f"]
    claimed = store.claim_jobs("f", NOW + 5, lease_until=NOW + 100, limit=2)
    assert [job.id for job in claimed] == [jobs[0].id, jobs[1].id]
    assert all(job.state == "running" and job.attempts == 1 for job in claimed)
    assert store.claim_jobs("f", NOW + 5, NOW + 100, 5)[0].id == jobs[2].id
    assert store.claim_jobs("f", NOW + 5, NOW + 100, 5) == []
    assert store.expired_leases(NOW + 50, 10) == []
    assert len(store.expired_leases(NOW + 101, 10)) == 3


def test_a_finish_is_fenced_by_the_attempt_number(store: SQLiteStore) -> None:
    job, _ = submit(store)
    (running,) = store.claim_jobs("f", NOW, NOW + 60, 1)
    retry = msgspec.structs.replace(running, state="queued", run_at=NOW + 1, lease_until=0.0)
    assert store.finish_attempt(retry, attempt=1)
    (second,) = store.claim_jobs("f", NOW + 2, NOW + 60, 1)
    assert second.attempts == 2
    # The first attempt, presumed lost, reports late: it must not overwrite the second.
    stale = msgspec.structs.replace(running, state="succeeded", finished_at=NOW + 3)
    assert not store.finish_attempt(stale, attempt=1)
    done = msgspec.structs.replace(second, state="succeeded", finished_at=NOW + 3, result=b"1")
    follow_up = submit(store, at=NOW + 3, function="sink")[0]
    assert store.finish_attempt(
        done, attempt=2, follow_up=msgspec.structs.replace(follow_up, id="job-follow")
    )
    assert store.job(job.id).state == "succeeded"  # type: ignore[union-attr]
    assert store.job("job-follow") is not None


def test_cancel_only_takes_queued_jobs(store: SQLiteStore) -> None:
    queued, _ = submit(store)
    running, _ = submit(store, at=NOW - 1)
    store.claim_jobs("f", NOW, NOW + 60, 1)  # the older one
    assert store.cancel_job(queued.id, NOW).state == "cancelled"  # type: ignore[union-attr]
    assert store.cancel_job(running.id, NOW).state == "running"  # type: ignore[union-attr]
    assert store.cancel_job("job-nope", NOW) is None


def test_redrive_resets_dead_jobs(store: SQLiteStore) -> None:
    job, _ = submit(store)
    (running,) = store.claim_jobs("f", NOW, NOW + 60, 1)
    dead = msgspec.structs.replace(
        running, state="dead", finished_at=NOW, error_type="ValueError", error_kind="function_error"
    )
    assert store.finish_attempt(dead, 1)
    assert [j.id for j in store.jobs("f", "dead")] == [job.id]
    assert store.redrive_jobs("f", None, NOW + 10, NOW + 100) == [job.id]
    again = store.job(job.id)
    assert again is not None and (again.state, again.attempts, again.error_type, again.expires_at) == (
        "queued", 0, "", NOW + 100
    )  # fmt: skip
    assert store.redrive_jobs("f", None, NOW, NOW) == []  # nothing dead any more
    assert store.redrive_jobs("f", "job-nope", NOW, NOW) == []


def test_callbacks_are_claimed_and_recorded(store: SQLiteStore) -> None:
    job, _ = submit(store, callback_url="http://h/x")
    (running,) = store.claim_jobs("f", NOW, NOW + 60, 1)
    store.finish_attempt(
        msgspec.structs.replace(
            running, state="succeeded", finished_at=NOW, callback_state="pending", callback_at=NOW
        ),
        1,
    )
    (due,) = store.claim_callbacks(NOW, NOW + 40, 10)
    assert due.id == job.id and store.claim_callbacks(NOW + 1, NOW + 40, 10) == []  # leased
    store.save_callback(job.id, "delivered", 1, NOW, "")
    assert store.claim_callbacks(NOW + 100, NOW + 140, 10) == []
    assert store.job(job.id).callback_state == "delivered"  # type: ignore[union-attr]


def test_retention_deletes_finished_jobs_by_age_and_attempts_name_their_job(store: SQLiteStore) -> None:
    old, _ = submit(store, at=NOW - 100)
    fresh, _ = submit(store, at=NOW)
    for job in store.claim_jobs("f", NOW, NOW + 60, 2):
        store.finish_attempt(msgspec.structs.replace(job, state="succeeded", finished_at=job.created_at), 1)
    queued, _ = submit(store, at=NOW - 200)  # queued: never deleted by age
    record = activation(1, NOW)
    record.job, record.trigger = fresh.id, "job"
    store.add_activations([record])
    assert store.job_activations(fresh.id) == [record.id] and store.job_activations(old.id) == []
    assert store.delete_jobs(NOW - 50, 10) == 1
    assert {job.id for job in store.jobs()} == {fresh.id, queued.id}


def test_migration_7_adds_jobs_to_a_state_dir_of_the_previous_schema(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from tidal.store.migrations import MIGRATIONS, migrate

    path = tmp_path / "tidal.db"
    connection = sqlite3.connect(path, isolation_level=None)
    migrate(connection, MIGRATIONS[:6])  # a state dir of the release before jobs
    connection.execute(
        "INSERT INTO activations (id, function, revision, instance, start, duration_ms, billed_ms, memory_mb, "
        "cold, status, http_status, error_type, error_message, cpu_ms, peak_rss_kb, queue_ms, instance_start_ms, "
        "import_ms, setup_ms, logs) VALUES ('a1', 'f', 'f-00001', 'i', 1.0, 1.0, 1, 128, 0, 'ok', 200, '', '', "
        "0, 0, 0, 0, 0, 0, '')"
    )
    connection.close()
    store = SQLiteStore(path)
    try:
        assert store.activation("a1").job == ""  # type: ignore[union-attr]
        job, created = submit(store)
        assert created and store.job(job.id) == job
    finally:
        store.close()


def test_a_queue_url_names_redis_and_may_carry_a_prefix() -> None:
    assert parse_queue_url("redis://127.0.0.1:6379/0") == ("redis://127.0.0.1:6379/0", "tidal:")
    assert parse_queue_url("rediss://h:6380/2?prefix=team-a:&ssl_cert_reqs=none") == (
        "rediss://h:6380/2?ssl_cert_reqs=none",
        "team-a:",
    )
    with pytest.raises(ValueError, match="redis:// or rediss://"):
        parse_queue_url("amqp://guest@localhost")


def test_two_gateways_on_one_redis_never_claim_a_job_twice(redis_url: str, tmp_path: Path) -> None:
    main = SQLiteStore(tmp_path / "tidal.db")
    prefix = f"tidal-test-{uuid.uuid4().hex[:8]}:"
    first = RedisJobStore(redis_url, main.job_activations, prefix=prefix)
    second = RedisJobStore(redis_url, main.job_activations, prefix=prefix)
    try:
        ids = {submit(first, at=NOW + n)[0].id for n in range(40)}  # type: ignore[arg-type]
        assert first.due_functions(NOW + 100) == ["f"] == second.due_functions(NOW + 100)
        claimed: list[str] = []
        while batch := first.claim_jobs("f", NOW + 100, NOW + 200, 7) + second.claim_jobs(
            "f", NOW + 100, NOW + 200, 5
        ):
            claimed += [job.id for job in batch]
        assert sorted(claimed) == sorted(ids)  # each job once, none lost
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        first.close()
        second.close()
        main.close()
