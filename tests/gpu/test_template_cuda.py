"""The template's CUDA rule on its own: a GPU function's template never forks once CUDA is
initialised in it (a forked child could not use the GPU), and says why."""

from __future__ import annotations

import os
import socket
import sys
import types
from collections.abc import Iterator

import pytest

from tidal.runtime.template import (
    CUDA_REFUSAL,
    Fork,
    ForkFailed,
    Template,
    TemplateConfig,
    cuda_initialised,
    decode,
    pinned_env,
)
from tidal.runtime.worker import InstanceConfig


def fake_torch(initialised: bool) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.cuda = types.SimpleNamespace(is_initialized=lambda: initialised)  # type: ignore[attr-defined]
    return torch


@pytest.fixture
def control() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(5)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_cuda_state_is_read_from_torch_only_when_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert cuda_initialised() is False
    monkeypatch.setitem(sys.modules, "torch", fake_torch(True))
    assert cuda_initialised() is True
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # no torch.cuda at all
    assert cuda_initialised() is False


def test_real_cpu_torch_never_initialises_cuda() -> None:
    torch = pytest.importorskip(
        "torch", reason="the torch extra (make setup installs it) is needed to initialise CUDA state"
    )
    torch.cuda.is_available()  # on a CPU build (or with the NVML check) this initialises nothing
    assert cuda_initialised() is False


def test_a_gpu_template_pins_the_nvml_check() -> None:
    assert pinned_env(gpu=True)["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    assert "PYTORCH_NVML_BASED_CUDA_CHECK" not in pinned_env(gpu=False)


def test_a_fork_is_refused_for_good_once_cuda_is_initialised(
    control: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before each fork too (a thread of user code may initialise CUDA after ready).
    Nothing is forked here: the refusal comes first."""
    ours, theirs = control
    monkeypatch.setitem(sys.modules, "torch", fake_torch(True))
    template = Template(theirs, TemplateConfig("/nowhere", "m", gpu=True), None)
    listen_r, listen_w = os.pipe()
    log_r, log_w = os.pipe()
    config = InstanceConfig("i", "f", "f-00001", "/nowhere", "m", "f", False, visible_gpus="0")
    template.fork(Fork(7, config, 1.0), listen_r, log_r)
    answer = decode(ours.recv(1 << 16))
    assert answer == ForkFailed(7, CUDA_REFUSAL, lasting=True)
    assert template.refused  # its loop returns: the process exits, the backend spawns instead
    for fd in (listen_r, log_r):  # the descriptors it was handed are closed
        with pytest.raises(OSError):
            os.fstat(fd)
    for fd in (listen_w, log_w, template.wake_r, template.wake_w):
        os.close(fd)
