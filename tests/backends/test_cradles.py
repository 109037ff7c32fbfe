"""Each forked instance is born in a control group of its own (its template's cradle): its own
limits, no move on the cold path, and the template moves on to a fresh cradle afterwards.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from backend_helpers import make_launch, template_pids, wait_until

from tidal.backends.local import LocalBackend

ECHO = """
import tidal

@tidal.function(name="echo")
def echo(payload):
    return payload
"""


def memory_group(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    raise AssertionError(f"no memory group for {pid}")


def memory_limit_mb(group: str) -> int:
    return int(Path(f"/sys/fs/cgroup/memory{group}/memory.limit_in_bytes").read_text()) // (1024 * 1024)


@pytest.mark.skipif(not Path("/sys/fs/cgroup/memory/cgroup.procs").exists() or os.geteuid() != 0,
                    reason="needs writable cgroup v1 controllers (root on this kind of host)")  # fmt: skip
async def test_instances_are_born_in_groups_of_their_own(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "echo.py").write_text(ECHO)
    backend = LocalBackend(tmp_path / "state")
    launch = make_launch("echo", "echo", str(code), memory=192)
    try:
        (first,) = await backend.start(launch)  # the template's first fork: moved after the fork
        (template_pid,) = template_pids(backend)
        await wait_until(lambda: template_pid in backend.cradles._ready, what="the template's first cradle")
        cradle = memory_group(template_pid)
        (second,) = await backend.start(launch)
        assert second.pid is not None and first.pid is not None
        assert memory_group(second.pid) == cradle, "born in the cradle the template waited in"
        assert memory_limit_mb(cradle) == 192, "the cradle took the instance's limit"
        await wait_until(lambda: memory_group(template_pid) != cradle, what="the template moving on")
        burst = await asyncio.gather(*(backend.start(launch) for _ in range(3)))
        groups = {memory_group(pid) for pid in [first.pid, second.pid, *(h.pid for (h,) in burst if h.pid)]}
        assert len(groups) == 5, "every instance has a group of its own, bursts included"
        # After the burst's last fork the template moves to a fresh cradle of its own (in the background).
        await wait_until(
            lambda: memory_group(template_pid) not in groups, what="the template moving on again"
        )
        await backend.stop(second, grace_s=2)
        await wait_until(
            lambda: not Path(f"/sys/fs/cgroup/memory{cradle}").exists(), what="its group removed"
        )
        assert Path(f"/proc/{template_pid}").exists(), "the template outlives the instance"
    finally:
        await backend.close()
