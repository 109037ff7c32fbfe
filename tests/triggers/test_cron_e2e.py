"""Cron triggers through a real gateway: declared in the spec, fired as jobs with the cron kind,
never twice for one scheduled time across a kill -9 and restart; bad ones refused at add/deploy."""

from __future__ import annotations

import time

from trigger_helpers import activation_of, jobs_of, triggers_of, wait_jobs

from conftest import TidalServer, wait_for

TICK = """
import tidal

@tidal.function(name="tick", triggers=[tidal.cron("* * * * * *", tz="Europe/Paris")])
def tick(event, context: tidal.Context):
    return {"event": event, "trigger": context.headers.get("x-tidal-trigger")}
"""


def test_cron_fires_each_second_once_even_across_a_kill(fresh_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    server = fresh_server.start()
    deployed = server.deploy(write_module(TICK))
    assert deployed.returncode == 0, deployed.stderr
    (trigger,) = triggers_of(server.client, "tick")
    assert (trigger["kind"], trigger["origin"], trigger["config"]["tz"]) == ("cron", "spec", "Europe/Paris")

    jobs = wait_jobs(server.client, "tick", 3)
    result = jobs[0]["result"]
    assert result["trigger"] == trigger["id"]
    assert (
        set(result["event"]) == {"trigger", "scheduled_time", "fired_at"}
        and result["event"]["trigger"] == "cron"
    )
    activation = activation_of(server.client, jobs[0])
    assert (activation["trigger"], activation["trigger_id"], activation["job"]) == (
        "cron",
        trigger["id"],
        jobs[0]["id"],
    )

    assert server.process is not None
    server.process.kill()  # kill -9: no orderly stop
    server.process.wait()
    time.sleep(3)  # runs are missed while down
    server.start()
    before = len(jobs_of(server.client, "tick"))
    wait_jobs(server.client, "tick", before + 2)
    scheduled = [
        job["result"]["event"]["scheduled_time"] for job in jobs_of(server.client, "tick") if job["result"]
    ]
    assert len(scheduled) == len(set(scheduled)), "a scheduled time fired twice"
    (after,) = triggers_of(server.client, "tick")
    assert after["id"] == trigger["id"] and after["state"]["missed"] >= 1  # skipped while down, and said so
    listed = server.cli("triggers", "ls", "tick")
    assert listed.returncode == 0 and "missed while down" in listed.stdout, listed.stdout


def test_bad_triggers_are_refused_at_add_and_deploy(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    source = 'import tidal\n\n@tidal.function(name="nocron", triggers=[tidal.cron("61 * * * *")])\ndef f(e):\n    return e\n'
    refused = tidal_server.deploy(write_module(source))
    assert refused.returncode == 1 and "is not a cron expression" in refused.stderr, refused.stderr

    good = 'import tidal\n\n@tidal.function(name="manual")\ndef f(e):\n    return e\n'
    assert tidal_server.deploy(write_module(good)).returncode == 0
    bad = tidal_server.cli("triggers", "add", "manual", "--cron", "*/5 * * * *", "--tz", "Nowhere/Land")
    assert bad.returncode == 1 and "is not a known time zone" in bad.stderr, bad.stderr
    both = tidal_server.cli("triggers", "add", "manual", "--cron", "* * * * *", "--bucket", "b")
    assert both.returncode == 1 and "exactly one of" in both.stderr
    answer = tidal_server.client.post(
        "/v1/triggers", json={"function": "manual", "kind": "queue", "url": "ftp://x"}
    )
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "BadTrigger"
    missing = tidal_server.client.post(
        "/v1/triggers", json={"function": "ghost", "kind": "cron", "schedule": "* * * * *"}
    )
    assert missing.status_code == 404

    added = tidal_server.cli("triggers", "add", "manual", "--cron", "0 9 * * 1-5", "--tz", "Europe/Paris")
    assert added.returncode == 0, added.stderr
    trigger_id = added.stdout.split()[0]
    assert [t["origin"] for t in triggers_of(tidal_server.client, "manual")] == ["cli"]
    assert tidal_server.cli("triggers", "rm", trigger_id).returncode == 0
    assert triggers_of(tidal_server.client, "manual") == []
    assert tidal_server.cli("triggers", "rm", trigger_id).returncode == 1


def test_a_source_failing_at_run_time_shows_its_error_and_is_retried(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    good = 'import tidal\n\n@tidal.function(name="downq")\ndef f(e):\n    return e\n'
    assert tidal_server.deploy(write_module(good)).returncode == 0
    added = tidal_server.cli("triggers", "add", "downq", "--queue", "redis://127.0.0.1:1/0", "--stream", "s")
    assert added.returncode == 0, added.stderr

    def failing() -> bool:
        (trigger,) = triggers_of(tidal_server.client, "downq")
        return bool(trigger["last_error"]) and "ConnectionError" in trigger["last_error"]

    wait_for(failing, 15, "the error of a queue trigger whose Redis is down")
    listed = tidal_server.cli("triggers", "ls", "downq")
    assert listed.returncode == 0 and "error" in listed.stdout and "ConnectionError" in listed.stdout, (
        listed.stdout
    )
    first = triggers_of(tidal_server.client, "downq")[0]["last_error_at"]
    wait_for(lambda: triggers_of(tidal_server.client, "downq")[0]["last_error_at"] > first, 15, "a retry")
