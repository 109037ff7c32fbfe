"""The shadow report as a pure summary of stored rows."""

from __future__ import annotations

from tidal.shadow.report import percentile, summarise
from tidal.store.models import ShadowResult


def result(
    n: int, verdict: str, detail: str = "", score: float | None = None, ms: float = 1.0
) -> ShadowResult:
    return ShadowResult(
        "fn", "fn-00002", "fn-00001", f"p{n}", f"c{n}", 1000.0 - n, verdict, detail, score, ms, 2 * ms
    )


def test_rates_examples_and_errors() -> None:
    results = (
        [result(n, "agree", score=1.0, ms=n + 1) for n in range(6)]
        + [result(6, "disagree", "$[0]: 1 != 2", 0.5), result(7, "disagree", "$[0]: 3 != 4", 0.25)]
        + [result(8, "error", "ValueError: boom"), result(9, "error", "ValueError: boom")]
    )
    report = summarise(results, {"dropped": 3, "streamed": 1}, since_s=3600)

    assert (report["sent"], report["compared"], report["agreed"], report["disagreed"]) == (10, 8, 6, 2)
    assert report["agreement_rate"] == 0.75
    assert [item["activation"] for item in report["disagreements"]] == ["p6", "p7"]
    assert report["disagreements"][0] == {"activation": "p6", "candidate_activation": "c6", "at": 994.0,
                                          "diff": "$[0]: 1 != 2"}  # fmt: skip
    assert report["candidate_errors"] == {"count": 2, "messages": ["ValueError: boom"]}
    assert report["dropped"] == 3 and report["not_compared"] == {"primary_failed": 0, "streamed": 1}
    assert report["scores"] == {"min": 0.25, "p50": 1.0, "max": 1.0}
    assert report["latency"]["candidate"]["p50_ms"] == 2 * report["latency"]["primary"]["p50_ms"]


def test_nothing_sent_has_no_rate() -> None:
    report = summarise([], {}, since_s=60)
    assert report["sent"] == 0 and report["agreement_rate"] is None and report["scores"] is None
    assert report["latency"]["primary"] == {"p50_ms": None, "p99_ms": None}


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 0.99) == 7.0 and percentile([], 0.5) is None
