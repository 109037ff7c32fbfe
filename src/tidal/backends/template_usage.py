"""When a template is worth keeping, how a cold start came about, and what a template costs.

Pure functions of their inputs (the clock is an argument); the local backend's reaper loop and its
status views call them. A template is kept while its function is used: one that has no live (or
forking) instance and started none for ``idle_limit_s`` is reaped, and the next cold start builds
it again, paying its import (and with ``load_once`` its ``setup()``) once more.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

DEFAULT_TEMPLATE_IDLE_S = 600.0  # `tidal up --template-idle`: 10 minutes
REAP_TICK_MIN_S = 0.05
REAP_TICK_MAX_S = 5.0


class ColdStartDetail(StrEnum):
    """How a new instance came to be (``x-tidal-cold-start-detail``)."""

    FORK = "fork"  # forked from a template that was ready before the start began
    TEMPLATE_BUILT = "template-built"  # its template had to be built (or finish building) first
    SPAWN = "spawn"  # a fresh process: templates off or unavailable


def should_reap(now: float, last_used: float, live_instances: int, idle_limit_s: float) -> bool:
    """Whether a template is stopped: nothing it forked is alive and it has been idle long enough.

    ``last_used`` is the latest of: built, asked for by a start, forked, saw an instance exit
    (all monotonic seconds, like ``now``). A template that is the parent of a live instance is
    never reaped, however old its last start. With a 600 s limit, last used at t=100 and no
    instance: kept at t=700, reaped at t=700.1.
    """
    return live_instances == 0 and now - last_used > idle_limit_s


def reap_tick_s(idle_limit_s: float) -> float:
    """How often the reaper looks: a quarter of the limit, within [0.05, 5] s.

    A 600 s limit is checked every 5 s (a template goes at most 5 s late, under 1% of its limit);
    a 1 s limit every 0.25 s.
    """
    return min(REAP_TICK_MAX_S, max(REAP_TICK_MIN_S, idle_limit_s / 4))


def cold_start_detail(started_via: str | None, template_pid: str | None, ready_pid_before: int | None) -> str:
    """How a start went, from what the backend saw: ``fork`` only when the template that forked
    the instance was already ready when the start began (``ready_pid_before``); a template started,
    finished or replaced during the start makes it ``template-built``.
    """
    if started_via != "template":
        return ColdStartDetail.SPAWN
    if ready_pid_before is not None and template_pid == str(ready_pid_before):
        return ColdStartDetail.FORK
    return ColdStartDetail.TEMPLATE_BUILT


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """The kB fields of ``/proc/PID/smaps_rollup``: ``"Rss:  4096 kB"`` -> ``{"Rss": 4096}``."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    return fields


def memory_mb(pid: int, proc: Path = Path("/proc")) -> tuple[float | None, float | None]:
    """(RSS, PSS) of ``pid`` in MB (MiB), None where unreadable.

    PSS (proportional set size) splits pages shared copy-on-write with forked instances among the
    processes sharing them: what the template really costs. It needs ``smaps_rollup`` (Linux 4.14+,
    same user); RSS falls back to ``status``'s VmRSS.
    """
    try:
        rollup = parse_smaps_rollup((proc / str(pid) / "smaps_rollup").read_text())
    except OSError:
        rollup = {}
    rss_kb = rollup.get("Rss")
    if rss_kb is None:
        try:
            rss_kb = parse_smaps_rollup((proc / str(pid) / "status").read_text()).get("VmRSS")
        except OSError:
            rss_kb = None
    pss_kb = rollup.get("Pss")
    return _mb(rss_kb), _mb(pss_kb)


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)
