"""GET /metrics on a real gateway: counters with the right labels and values after a cold call, a
warm call and an error; the admin key it needs (or not, with --metrics-public); `tidal top --once`."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TidalServer, wait_for

MODULE = """
import tidal

@tidal.function(name="{name}")
def handler(payload):
    if payload.get("fail"):
        raise ValueError("asked to fail")
    return payload
"""


def scrape(server: TidalServer, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of GET /metrics: (name, labels) -> value."""
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def deploy(server: TidalServer, write_module, name: str) -> None:  # type: ignore[no-untyped-def]
    result = server.deploy(write_module(MODULE.format(name=name), f"{name}.py"))
    assert result.returncode == 0, result.stderr


def test_metrics_count_cold_warm_and_failed_calls(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module, "obs_counted")
    admin = {"authorization": f"Bearer {tidal_server.admin_key}"}
    cold = tidal_server.client.post("/fn/obs_counted", json={"n": 1})
    warm = tidal_server.client.post("/fn/obs_counted", json={"n": 2})
    failed = tidal_server.client.post("/fn/obs_counted", json={"fail": True})
    assert (cold.status_code, warm.status_code, failed.status_code) == (200, 200, 500)
    assert cold.headers["x-tidal-cold-start"] == "1" and warm.headers["x-tidal-cold-start"] == "0"
    revision = cold.headers["x-tidal-revision"]
    kind = cold.headers["x-tidal-cold-start-detail"]  # fork | template-built | spawn
    record = tidal_server.client.get(f"/v1/activations/{cold.headers['x-tidal-activation']}")
    assert (record.json()["cold"], record.json()["cold_detail"]) == (True, kind)  # what /metrics counts
    listed = tidal_server.cli("activations", "obs_counted", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(item["cold_detail"] for item in json.loads(listed.stdout)) == ["", "", kind]

    samples = scrape(tidal_server, authorization=admin["authorization"])
    series = {"function": "obs_counted", "revision": revision}
    assert value(samples, "tidal_invocations_total", **series, status="ok") == 2
    assert value(samples, "tidal_invocations_total", **series, status="error") == 1
    assert value(samples, "tidal_cold_starts_total", **series, kind=kind) == 1
    assert value(samples, "tidal_invocation_duration_seconds_count", **series) == 3
    assert value(samples, "tidal_invocation_duration_seconds_bucket", **series, le="+Inf") == 3
    assert value(samples, "tidal_instances", **series, state="ready") == 1
    assert value(samples, "tidal_instances_desired", **series) is not None
    assert value(samples, "tidal_queue_depth", **series) == 0
    assert value(samples, "tidal_in_flight", **series) == 0
    assert value(samples, "tidal_instance_starts_total", **series) == 1

    # `tidal top --once`: one frame of the same numbers.
    top = tidal_server.cli("top", "--once", "--interval", "0.2")
    assert top.returncode == 0, top.stderr
    (line,) = [line for line in top.stdout.splitlines() if "obs_counted" in line]
    cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
    function, _rps, _p50, _p99, calls, errors, instances, in_flight, queued, cost = cells
    assert (function, calls, errors, instances, in_flight, queued) == (
        "obs_counted",
        "3",
        "1",
        "1/1",
        "0",
        "0",
    )
    assert cost == "-" or cost.startswith("$")


def test_metrics_need_the_admin_key(tidal_server: TidalServer) -> None:
    anonymous = httpx.get(f"{tidal_server.url}/metrics", timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "Unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    created = tidal_server.client.post("/v1/keys", json={"scopes": ["invoke:obs_counted"]})
    assert created.status_code == 201, created.text
    invoker_only = httpx.get(
        f"{tidal_server.url}/metrics",
        headers={"authorization": f"Bearer {created.json()['key']}"},
        timeout=30,
    )
    assert invoker_only.status_code == 403
    wrong_method = tidal_server.client.post("/metrics")
    assert wrong_method.status_code == 405


def test_public_metrics_and_job_states(fresh_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    fresh_server.start("--metrics-public")
    deploy(fresh_server, write_module, "obs_jobs")
    accepted = fresh_server.client.post("/fn/obs_jobs", json={"n": 1}, headers={"prefer": "respond-async"})
    assert accepted.status_code == 202, accepted.text
    status_url = accepted.json()["status_url"]
    wait_for(
        lambda: fresh_server.client.get(status_url).json()["state"] == "succeeded", 60, "the job to succeed"
    )

    samples = scrape(fresh_server)  # no key: --metrics-public
    assert value(samples, "tidal_jobs", function="obs_jobs", state="succeeded") == 1
    assert value(samples, "tidal_jobs_in_flight") == 0
    revision = fresh_server.client.get("/v1/functions/obs_jobs").json()["revision"]
    assert value(samples, "tidal_invocations_total", function="obs_jobs", revision=revision, status="ok") == 1


@pytest.mark.parametrize("switch", ["0", "journal"])
def test_benchmark_switch_turns_metering_and_metrics_off(
    fresh_server: TidalServer,
    write_module,
    monkeypatch: pytest.MonkeyPatch,
    switch: str,  # type: ignore[no-untyped-def]
) -> None:
    """The benchmark's switches: 0 writes no record; journal writes each to the journal before its
    answer, then deletes the segment unstored. Either way the calls are answered, nothing is
    stored, no journal is left behind, and /metrics and `tidal top` say why they are off."""
    monkeypatch.setenv("TIDAL_METRICS", switch)
    fresh_server.start()
    deploy(fresh_server, write_module, "obs_unmetered")
    journal = (fresh_server.cwd or Path.cwd()) / fresh_server.state_dir / "journal"

    def journaled() -> bool:
        """Whether a call leaves a journal segment behind it (the folds, every 2 s, delete them:
        one may fall between a call and the look)."""
        assert fresh_server.client.post("/fn/obs_unmetered", json={"n": 1}).status_code == 200
        return any(path.stat().st_size > 0 for path in journal.iterdir())

    seen = [journaled() for _ in range(3)]
    if switch == "journal":  # journaled before each answer; at most one fold falls among three calls
        assert seen.count(True) >= 2, seen
    else:
        assert seen == [False, False, False]
    off = fresh_server.client.get("/metrics")
    assert off.status_code == 404 and f"TIDAL_METRICS={switch}" in off.json()["error"]["message"]
    # Listing activations flushes first: the segment is then deleted, not stored.
    assert fresh_server.client.get("/v1/functions/obs_unmetered/activations").json()["activations"] == []
    assert list(journal.iterdir()) == []
    top = fresh_server.cli("top", "--once", "--interval", "0.1")
    assert top.returncode == 1 and f"TIDAL_METRICS={switch}" in top.stderr
