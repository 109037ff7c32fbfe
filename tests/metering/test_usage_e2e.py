"""Usage and cost through a real gateway: after a mixed load of warm, cold, failed, streamed and
async calls, the billed milliseconds `GET /v1/usage` (and `tidal usage`) report equal the sum over
the activation records; every kind of call leaves a record naming its trigger; filters and bad
input answer precisely."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from conftest import TIDAL, TidalServer, cli_env
from paths import EXAMPLES

MIXED = """
import tidal

@tidal.function(name="boom", concurrency=4, memory=256)
def boom(payload):
    if payload.get("fail"):
        raise ValueError("asked to fail")
    return {"ok": True}

@tidal.function(name="drip", concurrency=4, memory=192)
def drip(payload):
    for i in range(payload["n"]):
        yield {"i": i}
"""


def activations(server: TidalServer, name: str) -> list[dict[str, object]]:
    answer = server.client.get(f"/v1/functions/{name}/activations", params={"limit": 1000})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["activations"])


def run_mixed_load(server: TidalServer, write_module) -> str:  # type: ignore[no-untyped-def]
    """Cold and warm echo calls, failures, streams, and one async job; the job's id."""
    assert server.deploy(EXAMPLES / "echo.py").returncode == 0
    assert server.deploy(write_module(MIXED)).returncode == 0
    first = server.client.post("/fn/echo", json={"n": 0})
    assert first.status_code == 200 and first.headers["x-tidal-cold-start"] == "1"
    for n in range(20):
        assert server.client.post("/fn/echo", json={"n": n}).status_code == 200
    for n in range(6):
        answer = server.client.post("/fn/boom", json={"fail": n % 2 == 0})
        assert answer.status_code == (500 if n % 2 == 0 else 200), answer.text
    for _ in range(3):
        streamed = server.client.post("/fn/drip", json={"n": 5})
        assert streamed.status_code == 200 and streamed.text.count('"i"') == 5
    accepted = server.client.post("/fn/echo", json={"async": True}, headers={"prefer": "respond-async"})
    assert accepted.status_code == 202, accepted.text
    job_id = str(accepted.json()["job_id"])
    deadline = time.monotonic() + 30
    while server.client.get(f"/v1/jobs/{job_id}").json()["state"] != "succeeded":
        assert time.monotonic() < deadline, "the job did not succeed in 30 s"
        time.sleep(0.05)
    return job_id


def test_usage_equals_the_sum_over_activation_records(
    fresh_server: TidalServer, write_module, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    prices = tmp_path / "prices.toml"
    prices.write_text('currency = "EUR"\ngb_s = 0.00002\n')
    server = fresh_server.start("--price-sheet", str(prices))
    job_id = run_mixed_load(server, write_module)

    records = {name: activations(server, name) for name in ("echo", "boom", "drip")}
    billed = {name: sum(int(item["billed_ms"]) for item in items) for name, items in records.items()}  # type: ignore[call-overload]
    assert all(total > 0 for total in billed.values()), billed
    report = server.client.get("/v1/usage", params={"by": "function"}).json()
    rows = {row["key"]: row for row in report["rows"]}
    assert {name: rows[name]["billed_ms"] for name in billed} == billed
    assert report["total"]["billed_ms"] == sum(billed.values())
    assert {name: rows[name]["requests"] for name in billed} == {
        name: len(items) for name, items in records.items()
    }
    assert rows["boom"]["errors"] == 3 and rows["echo"]["errors"] == 0
    assert rows["drip"]["gb_s"] == billed["drip"] * 192 / 1024 / 1000
    assert report["prices"]["currency"] == "EUR" and report["prices"]["gb_s"] == 0.00002
    for by in ("revision", "key", "day"):
        grouped = server.client.get("/v1/usage", params={"by": by, "since": "1h"}).json()
        assert sum(row["billed_ms"] for row in grouped["rows"]) == sum(billed.values()), by

    # Every kind of call left its trigger: HTTP calls and the job's attempt.
    triggers = {(item["trigger"], item["job"]) for item in records["echo"]}
    assert triggers == {("http", ""), ("job", job_id)}

    # Serverless vs reserved: the instances that served this load were recorded and compared.
    reserved = report["reserved"]
    assert {peak["function"] for peak in reserved["functions"]} >= {"echo", "boom", "drip"}
    assert reserved["instance_s"] > 0 and reserved["idle_s"] >= 0
    assert reserved["billed_cost"] == report["total"]["cost"]

    shown = server.cli("usage", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["total"]["billed_ms"] == sum(billed.values())
    table = server.cli("usage", "--since", "1h")
    assert table.returncode == 0, table.stderr
    assert "drip" in table.stdout and "total" in table.stdout and "serverless vs reserved" in table.stdout
    assert "kept warm with no work" in table.stdout


def test_activation_filters_and_bad_input(fresh_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    server = fresh_server.start()
    assert server.deploy(write_module(MIXED)).returncode == 0
    for n in range(4):
        server.client.post("/fn/boom", json={"fail": n < 3})
    failed = server.client.get("/v1/functions/boom/activations", params={"status": "error", "since": "1h"})
    assert [item["status"] for item in failed.json()["activations"]] == ["error"] * 3
    both = server.client.get("/v1/functions/boom/activations", params={"status": "error,ok"}).json()
    assert len(both["activations"]) == 4

    listed = server.cli("activations", "boom", "--status", "ok", "--since", "10m", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [item["status"] for item in json.loads(listed.stdout)] == ["ok"]

    bad_status = server.client.get("/v1/functions/boom/activations", params={"status": "eror"})
    assert bad_status.status_code == 400 and "unknown 'eror'" in bad_status.json()["error"]["message"]
    bad_since = server.client.get("/v1/usage", params={"since": "yesterday"})
    assert bad_since.status_code == 400 and "since" in bad_since.json()["error"]["message"]
    bad_by = server.client.get("/v1/usage", params={"by": "colour"})
    assert bad_by.status_code == 400 and "function, revision, key, day" in bad_by.json()["error"]["message"]
    cli_bad = server.cli("usage", "--by", "colour")
    assert cli_bad.returncode == 1 and "--by takes one of" in cli_bad.stderr
    cli_bad_status = server.cli("activations", "boom", "--status", "eror")
    assert cli_bad_status.returncode == 1 and "unknown 'eror'" in cli_bad_status.stderr


def test_a_bad_price_sheet_stops_tidal_up_with_its_reason(tmp_path: Path) -> None:
    sheet = tmp_path / "prices.toml"
    sheet.write_text("gb_s = -3\n")
    started = subprocess.run(
        [TIDAL, "up", "--state-dir", str(tmp_path / "state"), "--price-sheet", str(sheet)],
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert started.returncode == 1
    assert "--price-sheet" in started.stderr and "gb_s must be a finite price of 0 or more" in started.stderr
    assert "Traceback" not in started.stderr
