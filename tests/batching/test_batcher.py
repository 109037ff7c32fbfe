"""The instance's gatherer with a fake batched call: sizes, cancellation, the contract on returns."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidal.runtime.batching import Batcher, BatchError, check_outputs
from tidal.runtime.batching_policy import BatchSettings


class Recorder:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[list[Any]] = []
        self.delay_s = delay_s

    async def __call__(self, inputs: list[Any], contexts: list[Any]) -> tuple[Any, float]:
        self.calls.append(list(inputs))
        await asyncio.sleep(self.delay_s)
        return [value * 10 for value in inputs], 0.004


async def test_items_gathered_up_to_max_size_each_get_their_own_output() -> None:
    recorder = Recorder()
    batcher = Batcher(BatchSettings(max_size=3, max_wait_s=0.05), recorder)
    done = await asyncio.gather(*(batcher.submit(n) for n in range(7)))
    assert [item.output for item in done] == [n * 10 for n in range(7)]
    assert [len(call) for call in recorder.calls] == [3, 3, 1]
    assert [item.batch_size for item in done] == [3, 3, 3, 3, 3, 3, 1]
    assert done[0].cpu_s == pytest.approx(0.004 / 3)
    batcher.task.cancel()


async def test_a_request_that_leaves_while_waiting_never_enters_a_batch() -> None:
    recorder = Recorder()
    batcher = Batcher(BatchSettings(max_size=8, max_wait_s=0.05), recorder)
    leaving = asyncio.ensure_future(batcher.submit(1))
    staying = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.01)
    leaving.cancel()
    assert (await staying).output == 20
    assert recorder.calls == [[2]]
    batcher.task.cancel()


async def test_a_batch_runs_while_the_next_gathers_and_the_model_learns() -> None:
    recorder = Recorder(delay_s=0.03)
    batcher = Batcher(BatchSettings(max_size=4, max_wait_s=0.0, target_s=0.5), recorder)
    first = asyncio.ensure_future(batcher.submit(0))  # nothing measured: starts at once, alone
    await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(batcher.submit(n)) for n in range(1, 5)]  # gather during the call
    await asyncio.gather(first, *rest)
    assert [len(call) for call in recorder.calls] == [1, 4]
    assert batcher.model.measured and batcher.calls == 2
    batcher.task.cancel()


def test_the_return_contract() -> None:
    assert check_outputs((1, 2), 2) == [1, 2]
    with pytest.raises(BatchError, match="returned 1 outputs for a batch of 2 inputs"):
        check_outputs([1], 2)
    with pytest.raises(BatchError, match=r"must return a list .* not dict"):
        check_outputs({"a": 1}, 1)
