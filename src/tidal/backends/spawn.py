"""Starting a tidal Python module as a child process (instances that cannot fork, and templates)."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def spawn_module(
    python: str, module: str, env: dict[str, str], log_path: str | Path, inherited_fd: int, cwd: str
) -> asyncio.subprocess.Process:
    """``python -m module`` with stdout/stderr appended to ``log_path`` and one fd handed down.

    The child gets a session of its own: Ctrl-C in the terminal of `tidal up` reaches only the
    gateway, which then stops its instances in order (they still go when it dies: see worker.py).
    """
    with open(log_path, "ab") as log_file:
        return await asyncio.create_subprocess_exec(
            python, "-m", module, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            pass_fds=(inherited_fd,), cwd=cwd, start_new_session=True,
        )  # fmt: skip
