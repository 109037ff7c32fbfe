"""Fixed keep-alive live, end to end: `keep_alive=N` keeps an instance N seconds after the last call,
then drops it and its template; a policy that does not parse is refused at deploy.
"""

from __future__ import annotations

from keepalive_e2e_helpers import PERIODIC, deploy, function, unloaded

from conftest import TidalServer, wait_for


def test_fixed_keep_alive_keeps_an_instance_then_drops_it(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module, "kept_3s", "3")
    first = tidal_server.client.post("/fn/kept_3s", json={})
    assert first.status_code == 200
    info = function(tidal_server, "kept_3s")
    assert info["spec"]["keep_alive"] == "fixed:3s" and info["keep_alive"]["mode"] == "fixed"
    assert info["instances"]["ready"] == 1  # kept after the call ...
    again = tidal_server.client.post("/fn/kept_3s", json={})
    assert again.headers["x-tidal-cold-start"] == "0" and again.json()["pid"] == first.json()["pid"]
    # ... and dropped 3 s after the last one, long before scale_to_zero_after (60 s) would.
    wait_for(lambda: unloaded(tidal_server, "kept_3s"), 20, "the instance and template to go")
    events = function(tidal_server, "kept_3s")["events"]
    assert any(e["to_count"] == 0 and e["reason"].startswith("keep-alive ended") for e in events), events
    status = tidal_server.cli("status", "kept_3s")
    assert "keep-alive: fixed:3s (fixed)" in status.stdout and "now ended" in status.stdout, status.stdout


def test_a_bad_policy_is_refused_at_deploy(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    path = write_module(PERIODIC.format(name="bad_policy", policy="hybrid:bins=1s"), "bad_policy.py")
    result = tidal_server.deploy(path)
    assert result.returncode != 0
    assert "keep_alive" in result.stderr and "unknown hybrid parameter 'bins'" in result.stderr, result.stderr
    path = write_module(PERIODIC.format(name="bad_flag", policy="60"), "bad_flag.py")
    flag = tidal_server.deploy(path, "--keep-alive", "soon")
    assert flag.returncode != 0 and "not a keep-alive policy" in flag.stderr, flag.stderr
    assert tidal_server.client.get("/v1/functions/bad_flag").status_code == 404  # nothing deployed
