"""Templates on demand, as a user sees them: `tidal up --template-idle`, HTTP headers, the admin API
and `tidal status`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from conftest import TidalServer

TINY = """
import os

import tidal


@tidal.function(name="{name}", concurrency=4)
def tiny(payload):
    return {{"pid": os.getpid(), "ppid": os.getppid()}}
"""


def wait_for(condition, timeout_s: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def function(server: TidalServer, name: str) -> dict[str, Any]:
    return server.client.get(f"/v1/functions/{name}").json()  # type: ignore[no-any-return]


def invoke(server: TidalServer, name: str) -> httpx.Response:
    response = server.client.post(f"/fn/{name}", json={}, timeout=60)
    assert response.status_code == 200, response.text
    return response


def is_template(pid: int) -> bool:
    return b"tidal.runtime.template" in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_an_idle_template_is_reaped_and_the_next_cold_start_builds_it(
    fresh_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    fresh_server.start("--template-idle", "2s")
    path = write_module(TINY.format(name="tiny_reaped"), "tiny.py")
    assert fresh_server.deploy(path, "--scale-to-zero-after", "1s").returncode == 0
    first = invoke(fresh_server, "tiny_reaped")
    assert first.headers["x-tidal-cold-start"] == "1"
    assert first.headers["x-tidal-cold-start-detail"] in ("fork", "template-built")  # built at deploy
    wait_for(lambda: not function(fresh_server, "tiny_reaped")["instances"]["list"], what="scale to zero")
    wait_for(lambda: function(fresh_server, "tiny_reaped")["template"] is None, what="the reaper")
    assert fresh_server.client.get("/v1/templates").json() == {"templates": []}
    assert "template: none kept" in fresh_server.cli("status", "tiny_reaped").stdout

    rebuilt = invoke(fresh_server, "tiny_reaped")  # still answers: its cold start builds the template
    assert rebuilt.headers["x-tidal-cold-start"] == "1"
    assert rebuilt.headers["x-tidal-cold-start-detail"] == "template-built"
    template_pid = rebuilt.json()["ppid"]
    assert template_pid != first.json()["ppid"] and is_template(template_pid)
    (listed,) = function(fresh_server, "tiny_reaped")["instances"]["list"]
    assert listed["extra"]["cold_start_detail"] == "template-built"
    warm = invoke(fresh_server, "tiny_reaped")
    assert warm.headers["x-tidal-cold-start"] == "0" and "x-tidal-cold-start-detail" not in warm.headers

    # Scaled to zero again well inside the idle limit: the template is still there to fork from.
    wait_for(lambda: not function(fresh_server, "tiny_reaped")["instances"]["list"], what="scale to zero")
    forked = invoke(fresh_server, "tiny_reaped")
    assert forked.headers["x-tidal-cold-start"] == "1"
    assert forked.headers["x-tidal-cold-start-detail"] == "fork"
    assert forked.json()["ppid"] == template_pid
    loops = {loop["name"]: loop for loop in fresh_server.client.get("/v1/loops").json()["loops"]}
    assert loops["template-reaper"]["running"] and loops["template-reaper"]["restarts"] == 0


def test_a_template_with_a_live_instance_is_kept_and_shown(fresh_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    fresh_server.start("--template-idle", "500ms")
    path = write_module(TINY.format(name="tiny_kept"), "tiny.py")
    assert fresh_server.deploy(path, "--min-instances", "1").returncode == 0
    wait_for(lambda: function(fresh_server, "tiny_kept")["instances"]["ready"] == 1, what="the instance")
    template = function(fresh_server, "tiny_kept")["template"]
    time.sleep(2.0)  # four idle limits: a template without instances would be gone by now
    info = function(fresh_server, "tiny_kept")
    kept = info["template"]
    assert kept is not None and kept["pid"] == template["pid"] and is_template(kept["pid"])
    assert kept["instances"] == [info["instances"]["list"][0]["pid"]] and kept["idle_s"] == 0
    assert kept["rss_mb"] > 5
    assert kept["pss_mb"] is None or 0 < kept["pss_mb"] <= kept["rss_mb"]  # None: no smaps_rollup here
    assert kept["built_at"] <= time.time() and kept["revisions"] == [info["revision"]]
    (listed,) = fresh_server.client.get("/v1/templates").json()["templates"]
    assert listed["pid"] == kept["pid"] and listed["module"] == "tiny"
    status = fresh_server.cli("status", "tiny_kept").stdout
    assert f"template: pid {kept['pid']}, " in status and "parent of 1 live instance," in status, status


def test_a_bad_template_idle_is_refused(tmp_path: Path) -> None:
    server = TidalServer(tmp_path / "state")
    try:
        server.start("--template-idle", "soon", wait_s=10)
    except RuntimeError as exc:
        assert "--template-idle" in str(exc) and "not a duration" in str(exc)
    else:
        raise AssertionError("tidal up accepted --template-idle soon")
    finally:
        server.stop()
