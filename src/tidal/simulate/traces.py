"""Trace readers: every format becomes a ``Trace`` of per-function arrival and duration arrays.

Formats (``FORMATS``):

- ``azure2019``: Azure Functions 2019 (Shahrad et al.). The invocations file has
  ``HashOwner,HashApp,HashFunction,Trigger,1..1440`` (invocations per minute of one day); the
  durations file gives each function's ``Average`` duration in ms, the memory file each app's
  ``AverageAllocatedMb``. Invocations of a minute are spread evenly over it; an app's memory is
  split evenly between its functions in the trace (the policy keeps each function apart).
- ``azure2021``: Azure Functions 2021, ``app,func,end_timestamp,duration`` (seconds from the trace
  start, seconds); a call started at ``end_timestamp - duration``.
- ``arrivals``: a CSV with a header and one arrival per row: a time column (``timestamp``, ``time``,
  ``arrival``... or the first column; seconds or ISO date-times such as ``2023-11-16 18:15:46.68``),
  optionally ``function`` (else one function) and ``duration_ms`` or ``duration`` (seconds).
Missing durations and memory take the caller's defaults.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

FORMATS = ("azure2019", "azure2021", "arrivals", "synthetic")
DEFAULT_DURATION_MS = 1000.0
DEFAULT_MEMORY_MB = 512.0
TIME_COLUMNS = ("timestamp", "time", "arrival", "arrival_time", "ts", "start")
FUNCTION_COLUMNS = ("function", "func", "name")


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file, the line and what is wrong."""


@dataclass
class FunctionCalls:
    """One function's invocations: ``starts_s`` sorted (seconds from the trace start)."""

    name: str
    starts_s: np.ndarray
    durations_s: np.ndarray
    memory_mb: float

    @property
    def invocations(self) -> int:
        return int(self.starts_s.size)


@dataclass
class Trace:
    """Invocations of many functions over ``span_s`` seconds."""

    functions: list[FunctionCalls]
    span_s: float
    source: str

    @property
    def invocations(self) -> int:
        return sum(function.invocations for function in self.functions)


def make_function(name: str, starts: list[float], durations: list[float], memory_mb: float) -> FunctionCalls:
    """Arrays sorted by start time (traces are not always sorted)."""
    start_array = np.asarray(starts, dtype=np.float64)
    order = np.argsort(start_array, kind="stable")
    duration_array = np.maximum(np.asarray(durations, dtype=np.float64)[order], 0.0)
    return FunctionCalls(name, start_array[order], duration_array, memory_mb)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV with a header; TraceError if unreadable or headerless."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        try:
            if not reader.fieldnames:
                raise TraceError(f"{path}: empty file, expected a CSV header")
            for row in reader:
                yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TraceError(f"{path}: not a readable CSV: {exc}") from None


def _need(path: Path, header: list[str] | None, columns: tuple[str, ...], what: str) -> None:
    missing = [column for column in columns if column not in (header or [])]
    if missing:
        raise TraceError(f"{path}: not {what}: missing column(s) {', '.join(missing)}")


def _header(path: Path) -> list[str]:
    for _line, row in _rows(path):
        return list(row)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError):
        return []


