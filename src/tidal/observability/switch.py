"""The benchmark's switch: ``TIDAL_METRICS`` (see tidal.observability.wiring)."""

from __future__ import annotations

import os

METRICS_SWITCH = "TIDAL_METRICS"


def metering_switch() -> str:
    """``1`` (the default: records and metrics), ``0`` (neither), ``journal`` (each record
    journaled before its answer, as with ``1``, but never stored nor counted: the journal's
    segments are deleted where they would be folded, so the benchmark tells the request path's
    cost from the journal folder's). Anything else reads as ``1``."""
    value = os.environ.get(METRICS_SWITCH, "1").strip().lower()
    return value if value in ("0", "journal") else "1"
