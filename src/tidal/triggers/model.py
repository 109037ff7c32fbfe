"""What a trigger is, as declared (spec ``triggers``) or added by hand (``tidal triggers add``),
and the checks that refuse a bad one before it is stored (400 / CLI message, never at run time).

Pure and light: no pydantic, no I/O; ``tidal.spec`` and the API both call ``check_trigger``.

A trigger is a plain dict ``{"kind": "cron" | "bucket" | "queue", ...options}``; ``check_trigger``
returns it complete (defaults filled), so what is stored says everything the runner needs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

KINDS = ("cron", "bucket", "queue")
TRIGGER_ID_PREFIX = "trg-"
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
STREAM_NAME = re.compile(r"^[\x21-\x7e]{1,200}$")
QUEUE_SCHEMES = ("redis", "rediss", "nats", "tls", "amqp", "amqps")
NATS_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # JetStream: no spaces, dots or wildcards

DEFAULT_CATCHUP_S = 3600.0  # cron: a run missed while down fires once if it is at most this old
DEFAULT_POLL_S = 2.0  # bucket: how often a folder is scanned for files put there by other means
DEFAULT_BATCH = 10
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_VISIBILITY_S = 60.0  # queue: a message pending this long with a consumer is reclaimed

# Options per kind: name -> default (None: required). One list, one place: the checks, the API's
# docs and the CLI's flags read it.
OPTIONS: dict[str, dict[str, object]] = {
    "cron": {"schedule": None, "tz": "UTC", "catchup": DEFAULT_CATCHUP_S},
    "bucket": {
        "bucket": None,
        "prefix": "",
        "suffix": "",
        "output_prefix": "",
        "poll": DEFAULT_POLL_S,
        "s3_endpoint": "",  # "": a local-folder bucket; "aws" or http(s)://HOST:PORT: an S3-compatible store
        "s3_region": "us-east-1",
    },
    "queue": {
        "url": None,
        "stream": "tidal",
        "subject": "",  # nats: the subject consumed (default: the stream's name; created with it if missing)
        "group": "",  # "" -> "tidal-FUNCTION"
        "batch": DEFAULT_BATCH,
        "concurrency": DEFAULT_CONCURRENCY,
        "max_deliveries": DEFAULT_MAX_DELIVERIES,
        "dead_letter": "",  # "" -> "STREAM:dead"
        "visibility_timeout": DEFAULT_VISIBILITY_S,
    },
}


class TriggerError(ValueError):
    """A trigger refused before it is stored; the message says which option and why."""


def check_trigger(raw: Mapping[str, Any], function: str = "") -> dict[str, Any]:
    """``raw`` validated and completed with its defaults, or TriggerError.

    >>> check_trigger({"kind": "cron", "schedule": "*/5 * * * *"})["tz"]
    'UTC'
    """
    if not isinstance(raw, Mapping):
        raise TriggerError(f"a trigger is an object with a 'kind', not {type(raw).__name__}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise TriggerError(f"trigger kind must be one of {', '.join(KINDS)}, not {kind!r}")
    options = OPTIONS[kind]
    unknown = sorted(set(raw) - set(options) - {"kind"})
    if unknown:
        raise TriggerError(f"{kind} trigger: unknown option(s) {unknown}; known: {', '.join(options)}")
    config: dict[str, Any] = {"kind": kind}
    for name, default in options.items():
        value = raw.get(name, default)
        if value is None:
            raise TriggerError(f"{kind} trigger: {name!r} is required")
        config[name] = value
    return {"cron": _cron, "bucket": _bucket, "queue": _queue}[kind](config, function)


def _cron(config: dict[str, Any], function: str) -> dict[str, Any]:
    from tidal.triggers.cron import check_schedule, check_timezone  # croniter: loaded when needed

    config["schedule"] = check_schedule(_text(config, "schedule"))
    config["tz"] = check_timezone(_text(config, "tz"))
    config["catchup"] = _number(config, "catchup", 0, 7 * 86400)
    return config


def _bucket(config: dict[str, Any], function: str) -> dict[str, Any]:
    from tidal.buckets.keys import check_prefix

    name = _text(config, "bucket")
    if not BUCKET_NAME.match(name):
        raise TriggerError(
            f"bucket trigger: bucket {name!r} must be 1-63 lowercase letters, digits, '.', '_' or '-'"
        )
    for option in ("prefix", "output_prefix"):
        try:
            config[option] = check_prefix(_text(config, option))
        except ValueError as exc:
            raise TriggerError(f"bucket trigger: {option}: {exc}") from None
    config["suffix"] = _text(config, "suffix")
    if (
        config["output_prefix"]
        and config["output_prefix"].startswith(config["prefix"])
        and (not config["suffix"] or config["suffix"] == ".json")
    ):
        # The result would land where the trigger listens: it would fire on its own output.
        raise TriggerError(
            "bucket trigger: output_prefix lies under prefix with a suffix that matches results"
        )
    config["poll"] = _number(config, "poll", 0.1, 3600)
    endpoint = _text(config, "s3_endpoint")
    if endpoint and endpoint != "aws":
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise TriggerError(
                f"bucket trigger: s3_endpoint must be 'aws' or http(s)://HOST[:PORT] (credentials come from the "
                f"gateway's environment, never the trigger), not {endpoint!r}"
            )
    config["s3_region"] = _text(config, "s3_region")
    return config


def _queue(config: dict[str, Any], function: str) -> dict[str, Any]:
    url = _text(config, "url")
    parts = urlsplit(url)
    if parts.scheme not in QUEUE_SCHEMES or not parts.hostname:
        raise TriggerError(
            "queue trigger: url must be redis://HOST[:PORT][/DB], nats://HOST[:PORT] or "
            f"amqp://USER:PASSWORD@HOST[:PORT][/VHOST], not {url!r}"
        )
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is no number)
    except ValueError as exc:
        raise TriggerError(f"queue trigger: url {url!r}: {exc}") from None
    stream = _text(config, "stream")
    if not STREAM_NAME.match(stream):
        raise TriggerError(f"queue trigger: stream {stream!r} must be 1-200 visible ASCII characters")
    config["group"] = _text(config, "group") or f"tidal-{function or 'function'}"
    nats = parts.scheme in ("nats", "tls")
    if nats:
        if not NATS_STREAM_NAME.match(stream):
            raise TriggerError(
                f"queue trigger: JetStream stream {stream!r} must be 1-64 letters, digits, '_' or '-'"
            )
        if not NATS_STREAM_NAME.match(config["group"]):
            raise TriggerError(
                f"queue trigger: durable consumer {config['group']!r}: letters, digits, '_' or '-'"
            )
        config["subject"] = _text(config, "subject") or stream
    elif _text(config, "subject"):
        raise TriggerError(
            "queue trigger: 'subject' is for nats:// queues (a Redis stream or RabbitMQ queue is its own subject)"
        )
    rabbit = parts.scheme in ("amqp", "amqps")
    if rabbit and importlib.util.find_spec("aio_pika") is None:
        raise TriggerError(
            "queue trigger: amqp:// queues need RabbitMQ's client: pip install 'tidal[rabbitmq]'"
        )
    if rabbit and stream.startswith("amq."):
        raise TriggerError(f"queue trigger: RabbitMQ reserves queue names starting 'amq.' ({stream!r})")
    default_dead = f"{stream}-dead" if nats else f"{stream}.dead" if rabbit else f"{stream}:dead"
    config["dead_letter"] = _text(config, "dead_letter") or default_dead
    if config["dead_letter"] == stream:
        raise TriggerError("queue trigger: dead_letter must differ from stream (a poison message would loop)")
    config["batch"] = int(_number(config, "batch", 1, 1000, integer=True))
    config["concurrency"] = int(_number(config, "concurrency", 1, 256, integer=True))
    config["max_deliveries"] = int(_number(config, "max_deliveries", 1, 100, integer=True))
    config["visibility_timeout"] = _number(config, "visibility_timeout", 1, 86400)
    return config


def _text(config: Mapping[str, Any], name: str) -> str:
    value = config[name]
    if not isinstance(value, str):
        raise TriggerError(f"{config['kind']} trigger: {name!r} must be a string, not {value!r}")
    return value


def _number(config: Mapping[str, Any], name: str, low: float, high: float, integer: bool = False) -> float:
    value = config[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        want = "an integer" if integer else "a number of seconds"
        raise TriggerError(f"{config['kind']} trigger: {name!r} must be {want}, not {value!r}")
    if not low <= value <= high:
        raise TriggerError(
            f"{config['kind']} trigger: {name!r} must be within {low:g}..{high:g}, not {value!r}"
        )
    return float(value)


def spec_trigger_id(function: str, config: Mapping[str, Any]) -> str:
    """A declared trigger's id: the same declaration keeps its id (and its state) across deploys."""
    identity = json.dumps([function, dict(config)], sort_keys=True)
    return TRIGGER_ID_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:16]


