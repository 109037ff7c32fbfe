"""The report of one ``tidal optimize`` run: what was measured before and after, and the verdict.

Pure: a typed value, its JSON form (``report.json``) and the rows of the table the CLI prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tidal.optimize.agreement import Agreement

MB = 1_000_000  # sizes are shown in decimal megabytes, as the packages' sizes are quoted


@dataclass(frozen=True)
class Measured:
    """One model as measured on this machine: its weights on disk and its p50 latency per item."""

    label: str
    size_bytes: int
    p50_ms: float


@dataclass(frozen=True)
class Report:
    source: str
    kind: str  # "sentence-embedding"
    method: str  # "int8 dynamic", "int8 static", "fp32"
    threads: int
    before: Measured
    after: Measured
    agreement: Agreement
    min_agreement: float
    accepted: bool
    reason: str
    prune: float = 0.0
    onnx_fp32_p50_ms: float | None = None  # the exported model before quantization, same measurement
    kept_float: list[str] = field(default_factory=list)  # MatMuls left in fp32 to meet the threshold
    notes: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        """How many times smaller the artifact is: 90.9 MB -> 23.0 MB is 3.95."""
        return self.before.size_bytes / max(self.after.size_bytes, 1)

    @property
    def speedup(self) -> float:
        """How many times faster per item: 8.2 ms -> 2.7 ms is 3.04."""
        return self.before.p50_ms / max(self.after.p50_ms, 1e-9)


def report_json(report: Report) -> dict[str, Any]:
    """``report.json``: the report's fields plus the two ratios, rounded for reading."""
    data = asdict(report)
    data["size_ratio"] = round(report.size_ratio, 2)
    data["speedup"] = round(report.speedup, 2)
    for side in ("before", "after"):
        data[side]["p50_ms"] = round(data[side]["p50_ms"], 3)
    data["agreement"]["mean"] = round(report.agreement.mean, 5)
    data["agreement"]["worst"] = round(report.agreement.worst, 5)
    return data


def table_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """(measure, before, after, change) rows: what the CLI's table shows."""
    before, after = report.before, report.after
    measure = "cosine similarity" if report.agreement.kind == "cosine" else "label agreement"
    return [
        ("model", before.label, after.label, report.method),
        ("size", f"{before.size_bytes / MB:.1f} MB", f"{after.size_bytes / MB:.1f} MB",
         f"{report.size_ratio:.2f}x smaller"),
        (f"p50 latency per item ({report.threads} thread{'s' if report.threads > 1 else ''})",
         f"{before.p50_ms:.2f} ms", f"{after.p50_ms:.2f} ms", f"{report.speedup:.2f}x faster"),
        (f"{measure}, mean ({report.agreement.samples} samples)", "1", f"{report.agreement.mean:.4f}",
         f"needs >= {report.min_agreement:g}"),
        (f"{measure}, worst sample", "1", f"{report.agreement.worst:.4f}", ""),
    ]  # fmt: skip


def pruning_note(fraction: float, zero_fraction: float) -> str:
    """What pruning did and did not buy, in words: dense ONNX tensors and dense CPU kernels.

    ``zero_fraction`` is measured on the artifact's weight matrices, so the sentence is a fact.
    """
    return (
        f"pruning zeroed {fraction:.0%} of each Linear layer's weights ({zero_fraction:.1%} of all the "
        "artifact's weight-matrix values, embeddings included, are zero), but ONNX stores tensors densely "
        "and onnxruntime's CPU kernels multiply the zeros too: size and latency are what they would be "
        "without pruning; only agreement changes. Pruning pays off with sparse kernels or structured pruning, not here."
    )
