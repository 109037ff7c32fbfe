"""Pure parts of observability: the hot-path counts, histogram quantiles, `tidal top`'s arithmetic,
and the tracing wrapper (with the SDK's in-memory exporter)."""

from __future__ import annotations

import asyncio
import dataclasses

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from tidal.cli_top import parse_metrics, rows
from tidal.invoke.outcome import Outcome, OutcomeKind
from tidal.invoke.request import InvocationRequest, RequestContext, Trigger
from tidal.jobs.model import TRIGGER_HEADER, JobSettings, new_job
from tidal.observability.job_reads import JobCounts, JobReader
from tidal.observability.metrics import GatewayCollector, PoolView, Snapshot
from tidal.observability.stats import InvocationStats, RevisionSeries, quantile
from tidal.observability.switch import metering_switch
from tidal.observability.tracing import InvocationTracer, traces_url
from tidal.observability.wiring import activation_writer
from tidal.router.pool import ScalingEvent
from tidal.store.models import Activation, TriggerRecord


def record(duration_ms: float, status: str = "ok", cold_detail: str = "") -> Activation:
    return Activation(
        id="a1", function="embed", revision="embed-00002", instance="i1", start=0.0, duration_ms=duration_ms,
        billed_ms=max(1, int(duration_ms)), memory_mb=128, cold=bool(cold_detail), status=status,
        http_status=200, cold_detail=cold_detail,
    )  # fmt: skip


def test_stats_count_by_status_bucket_and_cold_kind() -> None:
    stats = InvocationStats(bounds=(0.001, 0.01, 0.1))
    stats.observe(record(0.5))  # <= 1 ms
    stats.observe(record(1.0))  # exactly on the bound: `le` includes it
    stats.observe(record(50.0, status="error"))
    stats.observe(record(2500.0, cold_detail="fork"))  # past every bound: +Inf
    series = stats.revisions[("embed", "embed-00002")]
    assert series.calls == {"ok": 3, "error": 1}
    assert series.counts == [2, 0, 1, 1]
    assert series.total_s == pytest.approx(2.5515)
    assert series.cold_starts == {"fork": 1}
    assert series.billed_ms == 1 + 1 + 50 + 2500
    stats.observe_scaling(ScalingEvent(0.0, "embed", "embed-00002", 1, 3, "load"))
    stats.observe_scaling(ScalingEvent(0.0, "embed", "embed-00002", 3, 0, "idle"))
    assert stats.scale_events == {("embed", "embed-00002", "up"): 1, ("embed", "embed-00002", "down"): 1}


def test_counts_made_elsewhere_and_sent_as_json_add_up_to_counting_here() -> None:
    """The journal folder counts each segment's rows and sends them (as JSON) to the gateway, which
    adds them: the sum is what counting every record in one place gives."""
    activations = [record(0.3), record(7.0, "error"), record(900.0, cold_detail="spawn"), record(0.4)]
    activations.append(msgspec.structs.replace(record(2.0), revision="embed-00003"))
    rows = [msgspec.structs.astuple(activation) for activation in activations]
    here = InvocationStats()
    here.count_rows(rows)
    gateway = InvocationStats()
    for segment in (rows[:2], rows[2:]):
        folder = InvocationStats()
        folder.count_rows(segment)
        sent = msgspec.json.encode(folder.series())
        gateway.add(msgspec.json.decode(sent, type=list[tuple[str, str, RevisionSeries]]))
    assert gateway.revisions.keys() == here.revisions.keys()
    for key, series in here.revisions.items():  # the seconds summed in another order: not bit for bit
        assert gateway.revisions[key].total_s == pytest.approx(series.total_s)
        assert dataclasses.replace(gateway.revisions[key], total_s=0.0) == dataclasses.replace(
            series, total_s=0.0
        )
    assert gateway.revisions[("embed", "embed-00002")].calls == {"ok": 3, "error": 1}
    assert gateway.revisions[("embed", "embed-00002")].cold_starts == {"spawn": 1}
    with pytest.raises(ValueError, match="3 duration buckets"):
        gateway.add([("embed", "embed-00002", RevisionSeries([0, 0, 1]))])


