"""429s are counted per function and minute, and written as one row per minute, not one per request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tidal.metering.recorder import ActivationRecorder
from tidal.store.models import Activation


class CountingStore:
    def __init__(self, fail_first: bool = False) -> None:
        self.activation_batches: list[list[Activation]] = []
        self.rejection_batches: list[dict[tuple[str, int], int]] = []
        self.fail_first = fail_first

    def add_activations(self, activations: Iterable[Activation]) -> None:
        self.activation_batches.append(list(activations))

    def add_rejections(self, counts: Mapping[tuple[str, int], int]) -> None:
        if self.fail_first:
            self.fail_first = False
            raise OSError("database is locked")
        self.rejection_batches.append(dict(counts))


async def test_an_overload_becomes_one_row_per_function_and_minute() -> None:
    store = CountingStore()
    recorder = ActivationRecorder(store)  # type: ignore[arg-type]
    for second in range(100_000):
        recorder.reject("tight", 6000.0 + second % 60)  # 100,000 refusals within minute 6000
    recorder.reject("tight", 6061.0)
    recorder.reject("other", 6001.0)

    await recorder.flush()

    assert store.rejection_batches == [{("tight", 6000): 100_000, ("tight", 6060): 1, ("other", 6000): 1}]
    assert store.activation_batches == []  # not one activation row
    await recorder.flush()
    assert len(store.rejection_batches) == 1  # nothing new, nothing written


async def test_counts_that_failed_to_write_are_kept_for_the_next_flush() -> None:
    store = CountingStore(fail_first=True)
    recorder = ActivationRecorder(store)  # type: ignore[arg-type]
    recorder.reject("tight", 60.0)
    await recorder.flush()
    recorder.reject("tight", 61.0)
    await recorder.flush()
    assert store.rejection_batches == [{("tight", 60): 2}]
