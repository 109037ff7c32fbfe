"""``tidal usage``: billed time and cost by function, revision, key or day, and what the same
traffic would have cost on always-on instances (serverless vs reserved)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tidal.cli import app, call, fail, out
from tidal.metering.usage import USAGE_BY


def money(amount: float, currency: str) -> str:
    """A cost to 6 decimals (a call costs fractions of a cent): 0.0000021 -> ``0.000002 USD``."""
    return f"{amount:.6f} {currency}"


def price(value: float) -> str:
    """A unit price without exponent: 1.66667e-05 -> ``0.0000166667``."""
    return f"{value:.10f}".rstrip("0").rstrip(".") or "0"


def usage_table(report: dict[str, Any]) -> Table:
    currency = report["prices"]["currency"]
    table = Table(report["by"], "requests", "errors", "billed ms", "GB-s", "GPU-s", f"cost ({currency})")
    for row in [*report["rows"], report["total"]]:
        name = "[bold]total[/bold]" if row is report["total"] else escape(row["key"] or "(none)")
        table.add_row(
            name, str(row["requests"]), str(row["errors"]), str(row["billed_ms"]), f"{row['gb_s']:.3f}",
            f"{row['gpu_s']:.3f}", f"{row['cost']:.6f}",
        )  # fmt: skip
    return table


def reserved_lines(reserved: dict[str, Any], currency: str) -> list[str]:
    """The serverless-vs-reserved section: both costs, the difference, and tidal's idle overhead."""
    verdict = "cheaper" if reserved["savings"] >= 0 else "dearer"
    lines = [
        f"tidal billed {money(reserved['billed_cost'], currency)}; always-on instances sized for the "
        f"observed peak would have cost {money(reserved['reserved_cost'], currency)} over "
        f"{reserved['window_s']:.0f} s (serverless {verdict} by {money(abs(reserved['savings']), currency)})",
        f"overhead: {reserved['idle_s']:.1f} instance-seconds ({reserved['idle_gb_s']:.3f} GB-s) kept warm "
        f"with no work, of {reserved['instance_s']:.1f} alive ({money(reserved['idle_cost'], currency)} at these prices)",
    ]
    for peak in reserved["functions"]:
        gpus = f", {peak['peak_gpus']:g} GPU" if peak["peak_gpus"] else ""
        lines.append(
            f"  {peak['function']}: peak {peak['peak_instances']} instance(s), {peak['peak_memory_mb']} MiB"
            f"{gpus} -> reserved {money(peak['reserved_cost'], currency)}"
        )
    return lines


@app.command()
def usage(
    since: Annotated[
        str | None, typer.Option(help="only the last 1h, 24h, 7d (default: everything kept)")
    ] = None,
    by: Annotated[str, typer.Option(help="group by function, revision, key or day")] = "function",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Usage and cost (priced with the gateway's price sheet), and serverless vs reserved."""
    if by not in USAGE_BY:
        fail(f"--by takes one of {', '.join(USAGE_BY)}, not {by!r}")
    params = {"by": by} | ({"since": since} if since else {})
    report = call("GET", "/v1/usage", params=params)
    if as_json:
        out.print_json(data=report)
        return
    out.print(usage_table(report))
    prices = report["prices"]
    out.print(
        f"[dim]prices: {price(prices['gb_s'])} per GB-s, {price(prices['request'])} per "
        f"{prices['request_per']:,} requests, {price(prices['gpu_s'])} per GPU-s ({prices['currency']})[/dim]",
        highlight=False,
    )
    out.print("\n[bold]serverless vs reserved[/bold]")
    for line in reserved_lines(report["reserved"], prices["currency"]):
        out.print(line, highlight=False)
