"""``tidal simulate``: replay a trace through keep-alive policies offline and show what each costs.

Needs no gateway: it reads the trace, replays it on a virtual clock through the same
``tidal.keepalive.policy.windows`` the gateway runs, prints a table and (``--out DIR``) writes
summary.json, CSV files and the trade-off plot. See docs/keep-alive.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tidal.cli import app, fail, out
from tidal.keepalive.policy import KeepAlivePolicy, parse_policy
from tidal.metering.prices import PriceSheetError, load_price_sheet
from tidal.simulate.engine import (
    DEFAULT_FORK_MS,
    DEFAULT_INSTANCE_IDLE_S,
    DEFAULT_TEMPLATE_COLD_MS,
    DEFAULT_TEMPLATE_MB,
    CostModel,
    replay,
    sweep_trace,
)
from tidal.simulate.report import summary, tradeoff_curve, write_outputs
from tidal.simulate.synthetic import SyntheticShape, generate
from tidal.simulate.traces import (
    DEFAULT_DURATION_MS,
    DEFAULT_MEMORY_MB,
    FORMATS,
    Trace,
    TraceError,
    read_arrivals,
    read_azure2019,
    read_azure2021,
)

DEFAULT_POLICIES = ["fixed:10m", "hybrid"]


def _policies(texts: list[str]) -> list[KeepAlivePolicy]:
    policies = []
    for text in texts:
        try:
            policies.append(parse_policy(text))
        except ValueError as exc:
            fail(f"--policy {text}: {exc}")
    return policies


def _load_trace(
    trace: Path | None,
    trace_format: str,
    durations: Path | None,
    memory: Path | None,
    defaults: tuple[float, float],
    shape: SyntheticShape | None,
) -> Trace:
    duration_ms, memory_mb = defaults
    if trace_format == "synthetic":
        assert shape is not None
        return generate(shape)
    if trace is None:
        fail(f"--format {trace_format} needs --trace FILE (only --format synthetic makes its own)")
        raise AssertionError  # fail() exits
    if trace_format != "azure2019" and (durations or memory):
        fail("--durations and --memory go with --format azure2019 only")
    if trace_format == "azure2019":
        return read_azure2019(trace, durations, memory, duration_ms, memory_mb)
    if trace_format == "azure2021":
        return read_azure2021(trace, memory_mb)
    return read_arrivals(trace, duration_ms, memory_mb)


def _positive(value: float, flag: str) -> None:
    if not value >= 0:
        fail(f"{flag} must be 0 or more, not {value}")


@app.command()
def simulate(
    trace: Annotated[
        Path | None, typer.Option(help="the trace file (for azure2019: the invocations file)")
    ] = None,
    trace_format: Annotated[
        str, typer.Option("--format", help="azure2019 | azure2021 | arrivals | synthetic")
    ] = "arrivals",
    policy: Annotated[
        list[str] | None,
        typer.Option(help="a policy to replay, repeatable: fixed:10m, 600, hybrid, hybrid:cv=3"),
    ] = None,
    durations: Annotated[Path | None, typer.Option(help="azure2019: the function durations file")] = None,
    memory: Annotated[Path | None, typer.Option(help="azure2019: the app memory file")] = None,
    price_sheet: Annotated[Path | None, typer.Option(help="TOML prices (default: AWS Lambda x86)")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="write summary.json, CSVs and tradeoff.png here")
    ] = None,
    functions: Annotated[int, typer.Option(help="synthetic: how many functions")] = 200,
    hours: Annotated[float, typer.Option(help="synthetic: hours of workload")] = 24.0,
    seed: Annotated[int, typer.Option(help="synthetic: random seed (same seed, same workload)")] = 1,
    template_cold_ms: Annotated[
        float, typer.Option(help="latency of rebuilding a template")
    ] = DEFAULT_TEMPLATE_COLD_MS,
    fork_ms: Annotated[
        float, typer.Option(help="latency of forking an instance from a warm template")
    ] = DEFAULT_FORK_MS,
    template_mb: Annotated[float, typer.Option(help="memory a loaded template holds")] = DEFAULT_TEMPLATE_MB,
    duration_ms: Annotated[
        float, typer.Option(help="a call's duration when the trace has none")
    ] = DEFAULT_DURATION_MS,
    memory_mb: Annotated[
        float, typer.Option(help="a function's memory when the trace has none")
    ] = DEFAULT_MEMORY_MB,
    instance_idle: Annotated[
        float, typer.Option(help="seconds an extra instance stays idle while other calls run")
    ] = DEFAULT_INSTANCE_IDLE_S,
) -> None:
    """Replay a trace through keep-alive policies: cold starts, idle and billed GB-s, cost.

    `tidal simulate --trace calls.csv --policy fixed:10m --policy hybrid --out report/` replays
    the arrivals in calls.csv and writes report/summary.json, CSVs and report/tradeoff.png (the
    fixed 1..120 min curve with each policy marked). `--format synthetic --functions 500 --hours 48`
    makes a workload shaped like Azure Functions 2019 instead.
    """
    if trace_format not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {trace_format!r}")
    for value, flag in ((template_cold_ms, "--template-cold-ms"), (fork_ms, "--fork-ms"), (template_mb, "--template-mb"),
                        (duration_ms, "--duration-ms"), (memory_mb, "--memory-mb"), (instance_idle, "--instance-idle")):  # fmt: skip
        _positive(value, flag)
    policies = _policies(policy or DEFAULT_POLICIES)
    try:
        prices = load_price_sheet(price_sheet)
        shape = (
            SyntheticShape(functions=functions, hours=hours, seed=seed)
            if trace_format == "synthetic"
            else None
        )
        loaded = _load_trace(trace, trace_format, durations, memory, (duration_ms, memory_mb), shape)
    except (PriceSheetError, TraceError, ValueError) as exc:
        fail(str(exc))
        raise AssertionError from None
    model = CostModel(template_mb, template_cold_ms, fork_ms, instance_idle, prices)
    began = time.perf_counter()
    sweeps = sweep_trace(loaded, model.instance_idle_s)
    results = [replay(sweeps, chosen, model) for chosen in policies]
    elapsed = time.perf_counter() - began
    rows = [summary(result) for result in results]
    _print_table(rows, loaded, elapsed)
    if out_dir is not None:
        curve = tradeoff_curve(sweeps, model)
        try:
            written = write_outputs(
                out_dir, rows, results, curve, f"{loaded.source}: {loaded.invocations:,} calls"
            )
        except OSError as exc:
            fail(f"--out {out_dir}: cannot write there: {exc.strerror or exc}")
            return
        out.print(f"wrote {', '.join(str(path) for path in written)}", highlight=False)


def _print_table(rows: list[dict[str, object]], trace: Trace, elapsed_s: float) -> None:
    hours = trace.span_s / 3600
    table = Table("policy", "invocations", "cold", "cold %", "template", "fork", "idle GB-s", "billed GB-s",
                  "cost", "added latency", "decided by",
                  title=f"{trace.source}: {len(trace.functions)} functions, {hours:.1f} h")  # fmt: skip
    for row in rows:
        modes = ", ".join(f"{mode} {count}" for mode, count in row["modes"].items())  # type: ignore[attr-defined]
        table.add_row(
            str(row["policy"]), f"{row['invocations']:,}", f"{row['cold_starts']:,}", f"{row['cold_start_pct']:.2f}%",
            f"{row['template_cold_starts']:,}", f"{row['fork_cold_starts']:,}", f"{row['idle_gb_s']:,.0f}",
            f"{row['billed_gb_s']:,.0f}", f"{row['cost']:,.2f} {row['currency']}", f"{row['added_latency_s']:,.1f} s",
            modes,
        )  # fmt: skip
    out.print(table)
    events = trace.invocations * len(rows)
    rate = events / elapsed_s if elapsed_s > 0 else float("inf")
    out.print(f"replayed {trace.invocations:,} calls x {len(rows)} policies in {elapsed_s:.2f} s ({rate:,.0f} calls/s)",
              highlight=False)  # fmt: skip
