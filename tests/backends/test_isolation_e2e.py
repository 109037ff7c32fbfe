"""Function code cannot touch the platform, and its limits hold: tried as a hostile user would,
through a real gateway running as root (the sandbox's `users` mode: what CI runs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from conftest import TidalServer

HOSTILE = """
import getpass
import os
import signal

import tidal

def attempt(action):
    try:
        return {"ok": action()}
    except Exception as exc:
        return {"error": type(exc).__name__}

@tidal.function(name="snoop", env={"MY_SETTING": "given by the spec"})
def snoop(payload):
    return {
        "admin_key": attempt(lambda: open(payload["admin_key"]).read()),
        "database": attempt(lambda: open(payload["database"], "rb").read(16).hex()),
        "state_dir": attempt(lambda: os.listdir(payload["state_dir"])),
        "other_code": attempt(lambda: os.listdir(payload["other_code"])),
        "signal_gateway": attempt(lambda: os.kill(payload["gateway_pid"], 0)),
        "write_own_code": attempt(lambda: open("hacked.py", "w").write("x")),
        "scratch": attempt(lambda: open("/tmp/scratch.txt", "w").write("fine")),
        "secret_env": os.environ.get("GATEWAY_SECRET"),
        "api_key_env": os.environ.get("TIDAL_API_KEY"),
        "spec_env": os.environ.get("MY_SETTING"),
        "uid": os.getuid(),
        # Its uid has no passwd entry: libraries that ask who runs them (torch's caches) need USER.
        "user": attempt(getpass.getuser),
    }
"""

NEIGHBOUR = """
import tidal

@tidal.function(name="neighbour")
def neighbour(payload):
    return {"alive": True}
"""


def test_a_function_cannot_read_keys_state_or_other_code(
    fresh_server: TidalServer, write_module, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GATEWAY_SECRET", "s3cr3t")
    monkeypatch.setenv("TIDAL_API_KEY", "tidal_leaked_key")
    server = fresh_server.start()
    assert server.deploy(write_module(NEIGHBOUR, "neighbour.py")).returncode == 0
    assert server.deploy(write_module(HOSTILE, "snoop.py")).returncode == 0
    state = server.state_dir.resolve()
    other_code = next(folder for folder in (state / "code").iterdir() if (folder / "neighbour.py").exists())
    payload = {
        "admin_key": str(state / "admin.key"),
        "database": str(state / "tidal.db"),
        "state_dir": str(state),
        "other_code": str(other_code),
        "gateway_pid": server.process.pid,  # type: ignore[union-attr]
    }
    seen = server.client.post("/fn/snoop", json=payload).json()
    assert seen["admin_key"] == {"error": "FileNotFoundError"}
    assert seen["database"] == {"error": "FileNotFoundError"}
    assert "ok" not in seen["state_dir"] or seen["state_dir"]["ok"] == ["code"], seen["state_dir"]
    assert seen["other_code"] == {"error": "FileNotFoundError"}
    assert seen["signal_gateway"] == {"error": "PermissionError"}
    assert "error" in seen["write_own_code"], "its code is read-only"
    assert seen["scratch"] == {"ok": 4}, "it has scratch space of its own"
    assert seen["secret_env"] is None and seen["api_key_env"] is None, "the gateway's environment stays out"
    assert seen["spec_env"] == "given by the spec"
    assert seen["uid"] not in (0, os.getuid())
    assert seen["user"] == {"ok": "tidal-fn"}
    status = server.cli("status", "snoop")
    assert "sandbox: users" in status.stdout and "limits: cgroup v1" in status.stdout, status.stdout


MEMORY_HOG = """
import tidal

@tidal.function(name="hog", memory=128)
def hog(payload):
    blocks = [bytearray(1024 * 1024) for _ in range(payload["mb"])]  # touched: really resident
    return {"held_mb": len(blocks)}
