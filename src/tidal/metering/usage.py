"""Usage and cost: the store's per-group sums, priced. Pure: no clock, no I/O.

A group's GB-seconds are its billed milliseconds times its configured memory, as AWS Lambda counts
them: 1,000 calls of 128 MiB billed 10 ms each are 1,000 x 0.010 s x 0.125 GB = 1.25 GB-s.
The total is priced from the summed integers, never from rounded rows, so it is exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from tidal.metering.prices import PriceSheet
from tidal.store.models import UsageSums

USAGE_BY = ("function", "revision", "key", "day")
MB_PER_GB = 1024  # Lambda's GB of configured memory is 1,024 MB
MS_PER_S = 1000


@dataclass(frozen=True)
class UsageRow:
    key: str
    requests: int
    errors: int
    billed_ms: int
    gb_s: float
    gpu_s: float
    cost: float


def priced(sums: UsageSums, prices: PriceSheet) -> UsageRow:
    """One group with its GB-s, GPU-s and cost.

    >>> row = priced(UsageSums("echo", 1000, 2, 10_000, 10_000 * 128, 0.0), PriceSheet())
    >>> row.gb_s, round(row.cost, 8)
    (1.25, 0.00022083)
    """
    gb_s = sums.mb_ms / MB_PER_GB / MS_PER_S
    gpu_s = sums.gpu_ms / MS_PER_S
    cost = prices.cost(sums.requests, gb_s, gpu_s)
    return UsageRow(sums.key, sums.requests, sums.errors, sums.billed_ms, gb_s, gpu_s, cost)


def total_of(groups: Iterable[UsageSums]) -> UsageSums:
    """All groups summed into one (key "total")."""
    requests = errors = billed = mb_ms = 0
    gpu_ms = 0.0
    for group in groups:
        requests += group.requests
        errors += group.errors
        billed += group.billed_ms
        mb_ms += group.mb_ms
        gpu_ms += group.gpu_ms
    return UsageSums("total", requests, errors, billed, mb_ms, gpu_ms)


def usage_report(
    groups: list[UsageSums], prices: PriceSheet, by: str, since: float, until: float
) -> dict[str, object]:
    """The body of ``GET /v1/usage``: rows by ``by``, the total, and the prices they were priced at.

    Rows are ordered by cost, the dearest first (then by key), as a bill is read; days by date.
    """
    rows = [priced(group, prices) for group in groups]
    rows.sort(key=lambda row: (0.0 if by == "day" else -row.cost, row.key))
    return {
        "since": since,
        "until": until,
        "by": by,
        "rows": [asdict(row) for row in rows],
        "total": asdict(priced(total_of(groups), prices)),
        "prices": prices.describe(),
    }
