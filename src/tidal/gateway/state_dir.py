"""The state dir's modes: only the gateway's user can list or read anything in it.

    STATE_DIR/           0711  instances (other uids) may pass through to their own code dir
      tidal.db, tidal.db-wal, tidal.db-shm, admin.key, gateway.lock    0600
      code/              0711  passable, not listable; each code/<digest> is the backend's to open
      envs/, runtime/    0711  the same for environments (a bundle's requirements) and their runtime
      cache/             0700  uv's package cache, where UV_CACHE_DIR does not say otherwise
      logs/              0700  and logs/instances, logs/templates 0700, their files 0600

``prepare_state_dir`` runs at every start, before anything in the dir is opened: it creates what
is missing with these modes and fixes what an earlier release left (0755 dirs, 0644 files). An
empty ``tidal.db`` is created 0600 before SQLite opens it, because SQLite gives its ``-wal`` and
``-shm`` files the database's own mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("tidal.gateway")

STATE_DIR_MODE = 0o711
CODE_DIR_MODE = 0o711
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
DATABASE = "tidal.db"
PRIVATE_FILES = (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", "admin.key", "gateway.lock")
LOG_DIRS = ("logs", "logs/instances", "logs/templates")
PASSABLE_DIRS = ("code", "envs", "runtime")


def prepare_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` (and its code and log folders) or fix its modes, as the table above says."""
    state_dir.mkdir(parents=True, exist_ok=True)
    _set_mode(state_dir, STATE_DIR_MODE)
    for name in PASSABLE_DIRS:
        _make_dir(state_dir / name, CODE_DIR_MODE)
    _make_dir(state_dir / "cache", PRIVATE_DIR_MODE)
    for name in LOG_DIRS:
        _make_dir(state_dir / name, PRIVATE_DIR_MODE)
        for path in (state_dir / name).iterdir():
            if path.is_file():
                _set_mode(path, PRIVATE_FILE_MODE)
    os.close(os.open(state_dir / DATABASE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    for name in PRIVATE_FILES:
        with contextlib.suppress(FileNotFoundError):
            _set_mode(state_dir / name, PRIVATE_FILE_MODE)


def _make_dir(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, exist_ok=True)
    _set_mode(path, mode)  # mkdir's mode passes through the umask, and an existing dir keeps its own


def _set_mode(path: Path, mode: int) -> None:
    if stat.S_IMODE(path.stat().st_mode) == mode:
        return
    try:
        os.chmod(path, mode)
    except PermissionError as exc:  # another user's file: say so, and serve anyway
        log.warning("cannot set mode %o on %s: %s", mode, path, exc)
