"""State: functions (revisions, settings, traffic), keys, activations, scaling events.

``protocols.py`` is the seam (one Protocol per concern, ``Store`` for all), ``models.py`` the
records, ``sqlite.py`` the default implementation, ``migrations.py`` its numbered schema steps.
"""

from __future__ import annotations

from pathlib import Path

from tidal.store.errors import StoreError
from tidal.store.models import (
    Activation,
    FunctionRecord,
    KeyRecord,
    Revision,
    TrafficTarget,
    check_traffic,
    revision_digest,
)
from tidal.store.protocols import ActivationStore, FunctionStore, KeyStore, ScalingEventStore, Store
from tidal.store.sqlite import SQLiteStore


def open_store(path: Path) -> Store:
    """The default store, SQLite at ``path`` (``<state-dir>/tidal.db``), migrated to this release.

    Typed as ``Store`` on purpose: mypy then checks that SQLiteStore implements the whole seam.
    """
    return SQLiteStore(path)


__all__ = [
    "Activation",
    "ActivationStore",
    "FunctionRecord",
    "FunctionStore",
    "KeyRecord",
    "KeyStore",
    "Revision",
    "SQLiteStore",
    "ScalingEventStore",
    "Store",
    "StoreError",
    "TrafficTarget",
    "check_traffic",
    "open_store",
    "revision_digest",
]
