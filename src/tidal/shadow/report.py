"""``tidal shadow report``: what the copies to a candidate showed, as a pure summary of stored rows.

Sent copies are those that reached the candidate and came back: each agreed, disagreed or failed
(a candidate error: nothing to compare). The agreement rate is agreed / compared (errors excluded:
they are counted on their own). Latency is each side's, over the same sent calls: the primary's as
the client saw it, the candidate's from the copy's start (a cold start of the candidate included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tidal.store.models import SHADOW_SKIPS, ShadowResult

EXAMPLES = 5  # disagreements shown, the newest
ERROR_MESSAGES = 3  # distinct candidate error messages shown, the newest


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``values``: p50 of [1, 2, 3, 4] is 2, p99 is 4; None if empty.

    >>> percentile([4.0, 1.0, 3.0, 2.0], 0.5)
    2.0
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def latency(values: Sequence[float]) -> dict[str, float | None]:
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    return {
        "p50_ms": None if p50 is None else round(p50, 3),
        "p99_ms": None if p99 is None else round(p99, 3),
    }


def summarise(
    results: Sequence[ShadowResult], skips: Mapping[str, int], since_s: float, truncated: bool = False
) -> dict[str, Any]:
    """The report over ``results`` (newest first) and skip counts by reason, for the last ``since_s``.

    With 10 results of which 6 agreed, 2 disagreed and 2 failed: compared 8, agreement_rate 0.75.
    """
    agreed = [result for result in results if result.verdict == "agree"]
    disagreed = [result for result in results if result.verdict == "disagree"]
    errors = [result for result in results if result.verdict == "error"]
    compared = len(agreed) + len(disagreed)
    messages: list[str] = []
    for result in errors:
        if result.detail not in messages and len(messages) < ERROR_MESSAGES:
            messages.append(result.detail)
    scores = [result.score for result in agreed + disagreed if result.score is not None]
    skipped = {reason: int(skips.get(reason, 0)) for reason in SHADOW_SKIPS}
    return {
        "since_s": since_s,
        "sampled_only": truncated,  # True: more results than were read; the newest are summarised
        "sent": len(results),
        "compared": compared,
        "agreed": len(agreed),
        "disagreed": len(disagreed),
        "agreement_rate": round(len(agreed) / compared, 6) if compared else None,
        "disagreements": [
            {
                "activation": result.activation,
                "candidate_activation": result.candidate_activation,
                "at": result.at,
                "diff": result.detail,
            }
            for result in disagreed[:EXAMPLES]
        ],
        "candidate_errors": {"count": len(errors), "messages": messages},
        "dropped": skipped["dropped"],
        "not_compared": {"primary_failed": skipped["primary_failed"], "streamed": skipped["streamed"]},
        "scores": (
            {"min": min(scores), "p50": percentile(scores, 0.5), "max": max(scores)} if scores else None
        ),
        "latency": {
            "primary": latency([result.primary_ms for result in results]),
            "candidate": latency([result.candidate_ms for result in results]),
        },
    }
