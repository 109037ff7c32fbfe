"""Trace readers on small fixture files: arrivals, durations and memory as each format gives them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tidal.simulate.traces import TraceError, read_arrivals, read_azure2019, read_azure2021

FIXTURES = Path(__file__).parent / "fixtures"


def test_azure2019_spreads_minute_counts_and_reads_durations_and_memory() -> None:
    trace = read_azure2019(
        FIXTURES / "azure2019_invocations.csv",
        FIXTURES / "azure2019_durations.csv",
        FIXTURES / "azure2019_memory.csv",
    )
    by_name = {function.name: function for function in trace.functions}
    assert sorted(by_name) == ["appA/f1", "appA/f2"]  # f3 was never invoked
    assert by_name["appA/f1"].starts_s.tolist() == [30.0, 330.0]  # minutes 1 and 6, mid-minute
    assert by_name["appA/f2"].starts_s.tolist() == [75.0, 105.0]  # two calls spread over minute 2
    assert by_name["appA/f1"].durations_s.tolist() == [0.25, 0.25]  # the Average column, ms
    assert by_name["appA/f2"].durations_s.tolist() == [1.0, 1.0]  # no durations row: the default
    assert by_name["appA/f1"].memory_mb == by_name["appA/f2"].memory_mb == 150.0  # appA's 300 MB split
    assert trace.span_s == 600.0  # ten minute columns
    assert trace.invocations == 4


def test_azure2019_without_the_percentile_files_takes_defaults() -> None:
    trace = read_azure2019(
        FIXTURES / "azure2019_invocations.csv", default_duration_ms=500, default_memory_mb=128
    )
    assert {f.memory_mb for f in trace.functions} == {128.0}
    assert {float(f.durations_s[0]) for f in trace.functions} == {0.5}


def test_azure2021_starts_at_end_minus_duration_sorted_per_function() -> None:
    trace = read_azure2021(FIXTURES / "azure2021.csv", default_memory_mb=256)
    by_name = {function.name: function for function in trace.functions}
    assert by_name["a1/g1"].starts_s.tolist() == [0.0, 9.0, 99.0]  # from the earliest start (1.0)
    assert by_name["a1/g1"].durations_s.tolist() == [1.0, 0.5, 0.25]
    assert by_name["a1/g2"].starts_s.tolist() == [1.0]
    assert trace.span_s == pytest.approx(99.25)
    assert by_name["a1/g2"].memory_mb == 256.0


def test_arrivals_read_iso_times_with_seven_fraction_digits() -> None:
    trace = read_arrivals(FIXTURES / "arrivals.csv", default_duration_ms=2000)
    [function] = trace.functions
    assert function.name == "function"
    assert np.allclose(function.starts_s, [0.0, 4.314579, 604.314579])
    assert function.durations_s.tolist() == [2.0, 2.0, 2.0]


def test_arrivals_with_function_and_duration_columns() -> None:
    trace = read_arrivals(FIXTURES / "arrivals_functions.csv")
    by_name = {function.name: function for function in trace.functions}
    assert by_name["embed"].starts_s.tolist() == [0.0, 1.5]
    assert by_name["embed"].durations_s.tolist() == [0.1, 0.25]
    assert by_name["chat"].starts_s.tolist() == [5.0]
    assert trace.span_s == 7.0


@pytest.mark.parametrize(
    ("reader", "name", "message"),
    [
        (
            read_arrivals,
            "arrivals_bad.csv",
            r"arrivals_bad.csv:3: time 'yesterday' is neither seconds nor an ISO",
        ),
        (read_azure2021, "arrivals.csv", "not an Azure 2021 trace: missing column"),
        (read_azure2019, "azure2021.csv", "not an Azure 2019 invocations file"),
        (read_arrivals, "missing.csv", "cannot read it"),
    ],
)
def test_bad_traces_name_file_and_line(reader: object, name: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        reader(FIXTURES / name)  # type: ignore[operator]


def test_empty_arrivals_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TraceError, match="empty file"):
        read_arrivals(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("timestamp\n")
    with pytest.raises(TraceError, match="no arrivals"):
        read_arrivals(header_only)
