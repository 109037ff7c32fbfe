"""Where a function stands in its keep-alive windows now, and what that asks of the gateway: pure.

Windows (tidal.keepalive.policy.Windows) are measured from the end e of the function's last call.
With no pre-warm, the revision keeps what is loaded until e + keep_alive_s ("kept"). With a
pre-warm, it unloads (instances, then the template) right after e ("unloaded"), has one instance
started at e + prewarm_s ("pre-warmed": the template is built for it) and keeps it until
e + keep_alive_s; then everything goes ("ended"). A call in flight ("busy") leaves the decision
to the concurrency autoscaler, as does a function never called since it had a policy.

Worked example: windows (prewarm 3.6 s, keep 5.5 s), last call ended at t = 100: at 101 unloaded
(next edge 103.6), at 104 pre-warmed (next edge 105.5), at 106 ended (no edge left).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tidal.autoscale.decider import KeepAliveWish
from tidal.keepalive.policy import Windows, clock


class Phase(StrEnum):
    NO_CALL = "no call yet"  # nothing learned to start from: today's scale to zero and template reaping
    BUSY = "busy"  # a call in flight or queued: the autoscaler decides
    KEPT = "kept"  # e .. e + keep_alive_s, no pre-warm: what is loaded stays
    UNLOADED = "unloaded"  # e .. e + prewarm_s: nothing loaded, waiting to pre-warm
    PREWARMED = "pre-warmed"  # e + prewarm_s .. e + keep_alive_s: one instance up for the next call
    ENDED = "ended"  # after e + keep_alive_s: nothing loaded until the next call


@dataclass(frozen=True)
class LiveState:
    phase: Phase
    wish: KeepAliveWish | None  # for the autoscaler's keep-alive stage; None: it decides alone
    drop_template: bool  # the revision's template goes (once nothing it forked is alive)
    next_edge: float | None  # when the phase changes next without a call (same clock as ``now``)


def live_state(now: float, last_end: float | None, busy: bool, windows: Windows, policy: str) -> LiveState:
    """The phase at ``now`` of a function whose last call ended at ``last_end``, under ``windows``.

    ``policy`` names the policy in the reasons ("hybrid", "fixed:5m").
    """
    if busy:
        return LiveState(Phase.BUSY, None, False, None)
    if last_end is None:
        return LiveState(Phase.NO_CALL, None, False, None)
    elapsed = max(0.0, now - last_end)
    prewarm_at, keep_until = last_end + windows.prewarm_s, last_end + windows.keep_alive_s
    if elapsed >= windows.keep_alive_s:
        reason = f"keep-alive ended: no call for {clock(windows.keep_alive_s)} ({policy})"
        return LiveState(Phase.ENDED, KeepAliveWish("unload", reason), True, None)
    if windows.prewarm_s <= 0:
        reason = f"keep-alive: {policy} keeps it until {clock(windows.keep_alive_s)} after the last call"
        return LiveState(Phase.KEPT, KeepAliveWish("hold", reason), False, keep_until)
    if elapsed < windows.prewarm_s:
        reason = f"keep-alive: unload after the call; {policy} pre-warms {clock(windows.prewarm_s)} after it"
        return LiveState(Phase.UNLOADED, KeepAliveWish("unload", reason), True, prewarm_at)
    reason = (
        f"pre-warm: {policy} expects the next call in ~{clock(windows.prewarm_s)}"
        f"-{clock(windows.keep_alive_s)} after the last one"
    )
    return LiveState(Phase.PREWARMED, KeepAliveWish("prewarm", reason), False, keep_until)
