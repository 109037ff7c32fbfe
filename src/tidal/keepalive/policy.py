"""Keep-alive policies and the pure decision ``windows(policy, histogram) -> Windows``.

Windows are measured from the END of a function's last invocation: with ``prewarm_s == 0`` the
template and one instance stay loaded until ``keep_alive_s``; with ``prewarm_s > 0`` both are
unloaded right after the invocation, rebuilt at ``prewarm_s`` and kept until ``keep_alive_s``.
The live gateway and ``tidal simulate`` call the same function, so what the simulator reports is
what the gateway does.

``hybrid`` is the hybrid histogram policy of Shahrad et al. (USENIX ATC 2020), decided per function:

1. enough idle times and at least ``oor_share`` of them beyond the histogram's range -> "forecast":
   predict the next idle time from the recent out-of-range ones, pre-warm at forecast x (1 - margin),
   keep until forecast x (1 + margin);
2. enough idle times and a peaked histogram (CV of the bin counts >= ``min_cv``) -> "histogram":
   pre-warm at the head percentile's bin (its lower edge) x (1 - margin), keep until the tail
   percentile's bin (its upper edge) x (1 + margin); no pre-warm when the head is in the first bin;
3. otherwise -> "fallback": a fixed window of ``fallback_s``.

The out-of-range test comes first (as in the paper): a function idle for hours between calls has
few in-range samples, whose histogram would look peaked and keep it for minutes only.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from tidal.keepalive.histogram import IdleHistogram

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# How many of the most recent out-of-range idle times the forecaster looks at.
FORECAST_WINDOW = 5


@dataclass(frozen=True)
class Fixed:
    """Keep template + one instance for ``seconds`` after each invocation; never pre-warm."""

    seconds: float


@dataclass(frozen=True)
class Hybrid:
    """The hybrid histogram policy's parameters: the paper's, except ``min_cv``.

    The paper's CV threshold of 2 let sparse histograms (10-50 idle times over 240 bins) pass
    whatever their shape: on Azure-2019-shaped workloads it kept 7-16% more idle memory than
    fixed:10m. With 6 (chosen with `tidal simulate`, docs/keep-alive.md) hybrid has fewer cold
    starts than fixed:10m at less idle memory on every seed tried. ``hybrid:cv=2`` is the paper's.
    """

    bin_s: float = 60.0
    range_s: float = 14400.0
    head_pct: float = 5.0
    tail_pct: float = 99.0
    margin: float = 0.10
    min_samples: int = 10
    min_cv: float = 6.0
    oor_share: float = 0.5
    fallback_s: float = 600.0


KeepAlivePolicy = Fixed | Hybrid


@dataclass(frozen=True)
class Windows:
    """What to keep loaded after an invocation that ended at e (all times relative to e)."""

    prewarm_s: float  # 0 = no unload after an invocation
    keep_alive_s: float  # from the end of the last invocation
    mode: str  # "fixed" | "histogram" | "forecast" | "fallback"
    reason: str  # one sentence a person reads in `tidal status`


# The text keys of `hybrid:key=value,...`, and which Hybrid field each sets.
_HYBRID_KEYS: dict[str, str] = {
    "bin": "bin_s",
    "range": "range_s",
    "head": "head_pct",
    "tail": "tail_pct",
    "margin": "margin",
    "min_samples": "min_samples",
    "cv": "min_cv",
    "oor": "oor_share",
    "fallback": "fallback_s",
}
_DURATION_FIELDS = {"bin_s", "range_s", "fallback_s"}


def _parse_seconds(text: str, what: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{what}: {text!r} is not a duration (give 600, 600s, 10m, 1h or 500ms)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_seconds(seconds: float) -> str:
    """Compact duration text that ``parse_policy`` reads back: 600 -> "10m", 5400 -> "90m",
    7200 -> "2h", 90 -> "90s", 0.25 -> "250ms", 270.5 -> "270.5s"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _parse_hybrid(params: str) -> Hybrid:
    values: dict[str, Any] = {}  # field name -> value, checked as a whole below
    for item in params.split(","):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise ValueError(f"hybrid parameter {item.strip()!r} is not key=value")
        if key not in _HYBRID_KEYS:
            raise ValueError(f"unknown hybrid parameter {key!r}: known are {', '.join(_HYBRID_KEYS)}")
        name = _HYBRID_KEYS[key]
        if name in _DURATION_FIELDS:
            values[name] = _parse_seconds(raw, f"hybrid {key}")
        elif name == "min_samples":
            if not raw.isdigit():
                raise ValueError(f"hybrid min_samples: {raw!r} is not a whole number")
            values[name] = int(raw)
        else:
            try:
                values[name] = float(raw)
            except ValueError:
                raise ValueError(f"hybrid {key}: {raw!r} is not a number") from None
    return _checked(replace(Hybrid(), **values))


