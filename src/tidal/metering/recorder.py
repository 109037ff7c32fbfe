"""Activation records are written off the hot path: appended to a list, flushed in batches.

A request only appends one Struct; a background task writes whatever accumulated every
``interval_s`` (or sooner when ``batch_size`` is reached) in one transaction, in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tidal.store.models import Activation
from tidal.store.sqlite import SQLiteStore

log = logging.getLogger("tidal.metering")


class ActivationRecorder:
    def __init__(self, store: SQLiteStore, interval_s: float = 0.2, batch_size: int = 500) -> None:
        self.store = store
        self.interval_s = interval_s
        self.batch_size = batch_size
        self._pending: list[Activation] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def record(self, activation: Activation) -> None:
        self._pending.append(activation)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await asyncio.to_thread(self.store.add_activations, batch)
        except Exception:
            log.exception("writing %d activation records failed; keeping them for the next flush", len(batch))
            self._pending[:0] = batch

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()
