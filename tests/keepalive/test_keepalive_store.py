"""The idle_histograms table: a function's keep-alive state round-trips, in batches, and goes with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from services import STORE_KINDS, open_test_store
from tidal.keepalive.histogram import IdleHistogram
from tidal.keepalive.keeper import KeptState
from tidal.store.models import Revision, revision_digest
from tidal.store.sqlite import SQLiteStore


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """This file's contract on SQLite and on PostgreSQL."""
    yield from open_test_store(request, tmp_path)


def deployed(store: SQLiteStore, function: str) -> None:
    spec: dict[str, object] = {"name": function}
    digest = revision_digest("code-1", function, "handler", False, "native", spec)
    draft = Revision("", function, 0, digest, "code-1", function, "handler", False, "native", spec, 1000.0)
    store.add_revision(draft)


def test_a_histogram_round_trips_through_the_store(store: SQLiteStore) -> None:
    deployed(store, "periodic")
    deployed(store, "other")
    histogram = IdleHistogram(bin_s=1.0, range_s=60.0)
    for idle_s in (5.4, 5.5, 5.6, 75.0):
        histogram.add(idle_s)
    state = msgspec.json.encode(KeptState(histogram, last_end=1234.5)).decode()
    store.save_idle_histograms({"periodic": state, "other": "{}", "never_deployed": state}, at=2000.0)

    stored = store.idle_histograms()
    assert set(stored) == {"periodic", "other"}  # a function not stored (removed meanwhile) is skipped
    again = msgspec.json.decode(stored["periodic"], type=KeptState)
    assert again.last_end == 1234.5 and again.histogram == histogram
    assert again.histogram.percentile(50) == 6.0 and again.histogram.recent_out_of_range == [75.0]

    store.save_idle_histograms({"other": '{"x": 1}'}, at=2001.0)  # an update replaces the row
    assert store.idle_histograms()["other"] == '{"x": 1}'
    assert store.delete_function("periodic")
    assert set(store.idle_histograms()) == {"other"}  # the state goes with its function
