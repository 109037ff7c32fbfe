"""Pure parts of triggers: config checks, the cron decision with a moved clock, object keys."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import tidal
from tidal.buckets.folder import BucketError, FolderBuckets
from tidal.buckets.keys import check_key, matches
from tidal.spec import SpecError, validate_spec
from tidal.triggers.cron import LATE_GRACE_S, decide, iso, next_time
from tidal.triggers.model import TriggerError, check_trigger, spec_trigger_id
from tidal.triggers.service import backoff_s


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_cron_fires_on_time_and_waits_otherwise() -> None:
    every_minute = "* * * * *"
    waiting = decide(every_minute, "UTC", 3600, at("2026-01-01T10:00:00"), at("2026-01-01T10:00:30"))
    assert (waiting.fire, waiting.next_at) == (None, at("2026-01-01T10:01:00"))
    due = decide(every_minute, "UTC", 3600, at("2026-01-01T10:00:00"), at("2026-01-01T10:01:00.2"))
    assert (due.fire, due.decided_until, due.missed) == (
        at("2026-01-01T10:01:00"),
        at("2026-01-01T10:01:00"),
        0,
    )


def test_cron_after_downtime_fires_the_latest_run_within_catchup_once() -> None:
    down_since = at("2026-01-01T10:00:00")
    back = at("2026-01-01T10:30:10")
    decision = decide("*/5 * * * *", "UTC", 3600, down_since, back)
    assert decision.fire == at("2026-01-01T10:30:00") and decision.missed == 5  # 10:05 ... 10:25 skipped
    again = decide("*/5 * * * *", "UTC", 3600, decision.decided_until, back + 1)
    assert again.fire is None  # decided: a second look fires nothing


def test_cron_skips_a_run_older_than_catchup() -> None:
    decision = decide("0 * * * *", "UTC", 600, at("2026-01-01T08:00:00"), at("2026-01-01T10:30:00"))
    assert decision.fire is None and decision.missed == 2  # 09:00 and 10:00 (30 min > 10 min catch-up)
    assert decision.decided_until == at("2026-01-01T10:00:00")
    late = decide(
        "0 * * * *", "UTC", 0, at("2026-01-01T09:00:00"), at("2026-01-01T10:00:00") + LATE_GRACE_S - 1
    )
    assert late.fire == at("2026-01-01T10:00:00")  # a little late is on time, even with catchup 0


def test_cron_time_zone_and_seconds_field() -> None:
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert next_time("0 9 * * *", "Europe/Paris", at("2026-01-10T00:00:00")) == at("2026-01-10T08:00:00")
    assert next_time("0 9 * * *", "Europe/Paris", at("2026-07-10T00:00:00")) == at("2026-07-10T07:00:00")
    assert next_time("* * * * * */2", "UTC", at("2026-01-01T00:00:01")) == at("2026-01-01T00:00:02")
    assert iso(at("2026-01-01T09:00:00")) == "2026-01-01T09:00:00.000Z"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "cron", "schedule": "every day"}, "is not a cron expression"),
        ({"kind": "cron", "schedule": "* * * * *", "tz": "Mars/Olympus"}, "is not a known time zone"),
        ({"kind": "cron"}, "'schedule' is required"),
        ({"kind": "ftp"}, "must be one of cron, bucket, queue"),
        ({"kind": "bucket", "bucket": "Images"}, "lowercase"),
        ({"kind": "bucket", "bucket": "img", "prefix": "../x/"}, "'..' segment"),
        ({"kind": "queue", "url": "http://x"}, "redis://"),
        ({"kind": "queue", "url": "redis://h", "batch": 0}, "within 1..1000"),
        ({"kind": "queue", "url": "redis://h", "stream": "s", "dead_letter": "s"}, "must differ"),
        ({"kind": "cron", "schedule": "* * * * *", "every": 1}, "unknown option(s) ['every']"),
    ],
)
def test_bad_triggers_are_refused_with_the_reason(raw: dict[str, object], message: str) -> None:
    with pytest.raises(TriggerError) as refused:
        check_trigger(raw, "f")
    assert message in str(refused.value)


def test_a_declared_trigger_keeps_its_id_and_defaults_are_filled() -> None:
    config = check_trigger({"kind": "queue", "url": "redis://127.0.0.1:6379/0", "stream": "tasks"}, "f")
    assert (config["group"], config["dead_letter"], config["max_deliveries"]) == ("tidal-f", "tasks:dead", 5)
    assert spec_trigger_id("f", config) == spec_trigger_id("f", dict(config))
    assert spec_trigger_id("f", config) != spec_trigger_id("g", config)
    assert [backoff_s(n) for n in (1, 2, 7, 20)] == [1.0, 2.0, 60.0, 60.0]


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "", ".tidal/tmp"]
)
def test_keys_that_could_leave_the_bucket_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)


def test_a_symlink_out_of_the_bucket_is_refused(tmp_path: Path) -> None:
    buckets = FolderBuckets(tmp_path / "buckets")
    buckets.put("img", "in/a.png", b"png")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key").write_text("s3cr3t")
    (tmp_path / "buckets" / "img" / "leak").symlink_to(outside)
    with pytest.raises(BucketError, match="outside the bucket"):
        buckets.get("img", "leak/key")
    with pytest.raises(BucketError, match="outside the bucket"):
        buckets.put("img", "leak/new", b"x")
    assert [item.key for item in buckets.list("img")] == ["in/a.png"]
    assert buckets.stat("img", "in/a.png").etag == hashlib.md5(b"png").hexdigest()
    assert matches("in/a.png", "in/", ".png") and not matches("out/in/a.png.json", "", "", "out/")


def test_the_trigger_helpers_keep_import_tidal_light() -> None:
    probe = (
        "import sys, tidal; tidal.cron('* * * * *'); tidal.bucket('b'); tidal.queue('redis://h');"
        "print(sorted(m for m in ('pydantic', 'msgspec', 'croniter', 'redis') if m in sys.modules))"
    )
    printed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == "[]"


def test_the_helpers_give_what_the_spec_takes() -> None:
    spec = validate_spec({"name": "f", "triggers": [tidal.cron("*/5 * * * *", tz="Europe/Paris"),
                          tidal.bucket("images", prefix="in/", suffix=".png"),
                          tidal.queue("redis://localhost:6379/0", stream="tasks")]})  # fmt: skip
    assert [trigger["kind"] for trigger in spec.triggers] == ["cron", "bucket", "queue"]
    assert spec.triggers[2]["group"] == "tidal-f" and "triggers" in spec.function_settings()
    with pytest.raises(SpecError, match=r"triggers\[0\]: cron trigger: schedule 'soon'"):
        validate_spec({"name": "f", "triggers": [tidal.cron("soon")]})


def test_a_rabbitmq_queue_trigger_is_checked_and_named() -> None:
    from tidal.triggers.rabbitmq_queue import message_key

    config = check_trigger(
        {"kind": "queue", "url": "amqp://guest:guest@127.0.0.1:5672/", "stream": "orders"}, "f"
    )
    assert config["dead_letter"] == "orders.dead" and config["group"] == "tidal-f"
    with pytest.raises(TriggerError, match=r"reserves queue names starting 'amq\.'"):
        check_trigger({"kind": "queue", "url": "amqps://h/", "stream": "amq.gen-1"}, "f")
    with pytest.raises(TriggerError, match="'subject' is for nats://"):
        check_trigger({"kind": "queue", "url": "amqp://h/", "subject": "x"}, "f")
    assert message_key("orders", "order-7", b"{}") == ("order-7", True)
    assert message_key("orders", None, b"{}") == (f"orders:{hashlib.sha256(b'{}').hexdigest()[:16]}", False)
