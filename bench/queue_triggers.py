"""Throughput of a Redis Streams queue trigger: messages/s from XADD to XACK through an echo.

A gateway (its own temporary state dir) serves ``qbench``, an echo function with a queue trigger
(``--batch``, ``--concurrency``, concurrency 8 per instance, up to 2 instances). ``--messages``
entries are XADDed at once; the clock stops when the group has none pending and none unread (every
entry acked after its job succeeded). Baseline in the same run, on the same Redis: a bare Python
consumer doing XREADGROUP + XACK with no invocation (what the queue alone costs).

Each message is a durable job (one SQLite transaction to store it, one to claim, one to finish),
an invocation through the router, and an XACK: the ratio says what that durability costs.

Run: ``.venv/bin/python bench/queue_triggers.py [--messages 1000] [--batch 50] [--concurrency 16]``
(needs Redis on 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Tidal

REDIS_URL = "redis://127.0.0.1:6379/0"
SOURCE = """
import tidal

@tidal.function(name="qbench", concurrency=8, max_instances=2,
                triggers=[tidal.queue("{url}", stream="{stream}", batch={batch}, concurrency={concurrency})])
def echo(event):
    return event
"""


def drained(client: redis.Redis, stream: str, group: str) -> bool:
    for info in client.xinfo_groups(stream):
        if info["name"] == group:
            return int(info["pending"]) == 0 and int(info.get("lag") or 0) == 0
    return False


def fill(client: redis.Redis, stream: str, count: int) -> None:
    with client.pipeline(transaction=False) as pipe:
        for number in range(count):
            pipe.xadd(stream, {"body": f'{{"n": {number}}}'})
        pipe.execute()


def baseline(client: redis.Redis, count: int, batch: int) -> float:
    """Messages/s of a bare consumer: XREADGROUP a batch, XACK it, no invocation."""
    stream = f"qbench-raw-{uuid.uuid4().hex[:8]}"
    client.xgroup_create(stream, "raw", id="0", mkstream=True)
    fill(client, stream, count)
    started, done = time.perf_counter(), 0
    while done < count:
        answer = client.xreadgroup("raw", "c", {stream: ">"}, count=batch, block=1000)
        ids = [entry_id for entry_id, _ in answer[0][1]] if answer else []
        if ids:
            client.xack(stream, "raw", *ids)
        done += len(ids)
    elapsed = time.perf_counter() - started
    client.delete(stream)
    return count / elapsed


def through_tidal(client: redis.Redis, count: int, batch: int, concurrency: int) -> tuple[float, float]:
    """(messages/s, seconds) from the XADD of ``count`` entries to the last XACK."""
    stream = f"qbench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        code = workdir / "qbench.py"
        code.write_text(SOURCE.format(url=REDIS_URL, stream=stream, batch=batch, concurrency=concurrency))
        tidal = Tidal.start(workdir, name="qbench")
        try:
            tidal.deploy(code)
            deadline = time.monotonic() + 30
            while not client.exists(stream):  # the trigger created its group
                if time.monotonic() > deadline:
                    raise RuntimeError("the queue trigger did not create its consumer group")
                time.sleep(0.1)
            client.xadd(stream, {"body": '{"warm": true}'})  # the first call starts an instance
            while not drained(client, stream, "tidal-qbench"):
                time.sleep(0.05)
            started = time.perf_counter()
            fill(client, stream, count)
            while not drained(client, stream, "tidal-qbench"):
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
        finally:
            tidal.stop()
            client.delete(stream, f"{stream}:dead")
    return count / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    raw = baseline(client, args.messages, args.batch)
    rate, elapsed = through_tidal(client, args.messages, args.batch, args.concurrency)
    print(f"messages: {args.messages}, batch {args.batch}, concurrency {args.concurrency}")
    print(f"bare consumer (XREADGROUP + XACK, no invocation): {raw:,.0f} msg/s")
    print(f"tidal queue trigger (durable job + echo invocation + XACK): {rate:,.0f} msg/s ({elapsed:.2f} s)")
    print(f"ratio tidal / bare: {rate / raw:.3f}")


if __name__ == "__main__":
    main()
