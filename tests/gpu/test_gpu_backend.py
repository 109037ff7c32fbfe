"""GPU instances on a LocalBackend driven directly, with fake GPUs (TIDAL_FAKE_GPUS): each instance
sees only its own GPUs, forked or spawned; setup_instance() runs once in each instance; a template
that initialised CUDA is not forked from (torch's CPU build, its CUDA state stubbed by user code).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))  # the backend tests' helpers
from backend_helpers import call, connect, make_launch, write

from tidal.backends.gpu_placement import GpuUnavailable
from tidal.backends.local import LocalBackend
from tidal.router.connection import StartFailed

VISIBLE = """
import os

import tidal

NAMES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTORCH_NVML_BASED_CUDA_CHECK")
AT_IMPORT = {name: os.environ.get(name) for name in NAMES}  # in the template, when forked


def _seen():
    return {"now": {name: os.environ.get(name) for name in NAMES}, "at_import": AT_IMPORT, "pid": os.getpid()}


@tidal.function
def visible(payload):
    return _seen()


@tidal.function
def cpu_only(payload):
    return _seen()
"""

STAGED = """
import os

import tidal


@tidal.function
class Staged:
    def setup(self):
        self.steps = [["setup", os.getpid()]]

    def setup_instance(self):
        self.steps.append(["setup_instance", os.getpid()])

    def __call__(self, payload):
        return {"steps": self.steps, "pid": os.getpid()}


@tidal.function
class Broken:
    def setup_instance(self):
        raise RuntimeError("this instance found no GPU it liked")

    def __call__(self, payload):
        return "never"
"""

# Stands in for the idiom `self.model.to("cuda" if torch.cuda.is_available() else "cpu")` on a GPU
# host: in the template, it leaves torch reporting CUDA initialised (this torch is a CPU build).
CUDA_IN_SETUP = """
import os

import torch

import tidal


@tidal.function(load_once=True)
class Naive:
    def setup(self):
        torch.cuda.is_initialized = lambda: True
        self.loaded_in = os.getpid()

    def __call__(self, payload):
        return {"pid": os.getpid(), "loaded_in": self.loaded_in, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}