def _checked(policy: Hybrid) -> Hybrid:
    """Reject parameters that make no policy; each message names the parameter."""
    numbers = [getattr(policy, field.name) for field in fields(policy)]
    if not all(math.isfinite(number) for number in numbers):
        raise ValueError("hybrid parameters must be finite numbers")
    if policy.bin_s <= 0:
        raise ValueError("hybrid bin must be more than 0 seconds")
    if policy.range_s < policy.bin_s:
        raise ValueError("hybrid range must be at least one bin")
    if not 0 <= policy.head_pct < policy.tail_pct <= 100:
        raise ValueError("hybrid percentiles need 0 <= head < tail <= 100")
    if not 0 <= policy.margin < 1:
        raise ValueError("hybrid margin is a fraction: 0 <= margin < 1 (0.1 = 10%)")
    if policy.min_samples < 1:
        raise ValueError("hybrid min_samples must be at least 1")
    if policy.min_cv < 0:
        raise ValueError("hybrid cv must not be negative")
    if not 0 < policy.oor_share <= 1:
        raise ValueError("hybrid oor is a share: 0 < oor <= 1")
    return policy


def parse_policy(text: str | float | int) -> KeepAlivePolicy:
    """A policy from a number of seconds or its text.

    ``600``, ``"600"``, ``"600s"``, ``"10m"``, ``"fixed:10m"`` -> ``Fixed(600.0)``;
    ``"hybrid"`` -> ``Hybrid()``; ``"hybrid:bin=1s,range=2m,min_samples=5"`` -> a tuned Hybrid.
    Anything else raises ``ValueError`` with a message that says what is accepted.
    """
    if isinstance(text, bool):
        raise ValueError(
            "a keep-alive policy is a number of seconds, 'fixed:10m' or 'hybrid', not true/false"
        )
    if isinstance(text, int | float):
        return _fixed(float(text))
    if not isinstance(text, str):
        raise ValueError(f"a keep-alive policy is a number of seconds or text, not {type(text).__name__}")
    stripped = text.strip()
    kind, sep, rest = stripped.partition(":")
    kind = kind.strip().lower()
    if kind == "hybrid":
        return _parse_hybrid(rest) if sep else Hybrid()
    if kind == "fixed":
        if not rest.strip():
            raise ValueError("fixed needs a duration: fixed:10m, fixed:600s")
        return _fixed(_parse_seconds(rest, "fixed keep-alive"))
    if sep or _DURATION.match(stripped) is None:
        raise ValueError(
            f"{text!r} is not a keep-alive policy: give seconds (600), a duration (10m), "
            "'fixed:10m' or 'hybrid' (optionally 'hybrid:bin=60s,range=4h,head=5,tail=99,margin=0.1')"
        )
    return _fixed(_parse_seconds(stripped, "keep-alive"))


def _fixed(seconds: float) -> Fixed:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a fixed keep-alive is 0 or more seconds, not {seconds}")
    return Fixed(seconds)


def describe(policy: KeepAlivePolicy) -> str:
    """The policy as text ``parse_policy`` reads back: "fixed:10m", "hybrid", "hybrid:bin=1s"."""
    if isinstance(policy, Fixed):
        return f"fixed:{format_seconds(policy.seconds)}"
    default = Hybrid()
    changed = []
    for key, name in _HYBRID_KEYS.items():
        value = getattr(policy, name)
        if value != getattr(default, name):
            changed.append(f"{key}={format_seconds(value) if name in _DURATION_FIELDS else f'{value:g}'}")
    return "hybrid:" + ",".join(changed) if changed else "hybrid"


