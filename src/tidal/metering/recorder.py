"""Activation records are written off the hot path: appended to a list, flushed in batches.

A request only appends one Struct; a background task writes whatever accumulated every
``interval_s`` (or sooner when ``batch_size`` is reached) in one transaction, in a thread.
A request refused with 429 (queue full) leaves no record, only a count: one row per function and
minute, so an overload of 100,000 refusals a minute writes one row a minute, not 100,000.

With a journal (tidal.metering.journal), ``record`` also appends the record to it before returning,
that is before the answer is sent; ``flush`` starts a new journal segment as it takes the batch, and
deletes the finished segments once their batch is stored. The journal and the batch are changed
in the same step of the event loop, so every record in a finished segment is in a batch taken with
it or before it.

With a folder (tidal.metering.folding), ``record`` only journals: the records are not kept in
memory, and ``flush`` hands the finished segment to the folder process, which stores it, instead
of inserting in a thread of the gateway (the store's insert is most of what a record costs). A
record whose journal write failed is kept in memory and stored from here, as without a folder.

/metrics counts the records as they are stored (``count_into``): the folder counts each segment it
folds, and a record kept in memory is counted as it is made.

Journaled records are safe on disk, so they are folded ``FOLD_INTERVAL_S`` after the last flush
rather than every ``interval_s``: readers that must see every answered call flush first (a
/metrics scrape too, which so restarts the wait), whatever the interval, and on a busy machine
each fold slows the serving processes by more than its own CPU time (measured: with the folder
stopped, the gateway's CPU per request fell back near metering off), so fewer, larger folds cost
the warm path less (docs/metering.md). Records held in memory (no journal, or its write failed)
are still written every ``interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from tidal.metering.folding import JournalFolder
from tidal.metering.journal import ActivationJournal
from tidal.store.models import Activation
from tidal.store.protocols import ActivationStore

if TYPE_CHECKING:
    from tidal.observability.stats import InvocationStats

log = logging.getLogger("tidal.metering")

Item = TypeVar("Item")

# How often journaled records are folded. Under wrk load on 2 cores, metering cost the warm path
# 8.5% of its throughput with a fold every 200 ms and 2.6% every 2 s (bench/metering_overhead.py,
# paired medians of 12 rounds, the same hour): the folder's CPU per record fell from 4.1 to 3.1 us
# and what it added to the gateway's per request from 12 to 5 us.
FOLD_INTERVAL_S = 2.0


class BatchedWriter(ABC, Generic[Item]):
    """Items appended on the hot path, written by ``flush`` in the background: every
    ``interval_s``, or sooner once ``batch_size`` are waiting. Subclasses write (``flush``).
    """

    def __init__(self, interval_s: float, batch_size: int) -> None:
        self.interval_s = interval_s
        self.batch_size = batch_size
        self._pending: list[Item] = []
        self._wake = asyncio.Event()

    def _append(self, item: Item) -> None:
        self._pending.append(item)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    def next_flush_in(self) -> float:
        """Seconds until the next flush, unless a full batch wakes it sooner."""
        return self.interval_s

    def flush_due(self) -> bool:
        """Whether the wait for ``next_flush_in()`` that just ended calls for a flush: not when a
        reader flushed meanwhile and the next one is not due yet."""
        return True

    async def run(self) -> None:
        """Flush every ``next_flush_in()`` s (or when a batch is full); runs under the gateway's
        supervisor."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.next_flush_in())
            woken = self._wake.is_set()  # a full batch
            self._wake.clear()
            if woken or self.flush_due():
                await self.flush()

    @abstractmethod
    async def flush(self) -> None:
        """Write what is pending (keeping it for the next flush when the store fails)."""


