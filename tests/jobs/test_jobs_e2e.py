"""Async invocations through a real gateway: 202 and a result, the same refusals as a sync call,
idempotency keys, retries into the dead-letter queue and redrive, callbacks, destinations, cancel."""

from __future__ import annotations

import time

import httpx
from jobs_helpers import receiver, wait_job

from conftest import TidalServer

ASYNC = {"prefer": "respond-async"}

ECHO = """
import tidal

@tidal.function(name="jecho", concurrency=4)
def echo(payload, context: tidal.Context):
    return {"got": payload, "attempt": context.headers.get("x-tidal-attempt")}
"""


def key(server: TidalServer, scope: str) -> str:
    created = server.client.post("/v1/keys", json={"scopes": [scope]})
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def test_an_async_call_is_queued_answered_202_and_succeeds(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(ECHO)).returncode == 0
    owner = httpx.Client(
        base_url=tidal_server.url, headers={"authorization": f"Bearer {key(tidal_server, 'invoke:jecho')}"}
    )
    accepted = owner.post("/fn/jecho", json={"n": 1}, headers=ASYNC)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert accepted.headers["location"] == accepted.json()["status_url"] == f"/v1/jobs/{job_id}"
    assert accepted.json()["state"] == "queued" and accepted.headers["preference-applied"] == "respond-async"

    record = wait_job(owner, job_id)
    assert record["state"] == "succeeded", record
    assert record["result"] == {"got": {"n": 1}, "attempt": "1"}
    assert (record["attempts"], record["function"], record["revision"]) == (1, "jecho", "jecho-00001")
    (attempt,) = record["activations"]
    activation = tidal_server.client.get(f"/v1/activations/{attempt}").json()
    assert (activation["trigger"], activation["job"], activation["status"]) == ("job", job_id, "ok")

    by_query = owner.post("/fn/jecho?mode=async", json={"n": 2})
    assert by_query.status_code == 202 and wait_job(owner, by_query.json()["job_id"])["result"]["got"] == {
        "n": 2
    }

    # Only its key (or an admin) sees the job; to another key it does not exist.
    other = httpx.Client(
        base_url=tidal_server.url, headers={"authorization": f"Bearer {key(tidal_server, 'invoke:*')}"}
    )
    assert other.get(f"/v1/jobs/{job_id}").status_code == 404
    assert other.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert tidal_server.client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
    assert other.get("/v1/jobs").status_code == 403  # listing is for admins
    assert (
        httpx.get(
            f"{tidal_server.url}/v1/jobs/{job_id}", headers={"authorization": "Bearer nope"}
        ).status_code
        == 401
    )