"""

Backend = Callable[..., LocalBackend]


@pytest.fixture
async def backend_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Backend]:
    made: list[LocalBackend] = []

    def make(fake_gpus: int, use_templates: bool = True) -> LocalBackend:
        monkeypatch.setenv("TIDAL_FAKE_GPUS", str(fake_gpus))  # read once, when the backend is made
        backend = LocalBackend(tmp_path / "state", use_templates=use_templates)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


@pytest.mark.parametrize("templates", [True, False])
async def test_each_instance_sees_only_its_gpus(tmp_path: Path, backend_of: Backend, templates: bool) -> None:
    backend = backend_of(2, templates)
    code = write(tmp_path, "gpus", VISIBLE)
    launch = make_launch("gpus", "visible", code, gpu=1)
    first, second = await backend.start(launch, 2)
    assert [first.extra["gpus"], second.extra["gpus"]] == ["0", "1"]
    with pytest.raises(
        GpuUnavailable, match=r"^gpu=1 needs 1 free GPU; 0 of 2 are free: GPU 0 is held by visible-00001-"
    ):
        await backend.start(launch)
    seen = []
    for handle in (first, second):
        client, _ = await connect(handle)
        seen.append(await call(client))
        client.close()
    assert [answer["now"]["CUDA_VISIBLE_DEVICES"] for answer in seen] == ["0", "1"]
    assert [answer["now"]["NVIDIA_VISIBLE_DEVICES"] for answer in seen] == ["0", "1"]
    assert {answer["now"]["CUDA_DEVICE_ORDER"] for answer in seen} == {"PCI_BUS_ID"}  # nvidia-smi's indices
    assert all(
        answer["now"]["PYTORCH_NVML_BASED_CUDA_CHECK"] is None for answer in seen
    )  # the template's only
    if templates:
        assert {handle.extra["started_via"] for handle in (first, second)} == {"template"}
        # The template of a GPU function sees every GPU, and asks NVML (not CUDA) whether there is one.
        assert seen[0]["at_import"] == {"CUDA_VISIBLE_DEVICES": None, "NVIDIA_VISIBLE_DEVICES": None,
                                        "CUDA_DEVICE_ORDER": None, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}  # fmt: skip
    await backend.stop(first)
    await asyncio.wait_for(_until(lambda: not backend.gpus.allocator.holdings()[0]), 15)
    (third,) = await backend.start(launch)  # GPU 0 was given back when its instance exited
    assert third.extra["gpus"] == "0"

    cpu = make_launch("gpus", "cpu_only", code, gpu=0)
    (plain,) = await backend.start(cpu)
    assert "gpus" not in plain.extra
    client, _ = await connect(plain)
    answer = await call(client)
    client.close()
    assert answer["now"]["CUDA_VISIBLE_DEVICES"] == "" and answer["now"]["NVIDIA_VISIBLE_DEVICES"] == ""
    if templates:  # a gpu=0 function's template never sees a GPU either
        assert answer["at_import"]["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize("templates", [True, False])
async def test_a_start_waits_for_the_gpu_of_an_instance_being_stopped(
    tmp_path: Path, backend_of: Backend, templates: bool
) -> None:
    """A scale-down to zero and then a request: the new instance gets the GPU as soon as the old
    one has exited, instead of failing with GpuUnavailable (and putting the function in backoff)."""
    backend = backend_of(1, templates)
    launch = make_launch("gpus", "visible", write(tmp_path, "gpus", VISIBLE), gpu=1)
    (leaving,) = await backend.start(launch)
    stopping = asyncio.create_task(backend.stop(leaving))
    await asyncio.sleep(0)  # SIGTERM sent; the instance has not exited yet
    assert backend.gpus.allocator.holdings()[0], "the leaving instance still holds GPU 0"
    (arriving,) = await backend.start(launch)
    assert arriving.extra["gpus"] == "0" and leaving.exit_code is not None
    await stopping
    with pytest.raises(GpuUnavailable):  # a GPU held by an instance that is not leaving: no wait
        await backend.start(launch)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("templates", "load_once"), [(True, True), (True, False), (False, False)])
async def test_setup_instance_runs_once_in_each_instance(
    tmp_path: Path, backend_of: Backend, templates: bool, load_once: bool
) -> None:
    backend = backend_of(0, templates)
    code = write(tmp_path, "staged", STAGED)
    launch = make_launch("staged", "Staged", code, is_class=True, load_once=load_once)
    handles = await backend.start(launch, 2)
    for handle in handles:
        client, _ = await connect(handle)
        answer = await call(client)
        assert await call(client) == answer  # not per call
        client.close()
        pid = answer["pid"]
        setup_pid = int(handle.extra["template_pid"]) if load_once else pid
        assert answer["steps"] == [["setup", setup_pid], ["setup_instance", pid]]
        assert handle.extra["started_via"] == ("template" if templates else "spawn")


async def test_a_failing_setup_instance_fails_the_start(tmp_path: Path, backend_of: Backend) -> None:
    backend = backend_of(0)
    code = write(tmp_path, "staged", STAGED)
    (handle,) = await backend.start(make_launch("staged", "Broken", code, is_class=True, load_once=True))
    with pytest.raises(StartFailed, match="RuntimeError: this instance found no GPU it liked"):
        await connect(handle)


async def test_a_template_that_initialised_cuda_is_not_forked_from(
    tmp_path: Path, backend_of: Backend
) -> None:
    backend = backend_of(1)
    code = write(tmp_path, "naive", CUDA_IN_SETUP)
    launch = make_launch("naive", "Naive", code, is_class=True, load_once=True, gpu=1)
    (handle,) = await backend.start(launch)
    assert handle.extra["started_via"] == "spawn"
    assert "the template initialised CUDA during import or setup()" in handle.extra["template_error"]
    client, _ = await connect(handle)
    answer = await call(client)
    client.close()
    assert answer["loaded_in"] == answer["pid"] == handle.pid  # setup() ran in the instance itself
    assert answer["cuda"] == "0"
    failed = backend.template_of(launch)
    assert failed is not None and failed["state"] == "failed" and failed["lasting"] is True
    assert "Move GPU work (model.to('cuda'), warm-up forwards) into setup_instance()" in str(failed["error"])
    assert backend.templates() == []  # it exited: no CUDA context held in a template

    await backend.stop(handle)
    await asyncio.wait_for(_until(lambda: not backend.instances()), 15)
    (again,) = await backend.start(launch)  # no new template is built for it: straight to spawn
    assert again.extra["started_via"] == "spawn" and backend.templates() == []

    # Only GPU functions are checked: the same code with gpu=0 forks (its children never use CUDA).
    cpu = make_launch("naive", "Naive", code, is_class=True, load_once=True, revision_id="naive-00002")
    (forked,) = await backend.start(cpu)
    assert forked.extra["started_via"] == "template"
