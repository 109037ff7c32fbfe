"""Instance lives: when each instance started and stopped, written in batches off the hot path.

The router's pools call ``started`` once an instance is Ready and ``stopped`` when its connection
ends (stopped by a scale-down, replaced, or lost). The serverless-vs-reserved report reads them:
an instance alive with no call in flight is what tidal itself costs (tidal.metering.reserved).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from tidal.metering.recorder import BatchedWriter
from tidal.store.models import InstanceLife

log = logging.getLogger("tidal.metering")

Stop = tuple[str, float]  # (instance id, epoch s)


class LifeStore(Protocol):
    def add_instance_lives(self, started: list[InstanceLife], stopped: list[Stop]) -> None: ...


class InstanceLives(BatchedWriter[InstanceLife | Stop]):
    def __init__(self, store: LifeStore, interval_s: float = 1.0, batch_size: int = 200) -> None:
        super().__init__(interval_s, batch_size)
        self.store = store

    def started(self, life: InstanceLife) -> None:
        self._append(life)

    def stopped(self, instance: str, at: float) -> None:
        self._append((instance, at))

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        started = [item for item in batch if isinstance(item, InstanceLife)]
        stopped = [item for item in batch if not isinstance(item, InstanceLife)]
        try:
            await asyncio.to_thread(self.store.add_instance_lives, started, stopped)
        except Exception:
            log.exception("writing %d instance lives failed; keeping them for the next flush", len(batch))
            self._pending[:0] = batch
