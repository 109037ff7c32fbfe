"""The live keep-alive's pure parts on a virtual clock: phases of the windows, the decider's
keep-alive stage, and the keeper (learning, deciding, unloading templates, saving) with fakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from conftest import activation
from tidal.autoscale.decider import DeciderState, KeepAliveWish, decide
from tidal.backends.base import InstanceSpec
from tidal.keepalive.keeper import KeepAliveKeeper
from tidal.keepalive.live import Phase, live_state
from tidal.keepalive.policy import Windows, clock
from tidal.router.pool import RevisionPool
from tidal.spec import FunctionSpec

PREWARMING = Windows(3.6, 5.5, "histogram", "12 idle times, CV 7.7: pre-warm at 3.6s, keep until 5.5s")
KEEPING = Windows(0.0, 300.0, "fixed", "fixed keep-alive: keep loaded 5m after each call")


# -- phases --------------------------------------------------------------------------------------


def test_phases_follow_the_windows_from_the_end_of_the_last_call() -> None:
    phases = [live_state(now, 100.0, False, PREWARMING, "hybrid") for now in (100.5, 104.0, 106.0)]
    assert [state.phase for state in phases] == [Phase.UNLOADED, Phase.PREWARMED, Phase.ENDED]
    assert [state.wish.action if state.wish else None for state in phases] == ["unload", "prewarm", "unload"]
    assert [state.drop_template for state in phases] == [True, False, True]
    assert [state.next_edge for state in phases] == [103.6, 105.5, None]
    assert phases[1].wish is not None
    assert phases[1].wish.reason == "pre-warm: hybrid expects the next call in ~3.6s-5.5s after the last one"
    assert phases[2].wish is not None and phases[2].wish.reason.startswith(
        "keep-alive ended: no call for 5.5s"
    )


def test_without_a_prewarm_what_is_loaded_stays_until_the_window_ends() -> None:
    kept = live_state(200.0, 100.0, False, KEEPING, "fixed:5m")
    assert kept.phase is Phase.KEPT and kept.wish == KeepAliveWish(
        "hold", "keep-alive: fixed:5m keeps it until 5m after the last call"
    )
    assert not kept.drop_template and kept.next_edge == 400.0
    assert live_state(400.0, 100.0, False, KEEPING, "fixed:5m").phase is Phase.ENDED


def test_a_call_in_flight_or_none_yet_leaves_the_autoscaler_alone() -> None:
    assert live_state(101.0, 100.0, True, PREWARMING, "hybrid").wish is None
    assert live_state(101.0, None, False, PREWARMING, "hybrid").phase is Phase.NO_CALL


@pytest.mark.parametrize(("seconds", "text"), [(3.6, "3.6s"), (270, "4m30s"), (600, "10m"), (5400, "1h30m")])
def test_durations_read_as_people_write_them(seconds: float, text: str) -> None:
    assert clock(seconds) == text


# -- the decider's keep-alive stage ---------------------------------------------------------------

SPEC = FunctionSpec(name="f", scale_to_zero_after=60)
BUSY_A_MOMENT_AGO = [(0.0, 0.0), (1.0, 0.3), (2.0, 0.0)]  # the stable window still averages 0.1


def test_unload_drops_to_zero_though_the_stable_window_still_averages_demand() -> None:
    without, _ = decide(2.0, BUSY_A_MOMENT_AGO, 1, SPEC, DeciderState())
    assert without.desired == 1  # today: kept until scale_to_zero_after
    wish = KeepAliveWish("unload", "keep-alive: unload after the call")
    decision, _ = decide(2.0, BUSY_A_MOMENT_AGO, 1, SPEC, DeciderState(), wish)
    assert (decision.desired, decision.reason) == (0, "keep-alive: unload after the call")


def test_prewarm_starts_one_instance_from_zero() -> None:
    idle = [(10.0, 0.0), (11.0, 0.0)]
    decision, _ = decide(11.0, idle, 0, SPEC, DeciderState(), KeepAliveWish("prewarm", "pre-warm: soon"))
    assert (decision.desired, decision.reason) == (1, "pre-warm: soon")


def test_hold_keeps_the_last_instance_past_scale_to_zero_after_but_starts_none() -> None:
    idle = [(100.0, 0.0), (101.0, 0.0)]
    state = DeciderState(last_active=1.0)  # 100 s ago: scale_to_zero_after (60 s) has passed
    assert decide(101.0, idle, 1, SPEC, state)[0].desired == 0
    held, _ = decide(101.0, idle, 1, SPEC, state, KeepAliveWish("hold", "keep-alive: kept"))
    assert (held.desired, held.reason) == (1, "keep-alive: kept")
    assert decide(101.0, idle, 0, SPEC, state, KeepAliveWish("hold", "keep-alive: kept"))[0].desired == 0


def test_min_instances_wins_over_an_unload() -> None:
    spec = FunctionSpec(name="f", min_instances=2)
    decision, _ = decide(2.0, BUSY_A_MOMENT_AGO, 2, spec, DeciderState(), KeepAliveWish("unload", "x"))
    assert decision.desired == 2


# -- the keeper, with a fake store, backend and pools --------------------------------------------


@dataclass
class FakeStore:
    saved: dict[str, str] = field(default_factory=dict)
    saves: int = 0

    def idle_histograms(self) -> dict[str, str]:
        return dict(self.saved)

    def save_idle_histograms(self, states: Mapping[str, str], at: float) -> None:
        self.saved.update(states)
        self.saves += 1


@dataclass
class FakeTemplates:
    loaded: set[str] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)

    def template_of(self, launch: InstanceSpec) -> dict[str, object] | None:
        return {"pid": 1} if launch.revision.id in self.loaded else None

    async def drop_template(self, launch: InstanceSpec) -> bool:
        self.loaded.discard(launch.revision.id)
        self.dropped.append(launch.revision.id)
        return True


def fake_pool(function: str, size: int = 0, in_flight: int = 0) -> Any:
    revision = SimpleNamespace(function=function, id=f"{function}-00001")
    return SimpleNamespace(
        revision=revision, launch=SimpleNamespace(revision=revision), size=size, waiters=[],
        meter=SimpleNamespace(count=in_flight),
    )  # fmt: skip


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def keeper_of(
    pools: list[Any], clock_: Clock, store: FakeStore | None = None
) -> tuple[KeepAliveKeeper, list[int]]:
    pokes: list[int] = []
    keeper = KeepAliveKeeper(
        store or FakeStore(), FakeTemplates({"p-00001"}), lambda: cast(list[RevisionPool], pools),
        lambda: pokes.append(1), clock_,
    )  # fmt: skip
    return keeper, pokes


def call(
    keeper: KeepAliveKeeper, number: int, start: float, function: str = "p", trigger: str = "http"
) -> None:
    record = activation(number, start, function)  # lasts 1 ms
    record.trigger = trigger
    keeper.observe(record)


async def test_the_keeper_learns_idle_times_between_calls_that_do_not_overlap() -> None:
    pool = fake_pool("p", size=1)
    keeper, _ = keeper_of([pool], Clock(0.0))
    keeper.configure("p", "hybrid:bin=1s,range=1m,min_samples=3")
    for number, start in enumerate((0.0, 10.0, 20.0, 30.0)):  # idle ~10 s each
        call(keeper, number, start)
    call(keeper, 9, 29.0)  # started before the previous call ended: overlapping, not learned
    pool.meter.count = 1
    await keeper.step()  # the loop notes the pools (the meter then counts calls in flight)
    call(keeper, 12, 35.0)  # ended while another call is in flight: overlapping, not learned
    pool.meter.count = 0
    call(keeper, 10, 40.0, trigger="shadow")  # a shadow copy is no call of the function
    call(keeper, 11, 1.0, function="other")  # a function with no policy learns nothing
    info = keeper.describe("p")
    assert info is not None and info["samples"] == 3 and info["mode"] == "histogram", info
    assert info["last_call_end"] == pytest.approx(35.001)
    # idle 9.999 s: bin [9, 10); pre-warm at its lower edge less 10%, keep until its upper edge plus 10%
    assert info["prewarm_s"] == pytest.approx(9 * 0.9) and info["keep_alive_s"] == pytest.approx(10 * 1.1)
    assert keeper.describe("other") is None


async def test_the_keeper_unloads_prewarms_and_pokes_the_autoscaler_at_the_edges() -> None:
    pool, now = fake_pool("p", size=0), Clock(0.0)
    keeper, pokes = keeper_of([pool], now)
    keeper.configure("p", "hybrid:bin=1s,range=1m,min_samples=3")
    for number in range(4):
        now.now = number * 10.0
        call(keeper, number, now.now)
    assert not pokes  # no pre-warm learned yet when these calls ended
    now.now = 31.0
    edge = await keeper.step()  # folds the idle times: unloaded until the pre-warm at 30 + 8.1 s
    assert edge == pytest.approx(30.001 + 8.1)
    assert pokes and cast(FakeTemplates, keeper.templates).dropped == ["p-00001"]
    assert keeper.wish(pool) == KeepAliveWish(
        "unload", "keep-alive: unload after the call; hybrid pre-warms 8.1s after it"
    )
    now.now = 39.0
    pokes.clear()
    await keeper.step()
    prewarm = keeper.wish(pool)
    assert pokes and prewarm is not None and prewarm.action == "prewarm"
    call(keeper, 5, 40.0)  # the next call: learned, and the autoscaler is told at once
    assert len(pokes) == 2
    pool.meter.count = 1  # a call in flight: no wish
    assert keeper.wish(pool) is None


async def test_the_keeper_saves_changed_states_in_batches_and_a_new_one_starts_from_them() -> None:
    store, now = FakeStore(), Clock(100.0)
    keeper, _ = keeper_of([], now, store)
    keeper.configure("p", "hybrid:bin=1s,range=1m")
    for number in range(3):
        call(keeper, number, 100.0 + number * 5)
    await keeper.flush()
    await keeper.flush()  # nothing changed since: nothing written
    assert store.saves == 1 and set(store.saved) == {"p"}

    restarted, _ = keeper_of([], now, store)
    restarted.load()
    restarted.configure("p", "hybrid:bin=1s,range=1m")
    info = restarted.describe("p")
    assert info is not None and info["samples"] == 2 and info["last_call_end"] == pytest.approx(110.001)
    restarted.configure("p", "hybrid:bin=2s,range=1m")  # other bins: learned again, the last end kept
    info = restarted.describe("p")
    assert info is not None and info["samples"] == 0 and info["last_call_end"] == pytest.approx(110.001)
    restarted.configure("p", None)  # the policy taken away: today's behaviour
    assert restarted.describe("p") is None and restarted.wish(fake_pool("p")) is None
    restarted.configure("p", "hybrid:bin=2s,range=1m")  # and given back: what it learned is kept
    info = restarted.describe("p")
    assert info is not None and info["last_call_end"] == pytest.approx(110.001)
    restarted.configure("p", None, stored=False)  # the function removed: what it learned goes too
    restarted.configure("p", "hybrid:bin=2s,range=1m")
    info = restarted.describe("p")
    assert info is not None and info["last_call_end"] is None and info["phase"] == "no call yet"