def new_trigger_id() -> str:
    return TRIGGER_ID_PREFIX + secrets.token_hex(8)


def describe(config: Mapping[str, Any]) -> str:
    """One line for ``tidal triggers ls``: ``cron */5 * * * * (Europe/Paris)``."""
    kind = config.get("kind")
    if kind == "cron":
        return f"cron {config['schedule']} ({config['tz']}); catch-up {config['catchup']:g}s"
    if kind == "bucket":
        store = f"s3 {config['s3_endpoint']} " if config.get("s3_endpoint") else ""
        shown = f"bucket {store}{config['bucket']}/{config['prefix']}*{config['suffix']}"
        return shown + (f" -> {config['output_prefix']}KEY.json" if config.get("output_prefix") else "")
    if kind == "queue":
        url = urlsplit(str(config["url"]))
        where = f"{url.scheme}://{url.hostname}{':' + str(url.port) if url.port else ''}{url.path}"
        on = f" subject {config['subject']}" if config.get("subject") else ""
        return (f"queue {where} stream {config['stream']}{on} (batch {config['batch']}, concurrency "
                f"{config['concurrency']}, max {config['max_deliveries']} -> {config['dead_letter']})")  # fmt: skip
    return str(kind)


def is_s3(config: Mapping[str, Any]) -> bool:
    """Whether a bucket trigger watches an S3-compatible store (not a local folder)."""
    return config.get("kind") == "bucket" and bool(config.get("s3_endpoint"))
