"""Batching inside an instance: concurrent invocations gathered into one call of a list-taking function.

Each request still arrives as its own Invoke frame and gets its own answer; only the user's
function sees a list. One gatherer task per instance takes waiting items, asks the pure policy
(``tidal.runtime.batching_policy``) how much longer to wait, then runs one batch at a time (the
next one gathers meanwhile) and hands each item its own output. Invariants:

- a request cancelled (client gone, deadline past) while it waits never enters a batch; one
  cancelled during its batch's call lets the call finish for the others;
- an exception raised by the call fails every item of that batch; an exception *instance* returned
  in an item's place (``tidal.ItemError``) fails only that item;
- a return that is not a list of exactly one output per input fails the whole batch (BatchError).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tidal.runtime import capture
from tidal.runtime.batching_policy import BatchSettings, ServiceTimeModel, wait_s
from tidal.sdk.errors import InputError

BATCH_SIZE_HEADER = "x-tidal-batch-size"


class BatchConfig(msgspec.Struct, frozen=True):
    """The spec's ``batch`` as the instance receives it (tidal.spec.BatchSpec's fields)."""

    max_size: int
    max_wait_ms: float = 10.0
    target_p99_ms: float | None = None

    def settings(self) -> BatchSettings:
        target = self.target_p99_ms / 1000 if self.target_p99_ms is not None else None
        return BatchSettings(self.max_size, self.max_wait_ms / 1000, target)


class BatchError(Exception):
    """The batched function broke the contract: one output per input, in a list."""


@dataclass
class Item:
    """One request waiting in, or running in, a batch."""

    argument: Any  # the decoded body
    context: Any  # its tidal.Context, when the function takes one
    arrived: float  # on the gatherer's clock
    future: asyncio.Future[Done] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class Done:
    """What an item's request gets back: its output (or exception instance) and its batch's facts."""

    output: Any
    batch_size: int
    cpu_s: float  # the batch's CPU time, shared out evenly
    logs: str  # what the batch call printed (every item of the batch sees it)
    raised: bool = False  # ``output`` is the exception the whole call raised (or a BatchError)


# Runs the user's function on (inputs, contexts); returns its raw return value and its CPU seconds.
CallBatch = Callable[[list[Any], list[Any]], Coroutine[Any, Any, tuple[Any, float]]]


class Batcher:
    """Gathers items and runs them through ``call_batch`` one batch at a time."""

    def __init__(
        self, settings: BatchSettings, call_batch: CallBatch, clock: Callable[[], float] = time.monotonic
    ):
        self.settings = settings
        self.call_batch = call_batch
        self.clock = clock
        self.model = ServiceTimeModel()
        self.waiting: collections.deque[Item] = collections.deque()
        self.joined = asyncio.Event()
        self.calls = 0
        self.running = False  # a batch call is in progress (its thread may outlive a timeout)
        self.task = asyncio.get_running_loop().create_task(self.gather_forever())

    async def submit(self, argument: Any, context: Any = None) -> Done:
        """Wait in the next batch; cancelling this leaves the batch (or its result) to the others."""
        item = Item(argument, context, self.clock())
        self.waiting.append(item)
        self.joined.set()
        return await item.future

    def _live(self) -> int:
        """Drop items whose requests went away; the count of those still waiting."""
        if any(item.future.done() for item in self.waiting):
            self.waiting = collections.deque(item for item in self.waiting if not item.future.done())
        return len(self.waiting)

    async def gather_forever(self) -> None:
        while True:
            while not self._live():
                self.joined.clear()
                await self.joined.wait()
            await self._gather()
            batch = [self.waiting.popleft() for _ in range(min(self.settings.max_size, self._live()))]
            if batch:
                await self._run(batch)

    async def _gather(self) -> None:
        """Wait while the policy says so; each new item asks again (it may start the batch sooner)."""
        while (queued := self._live()) > 0:
            delay = wait_s(self.settings, self.model, self.clock(), self.waiting[0].arrived, queued)
            if delay <= 0:
                return
            self.joined.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.joined.wait(), delay)

    async def _run(self, batch: list[Item]) -> None:
        buffer = capture.LogBuffer()
        context = contextvars.copy_context()
        context.run(capture.current_buffer.set, buffer)  # the batch's prints, for each of its items
        started = self.clock()
        self.running, self.calls = True, self.calls + 1
        try:
            task = asyncio.get_running_loop().create_task(
                self.call_batch([item.argument for item in batch], [item.context for item in batch]),
                context=context,
            )
            returned, cpu_s = await task
            outputs = check_outputs(returned, len(batch))
        except Exception as exc:  # every item fails; the traceback is logged once, not once per item
            if not isinstance(exc, InputError | BatchError):
                traceback.print_exc(file=sys.stderr)
            for item in batch:
                if not item.future.done():
                    item.future.set_result(Done(exc, len(batch), 0.0, capture.collected(buffer), raised=True))
            return
        finally:
            self.running = False
        self.model = self.model.observe(len(batch), self.clock() - started)
        logs = capture.collected(buffer)
        for item, output in zip(batch, outputs, strict=True):
            if not item.future.done():
                item.future.set_result(Done(output, len(batch), cpu_s / len(batch), logs))


def check_outputs(returned: Any, size: int) -> list[Any]:
    """The outputs of a batch of ``size``, or BatchError saying how the return broke the contract."""
    if not isinstance(returned, list | tuple):
        raise BatchError(
            f"a batched function must return a list (one output per input), not {type(returned).__name__}"
        )
    if len(returned) != size:
        raise BatchError(
            f"the batched function returned {len(returned)} outputs for a batch of {size} inputs:"
            " return one output per input, in order"
        )
    return list(returned)
