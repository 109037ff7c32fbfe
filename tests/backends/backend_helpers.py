"""Driving a LocalBackend directly: revisions from a module folder, calls over the instance protocol."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from tidal.backends.base import InstanceHandle, InstanceSpec
from tidal.backends.local import LocalBackend
from tidal.router.connection import InstanceClient
from tidal.runtime.protocol import Error, Invoke, Ready, Result
from tidal.spec import validate_spec
from tidal.store.models import Revision

ANSWER_TIMEOUT_S = 60.0  # generous: a fork deadlock must fail the test, not hang it


def make_launch(
    module: str,
    attribute: str,
    code_dir: str,
    is_class: bool = False,
    revision_id: str | None = None,
    **spec: Any,
) -> InstanceSpec:
    """What the router hands a backend: a revision of ``module.attribute`` with its validated spec."""
    name = attribute.lower()
    validated = validate_spec({"name": name, "concurrency": 4, **spec})
    revision = Revision(
        id=revision_id or f"{name}-00001",
        function=name,
        number=1,
        digest="digest",
        code_digest="code",
        module=module,
        attribute=attribute,
        is_class=is_class,
        style="native",
        spec=validated.revision_fields(),
        created_at=time.time(),
    )
    return InstanceSpec(revision, validated, code_dir)


def write(tmp_path: Path, name: str, source: str) -> str:
    """A code folder holding ``name``.py with ``source``; its path."""
    folder = tmp_path / f"code-{name}"
    folder.mkdir()
    (folder / f"{name}.py").write_text(source)
    return str(folder)


async def connect(handle: InstanceHandle) -> tuple[InstanceClient, Ready]:
    client = await InstanceClient.connect(handle, lambda _: None)
    ready = await asyncio.wait_for(asyncio.shield(client.ready), ANSWER_TIMEOUT_S)
    return client, ready


async def call(client: InstanceClient, payload: Any = None) -> Any:
    body = json.dumps(payload).encode()
    pending = client.call(lambda call_id: Invoke(call_id, "act", time.time() + ANSWER_TIMEOUT_S, body))
    message = await asyncio.wait_for(pending.answer(ANSWER_TIMEOUT_S), ANSWER_TIMEOUT_S + 5)
    if isinstance(message, Error):
        raise AssertionError(f"the call failed: {message.type}: {message.message}")
    assert isinstance(message, Result)
    return json.loads(message.body)


async def wait_until(condition: Any, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    """The process no longer exists, or is a zombie nobody reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def template_pids(backend: LocalBackend) -> list[int]:
    return [int(info["pid"]) for info in backend.templates() if info["pid"] is not None]  # type: ignore[call-overload]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == pid:
                    found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return found
