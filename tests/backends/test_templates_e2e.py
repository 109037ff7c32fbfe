"""Cold starts forked from templates, seen as a user sees them: deploy with the CLI, invoke over HTTP."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import TidalServer

TINY = """
import os

import tidal


@tidal.function(name="{name}", concurrency=4)
def tiny(payload):
    return {{"pid": os.getpid(), "ppid": os.getppid(), "payload": payload}}
"""

STUBBORN = """
import os

if os.environ.get("TIDAL_TEMPLATE") == "1":
    raise RuntimeError("this module refuses to load in a template")

import tidal


@tidal.function(name="stubborn_e2e")
def stubborn(payload):
    return {"pid": os.getpid(), "ppid": os.getppid()}
"""

TORCH_ONCE = """
import os

import torch

import tidal


@tidal.function(name="torch_once_e2e", load_once=True, cpu=2, concurrency=2)
class TorchOnce:
    def setup(self):
        self.weights = torch.randn(512, 512) @ torch.randn(512, 512)  # runs in the template
        self.loaded_in = os.getpid()

    def __call__(self, payload):
        value = float((torch.randn(512, 512) @ self.weights).abs().sum())
        return {"value": value, "loaded_in": self.loaded_in, "ppid": os.getppid(),
                "threads": torch.get_num_threads()}
"""

RANDOM_DRAW = """
import os
import time

import numpy as np
import torch

import tidal

np.random.random()  # the template touches both generators before it forks
torch.rand(1)


@tidal.function(name="random_draw_e2e", concurrency=1, min_instances=2, max_instances=2)
def draw(payload):
    time.sleep(0.5)  # hold the instance's only slot, so the second concurrent call goes to the other
    return {"pid": os.getpid(), "ppid": os.getppid(),
            "numpy": float(np.random.random()), "torch": float(torch.rand(1))}
"""


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def instances(server: TidalServer, name: str) -> list[dict[str, object]]:
    return server.client.get(f"/v1/functions/{name}").json()["instances"]["list"]  # type: ignore[no-any-return]


def invoke(server: TidalServer, name: str, payload: object = None, timeout: float = 60) -> dict[str, object]:
    try:
        response = server.client.post(f"/fn/{name}", json=payload, timeout=timeout)
    except httpx.TimeoutException:
        pytest.fail(f"{name} did not answer within {timeout} s (a fork deadlock?)")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for(condition, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_cold_start_is_a_fork_of_the_template(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    path = write_module(TINY.format(name="tiny_fork"), "tiny.py")
    assert tidal_server.deploy(path).returncode == 0
    answer = invoke(tidal_server, "tiny_fork", {"a": 1})
    assert answer["payload"] == {"a": 1}
    assert "tidal.runtime.template" in command_line(int(answer["ppid"]))  # type: ignore[call-overload]
    (listed,) = instances(tidal_server, "tiny_fork")
    assert listed["pid"] == answer["pid"]
    extra = listed["extra"]
    assert isinstance(extra, dict)
    assert extra["started_via"] == "template" and extra["template_pid"] == str(answer["ppid"])
    assert float(extra["fork_ms"]) >= 0


def test_a_killed_template_is_rebuilt_while_its_instances_serve_on(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    path = write_module(TINY.format(name="tiny_rebuilt"), "tiny.py")
    assert tidal_server.deploy(path).returncode == 0
    first = invoke(tidal_server, "tiny_rebuilt")
    template_pid = int(first["ppid"])  # type: ignore[call-overload]
    os.kill(template_pid, signal.SIGKILL)
    time.sleep(0.3)
    assert invoke(tidal_server, "tiny_rebuilt")["pid"] == first["pid"]  # the orphan keeps serving

    os.kill(int(first["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    wait_for(lambda: not instances(tidal_server, "tiny_rebuilt"))
    second = invoke(tidal_server, "tiny_rebuilt")  # a cold start: forked from a new template
    assert second["pid"] != first["pid"] and second["ppid"] != template_pid
    assert "tidal.runtime.template" in command_line(int(second["ppid"]))  # type: ignore[call-overload]


def test_a_module_that_fails_in_the_template_is_spawned(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(STUBBORN, "stubborn.py")).returncode == 0
    answer = invoke(tidal_server, "stubborn_e2e")
    assert tidal_server.process is not None and answer["ppid"] == tidal_server.process.pid
    (listed,) = instances(tidal_server, "stubborn_e2e")
    assert listed["extra"]["started_via"] == "spawn"  # type: ignore[index]


def test_torch_loaded_once_forks_without_deadlock(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(TORCH_ONCE, "torch_once.py")).returncode == 0
    answer = invoke(tidal_server, "torch_once_e2e", {}, timeout=60)
    assert answer["loaded_in"] == answer["ppid"]  # the model was loaded in the template
    assert answer["threads"] == 2 and float(answer["value"]) > 0  # type: ignore[arg-type]
    assert invoke(tidal_server, "torch_once_e2e", {}, timeout=60)["value"] != 0


def test_forked_siblings_draw_different_random_numbers(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(RANDOM_DRAW, "random_draw.py")).returncode == 0
    # Two warm siblings first: waiting for the autoscaler's second start under load made this flaky.
    wait_for(lambda: len(instances(tidal_server, "random_draw_e2e")) == 2, timeout_s=90)
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: invoke(tidal_server, "random_draw_e2e", {}), range(2))
    assert first["pid"] != second["pid"] and first["ppid"] == second["ppid"]  # siblings of one template
    assert first["numpy"] != second["numpy"]
    assert first["torch"] != second["torch"]


def test_templates_off_by_environment(fresh_server: TidalServer, write_module, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TIDAL_TEMPLATES", "0")
    fresh_server.start()
    assert fresh_server.deploy(write_module(TINY.format(name="tiny_spawned"), "tiny.py")).returncode == 0
    answer = invoke(fresh_server, "tiny_spawned")
    assert fresh_server.process is not None and answer["ppid"] == fresh_server.process.pid
    (listed,) = instances(fresh_server, "tiny_spawned")
    assert listed["extra"]["started_via"] == "spawn"  # type: ignore[index]


def test_nothing_outlives_a_killed_gateway(fresh_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    fresh_server.start()
    assert fresh_server.deploy(write_module(TINY.format(name="tiny_orphaned"), "tiny.py")).returncode == 0
    answer = invoke(fresh_server, "tiny_orphaned")
    instance, template = int(answer["pid"]), int(answer["ppid"])  # type: ignore[call-overload]
    assert fresh_server.process is not None
    fresh_server.process.kill()  # no shutdown: the template dies with it, the instance with its connection
    fresh_server.process.wait()

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    wait_for(lambda: gone(template) and gone(instance))


def test_ctrl_c_stops_everything_in_order(tmp_path: Path, write_module) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C in the terminal of `tidal up` signals its whole process group: only the gateway may get it."""
    server = TidalServer(tmp_path / "state")
    server.start_new_session = True
    try:
        server.start()
        assert server.deploy(write_module(TINY.format(name="tiny_interrupted"), "tiny.py")).returncode == 0
        answer = invoke(server, "tiny_interrupted")
        instance, template = int(answer["pid"]), int(answer["ppid"])  # type: ignore[call-overload]
        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert server.process.wait(30) in (0, 130)  # uvicorn exits 128 + SIGINT after a clean shutdown
    finally:
        server.stop()
    log = server.log()
    assert "replacing it" not in log and "Traceback" not in log, log
    wait_for(lambda: process_gone(template) and process_gone(instance))


def process_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
