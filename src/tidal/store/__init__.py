"""State: functions, revisions, keys, activations. SQLite by default (see sqlite.py)."""

from tidal.store.models import Activation, KeyRecord, Revision
from tidal.store.sqlite import SQLiteStore

__all__ = ["Activation", "KeyRecord", "Revision", "SQLiteStore"]