def new_histogram(policy: KeepAlivePolicy) -> IdleHistogram:
    """An empty histogram with the bins the policy reads (the defaults for a fixed policy)."""
    if isinstance(policy, Hybrid):
        return IdleHistogram(bin_s=policy.bin_s, range_s=policy.range_s)
    return IdleHistogram()


def forecast_idle_s(recent_out_of_range: Sequence[float]) -> float:
    """The next idle time expected from recent out-of-range ones: the median of the last
    ``FORECAST_WINDOW`` (robust to one odd gap; a period of 6 h gives 6 h). 0.0 with none."""
    recent = list(recent_out_of_range)[-FORECAST_WINDOW:]
    return float(statistics.median(recent)) if recent else 0.0


def bounds(policy: KeepAlivePolicy, histogram: IdleHistogram) -> tuple[float, float, str]:
    """(prewarm_s, keep_alive_s, mode): the decision of ``windows`` without its sentence, for the
    simulator's loop over millions of idle periods. ``windows`` calls it; the rules live here."""
    if isinstance(policy, Fixed):
        return 0.0, float(policy.seconds), "fixed"
    samples = histogram.total
    if samples < policy.min_samples:
        return 0.0, policy.fallback_s, "fallback"
    if histogram.recent_out_of_range and histogram.out_of_range >= policy.oor_share * samples:
        forecast_s = forecast_idle_s(histogram.recent_out_of_range)
        return forecast_s * (1.0 - policy.margin), forecast_s * (1.0 + policy.margin), "forecast"
    if histogram.in_range > 0 and histogram.coefficient_of_variation() >= policy.min_cv:
        # The head's bin holds idle times from its lower edge on: pre-warming by the lower edge (not
        # the upper one percentile() returns) keeps warm a function whose idle time opens a bin.
        head_lower_s = max(0.0, histogram.percentile(policy.head_pct) - histogram.bin_s)
        keep_alive_s = histogram.percentile(policy.tail_pct) * (1.0 + policy.margin)
        return head_lower_s * (1.0 - policy.margin), keep_alive_s, "histogram"
    return 0.0, policy.fallback_s, "fallback"


def windows(policy: KeepAlivePolicy, histogram: IdleHistogram) -> Windows:
    """Pre-warm and keep-alive windows for the function whose idle times ``histogram`` holds,
    with the sentence that says why."""
    prewarm_s, keep_alive_s, mode = bounds(policy, histogram)
    return Windows(prewarm_s, keep_alive_s, mode, _reason(policy, histogram, prewarm_s, keep_alive_s, mode))


def _reason(
    policy: KeepAlivePolicy, histogram: IdleHistogram, prewarm_s: float, keep_alive_s: float, mode: str
) -> str:
    keeping = f"keep until {clock(keep_alive_s)}"
    if prewarm_s > 0:
        keeping = f"pre-warm at {clock(prewarm_s)}, {keeping}"
    if isinstance(policy, Fixed):
        return f"fixed keep-alive: keep loaded {format_seconds(policy.seconds)} after each call"
    samples = histogram.total
    if mode == "forecast":
        share = histogram.out_of_range / samples
        forecast_s = forecast_idle_s(histogram.recent_out_of_range)
        return (
            f"{share:.0%} of {samples} idle times beyond {format_seconds(histogram.range_s)}, "
            f"next expected in {clock(forecast_s)}: {keeping}"
        )
    cv = histogram.coefficient_of_variation()
    if mode == "histogram":
        return f"{samples} idle times, CV {cv:.1f}: {keeping}"
    why = (
        f"{samples} idle times, fewer than {policy.min_samples}"
        if samples < policy.min_samples
        else f"{samples} idle times, CV {cv:.1f} below {policy.min_cv:g}"
    )
    return f"{why}: fixed keep-alive of {format_seconds(policy.fallback_s)}"


def clock(seconds: float) -> str:
    """Human duration: 270 -> "4m30s", 330 -> "5m30s", 12.5 -> "12.5s", 23400 -> "6h30m"."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
