"""Replay a trace through keep-alive policies on a virtual clock.

The model (docs/keep-alive.md): per function, a call that finds an idle instance is warm; a call
that finds the template loaded but every instance busy forks one ("fork" cold start, ~9 ms); a
call that finds nothing loaded rebuilds the template ("template" cold start, seconds). While calls
run the template stays loaded; when the last one ends at e, the policy's ``windows`` (computed
from the idle-time histogram learned so far, the same call the live gateway makes) decide what
stays loaded: template + one instance over [e, e + keep_alive] or, with a pre-warm,
[e + prewarm, e + keep_alive]. Instances beyond one are dropped when the function goes idle.

Busy periods do not depend on the policy (a cold call runs as long as a warm one; the cold-start
latency is reported, not replayed), so each function is swept once into its idle gaps and busy
counts (``sweep``) and each policy only decides over the gaps (``replay``): fast enough for days of
trace in seconds.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from tidal.keepalive.policy import Fixed, KeepAlivePolicy, bounds, describe, new_histogram
from tidal.metering.prices import PriceSheet
from tidal.simulate.traces import FunctionCalls, Trace

MB_PER_GB = 1024.0
DEFAULT_TEMPLATE_MB = 400.0  # a torch MiniLM template (imports + model)
DEFAULT_TEMPLATE_COLD_MS = 3000.0  # rebuilding such a template: imports + model load
DEFAULT_FORK_MS = 9.0  # forking an instance from a warm template
DEFAULT_INSTANCE_IDLE_S = 60.0  # an extra instance idle this long goes (spec's scale_to_zero_after)


@dataclass(frozen=True)
class CostModel:
    """What loading costs: memory of a template, latency of each cold-start kind, the prices."""

    template_mb: float = DEFAULT_TEMPLATE_MB
    template_cold_ms: float = DEFAULT_TEMPLATE_COLD_MS
    fork_ms: float = DEFAULT_FORK_MS
    instance_idle_s: float = DEFAULT_INSTANCE_IDLE_S
    prices: PriceSheet = field(default_factory=PriceSheet)


@dataclass
class Sweep:
    """The policy-independent facts of one function's calls.

    ``gaps_s[i]``: the idle time before the i-th call that found the function idle (no call
    running), the first call excluded (it always rebuilds the template); ``tail_s``: idle time
    from the last end to the end of the trace.
    """

    function: FunctionCalls
    gaps_s: np.ndarray
    tail_s: float
    forks: int  # calls that found every instance busy
    busy_warm: int  # calls served by an instance left idle inside a busy period
    busy_idle_instance_s: float  # instance-seconds idle inside busy periods
    billed_gb_s: float


@dataclass
class FunctionResult:
    name: str
    invocations: int
    template_cold_starts: int
    fork_cold_starts: int
    idle_gb_s: float
    billed_gb_s: float
    kept_idle_s: float  # seconds the policy kept template + instance loaded with no call running

    @property
    def cold_starts(self) -> int:
        return self.template_cold_starts + self.fork_cold_starts

    @property
    def cold_start_pct(self) -> float:
        return 100.0 * self.cold_starts / self.invocations if self.invocations else 0.0


@dataclass
class PolicyResult:
    policy: str
    functions: list[FunctionResult]
    modes: Counter[str]  # how many idle periods each decision mode covered
    cost_model: CostModel

    @property
    def invocations(self) -> int:
        return sum(f.invocations for f in self.functions)

    @property
    def template_cold_starts(self) -> int:
        return sum(f.template_cold_starts for f in self.functions)

    @property
    def fork_cold_starts(self) -> int:
        return sum(f.fork_cold_starts for f in self.functions)

    @property
    def cold_starts(self) -> int:
        return self.template_cold_starts + self.fork_cold_starts

    @property
    def idle_gb_s(self) -> float:
        return sum(f.idle_gb_s for f in self.functions)

    @property
    def billed_gb_s(self) -> float:
        return sum(f.billed_gb_s for f in self.functions)

    @property
    def added_latency_s(self) -> float:
        model = self.cost_model
        return (
            self.template_cold_starts * model.template_cold_ms + self.fork_cold_starts * model.fork_ms
        ) / 1000


def billed_gb_s(function: FunctionCalls) -> float:
    """Each call's duration rounded up to 1 ms times the memory: 2 calls of 0.1234 s at 1024 MB
    bill 2 x 0.124 = 0.248 GB-s."""
    billed_ms = np.ceil(np.round(function.durations_s * 1000.0, 6))
    return float(billed_ms.sum()) / 1000.0 * function.memory_mb / MB_PER_GB


def sweep(function: FunctionCalls, span_s: float, instance_idle_s: float = DEFAULT_INSTANCE_IDLE_S) -> Sweep:
    """Idle gaps and busy-period counts of one function (vectorised when calls never overlap)."""
    starts, ends = function.starts_s, function.starts_s + function.durations_s
    if starts.size == 0:
        return Sweep(function, np.empty(0), 0.0, 0, 0, 0.0, 0.0)
    latest_end = np.maximum.accumulate(ends)
    finds_idle = starts[1:] >= latest_end[:-1]
    gaps = starts[1:][finds_idle] - latest_end[:-1][finds_idle]
    tail = max(0.0, span_s - float(latest_end[-1]))
    forks = busy_warm = 0
    idle_instance_s = 0.0
    if not finds_idle.all():
        forks, busy_warm, idle_instance_s = _busy_periods(starts, ends, instance_idle_s, span_s)
    return Sweep(function, gaps, tail, forks, busy_warm, idle_instance_s, billed_gb_s(function))


def _busy_periods(
    starts: np.ndarray, ends: np.ndarray, instance_idle_s: float, span_s: float
) -> tuple[int, int, float]:
    """(forks, warm calls served by extra instances, idle instance-seconds of extra instances).

    The instance that finishes last when the function goes idle is the policy's (``replay``
    decides over it). Every other instance that finishes is an extra one: it serves the next call
    that finds the policy's instance busy (the most recently idle first) or goes after
    ``instance_idle_s`` idle, whatever the policy (the gateway's scale-down of extra instances).
    """
    running: list[float] = []  # end times of the calls in flight (a heap)
    extra_idle_since: deque[float] = deque()  # oldest first
    forks = warm = 0
    idle_s = 0.0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        while running and running[0] <= start:
            finished = heapq.heappop(running)
            if running:  # not the last one: an extra instance goes idle
                extra_idle_since.append(finished)
        while extra_idle_since and extra_idle_since[0] + instance_idle_s <= start:
            extra_idle_since.popleft()
            idle_s += instance_idle_s
        if running:
            if extra_idle_since:
                idle_s += start - extra_idle_since.pop()
                warm += 1
            else:
                forks += 1
        heapq.heappush(running, end)
    # At the end of the trace every instance but the last to finish is an extra one, idle until it
    # goes or the trace ends.
    extra_idle_since.extend(sorted(running)[:-1])
    idle_s += sum(min(instance_idle_s, max(0.0, span_s - since)) for since in extra_idle_since)
    return forks, warm, idle_s


def decide(policy: KeepAlivePolicy, gaps_s: np.ndarray, modes: Counter[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per gap (and one more for the trace's tail), the (prewarm_s, keep_alive_s) the policy chose
    when the gap began, learning each idle time once it ended (as the gateway does)."""
    count = gaps_s.size + 1
    histogram = new_histogram(policy)
    if isinstance(policy, Fixed):  # its windows ignore the histogram: decide once
        prewarm_s, keep_alive_s, mode = bounds(policy, histogram)
        modes[mode] += count
        return np.full(count, prewarm_s), np.full(count, keep_alive_s)
    prewarm, keep_alive = np.empty(count), np.empty(count)
    chosen_modes: list[str] = []
    learn = histogram.add
    for index, gap in enumerate(gaps_s.tolist()):
        prewarm[index], keep_alive[index], mode = bounds(policy, histogram)
        chosen_modes.append(mode)
        learn(gap)
    prewarm[-1], keep_alive[-1], mode = bounds(policy, histogram)
    chosen_modes.append(mode)
    modes.update(chosen_modes)
    return prewarm, keep_alive


def loaded_seconds(gaps_s: np.ndarray, prewarm_s: np.ndarray, keep_alive_s: np.ndarray) -> np.ndarray:
    """Seconds loaded with no work in each gap: [prewarm, keep_alive] cut at the gap's end.
    A gap of 300 s with (0, 600) -> 300; with (216, 330) -> 84; 1000 s with (0, 600) -> 600."""
    return np.maximum(np.minimum(gaps_s, keep_alive_s) - prewarm_s, 0.0)


def replay_function(
    swept: Sweep, policy: KeepAlivePolicy, model: CostModel, modes: Counter[str]
) -> FunctionResult:
    function = swept.function
    prewarm, keep_alive = decide(policy, swept.gaps_s, modes)
    gaps = swept.gaps_s
    warm = (gaps >= prewarm[:-1]) & (gaps <= keep_alive[:-1])
    loaded = float(loaded_seconds(gaps, prewarm[:-1], keep_alive[:-1]).sum())
    loaded += float(loaded_seconds(np.array([swept.tail_s]), prewarm[-1:], keep_alive[-1:])[0])
    first_call = 1 if function.invocations else 0
    idle_gb_s = (
        loaded * (model.template_mb + function.memory_mb) + swept.busy_idle_instance_s * function.memory_mb
    ) / MB_PER_GB
    return FunctionResult(
        name=function.name,
        invocations=function.invocations,
        template_cold_starts=first_call + int(gaps.size - int(warm.sum())),
        fork_cold_starts=swept.forks,
        idle_gb_s=idle_gb_s,
        billed_gb_s=swept.billed_gb_s,
        kept_idle_s=loaded,
    )


def sweep_trace(trace: Trace, instance_idle_s: float = DEFAULT_INSTANCE_IDLE_S) -> list[Sweep]:
    return [sweep(function, trace.span_s, instance_idle_s) for function in trace.functions]


def replay(sweeps: list[Sweep], policy: KeepAlivePolicy, model: CostModel) -> PolicyResult:
    """One policy over every function of a swept trace."""
    modes: Counter[str] = Counter()
    results = [replay_function(swept, policy, model, modes) for swept in sweeps]
    return PolicyResult(describe(policy), results, modes, model)


def simulate(trace: Trace, policies: list[KeepAlivePolicy], model: CostModel) -> list[PolicyResult]:
    sweeps = sweep_trace(trace, model.instance_idle_s)
    return [replay(sweeps, policy, model) for policy in policies]
