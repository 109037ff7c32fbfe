"""Hybrid keep-alive live, end to end: a real gateway learns a periodic function's idle time, unloads
its instance and template after each call, pre-warms before the next one (which comes back warm),
and keeps what it learned across a restart.
"""

from __future__ import annotations

import time

from keepalive_e2e_helpers import deploy, function, unloaded

from conftest import TidalServer, wait_for
from tidal.keepalive.policy import parse_policy

# 1 s bins over a minute; 3 idle times make it representative. Calls every 5.5 s (idle ~5.5 s, bin
# [5, 6)) give the windows: pre-warm at 5 x (1 - 0.5) = 2.5 s, keep until 6 x 1.5 = 9 s after a call.
HYBRID = "hybrid:bin=1s,range=60s,min_samples=3,margin=0.5"
PERIOD_S = 5.5
LEARNING_CALLS = 4  # 3 idle times between them: the policy has learned after the 4th call
CALLS = 6  # the 5th and 6th are pre-warmed


def test_hybrid_learns_the_period_unloads_between_calls_and_prewarms(
    fresh_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    server = fresh_server.start()
    deploy(server, write_module, "periodic", HYBRID)
    answers, seen_unloaded = [], []
    start = time.monotonic()
    for number in range(CALLS):
        time.sleep(max(0.0, start + number * PERIOD_S - time.monotonic()))
        answers.append(server.client.post("/fn/periodic", json={}))
        assert answers[-1].status_code == 200, answers[-1].text
        if LEARNING_CALLS - 1 <= number < CALLS - 1:  # learned: instance and template go after the call
            try:
                wait_for(lambda: unloaded(server, "periodic"), 2.5, "the unload after a call")
                seen_unloaded.append(True)
            except AssertionError:
                seen_unloaded.append(False)

    learned = function(server, "periodic")["keep_alive"]
    assert parse_policy(learned["policy"]) == parse_policy(HYBRID)  # stored as its canonical text
    assert learned["mode"] == "histogram" and learned["samples"] == CALLS - 1, learned
    assert 0 < learned["prewarm_s"] < PERIOD_S < learned["keep_alive_s"], learned
    assert all(seen_unloaded), f"instance and template unloaded after each learned call: {seen_unloaded}"
    prewarmed = answers[LEARNING_CALLS:]
    colds = [answer.headers["x-tidal-cold-start"] for answer in prewarmed]
    assert colds == ["0"] * len(prewarmed), f"pre-warmed calls came back cold: {colds}\n{server.log()}"
    assert len({answer.json()["pid"] for answer in prewarmed}) == len(prewarmed)  # each a new pre-warm

    info = function(server, "periodic")
    reasons = [event["reason"] for event in info["events"]]
    assert any(reason.startswith("pre-warm: hybrid expects the next call") for reason in reasons), reasons
    assert any(reason.startswith("keep-alive: unload after the call") for reason in reasons), reasons
    status = server.cli("status", "periodic")
    assert status.returncode == 0 and f"keep-alive: {learned['policy']} (histogram)" in status.stdout, (
        status.stdout
    )

    # A restart keeps what was learned (the idle_histograms table) and when the last call ended.
    server.stop()
    server.start()
    after = function(server, "periodic")["keep_alive"]
    assert after["samples"] == CALLS - 1 and after["mode"] == "histogram", after
    assert after["last_call_end"] == learned["last_call_end"]
    status = server.cli("status", "periodic")
    assert f"{CALLS - 1} idle times learned" in status.stdout, status.stdout
