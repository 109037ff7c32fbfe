"""What ``tidal simulate`` writes: summary rows, CSV files and the trade-off plot.

``summary.json`` is a list with one object per policy; the keys the issue's contract names
(``policy``, ``invocations``, ``cold_starts``, ``cold_start_pct``, ``idle_gb_s``, ``billed_gb_s``,
``cost``) are always there, the others break them down. ``cost`` = requests + (billed + idle)
GB-s at the price sheet's prices: what the memory a policy holds costs, busy or not.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from tidal.keepalive.policy import Fixed, KeepAlivePolicy
from tidal.metering.prices import PER_MILLION
from tidal.simulate.engine import CostModel, PolicyResult, Sweep, replay

# The fixed keep-alives (minutes) that draw the trade-off curve.
CURVE_MINUTES = (1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90, 120)
FUNCTION_COLUMNS = (
    "policy",
    "function",
    "invocations",
    "cold_starts",
    "cold_start_pct",
    "template_cold_starts",
    "fork_cold_starts",
    "idle_gb_s",
    "billed_gb_s",
)


def summary(result: PolicyResult) -> dict[str, Any]:
    """One policy's row: the contract's keys first, then the breakdown."""
    prices = result.cost_model.prices
    invocations = result.invocations
    idle_cost = result.idle_gb_s * prices.gb_s
    billed_cost = result.billed_gb_s * prices.gb_s
    request_cost = invocations * prices.request / PER_MILLION
    per_function = [f.cold_start_pct for f in result.functions if f.invocations]
    p50, p75, p90 = np.percentile(per_function, [50, 75, 90]) if per_function else (0.0, 0.0, 0.0)
    return {
        "policy": result.policy,
        "invocations": invocations,
        "cold_starts": result.cold_starts,
        "cold_start_pct": _pct(result.cold_starts, invocations),
        "idle_gb_s": round(result.idle_gb_s, 3),
        "billed_gb_s": round(result.billed_gb_s, 3),
        "cost": round(idle_cost + billed_cost + request_cost, 6),
        "currency": prices.currency,
        "template_cold_starts": result.template_cold_starts,
        "template_cold_start_pct": _pct(result.template_cold_starts, invocations),
        "fork_cold_starts": result.fork_cold_starts,
        "idle_cost": round(idle_cost, 6),
        "billed_cost": round(billed_cost, 6),
        "request_cost": round(request_cost, 6),
        "added_latency_s": round(result.added_latency_s, 3),
        "mean_added_latency_ms": round(1000 * result.added_latency_s / invocations, 3)
        if invocations
        else 0.0,
        "functions": len(result.functions),
        "function_cold_start_pct_p50": round(float(p50), 2),
        "function_cold_start_pct_p75": round(float(p75), 2),
        "function_cold_start_pct_p90": round(float(p90), 2),
        "modes": dict(sorted(result.modes.items())),
    }


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 4) if whole else 0.0


def tradeoff_curve(sweeps: list[Sweep], model: CostModel) -> list[dict[str, Any]]:
    """Fixed keep-alives of ``CURVE_MINUTES``, each replayed: the curve a policy is judged against."""
    policies: list[KeepAlivePolicy] = [Fixed(minutes * 60.0) for minutes in CURVE_MINUTES]
    return [summary(replay(sweeps, policy, model)) for policy in policies]


def write_outputs(
    out_dir: Path,
    rows: list[dict[str, Any]],
    results: list[PolicyResult],
    curve: list[dict[str, Any]],
    title: str,
) -> list[Path]:
    """summary.json, summary.csv, functions.csv, tradeoff.csv and tradeoff.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / name for name in ("summary.json", "summary.csv", "functions.csv", "tradeoff.csv")]
    written[0].write_text(json.dumps(rows, indent=2) + "\n")
    _write_csv(written[1], rows)
    with written[2].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FUNCTION_COLUMNS)
        for result in results:
            for f in result.functions:
                counts = [f.invocations, f.cold_starts, round(f.cold_start_pct, 4), f.template_cold_starts]
                memory = [f.fork_cold_starts, round(f.idle_gb_s, 3), round(f.billed_gb_s, 3)]
                writer.writerow([result.policy, f.name, *counts, *memory])
    _write_csv(written[3], curve)
    written.append(plot_tradeoff(out_dir / "tradeoff.png", rows, curve, title))
    return written


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = [key for key in rows[0] if key != "modes"] if rows else []
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*columns, "modes"], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            modes = " ".join(f"{mode}={count}" for mode, count in row.get("modes", {}).items())
            writer.writerow({**row, "modes": modes})


def plot_tradeoff(path: Path, rows: list[dict[str, Any]], curve: list[dict[str, Any]], title: str) -> Path:
    """Template cold-start % against idle GB-s: the fixed curve, each simulated policy marked."""
    import matplotlib  # imported here: a second of start-up that only the plot needs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=110)
    axes.plot(
        [row["idle_gb_s"] for row in curve],
        [row["template_cold_start_pct"] for row in curve],
        "o-",
        color="tab:blue",
        label="fixed keep-alive, 1 to 120 min",
    )
    for minutes, row in zip(CURVE_MINUTES, curve, strict=True):
        axes.annotate(
            f"{minutes}m",
            (row["idle_gb_s"], row["template_cold_start_pct"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, 4),
        )
    hybrid_colors = iter(["tab:red", "tab:purple", "tab:orange", "tab:pink", "tab:olive"] * 4)
    other_colors = iter(["tab:green", "tab:brown", "tab:gray", "tab:cyan"] * 5)
    for row in rows:
        hybrid = row["policy"].startswith("hybrid")
        axes.plot(
            row["idle_gb_s"],
            row["template_cold_start_pct"],
            "*" if hybrid else "s",
            markersize=14 if hybrid else 8,
            color=next(hybrid_colors if hybrid else other_colors),
            label=row["policy"],
            linestyle="none",
        )
    axes.set_xlabel("idle memory kept loaded (GB-s)")
    axes.set_ylabel("template cold starts (% of invocations)")
    axes.set_title(title, fontsize=9)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
