"""The NATS JetStream queue source: a durable pull consumer, acked only after the invocation succeeded.

Per trigger: JetStream stream ``stream`` (created with the one subject ``subject`` if missing),
durable pull consumer ``group`` filtered on ``subject``, explicit acks, ``ack_wait`` =
``visibility_timeout``. Messages are fetched ``batch`` at a time, at most ``concurrency`` in
flight; while a message's job runs, the consumer says "in progress" every half ``ack_wait`` so
JetStream does not redeliver it.

The event: the message data (JSON if it parses, else the text); ``x-tidal-message-id`` is
``STREAM:SEQUENCE``. Each message is one job (idempotency key: trigger and stream sequence) with
``max_deliveries`` attempts. Its job succeeded -> ack; failed or dead -> the data is published to
the ``dead_letter`` subject (headers ``Tidal-Source``, ``Tidal-Error``, ``Tidal-Job``,
``Tidal-Deliveries``) and the message is terminated (``term``: never redelivered). A failure
inside the gateway before the job existed -> nak with a delay (redelivered later). A gateway killed
mid-message: JetStream redelivers after ``ack_wait``; the redelivery finds the same job, whose lost
attempt the jobs service retries, and acks once it succeeded. A message JetStream delivered more
than ``max_deliveries`` times without ending is dead-lettered unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import msgspec
import nats
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.js.errors import NotFoundError

from tidal.store.models import Job, TriggerRecord
from tidal.triggers.handlers import Handlers, failure_of

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from tidal.triggers.service import TriggerHub

log = logging.getLogger("tidal.triggers")

FETCH_WAIT_S = 1.0
NAK_DELAY_S = 5.0
MESSAGE_HEADER = "x-tidal-message-id"


def event_of(data: bytes) -> object:
    """A message's event: its data as JSON if it parses, else as text.

    >>> event_of(b'{"n": 1}'), event_of(b"hi")
    ({'n': 1}, 'hi')
    """
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data.decode(errors="replace")


class NatsQueueSource:
    def __init__(self, trigger: TriggerRecord, hub: TriggerHub) -> None:
        self.trigger, self.hub = trigger, hub
        config = trigger.config
        self.url, self.stream, self.subject = (
            str(config["url"]),
            str(config["stream"]),
            str(config["subject"]),
        )
        self.durable, self.dead_letter = str(config["group"]), str(config["dead_letter"])
        self.batch, self.concurrency = int(config["batch"]), int(config["concurrency"])  # type: ignore[call-overload]
        self.max_deliveries = int(config["max_deliveries"])  # type: ignore[call-overload]
        self.ack_wait_s = float(config["visibility_timeout"])  # type: ignore[arg-type]
        self._handlers = Handlers()  # by STREAM:SEQUENCE:DELIVERY

    async def run(self) -> None:
        connection = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            stream = connection.jetstream()
            await self._ensure_stream(stream)
            consumer = ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s,
                filter_subject=self.subject, max_ack_pending=max(self.concurrency * 2, self.batch),
            )  # fmt: skip
            subscription = await stream.pull_subscribe(self.subject, durable=self.durable, stream=self.stream,
                                                       config=consumer)  # fmt: skip
            while True:
                free = self.concurrency - len(self._handlers)
                if free <= 0:
                    await self._handlers.wait_for_one()
                    continue
                try:
                    messages = await subscription.fetch(min(self.batch, free), timeout=FETCH_WAIT_S)
                except NatsTimeout:
                    messages = []
                for message in messages:
                    metadata = message.metadata  # a redelivery while a handler still runs is its own
                    key = f"{self.stream}:{metadata.sequence.stream}:{metadata.num_delivered}"
                    self._handlers.start(key, self._handle(connection, message))
                self._handlers.raise_failures()
        finally:
            await self._handlers.cancel_all()
            with contextlib.suppress(Exception):
                await connection.close()

    async def _ensure_stream(self, stream: JetStreamContext) -> None:
        try:
            await stream.stream_info(self.stream)
        except NotFoundError:
            await stream.add_stream(StreamConfig(name=self.stream, subjects=[self.subject]))

    async def _handle(self, connection: nats.NATS, message: Msg) -> None:
        metadata = message.metadata
        message_id = f"{self.stream}:{metadata.sequence.stream}"
        if metadata.num_delivered > self.max_deliveries:
            await self._dead_letter(
                connection, message, message_id, "delivered too often without ending", None
            )
            return
        try:
            job = await self.hub.submit(
                self.trigger, event_of(message.data), f"queue:{self.trigger.id}:{message_id}",
                max_attempts=self.max_deliveries, headers={MESSAGE_HEADER: message_id},
            )  # fmt: skip
        except Exception:
            await message.nak(delay=NAK_DELAY_S)  # not stored: JetStream hands it over again later
            raise
        if job is None:
            await message.nak(delay=NAK_DELAY_S)
            return
        ended = await self._wait_working(job, message)
        if ended.state == "succeeded":
            await message.ack()
        else:
            await self._dead_letter(connection, message, message_id, failure_of(ended), ended)

    async def _wait_working(self, job: Job, message: Msg) -> Job:
        """The job once final, telling JetStream every half ack_wait that the message is in progress."""
        waiting = asyncio.get_running_loop().create_task(self.hub.wait_job(job.id))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=self.ack_wait_s / 2)
                if done:
                    return waiting.result()
                await message.in_progress()
        finally:
            waiting.cancel()

    async def _dead_letter(
        self, connection: nats.NATS, message: Msg, message_id: str, error: str, job: Job | None
    ) -> None:
        headers = {"Tidal-Source": message_id, "Tidal-Error": error[:1000].replace("\n", " "),
                   "Tidal-Job": job.id if job else "", "Tidal-Deliveries": str(job.attempts if job else "")}  # fmt: skip
        await connection.publish(self.dead_letter, message.data, headers=headers)
        await connection.flush()
        await message.term()
        log.warning("trigger %s: message %s dead-lettered to %s: %s", self.trigger.id, message_id,
                    self.dead_letter, error)  # fmt: skip
