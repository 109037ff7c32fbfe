"""A gateway stores activation records through its journal folder process: killed with SIGKILL
while requests are answered, the folder is started again and every answered request keeps its
record, readable at once through the admin API."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import TidalServer
from paths import EXAMPLES

FOLDER = "tidal.metering.folder"


def folder_pids(gateway_pid: int) -> set[int]:
    """The gateway's children running the journal folder."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if parent == gateway_pid and FOLDER in command:
            found.add(int(entry.name))
    return found


def wait_for_folder(gateway_pid: int, not_pid: int | None = None, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = folder_pids(gateway_pid) - {not_pid}
        if pids:
            return pids.pop()
        time.sleep(0.05)
    raise AssertionError(f"no journal folder process under the gateway (pid {gateway_pid})")


def test_a_killed_folder_is_restarted_and_no_record_is_lost(fresh_server: TidalServer) -> None:
    server = fresh_server.start()
    assert server.process is not None
    assert server.deploy(EXAMPLES / "echo.py").returncode == 0
    answered = []

    def call(count: int) -> None:
        for number in range(count):
            answer = server.client.post("/fn/echo", json={"n": number})
            assert answer.status_code == 200
            answered.append(answer.headers["x-tidal-activation"])

    first = wait_for_folder(server.process.pid)
    call(30)
    os.kill(first, signal.SIGKILL)
    call(30)  # answered while no folder runs: journaled, folded by the gateway itself
    second = wait_for_folder(server.process.pid, not_pid=first)  # started again by the supervisor
    call(30)
    listed = server.client.get("/v1/functions/echo/activations", params={"limit": 1000})
    assert listed.status_code == 200
    stored = {item["id"] for item in listed.json()["activations"]}
    assert set(answered) <= stored, f"{len(set(answered) - stored)} answered requests have no record"
    assert second != first
    loops = server.client.get("/v1/loops").json()
    folder_loop = next(loop for loop in loops["loops"] if loop["name"] == "journal-folder")
    assert folder_loop["restarts"] >= 1
