"""Two gateways on one PostgreSQL schema and one real two-node Ray cluster (--backend ray): one
fleet of instances, started by the leader, used by both; the leader scales it from the demand of
both; a kill -9 of the leader leaves the instances serving, and the other gateway scales on."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from conftest import TidalServer, wait_for
from tidal.store.postgres_sql import parse_state_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_ray import LocalRayCluster, running_cluster

from gateway_pair import two_gateways
from services import schema_of_its_own

SHARED = """
import os
import time

import tidal

# scale_down_delay: the fleet does not shrink between the tests, so "none dropped" means adopted.
@tidal.function(name="shared", cpu=0.25, concurrency=1, max_instances=6, scale_down_delay="120s")
def answer(payload):
    time.sleep(payload.get("sleep", 0))
    return {"pid": os.getpid()}
"""


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    with running_cluster(tmp_path_factory.mktemp("ray-gateways"), {}, {}) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def state_url(postgres_url: str) -> Iterator[str]:
    yield from schema_of_its_own(postgres_url)


@pytest.fixture(scope="module")
def gateways(
    ray_cluster: LocalRayCluster, state_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TidalServer, TidalServer]]:
    """The first gateway starts first (and leads); the kill test comes last: it leaves one."""
    args = ("--state", state_url, "--backend", "ray", "--ray-address", ray_cluster.address)

    def leads(first: TidalServer) -> None:
        wait_for(lambda: cluster(first)["leader"] is True, 10, "the first gateway leads")

    with two_gateways(
        tmp_path_factory.mktemp("ray-gateways-state"), *args, wait_s=120, first_ready=leads
    ) as pair:
        yield pair


def cluster(server: TidalServer) -> dict[str, object]:
    body: dict[str, object] = server.client.get("/v1/loops").json()["cluster"]
    return body


def invoke(server: TidalServer, payload: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {server.admin_key}"}
    return httpx.post(f"{server.url}/fn/shared", json=payload, headers=headers, timeout=60)


def fleet(state_url: str) -> list[tuple[str, str]]:
    """The registered instances (id, address), as the store holds them."""
    conninfo, schema = parse_state_url(state_url)
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as db:
        return [(str(i), str(a)) for i, a in db.execute("SELECT id, address FROM instances ORDER BY id")]


def listed(server: TidalServer) -> set[str]:
    return {item["id"] for item in server.client.get("/v1/functions/shared").json()["instances"]["list"]}


# The most a scale-out may take: Ray actors start slowly on 2 cores shared with another test
# worker (the 6th of 6 instances took over 30 s once). The load stops as soon as `until` holds.
LOAD_S = 90.0


def load(servers: list[TidalServer], seconds: float, until: Callable[[], bool]) -> None:
    """One stream of 0.5 s calls per entry of ``servers`` until ``until()`` or ``seconds`` pass."""
    deadline = time.monotonic() + seconds

    def stream(server: TidalServer) -> None:
        while time.monotonic() < deadline and not until():
            assert invoke(server, {"sleep": 0.5}).status_code == 200

    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(stream, servers))


def test_one_fleet_started_by_the_leader_serves_both_gateways(
    gateways: tuple[TidalServer, TidalServer], state_url: str, write_module: Any
) -> None:
    first, second = gateways
    assert first.deploy(write_module(SHARED)).returncode == 0
    wait_for(lambda: invoke(second, {}).status_code == 200, 60, "the follower serves shared")
    ((instance, address),) = fleet(state_url)  # one instance, started by the leader, registered
    assert address.startswith("tcp:")
    through_first, through_second = invoke(first, {}), invoke(second, {})
    assert through_first.headers["x-tidal-cold-start"] == through_second.headers["x-tidal-cold-start"] == "0"
    assert through_first.json()["pid"] == through_second.json()["pid"]  # the same process answers both
    assert listed(first) == listed(second) == {instance}


def test_the_leader_scales_the_fleet_from_both_gateways_demand(
    gateways: tuple[TidalServer, TidalServer], state_url: str
) -> None:
    first, second = gateways
    # Two streams through each: 4 in flight over the fleet; the leader's own demand alone is 2.
    load([first, first, second, second], LOAD_S, lambda: len(fleet(state_url)) >= 3)
    assert 3 <= len(fleet(state_url)) <= 6
    wait_for(lambda: listed(first) == listed(second) == {i for i, _ in fleet(state_url)}, 10, "both use all")


def test_the_instances_outlive_a_killed_leader_and_scaling_goes_on(
    gateways: tuple[TidalServer, TidalServer], state_url: str
) -> None:
    first, second = gateways
    pids = {item["pid"] for item in second.client.get("/v1/functions/shared").json()["instances"]["list"]}
    before = {instance for instance, _ in fleet(state_url)}
    assert first.process is not None
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    wait_for(lambda: cluster(second)["leader"] is True, 10, "the follower becomes leader")
    warm = invoke(second, {})
    assert warm.status_code == 200 and warm.headers["x-tidal-cold-start"] == "0", warm.text
    assert warm.json()["pid"] in pids  # served by an instance the old leader started
    assert {instance for instance, _ in fleet(state_url)} >= before  # adopted, none dropped
    load([second] * 6, LOAD_S, lambda: len(fleet(state_url)) >= 6)
    assert len(fleet(state_url)) == 6, fleet(state_url)
