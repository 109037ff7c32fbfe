"""SQLiteStore behaviour: revisions with settings and traffic, traffic validation, cascades, records."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import msgspec
import pytest
from store_helpers import draft

from services import STORE_KINDS, open_test_store
from tidal.store import Activation, KeyRecord, Revision, SQLiteStore, TrafficTarget


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """This file's contract on SQLite and on PostgreSQL."""
    yield from open_test_store(request, tmp_path)


def traffic(store: SQLiteStore, name: str = "echo") -> list[TrafficTarget]:
    record = store.function(name)
    assert record is not None
    return record.traffic


# -- add_revision -------------------------------------------------------------------------------------


def test_the_first_revision_creates_and_serves_the_function(store: SQLiteStore) -> None:
    revision, created = store.add_revision(draft(), settings={"public": True})

    assert created and (revision.id, revision.number) == ("echo-00001", 1)
    record = store.function("echo")
    assert record is not None
    assert (record.name, record.created_at) == ("echo", 1000.0)
    assert record.settings == {"public": True}
    assert record.traffic == [TrafficTarget("echo-00001", 100)]
    assert store.revision("echo-00001") == revision
    assert store.function_names() == ["echo"]


def test_the_old_one_argument_call_still_works(store: SQLiteStore) -> None:
    revision, created = store.add_revision(draft())
    assert created
    record = store.function("echo")
    assert record is not None
    assert (record.settings, record.traffic) == ({}, [TrafficTarget(revision.id, 100)])


def test_an_identical_deploy_is_unchanged_but_takes_new_settings(store: SQLiteStore) -> None:
    first, _ = store.add_revision(draft(), settings={"public": False})
    again, created = store.add_revision(draft(), settings={"public": True})

    assert (again, created) == (first, False)
    assert [revision.id for revision in store.revisions("echo")] == ["echo-00001"]
    record = store.function("echo")
    assert record is not None and record.settings == {"public": True}


def test_settings_none_keeps_the_functions_settings(store: SQLiteStore) -> None:
    store.add_revision(draft(), settings={"public": True})
    store.add_revision(draft(memory=256))
    record = store.function("echo")
    assert record is not None and record.settings == {"public": True}


def test_a_new_digest_makes_the_next_revision_and_serves_it(store: SQLiteStore) -> None:
    store.add_revision(draft())
    second, created = store.add_revision(draft(memory=256))

    assert created and (second.id, second.number, second.spec["memory"]) == ("echo-00002", 2, 256)
    assert traffic(store) == [TrafficTarget("echo-00002", 100)]
    assert [revision.id for revision in store.revisions("echo")] == ["echo-00002", "echo-00001"]
    assert [revision.id for revision in store.latest_revisions()] == ["echo-00002"]


def test_serve_false_stores_the_revision_without_moving_traffic(store: SQLiteStore) -> None:
    store.add_revision(draft())
    canary, created = store.add_revision(draft(memory=256), serve=False)

    assert created and canary.id == "echo-00002"
    assert traffic(store) == [TrafficTarget("echo-00001", 100)]
    store.add_revision(draft("fresh"), serve=False)
    assert traffic(store, "fresh") == []  # deployed, not served


def test_redeploying_the_newest_code_sends_all_traffic_back_to_it(store: SQLiteStore) -> None:
    store.add_revision(draft())
    store.add_revision(draft(memory=256))
    store.set_traffic("echo", [TrafficTarget("echo-00001", 90), TrafficTarget("echo-00002", 10, "canary")])

    revision, created = store.add_revision(draft(memory=256))

    assert (revision.id, created) == ("echo-00002", False)
    assert traffic(store) == [TrafficTarget("echo-00002", 100)]


def test_concurrent_deploys_take_distinct_numbers(store: SQLiteStore) -> None:
    def deploy(index: int) -> None:
        store.add_revision(draft(code_digest=f"code-{index}"))

    threads = [threading.Thread(target=deploy, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(revision.number for revision in store.revisions("echo")) == list(range(1, 9))
    assert traffic(store) == [TrafficTarget("echo-00008", 100)]


# -- settings and traffic -----------------------------------------------------------------------------


def test_set_function_settings_replaces_the_object(store: SQLiteStore) -> None:
    store.add_revision(draft(), settings={"public": True, "old": 1})
    store.set_function_settings("echo", {"public": False})
    record = store.function("echo")
    assert record is not None and record.settings == {"public": False}
    with pytest.raises(KeyError, match="nope"):
        store.set_function_settings("nope", {"public": True})


def test_set_traffic_splits_and_tags(store: SQLiteStore) -> None:
    store.add_revision(draft())
    store.add_revision(draft(memory=256))
    split = [TrafficTarget("echo-00001", 10, "old"), TrafficTarget("echo-00002", 90)]
    store.set_traffic("echo", split)
    assert traffic(store) == [TrafficTarget("echo-00002", 90), TrafficTarget("echo-00001", 10, "old")]

    tag_only = [TrafficTarget("echo-00002", 100), TrafficTarget("echo-00001", 0, "old")]
    store.set_traffic("echo", tag_only)
    assert traffic(store) == tag_only
    store.set_traffic("echo", [])
    assert traffic(store) == []


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([TrafficTarget("echo-00001", 60), TrafficTarget("echo-00002", 30)], "'echo' sums to 90%, not 100%"),
        ([TrafficTarget("other-00001", 100)], "'other-00001' is not a revision of function 'echo'"),
        ([TrafficTarget("echo-00009", 100)], "'echo-00009' is not a revision of function 'echo'"),
        (
            [TrafficTarget("echo-00001", 50), TrafficTarget("echo-00001", 50)],
            r"\['echo-00001'\] appear more than once",
        ),
        (
            [TrafficTarget("echo-00001", 50, "a"), TrafficTarget("echo-00002", 50, "a")],
            r"tag\(s\) \['a'\] appear more than once",
        ),
        (
            [TrafficTarget("echo-00001", 110), TrafficTarget("echo-00002", -10)],
            "traffic to echo-00001 is 110%: must be 0..100",
        ),
    ],
)
def test_set_traffic_refuses_an_invalid_split(
    store: SQLiteStore, targets: list[TrafficTarget], message: str
) -> None:
    store.add_revision(draft())
    store.add_revision(draft(memory=256))
    store.add_revision(draft("other"))

    with pytest.raises(ValueError, match=message):
        store.set_traffic("echo", targets)
    assert traffic(store) == [TrafficTarget("echo-00002", 100)]  # untouched


