"""The rollout loop over a real SQLite store, with a virtual clock and a recording publish."""

from __future__ import annotations

import msgspec
import pytest

from conftest import activation
from tidal.rollout.controller import TRAFFIC_OUTSIDE, RolloutController, RolloutError, RolloutPlan
from tidal.rollout.policy import Thresholds
from tidal.store import Revision, SQLiteStore, TrafficTarget, revision_digest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def add_revision(store: SQLiteStore, code: str, serve: bool) -> None:
    spec: dict[str, object] = {"name": "echo"}
    digest = revision_digest(code, "echo", "handler", False, "native", spec)
    store.add_revision(
        Revision("", "echo", 0, digest, code, "echo", "handler", False, "native", spec, 1.0), serve=serve
    )


def calls(store: SQLiteStore, revision: str, at: float, ok: int, errors: int = 0) -> None:
    base = len(store.activations("echo", limit=100_000))
    store.add_activations(
        msgspec.structs.replace(
            activation(base + number, at, "echo"), revision=revision, status="ok" if number < ok else "error"
        )
        for number in range(ok + errors)
    )


@pytest.fixture
def setup(store: SQLiteStore) -> tuple[SQLiteStore, RolloutController, Clock, list[str]]:
    add_revision(store, "code-1", serve=True)
    add_revision(store, "code-2", serve=False)
    clock, published = Clock(), []

    async def publish(function: str) -> None:
        published.append(function)

    async def flush() -> None:
        pass

    return store, RolloutController(store, publish, flush, clock=clock), clock, published


PLAN = RolloutPlan("echo-00002", (20, 50, 100), 10.0, Thresholds(0.01, None, 5))


def traffic(store: SQLiteStore) -> list[tuple[str, int]]:
    record = store.function("echo")
    assert record is not None
    return sorted((target.revision, target.percent) for target in record.traffic)


async def test_steps_wait_move_on_and_promote(setup) -> None:  # type: ignore[no-untyped-def]
    store, controller, clock, published = setup
    await controller.start("echo", PLAN)
    assert traffic(store) == [("echo-00001", 80), ("echo-00002", 20)] and published == ["echo"]

    clock.now = 1009.0
    await controller.tick()  # not due yet
    clock.now = 1011.0
    await controller.tick()
    await controller.tick()  # too few canary calls: one "wait" entry, not one per tick
    rollout = store.rollout("echo")
    assert rollout is not None and rollout.step == 0
    assert [d.verdict for d in store.rollout_decisions(rollout.id)] == ["start", "wait"]

    calls(store, "echo-00002", 1011.5, ok=5)
    calls(store, "echo-00001", 1011.5, ok=20)
    clock.now = 1012.0
    await controller.tick()
    rollout = store.rollout("echo")
    assert rollout is not None and (rollout.step, rollout.step_started_at) == (1, 1012.0)
    assert traffic(store) == [("echo-00001", 50), ("echo-00002", 50)]

    calls(store, "echo-00002", 1015.0, ok=5)  # the new step's window starts at 1012: these count
    clock.now = 1022.0
    await controller.tick()
    rollout = store.rollout("echo")
    assert rollout is not None and (rollout.state, rollout.finished_at) == ("promoted", 1022.0)
    assert traffic(store) == [("echo-00002", 100)]
    last = store.rollout_decisions(rollout.id)[-1]
    assert last.verdict == "promote" and last.canary["judged"] == 5 and last.stable["judged"] == 0


async def test_a_failing_canary_rolls_back_with_its_numbers(setup) -> None:  # type: ignore[no-untyped-def]
    store, controller, clock, _ = setup
    await controller.start("echo", PLAN)
    calls(store, "echo-00002", 1001.0, ok=8, errors=2)
    calls(store, "echo-00001", 1001.0, ok=40)
    clock.now = 1010.0
    await controller.tick()
    rollout = store.rollout("echo")
    assert rollout is not None and rollout.state == "rolled_back"
    assert rollout.reason.startswith("canary error rate 20.00% (2 of 10) is above the limit 1.00%")
    assert traffic(store) == [("echo-00001", 100)]
    assert store.rollout_decisions(rollout.id)[-1].canary["errors"] == 2


async def test_traffic_changed_outside_ends_the_rollout_and_stays(setup) -> None:  # type: ignore[no-untyped-def]
    store, controller, _, _ = setup
    await controller.start("echo", PLAN)
    store.set_traffic("echo", [TrafficTarget("echo-00002", 100)])  # a deploy, say
    await controller.tick()
    rollout = store.rollout("echo")
    assert rollout is not None and (rollout.state, rollout.reason) == ("aborted", TRAFFIC_OUTSIDE)
    assert traffic(store) == [("echo-00002", 100)]


async def test_start_and_abort_refusals(setup) -> None:  # type: ignore[no-untyped-def]
    _, controller, _, _ = setup
    with pytest.raises(RolloutError) as unknown:
        await controller.start("ghost", PLAN)
    assert unknown.value.status == 404
    with pytest.raises(RolloutError) as nothing:
        await controller.abort("echo")
    assert (nothing.value.status, str(nothing.value)) == (409, "no rollout of 'echo' is running")
    await controller.start("echo", PLAN)
    with pytest.raises(RolloutError) as twice:
        await controller.start("echo", PLAN)
    assert twice.value.status == 409 and twice.value.error_type == "RolloutRunning"
    aborted = await controller.abort("echo")
    assert (aborted.state, aborted.reason) == ("aborted", "aborted by hand")
