"""GPU instances as a user sees them, on a real gateway with two fake GPUs (TIDAL_FAKE_GPUS=2):
deploy with the CLI, invoke over HTTP, read `tidal status` and GET /v1/functions/NAME."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import TidalServer, wait_for

WHOLE = """
import os
import time

import tidal


@tidal.function(name="pair", gpu=1, min_instances=3, max_instances=3, concurrency=1)
def pair(payload):
    time.sleep(0.5)  # hold the instance's only slot: the concurrent call goes to the other one
    return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}


@tidal.function(name="too_big", gpu=4)
def too_big(payload):
    return "never"
"""

SHARED = """
import os
import time

import tidal


@tidal.function(name="half", gpu=0.5, min_instances=2, max_instances=2, concurrency=1)
def half(payload):
    time.sleep(0.5)
    return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}


@tidal.function(name="cpu_only")
def cpu_only(payload):
    return {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "nvidia": os.environ.get("NVIDIA_VISIBLE_DEVICES")}
"""

NAIVE = """
import os

import torch

import tidal


@tidal.function(name="naive", gpu=1, load_once=True)
class Naive:
    def setup(self):
        # What `model.to("cuda" if torch.cuda.is_available() else "cpu")` leaves behind on a GPU host.
        torch.cuda.is_initialized = lambda: True

    def __call__(self, payload):
        return {"pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}
"""


@pytest.fixture
def gpu_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TidalServer]:
    monkeypatch.setenv("TIDAL_FAKE_GPUS", "2")  # the gateway (and the CLI) inherit it
    server = TidalServer(tmp_path / "state").start()
    yield server
    server.stop()


def describe(server: TidalServer, name: str) -> dict[str, Any]:
    response = server.client.get(f"/v1/functions/{name}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def both(server: TidalServer, name: str) -> list[dict[str, Any]]:
    """Two concurrent calls: with concurrency 1 each lands on its own instance."""
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: server.client.post(f"/fn/{name}", json={}), range(2)))
    assert [response.status_code for response in responses] == [200, 200], [r.text for r in responses]
    return [response.json() for response in responses]


def test_gpu_functions_get_their_own_gpus_or_say_why_not(gpu_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deployed = gpu_server.deploy(write_module(WHOLE, "whole.py"))
    assert deployed.returncode == 0, deployed.stderr

    # A count no host GPU set can meet: the request gets the reason, not a silent wait.
    refused = gpu_server.client.post("/fn/too_big", json={})
    assert refused.status_code == 502
    assert "gpu=4 asks for 4 GPUs; this host has 2" in refused.text

    # Three instances of gpu=1 wanted, two GPUs: two run, the third stays pending with the reason.
    def two_up_and_one_refused() -> bool:
        counts = describe(gpu_server, "pair")["instances"]
        return counts["ready"] == 2 and "0 of 2 are free" in (counts["start_error"] or "")

    wait_for(two_up_and_one_refused, 60, "two pair instances and a refused third")
    info = describe(gpu_server, "pair")
    assert info["instances"]["start_error"].startswith(
        "GpuUnavailable: gpu=1 needs 1 free GPU; 0 of 2 are free: GPU 0 is held by pair-00001-"
    )
    assert sorted(instance["gpus"] for instance in info["instances"]["list"]) == [[0], [1]]
    assert [gpu["held_by"] != {} for gpu in info["gpus"]["gpus"]] == [True, True]
    assert info["spec"]["gpu"] == 1
    assert sorted(answer["cuda"] for answer in both(gpu_server, "pair")) == ["0", "1"]

    status = gpu_server.cli("status", "pair")
    assert status.returncode == 0, status.stderr
    assert "last start failed: GpuUnavailable: gpu=1 needs 1 free GPU" in status.stdout
    assert "host gpus: 2 (fake)" in status.stdout
    assert "GPU 0 (gpu=1), memory not reported" in status.stdout  # fake GPUs have no driver to ask

    # Removed, its GPUs come back; shares of one GPU pack onto it, gpu=0 sees no GPU.
    assert gpu_server.cli("rm", "pair").returncode == 0
    wait_for(lambda: all(not gpu["held_by"] for gpu in describe(gpu_server, "too_big")["gpus"]["gpus"]), 30,
             "pair's GPUs to be given back")  # fmt: skip
    assert gpu_server.deploy(write_module(SHARED, "shared.py")).returncode == 0
    wait_for(lambda: describe(gpu_server, "half")["instances"]["ready"] == 2, 60, "two half instances")
    assert [answer["cuda"] for answer in both(gpu_server, "half")] == ["0", "0"]
    (gpu_0, gpu_1) = describe(gpu_server, "half")["gpus"]["gpus"]
    assert sorted(gpu_0["held_by"].values()) == [0.5, 0.5] and gpu_1["held_by"] == {}
    assert gpu_server.client.post("/fn/cpu_only", json={}).json() == {"cuda": "", "nvidia": ""}


def test_a_template_that_initialised_cuda_falls_back_to_spawn_and_says_why(
    gpu_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    assert gpu_server.deploy(write_module(NAIVE, "naive.py")).returncode == 0
    started = time.monotonic()
    answer = gpu_server.client.post("/fn/naive", json={})
    assert answer.status_code == 200, answer.text  # it still answers: a fresh process
    assert answer.json()["cuda"] == "0" and time.monotonic() - started < 120
    info = describe(gpu_server, "naive")
    (instance,) = info["instances"]["list"]
    assert instance["extra"]["started_via"] == "spawn" and instance["gpus"] == [0]
    assert info["template"]["state"] == "failed" and info["template"]["lasting"] is True
    assert "initialised CUDA during import or setup()" in info["template"]["error"]
    status = gpu_server.cli("status", "naive")
    assert (
        "template: failed (until the code changes), instances start as fresh processes: CudaInitialized:"
        in (status.stdout.replace("\n", " "))
    )