class ActivationRecorder(BatchedWriter[Activation]):
    def __init__(
        self, store: ActivationStore, interval_s: float = 0.2, batch_size: int = 500,
        journal: ActivationJournal | None = None, folder: JournalFolder | None = None,
        fold_interval_s: float = FOLD_INTERVAL_S,
    ) -> None:  # fmt: skip
        super().__init__(interval_s, batch_size)
        self.fold_interval_s = fold_interval_s  # for journaled records (interval_s: those in memory)
        self.store = store
        self.journal = journal
        self.folder = folder if journal is not None else None  # folds the journal's segments
        self._finished_segments: list[Path] = []  # journal segments whose records await the store
        self._rejections: Counter[tuple[str, int]] = Counter()  # (function, minute) -> 429s
        self.stats: InvocationStats | None = None  # /metrics counts (count_into); None: not counted
        self._flushed_at = time.monotonic()
        self._discarding = False  # TIDAL_METRICS=journal: segments deleted unstored (benchmarks)

    def count_into(self, stats: InvocationStats) -> None:
        """Count every record in ``stats`` (for /metrics) as it is stored or kept in memory."""
        self.stats = stats
        if self.folder is not None:
            self.folder.counted = stats.add

    def discard_journaled(self) -> None:
        """Benchmarks only (TIDAL_METRICS=journal): from now on a flush deletes the journal's
        finished segments instead of having them stored, so that the request path's cost (the
        append) can be measured without the journal folder's (decode, store, count). Records kept
        in memory (the journal failing) are still stored. Bills nothing it journals."""
        self._discarding = True

    def record(self, activation: Activation) -> None:
        """Journal one record before its answer is sent: the only work metering does per call."""
        journal = self.journal
        if journal is not None and journal.append(activation) and self.folder is not None:
            return  # the folder stores and counts it
        self._append(activation)  # no journal, not journaled (disk full), or stored from here
        if self.stats is not None:
            self.stats.observe(activation)

    def next_flush_in(self) -> float:
        """What is left of ``fold_interval_s`` since the last flush while a folder stores the
        records from the journal; ``interval_s`` while records go to memory (no folder or no
        journal, or its write fails), where a killed gateway would lose them. (The wait under way
        when the journal starts failing still ends at ``fold_interval_s``.)"""
        if self._in_memory():
            return self.interval_s
        return max(0.0, self._flushed_at + self.fold_interval_s - time.monotonic())

    def flush_due(self) -> bool:
        return self._in_memory() or self.next_flush_in() <= 0.0

    def _in_memory(self) -> bool:
        """Records wait in memory, not (only) in the journal for the folder."""
        journal = self.journal
        return self.folder is None or journal is None or journal.failing or bool(self._pending)

    def reject(self, function: str, at: float) -> None:
        """Count one 429 of ``function`` at ``at`` (epoch s) in its minute: 125.0 -> minute 120."""
        self._rejections[(function, int(at // 60) * 60)] += 1

    async def flush(self) -> None:
        self._flushed_at = time.monotonic()
        await self._flush_rejections()
        if self.folder is not None and self.journal is not None:
            finished = self.journal.rotate()
            if self._discarding:
                for path in finished:
                    path.unlink(missing_ok=True)
            else:  # returns once every segment finished so far is stored (or kept for the next flush)
                await self.folder.fold(finished)
            if self._pending:
                await self._store_pending([])
            return
        if not self._pending:
            return
        await self._store_pending(self.journal.rotate() if self.journal is not None else [])

    async def _store_pending(self, finished: list[Path]) -> None:
        self._finished_segments.extend(finished)
        batch, self._pending = self._pending, []
        try:
            await asyncio.to_thread(self.store.add_activations, batch)
        except Exception:
            log.exception("writing %d activation records failed; keeping them for the next flush", len(batch))
            self._pending[:0] = batch
            return
        # Every record of the finished segments is in this batch or an earlier stored one.
        segments, self._finished_segments = self._finished_segments, []
        for path in segments:
            path.unlink(missing_ok=True)

    async def _flush_rejections(self) -> None:
        if not self._rejections:
            return
        counts, self._rejections = self._rejections, Counter()
        try:
            await asyncio.to_thread(self.store.add_rejections, counts)
        except Exception:
            log.exception("writing %d rejection counts failed; keeping them for the next flush", len(counts))
            self._rejections.update(counts)
