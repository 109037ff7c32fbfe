"""`tidal invoke --async` and `tidal jobs ...`, driven as a user would, against a real gateway."""

from __future__ import annotations

import json

from conftest import TidalServer

MAYBE = """
import tidal

@tidal.function(name="{name}", retries=0)
def maybe(payload):
    if payload.get("fail"):
        raise RuntimeError("failing as asked")
    return {{"echo": payload}}
"""


def test_async_jobs_from_the_shell(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    name = "cjobs"
    assert tidal_server.deploy(write_module(MAYBE.format(name=name))).returncode == 0

    queued = tidal_server.cli("invoke", name, '{"x": 1}', "--async", "--idempotency-key", "cli-1")
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    assert job_id.startswith("job-") and f"tidal jobs show {job_id} --wait" in queued.stderr
    replay = tidal_server.cli("invoke", name, '{"x": 1}', "--async", "--idempotency-key", "cli-1")
    assert replay.stdout.strip() == job_id and "an earlier job" in replay.stderr

    shown = tidal_server.cli("jobs", "show", job_id, "--wait", "--timeout", "30s")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert (record["state"], record["result"]) == ("succeeded", {"echo": {"x": 1}})

    failing = tidal_server.cli("invoke", name, '{"fail": true}', "--async").stdout.strip()
    dead = tidal_server.cli("jobs", "show", failing, "--wait", "--timeout", "30s")
    assert dead.returncode == 1 and json.loads(dead.stdout)["state"] == "dead"
    assert json.loads(dead.stdout)["error"]["type"] == "RuntimeError"

    listed = tidal_server.cli("jobs", "ls", name)
    assert listed.returncode == 0 and job_id in listed.stdout and failing in listed.stdout
    assert "succeeded" in listed.stdout and "dead" in listed.stdout
    only_dead = json.loads(tidal_server.cli("jobs", "ls", name, "--state", "dead", "--json").stdout)
    assert [job["id"] for job in only_dead] == [failing]
    dlq = tidal_server.cli("jobs", "dlq", name)
    assert failing in dlq.stdout and job_id not in dlq.stdout and "1 dead job(s)" in dlq.stderr

    redriven = tidal_server.cli("jobs", "redrive", name, "--id", failing)
    assert redriven.returncode == 0 and "1 job(s)" in redriven.stdout and failing in redriven.stdout
    again = json.loads(tidal_server.cli("jobs", "show", failing, "--wait", "--timeout", "30s").stdout)
    assert again["state"] == "dead" and len(again["activations"]) == 2  # it ran again (and failed again)

    finished = tidal_server.cli("jobs", "cancel", job_id)
    assert finished.returncode == 1 and "already ended: succeeded" in finished.stderr
    for bad in (
        ("jobs", "show", "job-nope"),
        ("jobs", "ls", "--state", "weird"),
        ("jobs", "redrive", "no-such-function"),
        ("invoke", name, "{}", "--idempotency-key", "k"),  # without --async
        ("invoke", name, "{}", "--async", "--callback-url", "ftp://x"),
    ):
        result = tidal_server.cli(*bad)
        assert result.returncode == 1 and "error" in result.stderr and "Traceback" not in result.stderr, bad
