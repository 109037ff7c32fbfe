"""Rate limits and quotas of an API key: pure arithmetic, the clock is an argument.

A key may carry a rate (a token bucket: ``50/s`` with a burst of 100 lets 100 calls through at
once, then 50 a second) and quotas per UTC calendar day or month, counted in requests or in GB-s
(memory GB x billed seconds, as metering bills them). ``admit`` decides one request from the
key's state and returns the new state with the verdict; ``tidal.auth.quota`` keeps the states,
adds GB-s when calls end, and writes the counts to the store so that they survive a restart.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Period = Literal["day", "month"]
Unit = Literal["requests", "gb-s"]
PERIODS: tuple[Period, ...] = ("day", "month")
RATE_UNITS_S = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
RATE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")
QUOTA_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gb-s|gbs|req|requests)?\s*/\s*(day|month)\s*$")
MAX_AMOUNT = 1e15
DAY_S = 86400


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: int  # tokens the bucket holds: calls allowed at once after a quiet spell

    def text(self) -> str:
        return f"{amount_text(self.per_second)}/s"


@dataclass(frozen=True, slots=True)
class Quota:
    amount: float
    unit: Unit
    period: Period

    def text(self) -> str:
        return f"{amount_text(self.amount)}{'gb-s' if self.unit == 'gb-s' else ''}/{self.period}"


@dataclass(frozen=True, slots=True)
class KeyLimits:
    rate: Rate | None = None
    quotas: tuple[Quota, ...] = ()

    @property
    def empty(self) -> bool:
        return self.rate is None and not self.quotas

    def to_json(self) -> str:
        document: dict[str, Any] = {}
        if self.rate is not None:
            document["rate"] = {"per_second": self.rate.per_second, "burst": self.rate.burst}
        if self.quotas:
            document["quotas"] = [
                {"amount": quota.amount, "unit": quota.unit, "period": quota.period} for quota in self.quotas
            ]
        return json.dumps(document, sort_keys=True)

    def describe(self) -> dict[str, Any]:
        """What the admin API and `tidal keys ls` show: ``{"rate": "50/s", "burst": 100, "quotas": [...]}``."""
        return {
            "rate": self.rate.text() if self.rate else None,
            "burst": self.rate.burst if self.rate else None,
            "quotas": [quota.text() for quota in self.quotas],
        }


NO_LIMITS = KeyLimits()


def amount_text(value: float) -> str:
    """``1000000.0`` -> ``1000000``, ``0.5`` -> ``0.5`` (never ``1e+06``)."""
    return str(int(value)) if value == int(value) else f"{value:.6g}"


def parse_rate(text: str, burst: int | None = None) -> Rate:
    """``"50/s"`` -> 50 a second; ``"600/m"`` -> 10 a second. The burst defaults to one second's
    worth (at least 1).

    >>> parse_rate("600/min"), parse_rate("50/s", burst=100).burst
    (Rate(per_second=10.0, burst=10), 100)
    """
    match = RATE_PATTERN.match(text.lower())
    if match is None or match.group(2) not in RATE_UNITS_S:
        raise ValueError(f"invalid rate {text!r}: use N/s, N/m or N/h (e.g. 50/s)")
    per_second = float(match.group(1)) / RATE_UNITS_S[match.group(2)]
    if not 0 < per_second <= MAX_AMOUNT:
        raise ValueError(f"invalid rate {text!r}: it must be above 0")
    chosen = burst if burst is not None else max(1, math.ceil(per_second))
    if not 1 <= chosen <= MAX_AMOUNT:
        raise ValueError(f"invalid burst {chosen}: it must be at least 1")
    return Rate(per_second, int(chosen))


def parse_quota(text: str) -> Quota:
    """``"100000/day"`` (requests) or ``"2000gb-s/month"`` (GB-seconds)."""
    match = QUOTA_PATTERN.match(text.lower())
    if match is None:
        raise ValueError(f"invalid quota {text!r}: use N/day, N/month, Ngb-s/day or Ngb-s/month")
    amount = float(match.group(1))
    if not 0 < amount <= MAX_AMOUNT:
        raise ValueError(f"invalid quota {text!r}: it must be above 0")
    unit: Unit = "gb-s" if match.group(2) in ("gb-s", "gbs") else "requests"
    period: Period = "day" if match.group(3) == "day" else "month"
    return Quota(amount, unit, period)


def build_limits(rate: str | None, burst: int | None, quotas: list[str]) -> KeyLimits:
    """Limits from what a user typed (CLI flags, the admin API's fields); ValueError names the bad one."""
    if burst is not None and rate is None:
        raise ValueError("--burst needs --rate")
    parsed = tuple(parse_quota(text) for text in quotas)
    seen = {(quota.unit, quota.period) for quota in parsed}
    if len(seen) != len(parsed):
        raise ValueError("give at most one quota per unit and period (e.g. one N/day and one Ngb-s/day)")
    return KeyLimits(parse_rate(rate, burst) if rate is not None else None, parsed)


def limits_from_json(text: str) -> KeyLimits:
    """The stored form back (``KeyRecord.limits``); "{}" or "" -> no limits."""
    document = json.loads(text or "{}")
    rate = document.get("rate")
    return KeyLimits(
        Rate(float(rate["per_second"]), int(rate["burst"])) if rate else None,
        tuple(Quota(float(q["amount"]), q["unit"], q["period"]) for q in document.get("quotas", ())),
    )


# -- calendar windows (UTC) ----------------------------------------------------------------------


def period_start(period: Period, now: float) -> float:
    """Epoch seconds of the UTC day or month ``now`` falls in (epoch days are 86,400 s long).

    >>> period_start("day", 86400 * 3 + 5), period_start("month", 86400 * 40)
    (259200.0, 2678400.0)
    """
    day = math.floor(now / DAY_S)
    return float(day * DAY_S) if period == "day" else _month_of_day(day)[0]


def period_end(period: Period, now: float) -> float:
    day = math.floor(now / DAY_S)
    return float((day + 1) * DAY_S) if period == "day" else _month_of_day(day)[1]


@functools.lru_cache(maxsize=64)
def _month_of_day(day: int) -> tuple[float, float]:
    """(start, end) of the UTC month holding epoch day ``day``: a calendar lookup once a day, not per call."""
    moment = datetime.datetime.fromtimestamp(day * DAY_S, datetime.UTC)
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(first.year, first.month)[1]
    return first.timestamp(), (first + datetime.timedelta(days=days)).timestamp()


# -- state and the decision ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """What a key used in one calendar window."""

    start: float
    requests: int = 0
    gb_s: float = 0.0


@dataclass(frozen=True, slots=True)
class KeyState:
    tokens: float = -1.0  # -1: the bucket was never touched (it starts full)
    refilled_at: float = 0.0
    windows: dict[Period, Window] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    state: KeyState
    error_type: str = ""  # "RateLimited" | "QuotaExceeded" when refused
    message: str = ""
    retry_after_s: int = 0
    limit: float = 0  # the RateLimit-* headers of the tightest limit
    remaining: int = 0
    reset_s: int = 0


def current_window(state: KeyState, period: Period, now: float) -> Window:
    """The key's usage in the window ``now`` falls in (a new, empty one when the old one ended)."""
    start = period_start(period, now)
    window = state.windows.get(period)
    return window if window is not None and window.start == start else Window(start)


def refill(rate: Rate, state: KeyState, now: float) -> float:
    """Tokens in the bucket at ``now``: at most ``burst``, plus ``per_second`` for each second since.

    >>> refill(Rate(5.0, 5), KeyState(tokens=0.0, refilled_at=10.0), 10.5)
    2.5
    """
    if state.tokens < 0:
        return float(rate.burst)
    return min(float(rate.burst), state.tokens + max(0.0, now - state.refilled_at) * rate.per_second)


def admit(limits: KeyLimits, state: KeyState, now: float) -> Verdict:
    """One request of a key: allowed (and counted), or refused with how long to wait.

    Quotas first (a key out of quota must not spend a token), then the bucket. A refused request
    is not counted. With ``5/s``, burst 5: five calls at t=0 pass, the sixth waits 1 s (the
    bucket refills 0.2 s per token, and Retry-After is whole seconds, rounded up).
    """
    windows = dict(state.windows)
    tightest: tuple[float, int, int] | None = None  # (limit, remaining, reset_s)
    for quota in limits.quotas:
        window = current_window(state, quota.period, now)
        windows[quota.period] = window
        used = window.requests if quota.unit == "requests" else window.gb_s
        reset_s = max(1, math.ceil(period_end(quota.period, now) - now))
        if used >= quota.amount:
            message = f"this key used its quota of {quota.text()}; it renews in {reset_s} s"
            return Verdict(False, state, "QuotaExceeded", message, reset_s, quota.amount, 0, reset_s)
        remaining = int(quota.amount - used) - (1 if quota.unit == "requests" else 0)
        if tightest is None or remaining < tightest[1]:
            tightest = (quota.amount, remaining, reset_s)
    tokens, refilled_at = state.tokens, state.refilled_at
    if limits.rate is not None:
        rate = limits.rate
        tokens, refilled_at = refill(rate, state, now), now
        if tokens < 1.0:
            wait_s = max(1, math.ceil((1.0 - tokens) / rate.per_second))
            message = f"this key is limited to {rate.text()} (burst {rate.burst}); retry in {wait_s} s"
            refused = replace(state, tokens=tokens, refilled_at=now)
            return Verdict(False, refused, "RateLimited", message, wait_s, rate.burst, 0, wait_s)
        tokens -= 1.0
        full_in = max(1, math.ceil((rate.burst - tokens) / rate.per_second))
        if tightest is None or int(tokens) < tightest[1]:
            tightest = (rate.burst, int(tokens), full_in)
    for period in {quota.period for quota in limits.quotas}:
        window = windows[period]  # built directly: dataclasses.replace costs a microsecond per call
        windows[period] = Window(window.start, window.requests + 1, window.gb_s)
    limit, remaining, reset_s = tightest if tightest is not None else (0, 0, 0)
    return Verdict(
        True, KeyState(tokens, refilled_at, windows), limit=limit, remaining=remaining, reset_s=reset_s
    )


def add_gb_s(limits: KeyLimits, state: KeyState, gb_s: float, now: float) -> KeyState:
    """The key's state after a call of ``gb_s`` ended (counted in each window a quota watches)."""
    windows = dict(state.windows)
    for period in {quota.period for quota in limits.quotas}:
        window = current_window(state, period, now)
        windows[period] = replace(window, gb_s=window.gb_s + gb_s)
    return replace(state, windows=windows)
