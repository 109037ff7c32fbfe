"""Backoff arithmetic shared by everything that tries again: pure, no clocks."""

from __future__ import annotations


def backoff_s(consecutive_failures: int, first_s: float, max_s: float) -> float:
    """Seconds to wait after this many failures in a row: first_s, doubling, capped at max_s.

    >>> [backoff_s(n, 1.0, 30.0) for n in (0, 1, 2, 3, 6, 7)]
    [0.0, 1.0, 2.0, 4.0, 30.0, 30.0]
    """
    if consecutive_failures <= 0:
        return 0.0
    return min(first_s * 2 ** (consecutive_failures - 1), max_s)