def test_set_traffic_of_an_unknown_function(store: SQLiteStore) -> None:
    with pytest.raises(KeyError, match="ghost"):
        store.set_traffic("ghost", [])


def test_functions_are_listed_by_name(store: SQLiteStore) -> None:
    for name in ("zeta", "alpha", "mid"):
        store.add_revision(draft(name), settings={"public": name == "mid"})
    records = store.functions()
    assert [record.name for record in records] == ["alpha", "mid", "zeta"]
    assert [record.settings["public"] for record in records] == [False, True, False]
    assert [record.traffic for record in records] == [
        [TrafficTarget(f"{n}-00001", 100)] for n in ("alpha", "mid", "zeta")
    ]
    assert store.function("ghost") is None
    assert store.revision("ghost-00001") is None


def test_delete_function_takes_revisions_and_traffic_with_it(store: SQLiteStore, tmp_path: Path) -> None:
    store.add_revision(draft())
    store.add_revision(draft(memory=256))
    store.add_revision(draft("other"))

    assert store.delete_function("echo")
    assert not store.delete_function("echo")
    assert store.function("echo") is None and store.revisions("echo") == []
    assert store.revision("echo-00001") is None
    rows = store._query("SELECT function, revision FROM traffic")
    assert rows == [("other", "other-00001")]
    assert [record.name for record in store.functions()] == ["other"]


# -- keys, activations, scaling events -----------------------------------------------------------------


def test_keys(store: SQLiteStore) -> None:
    added = store.add_key("k1", "hash-1", ["invoke:echo"], "for echo")
    assert store.key_by_hash("hash-1") == added
    assert store.key_by_hash("hash-2") is None
    assert store.revoke_key("k1") and not store.revoke_key("k1")
    listed = store.list_keys()
    assert [key.id for key in listed] == ["k1"] and listed[0].revoked_at is not None
    assert isinstance(listed[0], KeyRecord) and listed[0].scopes == ["invoke:echo"]


def test_activations_keep_caller_and_trigger(store: SQLiteStore) -> None:
    # Positional construction, as the gateway does it, still fills the new fields with defaults.
    public = Activation("a1", "echo", "echo-00001", "i1", 10.0, 5.0, 5, 128, True, "ok", 200)
    keyed = msgspec.structs.replace(public, id="a2", start=11.0, cold=False, key_id="k1", trigger="cron")
    store.add_activations([public, keyed])

    assert (public.key_id, public.trigger) == ("", "http")
    assert store.activations("echo") == [keyed, public]  # newest first
    assert store.activations("echo", limit=1) == [keyed]
    assert store.activations("echo", activation_id="a1") == [public]
    assert store.activation("a2") == keyed and store.activation("nope") is None
    fetched = store.activation("a1")
    assert fetched is not None and fetched.cold is True


def test_scaling_events(store: SQLiteStore) -> None:
    store.add_scaling_event("echo", "echo-00001", 1.0, 0, 1, "cold start")
    store.add_scaling_event("echo", "echo-00001", 2.0, 1, 0, "idle")
    events = store.scaling_events("echo")
    assert [event["reason"] for event in events] == ["idle", "cold start"]
    assert events[0] == {
        "revision": "echo-00001",
        "at": 2.0,
        "from_count": 1,
        "to_count": 0,
        "reason": "idle",
    }


# -- one list, one place ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "record", "extra"),
    [("activations", Activation, set()), ("revisions", Revision, set()), ("keys", KeyRecord, {"hash"})],
)
def test_tables_have_the_records_columns(
    tmp_path: Path, table: str, record: type[msgspec.Struct], extra: set[str]
) -> None:
    SQLiteStore(tmp_path / "tidal.db").close()
    with closing(sqlite3.connect(tmp_path / "tidal.db")) as connection:
        columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    # The store names its columns in every statement, so only the set has to match, not the order.
    assert set(columns) - extra == set(record.__struct_fields__)
