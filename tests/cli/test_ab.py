"""Sticky A/B tests and `tidal ab`, driven as a user would: a real gateway, the CLI and HTTP."""

from __future__ import annotations

import json
from collections import Counter

import httpx

from conftest import TidalServer

VERSION = """
import tidal

@tidal.function(name="{name}", concurrency=50{extra})
def answer(payload):
    if payload.get("bad"):
        raise tidal.InputError("bad input")  # the caller's fault: 422
    if payload.get("n", 1) % 5 == 0 and {version} == 2:
        raise RuntimeError("version 2 fails every fifth n")
    return {{"version": {version}}}
"""


def deploy_two(server: TidalServer, write_module, name: str, extra: str = "") -> None:  # type: ignore[no-untyped-def]
    """Two revisions of ``name``: the first serves, the second (failing every fifth n) serves nothing."""
    first = server.deploy(write_module(VERSION.format(name=name, version=1, extra=extra), "v1.py"))
    assert first.returncode == 0, first.stderr
    module = write_module(VERSION.format(name=name, version=2, extra=extra), "v2.py")
    second = server.deploy(module, "--no-traffic")
    assert second.returncode == 0, second.stderr


def revisions_of(client: httpx.Client, name: str, keys: list[str]) -> dict[str, str]:
    return {
        key: client.post(f"/fn/{name}", json={"user_id": key}).headers["x-tidal-revision"] for key in keys
    }


def test_a_sticky_json_field_keeps_users_and_moves_only_the_share_that_changed(  # type: ignore[no-untyped-def]
    tidal_server: TidalServer, write_module
) -> None:
    name = "sticky"
    deploy_two(tidal_server, write_module, name, extra=', sticky_key="user_id"')
    v1, v2 = f"{name}-00001", f"{name}-00002"
    assert tidal_server.cli("traffic", name, "1=90", "2=10").returncode == 0
    assert tidal_server.client.get(f"/v1/functions/{name}").json()["spec"]["sticky_key"] == "user_id"
    client = tidal_server.client
    keys = [f"user-{number}" for number in range(2000)]

    before = revisions_of(client, name, keys)
    # The keys are fixed, so the split is too: 2,000 keys at 10% give 200 on average (sd 13.4).
    assert 133 <= Counter(before.values())[v2] <= 267, Counter(before.values())
    assert revisions_of(client, name, keys[:300]) == {key: before[key] for key in keys[:300]}, "sticky"

    assert tidal_server.cli("traffic", name, "1=80", "2=20").returncode == 0
    after = revisions_of(client, name, keys)
    moved = [key for key in keys if after[key] != before[key]]
    assert all(before[key] == v1 and after[key] == v2 for key in moved), (
        "only keys of the slice that changed hands move"
    )
    assert 133 <= len(moved) <= 267, len(moved)  # 10% of 2,000 keys move, and no more

    # The header wins over the field; a body without the field gets a weighted random draw.
    on_v1 = next(key for key in keys if after[key] == v1)
    on_v2 = next(key for key in keys if after[key] == v2)
    by_header = client.post(f"/fn/{name}", json={"user_id": on_v2}, headers={"x-tidal-key": on_v1})
    assert by_header.headers["x-tidal-revision"] == v1
    keyless = Counter(client.post(f"/fn/{name}", json={}).headers["x-tidal-revision"] for _ in range(200))
    assert set(keyless) == {v1, v2}, keyless


def test_ab_counts_what_was_sent_and_blames_the_failing_revision(  # type: ignore[no-untyped-def]
    tidal_server: TidalServer, write_module
) -> None:
    name = "abtest"
    deploy_two(tidal_server, write_module, name)
    assert tidal_server.cli("traffic", name, "1=50", "2=50", "--tag", "2=canary").returncode == 0
    sent: Counter[tuple[str, int]] = Counter()
    for n in range(1, 301):
        response = tidal_server.client.post(f"/fn/{name}", json={"n": n})
        sent[(response.headers["x-tidal-revision"], response.status_code)] += 1
    for _ in range(7):  # the caller's fault, on the canary: not the revision's errors
        assert tidal_server.client.post(f"/fn/{name}@canary", json={"bad": True}).status_code == 422
    v1, v2 = f"{name}-00001", f"{name}-00002"
    assert sent[(v1, 500)] == 0 and sent[(v2, 500)] > 0

    shown = tidal_server.cli("ab", name, "--since", "1h", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {row["revision"]: row for row in json.loads(shown.stdout)["revisions"]}
    assert rows[v1]["requests"] == sent[(v1, 200)] and rows[v1]["errors"] == 0
    assert rows[v1]["error_rate"] == 0.0 and rows[v1]["percent"] == 50
    canary = rows[v2]
    assert (canary["ok"], canary["errors"], canary["caller_faults"]) == (sent[(v2, 200)], sent[(v2, 500)], 7)
    assert canary["error_rate"] == sent[(v2, 500)] / (sent[(v2, 200)] + sent[(v2, 500)])
    assert 0.1 < canary["error_rate"] < 0.3 and canary["tag"] == "canary"  # n % 5 == 0: about a fifth
    assert canary["p50_ms"] is not None and canary["p99_ms"] >= canary["p50_ms"]

    table = tidal_server.cli("ab", name)
    assert table.returncode == 0 and v2 in table.stdout and "canary" in table.stdout

    # Bad windows and unknown functions: a precise 4xx, never a 500.
    assert tidal_server.client.get(f"/v1/functions/{name}/ab", params={"since": "soon"}).status_code == 400
    assert tidal_server.client.get(f"/v1/functions/{name}/ab", params={"since": "0"}).status_code == 400
    assert tidal_server.client.get("/v1/functions/ghost/ab").status_code == 404
    bad = tidal_server.cli("ab", name, "--since", "soon")
    assert bad.returncode == 1 and "--since takes a duration" in bad.stderr
    ghost = tidal_server.cli("ab", "ghost")
    assert ghost.returncode == 1 and "no function named 'ghost'" in ghost.stderr
