"""Serverless vs reserved, with numbers worked by hand.

Window [0, 100) s; prices 0.01 per GB-s, nothing per request, 1.0 per GPU-s.
- "api": instance a1 lives 0..50 s, a2 25..100 s, 1024 MiB each (two at once from 25 to 50 s);
  a1 billed 10 s of calls, a2 30 s. Alive 50 + 75 = 125 s, busy 40 s, idle 85 s = 85 GB-s.
  Reserved: peak 2 instances = 2 GB x 100 s x 0.01 = 2.00.
- "gpu": g1 started at 90 s, still running (open: counts to 100), 512 MiB and half a GPU, no call.
  Alive and idle 10 s: 5 GB-s and 5 GPU-s. Reserved: 0.5 GB x 100 s x 0.01 + 0.5 GPU x 100 s x 1.0
  = 0.5 + 50 = 50.50.
- "old": o1 lived -50..10 s: only 10 s fall in the window, 256 MiB, billed 20 s of calls (more than
  it lived in the window: capped at 10). Reserved: 0.25 GB x 100 x 0.01 = 0.25.
"""

from __future__ import annotations

import pytest

from tidal.metering.prices import PriceSheet
from tidal.metering.reserved import FunctionPeak, peaks, reserved_report
from tidal.store.models import InstanceLife

PRICES = PriceSheet(gb_s=0.01, request=0.0, gpu_s=1.0)
LIVES = [
    InstanceLife("a1", "api", "api-00001", 1024, 0.0, 0.0, 50.0),
    InstanceLife("a2", "api", "api-00001", 1024, 0.0, 25.0, 100.0),
    InstanceLife("g1", "gpu", "gpu-00001", 512, 0.5, 90.0, 0.0),
    InstanceLife("o1", "old", "old-00001", 256, 0.0, -50.0, 10.0),
]
BUSY_MS = {"a1": 10_000, "a2": 30_000, "o1": 20_000}


def test_the_report_matches_the_hand_computed_numbers() -> None:
    report = reserved_report(LIVES, BUSY_MS, billed_cost=1.25, since=0.0, until=100.0, prices=PRICES)

    assert report.window_s == 100.0
    assert report.instance_s == pytest.approx(125 + 10 + 10)
    assert report.busy_s == pytest.approx(40 + 0 + 10)
    assert report.idle_s == pytest.approx(85 + 10 + 0)
    assert report.idle_gb_s == pytest.approx(85 * 1.0 + 10 * 0.5)
    assert report.idle_gpu_s == pytest.approx(5.0)
    assert report.idle_cost == pytest.approx(90 * 0.01 + 5 * 1.0)
    assert report.functions == [
        FunctionPeak("api", 2, 2048, 0.0, pytest.approx(2.0)),  # type: ignore[arg-type]
        FunctionPeak("gpu", 1, 512, 0.5, pytest.approx(50.5)),  # type: ignore[arg-type]
        FunctionPeak("old", 1, 256, 0.0, pytest.approx(0.25)),  # type: ignore[arg-type]
    ]
    assert report.reserved_cost == pytest.approx(52.75)
    assert report.savings == pytest.approx(52.75 - 1.25)
    assert report.as_json()["functions"][0]["function"] == "api"  # type: ignore[index]


def test_an_instance_replaced_at_the_same_instant_is_not_two_at_a_time() -> None:
    back_to_back = [
        InstanceLife("x1", "f", "f-1", 128, 0.0, 0.0, 10.0),
        InstanceLife("x2", "f", "f-1", 128, 0.0, 10.0, 20.0),
    ]
    assert peaks(back_to_back, 0.0, 100.0) == (1, 128, 0.0)


def test_no_instances_means_nothing_reserved_and_no_overhead() -> None:
    report = reserved_report([], {}, billed_cost=0.5, since=10.0, until=70.0, prices=PRICES)
    assert (report.reserved_cost, report.idle_s, report.functions) == (0.0, 0.0, [])
    assert report.savings == -0.5  # serverless billed something, reserved nothing (no instance seen)
