"""The invocation core driven with no HTTP at all, as async jobs and triggers will drive it:
real instance processes, real routing, one activation record per invocation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidal.auth.keys import PLATFORM, Caller
from tidal.backends.local import LocalBackend
from tidal.invoke.core import Invoker
from tidal.invoke.outcome import OutcomeKind
from tidal.invoke.request import InvocationRequest, RequestContext, Trigger
from tidal.router.router import Router, ServingTarget
from tidal.spec import validate_spec
from tidal.store.models import Activation, Revision

MODULE = """
import tidal

@tidal.function(name="core")
def core(payload):
    if payload.get("bad"):
        raise tidal.InputError("bad must be false")
    if payload.get("crash"):
        raise KeyError("crash")
    print("handled", payload.get("n"))
    return {"n": payload.get("n"), "doubled": 2 * payload.get("n", 0)}

@tidal.function(name="core_stream")
def core_stream(payload):
    for i in range(payload["n"]):
        yield {"i": i}
"""


def revision(name: str, number: int = 1) -> Revision:
    spec = validate_spec({"name": name, "timeout": 10}).revision_fields()
    return Revision(
        f"{name}-{number:05d}", name, number, "d", "c", "core", name, False, "native", spec, time.time()
    )


@pytest.fixture
async def invoker(tmp_path: Path) -> AsyncIterator[tuple[Invoker, list[Activation]]]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "core.py").write_text(MODULE)
    backend = LocalBackend(tmp_path / "state")
    router = Router(backend)
    router.serve("core", False, [ServingTarget(revision("core"), str(code))])
    router.serve("core_stream", True, [ServingTarget(revision("core_stream"), str(code))])
    records: list[Activation] = []
    try:
        yield Invoker(router, records.append), records
    finally:
        await router.close()
        await backend.close()


async def test_a_job_invocation_gives_a_typed_outcome_and_one_record(invoker) -> None:  # type: ignore[no-untyped-def]
    core, records = invoker
    caller = Caller("key123", frozenset({"invoke:core"}), presented=True)
    outcome = await core.invoke(InvocationRequest("core", b'{"n": 21}', caller=caller, trigger=Trigger.JOB))
    assert outcome.kind is OutcomeKind.OK and outcome.body == b'{"n":21,"doubled":42}'
    assert outcome.cold and outcome.revision == "core-00001" and outcome.activation
    (record,) = records
    assert (record.id, record.trigger, record.key_id, record.status) == (
        outcome.activation,
        "job",
        "key123",
        "ok",
    )
    assert record.logs == "handled 21\n" and record.billed_ms >= 1


async def test_refusals_and_errors_are_outcomes_not_exceptions(invoker) -> None:  # type: ignore[no-untyped-def]
    core, records = invoker
    anonymous = await core.invoke(InvocationRequest("core", b"{}"))
    assert anonymous.kind is OutcomeKind.UNAUTHENTICATED and not anonymous.activation
    missing = await core.invoke(InvocationRequest("nope", b"{}", caller=PLATFORM))
    assert missing.kind is OutcomeKind.NOT_FOUND
    malformed = await core.invoke(InvocationRequest("core", b'{"n": ', caller=PLATFORM))
    assert malformed.kind is OutcomeKind.BAD_INPUT and "malformed JSON" in malformed.message
    assert records == [], "nothing reached a revision, so nothing is billed"
    rejected = await core.invoke(
        InvocationRequest("core", b'{"bad": true}', caller=PLATFORM, trigger=Trigger.CRON)
    )
    assert (rejected.kind, rejected.http_status, rejected.message) == (
        OutcomeKind.INPUT_REJECTED, 422, "bad must be false"
    )  # fmt: skip
    assert not rejected.retryable
    crashed = await core.invoke(InvocationRequest("core", b'{"crash": true}', caller=PLATFORM))
    assert (crashed.kind, crashed.error_type, crashed.retryable) == (
        OutcomeKind.FUNCTION_ERROR,
        "KeyError",
        True,
    )
    assert [(r.status, r.http_status, r.trigger) for r in records] == [
        ("bad_input", 422, "cron"), ("error", 500, "http")
    ]  # fmt: skip
    unknown_tag = await core.invoke(
        InvocationRequest("core", b"{}", caller=PLATFORM, context=RequestContext(revision="canary"))
    )
    assert unknown_tag.kind is OutcomeKind.NOT_FOUND and "canary" in unknown_tag.message


async def test_remaining_time_is_capped_by_the_functions_timeout(invoker) -> None:  # type: ignore[no-untyped-def]
    core, _ = invoker
    outcome = await core.invoke(InvocationRequest("core", b'{"n": 1}', caller=PLATFORM, timeout_s=0.0))
    assert outcome.kind is OutcomeKind.TIMEOUT and outcome.retryable


async def test_streams_are_read_to_the_end_and_recorded_once(invoker) -> None:  # type: ignore[no-untyped-def]
    core, records = invoker
    outcome = await core.invoke(InvocationRequest("core_stream", b'{"n": 3}'))
    assert outcome.stream is not None
    chunks = [chunk async for chunk in outcome.stream]  # type: ignore[attr-defined]
    assert chunks == [b'{"i":0}\n', b'{"i":1}\n', b'{"i":2}\n']
    assert outcome.stream.outcome.kind is OutcomeKind.OK
    await asyncio.sleep(0)
    (record,) = records
    assert record.status == "ok" and record.id == outcome.activation


async def test_a_full_queue_is_counted_not_recorded(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "state", use_templates=False)
    router = Router(backend)
    spec = validate_spec({"name": "tight", "max_queue": 0}).revision_fields()  # nothing may wait
    tight = Revision("tight-00001", "tight", 1, "d", "c", "core", "core", False, "native", spec, time.time())
    router.serve("tight", True, [ServingTarget(tight, str(tmp_path))])
    records: list[Activation] = []
    rejections: list[tuple[str, float]] = []
    core = Invoker(router, records.append, lambda function, at: rejections.append((function, at)))
    try:
        request = InvocationRequest("tight", b"{}")
        outcome = await core.invoke(request)
        assert (outcome.kind, outcome.http_status, outcome.activation) == (OutcomeKind.QUEUE_FULL, 429, "")
        assert records == [], "a 429 leaves no activation row"
        assert rejections == [("tight", request.received_at)]
        route = router.route("tight")
        assert route is not None and route.primary.pool.counters.rejected == 1  # `instances.rejected`
    finally:
        await router.close()
        await backend.close()
