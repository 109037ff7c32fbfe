"""A synthetic workload with the published shape of the Azure Functions 2019 trace.

Shahrad et al. (USENIX ATC 2020) report: invocation rates spread over eight orders of magnitude;
45% of applications invoked at most once an hour and 81% at most once a minute on average;
timers are about a sixth of the functions and fire periodically (most often every minute, 5, 10,
15, 30 minutes or hourly); most other functions see near-Poisson arrivals, a minority bursty ones;
half the functions run under a second on average; 90% of apps allocate at most 400 MB.

The generator draws, per function (``SyntheticShape`` documents every parameter):

- a daily rate r with log10(r) ~ Normal(1.6, 1.78), which puts 45% of functions at <= 24 calls a
  day and 81% at <= 1440 (the two published points); clipped to [``min_per_day``,
  ``max_per_second`` x 86400] so that a run stays small (the real trace reaches ~10^8 a day);
- a kind: ``timer`` (share ``timer_share``) fires every ``period`` from ``TIMER_PERIODS_S`` with a
  random phase and +-``timer_jitter_s`` of jitter; ``bursty`` (share ``bursty_share``) has gamma
  inter-arrival times with coefficient of variation ``bursty_cv``; the others are Poisson at r;
- a mean duration: lognormal with median ``duration_median_s``, sigma ``duration_sigma``
  (each call varies +-20% around it), and memory: lognormal, median ``memory_median_mb``,
  sigma ``memory_sigma``.
Same seed, same workload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tidal.simulate.traces import FunctionCalls, Trace

SECONDS_PER_DAY = 86400.0
# Timer periods and how often each is chosen (minute, 5, 10, 15, 30 min, 1, 2, 4, 6, 12, 24 h).
TIMER_PERIODS_S = (60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0, 43200.0, 86400.0)
TIMER_PERIOD_WEIGHTS = (0.25, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01)


@dataclass(frozen=True)
class SyntheticShape:
    functions: int = 200
    hours: float = 24.0
    seed: int = 1
    log10_daily_rate_mean: float = 1.6
    log10_daily_rate_std: float = 1.78
    min_per_day: float = 0.5
    max_per_second: float = 1.0
    timer_share: float = 0.16
    bursty_share: float = 0.2
    bursty_cv: float = 3.0
    timer_jitter_s: float = 1.0
    duration_median_s: float = 0.7
    duration_sigma: float = 1.2
    max_duration_s: float = 300.0
    memory_median_mb: float = 170.0
    memory_sigma: float = 0.6

    def __post_init__(self) -> None:
        if self.functions < 1:
            raise ValueError("a synthetic workload needs at least 1 function")
        if not 0 < self.hours <= 24 * 14:
            raise ValueError("synthetic hours must be more than 0 and at most two weeks (336)")
        if not 0 <= self.timer_share + self.bursty_share <= 1:
            raise ValueError("timer_share + bursty_share must be between 0 and 1")


def generate(shape: SyntheticShape) -> Trace:
    """The workload ``shape`` describes; functions named ``timer-0003``, ``poisson-0007``..."""
    rng = np.random.default_rng(shape.seed)
    span_s = shape.hours * 3600.0
    functions = []
    for index in range(shape.functions):
        daily = 10 ** rng.normal(shape.log10_daily_rate_mean, shape.log10_daily_rate_std)
        rate_per_s = min(max(daily, shape.min_per_day) / SECONDS_PER_DAY, shape.max_per_second)
        draw = rng.random()
        if draw < shape.timer_share:
            kind, starts = "timer", _timer(rng, span_s, shape.timer_jitter_s)
        elif draw < shape.timer_share + shape.bursty_share:
            kind, starts = "bursty", _renewal(rng, span_s, rate_per_s, shape.bursty_cv)
        else:
            kind, starts = "poisson", _renewal(rng, span_s, rate_per_s, 1.0)
        mean_s = min(
            shape.max_duration_s, shape.duration_median_s * math.exp(rng.normal(0, shape.duration_sigma))
        )
        durations = mean_s * rng.uniform(0.8, 1.2, starts.size)
        memory_mb = round(shape.memory_median_mb * math.exp(rng.normal(0, shape.memory_sigma)))
        functions.append(FunctionCalls(f"{kind}-{index:04d}", starts, durations, float(max(memory_mb, 32))))
    return Trace(
        functions, span_s, f"synthetic(functions={shape.functions}, hours={shape.hours:g}, seed={shape.seed})"
    )


def _timer(rng: np.random.Generator, span_s: float, jitter_s: float) -> np.ndarray:
    period = float(rng.choice(TIMER_PERIODS_S, p=TIMER_PERIOD_WEIGHTS))
    phase = rng.uniform(0, period)
    ticks = np.arange(phase, span_s, period)
    jittered = ticks + rng.uniform(-jitter_s, jitter_s, ticks.size)
    return np.sort(np.clip(jittered, 0.0, span_s))


def _renewal(rng: np.random.Generator, span_s: float, rate_per_s: float, cv: float) -> np.ndarray:
    """Arrivals with gamma inter-arrival times of mean 1/rate and the given CV (1 = Poisson)."""
    shape_k = 1.0 / (cv * cv)
    scale = 1.0 / (rate_per_s * shape_k)
    expected = span_s * rate_per_s
    starts: list[np.ndarray] = []
    clock = rng.uniform(0, 1.0 / rate_per_s) if expected < 1 else 0.0
    while clock < span_s:
        batch = max(16, int(expected * 1.2) + 16)
        arrivals = clock + np.cumsum(rng.gamma(shape_k, scale, batch))
        starts.append(arrivals)
        clock = float(arrivals[-1])
    joined = np.concatenate(starts) if starts else np.empty(0)
    return joined[joined < span_s]
