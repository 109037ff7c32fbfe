"""``tidal optimize SOURCE --int8 --out DIR``: a smaller, faster model bundle with a measured report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tidal.cli import app, err, fail, out
from tidal.optimize.plan import Plan
from tidal.optimize.report import Report, table_rows


def _table(report: Report) -> Table:
    verdict = "[green]accepted[/green]" if report.accepted else "[red]refused[/red]"
    table = Table("measure", "before", "after", "change", title=f"tidal optimize: {verdict}")
    for row in table_rows(report):
        table.add_row(*(escape(cell) for cell in row))
    return table


@app.command()
def optimize(
    source: Annotated[Path, typer.Argument(help="a sentence-transformers model folder")],
    out_dir: Annotated[Path, typer.Option("--out", help="the bundle's folder (must not exist, or be empty)")],
    int8: Annotated[bool, typer.Option("--int8", help="quantize to int8 (without it: fp32 ONNX)")] = False,
    static: Annotated[
        bool,
        typer.Option("--static", help="static int8: activation ranges from --calibrate (default: dynamic)"),
    ] = False,
    calibrate: Annotated[
        Path | None, typer.Option(help="JSON lines of calibration texts for --static")
    ] = None,
    prune: Annotated[
        float, typer.Option(help="zero this fraction of each Linear layer's weights (L1) before export")
    ] = 0.0,
    min_agreement: Annotated[
        float, typer.Option(help="refuse unless the mean cosine similarity with the original reaches this")
    ] = 0.99,
    samples: Annotated[
        Path | None, typer.Option(help="JSON lines of texts to measure on (default: 32 built-in sentences)")
    ] = None,
    threads: Annotated[int, typer.Option(help="threads for both models while measuring latency")] = 1,
    name: Annotated[
        str | None, typer.Option(help="the deployed function's name (default: from --out)")
    ] = None,
) -> None:
    """Export a model to ONNX, quantize it to int8, and write a bundle `tidal deploy DIR` serves.

    Writes DIR/model.onnx, tokenizer.json, main.py and report.json (size, p50 latency and agreement
    before/after); refuses, leaving no DIR, when agreement falls below --min-agreement.
    """
    from tidal.optimize.pipeline import OptimizeError, Refused
    from tidal.optimize.pipeline import optimize as run_optimize

    plan = Plan(
        source=source, out=out_dir, int8=int8, static=static, calibrate=calibrate, prune=prune,
        min_agreement=min_agreement, samples=samples, threads=threads, name=name,
    )  # fmt: skip
    try:
        report = run_optimize(plan, lambda line: err.print(f"[dim]{escape(line)}[/dim]"))
    except OptimizeError as exc:
        fail(escape(str(exc)))
        return
    except Refused as refused:
        out.print(_table(refused.report))
        for note in refused.report.notes:
            out.print(f"- {escape(note)}", highlight=False)
        fail(f"refused: {escape(refused.report.reason)}; nothing was written to {escape(str(out_dir))}")
        return
    out.print(_table(report))
    for note in report.notes:
        out.print(f"- {escape(note)}", highlight=False)
    out.print(
        f"wrote {escape(str(out_dir))} ({report.reason}); deploy it with: tidal deploy {escape(str(out_dir))}"
    )
