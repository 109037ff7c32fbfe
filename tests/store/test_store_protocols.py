"""SQLiteStore and PostgresStore implement the Store seam member by member (mypy checks it too, in open_store)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Protocol

import pytest

from tidal.store import (
    ActivationStore,
    FunctionStore,
    KeyStore,
    ScalingEventStore,
    SQLiteStore,
    Store,
    open_store,
)
from tidal.store.postgres import PostgresStore

# Every concern Store is made of (a new one is checked without editing this list), and the first four by name.
CONCERNS = tuple(base for base in Store.__bases__ if base is not Protocol)
assert {FunctionStore, KeyStore, ActivationStore, ScalingEventStore} <= set(CONCERNS)


def members(protocol: type) -> dict[str, inspect.Signature]:
    """The methods a protocol declares itself and through its protocol bases."""
    found: dict[str, inspect.Signature] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (*CONCERNS, Store):
            for name, value in vars(cls).items():
                if inspect.isfunction(value) and not name.startswith("_"):
                    found[name] = inspect.signature(value)
    return found


@pytest.mark.parametrize("implementation", [SQLiteStore, PostgresStore], ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("protocol", [*CONCERNS, Store], ids=lambda protocol: protocol.__name__)
def test_each_store_has_every_member_with_its_signature(protocol: type, implementation: type) -> None:
    for name, signature in members(protocol).items():
        method = getattr(implementation, name, None)
        assert method is not None, f"{implementation.__name__} lacks {protocol.__name__}.{name}"
        assert inspect.signature(method) == signature, name


def test_the_seam_covers_the_whole_public_store() -> None:
    # SQLiteStore is made of table groups (sqlite_rollouts.py, sqlite_shadow.py): all of its classes.
    public = {
        name for name, _ in inspect.getmembers(SQLiteStore, inspect.isfunction) if not name.startswith("_")
    }
    assert public == set(members(Store))


def test_the_concerns_do_not_overlap() -> None:
    names = [name for concern in CONCERNS for name in members(concern)]
    assert len(names) == len(set(names))
    assert set(members(Store)) == {*names, "close"}


def test_open_store_gives_a_working_store(tmp_path: Path) -> None:
    store: Store = open_store(None, tmp_path)
    try:
        assert store.functions() == [] and store.list_keys() == []
        assert (tmp_path / "tidal.db").exists()
    finally:
        store.close()


def test_open_store_opens_postgresql_by_url(postgres_state_url: str, tmp_path: Path) -> None:
    store = open_store(postgres_state_url, tmp_path)
    try:
        assert isinstance(store, PostgresStore) and store.functions() == []
        assert not (tmp_path / "tidal.db").exists()
    finally:
        store.close()
