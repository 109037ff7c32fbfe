"""The coordination parts of several gateways: pure decisions with fakes, then the lease, the
heartbeat and change propagation against the machine's real PostgreSQL (a schema per test)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from tidal.cluster.changes import Appliers, ChangeListener, changed
from tidal.cluster.code import CodeShelf
from tidal.cluster.heartbeat import Heartbeat, apply_shares, share, shared_spec
from tidal.cluster.lease import LeaderLease, leader_only
from tidal.deploy.bundle import bundle_path, unpack
from tidal.spec import validate_spec
from tidal.store.postgres_migrations import migrate
from tidal.store.postgres_sql import parse_state_url

# -- pure -------------------------------------------------------------------------------------------


def test_bounds_are_split_across_live_gateways() -> None:
    assert [share(3, live) for live in (0, 1, 2, 3, 4)] == [3, 3, 2, 1, 1]
    spec = validate_spec({"name": "f", "min_instances": 3, "max_instances": 10})
    two = shared_spec(spec, 2)
    assert (two.min_instances, two.max_instances) == (2, 5)
    assert shared_spec(spec, 1) is spec
    pool = SimpleNamespace(launch=SimpleNamespace(spec=spec), spec=spec)
    assert apply_shares([pool], 3) == 1  # type: ignore[list-item]
    assert (pool.spec.min_instances, pool.spec.max_instances) == (1, 4)
    assert apply_shares([pool], 3) == 0  # type: ignore[list-item]
    apply_shares([pool], 1)  # type: ignore[list-item]
    assert pool.spec.max_instances == 10  # the other gateways left: the full bounds again


def test_change_rows_are_grouped_and_named_once() -> None:
    batch = changed([("function", "a", 1), ("key", "k", 2), ("function", "a", 3), ("bogus", "x", 4)])
    assert (batch.functions, batch.keys, batch.routes) == (["a"], ["k"], False)
    assert changed([("route", "a", 5)]).routes


async def test_leader_only_duties_start_and_stop_with_the_lease() -> None:
    lease = LeaderLease("postgresql://unused/test")
    runs: list[str] = []

    async def duty() -> None:
        runs.append("started")
        try:
            await asyncio.Event().wait()
        finally:
            runs.append("stopped")

    gated = asyncio.create_task(leader_only(lease, duty)())
    await asyncio.sleep(0.05)
    assert runs == []  # a follower runs none
    lease._set(True)
    await asyncio.sleep(0.05)
    assert runs == ["started"]
    lease._set(False)
    await asyncio.sleep(0.05)
    assert runs == ["started", "stopped"]
    gated.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gated


# -- on PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def cluster_url(postgres_state_url: str) -> str:
    """A migrated schema of this test's own (the store's migrations 1 and 2)."""
    conninfo, schema = parse_state_url(postgres_state_url)
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as connection:
        migrate(connection, schema)
    return postgres_state_url


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    conninfo, schema = parse_state_url(url)
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as connection:
        connection.execute(statement, params)


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def running(work: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    return asyncio.ensure_future(work())


async def stopped(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_leader_and_a_takeover_when_it_goes(cluster_url: str) -> None:
    first, second = LeaderLease(cluster_url), LeaderLease(cluster_url)
    first_run = running(first.run)
    await eventually(lambda: first.leader, 5, "the first lease leads")
    second_run = running(second.run)
    await asyncio.sleep(2.5)  # a renewal or more: the second tried and was refused
    assert (first.leader, second.leader) == (True, False)
    await stopped(first_run)  # its session closes, and the lock with it
    assert not first.leader
    await eventually(lambda: second.leader, 5, "the second lease takes over")
    await stopped(second_run)


async def test_heartbeats_count_the_live_gateways(cluster_url: str) -> None:
    beats = [Heartbeat(cluster_url, f"g{n}", list, beat_s=0.2) for n in range(2)]
    tasks = [running(beat.run) for beat in beats]
    await eventually(lambda: all(beat.live == 2 for beat in beats), 5, "each sees two gateways")
    await stopped(*tasks)  # each removes its row on the way out
    sql(cluster_url, "SELECT 1")
    conninfo, schema = parse_state_url(cluster_url)
    with psycopg.connect(conninfo, options=f"-c search_path={schema}") as connection:
        assert connection.execute("SELECT count(*) FROM gateways").fetchone() == (0,)


async def test_a_committed_change_reaches_the_listener(cluster_url: str) -> None:
    published: list[str] = []
    forgotten: list[str] = []

    async def publish(name: str) -> None:
        published.append(name)

    async def reload() -> None:
        pass

    _, schema = parse_state_url(cluster_url)
    listener = ChangeListener(cluster_url, schema, Appliers(publish, forgotten.append, reload))
    task = running(listener.run)
    await eventually(lambda: listener.last_seq is not None, 5, "the listener started")
    sql(cluster_url, "INSERT INTO functions (name, created_at) VALUES ('echo', 1)")
    sql(cluster_url, "INSERT INTO keys (id, hash, scopes, created_at) VALUES ('k1', 'h', '[]', 1)")
    sql(cluster_url, "UPDATE keys SET revoked_at = 2 WHERE id = 'k1'")
    # Well under the 5 s safety poll: the notification woke it.
    await eventually(lambda: published == ["echo"] and "k1" in forgotten, 2, "the changes applied")
    await stopped(task)


async def test_code_deployed_through_one_gateway_unpacks_on_another(cluster_url: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "main.py").write_text("import pkg.util\n")
    (source / "pkg" / "util.py").write_text("X = 1\n")
    code_dir, digest, _ = unpack(bundle_path(source), tmp_path / "one")
    shelf = CodeShelf(cluster_url)
    await shelf.put(code_dir, digest)
    await shelf.put(code_dir, digest)  # stored once
    assert await shelf.fetch(digest, tmp_path / "two")
    assert (tmp_path / "two" / digest / "pkg" / "util.py").read_text() == "X = 1\n"
    assert not await shelf.fetch("0" * 64, tmp_path / "two")  # never deployed: not served, no error
