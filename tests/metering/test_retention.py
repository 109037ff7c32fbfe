"""Retention with a virtual clock: what a sweep at a given moment leaves, and what survives a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import activation
from tidal.metering.retention import (
    DAY_S,
    DEFAULT_MAX_ROWS,
    DEFAULT_RETENTION,
    DEFAULT_RETENTION_S,
    Retention,
    RetentionPolicy,
    Sweep,
    plan_sweep,
)
from tidal.spec import parse_duration
from tidal.store import SQLiteStore
from tidal.store.models import InstanceLife

NOW = 100 * DAY_S  # a virtual "now", in epoch seconds


def test_the_defaults_are_a_week_and_a_million_rows() -> None:
    assert parse_duration(DEFAULT_RETENTION) == DEFAULT_RETENTION_S == 7 * DAY_S
    assert RetentionPolicy() == RetentionPolicy(7 * DAY_S, DEFAULT_MAX_ROWS)
    assert DEFAULT_MAX_ROWS == 1_000_000


@pytest.mark.parametrize(
    ("policy", "sweep"),
    [
        (RetentionPolicy(7 * DAY_S, 1000), Sweep(before=93 * DAY_S, keep_newest=1000)),
        (RetentionPolicy(0, 1000), Sweep(before=0.0, keep_newest=1000)),  # no age limit
        (RetentionPolicy(7 * DAY_S, 0), Sweep(before=93 * DAY_S, keep_newest=0)),  # no row limit
        (RetentionPolicy(200 * DAY_S, 5), Sweep(before=0.0, keep_newest=5)),  # older than the epoch
    ],
)
def test_the_plan_is_a_function_of_the_policy_and_the_clock(policy: RetentionPolicy, sweep: Sweep) -> None:
    assert plan_sweep(policy, NOW) == sweep


async def test_a_sweep_deletes_what_is_past_the_retention_and_the_row_cap(store: SQLiteStore) -> None:
    ages_in_days = [30, 8, 7.5, 6, 3, 2, 1, 0.5, 0.1]
    store.add_activations(activation(n, NOW - age * DAY_S) for n, age in enumerate(ages_in_days))
    store.add_scaling_event("echo", "echo-00001", NOW - 8 * DAY_S, 0, 1, "demand")
    store.add_scaling_event("echo", "echo-00001", NOW - 1 * DAY_S, 1, 0, "idle")
    store.add_rejections({("echo", int(NOW - 9 * DAY_S) // 60 * 60): 40, ("echo", int(NOW) // 60 * 60): 3})
    ended, running = (InstanceLife(f"i{n}", "echo", "echo-00001", 128, 0.0, NOW - 9 * DAY_S, stop)
                      for n, stop in enumerate([NOW - 8 * DAY_S, 0.0]))  # fmt: skip
    store.add_instance_lives([ended, running], [])
    retention = Retention(store, RetentionPolicy(7 * DAY_S, max_rows=4), batch=2)

    deleted = await retention.sweep(NOW)

    counts = {"activations": 5, "scaling events": 1, "rejection counts": 1, "shadow results": 0,
              "instance lives": 1, "jobs": 0}  # fmt: skip
    assert deleted == counts
    remaining = sorted(round((NOW - item.start) / DAY_S, 1) for item in store.activations("echo"))
    assert remaining == [0.1, 0.5, 1, 2]  # the newest four, all within the week
    assert [event["reason"] for event in store.scaling_events("echo")] == ["idle"]
    assert [row["count"] for row in store.rejections("echo", since=0)] == [3]
    again = await retention.sweep(NOW)
    assert again == dict.fromkeys(counts, 0)


class VirtualMachineSteps:
    """Counts the bytecode steps SQLite runs on ``store``'s connection (a progress handler every
    ``every`` steps): work measured without a clock, the same on every run."""

    def __init__(self, store: SQLiteStore, every: int = 100) -> None:
        self.every, self.ticks = every, 0
        store._db.set_progress_handler(self._tick, every)

    def _tick(self) -> int:
        self.ticks += 1
        return 0  # 0: go on

    @property
    def steps(self) -> int:
        return self.ticks * self.every


async def test_a_sweep_walks_past_the_kept_rows_once_not_once_a_batch(store: SQLiteStore) -> None:
    """At the row cap every sweep deletes what arrived since the last one. Finding the cap's edge
    steps through the newest max_rows rows (a million by default); done once a batch, a sweep of
    twenty batches stepped through them twenty-one times."""
    kept, arrived = 50_000, 1000
    store.add_activations(activation(n, NOW - 60_000 + n) for n in range(kept + arrived))
    vm = VirtualMachineSteps(store)
    store.activations_cutoff(0.0, keep_newest=kept)
    walk, vm.ticks = vm.steps, 0

    deleted = await Retention(store, RetentionPolicy(0, max_rows=kept), batch=50).sweep(NOW)

    assert deleted["activations"] == arrived  # twenty batches
    assert store.activations_cutoff(0.0, keep_newest=kept) == (0.0, -(2**63))  # none beyond the cap
    assert walk >= kept  # a step or more for each kept row
    # One walk and the deletes (about 110 steps a row) come to about 2 walks here; a walk for each
    # batch would be 21 walks.
    assert vm.steps < 3 * walk


async def test_a_day_later_the_next_day_goes(store: SQLiteStore) -> None:
    store.add_activations(activation(n, NOW - age * DAY_S) for n, age in enumerate([6.5, 5]))
    retention = Retention(store, RetentionPolicy(7 * DAY_S, 0))

    assert (await retention.sweep(NOW))["activations"] == 0
    assert (await retention.sweep(NOW + DAY_S))["activations"] == 1
    assert len(store.activations("echo")) == 1


async def test_old_log_files_go_unless_a_process_still_writes_them(
    tmp_path: Path, store: SQLiteStore
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    paths = {name: logs / name for name in ("gone.log", "gone.log.1", "live.log", "recent.log")}
    for name, path in paths.items():
        path.write_text(name)
        age = 1 * DAY_S if name == "recent.log" else 8 * DAY_S
        os.utime(path, (NOW - age, NOW - age))
    retention = Retention(
        store, RetentionPolicy(7 * DAY_S, 0), log_dirs=[logs], open_logs=lambda: {paths["live.log"]}
    )

    assert (await retention.sweep(NOW))["log files"] == 2
    assert sorted(path.name for path in logs.iterdir()) == ["live.log", "recent.log"]


class BrokenEvents:
    """A store whose scaling events cannot be deleted: the other records must still go."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def delete_scaling_events(self, before: float, batch: int) -> int:
        raise OSError("disk I/O error")


async def test_one_failing_kind_does_not_stop_the_others(store: SQLiteStore, caplog) -> None:  # type: ignore[no-untyped-def]
    store.add_activations([activation(1, NOW - 30 * DAY_S)])
    retention = Retention(BrokenEvents(store), RetentionPolicy(7 * DAY_S, 0))  # type: ignore[arg-type]

    deleted = await retention.sweep(NOW)

    assert deleted["activations"] == 1 and deleted["scaling events"] == 0
    assert "deleting old scaling events failed" in caplog.text
