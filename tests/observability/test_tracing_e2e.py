"""OpenTelemetry: `tidal up --otel-endpoint URL` exports a span per invocation over OTLP/HTTP to a
real (tiny, local) receiver; the span continues the caller's traceparent, and the function sees the
same trace id in its context's headers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from conftest import TidalServer, wait_for

MODULE = """
import tidal

@tidal.function(name="obs_traced")
def traced(payload, context):
    return {"traceparent": context.headers.get("traceparent")}
"""
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Receiver(ThreadingHTTPServer):
    spans: list[Span]
    paths: list[str]


class OtlpHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # http.server calls it by this name
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.paths.append(self.path)
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend(scope_spans.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), OtlpHandler)
    server.spans, server.paths = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def attributes(span: Span) -> dict[str, object]:
    values: dict[str, object] = {}
    for item in span.attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind) if kind else None
    return values


def test_span_per_invocation_with_the_trace_id_carried_into_the_instance(
    fresh_server: TidalServer,
    receiver: Receiver,
    write_module,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s, not the default 5 s
    fresh_server.start("--otel-endpoint", f"http://127.0.0.1:{receiver.server_port}")
    assert fresh_server.deploy(write_module(MODULE, "traced.py")).returncode == 0
    response = fresh_server.client.post(
        "/fn/obs_traced", json={}, headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    )
    assert response.status_code == 200, response.text
    seen = response.json()["traceparent"]
    version, trace_id, parent_span, flags = seen.split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01")  # the caller's trace, sampled
    assert parent_span != CALLER_SPAN  # the gateway's span is the function's parent

    def span_arrived() -> bool:
        return any(span.trace_id.hex() == CALLER_TRACE for span in receiver.spans)

    wait_for(span_arrived, 30, "the invocation's span at the OTLP receiver")
    (span,) = [span for span in receiver.spans if span.trace_id.hex() == CALLER_TRACE]
    assert receiver.paths[0] == "/v1/traces"
    assert span.name == "invoke obs_traced"
    assert span.span_id.hex() == parent_span
    assert span.parent_span_id.hex() == CALLER_SPAN
    assert span.kind == Span.SpanKind.SPAN_KIND_SERVER
    found = attributes(span)
    assert found["tidal.function"] == "obs_traced"
    assert found["tidal.revision"] == response.headers["x-tidal-revision"]
    assert found["tidal.activation"] == response.headers["x-tidal-activation"]
    assert found["tidal.cold"] is True
    assert found["tidal.status"] == "ok"
    assert found["http.response.status_code"] == 200


def test_a_bad_endpoint_is_a_clear_error(fresh_server: TidalServer) -> None:
    with pytest.raises(RuntimeError, match="expected an http:// or https:// URL"):
        fresh_server.start("--otel-endpoint", "collector:4318")
