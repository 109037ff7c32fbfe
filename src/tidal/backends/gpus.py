"""The host's GPUs: what they are and how much memory each process holds on them.

Read once at gateway start (GPUs do not come and go while it runs) from, in order:

1. ``TIDAL_FAKE_GPUS=N``: N fake GPUs of 80 GiB, for tests and demos on a machine without any.
   Placement, ``CUDA_VISIBLE_DEVICES`` and status behave as on a real host; nothing runs on them.
2. NVML, when the ``pynvml`` module (PyPI ``nvidia-ml-py``) imports and the driver answers.
3. ``nvidia-smi --query-gpu=...`` when it is on PATH.
4. Otherwise none: functions with ``gpu > 0`` cannot start here, and say so.

Parsing is pure (``parse_gpus``, ``parse_compute_apps``); the readers around it own the I/O and
never raise: a driver that fails to answer is reported as "no GPUs", with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from tidal.backends.gpu_placement import GpuAllocator, visible_devices
from tidal.runtime.worker import gpu_env

FAKE_GPUS_ENV = "TIDAL_FAKE_GPUS"
FAKE_MEMORY_MB = 80 * 1024
SMI_TIMEOUT_S = 5.0
GPU_QUERY = ["--query-gpu=index,uuid,name,memory.total,memory.used", "--format=csv,noheader,nounits"]
T = TypeVar("T")
APPS_QUERY = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total_mb: int | None
    memory_used_mb: int | None  # at discovery (status reads it again)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuInventory:
    """The host's GPUs and where that knowledge came from: "fake", "nvml", "nvidia-smi" or "none"."""

    gpus: tuple[Gpu, ...]
    source: str
    note: str = ""  # why there are none, when a driver was there but failed

    @property
    def indices(self) -> list[int]:
        return [gpu.index for gpu in self.gpus]

    def describe(self) -> str:
        """One line for the start banner and `tidal status`.

        >>> GpuInventory((Gpu(0, "u", "NVIDIA H200", 143771, 0),), "nvidia-smi").describe()
        'gpus: 1 (nvidia-smi): GPU 0 NVIDIA H200 140 GiB'
        """
        if not self.gpus:
            return "gpus: none" + (f" ({self.note})" if self.note else "")
        shown = ", ".join(f"GPU {gpu.index} {gpu.name} {_gib(gpu.memory_total_mb)}" for gpu in self.gpus)
        return f"gpus: {len(self.gpus)} ({self.source}): {shown}"


def _gib(mb: int | None) -> str:
    return "memory unknown" if mb is None else f"{mb / 1024:.0f} GiB"


def _number(text: str) -> int | None:
    """A whole number of MiB from nvidia-smi, None for ``[N/A]`` and the like."""
    try:
        return int(float(text.strip()))
    except ValueError:
        return None


def parse_gpus(output: str) -> list[Gpu]:
    """The GPUs in ``nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used
    --format=csv,noheader,nounits`` output; lines it cannot read are skipped.

    >>> parse_gpus("0, GPU-1a2b, NVIDIA H100 80GB HBM3, 81559, 1\\n")
    [Gpu(index=0, uuid='GPU-1a2b', name='NVIDIA H100 80GB HBM3', memory_total_mb=81559, memory_used_mb=1)]
    """
    found = []
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        name = ", ".join(fields[2:-2])  # a name holding a comma is rejoined
        found.append(Gpu(int(fields[0]), fields[1], name, _number(fields[-2]), _number(fields[-1])))
    return found


def parse_compute_apps(output: str) -> dict[int, int]:
    """MiB of GPU memory per pid in ``nvidia-smi --query-compute-apps=pid,used_memory
    --format=csv,noheader,nounits`` output (summed over GPUs; unknown amounts are skipped).

    >>> parse_compute_apps("4242, 1210\\n4242, 500\\n77, [N/A]\\n")
    {4242: 1710}
    """
    used: dict[int, int] = {}
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not fields[0].isdigit():
            continue
        amount = _number(fields[1])
        if amount is not None:
            used[int(fields[0])] = used.get(int(fields[0]), 0) + amount
    return used


def fake_gpus(count: int) -> list[Gpu]:
    return [Gpu(i, f"GPU-fake-{i}", "fake GPU (TIDAL_FAKE_GPUS)", FAKE_MEMORY_MB, 0) for i in range(count)]


def _run_smi(arguments: list[str]) -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, *arguments], capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml() -> Any | None:
    """The initialised pynvml module, or None (not installed, or no driver to talk to)."""
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]

        pynvml.nvmlInit()
    except Exception:  # ImportError, NVMLError (no driver), OSError (no libnvidia-ml)
        return None
    return pynvml


def _nvml_gpus(nvml: Any) -> list[Gpu]:
    found = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        found.append(
            Gpu(
                index,
                _text(nvml.nvmlDeviceGetUUID(handle)),
                _text(nvml.nvmlDeviceGetName(handle)),
                int(memory.total) >> 20,
                int(memory.used) >> 20,
            )
        )
    return found


