"""Errors the store raises on its own behalf (bad input raises ValueError or KeyError instead)."""

from __future__ import annotations


class StoreError(Exception):
    """The state dir cannot be used by this release: written by a newer one, or a migration failed."""
