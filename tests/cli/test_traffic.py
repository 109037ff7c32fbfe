"""Traffic between revisions, driven as a user would: deploy --no-traffic, tidal traffic, tags."""

from __future__ import annotations

from collections import Counter

import httpx

from conftest import TidalServer

VERSION = """
import tidal

@tidal.function(name="{name}", concurrency=50)
def answer(payload):
    return {{"version": {version}}}
"""


def test_split_tags_and_no_traffic_deploys(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    name = "versions"
    first = tidal_server.deploy(write_module(VERSION.format(name=name, version=1), "v1.py"))
    assert first.returncode == 0 and f"{name}-00001" in first.stdout
    second = tidal_server.deploy(write_module(VERSION.format(name=name, version=2), "v2.py"), "--no-traffic")
    assert second.returncode == 0 and f"{name}-00002 (new revision)" in second.stdout, second.stderr
    calls = [tidal_server.client.post(f"/fn/{name}", json={}).json()["version"] for _ in range(20)]
    assert set(calls) == {1}, "a --no-traffic revision gets nothing"

    split = tidal_server.cli("traffic", name, "1=80", "2=20", "--tag", "2=canary", "--tag", "1=stable")
    assert split.returncode == 0, split.stderr
    assert "canary" in split.stdout and "20%" in split.stdout
    counts = Counter(tidal_server.client.post(f"/fn/{name}", json={}).json()["version"] for _ in range(1000))
    # 1,000 draws at 20%: the mean is 200, the standard deviation 12.6; 5 sigma either side.
    assert 137 <= counts[2] <= 263 and counts[1] + counts[2] == 1000, counts
    tagged = tidal_server.client.post(f"/fn/{name}@canary", json={})
    assert tagged.json() == {"version": 2} and tagged.headers["x-tidal-revision"] == f"{name}-00002"
    by_header = tidal_server.client.post(f"/fn/{name}", json={}, headers={"x-tidal-revision": "stable"})
    assert by_header.json() == {"version": 1}
    sticky = {tidal_server.client.post(f"/fn/{name}", json={}, headers={"x-tidal-key": "user-7"}).json()["version"]
              for _ in range(20)}  # fmt: skip
    assert len(sticky) == 1, "one key, one revision"
    info = tidal_server.client.get(f"/v1/functions/{name}").json()
    assert [(t["revision"], t["percent"], t["tag"]) for t in info["traffic"]] == [
        (f"{name}-00001", 80, "stable"), (f"{name}-00002", 20, "canary")
    ]  # fmt: skip
    assert "canary" in tidal_server.cli("traffic", name).stdout

    # Bad splits are refused with the reason, and the split in force stays.
    bad = tidal_server.client.put(
        f"/v1/functions/{name}/traffic", json={"targets": [{"revision": f"{name}-00001", "percent": 50}]}
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "BadTraffic", bad.text
    foreign = tidal_server.cli("traffic", name, "1=50", "nope-00001=50")
    assert foreign.returncode == 1 and "nope-00001" in foreign.stderr
    assert tidal_server.cli("traffic", name, "1=fifty").returncode == 1
    missing = tidal_server.client.put(
        "/v1/functions/ghost/traffic", json={"targets": [{"revision": "x", "percent": 100}]}
    )
    assert missing.status_code == 404
    assert len(tidal_server.client.get(f"/v1/functions/{name}").json()["traffic"]) == 2

    # A plain deploy keeps today's behaviour: all traffic to the revision it made.
    third = tidal_server.deploy(write_module(VERSION.format(name=name, version=3), "v3.py"))
    assert third.returncode == 0
    assert {tidal_server.client.post(f"/fn/{name}", json={}).json()["version"] for _ in range(10)} == {3}
    assert tidal_server.client.post(f"/fn/{name}@canary", json={}).status_code == 404


def test_no_traffic_on_a_first_deploy_is_refused(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    refused = tidal_server.deploy(
        write_module(VERSION.format(name="brand_new", version=1), "new.py"), "--no-traffic"
    )
    assert refused.returncode == 1 and "has none yet" in refused.stderr
    assert httpx.get(f"{tidal_server.url}/healthz").status_code == 200
