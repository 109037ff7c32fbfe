"""Billing arithmetic: pure functions, no clocks."""

from __future__ import annotations

import math


def billed_ms(duration_ms: float) -> int:
    """Instance time rounded up to the next whole millisecond, at least 1.

    >>> billed_ms(0.2), billed_ms(1.0), billed_ms(1.0001), billed_ms(37.4)
    (1, 1, 2, 38)
    """
    return max(1, math.ceil(duration_ms - 1e-9))
