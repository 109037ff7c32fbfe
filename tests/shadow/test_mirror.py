"""Shadow copies through the invocation core: real instance processes, no HTTP.

The primary answers {"y": 2x}; one candidate adds 1 when x is odd (so exactly half disagree),
another raises on every call. Clients must only ever see the primary's answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tidal.backends.local import LocalBackend
from tidal.invoke.core import Invoker
from tidal.invoke.outcome import Outcome, OutcomeKind
from tidal.invoke.request import InvocationRequest, Trigger
from tidal.router.router import Router, ServingTarget, ShadowServing, ShadowTarget, Target
from tidal.shadow.compare import parse_comparator
from tidal.shadow.mirror import Mirror, copy_of
from tidal.spec import validate_spec
from tidal.store.models import Activation, Revision, ShadowResult

PRIMARY = """
import tidal

@tidal.function(name="shadowed", concurrency=50)
def shadowed(payload):
    return {"y": 2 * payload["x"]}
"""
ODD_DIFFERS = PRIMARY.replace('{"y": 2 * payload["x"]}', '{"y": 2 * payload["x"] + payload["x"] % 2}')
RAISES = PRIMARY.replace('return {"y": 2 * payload["x"]}', 'raise RuntimeError("candidate broke")')


class Sink:
    def __init__(self) -> None:
        self.results: list[ShadowResult] = []
        self.skips: list[str] = []

    def add(self, result: ShadowResult) -> None:
        self.results.append(result)

    def skip(self, function: str, revision: str, reason: str, at: float) -> None:
        self.skips.append(reason)


def revision(number: int) -> Revision:
    spec = validate_spec({"name": "shadowed", "timeout": 10, "concurrency": 50}).revision_fields()
    return Revision(f"shadowed-{number:05d}", "shadowed", number, "d", f"c{number}", "core", "shadowed", False,
                    "native", spec, time.time())  # fmt: skip


class Setup:
    def __init__(self, tmp_path: Path, router: Router, invoker: Invoker, sink: Sink) -> None:
        self.tmp_path, self.router, self.invoker, self.sink = tmp_path, router, invoker, sink
        self.records: list[Activation] = []

    def code(self, number: int, source: str) -> str:
        folder = self.tmp_path / f"code{number}"
        folder.mkdir(exist_ok=True)
        (folder / "core.py").write_text(source)
        return str(folder)

    def serve(self, candidate: int | None, source: str = "", percent: int = 100, cap: int = 50) -> None:
        shadow = None
        if candidate is not None:
            comparator = parse_comparator("exact")
            shadow = ShadowServing(
                revision(candidate), self.code(candidate, source), percent, comparator, cap
            )
        self.router.serve("shadowed", True, [ServingTarget(revision(1), self.code(1, PRIMARY))], shadow)

    async def call(self, x: int) -> Outcome:
        return await self.invoker.invoke(InvocationRequest("shadowed", msgspec.json.encode({"x": x})))


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    backend = LocalBackend(tmp_path / "state")
    router = Router(backend)
    sink = Sink()
    records: list[Activation] = []
    invoker = Invoker(router, records.append)
    invoker.mirror = Mirror(invoker, sink)
    ready = Setup(tmp_path, router, invoker, sink)
    ready.records = records
    try:
        yield ready
    finally:
        await router.close()
        await invoker.mirror.close()
        await backend.close()


async def test_a_candidate_differing_on_odd_inputs_disagrees_on_exactly_half(setup: Setup) -> None:
    setup.serve(candidate=2, source=ODD_DIFFERS)
    outcomes = [await setup.call(x) for x in range(20)]
    assert setup.invoker.mirror is not None
    await setup.invoker.mirror.settled()

    assert [msgspec.json.decode(outcome.body) for outcome in outcomes] == [{"y": 2 * x} for x in range(20)]
    assert {outcome.revision for outcome in outcomes} == {"shadowed-00001"}
    results = setup.sink.results
    assert len(results) == 20 and setup.sink.skips == []
    disagreed = {result.activation for result in results if result.verdict == "disagree"}
    odd = {outcome.activation for x, outcome in enumerate(outcomes) if x % 2}
    assert disagreed == odd, "exactly the odd inputs disagree"
    example = next(result for result in results if result.verdict == "disagree")
    assert example.detail.startswith("$.y: ") and example.revision == "shadowed-00002"
    copies = [record for record in setup.records if record.trigger == "shadow"]
    assert len(copies) == 20 and {record.revision for record in copies} == {"shadowed-00002"}
    assert {record.key_id for record in copies} == {"platform"}, "copies are not billed to the client's key"
    assert {result.candidate_activation for result in results} == {record.id for record in copies}


async def test_the_client_never_sees_the_candidates_errors(setup: Setup) -> None:
    setup.serve(candidate=3, source=RAISES)
    outcomes = [await setup.call(x) for x in range(10)]
    assert setup.invoker.mirror is not None
    await setup.invoker.mirror.settled()

    assert all(outcome.kind is OutcomeKind.OK for outcome in outcomes)
    assert [msgspec.json.decode(outcome.body)["y"] for outcome in outcomes] == [2 * x for x in range(10)]
    assert [result.verdict for result in setup.sink.results] == ["error"] * 10
    assert setup.sink.results[0].detail == "RuntimeError: candidate broke"
    failed = [record for record in setup.records if record.trigger == "shadow"]
    assert len(failed) == 10 and {record.status for record in failed} == {"error"}


async def test_stopping_the_shadow_stops_copies_and_retires_the_candidates_pool(setup: Setup) -> None:
    setup.serve(candidate=2, source=ODD_DIFFERS)
    await setup.call(1)
    assert setup.invoker.mirror is not None
    await setup.invoker.mirror.settled()
    assert len(setup.sink.results) == 1
    assert "shadowed-00002" in {pool.revision.id for pool in setup.router.pools()}

    setup.serve(candidate=None)
    for x in range(5):
        await setup.call(x)
    await setup.invoker.mirror.settled()

    assert len(setup.sink.results) == 1, "no copy after the shadow stopped"
    assert {pool.revision.id for pool in setup.router.pools()} == {"shadowed-00001"}
    await setup.router.drained()  # the candidate's pool drained and released its instances


# -- the mirror alone, with an invoker that answers when told (deterministic) --------------------------


class HeldInvoker:
    """Holds every copy until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.requests: list[InvocationRequest] = []

    async def invoke_target(
        self, request: InvocationRequest, target: Target, reroute: bool = True
    ) -> Outcome:
        assert not reroute, "a copy must never be rerouted to the primary"
        self.requests.append(request)
        await self.release.wait()
        return Outcome(OutcomeKind.OK, b'{"y": 1}', activation="cand")


