"""Observability: Prometheus ``/metrics``, OpenTelemetry traces of invocations, ``tidal top``.

``stats`` counts the activation records as the journal folder stores them (plain dicts, no locks,
no prometheus_client, nothing per request on the gateway); ``metrics`` turns
those counts and a scrape-time look at pools, jobs and triggers into the Prometheus text format;
``tracing`` (optional, needs the ``otel`` extra) wraps ``Invoker.invoke`` in a span per invocation;
``wiring`` attaches all of it to a gateway's Platform.
"""
