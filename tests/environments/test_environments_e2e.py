"""Per-revision environments, driven as a user would: `tidal deploy` of bundles that bring their
own requirements, against a real gateway, uv and a real sandbox.

The packages are wheels made by the test (``wheels.py``) and shipped in the bundle's wheels/
folder with ``--no-index``, so nothing here needs the network; one test takes a real package
through the host's configured package index.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TidalServer, wait_for
from environments.wheels import make_wheel
from tidal.deploy.bundle import bundle_path

REPORT = """
import importlib.util
import sys

import tidal
import {package}

@tidal.function(name="{name}")
def report(payload):
    written = None
    try:
        open(sys.prefix + "/written-by-function", "w")
        written = "yes"
    except OSError as exc:
        written = type(exc).__name__
    return {{
        "version": {package}.VERSION,
        "prefix": sys.prefix,
        "sees_fastapi": importlib.util.find_spec("fastapi") is not None,
        "sees_pydantic": importlib.util.find_spec("pydantic") is not None,
        "wrote_into_environment": written,
    }}
"""


def bundle(root: Path, name: str, package: str, version: str, extra_code: str = "") -> Path:
    """A folder deploying function ``name`` that needs ``package==version`` from its wheels/."""
    folder = root / f"{name}-{version}"
    make_wheel(folder / "wheels", package, version, f"VERSION = {version!r}\n")
    (folder / "main.py").write_text(REPORT.format(package=package, name=name) + extra_code)
    (folder / "requirements.txt").write_text(f"--no-index\n{package}=={version}\n")
    return folder


def invoke(server: TidalServer, name: str) -> dict[str, object]:
    response = server.client.post(f"/fn/{name}", json={})
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def environments(server: TidalServer) -> set[str]:
    root = server.state_dir / "envs"
    return {path.name for path in root.iterdir() if not path.name.startswith(".")}


def test_a_bundle_brings_its_own_package_and_sees_none_of_tidals(
    tidal_server: TidalServer, tmp_path: Path
) -> None:
    deployed = tidal_server.deploy(bundle(tmp_path, "ownpkg", "tidal_demo_pkg", "1.0"))
    assert deployed.returncode == 0, deployed.stderr
    assert "resolving the requirements from requirements.txt" in deployed.stdout
    assert "+ tidal-demo-pkg==1.0" in deployed.stdout.lower().replace(
        "_", "-"
    )  # uv's install lines, streamed
    assert "ownpkg-00001 (new revision)" in deployed.stdout
    answer = invoke(tidal_server, "ownpkg")
    assert answer["version"] == "1.0"
    assert str(answer["prefix"]).startswith(str(tidal_server.state_dir / "envs"))
    # The runtime does not leak its dependencies, and the environment is read-only to the function.
    assert answer["sees_fastapi"] is False and answer["sees_pydantic"] is False
    assert answer["wrote_into_environment"] in ("OSError", "PermissionError")


def test_two_functions_pin_two_versions_of_one_package(tidal_server: TidalServer, tmp_path: Path) -> None:
    for name, version in (("pinned-old", "1.0"), ("pinned-new", "2.0")):
        deployed = tidal_server.deploy(bundle(tmp_path, name, "tidal_versioned", version))
        assert deployed.returncode == 0, deployed.stderr
    old, new = invoke(tidal_server, "pinned-old"), invoke(tidal_server, "pinned-new")
    assert (old["version"], new["version"]) == ("1.0", "2.0")
    assert old["prefix"] != new["prefix"]


def test_same_requirements_reuse_the_environment(tidal_server: TidalServer, tmp_path: Path) -> None:
    first = bundle(tmp_path, "reuser", "tidal_reused", "1.0")
    assert tidal_server.deploy(first).returncode == 0
    built = environments(tidal_server)
    # New code, same requirements: no resolving, no installing, the same environment.
    (first / "main.py").write_text((first / "main.py").read_text() + "\n# a change of code\n")
    again = tidal_server.deploy(first)
    assert again.returncode == 0 and "reuser-00002 (new revision)" in again.stdout, again.stderr
    assert "requirements unchanged" in again.stdout and "Installed" not in again.stdout
    # Another function with the same requirements shares it too.
    other = tidal_server.deploy(bundle(tmp_path, "reuser-twin", "tidal_reused", "1.0"))
    assert other.returncode == 0 and "Installed" not in other.stdout, other.stdout
    assert environments(tidal_server) == built
    assert invoke(tidal_server, "reuser")["prefix"] == invoke(tidal_server, "reuser-twin")["prefix"]


def test_a_bad_requirement_is_a_400_and_the_serving_revision_stays(
    tidal_server: TidalServer, tmp_path: Path
) -> None:
    good = bundle(tmp_path, "steady", "tidal_steady", "1.0")
    assert tidal_server.deploy(good).returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    (broken / "requirements.txt").write_text("--no-index\ntidal_steady==9.9\n")
    refused = tidal_server.deploy(broken)
    assert refused.returncode == 1
    assert "DeployError" in refused.stderr and "tidal-steady==9.9" in refused.stderr.lower().replace("_", "-")
    assert "Traceback" not in refused.stderr
    (broken / "requirements.txt").write_text("--no-index\nthis is not a requirement\n")
    over_http = tidal_server.client.post(
        "/v1/functions", params={"source": "broken"}, content=bundle_path(broken),
        headers={"content-type": "application/zip"},
    )  # fmt: skip
    assert over_http.status_code == 400, over_http.text
    assert over_http.json()["error"]["type"] == "DeployError"
    assert "resolving the requirements failed" in over_http.json()["error"]["message"]
    assert invoke(tidal_server, "steady")["version"] == "1.0"
    revisions = tidal_server.client.get("/v1/functions/steady").json()["revisions"]
    assert len(revisions) == 1


def test_removing_the_last_function_of_an_environment_removes_it(
    fresh_server: TidalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDAL_TEMPLATES", "0")  # instances spawned fresh: the other way to start one
    fresh_server.start()
    assert fresh_server.deploy(bundle(tmp_path, "leaving", "tidal_leaving", "1.0")).returncode == 0
    assert fresh_server.deploy(bundle(tmp_path, "staying", "tidal_staying", "1.0")).returncode == 0
    assert len(environments(fresh_server)) == 2
    staying = invoke(fresh_server, "staying")["prefix"]
    assert fresh_server.cli("rm", "leaving").returncode == 0
    wait_for(lambda: len(environments(fresh_server)) == 1, 30, "the unused environment to be removed")
    assert {str(fresh_server.state_dir / "envs" / key) for key in environments(fresh_server)} == {staying}
    assert invoke(fresh_server, "staying")["version"] == "1.0"


def test_inline_metadata_takes_a_real_package_from_the_configured_index(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    """PEP 723 metadata in a one-file deploy; tomli_w is not in tidal's own environment, so it
    comes from the package sources configured for pip on this host (or PyPI without any)."""
    source = """# /// script
# dependencies = ["tomli_w"]
# ///
import tidal
import tomli_w

@tidal.function(name="inline-deps")
def dump(payload):
    return {"toml": tomli_w.dumps(payload)}
"""
    deployed = tidal_server.deploy(write_module(source, "inline.py"))
    assert deployed.returncode == 0, deployed.stderr
    assert "inline script metadata" in deployed.stdout
    response = tidal_server.client.post("/fn/inline-deps", json={"a": 1})
    assert response.status_code == 200 and response.json() == {"toml": "a = 1\n"}, response.text


def test_status_names_the_environment(tidal_server: TidalServer, tmp_path: Path) -> None:
    assert tidal_server.deploy(bundle(tmp_path, "described", "tidal_described", "1.0")).returncode == 0
    info = tidal_server.client.get("/v1/functions/described").json()
    environment = info["revisions"][0]["environment"]
    assert environment and (tidal_server.state_dir / "envs" / environment / "tidal-environment.json").exists()
    manifest = json.loads(
        (tidal_server.state_dir / "envs" / environment / "tidal-environment.json").read_text()
    )
    assert "tidal_described==1.0" in manifest["requirements"]
