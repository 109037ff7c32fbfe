"""Two `tidal up` processes on one PostgreSQL schema, each with its own state dir and port: a
deploy through one is served by the other, a key revoked on one is refused by the other, 500 async
jobs spread over both run exactly once, and a kill -9 of the leader hands the lease over."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from conftest import TidalServer, wait_for
from environments.wheels import make_wheel
from gateway_pair import two_gateways
from services import schema_of_its_own
from tidal.store.postgres_sql import parse_state_url

ECHO = """
import tidal

@tidal.function(name="{name}", min_instances={min_instances})
def echo(payload):
    return {{"echo": payload, "version": {version}}}
"""
WITH_PACKAGE = """
import tidal
import tidal_cluster_pkg

@tidal.function(name="withpkg")
def version(payload):
    return {"version": tidal_cluster_pkg.VERSION}
"""
JOBS = 500
COUNT = """
import tidal

@tidal.function(name="jcount", concurrency=8, max_instances=2)
def count(payload):
    return {"i": payload["i"]}
"""


@pytest.fixture(scope="module")
def state_url(postgres_url: str) -> Iterator[str]:
    """A schema of this file's own, dropped after it (the tests share two gateways: starts are slow)."""
    yield from schema_of_its_own(postgres_url)


@pytest.fixture(scope="module")
def gateways(
    state_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TidalServer, TidalServer]]:
    """Two gateways on one schema. The kill test comes last: it leaves one."""
    with two_gateways(tmp_path_factory.mktemp("gateways"), "--state", state_url) as pair:
        yield pair


def invoke(server: TidalServer, name: str, payload: object, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key or server.admin_key}"}
    return httpx.post(f"{server.url}/fn/{name}", json=payload, headers=headers, timeout=60)


def cluster(server: TidalServer) -> dict[str, object]:
    body: dict[str, object] = server.client.get("/v1/loops").json()["cluster"]  # type: ignore[assignment]
    return body


def test_deploys_and_revocations_reach_the_other_gateway(
    gateways: tuple[TidalServer, TidalServer], write_module
) -> None:  # type: ignore[no-untyped-def]
    first, second = gateways
    assert first.admin_key == second.admin_key
    assert first.deploy(write_module(ECHO.format(name="echo", version=1, min_instances=0))).returncode == 0
    started = time.monotonic()
    wait_for(lambda: invoke(second, "echo", "hi").status_code == 200, 10, "the other gateway serves echo")
    print(
        f"deploy through one, served by the other after {time.monotonic() - started:.2f} s (cold start included)"
    )
    assert invoke(second, "echo", "hi").json() == {"echo": "hi", "version": 1}

    # A new revision through the second: the first switches to it.
    # A new revision through the second: the first switches to it. min_instances 2 over 2 gateways: 1 each.
    wait_for(lambda: cluster(first)["live_gateways"] == cluster(second)["live_gateways"] == 2, 8, "2 live")
    assert second.deploy(write_module(ECHO.format(name="echo", version=2, min_instances=2))).returncode == 0
    wait_for(lambda: invoke(first, "echo", 1).json().get("version") == 2, 10, "the first serves version 2")
    for server in gateways:
        instances = server.client.get("/v1/functions/echo").json()["instances"]
        assert instances["desired"] == 1, instances

    created = first.client.post("/v1/keys", json={"scopes": ["invoke:*"]}).json()
    assert invoke(second, "echo", "k", key=created["key"]).status_code == 200  # known there now, cached
    assert first.client.delete(f"/v1/keys/{created['id']}").status_code == 200
    # The cache trusts a known key for 30 s: only the notification can make this quick.
    wait_for(
        lambda: invoke(second, "echo", "k", key=created["key"]).status_code == 401, 2, "refused on the other"
    )

    # A function with requirements: the other gateway builds its environment from the shared code.
    folder = write_module(WITH_PACKAGE).parent
    make_wheel(folder / "wheels", "tidal_cluster_pkg", "2.5", "VERSION = '2.5'\n")
    (folder / "requirements.txt").write_text("--no-index\ntidal_cluster_pkg==2.5\n")
    assert first.deploy(folder).returncode == 0
    wait_for(lambda: invoke(second, "withpkg", {}).status_code == 200, 30, "withpkg served by the other")
    assert invoke(second, "withpkg", {}).json() == {"version": "2.5"}

    # An HTTP route added through one gateway routes on the other.
    added = first.client.post(
        "/v1/routes", json={"method": "GET", "path": "/hello/{who}", "function": "echo"}
    )
    assert added.status_code == 201, added.text
    wait_for(lambda: second.client.get("/hello/x").status_code == 200, 2, "the route served by the other")


def test_async_jobs_over_both_gateways_run_exactly_once(
    gateways: tuple[TidalServer, TidalServer], write_module, state_url: str
) -> None:  # type: ignore[no-untyped-def]
    first, second = gateways
    assert first.deploy(write_module(COUNT)).returncode == 0
    wait_for(lambda: invoke(second, "jcount", {"i": -1}).status_code == 200, 10, "jcount served on both")

    def submit(i: int) -> str:
        server = (first, second)[i % 2]
        response = httpx.post(
            f"{server.url}/fn/jcount", json={"i": i}, timeout=30,
            headers={"authorization": f"Bearer {server.admin_key}", "prefer": "respond-async"},
        )  # fmt: skip
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        job_ids = set(pool.map(submit, range(JOBS)))
    assert len(job_ids) == JOBS
    print(f"{JOBS} jobs accepted over both gateways in {time.monotonic() - started:.1f} s")

    conninfo, schema = parse_state_url(state_url)
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as db:

        def finished() -> bool:
            row = db.execute(
                "SELECT count(*) FROM jobs WHERE function = 'jcount' AND state = 'succeeded'"
            ).fetchone()
            return row is not None and row[0] == JOBS

        wait_for(finished, 60, f"{JOBS} jobs succeeded")
        print(f"{JOBS} jobs succeeded {time.monotonic() - started:.1f} s after the first was sent")
        rows = db.execute("SELECT attempts, result FROM jobs WHERE function = 'jcount'").fetchall()
        assert sorted(attempts for attempts, _ in rows) == [1] * JOBS  # each claimed once
        # Each job ran once: one activation per job, written by whichever gateway ran it.
        per_job = "SELECT job, count(*) FROM activations WHERE function = 'jcount' AND job != '' GROUP BY job"
        wait_for(lambda: len(db.execute(per_job).fetchall()) == JOBS, 15, "an activation per job")
        runs = dict(db.execute(per_job).fetchall())
        assert set(runs) == job_ids and set(runs.values()) == {1}


def test_the_other_gateway_takes_the_lease_when_the_leader_is_killed(
    gateways: tuple[TidalServer, TidalServer],
) -> None:
    first, second = gateways
    wait_for(lambda: cluster(first)["leader"] != cluster(second)["leader"], 10, "one leader of two")
    leader, follower = (first, second) if cluster(first)["leader"] else (second, first)
    loops = {loop["name"]: loop for loop in follower.client.get("/v1/loops").json()["loops"]}
    assert {"leader-lease", "change-listener", "gateway-heartbeat", "triggers"} <= set(loops)
    assert leader.process is not None
    os.kill(leader.process.pid, signal.SIGKILL)
    leader.process.wait()
    started = time.monotonic()
    wait_for(lambda: cluster(follower)["leader"] is True, 10, "the follower becomes leader")
    print(f"takeover after kill -9: {time.monotonic() - started:.2f} s")
