"""How `tidal status` shows a function's keep-alive (the ``keep_alive`` object of GET /v1/functions/NAME)."""

from __future__ import annotations

from typing import Any

from tidal.keepalive.policy import clock


def keep_alive_line(info: dict[str, Any], now: float) -> str:
    """One line: policy, mode, windows and why, idle times learned, the phase now and its next edge.

    >>> keep_alive_line({"policy": "fixed:5m", "mode": "fixed", "reason": "fixed keep-alive: keep loaded 5m"
    ...     " after each call", "samples": 3, "phase": "kept", "prewarm_at": None, "keep_until": 1060.0}, 1000.0)
    'keep-alive: fixed:5m (fixed), 3 idle times learned: fixed keep-alive: keep loaded 5m after each call; now kept, for 1m more'
    """
    line = (
        f"keep-alive: {info['policy']} ({info['mode']}), {info['samples']} idle times learned: {info['reason']}"
        f"; now {info['phase']}"
    )
    prewarm_at, keep_until = info.get("prewarm_at"), info.get("keep_until")
    if info["phase"] == "unloaded" and prewarm_at is not None and prewarm_at > now:
        line += f", pre-warm in {clock(prewarm_at - now)}"
    elif info["phase"] in ("kept", "pre-warmed") and keep_until is not None and keep_until > now:
        line += f", for {clock(keep_until - now)} more"
    return line
