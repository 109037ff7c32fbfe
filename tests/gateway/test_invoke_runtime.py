"""Streaming, cancellation, timeouts, instance death, per-invocation logs, activation records."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import httpx

from conftest import TidalServer

STREAMING = """
import time
from pathlib import Path

import tidal

@tidal.function(name="counter", concurrency=4)
def counter(payload):
    for i in range(payload["n"]):
        yield {"i": i}
        time.sleep(payload.get("sleep", 0))

TICKS = [0]  # how far the endless stream got, in this instance


@tidal.function(name="endless", concurrency=4)
def endless(payload):
    if payload.get("peek"):  # a second call to the same instance reads the first one's progress
        yield str(TICKS[0])
        return
    while True:
        TICKS[0] += 1
        yield f"tick {TICKS[0]}\\n"
        time.sleep(0.02)

@tidal.function(name="words", concurrency=4)
async def words(payload):
    for word in payload["text"].split():
        yield word.encode()
"""


def test_generator_streams_chunks_as_they_come(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(STREAMING, "streams.py")).returncode == 0
    started = time.monotonic()
    arrivals = []
    with tidal_server.client.stream("POST", "/fn/counter", json={"n": 4, "sleep": 0.3}) as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        for line in response.iter_lines():
            arrivals.append((time.monotonic() - started, json.loads(line)))
    assert [item for _, item in arrivals] == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    # The first chunk arrived long before the generator (4 x 0.3 s) finished.
    assert arrivals[0][0] < arrivals[-1][0] - 0.5


def test_server_sent_events(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(STREAMING, "streams.py")).returncode == 0
    response = tidal_server.client.post("/fn/counter", json={"n": 2}, headers={"accept": "text/event-stream"})
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text == 'data: {"i":0}\n\ndata: {"i":1}\n\n'
    raw = tidal_server.client.post("/fn/words", json={"text": "async generators stream bytes"})
    assert raw.content == b"asyncgeneratorsstreambytes"


def test_client_disconnect_cancels_the_stream(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(STREAMING, "streams.py")).returncode == 0
    with tidal_server.client.stream("POST", "/fn/endless", json={}) as response:
        for line in response.iter_lines():
            if line == "tick 5":
                break
        activation = response.headers["x-tidal-activation"]
        revision = response.headers["x-tidal-revision"]
    time.sleep(0.5)
    peek = tidal_server.client.post("/fn/endless", json={"peek": True})
    assert peek.headers["x-tidal-cold-start"] == "0" and peek.headers["x-tidal-revision"] == revision
    stopped_at = int(peek.text)
    time.sleep(0.5)
    again = int(tidal_server.client.post("/fn/endless", json={"peek": True}).text)
    assert again == stopped_at, "the generator kept running after the client left"
    record = tidal_server.client.get(f"/v1/activations/{activation}").json()
    assert record["status"] == "cancelled"


SLOW = """
import os
import time

import tidal

@tidal.function(name="sleepy", timeout=1, concurrency=4)
def sleepy(payload):
    time.sleep(payload["seconds"])
    return {"slept": payload["seconds"]}

@tidal.function(name="fragile", concurrency=8)
def fragile(payload, context):
    if payload.get("die"):
        time.sleep(0.3)
        os._exit(3)
    time.sleep(payload.get("sleep", 0))
    return {"pid": os.getpid(), "instance": context.instance}
"""


def test_timeout_is_504(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(SLOW, "slow.py")).returncode == 0
    assert tidal_server.client.post("/fn/sleepy", json={"seconds": 0.1}).status_code == 200
    started = time.monotonic()
    response = tidal_server.client.post("/fn/sleepy", json={"seconds": 5})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "Timeout"
    assert time.monotonic() - started < 3


RUNAWAY = """
import os
import time

import tidal

