"""Serverless vs reserved: what tidal billed for some traffic, against what always-on instances
sized for that traffic's observed peak would have cost over the same window; and tidal's own
overhead, the instance-seconds it kept warm with no work. Pure: the window and the prices are
arguments, the lives and busy times come from the store.

Sizing: per function, the most memory (and GPUs, and instances) its instances held at one moment
of the window. Reserved capacity bills that peak for the whole window at the same GB-s and GPU-s
prices (no request charge: a reserved server does not bill per call). Example: one function whose
two 1 GiB instances overlapped once, over 100 s at 0.01 per GB-s: 2 GB x 100 s x 0.01 = 2.00.

Idle: an instance's life in the window minus the billed time of its calls (capped at its life: with
``concurrency`` above 1, overlapping calls are each billed in full). A life still open counts up
to the window's end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from tidal.metering.prices import PriceSheet
from tidal.store.models import InstanceLife

MB_PER_GB = 1024
MS_PER_S = 1000


@dataclass(frozen=True)
class FunctionPeak:
    function: str
    peak_instances: int
    peak_memory_mb: int
    peak_gpus: float
    reserved_cost: float  # the peak kept running for the whole window


@dataclass(frozen=True)
class ReservedReport:
    window_s: float
    billed_cost: float  # what tidal billed (usage total) for the window
    reserved_cost: float  # always-on instances sized for each function's peak
    savings: float  # reserved - billed: positive when serverless was cheaper
    instance_s: float  # instance-seconds alive in the window
    busy_s: float  # of which billed to calls
    idle_s: float  # kept warm with no work: tidal's overhead
    idle_gb_s: float
    idle_gpu_s: float
    idle_cost: float  # the idle GB-s and GPU-s at the sheet's prices
    functions: list[FunctionPeak] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def clipped(life: InstanceLife, since: float, until: float) -> tuple[float, float]:
    """The part of ``life`` inside [since, until) (start == end when none): an open life (stopped 0)
    runs to ``until``."""
    end = until if life.stopped == 0 else min(life.stopped, until)
    start = max(life.started, since)
    return start, max(start, end)


def peaks(lives: Iterable[InstanceLife], since: float, until: float) -> tuple[int, int, float]:
    """The most instances, MB and GPUs alive at one moment. Stops sort before starts at the same
    instant: an instance replaced at once is not two at a time."""
    events: list[tuple[float, int, int, int, float]] = []  # (time, order, instances, mb, gpus)
    for life in lives:
        start, end = clipped(life, since, until)
        if end > start:
            events.append((start, 1, 1, life.memory_mb, life.gpus))
            events.append((end, 0, -1, -life.memory_mb, -life.gpus))
    events.sort(key=lambda event: (event[0], event[1]))
    instances = mb = peak_instances = peak_mb = 0
    gpus = peak_gpus = 0.0
    for _, _, d_instances, d_mb, d_gpus in events:
        instances, mb, gpus = instances + d_instances, mb + d_mb, gpus + d_gpus
        peak_instances, peak_mb, peak_gpus = (
            max(peak_instances, instances),
            max(peak_mb, mb),
            max(peak_gpus, gpus),
        )
    return peak_instances, peak_mb, peak_gpus


def reserved_report(
    lives: list[InstanceLife],
    busy_ms: Mapping[str, int],
    billed_cost: float,
    since: float,
    until: float,
    prices: PriceSheet,
) -> ReservedReport:
    """Compare ``billed_cost`` (what tidal billed in [since, until)) with reserved capacity for
    the ``lives`` seen in it; ``busy_ms`` is the billed ms per instance id."""
    window_s = max(0.0, until - since)
    instance_s = busy_s = idle_s = idle_gb_s = idle_gpu_s = 0.0
    by_function: dict[str, list[InstanceLife]] = {}
    for life in lives:
        start, end = clipped(life, since, until)
        alive = end - start
        busy = min(alive, busy_ms.get(life.id, 0) / MS_PER_S)
        instance_s += alive
        busy_s += busy
        idle_s += alive - busy
        idle_gb_s += (alive - busy) * life.memory_mb / MB_PER_GB
        idle_gpu_s += (alive - busy) * life.gpus
        by_function.setdefault(life.function, []).append(life)
    functions = []
    for function, function_lives in sorted(by_function.items()):
        peak_instances, peak_mb, peak_gpus = peaks(function_lives, since, until)
        cost = prices.cost(0, peak_mb / MB_PER_GB * window_s, peak_gpus * window_s)
        functions.append(FunctionPeak(function, peak_instances, peak_mb, peak_gpus, cost))
    reserved_cost = sum(peak.reserved_cost for peak in functions)
    return ReservedReport(
        window_s=window_s,
        billed_cost=billed_cost,
        reserved_cost=reserved_cost,
        savings=reserved_cost - billed_cost,
        instance_s=instance_s,
        busy_s=busy_s,
        idle_s=idle_s,
        idle_gb_s=idle_gb_s,
        idle_gpu_s=idle_gpu_s,
        idle_cost=prices.cost(0, idle_gb_s, idle_gpu_s),
        functions=functions,
    )
