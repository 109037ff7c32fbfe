"""OpenTelemetry traces (optional: the ``otel`` extra): a span per invocation, exported over OTLP/HTTP.

The span continues the caller's W3C ``traceparent`` when the request has one, and the request
then carries the span's own ``traceparent`` to the instance: function code reads it from
``context.headers["traceparent"]`` (same trace id as the gateway's span, whose span id is the
parent), so spans the function makes join the same trace. Wrapping ``Invoker.invoke`` covers HTTP
calls, job attempts and trigger events alike; with tracing off nothing is wrapped at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from tidal.invoke.outcome import OUTCOMES, Outcome
from tidal.invoke.request import InvocationRequest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

Invoke = Callable[[InvocationRequest], Coroutine[Any, Any, Outcome]]
STANDARD_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TRACES_PATH = "/v1/traces"


def tracing_wanted(endpoint: str | None) -> bool:
    """An endpoint given (``--otel-endpoint``) or set in the standard environment variables."""
    return bool(endpoint) or any(os.environ.get(name) for name in STANDARD_ENDPOINT_VARIABLES)


def traces_url(endpoint: str) -> str:
    """``--otel-endpoint`` is the collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is.

    >>> traces_url("http://127.0.0.1:4318")
    'http://127.0.0.1:4318/v1/traces'
    >>> traces_url("http://collector:4318/v1/traces")
    'http://collector:4318/v1/traces'
    """
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def otlp_exporter(endpoint: str | None) -> SpanExporter:
    """OTLP/HTTP to ``endpoint``; without one the exporter reads the standard variables itself."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=traces_url(endpoint)) if endpoint else OTLPSpanExporter()


class InvocationTracer:
    def __init__(self, exporter: SpanExporter, batch: bool = True) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still win: Resource.create reads them.
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "tidal"}
        # A provider of our own, not the global one: tests run several gateways in one process.
        self.provider: TracerProvider = TracerProvider(resource=Resource.create(attributes))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)  # batched: export happens off the hot path
        self.tracer = self.provider.get_tracer("tidal.invoke")
        self.propagator = TraceContextTextMapPropagator()

    def wrap(self, invoke: Invoke) -> Invoke:
        """``invoke`` inside a span; the request's headers then carry that span's ``traceparent``."""
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        tracer, propagator = self.tracer, self.propagator

        async def traced_invoke(request: InvocationRequest) -> Outcome:
            headers = request.context.headers
            parent = propagator.extract(headers)  # the caller's traceparent, if any
            with tracer.start_as_current_span(
                f"invoke {request.function}", context=parent, kind=SpanKind.SERVER,
                record_exception=False, set_status_on_exception=True,
            ) as span:  # fmt: skip
                headers.pop("tracestate", None)  # the caller's vendor state belongs to its own span
                propagator.inject(headers, context=set_span_in_context(span))
                outcome = await invoke(request)
                span.set_attributes(_attributes(request, outcome))
                if not outcome.ok:
                    span.set_status(Status(StatusCode.ERROR, outcome.message[:200]))
                return outcome

        return traced_invoke

    def close(self) -> None:
        """Export what is pending and stop (the gateway's shutdown)."""
        self.provider.shutdown()


def _attributes(request: InvocationRequest, outcome: Outcome) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "tidal.function": request.function,
        "tidal.trigger": request.trigger.value,
        "tidal.status": OUTCOMES[outcome.kind].activation_status,
        "tidal.outcome": outcome.kind.value,
        "http.response.status_code": outcome.http_status,
    }
    if outcome.activation:  # refused calls (404, 401, 429) reached no revision
        attributes["tidal.revision"] = outcome.revision
        attributes["tidal.activation"] = outcome.activation
        attributes["tidal.cold"] = outcome.cold
        if outcome.cold and outcome.cold_detail:
            attributes["tidal.cold_start_kind"] = outcome.cold_detail
    if outcome.error_type:
        attributes["tidal.error_type"] = outcome.error_type
    return attributes
