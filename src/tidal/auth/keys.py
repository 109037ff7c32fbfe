"""API keys. A key is shown once; only its SHA-256 is stored (keys are 190 random bits, so a
fast hash is enough: there is nothing to brute-force). Scopes: ``admin`` (everything),
``invoke:*`` (every function), ``invoke:NAME`` (one function).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from tidal.store.models import KeyRecord
from tidal.store.sqlite import SQLiteStore

SCOPE_PATTERN = re.compile(r"^(admin|invoke:\*|invoke:[a-z][a-z0-9_-]{0,62})$")
ADMIN_KEY_FILE = "admin.key"


class Access(Enum):
    GRANTED = "granted"
    UNAUTHENTICATED = "unauthenticated"  # no key, or one we do not know (401)
    FORBIDDEN = "forbidden"  # a valid key without the scope (403)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    key_id = secrets.token_hex(4)
    return key_id, f"tidal_{key_id}_{secrets.token_urlsafe(24)}"


def check_scopes(scopes: list[str]) -> list[str]:
    bad = [scope for scope in scopes if not SCOPE_PATTERN.match(scope)]
    if bad or not scopes:
        raise ValueError(f"invalid scope(s) {bad or scopes}: use admin, invoke:*, or invoke:NAME")
    return scopes


def allows(scopes: list[str], needed: str) -> bool:
    """Whether ``scopes`` grant ``needed`` ("admin" or "invoke:NAME").

    >>> allows(["invoke:embed"], "invoke:embed"), allows(["invoke:*"], "invoke:x"), allows(["invoke:x"], "admin")
    (True, True, False)
    """
    if "admin" in scopes or needed in scopes:
        return True
    return needed.startswith("invoke:") and "invoke:*" in scopes


@dataclass
class KeyRing:
    """Key checks for the gateway, with an in-memory cache of known hashes (cleared on change)."""

    store: SQLiteStore

    def __post_init__(self) -> None:
        self._known: dict[str, KeyRecord] = {}

    def create(self, scopes: list[str], description: str = "") -> tuple[KeyRecord, str]:
        key_id, key = new_key()
        record = self.store.add_key(key_id, hash_key(key), check_scopes(scopes), description)
        return record, key

    def revoke(self, key_id: str) -> bool:
        self._known.clear()
        return self.store.revoke_key(key_id)

    def check(self, authorization: str | None, needed: str) -> tuple[Access, KeyRecord | None]:
        if not authorization:
            return Access.UNAUTHENTICATED, None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            return Access.UNAUTHENTICATED, None
        key_hash = hash_key(key.strip())
        record = self._known.get(key_hash)
        if record is None:
            record = self.store.key_by_hash(key_hash)
            if record is None or record.revoked_at is not None:
                return Access.UNAUTHENTICATED, None
            self._known[key_hash] = record
        return (Access.GRANTED if allows(record.scopes, needed) else Access.FORBIDDEN), record

    def ensure_admin_key_file(self, state_dir: Path) -> Path:
        """Create ``<state-dir>/admin.key`` (mode 0600) holding a fresh admin key, once."""
        path = state_dir / ADMIN_KEY_FILE
        if path.exists():
            known = self.store.key_by_hash(hash_key(path.read_text().strip()))
            if known is not None and known.revoked_at is None:
                return path
        _, key = self.create(["admin"], "admin key of `tidal up`")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(key + "\n")
        os.chmod(path, 0o600)
        return path
