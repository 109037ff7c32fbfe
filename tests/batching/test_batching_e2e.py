"""Batching inside an instance, on a real gateway: concurrent requests share calls, each gets its own answer."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx

from conftest import TidalServer, wait_for

BATCHED = """
import time

import tidal

CALLS = []  # the batch sizes this instance saw, in order


@tidal.function(name="upper", batch=tidal.Batch(max_size=4, max_wait_ms=300))
def upper(items):
    CALLS.append(len(items))
    time.sleep(0.05)
    outputs = []
    for item in items:
        if item.get("fail"):
            outputs.append(tidal.ItemError(f"cannot take {item['text']!r}"))
        elif item.get("bad"):
            outputs.append(tidal.InputError("bad item"))
        else:
            outputs.append({"text": item["text"].upper(), "calls": list(CALLS)})
    if any(item.get("short") for item in items):
        return outputs[:-1]
    if any(item.get("boom") for item in items):
        raise RuntimeError("the whole batch broke")
    return outputs


@tidal.function(name="adaptive", batch={"max_size": 8, "target_p99_ms": 400})
def adaptive(items, contexts):
    time.sleep(0.02)
    return [{"n": item["n"], "activation": context.activation_id} for item, context in zip(items, contexts)]


@tidal.function(name="slow-batch", batch={"max_size": 8, "max_wait_ms": 200})
async def slow_batch(items):
    time.sleep(1.5)
    return [item["n"] for item in items]
"""

STREAMING = """
import tidal

@tidal.function(name="stream-batch", batch={"max_size": 4})
def stream_batch(items):
    yield from items
"""


def post_all(server: TidalServer, name: str, payloads: list[dict[str, Any]]) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(lambda payload: server.client.post(f"/fn/{name}", json=payload), payloads))


def test_concurrent_requests_share_batches_and_get_their_own_answers(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    deployed = tidal_server.deploy(write_module(BATCHED, "batched.py"))
    assert deployed.returncode == 0, deployed.stderr
    lone = tidal_server.client.post("/fn/upper", json={"text": "alone"})  # also starts the instance
    assert lone.status_code == 200 and lone.json()["text"] == "ALONE"
    assert lone.headers["x-tidal-batch-size"] == "1"  # waited at most max_wait_ms, then ran alone
    responses = post_all(tidal_server, "upper", [{"text": f"item {i}"} for i in range(10)])
    assert [response.status_code for response in responses] == [200] * 10
    assert [response.json()["text"] for response in responses] == [f"ITEM {i}" for i in range(10)]
    sizes = [int(response.headers["x-tidal-batch-size"]) for response in responses]
    assert max(sizes) <= 4 and max(sizes) > 1  # max_size respected, and requests did share calls
    recorded = [
        tidal_server.client.get(f"/v1/activations/{response.headers['x-tidal-activation']}").json()[
            "batch_size"
        ]
        for response in responses
    ]
    assert recorded == sizes  # each activation record keeps the size of the batch it ran in
    calls = max((response.json()["calls"] for response in responses), key=len)[1:]  # after the lone call
    assert sum(calls) == 10 and len(calls) < 10 and max(calls) <= 4


def test_an_item_error_fails_only_its_item(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(BATCHED, "batched.py")).returncode == 0
    payloads = [{"text": "a"}, {"text": "b", "fail": True}, {"text": "c", "bad": True}, {"text": "d"}]
    responses = post_all(tidal_server, "upper", payloads)
    by_text = {payload["text"]: response for payload, response in zip(payloads, responses, strict=True)}
    assert by_text["a"].status_code == 200 and by_text["a"].json()["text"] == "A"
    assert by_text["d"].status_code == 200 and by_text["d"].json()["text"] == "D"
    failed = by_text["b"]
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "ItemError"
    assert failed.json()["error"]["message"] == "cannot take 'b'"
    assert by_text["c"].status_code == 422 and by_text["c"].json()["error"]["message"] == "bad item"


def test_a_wrong_length_or_a_raise_fails_the_whole_batch(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(BATCHED, "batched.py")).returncode == 0
    responses = post_all(tidal_server, "upper", [{"text": "x", "short": True}])
    error = responses[0].json()["error"]
    assert responses[0].status_code == 500 and error["type"] == "BatchError"
    assert "returned 0 outputs for a batch of 1 inputs" in error["message"]
    responses = post_all(tidal_server, "upper", [{"text": "y", "boom": True}])
    assert responses[0].status_code == 500
    assert responses[0].json()["error"] == {"type": "RuntimeError", "message": "the whole batch broke"} | {
        key: value for key, value in responses[0].json()["error"].items() if key not in ("type", "message")
    }


def test_a_streaming_function_cannot_be_batched(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    result = tidal_server.deploy(write_module(STREAMING, "streaming.py"))
    assert result.returncode != 0
    said = " ".join((result.stderr + result.stdout).split())
    assert "400" in said or "DeployError" in said or "error" in said
    assert "a streaming (generator) function cannot be batched" in said


def test_requests_waiting_in_a_batch_count_as_in_flight(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    """The autoscaler's meter counts a request from routing to answer: waiting in a batch included."""
    assert tidal_server.deploy(write_module(BATCHED, "batched.py")).returncode == 0
    spec = tidal_server.client.get("/v1/functions/slow-batch").json()
    assert spec["spec"]["concurrency"] == 16  # derived: 2 x max_size
    assert tidal_server.client.post("/fn/slow-batch", json={"n": 0}).status_code == 200  # warm
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = [pool.submit(tidal_server.client.post, "/fn/slow-batch", json={"n": n}) for n in range(6)]
        started = time.monotonic()
        seen: list[int] = []

        def all_in_flight() -> bool:
            seen.append(tidal_server.client.get("/v1/functions/slow-batch").json()["instances"]["in_flight"])
            return seen[-1] == 6

        wait_for(all_in_flight, 1.4, f"6 requests in flight in one batch (saw {seen})")
        assert time.monotonic() - started < 1.5
        assert [answer.result().json() for answer in answers] == list(range(6))


def test_adaptive_mode_batches_under_load_and_hands_each_item_its_context(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(BATCHED, "batched.py")).returncode == 0
    first = tidal_server.client.post("/fn/adaptive", json={"n": -1})  # nothing measured yet: runs at once
    assert first.status_code == 200 and first.headers["x-tidal-batch-size"] == "1"
    responses = post_all(tidal_server, "adaptive", [{"n": n} for n in range(12)])
    assert [response.json()["n"] for response in responses] == list(range(12))
    assert all(r.json()["activation"] == r.headers["x-tidal-activation"] for r in responses)
    assert max(int(r.headers["x-tidal-batch-size"]) for r in responses) > 1