def test_quantile_interpolates_inside_the_bucket() -> None:
    assert quantile([1.0, 2.0, 4.0], [0, 10, 0, 0], 0.5) == 1.5
    assert quantile([1.0, 2.0, 4.0], [10, 0, 0, 0], 0.99) == pytest.approx(0.99)
    assert quantile([1.0, 2.0], [0, 0, 5], 0.5) == 2.0  # all past the last bound: the last bound
    assert quantile([1.0], [0, 0], 0.5) is None


METRICS_BEFORE = """
tidal_invocations_total{function="embed",revision="embed-00001",status="ok"} 10
tidal_invocation_duration_seconds_bucket{function="embed",revision="embed-00001",le="0.001"} 10
tidal_invocation_duration_seconds_bucket{function="embed",revision="embed-00001",le="0.002"} 10
tidal_invocation_duration_seconds_bucket{function="embed",revision="embed-00001",le="+Inf"} 10
"""
METRICS_AFTER = """
tidal_invocations_total{function="embed",revision="embed-00001",status="ok"} 110
tidal_invocations_total{function="embed",revision="embed-00001",status="error"} 2
tidal_invocation_duration_seconds_bucket{function="embed",revision="embed-00001",le="0.001"} 10
tidal_invocation_duration_seconds_bucket{function="embed",revision="embed-00001",le="0.002"} 112
tidal_invocation_duration_seconds_bucket{function="embed",revision="embed-00001",le="+Inf"} 112
tidal_instances{function="embed",revision="embed-00001",state="ready"} 2
tidal_instances_desired{function="embed",revision="embed-00001"} 3
tidal_queue_depth{function="embed",revision="embed-00001"} 4
tidal_jobs_in_flight 0
"""


def test_top_rows_are_rates_over_the_window_and_totals() -> None:
    before, after = parse_metrics(METRICS_BEFORE, 100.0), parse_metrics(METRICS_AFTER, 102.0)
    (row,) = rows(before, after, {"embed": 0.25})
    assert row.function == "embed" and row.rps == 51.0  # 102 calls in 2 s
    assert (row.calls, row.errors, row.ready, row.desired, row.queued) == (112, 2, 2, 3, 4)
    assert row.p50_s == pytest.approx(0.0015) and row.p99_s == pytest.approx(0.00199)  # all in (1, 2] ms
    assert row.cost == 0.25
    (first,) = rows(None, after, None)
    assert first.rps == 0.0 and first.p50_s is None and first.cost is None


def test_traces_url_appends_the_signal_path_once() -> None:
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://c/v1/traces") == "https://c/v1/traces"


def test_span_without_a_caller_trace_starts_one_and_reaches_the_function() -> None:
    exporter = InMemorySpanExporter()
    tracer = InvocationTracer(exporter, batch=False)
    seen: dict[str, str] = {}

    async def invoke(request: InvocationRequest) -> Outcome:
        seen.update(request.context.headers)
        outcome = Outcome.error(OutcomeKind.FUNCTION_ERROR, "boom", "ValueError")
        outcome.activation, outcome.revision, outcome.cold = "act1", "embed-00002", False
        return outcome

    request = InvocationRequest("embed", b"{}", context=RequestContext(headers={"tracestate": "vendor=1"}))
    outcome = asyncio.run(tracer.wrap(invoke)(request))
    assert outcome.error_type == "ValueError"
    (span,) = exporter.get_finished_spans()
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    version, seen_trace, seen_span, flags = seen["traceparent"].split("-")
    assert (version, seen_trace, seen_span) == ("00", trace_id, span_id)
    assert int(flags, 16) & 1  # sampled (newer SDKs also set the "random trace id" flag, 02)
    assert "tracestate" not in seen
    assert span.parent is None and span.name == "invoke embed"
    assert span.attributes is not None
    assert span.attributes["tidal.activation"] == "act1" and span.attributes["tidal.status"] == "error"
    assert span.attributes["tidal.error_type"] == "ValueError"
    assert not span.status.is_ok
    tracer.close()


