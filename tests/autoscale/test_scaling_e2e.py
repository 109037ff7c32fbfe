"""Elastic scaling end to end: real gateway, real instances, the autoscaler's real loop."""

from __future__ import annotations

import concurrent.futures
import os
import signal
from collections.abc import Callable
from typing import Any

import httpx

from conftest import TidalServer, wait_for

SLEEPER = """
import os
import time

import tidal

@tidal.function(name="{name}", concurrency=1)
def sleeper(payload):
    time.sleep(payload.get("sleep", 0))
    return {{"pid": os.getpid()}}
"""


def deploy(server: TidalServer, write_module: Callable[..., Any], name: str, *flags: str) -> None:
    result = server.deploy(write_module(SLEEPER.format(name=name), f"{name}.py"), *flags)
    assert result.returncode == 0, result.stderr


def instances(server: TidalServer, name: str) -> dict[str, Any]:
    info: dict[str, Any] = server.client.get(f"/v1/functions/{name}").json()["instances"]
    return info


def burst(server: TidalServer, name: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: server.client.post(f"/fn/{name}", json=body), bodies))


def test_scales_out_under_concurrent_load(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module, "scale_out", "--max-instances", "6", "--scale-to-zero-after", "30s")
    answers = burst(tidal_server, "scale_out", [{"sleep": 1.5}] * 12)
    assert [answer.status_code for answer in answers] == [200] * 12
    pids = {answer.json()["pid"] for answer in answers}
    assert len(pids) >= 3, f"12 concurrent 1.5 s requests at concurrency 1 ran on {len(pids)} instance(s)"
    info = instances(tidal_server, "scale_out")
    assert info["ready"] >= 3 and info["desired"] >= 3
    status = tidal_server.cli("status", "scale_out")
    assert "queued 0" in status.stdout and "scaling event" in status.stdout, status.stdout


def test_scales_to_zero_and_back(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module, "to_zero", "--scale-to-zero-after", "1s")
    first = tidal_server.client.post("/fn/to_zero", json={})
    assert first.status_code == 200 and first.headers["x-tidal-cold-start"] == "1"
    wait_for(lambda: instances(tidal_server, "to_zero")["ready"] == 0, 15, "scale to zero")
    assert instances(tidal_server, "to_zero")["desired"] == 0
    # A request to a function at zero waits for a new instance and is served, marked cold.
    again = tidal_server.client.post("/fn/to_zero", json={})
    assert again.status_code == 200
    assert again.headers["x-tidal-cold-start"] == "1"
    assert again.json()["pid"] != first.json()["pid"]
    record = tidal_server.client.get(f"/v1/activations/{again.headers['x-tidal-activation']}").json()
    assert record["cold"] is True and record["queue_ms"] > 0 and record["instance_start_ms"] > 0
    events = tidal_server.client.get("/v1/functions/to_zero").json()["events"]
    assert any(event["to_count"] == 0 and "scale to zero" in event["reason"] for event in events)


def test_full_queue_answers_429_and_nothing_else_fails(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(
        tidal_server,
        write_module,
        "tight",
        "--max-instances",
        "1",
        "--max-queue",
        "2",
        "--min-instances",
        "1",
    )
    wait_for(lambda: instances(tidal_server, "tight")["ready"] == 1, 15, "the warm instance")
    answers = burst(tidal_server, "tight", [{"sleep": 1.0}] * 8)
    codes = sorted(answer.status_code for answer in answers)
    assert codes.count(200) == 3, codes  # one running + two queued
    assert codes.count(429) == 5, codes
    rejected = next(answer for answer in answers if answer.status_code == 429)
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["type"] == "TooManyRequests"
    assert rejected.elapsed.total_seconds() < 1.0, "a rejection must be quick, not wait for capacity"
    assert "x-tidal-activation" not in rejected.headers  # a 429 is counted, not recorded
    records = tidal_server.client.get("/v1/functions/tight/activations").json()["activations"]
    assert sorted(record["http_status"] for record in records) == [200, 200, 200]
    info = tidal_server.client.get("/v1/functions/tight").json()
    assert info["instances"]["rejected"] == 5
    assert sum(minute["count"] for minute in info["rejections"]) == 5  # stored per minute
    assert "5 requests rejected (queue full) in the last hour" in tidal_server.cli("status", "tight").stdout


def test_queued_longer_than_the_timeout_is_504(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(
        tidal_server,
        write_module,
        "slow_lane",
        "--max-instances",
        "1",
        "--timeout",
        "1.5",
        "--min-instances",
        "1",
    )
    wait_for(lambda: instances(tidal_server, "slow_lane")["ready"] == 1, 15, "the warm instance")
    answers = burst(tidal_server, "slow_lane", [{"sleep": 0.9}] * 3)
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [200, 504, 504] or codes == [200, 200, 504], codes
    timed_out = [answer for answer in answers if answer.status_code == 504]
    assert all(answer.json()["error"]["type"] == "Timeout" for answer in timed_out)


def test_killed_instance_is_replaced_and_queued_requests_are_served(
    tidal_server: TidalServer,
    write_module,  # type: ignore[no-untyped-def]
) -> None:
    deploy(tidal_server, write_module, "victim", "--max-instances", "1", "--min-instances", "1")
    wait_for(lambda: instances(tidal_server, "victim")["ready"] == 1, 15, "the warm instance")
    pid = instances(tidal_server, "victim")["list"][0]["pid"]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(tidal_server.client.post, "/fn/victim", json={"sleep": 0.5}) for _ in range(6)]
        wait_for(lambda: instances(tidal_server, "victim")["queued"] >= 3, 10, "requests to queue up")
        os.kill(pid, signal.SIGKILL)
        answers = [future.result() for future in futures]
    codes = [answer.status_code for answer in answers]
    assert codes.count(502) == 1, codes  # only the request the killed instance held
    assert codes.count(200) == 5, codes
    served_by = {answer.json()["pid"] for answer in answers if answer.status_code == 200}
    assert pid not in served_by
    info = instances(tidal_server, "victim")
    assert info["ready"] == 1 and info["lost"] == 1
