"""Disk and records under a hostile function: capped logs, code dirs removed, private state files."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import TIDAL, TidalServer, cli_env, wait_for

MiB = 1024 * 1024

LOUD = """
import os
import sys

import tidal

@tidal.function(name="{name}")
def loud(payload):
    if payload.get("print_mb"):
        print("p" * (payload["print_mb"] * 1_000_000))  # one print of N MB, in one call
    if payload.get("fd1_mb"):
        chunk = b"w" * (1024 * 1024 - 1) + b"\\n"
        for _ in range(payload["fd1_mb"]):  # straight to fd 1, as a C library would
            os.write(1, chunk)
    return {{"pid": os.getpid()}}
"""

TWINS = """
import tidal

@tidal.function(name="twin_a")
def twin_a(payload):
    return "a"

@tidal.function(name="twin_b")
def twin_b(payload):
    return "b"
"""


def deploy_loud(server: TidalServer, write_module: Callable[..., Path], name: str) -> None:
    result = server.deploy(write_module(LOUD.format(name=name), f"{name}.py"))
    assert result.returncode == 0, result.stderr


def code_dir(server: TidalServer, function: str) -> Path:
    revisions = server.client.get(f"/v1/functions/{function}").json()["revisions"]
    path: Path = server.state_dir / "code" / revisions[0]["code_digest"]
    return path


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_a_10_mb_print_answers_200_and_keeps_64_kib_of_logs(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy_loud(tidal_server, write_module, "printer")
    answer = tidal_server.client.post("/fn/printer", json={"print_mb": 10})
    assert answer.status_code == 200, answer.text

    record: dict[str, Any] = tidal_server.client.get(
        f"/v1/activations/{answer.headers['x-tidal-activation']}"
    ).json()
    logs = record["logs"]
    assert 60 * 1024 < len(logs.encode()) <= 64 * 1024
    assert logs.startswith("ppp") and logs.endswith(" more bytes of output dropped]")
    kept, _, marker = logs.partition("\n[tidal: ")
    assert set(kept) == {"p"}
    assert len(kept) + int(marker.split()[0]) == 10_000_001  # every byte printed is kept or counted


def test_30_mb_to_fd_1_leaves_no_log_file_above_the_cap(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy_loud(tidal_server, write_module, "flooder")
    first = tidal_server.client.post("/fn/flooder", json={"fd1_mb": 30})
    assert first.status_code == 200, first.text

    instances = tidal_server.client.get("/v1/functions/flooder").json()["instances"]["list"]
    log = Path(instances[0]["log"])
    rotated = log.with_name(log.name + ".1")
    wait_for(rotated.exists, 10, "the instance's log to rotate")
    for path in (tidal_server.state_dir / "logs").rglob("*"):
        if path.is_file():
            assert path.stat().st_size <= 10 * MiB, f"{path} is {path.stat().st_size} bytes"
    again = tidal_server.client.post("/fn/flooder", json={})
    assert again.status_code == 200 and again.json() == first.json()  # the same instance still answers


def test_rm_removes_the_code_dir(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy_loud(tidal_server, write_module, "doomed")
    assert tidal_server.client.post("/fn/doomed", json={}).status_code == 200
    code = code_dir(tidal_server, "doomed")
    assert code.is_dir()

    removed = tidal_server.cli("rm", "doomed")
    assert removed.returncode == 0, removed.stderr
    wait_for(lambda: not code.exists(), 30, f"{code} to be removed")


def test_rm_keeps_a_code_dir_another_function_uses(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(TWINS, "twins.py")).returncode == 0
    shared = code_dir(tidal_server, "twin_a")
    assert code_dir(tidal_server, "twin_b") == shared
    assert tidal_server.client.post("/fn/twin_a", json={}).json() == "a"

    assert tidal_server.cli("rm", "twin_a").returncode == 0
    deploy_loud(tidal_server, write_module, "probe")  # removed after twin_a: its removal runs later
    probe = code_dir(tidal_server, "probe")
    assert tidal_server.cli("rm", "probe").returncode == 0
    wait_for(lambda: not probe.exists(), 30, "the probe's code dir to be removed")

    assert shared.is_dir()
    assert tidal_server.client.post("/fn/twin_b", json={}).json() == "b"


def test_state_files_are_private_and_the_state_dir_only_passable(
    fresh_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    state = fresh_server.state_dir
    (state / "logs" / "instances").mkdir(parents=True)
    (state / "logs" / "instances" / "old.log").write_text("from an earlier release")
    sqlite3.connect(state / "tidal.db").close()
    earlier = [state, state / "logs", state / "logs" / "instances"]
    earlier += [state / "logs" / "instances" / "old.log", state / "tidal.db"]
    for path in earlier:
        path.chmod(0o644 if path.is_file() else 0o755)  # as an earlier release left them
    fresh_server.start()
    deploy_loud(fresh_server, write_module, "perms")
    assert fresh_server.client.post("/fn/perms", json={"print_mb": 0}).status_code == 200

    assert mode(state) == "0o711"
    assert mode(state / "code") == "0o711"
    for name in ("tidal.db", "tidal.db-wal", "tidal.db-shm", "admin.key", "gateway.lock"):
        assert mode(state / name) == "0o600", name
    folders = [state / "logs", *(path for path in (state / "logs").rglob("*") if path.is_dir())]
    assert {folder.name for folder in folders} >= {"logs", "instances", "templates"}
    assert {mode(folder) for folder in folders} == {"0o700"}
    files = [path for path in (state / "logs").rglob("*") if path.is_file()]
    assert len(files) >= 2  # the old one and the new instance's
    assert {mode(path) for path in files} == {"0o600"}


def test_a_bad_retention_is_refused_before_the_gateway_starts(tmp_path: Path) -> None:
    result = subprocess.run(
        [TIDAL, "up", "--state-dir", str(tmp_path / "state"), "--activation-retention", "a week"],
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "--activation-retention takes a duration like 2s, 500ms, 5m or 1h, not 'a week'" in result.stderr
    assert not (tmp_path / "state").exists()


def test_retention_runs_as_a_supervised_loop(tidal_server: TidalServer) -> None:
    loops = {loop["name"]: loop for loop in tidal_server.client.get("/v1/loops").json()["loops"]}
    assert loops["retention"]["running"] and loops["retention"]["last_error"] == ""


def test_a_start_removes_code_dirs_nothing_uses(fresh_server: TidalServer) -> None:
    leftover = fresh_server.state_dir / "code" / ("ab" * 32)  # from a deploy that failed, say
    leftover.mkdir(parents=True)
    (leftover / "main.py").write_text("print('orphan')")
    fresh_server.start()
    wait_for(lambda: not leftover.exists(), 15, "the unused code dir to be removed")
