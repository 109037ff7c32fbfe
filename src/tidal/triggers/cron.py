"""Cron schedules: syntax and time zone checks, and the pure decision of what fires now.

Syntax: croniter's (5 fields, or 6 with seconds last: ``*/2 * * * * *`` is every 2 seconds),
evaluated in the trigger's time zone (zoneinfo), so ``0 9 * * *`` with ``Europe/Paris`` follows
daylight saving time.

Missed runs (the gateway was down): only the latest missed scheduled time may fire, once, and only
if it is at most ``catchup`` seconds old (default 1 hour); older ones, and every earlier one, are
skipped and counted (``tidal triggers ls`` shows ``missed``). A run is never fired twice: the
trigger's ``last_fire`` (the scheduled time) is stored after its job, and the job's idempotency
key is the trigger and the scheduled time, so a crash between the two enqueues nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from tidal.triggers.model import TriggerError

LATE_GRACE_S = 30.0  # a run this late is on time (a busy loop, a slow store), whatever catchup says
MAX_COUNTED = 10_000  # missed runs counted one by one at most (a 1 s schedule down for a day)


class ScheduleError(TriggerError):
    pass


def check_schedule(schedule: str) -> str:
    """``schedule`` if croniter takes it, else ScheduleError naming it.

    >>> check_schedule("*/5 * * * *")
    '*/5 * * * *'
    """
    text = " ".join(schedule.split())
    if len(text.split(" ")) not in (5, 6) or not croniter.is_valid(text):
        raise ScheduleError(
            f"cron trigger: schedule {schedule!r} is not a cron expression "
            "(5 fields: minute hour day month weekday; a 6th field is seconds)"
        )
    return text


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"cron trigger: tz {name!r} is not a known time zone (e.g. UTC, Europe/Paris)"
        ) from None
    return name


def next_time(schedule: str, tz: str, after: float) -> float:
    """The first scheduled time strictly after ``after`` (epoch s).

    >>> next_time("0 9 * * *", "Europe/Paris", 1767196800.0)  # 2025-12-31 16:00 UTC
    1767254400.0
    """
    start = datetime.fromtimestamp(after, UTC).astimezone(ZoneInfo(tz))
    return float(croniter(schedule, start).get_next(float))


@dataclass(frozen=True)
class Decision:
    fire: float | None  # the scheduled time to fire now, or None
    decided_until: float  # every scheduled time up to here is fired or skipped
    missed: int  # scheduled times skipped by this decision
    next_at: float  # when to look again


def decide(schedule: str, tz: str, catchup_s: float, decided_until: float, now: float) -> Decision:
    """What fires at ``now``, given that every scheduled time up to ``decided_until`` is handled.

    A schedule every minute, last handled 10:00, now 10:03:02 (the gateway was down): 10:01 and
    10:02 are skipped, 10:03 fires (2 s late: on time) -> Decision(10:03, 10:03, 2, 10:04).
    """
    due = next_time(schedule, tz, decided_until)
    if due > now:
        return Decision(None, decided_until, 0, due)
    times = [due]
    while len(times) < MAX_COUNTED and (following := next_time(schedule, tz, times[-1])) <= now:
        times.append(following)
    latest = times[-1]
    if len(times) == MAX_COUNTED:  # too many to count: jump to the latest one by one from now back
        latest = _latest_before(schedule, tz, now)
    missed = len(times) - 1
    on_time = now - latest <= max(catchup_s, LATE_GRACE_S)
    return Decision(
        latest if on_time else None,
        latest,
        missed + (0 if on_time else 1),
        next_time(schedule, tz, latest),
    )


def _latest_before(schedule: str, tz: str, now: float) -> float:
    start = datetime.fromtimestamp(now, UTC).astimezone(ZoneInfo(tz))
    iterator = croniter(schedule, start)
    latest = float(iterator.get_prev(float))
    return latest if next_time(schedule, tz, latest) > now else now


def iso(epoch: float) -> str:
    """An epoch as ISO 8601 in UTC: ``2026-01-01T09:00:00Z``."""
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
