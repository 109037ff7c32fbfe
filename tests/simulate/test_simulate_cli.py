"""``tidal simulate`` end to end: the table, summary.json's contract, the CSVs and the plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidal import cli

FIXTURES = Path(__file__).parent / "fixtures"
CONTRACT = {"policy", "invocations", "cold_starts", "cold_start_pct", "idle_gb_s", "billed_gb_s", "cost"}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["simulate", *args], env={"COLUMNS": "250"})
    return result.exit_code, result.output


def test_arrivals_to_summary_csv_and_plot(tmp_path: Path) -> None:
    out_dir = tmp_path / "report"
    code, output = run(
        "--trace", str(FIXTURES / "arrivals.csv"), "--policy", "fixed:10m", "--policy", "fixed:1m",
        "--policy", "hybrid", "--out", str(out_dir), "--template-mb", "1024", "--memory-mb", "1024",
    )  # fmt: skip
    assert code == 0, output
    assert "fixed:10m" in output and "hybrid" in output and "calls/s" in output
    rows = json.loads((out_dir / "summary.json").read_text())
    assert [row["policy"] for row in rows] == ["fixed:10m", "fixed:1m", "hybrid"]
    for row in rows:
        assert set(row) >= CONTRACT
    ten, one, _hybrid = rows
    # Calls at 0 s and 4.3 s (1 s each), then one 599 s after the second ended: warm under 10 min.
    assert (ten["invocations"], ten["cold_starts"], ten["cold_start_pct"]) == (3, 1, pytest.approx(33.3333))
    assert one["cold_starts"] == 2
    assert ten["idle_gb_s"] == pytest.approx((3.314579 + 599.0) * 2, abs=0.01)
    assert ten["billed_gb_s"] == pytest.approx(3.0)
    assert ten["cost"] == pytest.approx((3.0 + ten["idle_gb_s"]) * 0.0000166667 + 3 * 0.2 / 1e6, rel=1e-4)
    with (out_dir / "summary.csv").open() as handle:
        assert [line["policy"] for line in csv.DictReader(handle)] == ["fixed:10m", "fixed:1m", "hybrid"]
    with (out_dir / "tradeoff.csv").open() as handle:
        curve = [line["policy"] for line in csv.DictReader(handle)]
    assert curve[0] == "fixed:1m" and curve[-1] == "fixed:2h" and len(curve) == 13
    with (out_dir / "functions.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3  # one function, three policies
    png = (out_dir / "tradeoff.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_azure_formats_and_a_price_sheet(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('currency = "EUR"\ngb_s = 1.0\nrequest = 0.0\n')
    code, output = run(
        "--trace", str(FIXTURES / "azure2019_invocations.csv"), "--format", "azure2019",
        "--durations", str(FIXTURES / "azure2019_durations.csv"), "--memory", str(FIXTURES / "azure2019_memory.csv"),
        "--price-sheet", str(prices), "--template-mb", "0", "--out", str(tmp_path / "a"),
    )  # fmt: skip
    assert code == 0, output
    rows = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [row["policy"] for row in rows] == ["fixed:10m", "hybrid"]  # the default policies
    assert rows[0]["currency"] == "EUR"
    assert rows[0]["cost"] == pytest.approx(rows[0]["idle_gb_s"] + rows[0]["billed_gb_s"], abs=0.01)
    code, output = run("--trace", str(FIXTURES / "azure2021.csv"), "--format", "azure2021", "--policy", "30s")
    assert code == 0, output
    assert "fixed:30s" in output


def test_synthetic_needs_no_trace() -> None:
    code, output = run("--format", "synthetic", "--functions", "20", "--hours", "2", "--seed", "4")
    assert code == 0, output
    assert "synthetic(functions=20, hours=2, seed=4)" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "csv", "--trace", "x"], "--format must be one of azure2019, azure2021, arrivals, synthetic"),
        (["--format", "arrivals"], "--format arrivals needs --trace FILE"),
        (["--trace", str(FIXTURES / "arrivals.csv"), "--policy", "forever"], "--policy forever: 'forever' is not a keep-alive policy"),
        (["--trace", str(FIXTURES / "arrivals_bad.csv")], "arrivals_bad.csv:3"),
        (["--trace", str(FIXTURES / "arrivals.csv"), "--durations", "d.csv"], "--durations and --memory go with --format azure2019"),
        (["--trace", str(FIXTURES / "arrivals.csv"), "--price-sheet", str(FIXTURES / "arrivals.csv")], "not valid TOML"),
        (["--trace", str(FIXTURES / "arrivals.csv"), "--fork-ms", "-1"], "--fork-ms must be 0 or more"),
        (["--format", "synthetic", "--functions", "0"], "at least 1 function"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_message(args: list[str], message: str) -> None:
    code, output = run(*args)
    assert code == 1
    assert message in " ".join(output.split())
    assert "Traceback" not in output
