"""Shadow results are written off the hot path, in batches, like activations.

A finished copy appends one ``ShadowResult``; a sampled call that was not copied (dropped, the
primary failed, it streamed) only adds to a count per function, candidate, minute and reason, so
an overload writes one row a minute, not one per refusal. A background loop writes both every
``interval_s`` in one transaction, in a thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Protocol

from tidal.metering.recorder import BatchedWriter
from tidal.store.models import ShadowResult
from tidal.store.protocols import ShadowStore

log = logging.getLogger("tidal.shadow")

MAX_PENDING = 100_000  # kept while the store fails; beyond, the oldest results are given up


class ShadowSink(Protocol):
    """Where the mirror puts what came of each sampled call."""

    def add(self, result: ShadowResult) -> None: ...

    def skip(self, function: str, revision: str, reason: str, at: float) -> None: ...


class ShadowRecorder(BatchedWriter[ShadowResult]):
    def __init__(self, store: ShadowStore, interval_s: float = 0.5, batch_size: int = 500) -> None:
        super().__init__(interval_s, batch_size)
        self.store = store
        self._skips: Counter[tuple[str, str, int, str]] = Counter()

    def add(self, result: ShadowResult) -> None:
        self._append(result)

    def skip(self, function: str, revision: str, reason: str, at: float) -> None:
        """Count one sampled call that was not compared, in its minute: 125.0 -> minute 120."""
        self._skips[(function, revision, int(at // 60) * 60, reason)] += 1

    async def flush(self) -> None:
        if not self._pending and not self._skips:
            return
        batch, self._pending = self._pending, []
        skips, self._skips = self._skips, Counter()
        try:
            await asyncio.to_thread(self.store.add_shadow_results, batch, skips)
        except Exception:
            log.exception("writing %d shadow results failed; keeping them for the next flush", len(batch))
            self._pending[:0] = batch
            del self._pending[: max(0, len(self._pending) - MAX_PENDING)]
            self._skips.update(skips)
