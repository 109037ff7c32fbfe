"""What `tidal status` prints about GPUs and a refused template (pure functions of the API's answer)."""

from __future__ import annotations

from typing import Any

from tidal.cli import gpu_lines, template_line


def info(gpu: float, host_gpus: list[dict[str, Any]], instances: list[dict[str, Any]]) -> dict[str, Any]:
    summary = (
        f"gpus: {len(host_gpus)} (nvidia-smi): ..." if host_gpus else "gpus: none (no NVIDIA driver found)"
    )
    return {
        "spec": {"gpu": gpu},
        "instances": {"list": instances},
        "gpus": {"summary": summary, "gpus": host_gpus},
    }


def test_a_cpu_function_on_a_host_without_gpus_prints_nothing() -> None:
    assert gpu_lines(info(0, [], [])) == []


def test_gpu_lines_show_the_host_and_each_instance() -> None:
    host = [{"index": 0, "memory_used_mb": 5120, "held_by": {"embed-00001-aa": 0.5, "embed-00001-bb": 0.5}}]
    instances = [
        {"id": "embed-00001-aa", "gpus": [0], "gpu_memory_mb": 2050},
        {"id": "embed-00001-bb", "gpus": [0], "gpu_memory_mb": None},
    ]
    assert gpu_lines(info(0.5, host, instances)) == [
        "host gpus: 1 (nvidia-smi): ...",
        "  GPU 0, 5120 MiB used; held by embed-00001-aa (0.5), embed-00001-bb (0.5)",
        "  instance embed-00001-aa: GPU 0 (gpu=0.5), 2050 MiB GPU memory",
        "  instance embed-00001-bb: GPU 0 (gpu=0.5), memory not reported",
    ]


def test_a_gpu_function_on_a_host_without_gpus_says_so() -> None:
    assert gpu_lines(info(1, [], [])) == ["host gpus: none (no NVIDIA driver found)"]


def test_a_refused_template_says_why_and_for_how_long() -> None:
    line = template_line({"state": "failed", "lasting": True, "error": "CudaInitialized: the template ..."})
    assert line == (
        "template: failed (until the code changes), instances start as fresh processes: "
        "CudaInitialized: the template ..."
    )
    assert "(for now)" in template_line({"state": "failed", "lasting": False, "error": "ImportError: x"})
