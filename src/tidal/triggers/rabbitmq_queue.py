"""The RabbitMQ queue source (``amqp://`` / ``amqps://``): manual acks, sent only once the job ended.

Per trigger: the durable queue ``stream`` (declared if missing), consumed with ``prefetch_count`` =
``concurrency``, so RabbitMQ hands the gateway at most that many unacked messages. ``batch`` does
not apply (RabbitMQ pushes one message at a time).

The event: the message body (JSON if it parses, else the text); ``x-tidal-message-id`` is the
message's ``message_id`` property, or ``QUEUE:sha256(body)[:16]`` when the publisher set none. Each
message is one job with ``max_deliveries`` attempts. Its job succeeded -> ack; failed or dead ->
the body is published to the durable queue ``dead_letter`` (headers ``tidal-source``,
``tidal-error``, ``tidal-job``, ``tidal-deliveries``) with publisher confirms, then acked. A failure
inside the gateway before the job existed -> nack with requeue.

Exactly one job per message needs a ``message_id``: the idempotency key is (trigger, message_id),
so a message redelivered after a gateway crash finds its job, whose lost attempt the jobs service
retries (a message_id reused with another body is dead-lettered: it names another message's job).
Without one, each delivery is a job of its own: a redelivery after a crash runs again (at least
once). A message RabbitMQ says was delivered ``max_deliveries`` times before
(``x-delivery-count``, quorum queues) is dead-lettered unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from typing import TYPE_CHECKING

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from tidal.store.models import Job, TriggerRecord
from tidal.triggers.handlers import Handlers, failure_of
from tidal.triggers.nats_queue import MESSAGE_HEADER, event_of

if TYPE_CHECKING:
    from tidal.triggers.service import TriggerHub

log = logging.getLogger("tidal.triggers")


def message_key(queue: str, message_id: str | None, body: bytes) -> tuple[str, bool]:
    """(the message's id for the function, whether it is stable across redeliveries)."""
    if message_id:
        return message_id, True
    return f"{queue}:{hashlib.sha256(body).hexdigest()[:16]}", False


class RabbitQueueSource:
    def __init__(self, trigger: TriggerRecord, hub: TriggerHub) -> None:
        self.trigger, self.hub = trigger, hub
        config = trigger.config
        self.url, self.queue_name = str(config["url"]), str(config["stream"])
        self.dead_letter = str(config["dead_letter"])
        self.concurrency = int(config["concurrency"])  # type: ignore[call-overload]
        self.max_deliveries = int(config["max_deliveries"])  # type: ignore[call-overload]
        self._handlers = Handlers()  # by delivery tag

    async def run(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=5)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self.concurrency)
            queue = await channel.declare_queue(self.queue_name, durable=True)
            await channel.declare_queue(self.dead_letter, durable=True)
            closed = asyncio.Event()
            connection.close_callbacks.add(lambda *_: closed.set())
            await queue.consume(lambda message: self._start(channel, message))
            while not closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), 1.0)
                self._handlers.raise_failures()
            raise ConnectionError("the connection to RabbitMQ closed")  # the hub restarts the source
        finally:
            await self._handlers.cancel_all()
            with contextlib.suppress(Exception):
                await connection.close()

    async def _start(self, channel: aio_pika.abc.AbstractChannel, message: AbstractIncomingMessage) -> None:
        self._handlers.start(str(message.delivery_tag), self._handle(channel, message))

    async def _handle(self, channel: aio_pika.abc.AbstractChannel, message: AbstractIncomingMessage) -> None:
        message_id, stable = message_key(self.queue_name, message.message_id, message.body)
        deliveries = message.headers.get("x-delivery-count")
        if isinstance(deliveries, int) and deliveries >= self.max_deliveries:
            await self._dead_letter(channel, message, message_id, "delivered too often without ending", None)
            return
        # Without a message_id, only this delivery is known: a redelivery is a new job.
        unique = message_id if stable else f"{message_id}:{uuid.uuid4().hex[:12]}"
        try:
            job = await self.hub.submit(
                self.trigger, event_of(message.body), f"queue:{self.trigger.id}:{unique}",
                max_attempts=self.max_deliveries, headers={MESSAGE_HEADER: message_id},
            )  # fmt: skip
        except Exception:
            await message.nack(requeue=True)  # not stored: RabbitMQ hands it over again
            raise
        if job is None:  # the same message_id with another body: not this message's job
            await self._dead_letter(channel, message, message_id, "message_id reused for another body", None)
            return
        ended = await self.hub.wait_job(job.id)
        if ended.state == "succeeded":
            await message.ack()
        else:
            await self._dead_letter(channel, message, message_id, failure_of(ended), ended)

    async def _dead_letter(
        self,
        channel: aio_pika.abc.AbstractChannel,
        message: AbstractIncomingMessage,
        message_id: str,
        error: str,
        job: Job | None,
    ) -> None:
        headers: dict[str, aio_pika.abc.FieldValue] = {
            "tidal-source": message_id,
            "tidal-error": error[:1000].replace("\n", " "),
            "tidal-job": job.id if job else "",
            "tidal-deliveries": job.attempts if job else 0,
        }
        dead = aio_pika.Message(
            message.body, headers=headers, content_type=message.content_type,
            message_id=message.message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )  # fmt: skip
        await channel.default_exchange.publish(dead, routing_key=self.dead_letter)  # confirmed
        await message.ack()
        log.warning("trigger %s: message %s dead-lettered to %s: %s", self.trigger.id, message_id,
                    self.dead_letter, error)  # fmt: skip
