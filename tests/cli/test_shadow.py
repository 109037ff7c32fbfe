"""Shadow traffic driven as a user would: deploy --no-traffic, tidal shadow, calls, the report."""

from __future__ import annotations

import time
from typing import Any

from conftest import TidalServer, wait_for

# The primary answers an embedding of x; candidates vary it: slightly (agrees under cosine>=0.99),
# reversed when x is odd (exactly half disagree), or not at all (they raise).
EMBEDDER = """
import tidal

@tidal.function(name="{name}", concurrency=50)
def embed(payload):
    x = payload["x"]
    vector = [float((x + i) % 5) + 1.0 for i in range(8)]
    {change}
    return {{"embedding": vector, "model": "{model}"}}
"""
PERTURBED = "vector = [value * 1.001 + 0.001 for value in vector]"
ODD_REVERSED = "vector = vector[::-1] if x % 2 else vector"
RAISES = "raise RuntimeError('candidate broke')"


def deploy(
    server: TidalServer, write_module: Any, name: str, model: str, change: str = "", *extra: str
) -> None:
    source = EMBEDDER.format(name=name, model=model, change=change or "pass")
    done = server.deploy(write_module(source, f"{model}.py"), *extra)
    assert done.returncode == 0, done.stderr


def report(server: TidalServer, name: str) -> dict[str, Any]:
    answer = server.client.get(f"/v1/functions/{name}/shadow/report", params={"since": 600})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def calls(server: TidalServer, name: str, xs: range) -> list[dict[str, Any]]:
    answers = [server.client.post(f"/fn/{name}", json={"x": x}) for x in xs]
    assert [answer.status_code for answer in answers] == [200] * len(xs), [a.text for a in answers]
    return [answer.json() for answer in answers]


def test_copies_are_compared_and_the_client_only_sees_the_primary(
    tidal_server: TidalServer, write_module: Any
) -> None:
    name = "shadowed_embed"
    deploy(tidal_server, write_module, name, "v1")
    deploy(tidal_server, write_module, name, "v2", PERTURBED, "--no-traffic")
    deploy(tidal_server, write_module, name, "v3", ODD_REVERSED, "--no-traffic")
    deploy(tidal_server, write_module, name, "v4", RAISES, "--no-traffic")

    started = tidal_server.cli("shadow", name, "--to", "2", "--percent", "100", "--compare", "cosine>=0.99")
    assert started.returncode == 0, started.stderr
    assert f"{name}-00002" in started.stdout and "cosine>=0.99" in started.stdout
    status = tidal_server.cli("status", name)
    assert f"shadow: 100% of calls copied to {name}-00002 (cosine>=0.99)" in status.stdout, status.stdout
    assert {answer["model"] for answer in calls(tidal_server, name, range(10))} == {"v1"}
    wait_for(lambda: report(tidal_server, name)["sent"] == 10, 20, "10 compared copies")
    agreeing = tidal_server.cli("shadow", "report", name, "--since", "10m")
    assert agreeing.returncode == 0 and "agreement: 100.00%" in agreeing.stdout, agreeing.stdout

    # A candidate that differs on odd inputs: exactly half disagree, with examples. (Room for all 20
    # copies: while the new candidate starts cold, copies beyond --max-in-flight would be dropped.)
    changed = tidal_server.cli(
        "shadow", name, "--to", "3", "--compare", "cosine:0.99", "--max-in-flight", "20"
    )
    assert changed.returncode == 0, changed.stderr
    calls(tidal_server, name, range(20))
    wait_for(lambda: report(tidal_server, name)["sent"] == 20, 20, "20 copies to the odd-reversing candidate")
    half = report(tidal_server, name)
    assert (half["revision"], half["compared"], half["disagreed"], half["agreement_rate"]) == (
        f"{name}-00003", 20, 10, 0.5
    )  # fmt: skip
    shown = tidal_server.cli("shadow", "report", name)
    assert "agreement: 50.00%" in shown.stdout and half["disagreements"][0]["activation"] in shown.stdout
    assert half["disagreements"][0]["diff"].startswith("$.embedding: cosine ")

    # A candidate that raises on every call: clients still get 200 and the primary's answer.
    assert tidal_server.cli("shadow", name, "--to", f"{name}-00004").returncode == 0
    assert {answer["model"] for answer in calls(tidal_server, name, range(6))} == {"v1"}
    wait_for(lambda: report(tidal_server, name)["candidate_errors"]["count"] == 6, 20, "6 candidate errors")
    failing = report(tidal_server, name)
    assert failing["compared"] == 0 and failing["candidate_errors"]["messages"] == [
        "RuntimeError: candidate broke"
    ]
    activations = tidal_server.client.get(f"/v1/functions/{name}/activations", params={"limit": 200}).json()
    shadow_calls = [item for item in activations["activations"] if item["trigger"] == "shadow"]
    assert len(shadow_calls) == 36 and {item["key_id"] for item in shadow_calls} == {"platform"}
    assert tidal_server.client.get(f"/v1/functions/{name}").json()["shadow"]["revision"] == f"{name}-00004"
    assert "00004" in tidal_server.cli("shadow", name).stdout

    # Stopped: no more copies, and the candidate's pool is gone from the function.
    stopped = tidal_server.cli("shadow", "stop", name)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    calls(tidal_server, name, range(5))
    time.sleep(0.5)  # room for copies that should not exist to show up (a copy takes a few ms here)
    assert report(tidal_server, name)["sent"] == 6
    assert tidal_server.client.get(f"/v1/functions/{name}").json()["shadow"] is None
    assert "has no shadow" in tidal_server.cli("shadow", name).stdout
    assert "had no shadow" in tidal_server.cli("shadow", "stop", name).stdout


