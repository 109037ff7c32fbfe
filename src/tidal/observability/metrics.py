"""``GET /metrics``: the Prometheus text format, from a registry of this gateway's own.

Counters and the duration histogram come from ``InvocationStats`` (counted from the activation
records as they are stored: a scrape flushes the recorder first, so it counts every call answered
before it). Gauges are read at scrape time: the router's pools (instances ready, starting
and desired, queue depth, in flight) on the event loop, jobs and triggers from the state dir in a
worker thread. Nothing is computed for metrics between scrapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidal.gateway.asgi import Receive, Scope, Send, respond, respond_error
from tidal.observability.job_reads import JobCounts, JobReader
from tidal.observability.stats import InvocationStats
from tidal.observability.switch import METRICS_SWITCH, metering_switch
from tidal.store.models import TriggerRecord

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from tidal.gateway.platform import Platform


@dataclass(frozen=True)
class PoolView:
    """One serving revision's pool as a scrape saw it."""

    function: str
    revision: str
    ready: int
    starting: int
    desired: int
    in_flight: int
    queued: int
    panic: bool
    counters: dict[str, int]  # starts, start_failures, lost, recycled, rejected (since the pool began)


@dataclass
class Snapshot:
    at: float = 0.0
    pools: list[PoolView] = field(default_factory=list)
    jobs: JobCounts = field(default_factory=JobCounts)
    jobs_in_flight: int = 0
    triggers: list[TriggerRecord] = field(default_factory=list)


POOL_COUNTERS = {  # PoolCounters field -> (metric, help)
    "starts": ("tidal_instance_starts", "Instance starts begun (each a cold start unless prewarmed)."),
    "start_failures": ("tidal_instance_start_failures", "Instance starts that failed."),
    "lost": ("tidal_instances_lost", "Instances that exited without being asked."),
    "recycled": ("tidal_instances_recycled", "Instances replaced after a call outlived its deadline."),
    "rejected": ("tidal_queue_full", "Requests refused with 429: the revision's queue was full."),
}


def pool_views(platform: Platform) -> list[PoolView]:
    """Read on the event loop, which owns the pools: no lock, no copy of anything large."""
    views = []
    for pool in platform.router.pools():
        described = pool.describe()  # the same numbers `tidal status` shows
        ready, starting, in_flight, queued = (
            _count(described, key) for key in ("ready", "starting", "in_flight", "queued")
        )
        views.append(
            PoolView(
                pool.revision.function, pool.revision.id, ready, starting, pool.desired, in_flight, queued,
                pool.panic, dict(vars(pool.counters)),
            )
        )  # fmt: skip
    return views


def _count(described: dict[str, object], key: str) -> int:
    value = described.get(key, 0)
    return value if isinstance(value, int) else 0


