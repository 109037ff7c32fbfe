"""Finding the host's GPUs: nvidia-smi's output parsed, TIDAL_FAKE_GPUS, and the none case."""

from __future__ import annotations

import pytest

from tidal.backends import gpus
from tidal.backends.gpus import Gpu, GpuHost, GpuInventory, discover, parse_compute_apps, parse_gpus

# Captured from an 8-GPU H100 host and a 1-GPU H200 (trimmed), as nvidia-smi prints them.
H100_SMI = """\
0, GPU-5b0c7d2e-1f0a-4c8e-9a55-0e1d2c3b4a59, NVIDIA H100 80GB HBM3, 81559, 1
1, GPU-8d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6, NVIDIA H100 80GB HBM3, 81559, 71234
"""
H200_SMI = "0, GPU-0f9e8d7c-6b5a-4938-2716-a5b4c3d2e1f0, NVIDIA H200, 143771, 0\n"


def test_nvidia_smi_gpus_are_parsed() -> None:
    assert parse_gpus(H100_SMI) == [
        Gpu(0, "GPU-5b0c7d2e-1f0a-4c8e-9a55-0e1d2c3b4a59", "NVIDIA H100 80GB HBM3", 81559, 1),
        Gpu(1, "GPU-8d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6", "NVIDIA H100 80GB HBM3", 81559, 71234),
    ]
    (h200,) = parse_gpus(H200_SMI)
    assert (h200.index, h200.name, h200.memory_total_mb) == (0, "NVIDIA H200", 143771)


def test_odd_lines_are_survived() -> None:
    output = (
        "No devices were found\n"
        "0, GPU-a, Tesla T4, [N/A], [N/A]\n"  # MIG or a driver that hides memory
        "1, GPU-b, Quadro RTX 8000, Ti, 46080, 10\n"  # a name holding a comma
        "\n"
    )
    assert parse_gpus(output) == [
        Gpu(0, "GPU-a", "Tesla T4", None, None),
        Gpu(1, "GPU-b", "Quadro RTX 8000, Ti", 46080, 10),
    ]
    assert parse_gpus("") == []


def test_per_process_memory_is_summed_over_gpus() -> None:
    output = "4242, 1210\n4242, 500\n77, [N/A]\nnonsense\n9, 3\n"
    assert parse_compute_apps(output) == {4242: 1710, 9: 3}
    assert parse_compute_apps("") == {}


def test_fake_gpus_come_from_the_environment() -> None:
    inventory = discover({"TIDAL_FAKE_GPUS": "2"})
    assert inventory.source == "fake" and inventory.indices == [0, 1]
    assert all(gpu.memory_total_mb == 80 * 1024 for gpu in inventory.gpus)
    assert inventory.describe().startswith("gpus: 2 (fake): GPU 0 fake GPU")
    assert discover({"TIDAL_FAKE_GPUS": "0"}).indices == []
    bad = discover({"TIDAL_FAKE_GPUS": "two"})
    assert bad.indices == [] and "TIDAL_FAKE_GPUS='two'" in bad.describe()


def test_no_driver_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_nvml", lambda: None)
    monkeypatch.setattr(gpus.shutil, "which", lambda name: None)
    inventory = discover({})
    assert (inventory.indices, inventory.source) == ([], "none")
    assert inventory.describe() == "gpus: none (no NVIDIA driver found)"


def test_nvidia_smi_is_asked_when_nvml_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus, "_nvml", lambda: None)
    asked: list[list[str]] = []

    def smi(arguments: list[str]) -> str:
        asked.append(arguments)
        return H100_SMI if arguments == gpus.GPU_QUERY else "31337, 2048\n"

    monkeypatch.setattr(gpus, "_run_smi", smi)
    inventory = discover({})
    assert (inventory.source, inventory.indices) == ("nvidia-smi", [0, 1])
    usage = gpus.read_usage(inventory)
    assert usage.by_pid == {31337: 2048} and usage.by_gpu == {0: 1, 1: 71234}


def test_the_host_hands_out_visible_devices_and_takes_them_back() -> None:
    host = GpuHost(GpuInventory(tuple(gpus.fake_gpus(2)), "fake"))
    assert host.claim("a", 1) == "0" and host.claim("b", 1) == "1"
    assert host.claim("c", 0) == ""  # gpu=0 on a GPU host: no GPU at all
    assert host.template_env(gpu=False) == {
        "CUDA_VISIBLE_DEVICES": "",
        "NVIDIA_VISIBLE_DEVICES": "",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # CUDA's indices are then nvidia-smi's
    }
    assert host.template_env(gpu=True) == {}
    described = host.describe()
    assert [item["held_by"] for item in described["gpus"]] == [{"a": 1.0}, {"b": 1.0}]
    host.release("a")
    assert host.claim("d", 0.5) == "0"
    bare = GpuHost(GpuInventory((), "none", "no NVIDIA driver found"))
    assert bare.claim("e", 0) is None  # no GPUs here: the environment is left alone
    assert bare.template_env(gpu=False) == {}
