"""RabbitMQ queue triggers against the real server: a message processed and acked, a poison message
dead-lettered after max_deliveries, a gateway killed mid-message -> redelivered and finished once
(its message_id names its job)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import aiormq
import pytest
from trigger_helpers import QUEUE_CONSUMER, activation_of, jobs_of, triggers_of, wait_jobs

from conftest import TidalServer, wait_for


class Rabbit:
    """Synchronous calls into the real broker, for the test's side."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _run(self, work: Any) -> Any:
        async def go() -> Any:
            connection = await aio_pika.connect(self.url)
            try:
                return await work(await connection.channel())
            finally:
                await connection.close()

        return asyncio.run(go())

    def publish(self, queue: str, body: bytes, message_id: str | None = None) -> None:
        async def send(channel: Any) -> None:
            await channel.declare_queue(queue, durable=True)
            await channel.default_exchange.publish(
                aio_pika.Message(body, message_id=message_id, content_type="application/json"),
                routing_key=queue,
            )

        self._run(send)

    def depth(self, queue: str) -> int:
        """Messages in the queue, ready or unacked (0: everything acked)."""

        async def count(channel: Any) -> int:
            declared = await channel.declare_queue(queue, durable=True, passive=True)
            return int(declared.declaration_result.message_count)

        return int(self._run(count))

    def consumers(self, queue: str) -> int:
        """Consumers on the queue; 0 while it does not exist yet (the trigger declares it when it starts)."""

        async def count(channel: Any) -> int:
            try:
                declared = await channel.declare_queue(queue, durable=True, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return 0
            return int(declared.declaration_result.consumer_count)

        return int(self._run(count))

    def take(self, queue: str) -> aio_pika.abc.AbstractIncomingMessage | None:
        async def get(channel: Any) -> Any:
            declared = await channel.declare_queue(queue, durable=True)
            message = await declared.get(fail=False)
            if message is not None:
                await message.ack()
            return message

        return self._run(get)  # type: ignore[no-any-return]

    def delete(self, *queues: str) -> None:
        async def drop(channel: Any) -> None:
            for queue in queues:
                await channel.queue_delete(queue)

        self._run(drop)


@pytest.fixture
def rabbit(rabbitmq_url: str) -> Iterator[tuple[Rabbit, str]]:
    helper, name = Rabbit(rabbitmq_url), f"tidal-test-{uuid.uuid4().hex[:8]}"
    yield helper, name
    helper.delete(name, f"{name}.dead")


def deploy(server: TidalServer, write_module, url: str, name: str, queue: str) -> None:  # type: ignore[no-untyped-def]
    deployed = server.deploy(write_module(QUEUE_CONSUMER.format(name=name, url=url, stream=queue)))
    assert deployed.returncode == 0, deployed.stderr


def test_a_message_is_processed_acked_and_a_poison_one_dead_lettered(  # type: ignore[no-untyped-def]
    tidal_server: TidalServer, write_module, rabbitmq_url: str, rabbit: tuple[Rabbit, str]
) -> None:
    helper, name = rabbit
    deploy(tidal_server, write_module, rabbitmq_url, "rqecho", name)
    (trigger,) = triggers_of(tidal_server.client, "rqecho")
    assert trigger["config"]["dead_letter"] == f"{name}.dead"
    wait_for(lambda: helper.consumers(name) == 1, 20, "the trigger's consumer on the queue")

    helper.publish(name, b'{"n": 1}', message_id="order-1")
    (job,) = wait_jobs(tidal_server.client, "rqecho", 1)
    assert job["state"] == "succeeded" and job["result"] == {"got": {"n": 1}, "id": "order-1"}
    assert activation_of(tidal_server.client, job)["trigger"] == "queue"
    wait_for(lambda: helper.depth(name) == 0, 10, "the ack")

    helper.publish(name, b'{"poison": true}')  # aio-pika gives it a message_id of its own
    wait_for(lambda: len(jobs_of(tidal_server.client, "rqecho")) == 2
             and jobs_of(tidal_server.client, "rqecho")[0]["state"] == "dead", 30, "the poison message's end")  # fmt: skip
    wait_for(lambda: helper.depth(f"{name}.dead") == 1, 10, "the dead letter")
    letter = helper.take(f"{name}.dead")
    assert letter is not None and letter.body == b'{"poison": true}'
    assert letter.headers["tidal-deliveries"] == 3
    assert letter.message_id and letter.headers["tidal-source"] == letter.message_id
    assert "ValueError: cannot digest" in str(letter.headers["tidal-error"])
    assert helper.depth(name) == 0


def test_a_message_whose_gateway_was_killed_finishes_once(  # type: ignore[no-untyped-def]
    fresh_server: TidalServer, write_module, rabbitmq_url: str, rabbit: tuple[Rabbit, str]
) -> None:
    helper, name = rabbit
    server = fresh_server.start()
    deploy(server, write_module, rabbitmq_url, "rqslow", name)
    wait_for(lambda: helper.consumers(name) == 1, 20, "the trigger's consumer on the queue")
    helper.publish(name, b'{"sleep": 3}', message_id="slow-1")
    wait_for(
        lambda: any(job["state"] == "running" for job in jobs_of(server.client, "rqslow")), 20, "the attempt"
    )
    assert server.process is not None
    server.process.kill()  # kill -9 mid-message: nothing acked, RabbitMQ requeues it
    server.process.wait()
    wait_for(lambda: helper.depth(name) == 1, 10, "the message back in the queue")

    server.start()
    (job,) = wait_jobs(server.client, "rqslow", 1, timeout=60)
    assert job["state"] == "succeeded" and job["result"]["id"] == "slow-1"
    wait_for(lambda: helper.depth(name) == 0, 20, "the ack after the restart")
    record = server.client.get(f"/v1/jobs/{job['id']}").json()
    statuses = [server.client.get(f"/v1/activations/{a}").json()["status"] for a in record["activations"]]
    assert statuses.count("ok") == 1, statuses
    time.sleep(1)
    assert len(jobs_of(server.client, "rqslow")) == 1