def shadow_target(percent: int = 100, cap: int = 2) -> ShadowTarget:
    pool: Any = object()
    target = Target(revision(2), validate_spec({"name": "shadowed"}), pool, 0)
    return ShadowTarget(target, percent, parse_comparator("exact"), cap)


def primary_target() -> Target:
    pool: Any = object()
    return Target(revision(1), validate_spec({"name": "shadowed"}), pool, 100)


async def test_copies_beyond_the_cap_are_dropped_and_failed_or_streamed_calls_are_not_copied() -> None:
    held, sink = HeldInvoker(), Sink()
    mirror = Mirror(held, sink)  # type: ignore[arg-type]
    request = InvocationRequest("shadowed", b'{"x": 1}')
    answered = Outcome(OutcomeKind.OK, b'{"y": 1}', activation="prim")
    for _ in range(5):
        mirror.offer(shadow_target(cap=2), request, primary_target(), answered)
    mirror.offer(shadow_target(), request, primary_target(), Outcome.error(OutcomeKind.FUNCTION_ERROR, "x"))
    streamed = Outcome(OutcomeKind.OK, stream=object())  # type: ignore[arg-type]
    mirror.offer(shadow_target(), request, primary_target(), streamed)
    await asyncio.sleep(0)

    assert mirror.in_flight["shadowed"] == 2 and len(held.requests) == 2
    assert sink.skips == ["dropped"] * 3 + ["primary_failed", "streamed"]
    held.release.set()
    await mirror.settled()
    assert [result.verdict for result in sink.results] == ["agree", "agree"] and mirror.in_flight[
        "shadowed"
    ] == 0


async def test_the_percent_samples_by_the_draw() -> None:
    held, sink = HeldInvoker(), Sink()
    held.release.set()
    draws = iter([0.05, 0.19, 0.2, 0.5, 0.99])
    mirror = Mirror(held, sink, draw=lambda: next(draws))  # type: ignore[arg-type]
    answered = Outcome(OutcomeKind.OK, b'{"y": 1}', activation="prim")
    for _ in range(5):
        mirror.offer(
            shadow_target(percent=20, cap=10), InvocationRequest("shadowed"), primary_target(), answered
        )
    await mirror.settled()
    assert len(sink.results) == 2, "draws below 0.2 are copied at 20%"


def test_a_copy_is_pinned_to_the_candidate_made_by_the_platform() -> None:
    request = InvocationRequest("shadowed", b"{}", timeout_s=0.5)
    request.context.headers["x-tidal-key"] = "user-7"
    copy = copy_of(request, "shadowed-00002", at=123.0)
    assert (copy.trigger, copy.caller.key_id, copy.context.revision) == (
        Trigger.SHADOW,
        "platform",
        "shadowed-00002",
    )
    assert (copy.body, copy.received_at, copy.timeout_s) == (b"{}", 123.0, None)
    assert copy.context.headers == {"x-tidal-key": "user-7"}