@tidal.function(name="runaway", timeout=1, concurrency=2)
def runaway(payload):
    time.sleep(payload["seconds"])  # a sync call: no way to interrupt it from outside its thread
    return {"pid": os.getpid()}
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_a_sync_call_past_its_timeout_gets_its_instance_replaced(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(RUNAWAY, "runaway.py")).returncode == 0
    old_pid = tidal_server.client.post("/fn/runaway", json={"seconds": 0}).json()["pid"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(tidal_server.client.post, "/fn/runaway", json={"seconds": 30})
        time.sleep(0.2)
        neighbour = pool.submit(tidal_server.client.post, "/fn/runaway", json={"seconds": 0.9})
        assert stuck.result().status_code == 504
        # The call sharing the instance is drained, not cut off.
        assert neighbour.result().status_code == 200 and neighbour.result().json()["pid"] == old_pid
    deadline = time.monotonic() + 10
    while running(old_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(old_pid), "the instance whose thread ran away was stopped"
    fresh = tidal_server.client.post("/fn/runaway", json={"seconds": 0})
    assert fresh.status_code == 200 and fresh.json()["pid"] != old_pid
    assert tidal_server.client.get("/v1/functions/runaway").json()["instances"]["recycled"] == 1


def test_instance_death_gives_502_and_is_replaced(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(SLOW, "slow.py")).returncode == 0
    first = tidal_server.client.post("/fn/fragile", json={}).json()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        held = [pool.submit(tidal_server.client.post, "/fn/fragile", json={"sleep": 2}) for _ in range(3)]
        time.sleep(0.2)
        killer = pool.submit(tidal_server.client.post, "/fn/fragile", json={"die": True})
        answers = [future.result() for future in [*held, killer]]
    assert [answer.status_code for answer in answers] == [502, 502, 502, 502]
    assert all(answer.json()["error"]["type"] == "InstanceLost" for answer in answers)
    replacement = tidal_server.client.post("/fn/fragile", json={})
    assert replacement.status_code == 200
    assert replacement.json()["pid"] != first["pid"]
    assert replacement.json()["instance"] != first["instance"]
    assert tidal_server.client.get("/v1/functions/fragile").json()["instances"]["lost"] == 1


LOGGING = """
import time

import tidal

@tidal.function(name="chatty", concurrency=8)
def chatty(payload, context):
    for step in range(3):
        print(f"{payload['who']} step {step}")
        time.sleep(0.05)
    return {"who": payload["who"], "request_id": context.aws_request_id, "function": context.function_name,
            "memory": context.memory_limit_in_mb, "remaining_ms": context.get_remaining_time_in_millis()}
"""


def test_logs_are_captured_per_invocation(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(LOGGING, "chatty.py"), "--memory", "300").returncode == 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(
                lambda who: tidal_server.client.post("/fn/chatty", json={"who": who}),
                ["alice", "bob", "carol", "dave"],
            )
        )
    for response in responses:
        body = response.json()
        assert body["request_id"] == response.headers["x-tidal-activation"]
        assert body["function"] == "chatty" and body["memory"] == 300
        assert 0 < body["remaining_ms"] <= 60_000
        logs = tidal_server.cli("logs", "chatty", "--activation", body["request_id"]).stdout
        own = [line for line in logs.splitlines() if " step " in line]
        assert own == [f"{body['who']} step {step}" for step in range(3)], logs


def test_activation_records(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    path = write_module(LOGGING.replace('"chatty"', '"billed"'), "billed.py")
    assert tidal_server.deploy(path, "--memory", "256").returncode == 0
    cold = tidal_server.client.post("/fn/billed", json={"who": "x"})
    warm = tidal_server.client.post("/fn/billed", json={"who": "y"})
    assert (cold.headers["x-tidal-cold-start"], warm.headers["x-tidal-cold-start"]) == ("1", "0")
    records = tidal_server.client.get("/v1/functions/billed/activations").json()["activations"]
    by_id = {record["id"]: record for record in records}
    first, second = by_id[cold.headers["x-tidal-activation"]], by_id[warm.headers["x-tidal-activation"]]
    assert first["cold"] is True and second["cold"] is False
    assert first["queue_ms"] > 0 and first["instance_start_ms"] > 0
    for record in (first, second):
        assert record["status"] == "ok" and record["http_status"] == 200
        assert record["revision"] == cold.headers["x-tidal-revision"]
        assert record["instance"].startswith(record["revision"])
        assert record["memory_mb"] == 256
        # Three 50 ms sleeps: billed to the next whole millisecond.
        assert isinstance(record["billed_ms"], int) and record["billed_ms"] >= 150
        assert record["duration_ms"] >= record["billed_ms"] - 1
    table = tidal_server.cli("activations", "billed")
    assert cold.headers["x-tidal-activation"] in table.stdout


LAMBDA = """
def handler(event, context):
    return {"event": event, "name": context.function_name, "id": context.aws_request_id}
"""


def test_lambda_module_deploys_unmodified(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    path = write_module(LAMBDA, "legacy_fn.py")
    result = tidal_server.deploy(path, "--handler", "handler", "--style", "lambda")
    assert result.returncode == 0, result.stderr
    assert "legacy_fn" in result.stdout
    response = tidal_server.client.post("/fn/legacy_fn", json={"records": [1, 2]})
    assert response.json() == {
        "event": {"records": [1, 2]},
        "name": "legacy_fn",
        "id": response.headers["x-tidal-activation"],
    }
    missing = tidal_server.deploy(path, "--style", "lambda")
    assert missing.returncode == 1
    assert "needs --handler" in missing.stderr


def test_curl_style_form_content_type_is_still_json(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert (
        tidal_server.deploy(
            write_module(LAMBDA, "formish.py"), "--handler", "handler", "--style", "lambda"
        ).returncode
        == 0
    )
    response = httpx.post(
        f"{tidal_server.url}/fn/formish",
        content=b'{"texts": ["hi"]}',
        headers={
            "authorization": f"Bearer {tidal_server.admin_key}",
            "content-type": "application/x-www-form-urlencoded",
        },
    )
    assert response.json()["event"] == {"texts": ["hi"]}