def test_job_reader_counts_states_and_the_lag_of_due_jobs(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = JobSettings(retries=0, max_event_age_s=3600.0)
    from_cron = InvocationRequest(
        "report", b"{}", trigger=Trigger.CRON, context=RequestContext(headers={TRIGGER_HEADER: "trg1"})
    )
    store.add_job(new_job(from_cron, settings, now=1000.0))  # due since 1000
    store.add_job(new_job(InvocationRequest("report", b"{}"), settings, now=1010.0))
    later = new_job(InvocationRequest("embed", b"{}"), settings, now=1000.0)
    later.run_at = 5000.0  # a retry not yet due: no lag
    store.add_job(later)
    reader = JobReader(tmp_path / "tidal.db")
    counts = reader.counts(now=1030.0)
    assert counts.by_state == {("report", "queued"): 2, ("embed", "queued"): 1}
    assert counts.oldest_due == {"report": 1000.0}
    assert counts.oldest_due_by_trigger == {"trg1": 1000.0}
    reader.close()
    assert JobReader(tmp_path / "missing.db").counts(now=0.0).by_state == {}


def test_collector_reports_triggers_jobs_and_pools_from_a_snapshot() -> None:
    collector = GatewayCollector(InvocationStats())
    trigger = TriggerRecord(
        "trg1", "report", "cron", {}, "spec", 0.0, last_error="boom", events=7, last_event_at=990.0
    )
    collector.snapshot = Snapshot(
        at=1030.0,
        pools=[PoolView("report", "report-00001", 2, 1, 3, 5, 4, False, {"starts": 3, "rejected": 9})],
        jobs=JobCounts({("report", "queued"): 2}, {"report": 1000.0}, {"trg1": 1010.0}),
        jobs_in_flight=1,
        triggers=[trigger],
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    pool = 'function="report",revision="report-00001"'
    labels = 'function="report",kind="cron",trigger="trg1"'
    for line in (
        f'tidal_instances{{{pool},state="ready"}} 2.0',
        f'tidal_instances{{{pool},state="starting"}} 1.0',
        f"tidal_instances_desired{{{pool}}} 3.0",
        f"tidal_in_flight{{{pool}}} 5.0",
        f"tidal_queue_depth{{{pool}}} 4.0",
        f"tidal_queue_full_total{{{pool}}} 9.0",
        'tidal_jobs{function="report",state="queued"} 2.0',
        'tidal_job_queue_lag_seconds{function="report"} 30.0',
        "tidal_jobs_in_flight 1.0",
        f"tidal_trigger_events_total{{{labels}}} 7.0",
        f"tidal_trigger_lag_seconds{{{labels}}} 20.0",
        f"tidal_trigger_failing{{{labels}}} 1.0",
        f"tidal_trigger_last_event_timestamp_seconds{{{labels}}} 990.0",
    ):
        assert line in text.splitlines(), line


@pytest.mark.parametrize(
    ("value", "switch"),
    [("0", "0"), (" journal ", "journal"), ("records", "1"), ("1", "1"), ("yes", "1"), ("", "1")],
)
def test_metering_switch_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, switch: str
) -> None:
    monkeypatch.setenv("TIDAL_METRICS", value)
    assert metering_switch() == switch


@pytest.mark.parametrize(("value", "written"), [("0", False), ("journal", True), ("1", True)])
def test_metering_off_drops_the_record_itself(
    monkeypatch: pytest.MonkeyPatch, value: str, written: bool
) -> None:
    """TIDAL_METRICS=0 replaces the recorder's writer only: what the gateway wraps around it
    (keep-alive learning, key quotas, job attribution) runs in every mode."""
    monkeypatch.setenv("TIDAL_METRICS", value)
    stored: list[str] = []
    writer = activation_writer(lambda activation: stored.append(activation.id))
    writer(Activation(id="a1", function="f", revision="f-1", instance="i", start=1.0, duration_ms=1.0,
                      billed_ms=1, memory_mb=128, cold=False, status="ok", http_status=200))  # fmt: skip
    assert stored == (["a1"] if written else [])