def test_async_calls_are_refused_as_sync_ones_are_and_bad_input_is_a_400(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(ECHO.replace("jecho", "jrefuse"))).returncode == 0
    url = tidal_server.url
    assert httpx.post(f"{url}/fn/jrefuse", json={}, headers=ASYNC).status_code == 401
    stranger = {"authorization": f"Bearer {key(tidal_server, 'invoke:other')}", **ASYNC}
    assert httpx.post(f"{url}/fn/jrefuse", json={}, headers=stranger).status_code == 403
    client = tidal_server.client
    missing = client.post("/fn/no-such-function", json={}, headers=ASYNC)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"
    too_large = client.post("/fn/jrefuse", content=b"[" + b"1," * (3 * 1024 * 1024) + b"1]", headers=ASYNC)
    assert too_large.status_code == 413
    malformed = client.post("/fn/jrefuse", content=b"{nope", headers=ASYNC)
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "BadRequest"
    bad_key = client.post("/fn/jrefuse", json={}, headers={**ASYNC, "idempotency-key": "has spaces in it"})
    assert bad_key.status_code == 400 and bad_key.json()["error"]["type"] == "BadIdempotencyKey"
    for callback in (
        "ftp://example.com/x",
        f"{url}/v1/keys",
        f"http://localhost:{tidal_server.port}/v1/keys",
    ):
        refused = client.post("/fn/jrefuse", json={}, headers={**ASYNC, "x-callback-url": callback})
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "BadCallbackUrl", callback
    public = ECHO.replace("jecho", "jpublic").replace("@tidal.function(", "@tidal.function(public=True, ")
    assert tidal_server.deploy(write_module(public)).returncode == 0
    anonymous = httpx.post(
        f"{url}/fn/jpublic", json={}, headers={**ASYNC, "x-callback-url": "http://10.0.0.1/x"}
    )
    assert anonymous.status_code == 401, "without a key, no callbacks: the gateway would call any address"
    assert httpx.post(f"{url}/fn/jpublic", json={}, headers=ASYNC).status_code == 202
    assert client.get("/v1/jobs/job-0123").status_code == 404
    assert client.delete("/v1/jobs/job-0123").status_code == 404
    assert client.get("/v1/jobs", params={"state": "weird"}).status_code == 400
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert client.post("/v1/jobs/redrive", json={"function": "no-such-function"}).status_code == 404
    assert client.post("/v1/jobs/redrive", json={"function": "Bad Name"}).status_code == 422
    assert not client.get("/v1/jobs", params={"function": "jrefuse"}).json()["jobs"], "nothing was queued"

    # One Idempotency-Key, one job: again -> the same job; with another body -> 422.
    headers = {**ASYNC, "idempotency-key": "order-7"}
    first = client.post("/fn/jrefuse", json={"order": 7}, headers=headers)
    again = client.post("/fn/jrefuse", json={"order": 7}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"] and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    reused = client.post("/fn/jrefuse", json={"order": 8}, headers=headers)
    assert reused.status_code == 422 and reused.json()["error"]["type"] == "IdempotencyKeyReused"
    assert wait_job(client, first.json()["job_id"])["state"] == "succeeded"
    after = client.post("/fn/jrefuse", json={"order": 7}, headers=headers)  # after it ran: still that job
    assert after.json()["job_id"] == first.json()["job_id"] and after.json()["state"] == "succeeded"
    assert len(client.get("/v1/jobs", params={"function": "jrefuse"}).json()["jobs"]) == 1
    assert len(wait_job(client, first.json()["job_id"])["activations"]) == 1, "it ran once"


FLAKY = """
import tidal

@tidal.function(name="jflaky", concurrency=2, retries=1, on_failure="jsink")
def flaky(payload):
    raise ValueError("broken on purpose")
"""
FIXED = FLAKY.replace('raise ValueError("broken on purpose")', 'return {"fixed": payload}')
SINK = """
import tidal

@tidal.function(name="jsink")
def sink(event):
    return {"saw": event["id"], "state": event["state"], "error": event["error"]["type"], "request": event["request"]}
"""


def test_a_failing_job_retries_goes_dead_calls_back_and_is_redriven(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(SINK)).returncode == 0
    assert tidal_server.deploy(write_module(FLAKY)).returncode == 0
    client = tidal_server.client
    with receiver([500]) as hook:  # the first delivery fails: it is tried again
        accepted = client.post("/fn/jflaky", json={"item": 1}, headers={**ASYNC, "x-callback-url": hook.url})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        dead = wait_job(client, job_id)
        assert dead["state"] == "dead" and dead["attempts"] == 2 == dead["max_attempts"], dead
        assert dead["error"]["type"] == "ValueError" and dead["error"]["kind"] == "function_error"
        assert dead["error"]["activation"] == dead["activations"][-1] and len(dead["activations"]) == 2
        deadline = time.monotonic() + 20
        while len(hook.bodies) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [body["id"] for body in hook.bodies] == [job_id, job_id]
        assert hook.bodies[-1]["state"] == "dead" and hook.bodies[-1]["error"]["type"] == "ValueError"
        assert "authorization" not in hook.headers[-1] and hook.headers[-1]["x-tidal-job"] == job_id
        # The receiver answers before the dispatcher records the delivery: wait for the record.
        deadline = time.monotonic() + 10
        callback = wait_job(client, job_id)["callback"]
        while callback["state"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
            callback = wait_job(client, job_id)["callback"]
        assert (callback["state"], callback["attempts"]) == ("delivered", 2), callback

    # The failure destination was invoked, as a job, with the dead job's record.
    sunk = client.get("/v1/jobs", params={"function": "jsink"}).json()["jobs"]
    assert [job["source"] for job in sunk] == [job_id]
    sink_record = wait_job(client, sunk[0]["id"])
    assert sink_record["result"] == {
        "saw": job_id,
        "state": "dead",
        "error": "ValueError",
        "request": {"item": 1},
    }

    dlq = client.get("/v1/jobs", params={"function": "jflaky", "state": "dead"}).json()["jobs"]
    assert [job["id"] for job in dlq] == [job_id]
    assert tidal_server.deploy(write_module(FIXED)).returncode == 0  # the fix, then the redrive
    redriven = client.post("/v1/jobs/redrive", json={"function": "jflaky"})
    assert redriven.status_code == 200 and redriven.json()["redriven"] == [job_id]
    done = wait_job(client, job_id)
    assert done["state"] == "succeeded" and done["result"] == {"fixed": {"item": 1}} and done["attempts"] == 1
    assert done["error"] is None and len(done["activations"]) == 3
    assert client.post("/v1/jobs/redrive", json={"function": "jflaky", "id": job_id}).status_code == 404


SLOW = """
import time
import tidal

@tidal.function(name="jslow", concurrency=1, max_instances=1)
def slow(payload):
    time.sleep(1.5)
    return payload
"""


def test_a_queued_job_is_cancelled_and_a_running_one_says_it_cannot_be(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    import tidal

    assert tidal_server.deploy(write_module(SLOW)).returncode == 0
    client = tidal_server.client
    ids = [client.post("/fn/jslow", json=n, headers=ASYNC).json()["job_id"] for n in range(3)]
    running = wait_job(client, ids[0], states=("running",))
    assert [client.get(f"/v1/jobs/{job_id}").json()["state"] for job_id in ids[1:]] == ["queued", "queued"]
    refused = client.delete(f"/v1/jobs/{ids[0]}")
    assert refused.status_code == 409 and refused.json()["error"]["type"] == "JobRunning"
    cancelled = client.delete(f"/v1/jobs/{ids[2]}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    fn = tidal.Function.lookup("jslow", url=tidal_server.url, key=tidal_server.admin_key)
    assert fn.job(ids[1]).cancel() is True
    assert fn.job(ids[0]).get(timeout=20) == 0 and running["attempts"] == 1
    time.sleep(0.5)  # the slot is free now: a cancelled job would have been claimed by now
    for job_id in ids[1:]:
        record = client.get(f"/v1/jobs/{job_id}").json()
        assert (record["state"], record["activations"]) == ("cancelled", []), record
    assert client.delete(f"/v1/jobs/{ids[0]}").status_code == 409  # finished: JobFinished
