"""State: functions (revisions, settings, traffic), keys, activations, scaling events.

``protocols.py`` is the seam (one Protocol per concern, ``Store`` for all), ``models.py`` the
records, ``sqlite.py`` the default implementation, ``migrations.py`` its numbered schema steps;
``postgres.py`` the same table groups on PostgreSQL (``postgres_migrations.py``), and
``open.py`` picks one from ``tidal up --state``.
"""

from __future__ import annotations

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
from tidal.store.open import open_store
from tidal.store.protocols import ActivationStore, FunctionStore, KeyStore, ScalingEventStore, Store
from tidal.store.sqlite import SQLiteStore

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
