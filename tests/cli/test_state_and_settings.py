"""A state dir from the previous release opens; one state dir has one gateway; function-level
settings change without a new revision; activations name the caller's key and the trigger.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx

from conftest import TIDAL, TidalServer, cli_env

FIXTURE = Path(__file__).parent.parent / "store" / "fixtures" / "state-0.1.0"

WHOAMI = """
import os

import tidal

@tidal.function(name="whoami", concurrency=4)
def whoami(payload):
    return {"pid": os.getpid()}
"""


def test_a_state_dir_written_by_0_1_0_serves_after_the_upgrade(tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(FIXTURE, state)
    server = TidalServer(state).start()
    try:
        listed = server.cli("ls", "--json")
        assert listed.returncode == 0, listed.stderr
        assert '"revision": "echo-00002"' in listed.stdout and '"public": true' in listed.stdout
        # echo was public in 0.1.0: still callable without a key, by the revision that served then.
        answer = httpx.post(f"{server.url}/fn/echo", json={"after": "upgrade"})
        assert answer.status_code == 200 and answer.json() == {"after": "upgrade"}
        assert answer.headers["x-tidal-revision"] == "echo-00002"
        # The invoke key made by 0.1.0 still works (and is still scoped to echo).
        invoke_key = (state / "invoke-echo.key").read_text().strip()
        keyed = server.cli("invoke", "echo", '"keyed"', key=invoke_key)
        assert keyed.returncode == 0 and keyed.stdout.strip() == '"keyed"'
        denied = server.cli("ls", key=invoke_key)
        assert denied.returncode == 1 and "admin" in denied.stderr
        # The activations recorded by 0.1.0 are there, next to the new ones.
        records = server.client.get("/v1/functions/echo/activations").json()["activations"]
        old = [record for record in records if record["id"].startswith("8b1f75a1d6")]
        assert sorted((record["revision"], record["cold"]) for record in old) == [
            ("echo-00001", False), ("echo-00001", True), ("echo-00002", True)
        ]  # fmt: skip
        assert all(record["trigger"] == "http" and record["key_id"] == "" for record in old)
        # An identical redeploy is still "unchanged" after the digests were recomputed.
        again = server.deploy(
            Path(__file__).parents[2] / "examples" / "echo.py", "--memory", "256", "--public"
        )
        assert again.returncode == 0 and "echo-00002 (unchanged)" in again.stdout, again.stdout
    finally:
        server.stop()


def test_a_second_gateway_on_the_same_state_dir_is_refused(fresh_server: TidalServer) -> None:
    fresh_server.start()
    second = subprocess.run(
        [TIDAL, "up", "--port", "1", "--state-dir", str(fresh_server.state_dir)],
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert second.returncode == 1
    assert f"another tidal gateway (pid {fresh_server.process.pid}) is running on" in second.stderr  # type: ignore[union-attr]
    assert httpx.get(f"{fresh_server.url}/healthz").status_code == 200, "the first one is untouched"


def test_making_a_function_public_keeps_its_revision_and_its_warm_instance(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    path = write_module(WHOAMI, "whoami.py")
    first = tidal_server.deploy(path, "--private")
    assert first.returncode == 0 and "(new revision)" in first.stdout
    keyed = tidal_server.client.post("/fn/whoami", json={})
    assert keyed.status_code == 200
    assert httpx.post(f"{tidal_server.url}/fn/whoami", json={}).status_code == 401

    opened = tidal_server.deploy(path, "--public", "--retries", "5", "--max-event-age", "1h")
    assert opened.returncode == 0 and "(unchanged)" in opened.stdout, opened.stdout
    spec = tidal_server.client.get("/v1/functions/whoami").json()["spec"]
    assert (spec["public"], spec["retries"], spec["max_event_age"]) == (True, 5, 3600.0), spec
    anonymous = httpx.post(f"{tidal_server.url}/fn/whoami", json={})
    assert anonymous.status_code == 200
    assert anonymous.headers["x-tidal-revision"] == keyed.headers["x-tidal-revision"]
    assert anonymous.headers["x-tidal-cold-start"] == "0"
    assert anonymous.json()["pid"] == keyed.json()["pid"], "the same warm instance answered"
    assert tidal_server.client.get("/v1/functions/whoami").json()["public"] is True

    admin_key_id = tidal_server.admin_key.split("_")[1]
    records = {
        r["id"]: r for r in tidal_server.client.get("/v1/functions/whoami/activations").json()["activations"]
    }
    assert records[keyed.headers["x-tidal-activation"]]["key_id"] == admin_key_id
    assert records[anonymous.headers["x-tidal-activation"]]["key_id"] == ""
    assert {records[a.headers["x-tidal-activation"]]["trigger"] for a in (keyed, anonymous)} == {"http"}
    assert os.path.exists(tidal_server.state_dir / "gateway.lock")
