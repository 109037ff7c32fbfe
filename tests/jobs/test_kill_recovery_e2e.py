"""The proof: 1,000 jobs, the gateway killed with SIGKILL half-way, a new gateway on the same
state dir. Every job ends succeeded, none is lost, no Idempotency-Key made two jobs. The number
of repeated executions (at least once means some may run twice) is printed, not judged. Once with
the jobs in tidal.db, once on a real Redis (`tidal up --queue redis://`)."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from conftest import TidalServer
from tidal.store.redis_jobs import RedisJobStore

JOBS = 1000
WORK = """
import time
import tidal

@tidal.function(name="jwork", concurrency=4, max_instances=2)
def work(payload):
    time.sleep(0.05)  # slow enough that the kill finds jobs queued and running
    return {"i": payload["i"]}
"""


Rows = list[tuple[str, bytes, int, str]]  # (idempotency key, result, attempts, state) of each jwork job


def in_sqlite(database: Path) -> Callable[[], Rows]:
    def rows() -> Rows:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            return db.execute(
                "SELECT idempotency_key, result, attempts, state FROM jobs WHERE function = 'jwork'"
            ).fetchall()

    return rows


def on_redis(url: str, prefix: str) -> Callable[[], Rows]:
    store = RedisJobStore(url, lambda _: [], prefix=prefix)

    def rows() -> Rows:
        jobs = store.jobs("jwork", limit=10 * JOBS)
        return [(job.idempotency_key or "", job.result or b"", job.attempts, job.state) for job in jobs]

    return rows


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest) -> Iterator[tuple[str, ...]]:
    """`tidal up` arguments for the job queue: none (tidal.db) or --queue on a real Redis."""
    if request.param == "sqlite":
        yield ()
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"tidal-kill-{uuid.uuid4().hex[:8]}:"
    yield ("--queue", f"{url}?prefix={prefix}")
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def counts(rows: Rows) -> dict[str, int]:
    found: dict[str, int] = {}
    for *_, state in rows:
        found[state] = found.get(state, 0) + 1
    return found


def submit_all(server: TidalServer) -> dict[int, tuple[int, str, bool]]:
    """Submit job i with Idempotency-Key k-i (8 at a time); i -> (status, job id, replayed)."""
    headers = {"authorization": f"Bearer {server.admin_key}", "prefer": "respond-async"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:

        def one(i: int) -> tuple[int, tuple[int, str, bool]]:
            answer = client.post("/fn/jwork", json={"i": i}, headers={"idempotency-key": f"k-{i}"})
            replayed = answer.headers.get("idempotent-replayed") == "true"
            return i, (answer.status_code, answer.json().get("job_id", ""), replayed)

        with ThreadPoolExecutor(8) as pool:
            return dict(pool.map(one, range(JOBS)))


def test_a_killed_gateway_loses_no_job(
    fresh_server: TidalServer, write_module, queue: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    database = fresh_server.state_dir / "tidal.db"
    if queue:
        url, _, prefix = queue[1].partition("?prefix=")
        jobs = on_redis(url, prefix)
    else:
        jobs = in_sqlite(database)

    def states(_: Path) -> dict[str, int]:
        return counts(jobs())

    fresh_server.start(*queue)
    assert fresh_server.deploy(write_module(WORK)).returncode == 0
    first = submit_all(fresh_server)
    assert {status for status, _, _ in first.values()} == {202}
    assert len({job_id for _, job_id, _ in first.values()}) == JOBS

    deadline = time.monotonic() + 60
    while states(database).get("succeeded", 0) < JOBS * 0.3:
        assert time.monotonic() < deadline, states(database)
        time.sleep(0.02)
    assert fresh_server.process is not None
    os.kill(fresh_server.process.pid, signal.SIGKILL)
    fresh_server.process.wait()
    at_kill = states(database)
    assert at_kill.get("succeeded", 0) < JOBS, f"the kill came too late to prove anything: {at_kill}"

    restarted = TidalServer(fresh_server.state_dir).start(*queue)
    try:
        again = submit_all(restarted)  # a client retrying every submission after the crash
        assert {i: (status, job_id) for i, (status, job_id, _) in again.items()} == {
            i: (202, job_id) for i, (_, job_id, _) in first.items()
        }, "the same Idempotency-Key must give the same job"
        assert all(replayed for _, _, replayed in again.values())
        deadline = time.monotonic() + 60
        while states(database).get("succeeded", 0) < JOBS:
            assert time.monotonic() < deadline, states(database)
            time.sleep(0.1)
        time.sleep(0.5)  # the last activation records are written in batches
    finally:
        restarted.stop()

    assert states(database) == {"succeeded": JOBS}
    results = [row[:3] for row in jobs()]
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        records = dict(
            db.execute("SELECT job, COUNT(*) FROM activations WHERE job != '' GROUP BY job").fetchall()
        )
    assert sorted(key for key, _, _ in results) == sorted(f"k-{i}" for i in range(JOBS))
    assert all(result == f'{{"i":{key[2:]}}}'.encode() for key, result, _ in results)
    repeated_attempts = sum(attempts - 1 for _, _, attempts in results)
    repeated_records = sum(count - 1 for count in records.values() if count > 1)
    print(
        f"\nkill -9 proof ({'redis' if queue else 'sqlite'}): {JOBS} jobs; at the kill {at_kill}; all succeeded after the restart; "
        f"attempts beyond the first: {repeated_attempts}; jobs with activation records: {len(records)}, "
        f"executions repeated by those records: {repeated_records} (records not yet written at the kill "
        f"died with the gateway); {time.monotonic() - started:.1f} s"
    )
