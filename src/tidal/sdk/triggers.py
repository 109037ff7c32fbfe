"""``tidal.cron``, ``tidal.bucket``, ``tidal.queue``: event triggers for ``@tidal.function(triggers=[...])``.

Each returns the plain mapping a ``tidal.toml`` or ``tidal triggers add`` would give: no
validation here (this module is on every instance's cold path); the gateway checks them at deploy
(tidal.triggers.model) and a bad one fails the deploy with its reason.
"""

from __future__ import annotations

from typing import Any


def cron(schedule: str, tz: str = "UTC", catchup: float = 3600.0) -> dict[str, Any]:
    """Run on a cron schedule (``"*/5 * * * *"``; a 6th field is seconds) in time zone ``tz``.
    A run missed while the gateway was down fires once if at most ``catchup`` seconds old."""
    return {"kind": "cron", "schedule": schedule, "tz": tz, "catchup": catchup}


def bucket(
    name: str,
    prefix: str = "",
    suffix: str = "",
    output_prefix: str = "",
    poll: float = 2.0,
    s3_endpoint: str = "",
    s3_region: str = "us-east-1",
) -> dict[str, Any]:
    """Run for each object created in bucket ``name`` under ``prefix`` with ``suffix``: a local
    folder bucket, or with ``s3_endpoint`` (``"aws"`` or ``http://HOST:PORT``) an S3-compatible
    store. With ``output_prefix`` the JSON result is written to ``OUTPUT_PREFIX + KEY.json``."""
    return {"kind": "bucket", "bucket": name, "prefix": prefix, "suffix": suffix, "output_prefix": output_prefix,
            "poll": poll, "s3_endpoint": s3_endpoint, "s3_region": s3_region}  # fmt: skip


def queue(url: str, stream: str = "tidal", **options: Any) -> dict[str, Any]:
    """Run for each message of a Redis stream (``redis://HOST:PORT/DB``), a NATS JetStream stream
    (``nats://HOST:PORT``) or a RabbitMQ queue (``amqp://USER:PASS@HOST:PORT/VHOST``). Options: ``group``,
    ``batch``, ``concurrency``, ``max_deliveries``, ``dead_letter``, ``visibility_timeout``."""
    return {"kind": "queue", "url": url, "stream": stream, **options}
