"""``tidal top``: a live view of every function, from the gateway's ``/metrics`` and ``/v1/usage``.

Each frame compares two scrapes ``--interval`` apart: req/s, p50/p99 (from the duration histogram's
buckets, interpolated as Prometheus' histogram_quantile does) over that window; calls and errors
since the gateway started; instances ready/desired, in flight and queued now; cost from the usage
API (``--since``), shown as "-" when the gateway has no usage API.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tidal.cli import app, client, fail, out
from tidal.client import Client, TidalError
from tidal.observability.stats import quantile


@dataclass
class FunctionSample:
    calls: dict[str, float] = field(default_factory=dict)  # activation status -> calls since start
    buckets: dict[float, float] = field(default_factory=dict)  # le (inf for +Inf) -> cumulative calls
    ready: float = 0.0
    desired: float = 0.0
    in_flight: float = 0.0
    queued: float = 0.0


@dataclass
class Sample:
    at: float  # monotonic seconds
    functions: dict[str, FunctionSample]


@dataclass
class Row:
    function: str
    rps: float
    p50_s: float | None
    p99_s: float | None
    calls: int
    errors: int
    ready: int
    desired: int
    in_flight: int
    queued: int
    cost: float | None


GAUGES = {"tidal_in_flight": "in_flight", "tidal_queue_depth": "queued", "tidal_instances_desired": "desired"}


def parse_metrics(text: str, at: float) -> Sample:
    """The per-function sums (over revisions) ``top`` shows, from the Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    functions: dict[str, FunctionSample] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.labels.get("function")
            if name is None:
                continue
            entry = functions.setdefault(name, FunctionSample())
            if sample.name == "tidal_invocations_total":
                status = sample.labels.get("status", "")
                entry.calls[status] = entry.calls.get(status, 0.0) + sample.value
            elif sample.name == "tidal_invocation_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                entry.buckets[bound] = entry.buckets.get(bound, 0.0) + sample.value
            elif sample.name == "tidal_instances" and sample.labels.get("state") == "ready":
                entry.ready += sample.value
            elif sample.name in GAUGES:
                attribute = GAUGES[sample.name]
                setattr(entry, attribute, getattr(entry, attribute) + sample.value)
    return Sample(at, functions)


def window_quantiles(before: FunctionSample | None, now: FunctionSample) -> tuple[float | None, float | None]:
    """p50 and p99 (seconds) of the calls that finished between the two samples."""
    bounds = sorted(now.buckets)
    previous = before.buckets if before is not None else {}
    cumulative = [now.buckets[bound] - previous.get(bound, 0.0) for bound in bounds]
    per_bucket = [cumulative[0], *(b - a for a, b in itertools.pairwise(cumulative))] if bounds else []
    finite = [bound for bound in bounds if not math.isinf(bound)]
    if not finite or sum(per_bucket) <= 0:
        return None, None
    return quantile(finite, per_bucket, 0.5), quantile(finite, per_bucket, 0.99)


def rows(before: Sample | None, now: Sample, costs: dict[str, float] | None) -> list[Row]:
    """The table's rows, busiest first. ``before`` None: no window yet (rates read 0)."""
    elapsed = now.at - before.at if before is not None else 0.0
    result = []
    for name, entry in now.functions.items():
        previous = before.functions.get(name) if before is not None else None
        calls = sum(entry.calls.values())
        errors = calls - entry.calls.get("ok", 0.0)
        window_calls = calls - (sum(previous.calls.values()) if previous is not None else calls)
        p50, p99 = window_quantiles(previous, entry) if previous is not None else (None, None)
        result.append(
            Row(
                name, window_calls / elapsed if elapsed > 0 else 0.0, p50, p99, int(calls), int(errors),
                int(entry.ready), int(entry.desired), int(entry.in_flight), int(entry.queued),
                None if costs is None else costs.get(name, 0.0),
            )
        )  # fmt: skip
    return sorted(result, key=lambda row: (-row.rps, -row.calls, row.function))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def render(table_rows: list[Row], url: str, interval_s: float, since: str, note: str) -> Group:
    table = Table(title=f"tidal top  {url}  (window {interval_s:g} s)", title_justify="left")
    for column in ("function", "req/s", "p50", "p99", "calls", "errors", "instances", "in flight", "queued"):
        table.add_column(column, justify="left" if column == "function" else "right")
    table.add_column(f"cost {since}", justify="right")
    for row in table_rows:
        table.add_row(
            row.function, f"{row.rps:.1f}", _ms(row.p50_s), _ms(row.p99_s), str(row.calls),
            Text(str(row.errors), style="red" if row.errors else ""), f"{row.ready}/{row.desired}",
            str(row.in_flight), str(row.queued), "-" if row.cost is None else f"${row.cost:.6f}",
        )  # fmt: skip
    if not table_rows:
        table.add_row("(no functions)", *[""] * 9)
    return Group(table, Text(note, style="dim")) if note else Group(table)


class Poller:
    """Scrapes the gateway; usage (cost) at most every few seconds: it sums stored records."""

    USAGE_EVERY_S = 5.0

    def __init__(self, api: Client, since: str) -> None:
        self.api, self.since = api, since
        self.costs: dict[str, float] | None = None
        self.note = ""
        self._usage_at = -math.inf

    def sample(self) -> Sample:
        text = self.api.request("GET", "/metrics").text
        return parse_metrics(text, time.monotonic())

    def refresh_costs(self) -> None:
        if time.monotonic() - self._usage_at < self.USAGE_EVERY_S:
            return
        self._usage_at = time.monotonic()
        try:
            usage = self.api.json("GET", "/v1/usage", params={"by": "function", "since": self.since})
        except TidalError as exc:
            self.costs = None
            self.note = (
                "cost: this gateway has no usage API (GET /v1/usage)" if exc.status == 404 else f"cost: {exc}"
            )
            return
        self.costs = {str(item.get("key")): float(item.get("cost") or 0.0) for item in usage.get("rows", [])}
        self.note = ""


@app.command()
def top(
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between frames (the rate window)")] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="print one frame (two scrapes INTERVAL apart) and exit")
    ] = False,
    since: Annotated[
        str, typer.Option(help="the cost column's window, as `tidal usage --since` takes it")
    ] = "24h",
) -> None:
    """A live view of functions: req/s, p50/p99, errors, instances, cost (needs the admin key)."""
    try:
        with client() as api:
            poller = Poller(api, since)
            previous = poller.sample()
            if once:
                time.sleep(interval)
                current = poller.sample()
                poller.refresh_costs()
                out.print(
                    render(rows(previous, current, poller.costs), api.url, interval, since, poller.note)
                )
                return
            with Live(console=out, auto_refresh=False, screen=False) as live:
                while True:
                    time.sleep(interval)
                    current = poller.sample()
                    poller.refresh_costs()
                    frame = render(
                        rows(previous, current, poller.costs), api.url, interval, since, poller.note
                    )
                    live.update(frame, refresh=True)
                    previous = current
    except TidalError as exc:
        hint = (
            "" if exc.status != 404 or "TIDAL_METRICS" in str(exc) else " (this gateway serves no /metrics)"
        )
        fail(f"{exc}{hint}")
    except KeyboardInterrupt:
        pass
