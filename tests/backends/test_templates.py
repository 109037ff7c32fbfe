"""Instances forked from warm templates (zygotes): real processes, driven at the backend level."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from backend_helpers import (
    call,
    children_of,
    connect,
    gone,
    make_launch,
    parent_of,
    template_pids,
    wait_until,
    write,
)

from tidal.backends.base import Capacity, InstanceHandle
from tidal.backends.local import LocalBackend
from tidal.backends.templates import TemplateKey, process_alive, watch_orphan
from tidal.runtime.template import Forked

PROBE = """
import os

import tidal

IMPORTED_IN = os.getpid()


@tidal.function
def probe(payload):
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "imported_in": IMPORTED_IN,
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "marker": os.environ.get("TIDAL_TEMPLATE"),
        "mine": os.environ.get("MINE"),
        "payload": payload,
    }


@tidal.function
def sized(payload, context):
    return {"memory_mb": context.memory_limit_in_mb}


@tidal.function(load_once=True)
class Loaded:
    def setup(self):
        self.loaded_in = os.getpid()

    def __call__(self, payload):
        return {"pid": os.getpid(), "loaded_in": self.loaded_in}
"""

# Imports fine in a fresh process, refuses inside a template: provokes the fallback to spawn.
NO_TEMPLATES = """
import os

if os.environ.get("TIDAL_TEMPLATE") == "1":
    raise RuntimeError("this module refuses to load in a template")

import tidal


@tidal.function
def stubborn(payload):
    return {"ppid": os.getppid(), "payload": payload}