def test_bad_input_is_refused_with_the_reason(tidal_server: TidalServer, write_module: Any) -> None:
    name = "shadow_refusals"
    deploy(tidal_server, write_module, name, "v1")
    refusals = {
        ("shadow", "ghost", "--to", "1"): "no function named 'ghost'",
        ("shadow", name, "--to", "9"): f"has no revision '{name}-00009'",
        ("shadow", name, "--to", "1", "--percent", "101"): "--percent 101: must be 0..100",
        ("shadow", name, "--to", "1", "--compare", "cosine>=2"): "between -1 and 1",
        (
            "shadow",
            name,
            "--to",
            "1",
            "--compare",
            "l2<=1",
        ): "use exact, abs<=0.001, rel<=0.01 or cosine>=0.99",
        ("shadow", "report", name, "--since", "soon"): "--since: 'soon' is not a duration",
        ("shadow", "report", "ghost"): "no function named 'ghost'",
        ("shadow", name, "--percent", "5"): "name the candidate revision with --to REV",
        ("shadow", "stop", name, "--to", "1"): "go with `tidal shadow NAME --to REV`",
        ("shadow", "a", "b"): "usage: tidal shadow NAME",
    }
    for args, message in refusals.items():
        refused = tidal_server.cli(*args)
        assert refused.returncode == 1 and message in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr

    put = lambda body: tidal_server.client.put(f"/v1/functions/{name}/shadow", json=body)  # noqa: E731
    revision = f"{name}-00001"
    assert put({"revision": revision, "percent": -1}).json()["error"]["type"] == "BadShadow"
    assert put({"revision": revision, "percent": 101}).status_code == 400
    assert put({"revision": revision, "compare": "cosine>=x"}).status_code == 400
    assert put({"revision": revision, "max_in_flight": 0}).status_code == 400
    assert put({"revision": "nope-00001"}).status_code == 404
    assert (
        tidal_server.client.put("/v1/functions/ghost/shadow", json={"revision": revision}).status_code == 404
    )
    assert tidal_server.client.get("/v1/functions/ghost/shadow").status_code == 404
    assert tidal_server.client.delete("/v1/functions/ghost/shadow").status_code == 404
    assert (
        tidal_server.client.get(f"/v1/functions/{name}/shadow/report", params={"since": 0}).status_code == 422
    )
    assert tidal_server.client.get(f"/v1/functions/{name}/shadow").json() == {
        "function": name,
        "shadow": None,
    }


def test_the_shadow_survives_a_gateway_restart(fresh_server: TidalServer, write_module: Any) -> None:
    name = "restarted_shadow"
    fresh_server.start()
    deploy(fresh_server, write_module, name, "v1")
    deploy(fresh_server, write_module, name, "v2", ODD_REVERSED, "--no-traffic")
    assert (
        fresh_server.cli(
            "shadow", name, "--to", "2", "--percent", "100", "--compare", "cosine:0.99"
        ).returncode
        == 0
    )
    calls(fresh_server, name, range(4))
    wait_for(lambda: report(fresh_server, name)["sent"] == 4, 20, "copies before the restart")

    fresh_server.stop()
    fresh_server.start()
    shown = fresh_server.client.get(f"/v1/functions/{name}/shadow").json()["shadow"]
    assert (shown["revision"], shown["percent"], shown["compare"], shown["active"]) == (
        f"{name}-00002", 100, "cosine>=0.99", True
    )  # fmt: skip
    calls(fresh_server, name, range(4, 8))
    wait_for(lambda: report(fresh_server, name)["sent"] == 8, 20, "copies after the restart")
    assert report(fresh_server, name)["disagreed"] == 4  # x = 1, 3, 5, 7
