"""Redis Streams queue triggers against the real Redis: a message processed and acked, a poison
message dead-lettered after max_deliveries, a gateway killed mid-message -> the message finishes
once after the restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from trigger_helpers import QUEUE_CONSUMER, activation_of, jobs_of, triggers_of, wait_jobs

from conftest import TidalServer, wait_for

SOURCE = QUEUE_CONSUMER


@pytest.fixture
def stream(redis_url: str) -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    name = f"tidal-test-{uuid.uuid4().hex[:8]}"
    yield client, name
    client.delete(name, f"{name}:dead")
    client.close()


def deploy(server: TidalServer, write_module, redis_url: str, name: str, stream: str) -> None:  # type: ignore[no-untyped-def]
    deployed = server.deploy(write_module(SOURCE.format(name=name, url=redis_url, stream=stream)))
    assert deployed.returncode == 0, deployed.stderr


def pending(client: redis.Redis, stream: str, group: str) -> int:
    return int(client.xpending(stream, group)["pending"])


def test_a_message_is_processed_acked_and_a_poison_one_dead_lettered(  # type: ignore[no-untyped-def]
    tidal_server: TidalServer, write_module, redis_url: str, stream: tuple[redis.Redis, str]
) -> None:
    client, name = stream
    deploy(tidal_server, write_module, redis_url, "qecho", name)
    (trigger,) = triggers_of(tidal_server.client, "qecho")
    assert trigger["kind"] == "queue" and trigger["config"]["dead_letter"] == f"{name}:dead"
    wait_for(lambda: client.exists(name) == 1, 10, "the consumer group (MKSTREAM)")

    entry = client.xadd(name, {"body": '{"n": 1}'})
    (job,) = wait_jobs(tidal_server.client, "qecho", 1)
    assert job["state"] == "succeeded" and job["result"] == {"got": {"n": 1}, "id": entry}
    assert activation_of(tidal_server.client, job)["trigger"] == "queue"
    wait_for(lambda: pending(client, name, "tidal-qecho") == 0, 10, "the XACK")

    poison = client.xadd(name, {"body": '{"poison": true}'})
    wait_for(lambda: client.xlen(f"{name}:dead") == 1, 30, "the dead letter")
    ((_, letter),) = client.xrange(f"{name}:dead")
    assert letter["tidal_source_id"] == poison and letter["tidal_deliveries"] == "3"
    assert letter["body"] == '{"poison": true}' and "ValueError: cannot digest" in letter["tidal_error"]
    wait_for(lambda: pending(client, name, "tidal-qecho") == 0, 10, "the poison message's XACK")
    dead = [job for job in jobs_of(tidal_server.client, "qecho") if job["id"] == letter["tidal_job"]]
    assert dead and dead[0]["state"] == "dead" and dead[0]["attempts"] == 3


def test_a_message_whose_gateway_was_killed_finishes_once(  # type: ignore[no-untyped-def]
    fresh_server: TidalServer, write_module, redis_url: str, stream: tuple[redis.Redis, str]
) -> None:
    client, name = stream
    server = fresh_server.start()
    deploy(server, write_module, redis_url, "qslow", name)
    wait_for(lambda: client.exists(name) == 1, 10, "the consumer group (MKSTREAM)")
    entry = client.xadd(name, {"body": '{"sleep": 3}'})
    wait_for(
        lambda: any(job["state"] == "running" for job in jobs_of(server.client, "qslow")), 20, "the attempt"
    )
    assert server.process is not None
    server.process.kill()  # kill -9 mid-message: nothing acked, the attempt's outcome unknown
    server.process.wait()
    assert pending(client, name, "tidal-qslow") == 1

    server.start()
    (job,) = wait_jobs(server.client, "qslow", 1, timeout=60)
    assert job["state"] == "succeeded" and job["result"]["id"] == entry
    wait_for(lambda: pending(client, name, "tidal-qslow") == 0, 20, "the XACK after the restart")
    record = server.client.get(f"/v1/jobs/{job['id']}").json()
    statuses = [server.client.get(f"/v1/activations/{a}").json()["status"] for a in record["activations"]]
    assert statuses.count("ok") == 1, statuses  # one successful run for the message
    time.sleep(1)
    assert len(jobs_of(server.client, "qslow")) == 1  # the re-read entry found its job: no second one
