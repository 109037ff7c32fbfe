"""The concurrency autoscaler's decision, as a pure function (Knative KPA's rules, in stages).

    decide(now, samples, ready, spec, state) -> (Decision, state)

No clock reads and no I/O: ``now`` and the samples are arguments, the state travels with the
call, so tests (and a simulator) drive it with a virtual clock. Each stage below is a small
function of its own: averages, raw wish, rate limits, panic, scale-down delay, scale to zero,
bounds.

A worked example, target 0.7 per instance (concurrency 1): a stable-window average of 3.5
requests in flight wants ceil(3.5 / 0.7) = 5 instances. If the last 6 s averaged 14 in flight
while 5 are ready (capacity 5 x 0.7 = 3.5), demand is 4x capacity >= 2x: panic, and the panic
wish ceil(14 / 0.7) = 20 is taken at once; no scale-down happens until 60 calm seconds have passed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from tidal.spec import FunctionSpec

Sample = tuple[float, float]  # (time in seconds, average requests in flight or queued since the last sample)


@dataclass(frozen=True)
class DeciderState:
    panic_since: float | None = None  # when panic mode began (extended while still over threshold)
    panic_desired: int = 0  # the most instances wished for during this panic
    last_active: float | None = None  # the last time any request was in flight or queued
    recent_wishes: tuple[tuple[float, int], ...] = field(default_factory=tuple)  # for scale_down_delay


@dataclass(frozen=True)
class KeepAliveWish:
    """What a function's keep-alive policy (tidal.keepalive) wants of an idle revision now; it
    replaces the scale-to-zero stage (``scale_to_zero_after``) while the function has a policy.

    ``action``: "hold" keeps what is loaded (at most one instance; starts none), "prewarm" has one
    instance up (started if need be), "unload" drops to zero now.
    """

    action: Literal["hold", "prewarm", "unload"]
    reason: str


@dataclass(frozen=True)
class Decision:
    desired: int
    panic: bool
    reason: str
    stable_demand: float
    panic_demand: float


def window_average(samples: Sequence[Sample], now: float, window: float) -> float | None:
    """Mean of the samples taken within ``window`` seconds before ``now``; None when there are none."""
    inside = [value for when, value in samples if now - window < when <= now]
    return sum(inside) / len(inside) if inside else None


def wish(demand: float, target: float) -> int:
    """Instances needed so each holds ``target`` in flight: ceil(3.5 / 0.7) = 5."""
    return math.ceil(round(demand / target, 9))


def rate_limited(desired: int, ready: int, spec: FunctionSpec) -> int:
    """No faster than max_scale_up_rate x ready up, no faster than ready / max_scale_down_rate down."""
    base = max(ready, 1)
    most = math.ceil(spec.max_scale_up_rate * base)
    least = math.floor(ready / spec.max_scale_down_rate)
    return min(max(desired, least), most)


def bounded(desired: int, spec: FunctionSpec) -> int:
    return min(max(desired, spec.min_instances), spec.max_instances)


def decide(
    now: float,
    samples: Sequence[Sample],
    ready: int,
    spec: FunctionSpec,
    state: DeciderState,
    keep_alive: KeepAliveWish | None = None,
) -> tuple[Decision, DeciderState]:
    stable = window_average(samples, now, spec.stable_window)
    panic_avg = window_average(samples, now, spec.panic_window)
    latest_active = max((when for when, value in samples if value > 0), default=None)
    last_active = max(filter(None, (state.last_active, latest_active)), default=None)
    state = replace(state, last_active=last_active)
    if stable is None or panic_avg is None:  # no data yet: hold what we have (Knative's ErrNoData)
        return Decision(
            bounded(ready, spec), state.panic_since is not None, "no samples yet", 0.0, 0.0
        ), state

    target = spec.target
    stable_wish = rate_limited(wish(stable, target), ready, spec)
    panic_wish = rate_limited(wish(panic_avg, target), ready, spec)
    over_threshold = panic_avg >= spec.panic_threshold * max(ready, 1) * target and panic_avg > 0

    panic_since = state.panic_since
    if over_threshold:
        panic_since = now  # enter, or extend: calm is measured from the last moment over threshold
    elif panic_since is not None and now - panic_since >= spec.stable_window:
        panic_since = None

    if panic_since is not None:
        desired = max(panic_wish, state.panic_desired, ready)  # panic never scales down
        reason = (
            f"panic: {panic_avg:.2f} in flight over {spec.panic_window:g} s vs capacity {ready * target:.2f}"
        )
        state = replace(state, panic_since=panic_since, panic_desired=desired)
    else:
        desired = stable_wish
        reason = f"{stable:.2f} in flight over {spec.stable_window:g} s at target {target:g} per instance"
        state = replace(state, panic_since=None, panic_desired=0)

    desired, state = delayed_scale_down(now, desired, spec, state)
    if keep_alive is not None and spec.min_instances == 0:
        desired, reason = kept_alive(desired, ready, keep_alive, reason)
    elif idle_long_enough(now, last_active, spec) and spec.min_instances == 0:
        desired, reason = 0, f"idle for {spec.scale_to_zero_after:g} s: scale to zero"
    elif desired == 0 and last_active is not None:
        desired = 1  # some demand inside the window but not idle long enough: keep one
    decision = Decision(bounded(desired, spec), panic_since is not None, reason, stable, panic_avg)
    return decision, state


def delayed_scale_down(
    now: float, desired: int, spec: FunctionSpec, state: DeciderState
) -> tuple[int, DeciderState]:
    """Scale down only to the highest wish of the last ``scale_down_delay`` seconds."""
    if spec.scale_down_delay <= 0:
        return desired, state
    wishes = tuple((when, value) for when, value in state.recent_wishes if now - when < spec.scale_down_delay)
    wishes += ((now, desired),)
    return max(value for _, value in wishes), replace(state, recent_wishes=wishes)


def kept_alive(desired: int, ready: int, wish: KeepAliveWish, reason: str) -> tuple[int, str]:
    """The keep-alive stage: the policy's wish for an idle revision, in place of scale to zero.

    "unload" -> 0 and "prewarm" -> 1, whatever the stable window still averages (nothing is in
    flight: the calls it holds are over); "hold" -> the concurrency wish, but keeping one of the
    ``ready`` instances and starting none. The wish's reason is the decision's when it set the count.
    """
    if wish.action == "unload":
        return 0, wish.reason
    if wish.action == "prewarm":
        return 1, wish.reason
    floor = min(ready, 1)
    return (floor, wish.reason) if desired < floor else (desired, reason)


def idle_long_enough(now: float, last_active: float | None, spec: FunctionSpec) -> bool:
    """No request in flight or queued for ``scale_to_zero_after`` seconds."""
    return last_active is None or now - last_active >= spec.scale_to_zero_after
