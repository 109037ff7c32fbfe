"""The user's loop through the CLI: deploy, ls, status, invoke, redeploy, rm, keys, restart."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

import httpx

from conftest import TIDAL, TidalServer, cli_env

VERSION_ONE = """
import tidal

@tidal.function(name="greeter")
def greet(payload):
    return {"greeting": "hello " + payload["name"]}
"""


def test_deploy_ls_status_invoke_redeploy_rm(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    path = write_module(VERSION_ONE, "greeter.py")
    first = tidal_server.deploy(path)
    assert first.returncode == 0, first.stderr
    assert "greeter: greeter-00001 (new revision)" in first.stdout

    invoked = tidal_server.cli("invoke", "greeter", '{"name": "ada"}')
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout) == {"greeting": "hello ada"}

    listed = tidal_server.cli("ls")
    assert "greeter" in listed.stdout and "greeter-00001" in listed.stdout

    again = tidal_server.deploy(path)
    assert "greeter: greeter-00001 (unchanged)" in again.stdout

    # The deployed code is a copy: editing the source changes nothing until the next deploy.
    path.write_text(VERSION_ONE.replace("hello ", "goodbye "))
    assert tidal_server.client.post("/fn/greeter", json={"name": "ada"}).json() == {"greeting": "hello ada"}
    second = tidal_server.deploy(path)
    assert "greeter: greeter-00002 (new revision)" in second.stdout
    response = tidal_server.client.post("/fn/greeter", json={"name": "ada"})
    assert response.json() == {"greeting": "goodbye ada"}
    assert response.headers["x-tidal-revision"] == "greeter-00002"
    path.unlink()
    assert tidal_server.client.post("/fn/greeter", json={"name": "bo"}).json() == {"greeting": "goodbye bo"}

    # A spec change alone is a new revision too.
    path.write_text(VERSION_ONE.replace("hello ", "goodbye "))
    assert "greeter-00003 (new revision)" in tidal_server.deploy(path, "--memory", "1024").stdout

    info = tidal_server.client.get("/v1/functions/greeter").json()
    assert info["revision"] == "greeter-00003"
    assert info["spec"]["memory"] == 1024
    assert [revision["id"] for revision in info["revisions"]] == [
        "greeter-00003",
        "greeter-00002",
        "greeter-00001",
    ]
    assert set(info["instances"]) >= {"ready", "starting", "desired"}
    status = tidal_server.cli("status", "greeter")
    assert "serving greeter-00003" in status.stdout

    removed = tidal_server.cli("rm", "greeter")
    assert removed.returncode == 0
    assert tidal_server.client.post("/fn/greeter", json={"name": "x"}).status_code == 404
    assert "greeter" not in tidal_server.cli("ls").stdout
    gone = tidal_server.cli("rm", "greeter")
    assert gone.returncode == 1 and "no function named 'greeter'" in gone.stderr


def test_invalid_specs_are_refused_naming_the_field(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    bad_memory = write_module(VERSION_ONE.replace('name="greeter"', 'name="bad_memory", memory=0'))
    result = tidal_server.deploy(bad_memory)
    assert result.returncode == 1
    assert "spec.memory" in result.stderr and "greater than or equal to 64" in result.stderr
    assert "Traceback" not in result.stderr

    good = write_module(VERSION_ONE.replace('name="greeter"', 'name="bounded"'))
    result = tidal_server.deploy(good, "--min-instances", "5", "--max-instances", "2")
    assert result.returncode == 1 and "min_instances (5) is above max_instances (2)" in result.stderr
    result = tidal_server.deploy(good, "--concurrency", "0")
    assert result.returncode == 1 and "spec.concurrency" in result.stderr
    result = tidal_server.deploy(good, "--name", "Not A Name")
    assert result.returncode == 1 and "spec.name" in result.stderr
    assert tidal_server.client.get("/v1/functions/bounded").status_code == 404


def test_broken_modules_are_refused_clearly(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    nothing = tidal_server.deploy(write_module("x = 1\n"))
    assert nothing.returncode == 1 and "declares no @tidal.function" in nothing.stderr
    broken = tidal_server.deploy(write_module("import tidal\nraise RuntimeError('boom at import')\n"))
    assert broken.returncode == 1 and "boom at import" in broken.stderr
    missing = tidal_server.deploy("/no/such/path.py")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_setup_failure_is_502_with_the_reason(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    source = """
import tidal

@tidal.function(name="no_weights")
class NoWeights:
    def setup(self):
        raise FileNotFoundError("weights.bin is missing")

    def __call__(self, payload):
        return payload
