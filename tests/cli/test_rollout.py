"""Canary rollouts, driven as a user would: `tidal rollout`, live traffic, restarts, aborts."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from conftest import TidalServer, wait_for

VERSION = """
import tidal

calls = 0

@tidal.function(name="{name}", concurrency=50)
def answer(payload):
    global calls
    calls += 1
    if {failing} and calls % 5 == 0:
        raise RuntimeError("every fifth call fails")
    return {{"version": {version}}}
"""


def deploy_two(server: TidalServer, write_module, name: str, failing: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Revision 1 serves everything; revision 2 (failing 20% of its calls if ``failing``) serves nothing."""
    first = server.deploy(write_module(VERSION.format(name=name, version=1, failing=False), "v1.py"))
    assert first.returncode == 0, first.stderr
    canary = write_module(VERSION.format(name=name, version=2, failing=failing), "v2.py")
    assert server.deploy(canary, "--no-traffic").returncode == 0


@contextmanager
def live_traffic(server: TidalServer, name: str) -> Iterator[Counter[str]]:
    """Calls ``name`` from a thread until the block ends; counts the answering revisions."""
    seen: Counter[str] = Counter()
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=server.url, headers=server.client.headers, timeout=30) as client:
            while not stop.is_set():
                try:
                    seen[client.post(f"/fn/{name}", json={}).headers.get("x-tidal-revision", "")] += 1
                except httpx.TransportError:
                    time.sleep(0.1)  # the gateway restarting
                time.sleep(0.003)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(30)


def rollout_of(server: TidalServer, name: str) -> dict[str, Any]:
    answer: dict[str, Any] = server.client.get(f"/v1/functions/{name}/rollout").json()
    return answer


def finished(server: TidalServer, name: str) -> bool:
    return bool(rollout_of(server, name)["rollout"]["state"] != "running")


def test_a_canary_failing_a_fifth_of_its_calls_rolls_back_on_its_own(  # type: ignore[no-untyped-def]
    tidal_server: TidalServer, write_module
) -> None:
    name = "canary_bad"
    deploy_two(tidal_server, write_module, name, failing=True)
    started = tidal_server.cli("rollout", name, "--to", "2", "--steps", "50,100", "--interval", "2s",
                               "--max-error-rate", "1%", "--min-requests", "20")  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert f"{name}-00002 over {name}-00001" in started.stdout and "step 1 of 2 (50%)" in started.stdout
    with live_traffic(tidal_server, name):
        wait_for(lambda: finished(tidal_server, name), 30, "the rollout to decide")
    state = rollout_of(tidal_server, name)
    assert state["rollout"]["state"] == "rolled_back", state
    decision = state["decisions"][-1]
    assert decision["verdict"] == "roll_back" and decision["canary"]["judged"] >= 20
    assert decision["canary"]["error_rate"] > 0.01 and decision["stable"]["errors"] == 0
    assert "canary error rate" in decision["reason"] and "above the limit 1.00%" in decision["reason"]
    traffic = tidal_server.client.get(f"/v1/functions/{name}/traffic").json()["traffic"]
    assert traffic == [{"revision": f"{name}-00001", "percent": 100, "tag": None}]
    assert {tidal_server.client.post(f"/fn/{name}", json={}).json()["version"] for _ in range(20)} == {1}
    status = tidal_server.cli("rollout", "status", name)
    assert status.returncode == 0 and "rolled_back" in status.stdout and "canary error rate" in status.stdout


