"""What the three queue sources (Redis Streams, NATS JetStream, RabbitMQ) share: the message
handlers running at once, and how a finished job reads in a dead letter.

A handler runs as its own task, keyed by its message's id. One that fails (its server went away
mid-ack) does not fail silently: the source's loop calls ``raise_failures``, the error ends the
source, and the trigger hub restarts it with backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from tidal.store.models import Job


class Handlers:
    def __init__(self) -> None:
        self.running: dict[str, asyncio.Task[None]] = {}
        self._failures: list[BaseException] = []

    def __len__(self) -> int:
        return len(self.running)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.running

    def start(self, message_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.running[message_id] = task
        task.add_done_callback(lambda ended: self._ended(message_id, ended))

    def _ended(self, message_id: str, task: asyncio.Task[None]) -> None:
        self.running.pop(message_id, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._failures.append(error)

    def raise_failures(self) -> None:
        if self._failures:
            raise self._failures.pop(0)

    async def wait_for_one(self) -> None:
        """Until one handler ends (its slot is free), then raise what failed."""
        await asyncio.wait(set(self.running.values()), return_when=asyncio.FIRST_COMPLETED)
        self.raise_failures()

    async def cancel_all(self) -> None:
        for task in self.running.values():
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)


def failure_of(job: Job) -> str:
    """Why a job that did not succeed ended, for a dead letter: "ValueError: bad input" or "dead"."""
    return f"{job.error_type}: {job.error_message}" if job.error_type else job.state
