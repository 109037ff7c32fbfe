"""Key checks never wait on the store for a known key, and a flood of bad keys costs few lookups."""

from __future__ import annotations

import time

from tidal.auth.keys import ANONYMOUS, UNKNOWN_KEY, UNKNOWN_KEY_TTL_S, KeyRing, hash_key
from tidal.store.models import KeyRecord


class CountingKeys:
    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.lookups = 0

    def add_key(self, key_id: str, key_hash: str, scopes: list[str], description: str = "") -> KeyRecord:
        self.records[key_hash] = KeyRecord(key_id, scopes, time.time(), description)
        return self.records[key_hash]

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        return self.records.get(key_hash)

    def list_keys(self) -> list[KeyRecord]:
        return list(self.records.values())

    def revoke_key(self, key_id: str) -> bool:
        for key_hash, record in self.records.items():
            if record.id == key_id:
                self.records[key_hash] = KeyRecord(
                    record.id, record.scopes, record.created_at, "", time.time()
                )
                return True
        return False


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_known_keys_are_answered_from_memory_and_revocation_is_immediate() -> None:
    store, clock = CountingKeys(), Clock()
    ring = KeyRing(store, clock)
    record, key = ring.create(["invoke:embed"])
    caller = await ring.identify(f"Bearer {key}")
    assert (caller.key_id, caller.may_invoke("embed"), caller.may_invoke("other")) == (record.id, True, False)
    for _ in range(100):
        assert await ring.identify(f"Bearer {key}") is caller
    assert store.lookups == 1
    assert ring.revoke(record.id)
    assert await ring.identify(f"Bearer {key}") is UNKNOWN_KEY, "this gateway's own revocation is immediate"


async def test_unknown_keys_cost_one_lookup_per_ttl() -> None:
    store, clock = CountingKeys(), Clock()
    ring = KeyRing(store, clock)
    for _ in range(1000):
        assert await ring.identify("Bearer tidal_nope_nope") is UNKNOWN_KEY
    assert store.lookups == 1
    clock.now += UNKNOWN_KEY_TTL_S + 0.1
    await ring.identify("Bearer tidal_nope_nope")
    assert store.lookups == 2
    assert await ring.identify(None) is ANONYMOUS
    assert await ring.identify("Basic abc") is UNKNOWN_KEY
    assert not (await ring.identify("Basic abc")).authenticated


async def test_a_key_created_elsewhere_is_found_after_the_miss_expires() -> None:
    store, clock = CountingKeys(), Clock()
    ring = KeyRing(store, clock)
    assert await ring.identify("Bearer tidal_late_key") is UNKNOWN_KEY
    store.add_key("late", hash_key("tidal_late_key"), ["admin"])  # another gateway sharing the store
    assert await ring.identify("Bearer tidal_late_key") is UNKNOWN_KEY
    clock.now += UNKNOWN_KEY_TTL_S + 0.1
    assert (await ring.identify("Bearer tidal_late_key")).may("admin")