"""


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    local = LocalBackend(tmp_path / "state")
    yield local
    await local.close()


async def test_instances_fork_from_one_template(backend: LocalBackend, tmp_path: Path) -> None:
    code = write(tmp_path, "probe", PROBE)
    launch = make_launch("probe", "probe", code, env={"MINE": "yes", "OMP_NUM_THREADS": "3"})
    first, second = await backend.start(launch, 2)
    (template_pid,) = template_pids(backend)
    for handle in (first, second):
        assert handle.extra["started_via"] == "template"
        assert float(handle.extra["fork_ms"]) >= 0
        assert handle.extra["template_pid"] == str(template_pid)
    answers = []
    for handle in (first, second):
        client, ready = await connect(handle)
        answers.append(await call(client, {"n": 1}))
        assert ready.pid == handle.pid
        client.close()
    for handle, answer in zip((first, second), answers, strict=True):
        assert answer["pid"] == handle.pid and answer["ppid"] == template_pid
        assert answer["imported_in"] == template_pid  # the module was imported once, before the fork
        # The instance sees its own environment, not the template's pinned one.
        assert answer["mine"] == "yes" and answer["omp"] == "3" and answer["marker"] is None
        assert answer["payload"] == {"n": 1}
    (info,) = backend.templates()
    assert info["state"] == "ready" and info["forks"] == 2 and info["load_once"] is False


async def test_load_once_runs_setup_in_the_template(backend: LocalBackend, tmp_path: Path) -> None:
    code = write(tmp_path, "probe", PROBE)
    launch = make_launch("probe", "Loaded", code, is_class=True, load_once=True)
    (handle,) = await backend.start(launch)
    client, ready = await connect(handle)
    answer = await call(client)
    assert answer["pid"] == handle.pid
    assert answer["loaded_in"] == int(handle.extra["template_pid"]) != handle.pid
    assert ready.setup_ms == 0.0 and ready.import_ms == 0.0
    (info,) = backend.templates()
    assert info["load_once"] is True and info["attribute"] == "Loaded"


@pytest.mark.parametrize("templates", [True, False])
async def test_instances_get_their_revisions_typed_spec(
    tmp_path: Path, templates: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDAL_FAKE_GPUS", "1")  # gpu=1 starts only where a GPU is (a fake one here)
    backend = LocalBackend(tmp_path / "state", use_templates=templates)
    try:
        code = write(tmp_path, "probe", PROBE)
        launch = make_launch("probe", "sized", code, memory=1024, cpu=2.0, timeout="90s", gpu=1)
        (handle,) = await backend.start(launch)
        assert handle.extra["started_via"] == ("template" if templates else "spawn")
        assert handle.capacity == Capacity(cpu=2.0, memory_mb=1024, gpu=1)
        client, _ = await connect(handle)
        assert await call(client) == {"memory_mb": 1024}
        client.close()
    finally:
        await backend.close()


async def test_revisions_of_the_same_code_share_a_template(backend: LocalBackend, tmp_path: Path) -> None:
    code = write(tmp_path, "probe", PROBE)
    await backend.start(make_launch("probe", "probe", code, revision_id="probe-00001"))
    await backend.start(make_launch("probe", "probe", code, revision_id="probe-00002", memory=1024))
    assert len(backend.templates()) == 1
    await backend.start(make_launch("probe", "probe", code, revision_id="probe-00003", env={"A": "1"}))
    assert len(backend.templates()) == 2  # another environment: another template


async def test_prepare_starts_the_template_ahead_and_release_stops_it(
    backend: LocalBackend, tmp_path: Path
) -> None:
    code = write(tmp_path, "probe", PROBE)
    launch = make_launch("probe", "probe", code)
    await backend.prepare(launch)
    (info,) = backend.templates()
    assert info["state"] in ("starting", "ready")
    await wait_until(lambda: backend.templates()[0]["state"] == "ready", what="the template to be ready")
    (handle,) = await backend.start(launch)
    assert handle.extra["template_pid"] == str(info["pid"])
    await backend.release(launch)
    assert backend.templates() == []
    await wait_until(lambda: gone(int(info["pid"])), what="the template to exit")  # type: ignore[call-overload]
    client, _ = await connect(handle)  # its instance outlives it
    assert (await call(client, 7))["payload"] == 7


async def test_killed_template_is_rebuilt_and_old_instances_keep_serving(
    backend: LocalBackend, tmp_path: Path
) -> None:
    code = write(tmp_path, "probe", PROBE)
    launch = make_launch("probe", "probe", code)
    (old,) = await backend.start(launch)
    client, _ = await connect(old)
    (template_pid,) = template_pids(backend)
    exits: list[InstanceHandle] = []
    backend.on_exit(exits.append)

    os.kill(template_pid, signal.SIGKILL)
    await wait_until(lambda: backend.templates() == [], what="the dead template to be dropped")
    assert (await call(client, "still here"))["payload"] == "still here"
    assert [h.id for h in backend.instances()] == [old.id]

    (new,) = await backend.start(launch)
    assert new.extra["started_via"] == "template"
    assert int(new.extra["template_pid"]) not in (template_pid, 0)
    new_client, _ = await connect(new)
    assert (await call(new_client))["ppid"] == int(new.extra["template_pid"])

    # The orphan's exit is still noticed (its code is unknown: it is no longer anyone's child of ours).
    await backend.stop(old, grace_s=5)
    await wait_until(lambda: [h.id for h in exits] == [old.id], what="the orphan's exit callback")
    assert {h.id for h in backend.instances()} == {new.id}


async def test_stop_and_exit_callbacks_for_forked_instances(backend: LocalBackend, tmp_path: Path) -> None:
    code = write(tmp_path, "probe", PROBE)
    launch = make_launch("probe", "probe", code)
    stopped, killed, disconnected = await backend.start(launch, 3)
    exits: dict[str, int | None] = {}
    backend.on_exit(lambda handle: exits.__setitem__(handle.id, handle.exit_code))
    clients = [(await connect(handle))[0] for handle in (stopped, killed, disconnected)]

    await backend.stop(stopped, grace_s=5)
    assert exits.get(stopped.id) == -signal.SIGTERM
    assert stopped.pid is not None and gone(stopped.pid)

    assert killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)
    await wait_until(lambda: killed.id in exits, what="the killed instance's exit")
    assert exits[killed.id] == -signal.SIGKILL

    clients[2].close()  # an instance exits when its gateway connection closes
    await wait_until(lambda: disconnected.id in exits, what="the disconnected instance's exit")
    assert exits[disconnected.id] == 0
    assert backend.instances() == []
    (template_pid,) = template_pids(backend)
    assert children_of(template_pid) == []  # reaped: no zombies


async def test_close_stops_templates_and_instances(tmp_path: Path) -> None:
    code = write(tmp_path, "probe", PROBE)
    backend = LocalBackend(tmp_path / "state")
    handles = await backend.start(make_launch("probe", "probe", code), 2)
    (template_pid,) = template_pids(backend)
    await backend.close()
    for pid in [template_pid, *(h.pid for h in handles)]:
        assert pid is not None
        await wait_until(lambda pid=pid: gone(pid), what=f"process {pid} to exit")
    assert backend.templates() == [] and backend.instances() == []


async def test_a_module_that_fails_in_the_template_falls_back_to_spawn(
    backend: LocalBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = write(tmp_path, "stubborn", NO_TEMPLATES)
    launch = make_launch("stubborn", "stubborn", code)
    with caplog.at_level(logging.WARNING, logger="tidal.backends.local"):
        first, second = await backend.start(launch, 2)
    for handle in (first, second):
        assert handle.extra["started_via"] == "spawn"
        assert "refuses to load in a template" in handle.extra["template_error"]
        client, _ = await connect(handle)
        answer = await call(client, "ok")
        assert answer == {"ppid": os.getpid(), "payload": "ok"}
    assert "refuses to load in a template" in caplog.text
    assert backend.templates() == []  # not retried for every start


@pytest.mark.parametrize("how", ["env", "flag"])
async def test_templates_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "env":
        monkeypatch.setenv("TIDAL_TEMPLATES", "0")
    backend = LocalBackend(tmp_path / "state", use_templates=how != "flag")
    try:
        code = write(tmp_path, "probe", PROBE)
        launch = make_launch("probe", "probe", code)
        await backend.prepare(launch)
        (handle,) = await backend.start(launch)
        assert handle.extra["started_via"] == "spawn" and backend.templates() == []
        client, _ = await connect(handle)
        assert (await call(client))["ppid"] == os.getpid()
    finally:
        await backend.close()


async def test_instances_started_at_once_all_answer(backend: LocalBackend, tmp_path: Path) -> None:
    code = write(tmp_path, "probe", PROBE)
    launch = make_launch("probe", "probe", code)
    batches = await asyncio.gather(*(backend.start(launch) for _ in range(4)))
    handles = [handle for batch in batches for handle in batch]
    assert {h.extra["started_via"] for h in handles} == {"template"}
    assert len(backend.templates()) == 1  # concurrent first starts share one template
    for handle in handles:
        client, _ = await connect(handle)
        assert (await call(client))["pid"] == handle.pid
        assert handle.pid is not None and parent_of(handle.pid) == int(handle.extra["template_pid"])


async def test_a_fork_nobody_waits_for_is_stopped(backend: LocalBackend, tmp_path: Path) -> None:
    code = write(tmp_path, "probe", PROBE)
    launch = make_launch("probe", "probe", code)
    await backend.prepare(launch)
    template = backend._templates.get(TemplateKey.of(launch))
    assert template is not None
    await template.wait_ready(30)
    stray = subprocess.Popen(["sleep", "30"])  # stands in for a child whose start was cancelled
    try:
        template._dispatch(Forked(id=12345, pid=stray.pid, fork_ms=1.0))
        assert stray.wait(5) == -signal.SIGTERM
    finally:
        stray.kill()


async def test_orphans_are_watched_with_or_without_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    for pidfd in (True, False):
        if not pidfd:
            monkeypatch.setattr(os, "pidfd_open", lambda pid: (_ for _ in ()).throw(OSError("no pidfd")))
        orphan = subprocess.Popen(["sleep", "0.3"])
        exited: asyncio.Future[int | None] = loop.create_future()
        watch_orphan(orphan.pid, exited)
        assert not exited.done() and process_alive(orphan.pid)
        assert await asyncio.wait_for(exited, 10) is None  # gone (a zombie until reaped counts as gone)
        assert not process_alive(orphan.pid)
        orphan.wait()
    missing: asyncio.Future[int | None] = loop.create_future()
    watch_orphan(orphan.pid, missing)  # reaped now: no such process
    assert await asyncio.wait_for(missing, 5) is None
