"""torch in a template: forked instances must not deadlock on OpenMP (a fork after a multi-threaded
op hangs the child), and they get their own thread count back. A hang fails on the call timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from backend_helpers import call, connect, make_launch

from tidal.backends.local import LocalBackend

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MATMUL = """
import os

import torch

import tidal

AT_IMPORT = float((torch.randn(512, 512) @ torch.randn(512, 512)).abs().sum())  # in the template


@tidal.function(load_once=True)
class Preloaded:
    def setup(self):
        self.weights = torch.randn(512, 512) @ torch.randn(512, 512)  # a model load, in the template
        self.threads_at_setup = torch.get_num_threads()
        self.loaded_in = os.getpid()

    def __call__(self, payload):
        value = float((torch.randn(512, 512) @ self.weights).abs().sum())
        return {"value": value, "threads": torch.get_num_threads(), "pid": os.getpid(),
                "threads_at_setup": self.threads_at_setup, "loaded_in": self.loaded_in}


@tidal.function
class PerInstance:
    def setup(self):
        self.weights = torch.randn(512, 512) @ torch.randn(512, 512)  # in the forked child

    def __call__(self, payload):
        value = float((torch.randn(512, 512) @ self.weights).abs().sum())
        return {"value": value, "threads": torch.get_num_threads(), "pid": os.getpid()}
"""

GREEDY = """
import os

import torch

import tidal

torch.set_num_threads(2)
WARM = torch.randn(512, 512) @ torch.randn(512, 512)  # a multi-threaded op: forking after it hangs


@tidal.function
def greedy(payload):
    return {"value": float((torch.randn(256, 256) @ torch.randn(256, 256)).sum()), "ppid": os.getppid()}
"""


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    local = LocalBackend(tmp_path / "state")
    yield local
    await local.close()


def write(tmp_path: Path, source: str) -> str:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "matmul.py").write_text(source)
    return str(folder)


@pytest.mark.parametrize("attribute", ["Preloaded", "PerInstance"])
async def test_torch_instances_fork_safely_and_get_their_threads(
    backend: LocalBackend, tmp_path: Path, attribute: str
) -> None:
    code = write(tmp_path, MATMUL)
    load_once = attribute == "Preloaded"
    launch = make_launch("matmul", attribute, code, is_class=True, load_once=load_once, cpu=2.0)
    handles = await backend.start(launch, 2)
    assert [h.extra["started_via"] for h in handles] == ["template", "template"]
    for handle in handles:
        client, _ = await connect(handle)
        for _ in range(2):
            answer = await call(client, {})
            assert answer["pid"] == handle.pid and answer["value"] > 0
            assert answer["threads"] == 2  # raised in the child to the spec's cpu
        if load_once:
            assert answer["threads_at_setup"] == 1  # the template loads on one thread
            assert answer["loaded_in"] == int(handle.extra["template_pid"])


async def test_torch_made_multi_threaded_by_user_code_is_not_forked(
    backend: LocalBackend, tmp_path: Path
) -> None:
    code = write(tmp_path, GREEDY)
    (handle,) = await backend.start(make_launch("matmul", "greedy", code))
    assert handle.extra["started_via"] == "spawn"
    assert "threads" in handle.extra["template_error"]
    client, _ = await connect(handle)
    assert (await call(client, {}))["value"] != 0


@pytest.mark.parametrize("load_once", [False, True])
async def test_embed_torch_example_forks_and_embeds(backend: LocalBackend, load_once: bool) -> None:
    code = str(EXAMPLES / "embed_torch")
    launch = make_launch(
        "main", "EmbedTorch", code, is_class=True, load_once=load_once, cpu=2.0, timeout="2m"
    )
    handles = await backend.start(launch, 2)
    for handle in handles:
        assert handle.extra["started_via"] == "template"
        client, ready = await connect(handle)
        if load_once:
            assert ready.setup_ms == 0.0
        answer = await call(client, {"texts": ["a cat sat on the mat", "un chat"]})
        vectors = answer["embeddings"]
        assert len(vectors) == 2 and len(vectors[0]) == 384
        assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-3  # unit norm
