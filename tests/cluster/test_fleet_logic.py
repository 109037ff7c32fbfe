"""The shared Ray fleet's decisions without Ray or PostgreSQL: the leader decides on the summed
demand, a follower follows the registered count, a removed instance is drained, one this gateway
just registered survives a read that predates it, and a pool gets each instance once."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

from tidal.backends.base import Capacity, InstanceHandle
from tidal.cluster.fleet import Fleet, row_handle, summed


def handle(instance: str, revision: str = "r1", started_at: float = 1.0) -> InstanceHandle:
    return InstanceHandle(
        instance, revision, f"tcp:10.0.0.1:{len(instance)}", Capacity(0.25, 128), started_at
    )


class Pool:
    def __init__(self, revision: str, ready: list[str]) -> None:
        self.revision = SimpleNamespace(id=revision)
        self.ready = [self._client(instance) for instance in ready]
        self.retired: list[str] = []
        self.closed: list[str] = []

    def _client(self, instance: str) -> SimpleNamespace:
        return SimpleNamespace(
            id=instance, handle=handle(instance), close=lambda: self.closed.append(instance)
        )

    def _retire(self, client: Any) -> None:
        self.retired.append(client.id)
        self.ready.remove(client)


def fleet(pools: list[Pool], leader: bool) -> Fleet:
    inner = SimpleNamespace(on_exit=lambda _: None)
    lease = SimpleNamespace(leader=leader)
    fleet = Fleet(inner, "postgresql://x", "g1", lease, lambda: pools, lambda: None)  # type: ignore[arg-type, return-value]
    fleet.adopted = True
    return fleet


def test_the_leader_decides_on_the_sum_and_a_follower_follows_the_fleet() -> None:
    assert summed(1.5, {"r1": 2.0}, "r1") == 3.5 and summed(1.5, {"r1": 2.0}, "r2") == 1.5
    pool = Pool("r1", [])
    for leader in (True, False):
        shared = fleet([pool], leader)
        shared.others = {"r1": 2.0}
        shared.registered = {"a": handle("a"), "b": handle("b"), "c": handle("c", "r2")}
        assert shared.demand(pool, 1.0) == 3.0  # type: ignore[arg-type]
        assert shared.follows(pool) == (None if leader else 2)  # type: ignore[arg-type]


def test_removed_instances_are_drained_and_fresh_ones_kept() -> None:
    async def scenario() -> None:
        pool = Pool("r1", ["a", "b", "mine", "gone"])
        shared = fleet([pool], leader=True)
        shared.registered = {i: handle(i) for i in ("a", "b", "mine", "gone")}
        shared._fresh["mine"] = time.monotonic()  # registered here a moment ago
        shared.apply([handle("a"), handle("new")], {"gone": "n1"})  # b removed, gone's node lost
        assert pool.retired == ["b"]  # drained: its calls finish
        assert pool.closed == ["gone"] and pool.ready[-1].handle.extra["lost"] == "node n1 lost"
        assert set(shared.registered) == {"a", "mine", "new"}
        # Each instance goes to a pool once: the oldest free one first.
        shared.registered["old"] = handle("old", started_at=0.5)
        shared.claimed = {"a", "mine"}
        assert shared._free("r1") is shared.registered["old"]

    asyncio.run(scenario())


def test_a_row_becomes_the_handle_the_leader_registered() -> None:
    extra = json.dumps({"pid": 42, "log_path": "/n/log", "extra": {"cold_start_detail": "fork"}})
    got = row_handle(("i1", "r1", "tcp:10.0.0.2:4000", "node-a", 5.0, extra))
    assert (got.id, got.revision, got.address, got.pid, got.log_path) == (
        "i1",
        "r1",
        "tcp:10.0.0.2:4000",
        42,
        "/n/log",
    )
    assert got.extra == {"cold_start_detail": "fork", "node": "node-a"}
