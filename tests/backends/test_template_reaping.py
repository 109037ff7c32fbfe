"""Templates on demand: the pure reaping decision on a virtual clock, then real templates reaped
and rebuilt at the backend level.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from backend_helpers import call, connect, gone, make_launch, template_pids, wait_until, write

from tidal.backends.base import COLD_START_DETAIL
from tidal.backends.local import LocalBackend
from tidal.backends.template_usage import (
    ColdStartDetail,
    cold_start_detail,
    memory_mb,
    parse_smaps_rollup,
    reap_tick_s,
    should_reap,
)
from tidal.cli import template_line
from tidal.gateway.invoke import tidal_headers
from tidal.invoke.outcome import Outcome, OutcomeKind

IDLE_S = 600.0

ECHO = """
import os

import tidal


@tidal.function
def echo(payload):
    return {"pid": os.getpid(), "ppid": os.getppid(), "payload": payload}
"""

SLOW_IMPORT = """
import time

import tidal

time.sleep(1.5)  # a template of this module stays "building" for a while


@tidal.function
def slow(payload):
    return payload
"""


# -- the decision, on a virtual clock -------------------------------------------------------------


def test_an_unused_template_is_reaped_once_its_idle_limit_has_passed() -> None:
    last_used = 1000.0
    assert not should_reap(last_used, last_used, 0, IDLE_S)
    assert not should_reap(last_used + IDLE_S, last_used, 0, IDLE_S)  # exactly at the limit: kept
    assert should_reap(last_used + IDLE_S + 0.1, last_used, 0, IDLE_S)
    assert should_reap(last_used + 10 * IDLE_S, last_used, 0, IDLE_S)


def test_a_template_with_live_instances_is_never_reaped() -> None:
    for hours in (1, 24, 24 * 30):
        assert not should_reap(1000.0 + hours * 3600, 1000.0, 1, IDLE_S)
    assert not should_reap(1e9, 0.0, 3, 0.0)  # not even with a zero limit


def test_a_zero_limit_reaps_as_soon_as_the_last_instance_is_gone() -> None:
    assert should_reap(5.001, 5.0, 0, 0.0) and not should_reap(5.0, 5.0, 0, 0.0)


def test_the_reaper_looks_a_quarter_of_the_limit_apart_within_bounds() -> None:
    assert reap_tick_s(600.0) == 5.0  # a 10 m limit: a template goes at most 5 s late
    assert reap_tick_s(1.0) == 0.25
    assert reap_tick_s(0.0) == 0.05


def test_how_a_cold_start_came_about() -> None:
    assert cold_start_detail("template", "42", 42) == ColdStartDetail.FORK == "fork"
    assert cold_start_detail("template", "42", None) == "template-built"  # none was ready
    assert cold_start_detail("template", "43", 42) == "template-built"  # replaced during the start
    assert cold_start_detail("spawn", None, 42) == "spawn"
    assert cold_start_detail(None, None, None) == "spawn"


def test_smaps_rollup_is_parsed_and_read(tmp_path: Path) -> None:
    text = "55d0-7ffd ---p 00000000 00:00 0    [rollup]\nRss:   20480 kB\nPss:   5120 kB\nLocked:  0 kB\n"
    assert parse_smaps_rollup(text) == {"Rss": 20480, "Pss": 5120, "Locked": 0}
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "smaps_rollup").write_text(text)
    assert memory_mb(7, tmp_path) == (20.0, 5.0)
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "status").write_text("Name:\tpython\nVmRSS:\t   10240 kB\n")
    assert memory_mb(8, tmp_path) == (10.0, None)  # no smaps_rollup: RSS from status, PSS unknown
    assert memory_mb(9, tmp_path) == (None, None)
    rss, _ = memory_mb(os.getpid())
    assert rss is not None and rss > 1


def test_the_cold_start_detail_header_only_on_cold_answers() -> None:
    cold = Outcome(OutcomeKind.OK, activation="a1", revision="r1", cold=True, cold_detail="template-built")
    assert (b"x-tidal-cold-start", b"1") in tidal_headers(cold)
    assert (b"x-tidal-cold-start-detail", b"template-built") in tidal_headers(cold)
    warm = Outcome(OutcomeKind.OK, activation="a2", revision="r1", cold_detail="fork")
    assert [name for name, _ in tidal_headers(warm)] == [
        b"x-tidal-revision", b"x-tidal-activation", b"x-tidal-cold-start"
    ]  # fmt: skip


def test_the_status_line_about_a_template() -> None:
    assert template_line(None).startswith("template: none kept")
    template = {"pid": 42, "rss_mb": 48.5, "pss_mb": 21.0, "built_at": 0.0, "instances": [],
                "idle_s": 12.3, "idle_limit_s": 600.0}  # fmt: skip
    line = template_line(template)
    assert "pid 42, 48.5 MB RSS (21.0 MB PSS), idle 12.3 s (stopped after 600 s)" in line
    assert "parent of 2 live instances" in template_line({**template, "instances": [7, 8]})
    assert "building" in template_line({**template, "built_at": None})


# -- real templates --------------------------------------------------------------------------------


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    local = LocalBackend(tmp_path / "state", template_idle_s=IDLE_S)
    yield local
    await local.close()


async def test_a_template_is_kept_while_used_reaped_when_not_and_rebuilt_on_demand(
    backend: LocalBackend, tmp_path: Path
) -> None:
    launch = make_launch("echo", "echo", write(tmp_path, "echo", ECHO))
    await backend.prepare(launch)
    await wait_until(lambda: backend.templates()[0]["state"] == "ready", 30, "the template")
    (first,) = await backend.start(launch)
    assert first.extra[COLD_START_DETAIL] == "fork"  # prepare built it ahead of the start
    client, _ = await connect(first)
    template_pid = (await call(client))["ppid"]

    later = time.monotonic() + 10 * IDLE_S
    assert await backend.reap_templates(now=later) == 0, "the parent of a live instance stays"
    (info,) = backend.templates()
    assert info["pid"] == template_pid and info["instances"] == [first.pid] and info["idle_s"] == 0.0

    client.close()
    await backend.stop(first)
    await wait_until(lambda: backend.templates()[0]["instances"] == [], what="the instance's exit report")
    assert await backend.reap_templates(now=time.monotonic() + IDLE_S / 2) == 0
    assert await backend.reap_templates(now=time.monotonic() + IDLE_S + 1) == 1
    assert backend.templates() == [] and backend.template_of(launch) is None
    await wait_until(lambda: gone(template_pid), what="the reaped template's exit")

    (rebuilt,) = await backend.start(launch)  # pays the template's import again
    assert rebuilt.extra["started_via"] == "template"
    assert rebuilt.extra[COLD_START_DETAIL] == "template-built"
    (forked,) = await backend.start(launch)
    assert forked.extra[COLD_START_DETAIL] == "fork"
    for handle in (rebuilt, forked):
        client, _ = await connect(handle)
        answer = await call(client, {"n": 1})
        client.close()
        assert answer["payload"] == {"n": 1} and answer["ppid"] == int(rebuilt.extra["template_pid"])
    assert template_pids(backend) == [int(rebuilt.extra["template_pid"])] != [template_pid]


async def test_a_template_still_building_is_not_reaped(backend: LocalBackend, tmp_path: Path) -> None:
    launch = make_launch("slow", "slow", write(tmp_path, "slow", SLOW_IMPORT))
    await backend.prepare(launch)
    info = backend.template_of(launch)
    assert info is not None and info["state"] == "starting" and info["built_at"] is None
    assert await backend.reap_templates(now=time.monotonic() + 10 * IDLE_S) == 0
    (handle,) = await backend.start(launch)  # waits for the build it was kept for
    assert handle.extra[COLD_START_DETAIL] == "template-built"


async def test_template_info_shows_its_memory_and_idle_time(backend: LocalBackend, tmp_path: Path) -> None:
    launch = make_launch("echo", "echo", write(tmp_path, "echo", ECHO), revision_id="echo-00007")
    await backend.prepare(launch)
    await wait_until(lambda: backend.templates()[0]["state"] == "ready", 30, "the template")
    info = backend.template_of(launch)
    assert info is not None and info.keys() == backend.templates()[0].keys()
    assert info["pid"] == backend.templates()[0]["pid"]
    assert isinstance(info["rss_mb"], float) and info["rss_mb"] > 5  # an interpreter with tidal imported
    assert isinstance(info["pss_mb"], float) and 0 < info["pss_mb"] <= info["rss_mb"]
    assert isinstance(info["built_at"], float) and abs(info["built_at"] - time.time()) < 60
    assert isinstance(info["idle_s"], float) and info["idle_s"] >= 0
    assert info["revisions"] == ["echo-00007"] and info["idle_limit_s"] == IDLE_S


async def test_templates_off_say_spawn(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "state", use_templates=False)
    try:
        (handle,) = await backend.start(make_launch("echo", "echo", write(tmp_path, "echo", ECHO)))
        assert handle.extra[COLD_START_DETAIL] == "spawn" and backend.templates() == []
    finally:
        await backend.close()
