"""The autoscaler's arithmetic on a virtual clock: bursts, ramps, silences. No sleeping."""

from __future__ import annotations

from tidal.autoscale.decider import DeciderState, Decision, Sample, decide, wish
from tidal.spec import FunctionSpec


def spec(**fields: object) -> FunctionSpec:
    return FunctionSpec.model_validate({"name": "f", "max_instances": 100, **fields})


class Clock:
    """Feeds one sample a second and applies each decision as if instances started at once."""

    def __init__(self, function: FunctionSpec, ready: int = 0) -> None:
        self.spec, self.ready, self.now = function, ready, 0.0
        self.samples: list[Sample] = []
        self.state = DeciderState()
        self.decisions: list[Decision] = []

    def run(self, seconds: int, in_flight: float) -> Decision:
        for _ in range(seconds):
            self.now += 1.0
            self.samples.append((self.now, in_flight))
            self.samples = [s for s in self.samples if s[0] > self.now - self.spec.stable_window]
            decision, self.state = decide(self.now, self.samples, self.ready, self.spec, self.state)
            self.decisions.append(decision)
            self.ready = decision.desired
        return self.decisions[-1]


def test_wish_is_demand_over_target() -> None:
    assert wish(3.5, 0.7) == 5 and wish(0.7, 0.7) == 1 and wish(0.0, 0.7) == 0


def test_no_samples_holds_the_current_count() -> None:
    decision, _ = decide(10.0, [], 3, spec(), DeciderState())
    assert decision.desired == 3 and decision.reason == "no samples yet"


def test_steady_load_settles_on_demand_over_target() -> None:
    clock = Clock(spec(concurrency=10))  # target 7 per instance
    assert clock.run(120, in_flight=35).desired == 5
    assert not clock.decisions[-1].panic


def test_burst_enters_panic_and_scales_at_once() -> None:
    clock = Clock(spec(concurrency=1), ready=1)  # target 1
    clock.run(60, in_flight=1)
    burst = clock.run(1, in_flight=40)
    # The 6 s panic window averages (5 x 1 + 40) / 6 = 7.5 >= 2 x capacity: panic, 8 instances now.
    assert burst.panic and burst.desired == 8
    assert clock.run(5, in_flight=40).desired == 40


def test_panic_never_scales_down_until_a_calm_stable_window() -> None:
    clock = Clock(spec(concurrency=1, scale_to_zero_after=600))
    clock.run(10, in_flight=30)  # over threshold only at t=1 (30 ready from then on): panic since t=1
    peak = clock.ready
    assert peak == 30
    after = [clock.run(1, in_flight=2) for _ in range(49)]  # t = 11 .. 59
    assert all(d.desired == peak and d.panic for d in after), "scaled down while in panic"
    calm = clock.run(3, in_flight=2)  # t = 62: a full stable window since the last panic moment
    assert not calm.panic and calm.desired < peak


def test_scale_down_is_rate_limited() -> None:
    clock = Clock(spec(concurrency=1, scale_to_zero_after=600, panic_threshold=100))
    clock.run(120, in_flight=40)
    assert clock.ready == 40
    clock.run(61, in_flight=0.5)
    # Each decision halves at most (max_scale_down_rate 2): 40 -> 20 -> 10 ... never straight to 1.
    downs = [d.desired for d in clock.decisions[-61:]]
    assert all(b >= a // 2 for a, b in zip([40, *downs], downs, strict=False))
    assert clock.ready == 1


def test_scale_down_delay_keeps_the_recent_peak() -> None:
    function = spec(concurrency=1, scale_down_delay=30, stable_window=6, panic_window=6, panic_threshold=100,
                    scale_to_zero_after=600)  # fmt: skip
    clock = Clock(function)
    clock.run(10, in_flight=10)
    clock.run(20, in_flight=1)
    assert clock.ready == 10  # the wish of t=10 holds until t=40
    clock.run(15, in_flight=1)
    assert clock.ready <= 5
    clock.run(120, in_flight=1)
    assert clock.ready == 1


def test_idle_function_scales_to_zero_after_its_period() -> None:
    clock = Clock(spec(scale_to_zero_after=2))
    clock.run(5, in_flight=1)
    assert clock.ready == 1
    assert clock.run(1, in_flight=0).desired == 1
    gone = clock.run(1, in_flight=0)
    assert gone.desired == 0 and "scale to zero" in gone.reason


def test_default_keeps_an_instance_for_60_idle_seconds() -> None:
    clock = Clock(spec())
    clock.run(3, in_flight=1)
    assert clock.run(59, in_flight=0).desired == 1
    assert clock.run(1, in_flight=0).desired == 0


def test_bounds_win() -> None:
    clock = Clock(spec(min_instances=2, max_instances=4))
    assert clock.run(30, in_flight=0).desired == 2
    assert clock.run(30, in_flight=50).desired == 4


def test_first_request_to_zero_instances_wants_one() -> None:
    decision, _ = decide(1.0, [(1.0, 1.0)], 0, spec(), DeciderState())
    assert decision.desired == 1


def test_ramp_is_followed_step_by_step_without_panic() -> None:
    clock = Clock(spec(concurrency=10, scale_to_zero_after=600))  # target 7 per instance
    clock.run(10, in_flight=7)
    wishes = []
    for level in range(1, 41):  # +0.5 in flight a second: a slow ramp from 7.5 to 27
        wishes.append(clock.run(1, in_flight=7 + level * 0.5).desired)
    assert wishes == sorted(wishes), "a rising load never scales down"
    assert not any(decision.panic for decision in clock.decisions)
    assert wishes[-1] == 3  # the 60 s average lags the ramp: about 14.8 in flight / 7
    assert clock.run(60, in_flight=27).desired == 4  # ceil(27 / 7) once the window holds only the top
