"""NATS JetStream queue triggers against the real server: a message processed and acked, a poison
message dead-lettered (published, then terminated) after max_deliveries, a gateway killed
mid-message -> redelivered after ack_wait and finished once."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError
from trigger_helpers import QUEUE_CONSUMER, activation_of, jobs_of, triggers_of, wait_jobs

from conftest import TidalServer, wait_for

SOURCE = QUEUE_CONSUMER


class JetStream:
    """Synchronous calls into the real server, for the test's side."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def _with(self, work: Any) -> Any:
        connection = await nats.connect(self.url)
        try:
            return await work(connection.jetstream())
        finally:
            await connection.close()

    def run(self, work: Any) -> Any:
        return asyncio.run(self._with(work))

    def exists(self, stream: str) -> bool:
        async def probe(js: Any) -> bool:
            try:
                await js.stream_info(stream)
            except NotFoundError:
                return False
            return True

        return bool(self.run(probe))

    def publish(self, subject: str, data: bytes) -> int:
        async def send(js: Any) -> int:
            return int((await js.publish(subject, data)).seq)

        return int(self.run(send))

    def ack_pending(self, stream: str, durable: str) -> int:
        async def info(js: Any) -> int:
            consumer = await js.consumer_info(stream, durable)
            return int(consumer.num_ack_pending) + int(consumer.num_pending)

        return int(self.run(info))


@pytest.fixture
def jetstream(nats_url: str) -> Iterator[tuple[JetStream, str]]:
    helper = JetStream(nats_url)
    name = f"tidaltest{uuid.uuid4().hex[:8]}"

    async def dead_letters(js: Any) -> None:  # catches what the trigger publishes to NAME-dead
        await js.add_stream(name=f"{name}_dl", subjects=[f"{name}-dead"])

    helper.run(dead_letters)
    yield helper, name

    async def clean(js: Any) -> None:
        for stream in (name, f"{name}_dl"):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)

    helper.run(clean)


def deploy(server: TidalServer, write_module, url: str, name: str, stream: str) -> None:  # type: ignore[no-untyped-def]
    deployed = server.deploy(write_module(SOURCE.format(name=name, url=url, stream=stream)))
    assert deployed.returncode == 0, deployed.stderr


def test_a_message_is_processed_acked_and_a_poison_one_dead_lettered(  # type: ignore[no-untyped-def]
    tidal_server: TidalServer, write_module, nats_url: str, jetstream: tuple[JetStream, str]
) -> None:
    helper, name = jetstream
    deploy(tidal_server, write_module, nats_url, "nqecho", name)
    (trigger,) = triggers_of(tidal_server.client, "nqecho")
    assert trigger["config"]["subject"] == name and trigger["config"]["dead_letter"] == f"{name}-dead"
    wait_for(lambda: helper.exists(name), 10, "the JetStream stream the trigger creates")
    time.sleep(0.5)  # the durable consumer is made right after the stream

    sequence = helper.publish(name, b'{"n": 1}')
    (job,) = wait_jobs(tidal_server.client, "nqecho", 1)
    assert job["state"] == "succeeded" and job["result"] == {"got": {"n": 1}, "id": f"{name}:{sequence}"}
    assert activation_of(tidal_server.client, job)["trigger"] == "queue"
    wait_for(lambda: helper.ack_pending(name, "tidal-nqecho") == 0, 10, "the ack")

    poison = helper.publish(name, b'{"poison": true}')

    async def dead(js: Any) -> Any:
        return await js.get_msg(f"{name}_dl", 1)

    wait_for(lambda: helper.ack_pending(name, "tidal-nqecho") == 0 and len(jobs_of(tidal_server.client, "nqecho")) == 2
             and jobs_of(tidal_server.client, "nqecho")[0]["state"] == "dead", 30, "the poison message's end")  # fmt: skip
    letter = helper.run(dead)
    assert letter.data == b'{"poison": true}'
    assert letter.headers["Tidal-Source"] == f"{name}:{poison}" and letter.headers["Tidal-Deliveries"] == "3"
    assert "ValueError: cannot digest" in letter.headers["Tidal-Error"]


def test_a_message_whose_gateway_was_killed_finishes_once(  # type: ignore[no-untyped-def]
    fresh_server: TidalServer, write_module, nats_url: str, jetstream: tuple[JetStream, str]
) -> None:
    helper, name = jetstream
    server = fresh_server.start()
    deploy(server, write_module, nats_url, "nqslow", name)
    wait_for(lambda: helper.exists(name), 10, "the JetStream stream the trigger creates")
    time.sleep(0.5)
    sequence = helper.publish(name, b'{"sleep": 3}')
    wait_for(
        lambda: any(job["state"] == "running" for job in jobs_of(server.client, "nqslow")), 20, "the attempt"
    )
    assert server.process is not None
    server.process.kill()  # kill -9 mid-message: nothing acked
    server.process.wait()
    assert helper.ack_pending(name, "tidal-nqslow") == 1

    server.start()
    (job,) = wait_jobs(server.client, "nqslow", 1, timeout=60)
    assert job["state"] == "succeeded" and job["result"]["id"] == f"{name}:{sequence}"
    wait_for(lambda: helper.ack_pending(name, "tidal-nqslow") == 0, 20, "the ack after the restart")
    record = server.client.get(f"/v1/jobs/{job['id']}").json()
    statuses = [server.client.get(f"/v1/activations/{a}").json()["status"] for a in record["activations"]]
    assert statuses.count("ok") == 1, statuses
    time.sleep(1)
    assert len(jobs_of(server.client, "nqslow")) == 1