def test_a_healthy_canary_is_promoted_step_by_step(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    name = "canary_good"
    deploy_two(tidal_server, write_module, name)
    body = {"to": f"{name}-00002", "steps": [20, 50, 100], "interval": "1s", "min_requests": 5}
    started = tidal_server.client.post(f"/v1/functions/{name}/rollout", json=body)
    assert started.status_code == 201, started.text
    assert started.json()["rollout"]["percent"] == 20
    with live_traffic(tidal_server, name) as seen:
        wait_for(lambda: finished(tidal_server, name), 30, "the rollout to promote")
    state = rollout_of(tidal_server, name)
    assert state["rollout"]["state"] == "promoted", state
    verdicts = [(d["verdict"], d["percent"]) for d in state["decisions"] if d["verdict"] != "wait"]
    assert verdicts == [("start", 20), ("next", 20), ("promote", 50)]
    assert seen[f"{name}-00002"] > 0
    traffic = tidal_server.client.get(f"/v1/functions/{name}/traffic").json()["traffic"]
    assert traffic == [{"revision": f"{name}-00002", "percent": 100, "tag": None}]


def test_a_rollout_resumes_at_its_step_after_a_restart(fresh_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    name = "resumed"
    fresh_server.start()
    deploy_two(fresh_server, write_module, name)
    started = fresh_server.cli("rollout", name, "--to", "2", "--steps", "20,50,100", "--interval", "3s",
                               "--min-requests", "5")  # fmt: skip
    assert started.returncode == 0, started.stderr
    with live_traffic(fresh_server, name):
        wait_for(lambda: rollout_of(fresh_server, name)["rollout"]["step"] == 1, 30, "the second step")
    fresh_server.stop()  # well inside the second step's 3 s: it is judged by the next gateway

    restarted_at = time.time()
    again = TidalServer(fresh_server.state_dir).start()
    try:
        with live_traffic(again, name):
            wait_for(lambda: finished(again, name), 30, "the resumed rollout to promote")
        state = rollout_of(again, name)
        assert state["rollout"]["state"] == "promoted", state
        verdicts = [(d["verdict"], d["step"]) for d in state["decisions"] if d["verdict"] != "wait"]
        assert verdicts == [("start", 0), ("next", 0), ("promote", 1)], "one start: resumed, not restarted"
        assert state["decisions"][-1]["at"] > restarted_at, "the second step was judged after the restart"
    finally:
        again.stop()


def test_abort_and_a_change_by_hand_return_traffic(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    name = "aborted"
    deploy_two(tidal_server, write_module, name)
    assert (
        tidal_server.cli("rollout", name, "--to", "2", "--steps", "10,100", "--interval", "10m").returncode
        == 0
    )
    busy = tidal_server.cli("rollout", name, "--to", "2")
    assert busy.returncode == 1 and "is running" in busy.stderr
    info = tidal_server.client.get(f"/v1/functions/{name}").json()
    assert info["rollout"]["canary"] == f"{name}-00002"
    status = tidal_server.cli("status", name)
    assert f"rollout: {name}-00002 at 10% (step 1 of 2) over {name}-00001" in status.stdout, status.stdout
    aborted = tidal_server.cli("rollout", "abort", name)
    assert aborted.returncode == 0 and "aborted" in aborted.stdout, aborted.stderr
    traffic = tidal_server.client.get(f"/v1/functions/{name}/traffic").json()["traffic"]
    assert traffic == [{"revision": f"{name}-00001", "percent": 100, "tag": None}]
    assert {tidal_server.client.post(f"/fn/{name}", json={}).json()["version"] for _ in range(10)} == {1}
    again = tidal_server.cli("rollout", "abort", name)
    assert again.returncode == 1 and "no rollout of 'aborted' is running" in again.stderr

    # `tidal traffic` during a rollout wins: the rollout ends, the split set by hand stays.
    assert (
        tidal_server.cli("rollout", name, "--to", "2", "--steps", "10,100", "--interval", "10m").returncode
        == 0
    )
    by_hand = tidal_server.cli("traffic", name, "1=70", "2=30")
    assert by_hand.returncode == 0 and f"the rollout to {name}-00002 was aborted" in by_hand.stdout, (
        by_hand.stdout
    )
    state = rollout_of(tidal_server, name)["rollout"]
    assert (state["state"], state["reason"]) == ("aborted", "traffic changed by hand")
    traffic = tidal_server.client.get(f"/v1/functions/{name}/traffic").json()["traffic"]
    assert [(t["revision"], t["percent"]) for t in traffic] == [(f"{name}-00001", 70), (f"{name}-00002", 30)]

    # So does a deploy that sends traffic: the loop sees the change and ends the rollout.
    assert tidal_server.cli("traffic", name, "1=100").returncode == 0
    assert (
        tidal_server.cli("rollout", name, "--to", "2", "--steps", "10,100", "--interval", "10m").returncode
        == 0
    )
    third = tidal_server.deploy(write_module(VERSION.format(name=name, version=3, failing=False), "v3.py"))
    assert third.returncode == 0, third.stderr
    wait_for(lambda: finished(tidal_server, name), 10, "the rollout to notice the deploy")
    state = rollout_of(tidal_server, name)["rollout"]
    assert state["state"] == "aborted" and "changed outside the rollout" in state["reason"]
    assert {tidal_server.client.post(f"/fn/{name}", json={}).json()["version"] for _ in range(10)} == {3}


def test_bad_rollouts_are_refused_with_the_reason(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    name = "refused"
    deploy_two(tidal_server, write_module, name)
    cases = [
        (["--to", "9"], "'refused-00009' is not a revision of 'refused'"),
        (["--to", "1"], "refused-00001 already serves the most traffic"),
        (["--to", "2", "--steps", "50,25,100"], "must increase"),
        (["--to", "2", "--steps", "10,50"], "must end at 100"),
        (["--to", "2", "--steps", "ten"], "--steps takes percents separated by commas"),
        (["--to", "2", "--interval", "soon"], "--interval takes a duration"),
        (["--to", "2", "--interval", "10ms"], "interval 0.01 s: must be from 1 s"),
        (["--to", "2", "--max-error-rate", "5"], "for a percent write 5%"),
    ]
    for args, message in cases:
        result = tidal_server.cli("rollout", name, *args)
        assert result.returncode == 1 and message in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.stderr
    ghost = tidal_server.cli("rollout", "ghost", "--to", "2")
    assert ghost.returncode == 1 and "no function named 'ghost'" in ghost.stderr
    assert tidal_server.client.get(f"/v1/functions/{name}/rollout").status_code == 404  # none yet
    assert tidal_server.client.get("/v1/functions/ghost/rollout").status_code == 404
    assert tidal_server.client.delete("/v1/functions/ghost/rollout").status_code == 404
    bad = tidal_server.client.post(f"/v1/functions/{name}/rollout", json={"to": f"{name}-00002", "steps": [5, 100],
                                   "interval": "2s", "max_error_rate": 2})  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "BadRollout", bad.text
    traffic = tidal_server.client.get(f"/v1/functions/{name}/traffic").json()["traffic"]
    assert traffic == [{"revision": f"{name}-00001", "percent": 100, "tag": None}], "nothing changed"


def test_deploy_canary_starts_the_default_rollout(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    name = "deployed_canary"
    first = tidal_server.deploy(write_module(VERSION.format(name=name, version=1, failing=False), "v1.py"))
    assert first.returncode == 0, first.stderr
    module = write_module(VERSION.format(name=name, version=2, failing=False), "v2.py")
    deployed = tidal_server.deploy(module, "--canary", "10")
    assert deployed.returncode == 0, deployed.stderr
    assert f"{name}-00002 (new revision)" in deployed.stdout and "step 1 of 4 (10%)" in deployed.stdout
    state = rollout_of(tidal_server, name)["rollout"]
    assert (state["canary"], state["stable"], state["steps"]) == (
        f"{name}-00002",
        f"{name}-00001",
        [10, 25, 50, 100],
    )
    assert (state["interval_s"], state["max_error_rate"], state["max_p99_ms"], state["min_requests"]) == (
        60.0,
        0.01,
        None,
        20,
    )
    traffic = tidal_server.client.get(f"/v1/functions/{name}/traffic").json()["traffic"]
    assert [(t["revision"], t["percent"], t["tag"]) for t in traffic] == [
        (f"{name}-00001", 90, "stable"), (f"{name}-00002", 10, "canary")
    ]  # fmt: skip
    unchanged = tidal_server.deploy(module, "--canary", "10")
    assert unchanged.returncode == 0 and "nothing to roll out" in unchanged.stdout
    assert tidal_server.cli("rollout", "abort", name).returncode == 0
    out_of_range = tidal_server.deploy(module, "--canary", "100")
    assert out_of_range.returncode != 0 and "Traceback" not in out_of_range.stderr