def _nvml_apps(nvml: Any) -> dict[int, int]:
    used: dict[int, int] = {}
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            amount = getattr(process, "usedGpuMemory", None)
            if isinstance(amount, int):
                used[process.pid] = used.get(process.pid, 0) + (amount >> 20)
    return used


def fake_count(environ: Mapping[str, str]) -> int | None:
    """N from ``TIDAL_FAKE_GPUS=N`` (0..64), None when unset; a bad value raises ValueError."""
    raw = environ.get(FAKE_GPUS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) > 64:
        raise ValueError(f"{FAKE_GPUS_ENV}={raw!r}: give a number of fake GPUs, 0 to 64")
    return int(raw)


def _ask_nvml(read: Callable[[Any], T]) -> T | None:
    """``read(pynvml)`` between init and shutdown; None when NVML is missing or fails."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        return read(nvml)
    except Exception:  # NVMLError mid-way: nvidia-smi may still answer
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def discover(environ: Mapping[str, str] = os.environ) -> GpuInventory:
    """The host's GPUs (see the module's docstring for the order of sources); never raises."""
    try:
        fakes = fake_count(environ)
    except ValueError as exc:
        return GpuInventory((), "none", str(exc))
    if fakes is not None:
        return GpuInventory(tuple(fake_gpus(fakes)), "fake")
    from_nvml = _ask_nvml(_nvml_gpus)
    if from_nvml is not None:
        return GpuInventory(tuple(from_nvml), "nvml")
    output = _run_smi(GPU_QUERY)
    if output is not None:
        return GpuInventory(tuple(parse_gpus(output)), "nvidia-smi")
    note = "nvidia-smi found but it failed" if shutil.which("nvidia-smi") else "no NVIDIA driver found"
    return GpuInventory((), "none", note)


@dataclass(frozen=True)
class GpuUsage:
    """Memory in use now: per GPU index and per process id (MiB); empty where the driver does not tell."""

    by_gpu: dict[int, int]
    by_pid: dict[int, int]


def read_usage(inventory: GpuInventory) -> GpuUsage:
    """What `tidal status` shows of GPU memory (nothing for fake GPUs); never raises."""
    if inventory.source in ("fake", "none"):
        return GpuUsage({}, {})
    if inventory.source == "nvml":
        gpus = _ask_nvml(_nvml_gpus)
        apps = _ask_nvml(_nvml_apps)
        if gpus is not None and apps is not None:
            return GpuUsage(_used_by_gpu(gpus), apps)
    output = _run_smi(GPU_QUERY)
    apps_output = _run_smi(APPS_QUERY)
    return GpuUsage(_used_by_gpu(parse_gpus(output or "")), parse_compute_apps(apps_output or ""))


def _used_by_gpu(gpus: list[Gpu]) -> dict[int, int]:
    return {gpu.index: gpu.memory_used_mb for gpu in gpus if gpu.memory_used_mb is not None}


USAGE_MAX_AGE_S = 2.0  # status asks often; the driver is asked at most this often


class GpuHost:
    """This host's GPUs as the local backend uses them: which instance holds which (through the
    pure ``GpuAllocator``), what CUDA_VISIBLE_DEVICES each gets, and memory in use for status.
    """

    def __init__(self, inventory: GpuInventory | None = None) -> None:
        self.inventory = inventory if inventory is not None else discover()
        self.allocator = GpuAllocator(self.inventory.indices, self.inventory.note)
        self._usage: tuple[float, GpuUsage] | None = None

    def claim(self, instance_id: str, gpu: float) -> str | None:
        """CUDA_VISIBLE_DEVICES for a new instance asking ``gpu`` (None: leave it alone);
        GpuUnavailable, with the reason, when no GPU can host it now.
        """
        grant = self.allocator.allocate(instance_id, gpu)
        return visible_devices(grant, self.allocator.has_gpus)

    def release(self, instance_id: str) -> None:
        self.allocator.release(instance_id)

    def template_env(self, gpu: bool) -> dict[str, str]:
        """Extra environment of a template: a gpu=0 function's sees no GPU (nor will its children)."""
        if gpu or not self.allocator.has_gpus:
            return {}
        return gpu_env("")

    def usage(self, now: float) -> GpuUsage:
        """Memory in use now (cached ``USAGE_MAX_AGE_S``; ``now`` is monotonic seconds). Blocking I/O."""
        if self._usage is None or now - self._usage[0] > USAGE_MAX_AGE_S:
            self._usage = (now, read_usage(self.inventory))
        return self._usage[1]

    def describe(self, usage: GpuUsage | None = None) -> dict[str, Any]:
        """What status shows of the host's GPUs: source, one line, and each GPU with its holders."""
        holdings = self.allocator.holdings()
        used = usage.by_gpu if usage is not None else {}
        return {
            "source": self.inventory.source,
            "note": self.inventory.note,
            "summary": self.inventory.describe(),
            "gpus": [
                {
                    **gpu.as_dict(),
                    "memory_used_mb": used.get(gpu.index, gpu.memory_used_mb),
                    "held_by": holdings.get(gpu.index, {}),
                }
                for gpu in self.inventory.gpus
            ],
        }
