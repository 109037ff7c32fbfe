"""Helpers of the trigger tests: the jobs and results a function's triggers made."""

from __future__ import annotations

import time
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "dead", "cancelled")


def jobs_of(client: httpx.Client, function: str) -> list[dict[str, Any]]:
    answer = client.get("/v1/jobs", params={"function": function, "limit": 1000})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["jobs"])


def wait_jobs(client: httpx.Client, function: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """At least ``count`` final jobs of ``function`` (oldest first), or fail naming what there was."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = [job for job in jobs_of(client, function) if job["state"] in FINAL]
        if len(jobs) >= count:
            return sorted(jobs, key=lambda job: job["created_at"])
        if time.monotonic() > deadline:
            raise AssertionError(f"{function}: {len(jobs)} final job(s) after {timeout} s, wanted {count}")
        time.sleep(0.1)


def triggers_of(client: httpx.Client, function: str) -> list[dict[str, Any]]:
    answer = client.get("/v1/triggers", params={"function": function})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["triggers"])


def activation_of(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    record = client.get(f"/v1/jobs/{job['id']}").json()
    activation = client.get(f"/v1/activations/{record['activations'][-1]}")
    assert activation.status_code == 200, activation.text
    return dict(activation.json())


# A queue-triggered function both queue tests deploy: it raises on a poison message and can be slow.
QUEUE_CONSUMER = """
import time
import tidal

@tidal.function(name="{name}", concurrency=4, triggers=[tidal.queue("{url}", stream="{stream}", max_deliveries=3,
                visibility_timeout=2)])
def handle(event, context: tidal.Context):
    if event.get("poison"):
        raise ValueError("cannot digest " + str(event))
    time.sleep(event.get("sleep", 0))
    return {{"got": event, "id": context.headers.get("x-tidal-message-id")}}
"""
