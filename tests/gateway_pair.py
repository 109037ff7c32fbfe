"""Two `tidal up` processes on one PostgreSQL schema, for the several-gateways tests (local and Ray)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import TidalServer


@contextmanager
def two_gateways(
    root: Path, *args: str, wait_s: float = 30, first_ready: Callable[[TidalServer], None] | None = None
) -> Iterator[tuple[TidalServer, TidalServer]]:
    """Start a first gateway, then a second with the first's admin key file (keys live in the shared
    store, so one key opens both), each with its own state dir and ``args``; stop both after.

    ``first_ready(first)`` runs before the second starts (e.g. wait until the first leads).
    """
    first, second = TidalServer(root / "g1" / "state"), TidalServer(root / "g2" / "state")
    second.state_dir.mkdir(parents=True)
    first.state_dir.parent.mkdir()
    try:
        first.start(*args, wait_s=wait_s)
        if first_ready is not None:
            first_ready(first)
        shutil.copy(first.state_dir / "admin.key", second.state_dir / "admin.key")
        second.start(*args, wait_s=wait_s)
        yield first, second
    finally:
        first.stop()
        second.stop()
