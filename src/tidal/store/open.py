"""Open the state store a gateway is given: SQLite in its state dir, or PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path

from tidal.store.errors import StoreError
from tidal.store.postgres_sql import parse_state_url
from tidal.store.protocols import Store
from tidal.store.sqlite import SQLiteStore

DATABASE = "tidal.db"


def open_store(state: str | None, state_dir: Path) -> Store:
    """``state`` None: SQLite at ``<state_dir>/tidal.db`` (the default, one gateway per state dir).
    A ``postgresql://USER@HOST:PORT/DB[?schema=NAME]`` URL: PostgreSQL, shared by several gateways.

    Both are migrated to this release on open. Raises ValueError for another kind of URL and
    StoreError for a server that does not answer or a schema written by a newer tidal. Typed as
    ``Store`` on purpose: mypy then checks that both stores implement the whole seam.
    """
    if state is None:
        return SQLiteStore(state_dir / DATABASE)
    parse_state_url(state)  # ValueError, saying what is wrong, before importing psycopg
    try:
        from tidal.store.postgres import PostgresStore  # psycopg is needed only here
    except ImportError as error:
        raise StoreError(
            f"a postgresql:// state needs psycopg: pip install 'tidal[postgres]' ({error})"
        ) from error
    return PostgresStore(state)
