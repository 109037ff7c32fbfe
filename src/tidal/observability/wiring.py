"""Attach metrics and traces to a gateway's Platform: its activation recorder counts each record as
it is stored (tidal.observability.stats), the autoscaler's events are counted, and (when
configured) ``invoke`` runs inside a span.

``TIDAL_METRICS=0`` turns metering (activation records: ``activation_writer``) and metrics off
together; ``TIDAL_METRICS=journal`` keeps the request path's part (each record journaled before
its answer) and drops the rest: the journal's segments are deleted unstored, nothing is counted,
/metrics is off. It exists for ``bench/metering_overhead.py``, which measures what metering costs
the warm path and where; a gateway run either way bills nothing, so nothing but a benchmark
should use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidal.observability.metrics import MetricsEndpoint
from tidal.observability.stats import InvocationStats
from tidal.observability.switch import METRICS_SWITCH, metering_switch
from tidal.store.models import Activation

if TYPE_CHECKING:
    from tidal.gateway.platform import Platform
    from tidal.observability.tracing import InvocationTracer
    from tidal.router.pool import ScalingEvent

log = logging.getLogger("tidal.observability")


@dataclass
class Observability:
    stats: InvocationStats | None  # None: TIDAL_METRICS=0 or =journal
    endpoint: MetricsEndpoint
    tracer: InvocationTracer | None = None

    def close(self) -> None:
        self.endpoint.close()
        if self.tracer is not None:
            self.tracer.close()


def observe(platform: Platform, public: bool = False, otel_endpoint: str | None = None) -> Observability:
    """Wire counting (or, with TIDAL_METRICS=0, no records at all) and tracing into ``platform``."""
    invoker = platform.invoker
    stats: InvocationStats | None = None
    switch = metering_switch()
    if switch == "1":
        stats = InvocationStats()
        platform.recorder.count_into(stats)
        counted_event, on_event = stats.observe_scaling, platform.autoscaler.on_event

        def count_and_record(event: ScalingEvent) -> None:
            counted_event(event)
            on_event(event)

        platform.autoscaler.on_event = count_and_record
    elif switch == "0":  # the records were never written (activation_writer): only say so here
        log.warning(
            "%s=0: activations are not recorded and /metrics is off (benchmarks only)", METRICS_SWITCH
        )
    else:  # journal: written on the request path, then dropped where the folder would store it
        platform.recorder.discard_journaled()
        log.warning(
            "%s=journal: activations are journaled, then deleted unstored; /metrics is off (benchmarks only)",
            METRICS_SWITCH,
        )
    observability = Observability(stats, MetricsEndpoint(platform, stats, public))
    from tidal.observability.tracing import tracing_wanted

    if tracing_wanted(otel_endpoint):
        observability.tracer = _tracer(otel_endpoint)
        if observability.tracer is not None:
            invoker.invoke = observability.tracer.wrap(invoker.invoke)  # type: ignore[method-assign,assignment]
    return observability


def _tracer(endpoint: str | None) -> InvocationTracer | None:
    try:
        from tidal.observability.tracing import InvocationTracer, otlp_exporter

        tracer = InvocationTracer(otlp_exporter(endpoint))
    except ImportError as exc:
        log.error("OpenTelemetry is not installed (pip install 'tidal[otel]'): no traces (%s)", exc)
        return None
    log.info("tracing invocations to %s", endpoint or "the OTEL_EXPORTER_OTLP_* endpoint")
    return tracer


def activation_writer(record: Callable[[Activation], None]) -> Callable[[Activation], None]:
    """What writes each activation record: ``record`` (the recorder's), or with ``TIDAL_METRICS=0``
    nothing. Only the writing is switched off: keep-alive learning, per-key quotas and job
    attribution, which the gateway wraps around it, run in every mode, so that the benchmark's
    "off" differs from "on" by metering and metrics alone."""
    return _discard if metering_switch() == "0" else record


def _discard(activation: Activation) -> None:
    pass
