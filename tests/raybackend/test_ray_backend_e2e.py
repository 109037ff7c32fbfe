"""The Ray backend end to end: a real two-node Ray cluster on this machine, a real `tidal up
--backend ray`, functions placed by their resources, and a worker node that dies.

The head node offers `head_node` and the worker `edge` (each also `pool`, for the recovery
test). The cluster is started once for this module; if it cannot start, the fixture fails with
Ray's own words (never a skip). A few tests of the local backend's suites (scaling, traffic, async
jobs) run again here against the Ray gateway: nothing above the backend seam may tell the two apart.
The node-loss test is last: it kills the worker node.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TidalServer, wait_for

HERE = Path(__file__).resolve().parent
sys.path[:0] = [
    str(HERE),
    str(HERE.parent / "autoscale"),
    str(HERE.parent / "cli"),
    str(HERE.parent / "jobs"),
]

from local_ray import LocalRayCluster, running_cluster  # noqa: E402
from test_jobs_e2e import test_an_async_call_is_queued_answered_202_and_succeeds as test_ray_async_job  # noqa: E402
from test_scaling_e2e import test_scales_to_zero_and_back as test_ray_scales_to_zero_and_back  # noqa: E402
from test_traffic import test_split_tags_and_no_traffic_deploys as test_ray_traffic_split  # noqa: E402

__all__ = ["test_ray_async_job", "test_ray_scales_to_zero_and_back", "test_ray_traffic_split"]

EDGE = """
import os
import time

import tidal

@tidal.function(name="{name}", resources={resources}, cpu=0.25, min_instances={min_instances})
def answer(payload):
    time.sleep(payload.get("sleep", 0))
    return {{"pid": os.getpid()}}
"""


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    with running_cluster(
        tmp_path_factory.mktemp("ray"), {"head_node": 1, "pool": 1}, {"edge": 1, "pool": 1}
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tidal_server(
    ray_cluster: LocalRayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TidalServer]:
    """The gateway on the Ray backend: the suites imported above run against this one."""
    server = TidalServer(tmp_path_factory.mktemp("tidal-ray") / "state")
    server.start("--backend", "ray", "--ray-address", ray_cluster.address, wait_s=120)
    yield server
    server.stop()


def deploy(
    server: TidalServer, write_module: Any, name: str, resources: str = "{}", min_instances: int = 0
) -> None:
    source = EDGE.format(name=name, resources=resources, min_instances=min_instances)
    result = server.deploy(write_module(source, f"{name}.py"))
    assert result.returncode == 0, result.stderr


def nodes_of(server: TidalServer, name: str) -> list[str]:
    listed = server.client.get(f"/v1/functions/{name}").json()["instances"]["list"]
    return [item["extra"]["node"] for item in listed]


def last_lost(server: TidalServer, name: str) -> str:
    """The latest instance the function lost, and why (``tidal status`` shows it)."""
    return str(server.client.get(f"/v1/functions/{name}").json()["instances"]["last_lost"])


def test_echo_answers_cold_then_warm_and_status_names_its_node(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module, "ray_echo")
    cold = tidal_server.client.post("/fn/ray_echo", json={"n": 1})
    assert cold.status_code == 200 and cold.headers["x-tidal-cold-start"] == "1", cold.text
    warm = tidal_server.client.post("/fn/ray_echo", json={"n": 2})
    assert warm.status_code == 200 and warm.headers["x-tidal-cold-start"] == "0"
    assert warm.json()["pid"] == cold.json()["pid"]
    (instance,) = tidal_server.client.get("/v1/functions/ray_echo").json()["instances"]["list"]
    assert instance["address"].startswith("tcp:"), instance  # router -> instance directly over TCP
    status = tidal_server.cli("status", "ray_echo")
    assert f"{instance['id']} on node {instance['extra']['node']}" in status.stdout, status.stdout


def test_a_function_needing_a_resource_no_node_has_is_a_503_with_the_reason(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module, "nowhere", '{"gpu_farm": 1}')
    answer = tidal_server.client.post("/fn/nowhere", json={})
    assert answer.status_code == 503, answer.text
    assert "no node of the Ray cluster has" in answer.json()["error"]["message"]
    assert "gpu_farm" in answer.json()["error"]["message"]
    refused = tidal_server.deploy(
        write_module(EDGE.format(name="badres", resources='{"CPU": 2}', min_instances=0))
    )
    assert refused.returncode != 0 and "set by its own field" in refused.stderr, refused.stderr


def test_a_lost_worker_node_fails_its_calls_and_its_instances_move(  # type: ignore[no-untyped-def]
    ray_cluster: LocalRayCluster, tidal_server: TidalServer, write_module
) -> None:
    worker, head = ray_cluster.node_id_with("edge"), ray_cluster.node_id_with("head_node")
    # `filler` takes the head's `pool`, so `mover` (which needs one) starts on the worker.
    deploy(tidal_server, write_module, "filler", '{"pool": 1, "head_node": 1}', min_instances=1)
    wait_for(lambda: nodes_of(tidal_server, "filler") == [head], 60, "filler on the head node")
    deploy(tidal_server, write_module, "edgy", '{"edge": 1}', min_instances=1)
    deploy(tidal_server, write_module, "mover", '{"pool": 1}', min_instances=1)
    wait_for(lambda: nodes_of(tidal_server, "edgy") == [worker], 60, "edgy on the worker node")
    wait_for(lambda: nodes_of(tidal_server, "mover") == [worker], 60, "mover on the worker node")
    status = tidal_server.cli("status", "edgy")
    assert f"on node {worker}" in status.stdout, status.stdout
    assert tidal_server.cli("rm", "filler").returncode == 0  # the head's pool is free again

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(tidal_server.client.post, "/fn/edgy", json={"sleep": 50})
        time.sleep(1.0)
        ray_cluster.nodes["worker"].stop()
        started = time.monotonic()
        answer = in_flight.result(timeout=60)
    assert answer.status_code == 502 and answer.json()["error"]["type"] == "InstanceLost", answer.text
    assert time.monotonic() - started < 45, "the call held by the lost node did not fail promptly"

    # `mover` comes back on the head node and answers; `edgy` has nowhere to go, and says so.
    wait_for(lambda: nodes_of(tidal_server, "mover") == [head], 90, "mover replaced on the head node")
    assert tidal_server.client.post("/fn/mover", json={}).status_code == 200
    # Its connection may close before Ray declares the node dead: the cause shows once it does.
    wait_for(
        lambda: f"node {worker} lost" in last_lost(tidal_server, "edgy"), 60, "edgy's loss naming the node"
    )
    refused = tidal_server.client.post("/fn/edgy", json={}, timeout=90)
    assert refused.status_code == 503 and "edge" in refused.json()["error"]["message"], refused.text
    status = tidal_server.cli("status", "edgy").stdout
    assert f"node {worker} lost" in status and "no node of the Ray cluster" in status, status


def test_up_says_when_the_ray_cluster_does_not_answer(tmp_path: Path) -> None:
    server = TidalServer(tmp_path / "state")
    with pytest.raises(RuntimeError, match="does not answer"):
        server.start("--backend", "ray", "--ray-address", "127.0.0.1:1", wait_s=30)
    assert server.process is not None and server.process.returncode == 1
