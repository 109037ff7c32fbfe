"""The benchmark's switch: ``TIDAL_METRICS`` (see tidal.observability.wiring)."""

from __future__ import annotations

import os

METRICS_SWITCH = "TIDAL_METRICS"


def metering_switch() -> str:
    """``1`` (the default: records and metrics), ``0`` (neither), ``records`` (records without
    metrics: lets the benchmark tell the two costs apart). Anything else reads as ``1``."""
    value = os.environ.get(METRICS_SWITCH, "1").strip().lower()
    return value if value in ("0", "records") else "1"
