"""The batching policy, driven by synthetic service-time models on a virtual clock (no sleeps)."""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable

import pytest

from tidal.runtime.batching_policy import (
    BUDGET_SHARE,
    BatchSettings,
    ServiceTimeModel,
    start_by,
    wait_s,
)

ServiceTime = Callable[[int], float]


def simulate(
    settings: BatchSettings, service: ServiceTime, arrivals: list[float]
) -> tuple[list[float], list[int]]:
    """One instance running one batch at a time under the policy: each request's latency, each batch's size."""
    model = ServiceTimeModel()
    waiting: collections.deque[float] = collections.deque()
    latencies: list[float] = []
    sizes: list[int] = []
    upcoming = collections.deque(arrivals)
    now = 0.0
    while upcoming or waiting:
        if not waiting:
            now = max(now, upcoming[0])
        while upcoming and upcoming[0] <= now:
            waiting.append(upcoming.popleft())
        while len(waiting) < settings.max_size:
            start = start_by(settings, model, waiting[0], len(waiting))
            if start <= now:
                break
            if upcoming and upcoming[0] < start:  # an item joins before the deadline: ask again
                now = upcoming[0]
                waiting.append(upcoming.popleft())
            else:
                now = start
                break
        batch = [waiting.popleft() for _ in range(min(settings.max_size, len(waiting)))]
        duration = service(len(batch))
        model = model.observe(len(batch), duration)
        now += duration
        latencies.extend(now - arrived for arrived in batch)
        sizes.append(len(batch))
    return latencies, sizes


def poisson(rate_per_s: float, count: int, seed: int = 7) -> list[float]:
    draw = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        now += draw.expovariate(rate_per_s)
        times.append(now)
    return times


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def noisy(base: ServiceTime, spread: float, seed: int = 3) -> ServiceTime:
    draw = random.Random(seed)
    return lambda size: base(size) * draw.uniform(1 - spread, 1 + spread)


def cpu_minilm(size: int) -> float:
    return 0.002 + 0.0055 * size  # about 175 items/s at batch 32, as measured on 2 cores


def gpu_bert(size: int) -> float:
    return 0.004 + 0.00012 * size  # launch-bound at batch 1, about 7,500 items/s at 32


def test_fixed_mode_waits_max_wait_then_runs_what_it_has() -> None:
    settings = BatchSettings(max_size=8, max_wait_s=0.010)
    assert start_by(settings, ServiceTimeModel(), oldest_arrival=5.0, queued=1) == pytest.approx(5.010)
    assert start_by(settings, ServiceTimeModel(), oldest_arrival=5.0, queued=8) == 5.0  # full: now
    latencies, sizes = simulate(settings, cpu_minilm, [1.0])  # a lone request
    assert sizes == [1] and latencies[0] == pytest.approx(0.010 + cpu_minilm(1))


def test_fixed_mode_never_exceeds_max_size() -> None:
    _, sizes = simulate(BatchSettings(max_size=4, max_wait_s=0.05), cpu_minilm, poisson(400, 400))
    assert max(sizes) == 4 and sum(sizes) == 400


def test_the_model_recovers_a_line_and_is_cautious_with_one_size() -> None:
    model = ServiceTimeModel()
    for size in [1, 4, 16, 32] * 5:
        model = model.observe(size, gpu_bert(size))
    intercept, slope = model.line()
    assert intercept == pytest.approx(0.004, rel=1e-6) and slope == pytest.approx(0.00012, rel=1e-6)
    only_ones = ServiceTimeModel()
    for _ in range(5):
        only_ones = only_ones.observe(1, 0.010)
    assert only_ones.predict(1) == pytest.approx(0.010)
    assert only_ones.predict(4) == pytest.approx(0.040)  # proportional: no fixed cost assumed
    assert (
        not ServiceTimeModel().measured
        and wait_s(BatchSettings(8, 0.01, 0.1), ServiceTimeModel(), 1, 1, 1) == 0
    )


@pytest.mark.parametrize(
    ("name", "service", "rate", "target_s"),
    [
        ("cpu MiniLM, moderate load", cpu_minilm, 120, 0.150),
        ("cpu MiniLM, light load", cpu_minilm, 10, 0.050),
        ("gpu BERT, heavy load", gpu_bert, 5000, 0.050),
        ("gpu BERT, light load", gpu_bert, 50, 0.020),
    ],
)
def test_adaptive_waits_meet_the_target(
    name: str, service: ServiceTime, rate: float, target_s: float
) -> None:
    settings = BatchSettings(max_size=64, max_wait_s=0.010, target_s=target_s)
    arrivals = poisson(rate, 3000)
    latencies, sizes = simulate(settings, noisy(service, 0.15), arrivals)
    assert p99(latencies) <= target_s, (
        f"{name}: p99 {p99(latencies) * 1000:.1f} ms over {target_s * 1000:g} ms"
    )
    assert sum(sizes) == len(arrivals)


def test_adaptive_gathers_bigger_batches_than_a_short_fixed_wait_within_the_target() -> None:
    """Under load, waiting as long as the target allows buys batch size, which buys throughput."""
    arrivals = poisson(120, 3000)
    adaptive_latencies, adaptive = simulate(BatchSettings(64, 0.010, target_s=0.200), cpu_minilm, arrivals)
    _, fixed = simulate(BatchSettings(64, 0.001), cpu_minilm, arrivals)
    assert p99(adaptive_latencies) <= 0.200
    assert sum(adaptive) / len(adaptive) > sum(fixed) / len(fixed)


def test_adaptive_starts_at_once_when_the_target_leaves_no_room() -> None:
    model = ServiceTimeModel()
    for _ in range(3):
        model = model.observe(1, 0.045)
    settings = BatchSettings(max_size=32, max_wait_s=0.010, target_s=0.050)  # budget 40 ms < 90 ms for 2
    assert wait_s(settings, model, now=1.0, oldest_arrival=1.0, queued=1) == 0.0
    roomy = BatchSettings(max_size=32, max_wait_s=0.010, target_s=1.0)
    # budget 800 ms, two items would take 90 ms: wait up to 710 ms after the oldest arrived
    assert wait_s(roomy, model, now=1.0, oldest_arrival=1.0, queued=1) == pytest.approx(
        BUDGET_SHARE * 1.0 - 0.090
    )
