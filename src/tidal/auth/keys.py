"""API keys. A key is shown once; only its SHA-256 is stored (keys are 190 random bits, so a
fast hash is enough: there is nothing to brute-force). Scopes: ``admin`` (everything),
``invoke:*`` (every function), ``invoke:NAME`` (one function).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec

from tidal.auth.limits import KeyLimits, limits_from_json
from tidal.store.models import KeyRecord
from tidal.store.protocols import KeyStore, LimitStore

SCOPE_PATTERN = re.compile(r"^(admin|invoke:\*|invoke:[a-z][a-z0-9_-]{0,62})$")
ADMIN_KEY_FILE = "admin.key"


# How long a looked-up key is trusted before the store is asked again: a key revoked through
# another gateway sharing the store stops working within this time (this gateway's own
# revocations take effect at once).
KNOWN_KEY_TTL_S = 30.0
# How long a hash the store does not know is answered 401 without asking again: a flood of bad
# keys costs one store lookup each per this time, not one per request.
UNKNOWN_KEY_TTL_S = 5.0
MAX_UNKNOWN = 10_000


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


def allows(scopes: Collection[str], needed: str) -> bool:
    """Whether ``scopes`` grant ``needed`` ("admin" or "invoke:NAME").

    >>> allows(["invoke:embed"], "invoke:embed"), allows(["invoke:*"], "invoke:x"), allows(["invoke:x"], "admin")
    (True, True, False)
    """
    if "admin" in scopes or needed in scopes:
        return True
    return needed.startswith("invoke:") and "invoke:*" in scopes


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is invoking: an API key (its id and scopes), nobody, or the platform itself.

    ``presented`` tells "no key" from "a key we do not know": both get 401 where a key is needed.
    """

    key_id: str = ""
    scopes: frozenset[str] = frozenset()
    presented: bool = False
    limits: KeyLimits | None = None  # rate and quotas (tidal.auth.limits); None: unlimited

    @property
    def authenticated(self) -> bool:
        return bool(self.scopes)

    def may(self, needed: str) -> bool:
        return allows(self.scopes, needed)

    def may_invoke(self, function: str) -> bool:
        return allows(self.scopes, "invoke:" + function)


ANONYMOUS = Caller()
UNKNOWN_KEY = Caller(presented=True)
# Triggers the platform runs on a function's behalf (cron ticks, bucket events) were authorised by
# an admin when they were set up; they invoke as the platform.
PLATFORM = Caller(key_id="platform", scopes=frozenset({"admin"}), presented=True)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


class KeyAndLimitStore(KeyStore, LimitStore, Protocol):
    """What the key ring needs of the store: keys, and their limits."""


@dataclass
class KeyRing:
    """Key checks for the gateway. Known keys are answered from memory; a miss is looked up in a
    thread, so no request ever waits on the store on the event loop.
    """

    store: KeyAndLimitStore
    clock: Callable[[], float] = time.monotonic
    # Both caches are keyed by the presented key (memory only; the store keeps hashes alone).
    _known: dict[str, tuple[Caller, float]] = field(default_factory=dict)  # key -> (caller, expires)
    _unknown: dict[str, float] = field(default_factory=dict)  # key -> expires

    def create(
        self, scopes: list[str], description: str = "", limits: KeyLimits | None = None
    ) -> tuple[KeyRecord, str]:
        key_id, key = new_key()
        record = self.store.add_key(key_id, hash_key(key), check_scopes(scopes), description)
        if limits is not None and not limits.empty:
            self.store.set_key_limits(key_id, limits.to_json())
            record = msgspec.structs.replace(record, limits=limits.to_json())
        return record, key

    def set_limits(self, key_id: str, limits: KeyLimits) -> bool:
        """Replace a key's limits; they apply to its next request (False: no active key ``key_id``)."""
        changed = self.store.set_key_limits(key_id, limits.to_json())
        self._known.clear()
        return changed

    def revoke(self, key_id: str) -> bool:
        revoked = self.store.revoke_key(key_id)
        self._known.clear()
        return revoked

    def forget(self, key_id: str) -> None:
        """Drop the cached lookups of ``key_id``: another gateway changed it (tidal.cluster.changes)."""
        for key, (caller, _) in list(self._known.items()):
            if caller.key_id == key_id:
                self._known.pop(key, None)

    async def identify(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` header names: a known key, an unknown one, or nobody."""
        key = bearer_token(authorization)
        if key is None:
            return UNKNOWN_KEY if authorization else ANONYMOUS
        now = self.clock()
        known = self._known.get(key)  # by the key itself: a hit costs no hashing
        if known is not None and known[1] > now:
            return known[0]
        if self._unknown.get(key, 0.0) > now:
            return UNKNOWN_KEY
        record = await asyncio.to_thread(self.store.key_by_hash, hash_key(key))
        if record is None or record.revoked_at is not None:
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown.clear()
            self._unknown[key] = now + UNKNOWN_KEY_TTL_S
            self._known.pop(key, None)
            return UNKNOWN_KEY
        caller = Caller(record.id, frozenset(record.scopes), presented=True, limits=_limits_of(record))
        self._known[key] = (caller, now + KNOWN_KEY_TTL_S)
        self._unknown.pop(key, None)
        return caller

    def ensure_admin_key_file(self, state_dir: Path) -> Path:
        """Create ``<state-dir>/admin.key`` (mode 0600) holding a fresh admin key, once."""
        path = state_dir / ADMIN_KEY_FILE
        if path.exists():
            known = self.store.key_by_hash(hash_key(path.read_text().strip()))
            if known is not None and known.revoked_at is None:
                return path
        _, key = self.create(["admin"], "admin key of `tidal up`")
        self._unknown.clear()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(key + "\n")
        os.chmod(path, 0o600)
        return path


def _limits_of(record: KeyRecord) -> KeyLimits | None:
    try:
        limits = limits_from_json(record.limits)
    except (ValueError, KeyError, TypeError):  # written by tidal alone: only a hand-edited row gets here
        return None
    return None if limits.empty else limits
