"""Usage sums in the SQLite store, priced by tidal.metering.usage; filtered activation listings;
instance lives from start to stop (and those a killed gateway left open)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from services import STORE_KINDS, open_test_store
from tidal.metering.prices import PriceSheet
from tidal.metering.usage import usage_report
from tidal.store import Activation, SQLiteStore
from tidal.store.models import InstanceLife


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """This file's contract on SQLite and on PostgreSQL."""
    yield from open_test_store(request, tmp_path)


DAY = 86_400.0
T0 = 20_000 * DAY  # 2024-10-04 00:00 UTC


def call(number: int, start: float, **fields: object) -> Activation:
    base = Activation(
        id=f"a{number}", function="echo", revision="echo-00001", instance="i1", start=start,
        duration_ms=5.0, billed_ms=4, memory_mb=1024, cold=False, status="ok", http_status=200,
    )  # fmt: skip
    return msgspec.structs.replace(base, **fields)


@pytest.fixture
def loaded(store: SQLiteStore) -> SQLiteStore:
    store.add_activations(
        [
            call(1, T0 + 10, billed_ms=1000),  # 1 GB x 1 s = 1 GB-s
            call(2, T0 + 20, billed_ms=500, memory_mb=512, status="error", key_id="k1"),  # 0.25 GB-s
            call(
                3,
                T0 + DAY + 5,
                function="gpu",
                revision="gpu-00001",
                billed_ms=2000,
                gpus=0.5,
                key_id="k1",
                instance="i2",
            ),  # 2 GB-s, 1 GPU-s
            call(4, T0 + 2 * DAY, billed_ms=7),  # outside [T0, T0 + 2 days)
        ]
    )
    return store


def test_sums_by_function_are_priced_and_totalled(loaded: SQLiteStore) -> None:
    groups = loaded.usage_sums(T0, T0 + 2 * DAY, "function")
    report = usage_report(
        groups, PriceSheet(gb_s=0.01, request=1_000_000.0, gpu_s=2.0), "function", T0, T0 + 1
    )
    rows = {row["key"]: row for row in report["rows"]}  # type: ignore[attr-defined]
    assert rows["echo"] == {"key": "echo", "requests": 2, "errors": 1, "billed_ms": 1500, "gb_s": 1.25,
                            "gpu_s": 0.0, "cost": pytest.approx(2 + 0.0125)}  # fmt: skip
    assert rows["gpu"]["gpu_s"] == 1.0 and rows["gpu"]["gb_s"] == 2.0
    assert rows["gpu"]["cost"] == pytest.approx(1 + 0.02 + 2.0)
    assert [row["key"] for row in report["rows"]] == ["gpu", "echo"]  # type: ignore[attr-defined]
    total = report["total"]
    assert total["requests"] == 3 and total["billed_ms"] == 3500  # type: ignore[index]
    assert total["cost"] == pytest.approx(3 + 0.0325 + 2.0)  # type: ignore[index]


@pytest.mark.parametrize(
    ("by", "keys"),
    [
        ("revision", {"echo-00001": 1500, "gpu-00001": 2000}),
        ("key", {"": 1000, "k1": 2500}),
        ("day", {"2024-10-04": 1500, "2024-10-05": 2000}),
    ],
)
def test_sums_by_revision_key_and_utc_day(loaded: SQLiteStore, by: str, keys: dict[str, int]) -> None:
    groups = loaded.usage_sums(T0, T0 + 2 * DAY, by)
    assert {group.key: group.billed_ms for group in groups} == keys


def test_an_unknown_grouping_is_refused(loaded: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="expected one of function, revision, key, day"):
        loaded.usage_sums(0, 1, "colour")


def test_activations_filter_by_status_and_since(loaded: SQLiteStore) -> None:
    assert [a.id for a in loaded.find_activations("echo", 10)] == ["a4", "a2", "a1"]
    assert [a.id for a in loaded.find_activations("echo", 10, ["error", "timeout"])] == ["a2"]
    assert [a.id for a in loaded.find_activations("echo", 10, (), since=T0 + 15)] == ["a4", "a2"]
    assert [a.id for a in loaded.find_activations("echo", 1)] == ["a4"]
    assert loaded.first_activity() == T0 + 10


def test_lives_start_stop_and_overlap_a_window(store: SQLiteStore) -> None:
    started = [
        InstanceLife("i1", "echo", "echo-00001", 128, 0.0, T0),
        InstanceLife("i2", "echo", "echo-00001", 128, 0.0, T0 + 50),
    ]
    store.add_instance_lives(started, [("i1", T0 + 30)])
    store.add_instance_lives(
        [], [("i1", T0 + 99), ("unknown", T0)]
    )  # a stop is kept once; unknown ids are ignored
    assert store.instance_lives(T0 + 40, T0 + 60) == [started[1]]  # i1 stopped at 30
    assert [life.stopped for life in store.instance_lives(T0, T0 + 60)] == [T0 + 30, 0.0]
    store.add_activations([call(9, T0 + 60, instance="i2", duration_ms=2500.0)])
    assert store.busy_ms(T0, T0 + 100) == {"i2": 4}
    # A gateway killed with i2 running: it closes at the end of its last call, the least it lived.
    assert store.close_open_lives() == 1
    assert store.instance_lives(T0, T0 + 100)[1].stopped == pytest.approx(T0 + 62.5)
    assert store.close_open_lives() == 0


def test_an_id_named_twice_in_one_batch_keeps_its_last_record(store: SQLiteStore) -> None:
    """A segment folded again after a crash can repeat a record: one row per id, the last one's."""
    first, again = call(1, T0 + 1, billed_ms=3), call(1, T0 + 1, billed_ms=9, status="error")
    store.add_activations([first, call(2, T0 + 2), again, call(3, T0 + 3)])  # 4 rows: one statement
    assert store.activation("a1") == again
    assert sorted(activation.id for activation in store.activations("echo", limit=10)) == ["a1", "a2", "a3"]