"""
    assert tidal_server.deploy(write_module(source)).returncode == 0
    response = tidal_server.client.post("/fn/no_weights", json={})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "FileNotFoundError"
    assert "weights.bin is missing" in response.json()["error"]["message"]


def test_a_function_that_cannot_start_is_retried_with_backoff(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    source = """
import tidal

@tidal.function(name="crash_loop")
class CrashLoop:
    def setup(self):
        raise RuntimeError("cannot reach the feature store")

    def __call__(self, payload):
        return payload
"""
    assert tidal_server.deploy(write_module(source)).returncode == 0
    deadline = time.monotonic() + 6.0
    answers = []
    while time.monotonic() < deadline:  # a client that keeps retrying for 6 s
        answers.append(tidal_server.client.post("/fn/crash_loop", json={}))
        time.sleep(0.05)
    assert {answer.status_code for answer in answers} == {502}
    assert all("cannot reach the feature store" in answer.json()["error"]["message"] for answer in answers)
    instances = tidal_server.client.get("/v1/functions/crash_loop").json()["instances"]
    # Backoff of 1, 2, 4 s: tries near 0, 1 and 3 s (and perhaps 7 s); one per second would be 6 or more.
    assert 2 <= instances["start_failures"] == instances["starts"] <= 4, instances
    status = tidal_server.cli("status", "crash_loop")
    assert status.returncode == 0 and "starts are failing" in status.stdout, status.stdout


def test_keys_create_list_revoke(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(VERSION_ONE.replace('"greeter"', '"keyed"'))).returncode == 0
    created = tidal_server.cli("keys", "create", "--scope", "invoke:keyed", "--description", "ci robot")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    url, auth = f"{tidal_server.url}/fn/keyed", {"authorization": f"Bearer {key}"}
    assert httpx.post(url, json={"name": "k"}, headers=auth).status_code == 200
    key_id = key.split("_")[1]
    listing = tidal_server.cli("keys", "ls").stdout
    assert key_id in listing and "ci robot" in listing and key not in listing
    assert tidal_server.cli("keys", "revoke", key_id).returncode == 0
    assert httpx.post(url, json={"name": "k"}, headers=auth).status_code == 401
    bad = tidal_server.cli("keys", "create", "--scope", "everything")
    assert bad.returncode == 1 and "invalid scope" in bad.stderr


def test_openapi_document_lists_the_api(tidal_server: TidalServer) -> None:
    document = httpx.get(f"{tidal_server.url}/openapi.json").json()
    assert {"/fn/{name}", "/v1/functions", "/v1/functions/{name}", "/v1/keys", "/healthz"} <= set(
        document["paths"]
    )


def test_cli_without_a_gateway_says_so() -> None:
    env = cli_env() | {"TIDAL_URL": "http://127.0.0.1:9", "TIDAL_API_KEY": "x"}
    result = subprocess.run([TIDAL, "ls"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "cannot reach tidal at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_restart_brings_every_function_back(fresh_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    fresh_server.start()
    key_file = fresh_server.state_dir / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = fresh_server.admin_key
    path = write_module(VERSION_ONE.replace('"greeter"', '"survivor"'))
    assert fresh_server.deploy(path).returncode == 0
    assert fresh_server.client.post("/fn/survivor", json={"name": "a"}).status_code == 200
    fresh_server.stop()
    path.unlink()

    fresh_server.start()
    assert fresh_server.admin_key == key
    response = fresh_server.client.post("/fn/survivor", json={"name": "again"})
    assert response.json() == {"greeting": "hello again"}
    assert response.headers["x-tidal-revision"] == "survivor-00001"
    activations = fresh_server.client.get("/v1/functions/survivor/activations").json()["activations"]
    assert len(activations) == 2, "the activation from before the restart was kept"


def test_relative_state_dir_as_make_run_uses(tmp_path, write_module) -> None:  # type: ignore[no-untyped-def]
    """`make run` passes `--state-dir .tidal`: instances (forked in their code folder) must still work."""
    server = TidalServer(Path(".tidal"), cwd=tmp_path)
    try:
        server.start("--deploy", str(write_module(VERSION_ONE.replace('"greeter"', '"relative"'))))
        response = server.client.post("/fn/relative", json={"name": "cwd"})
        assert response.status_code == 200, response.text
        assert response.json() == {"greeting": "hello cwd"}
        assert (tmp_path / ".tidal" / "tidal.db").exists()
    finally:
        server.stop()
