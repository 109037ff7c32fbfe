"""Helpers of the store tests (a module, not a conftest: tests/conftest.py owns that name)."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

from tidal.store.models import Revision, revision_digest

FIXTURES = Path(__file__).parent / "fixtures"


def copy_state_0_1_0(tmp_path: Path) -> Path:
    """A copy of the state dir tidal 0.1.0 wrote (the committed fixture itself is never opened)."""
    return Path(shutil.copytree(FIXTURES / "state-0.1.0", tmp_path / "state-0.1.0"))


def draft(function: str = "echo", memory: int = 128, code_digest: str = "code-1") -> Revision:
    """A revision as the deployer hands it to the store: no id or number yet."""
    spec: dict[str, object] = {"name": function, "memory": memory}
    return Revision(
        id="",
        function=function,
        number=0,
        digest=revision_digest(code_digest, function, "handler", False, "native", spec),
        code_digest=code_digest,
        module=function,
        attribute="handler",
        is_class=False,
        style="native",
        spec=spec,
        created_at=1000.0,
    )


def connect(path: Path) -> sqlite3.Connection:
    """A raw connection as the store opens it (autocommit: migrate() runs its own transactions)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("PRAGMA user_version").fetchone()[0])


def recorded_migrations(path: Path) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(
            "SELECT version, description FROM schema_migrations ORDER BY version"
        ).fetchall()


def schema(path: Path) -> set[tuple[str, str, str | None]]:
    """Every table and index with its SQL: equal for every path that reaches one version."""
    with closing(sqlite3.connect(path)) as connection:
        return set(connection.execute("SELECT type, name, sql FROM sqlite_master"))


def dump(path: Path) -> list[str]:
    """Schema and rows, as SQL: equal dumps mean an unchanged database."""
    with closing(sqlite3.connect(path)) as connection:
        return list(connection.iterdump())