class GatewayCollector:
    """A prometheus_client collector over the stats and the latest snapshot."""

    def __init__(self, stats: InvocationStats) -> None:
        self.stats = stats
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        yield from self._invocations()
        yield from self._pools()
        yield from self._jobs()
        yield from self._triggers()

    def _invocations(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        stats = self.stats
        revisions = list(stats.revisions.items())
        calls = CounterMetricFamily(
            "tidal_invocations",
            "Finished invocations by outcome status.",
            labels=["function", "revision", "status"],
        )
        durations = HistogramMetricFamily(
            "tidal_invocation_duration_seconds", "Request in to answer out, cold starts included.",
            labels=["function", "revision"],
        )  # fmt: skip
        cold = CounterMetricFamily(
            "tidal_cold_starts", "Invocations that waited for a new instance, by how it started "
            "(fork: from a warm template; template-built: the template was built for it; spawn).",
            labels=["function", "revision", "kind"],
        )  # fmt: skip
        billed = CounterMetricFamily(
            "tidal_billed_seconds", "Billed instance time (each call rounded up to 1 ms).",
            labels=["function", "revision"],
        )  # fmt: skip
        bounds = [f"{bound:g}" for bound in stats.bounds] + ["+Inf"]
        for (function, revision), series in revisions:
            for status, count in list(series.calls.items()):
                calls.add_metric([function, revision, status], count)
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, list(series.counts), strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            durations.add_metric([function, revision], buckets, series.total_s)
            for kind, count in list(series.cold_starts.items()):
                cold.add_metric([function, revision, kind], count)
            billed.add_metric([function, revision], series.billed_ms / 1000)
        yield from (calls, durations, cold, billed)
        events = CounterMetricFamily(
            "tidal_scale_events", "Autoscaler decisions that changed a revision's instance count.",
            labels=["function", "revision", "direction"],
        )  # fmt: skip
        for (function, revision, direction), count in list(stats.scale_events.items()):
            events.add_metric([function, revision, direction], count)
        yield events

    def _pools(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["function", "revision"]
        instances = GaugeMetricFamily(
            "tidal_instances", "Instances by state: ready (serving) or starting.", labels=[*labels, "state"]
        )
        desired = GaugeMetricFamily(
            "tidal_instances_desired", "Instances the autoscaler wants.", labels=labels
        )
        queued = GaugeMetricFamily(
            "tidal_queue_depth",
            "Requests waiting for an instance with room (the activator queue).",
            labels=labels,
        )
        in_flight = GaugeMetricFamily("tidal_in_flight", "Requests running on instances now.", labels=labels)
        panic = GaugeMetricFamily(
            "tidal_panic_mode", "1 while the autoscaler is in panic mode.", labels=labels
        )
        counters = {
            name: CounterMetricFamily(metric, help_text, labels=labels)
            for name, (metric, help_text) in POOL_COUNTERS.items()
        }
        for pool in self.snapshot.pools:
            key = [pool.function, pool.revision]
            instances.add_metric([*key, "ready"], pool.ready)
            instances.add_metric([*key, "starting"], pool.starting)
            desired.add_metric(key, pool.desired)
            queued.add_metric(key, pool.queued)
            in_flight.add_metric(key, pool.in_flight)
            panic.add_metric(key, 1 if pool.panic else 0)
            for name, family in counters.items():
                family.add_metric(key, pool.counters.get(name, 0))
        yield from (instances, desired, queued, in_flight, panic, *counters.values())

    def _jobs(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        snapshot = self.snapshot
        jobs = GaugeMetricFamily(
            "tidal_jobs", "Async jobs kept in the store, by state.", labels=["function", "state"]
        )
        for (function, state), count in sorted(snapshot.jobs.by_state.items()):
            jobs.add_metric([function, state], count)
        yield jobs
        lag = GaugeMetricFamily(
            "tidal_job_queue_lag_seconds",
            "How long the oldest due job has waited to start.",
            labels=["function"],
        )
        for function, oldest in sorted(snapshot.jobs.oldest_due.items()):
            lag.add_metric([function], max(0.0, snapshot.at - oldest))
        yield lag
        yield GaugeMetricFamily(
            "tidal_jobs_in_flight", "Job attempts running now.", value=snapshot.jobs_in_flight
        )

    def _triggers(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshot = self.snapshot
        labels = ["trigger", "function", "kind"]
        events = CounterMetricFamily(
            "tidal_trigger_events", "Events a trigger turned into jobs.", labels=labels
        )
        lag = GaugeMetricFamily(
            "tidal_trigger_lag_seconds",
            "How long the trigger's oldest due job has waited to start (0: none waiting).", labels=labels,
        )  # fmt: skip
        failing = GaugeMetricFamily(
            "tidal_trigger_failing",
            "1 while the trigger's source fails (its last error stands).",
            labels=labels,
        )
        last_event = GaugeMetricFamily(
            "tidal_trigger_last_event_timestamp_seconds",
            "When the trigger last made a job (epoch s).",
            labels=labels,
        )
        for trigger in snapshot.triggers:
            key = [trigger.id, trigger.function, trigger.kind]
            events.add_metric(key, trigger.events)
            oldest = snapshot.jobs.oldest_due_by_trigger.get(trigger.id)
            lag.add_metric(key, 0.0 if oldest is None else max(0.0, snapshot.at - oldest))
            failing.add_metric(key, 1 if trigger.last_error else 0)
            last_event.add_metric(key, trigger.last_event_at)
        yield from (events, lag, failing, last_event)


class MetricsEndpoint:
    """The ASGI handler of ``GET /metrics``: admin key required unless ``public``."""

    def __init__(self, platform: Platform, stats: InvocationStats | None, public: bool) -> None:
        self.platform = platform
        self.stats = stats
        self.public = public
        # Jobs kept in tidal.db are counted; on Redis (`--queue`) or PostgreSQL (`--state`) not (yet).
        in_sqlite = platform.job_store is platform.store and platform.config.state_url is None
        self.jobs = JobReader(platform.config.state_dir / "tidal.db") if in_sqlite else None
        self.collector: GatewayCollector | None = None
        self.registry: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":
            return await respond_error(
                send, 405, "MethodNotAllowed", "use GET /metrics", [(b"allow", b"GET")]
            )
        if not self.public:
            refused = await self._refusal(scope)
            if refused is not None:
                status, error_type, message, headers = refused
                return await respond_error(send, status, error_type, message, headers)
        if self.stats is None:
            return await respond_error(
                send,
                404,
                "NotFound",
                f"metrics are off in this gateway ({METRICS_SWITCH}={metering_switch()})",
            )
        body, content_type = await self.render()
        await respond(send, 200, body, content_type.encode(), [])

    async def _refusal(self, scope: Scope) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        authorization = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
        caller = await self.platform.keys.identify(authorization)
        if not caller.authenticated:
            message = "a valid admin API key is required (Authorization: Bearer KEY), or `tidal up --metrics-public`"
            return 401, "Unauthorized", message, [(b"www-authenticate", b"Bearer")]
        if not caller.may("admin"):
            return 403, "Forbidden", "this key lacks the admin scope", []
        return None

    async def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        assert self.stats is not None
        if self.registry is None:  # this gateway's own registry: tests run many gateways in one host
            self.collector = GatewayCollector(self.stats)
            self.registry = CollectorRegistry(auto_describe=False)
            self.registry.register(self.collector)
        assert self.collector is not None
        await self.platform.recorder.flush()  # the records journaled so far, stored and counted
        self.collector.snapshot = await self.snapshot()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def snapshot(self) -> Snapshot:
        now = time.time()
        pools = pool_views(self.platform)
        jobs_in_flight = self.platform.jobs.dispatcher.in_flight
        reader = self.jobs
        jobs, triggers = await asyncio.gather(
            asyncio.to_thread(reader.counts, now) if reader is not None else _no_jobs(),
            asyncio.to_thread(self.platform.store.triggers),
        )
        return Snapshot(now, pools, jobs, jobs_in_flight, triggers)

    def close(self) -> None:
        if self.jobs is not None:
            self.jobs.close()


async def _no_jobs() -> JobCounts:
    return JobCounts()
