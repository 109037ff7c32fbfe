"""The triggers table: declared triggers replaced as a set (state kept), errors, cascade on delete."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import STORE_KINDS, open_test_store
from tidal.store import Revision, SQLiteStore
from tidal.store.models import TriggerRecord


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """This file's contract on SQLite and on PostgreSQL."""
    yield from open_test_store(request, tmp_path)


CRON = {"kind": "cron", "schedule": "* * * * *", "tz": "UTC", "catchup": 3600.0}


def function(store: SQLiteStore, name: str) -> None:
    draft = Revision(id="", function=name, number=0, digest="d", code_digest="c", module="m", attribute="f",
                     is_class=False, style="native", spec={}, created_at=time.time())  # fmt: skip
    store.add_revision(draft)


def record(trigger_id: str, origin: str = "spec") -> TriggerRecord:
    return TriggerRecord(trigger_id, "tick", "cron", dict(CRON), origin, 1.0)


def test_declared_triggers_are_replaced_as_a_set_and_keep_their_state(store: SQLiteStore) -> None:
    assert not store.add_trigger(record("trg-none"))  # no such function
    function(store, "tick")
    store.sync_spec_triggers("tick", [record("trg-a"), record("trg-b")])
    assert store.add_trigger(record("trg-hand", origin="cli"))
    store.save_trigger_state("trg-a", {"decided_until": 60.0}, 1, 61.0)
    store.set_trigger_error("trg-b", "ConnectionError: down", 62.0)

    store.sync_spec_triggers("tick", [record("trg-a")])  # trg-b no longer declared
    kept = {trigger.id: trigger for trigger in store.triggers("tick")}
    assert set(kept) == {"trg-a", "trg-hand"}
    assert kept["trg-a"].state == {"decided_until": 60.0} and kept["trg-a"].events == 1
    assert kept["trg-a"].config == CRON

    store.add_trigger_events("trg-a", 2, 70.0)
    counted = store.trigger("trg-a")
    assert counted is not None and (counted.events, counted.last_event_at) == (3, 70.0)
    assert store.delete_trigger("trg-hand") and not store.delete_trigger("trg-hand")
    assert store.delete_function("tick")
    assert store.triggers() == []  # gone with their function
