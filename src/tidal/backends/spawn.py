"""Starting a tidal Python module as a child process (instances that cannot fork, and templates)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from tidal.backends.logsink import open_log


async def spawn_module(
    python: str,
    module: str,
    env: dict[str, str],
    log_path: str | Path,
    inherited_fd: int,
    cwd: str,
    before_exec: Callable[[], None] | None = None,
) -> asyncio.subprocess.Process:
    """``python -m module`` with stdout/stderr going to ``log_path`` and one fd handed down.

    Its stdout/stderr are a pipe the gateway drains into ``log_path``, capped (see logsink.py).

    The child gets a session of its own: Ctrl-C in the terminal of `tidal up` reaches only the
    gateway, which then stops its instances in order (they still go when it dies: see worker.py).
    ``before_exec`` runs in the child before Python starts (it joins its control group there, so
    nothing it runs is ever outside its limits).
    """
    log_fd = open_log(log_path)
    try:
        return await asyncio.create_subprocess_exec(
            python, "-m", module, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
            pass_fds=(inherited_fd,), cwd=cwd, start_new_session=True, preexec_fn=before_exec,
        )  # fmt: skip
    finally:
        os.close(log_fd)  # the child holds its own copy