"""


def test_a_function_past_its_memory_is_killed_with_a_clear_error(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(MEMORY_HOG, "hog.py")).returncode == 0
    assert tidal_server.deploy(write_module(NEIGHBOUR, "neighbour.py")).returncode == 0
    assert tidal_server.client.post("/fn/hog", json={"mb": 16}).json() == {"held_mb": 16}
    answer = tidal_server.client.post("/fn/hog", json={"mb": 600})
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["type"] == "OutOfMemory"
    assert "memory limit of 128 MiB" in error["message"]
    record = tidal_server.client.get(f"/v1/activations/{error['activation']}").json()
    assert record["status"] == "oom"
    assert tidal_server.client.post("/fn/neighbour", json={}).json() == {"alive": True}
    assert tidal_server.client.post("/fn/hog", json={"mb": 16}).status_code == 200, "a new instance serves"


DETACHER = """
import subprocess

import tidal

@tidal.function(name="detacher")
def detacher(payload):
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    return {"pid": child.pid}
"""


def test_nothing_a_function_forked_survives_its_removal(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(DETACHER, "detacher.py")).returncode == 0
    pid = tidal_server.client.post("/fn/detacher", json={}).json()["pid"]
    # The pid is the child's in the host's view too (no pid namespace): find it by its command.
    sleepers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p) == "sleep 600"]
    assert sleepers, "the detached child runs"
    assert tidal_server.cli("rm", "detacher").returncode == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in sleepers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in sleepers), f"a setsid child ({pid}) outlived `tidal rm`"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _alive(proc: Path) -> bool:
    try:
        return (proc / "stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


BURNER = """
import os
import resource
import threading
import time

import tidal

@tidal.function(name="burner", cpu=0.5, timeout=30)
def burner(payload):
    end = time.monotonic() + payload["seconds"]

    def spin():
        while time.monotonic() < end:
            pass

    threads = [threading.Thread(target=spin) for _ in range(4)]
    started, cpu_started = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall": time.monotonic() - started, "cpu": resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu_started}

# Memory enough that the pids limit (512) is what stops it: each child dirties about 1 MiB of
# copy-on-write pages, and 512 of them under the default 512 MiB limit made it an OOM race instead.
@tidal.function(name="forker", timeout=30, memory=2048)
def forker(payload):
    children = 0
    try:
        while children < 5000:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
    except OSError as exc:
        return {"children": children, "error": exc.errno}
    return {"children": children, "error": None}
"""


def test_cpu_is_capped_and_a_fork_bomb_is_contained(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(BURNER, "burner.py")).returncode == 0
    used = tidal_server.client.post("/fn/burner", json={"seconds": 2.0}).json()
    # Four busy threads for 2 s would use 4 (or, on 2 cores, 2) CPU-seconds; the quota allows 0.5 per second.
    assert used["cpu"] <= 0.5 * used["wall"] * 1.5 + 0.1, used
    bomb = tidal_server.client.post("/fn/forker", json={}).json()
    assert bomb["error"] == 11 and bomb["children"] < 512, bomb  # EAGAIN at the pids limit
    assert httpx.get(f"{tidal_server.url}/healthz").status_code == 200
    assert tidal_server.cli("rm", "forker").returncode == 0


SLOW_HOG = """
import time

import tidal

@tidal.function(name="slow_hog", memory=128)
def slow_hog(payload):
    blocks = [bytearray(1024 * 1024) for _ in range(payload["mb"])]
    time.sleep(payload.get("hold", 0))  # the watchdog samples: a spike must last to be seen
    return {"held_mb": len(blocks)}
"""


def test_without_control_groups_an_rss_watchdog_limits_memory(
    fresh_server: TidalServer, write_module, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TIDAL_CGROUPS", "0")  # as on a host (or for a user) with no writable cgroups
    server = fresh_server.start()
    assert server.deploy(write_module(SLOW_HOG, "slow_hog.py")).returncode == 0
    assert server.client.post("/fn/slow_hog", json={"mb": 16}).json() == {"held_mb": 16}
    answer = server.client.post("/fn/slow_hog", json={"mb": 300, "hold": 3})
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["type"] == "OutOfMemory"
    assert "memory limit of 128 MiB" in answer.json()["error"]["message"]
    assert server.client.post("/fn/slow_hog", json={"mb": 16}).status_code == 200
    assert "RSS watchdog" in server.cli("status", "slow_hog").stdout