def _number(path: Path, line: int, column: str, text: str | None) -> float:
    try:
        value = float(text if text is not None else "")
    except ValueError:
        raise TraceError(f"{path}:{line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceError(f"{path}:{line}: {column} {text!r} is not a finite number")
    return value


def _span(functions: list[FunctionCalls], at_least: float = 0.0) -> float:
    ends = [float(np.max(f.starts_s + f.durations_s)) for f in functions if f.invocations]
    return max([at_least, *ends])


def read_azure2019(
    invocations: Path,
    durations: Path | None = None,
    memory: Path | None = None,
    default_duration_ms: float = DEFAULT_DURATION_MS,
    default_memory_mb: float = DEFAULT_MEMORY_MB,
) -> Trace:
    """The 2019 day in ``invocations`` with durations and memory from the two percentile files."""
    _need(
        invocations,
        _header(invocations),
        ("HashOwner", "HashApp", "HashFunction", "1"),
        "an Azure 2019 invocations file",
    )
    average_ms: dict[tuple[str, str, str], float] = {}
    if durations is not None:
        _need(
            durations,
            _header(durations),
            ("HashOwner", "HashApp", "HashFunction", "Average"),
            "an Azure 2019 durations file",
        )
        for line, row in _rows(durations):
            key = (row["HashOwner"], row["HashApp"], row["HashFunction"])
            average_ms[key] = _number(durations, line, "Average", row["Average"])
    app_mb: dict[tuple[str, str], float] = {}
    if memory is not None:
        _need(
            memory,
            _header(memory),
            ("HashOwner", "HashApp", "AverageAllocatedMb"),
            "an Azure 2019 memory file",
        )
        for line, row in _rows(memory):
            app_mb[(row["HashOwner"], row["HashApp"])] = _number(
                memory, line, "AverageAllocatedMb", row["AverageAllocatedMb"]
            )
    counted: list[tuple[tuple[str, str, str], np.ndarray]] = []
    header = _header(invocations)
    minute_columns = next((m for m in range(1, 1441) if str(m) not in header), 1441) - 1
    for line, row in _rows(invocations):
        key = (row["HashOwner"], row["HashApp"], row["HashFunction"])
        minutes = []
        for minute in range(1, minute_columns + 1):
            minutes.append(_number(invocations, line, f"minute {minute}", row.get(str(minute))))
        counts = np.asarray(minutes, dtype=np.int64)
        if (counts < 0).any():
            raise TraceError(f"{invocations}:{line}: negative invocation count")
        counted.append((key, counts))
    functions_per_app: dict[tuple[str, str], int] = defaultdict(int)
    for key, _counts in counted:
        functions_per_app[key[:2]] += 1
    functions = []
    for key, counts in counted:
        if counts.sum() == 0:
            continue
        starts = _spread_over_minutes(counts)
        duration_s = average_ms.get(key, default_duration_ms) / 1000.0
        memory_mb = (
            app_mb.get(key[:2], default_memory_mb * functions_per_app[key[:2]]) / functions_per_app[key[:2]]
        )
        name = f"{key[1][:8]}/{key[2][:8]}"
        functions.append(FunctionCalls(name, starts, np.full(starts.size, duration_s), memory_mb))
    return Trace(functions, _span(functions, minute_columns * 60.0), str(invocations))


def _spread_over_minutes(counts: np.ndarray) -> np.ndarray:
    """n invocations in minute m start at m*60 + (i + 0.5) * 60 / n: [0, 2] -> [75.0, 105.0]."""
    minute_of_call = np.repeat(np.arange(counts.size), counts)
    first_of_minute = np.cumsum(counts) - counts
    index_in_minute = np.arange(minute_of_call.size) - np.repeat(first_of_minute, counts)
    return minute_of_call * 60.0 + (index_in_minute + 0.5) * 60.0 / np.repeat(counts, counts)


def read_azure2021(path: Path, default_memory_mb: float = DEFAULT_MEMORY_MB) -> Trace:
    """``app,func,end_timestamp,duration`` rows (seconds) grouped per ``app/func``."""
    _need(path, _header(path), ("app", "func", "end_timestamp", "duration"), "an Azure 2021 trace")
    starts: dict[str, list[float]] = defaultdict(list)
    durations: dict[str, list[float]] = defaultdict(list)
    for line, row in _rows(path):
        name = f"{row['app'][:8]}/{row['func'][:8]}"
        end = _number(path, line, "end_timestamp", row["end_timestamp"])
        duration = _number(path, line, "duration", row["duration"])
        if duration < 0:
            raise TraceError(f"{path}:{line}: negative duration {duration}")
        starts[name].append(end - duration)
        durations[name].append(duration)
    if not starts:
        raise TraceError(f"{path}: no invocations")
    origin = min(min(values) for values in starts.values())
    functions = [
        make_function(name, [start - origin for start in starts[name]], durations[name], default_memory_mb)
        for name in sorted(starts)
    ]
    return Trace(functions, _span(functions), str(path))


def _pick(header: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {column.strip().lower(): column for column in header}
    return next((lowered[name] for name in names if name in lowered), None)


def _seconds_of(path: Path, line: int, column: str, text: str) -> float:
    """A float of seconds or an ISO date-time (as POSIX seconds, naive ones read as UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    stamp = text.strip()
    # Azure's traces give 7 fractional digits; datetime takes at most 6.
    head, dot, fraction = stamp.partition(".")
    if dot and len(fraction) > 6 and fraction[:7].isdigit():
        stamp = f"{head}.{fraction[:6]}{fraction[7:].lstrip('0123456789')}"
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        raise TraceError(
            f"{path}:{line}: {column} {text!r} is neither seconds nor an ISO date-time"
        ) from None
    if moment.tzinfo is None:
        return (moment - datetime(1970, 1, 1)).total_seconds()
    return moment.timestamp()


def read_arrivals(
    path: Path, default_duration_ms: float = DEFAULT_DURATION_MS, default_memory_mb: float = DEFAULT_MEMORY_MB
) -> Trace:
    """One arrival per row; see the module docstring for the columns read."""
    header = _header(path)
    if not header:
        raise TraceError(f"{path}: empty file, expected a CSV header with a time column")
    time_column = _pick(header, TIME_COLUMNS) or header[0]
    function_column = _pick(header, FUNCTION_COLUMNS)
    duration_ms_column = _pick(header, ("duration_ms",))
    duration_s_column = None if duration_ms_column else _pick(header, ("duration", "duration_s"))
    starts: dict[str, list[float]] = defaultdict(list)
    durations: dict[str, list[float]] = defaultdict(list)
    for line, row in _rows(path):
        name = (row.get(function_column) or "function") if function_column else "function"
        starts[name].append(_seconds_of(path, line, time_column, row.get(time_column) or ""))
        if duration_ms_column:
            duration_s = _number(path, line, duration_ms_column, row.get(duration_ms_column)) / 1000.0
        elif duration_s_column:
            duration_s = _number(path, line, duration_s_column, row.get(duration_s_column))
        else:
            duration_s = default_duration_ms / 1000.0
        if duration_s < 0:
            raise TraceError(f"{path}:{line}: negative duration")
        durations[name].append(duration_s)
    if not starts:
        raise TraceError(f"{path}: no arrivals after the header")
    origin = min(min(values) for values in starts.values())
    functions = [
        make_function(name, [start - origin for start in starts[name]], durations[name], default_memory_mb)
        for name in sorted(starts)
    ]
    return Trace(functions, _span(functions), str(path))
