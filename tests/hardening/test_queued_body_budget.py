"""The bodies of requests waiting for an instance share one budget per gateway
(`tidal up --max-queued-body-mb`): past it a request gets a 429 at once instead of holding more
memory; the queued ones still run, and the gateway goes on serving."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from conftest import TidalServer, wait_for

HOLD = """
import time
import tidal

@tidal.function(name="hold", concurrency=1, max_instances=1, timeout=30, max_queue=100)
def hold(payload):
    time.sleep(payload.get("sleep", 0))
    return len(payload.get("pad", ""))
"""

BODY = 400 * 1024  # three of them are over a 1 MiB budget, two are not


def test_queued_bodies_past_the_budget_get_429_and_the_rest_run(
    fresh_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    server = fresh_server.start("--max-queued-body-mb", "1")
    assert server.deploy(write_module(HOLD)).returncode == 0
    assert server.client.post("/fn/hold", json={}).status_code == 200  # warm: one instance, now idle
    headers = {"authorization": f"Bearer {server.admin_key}"}

    def call(payload: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{server.url}/fn/hold", json=payload, headers=headers, timeout=60)

    busy = threading.Thread(target=call, args=({"sleep": 3},))
    busy.start()  # holds the only instance for 3 s: whatever comes next waits in the queue
    wait_for(
        lambda: server.client.get("/v1/functions/hold").json()["instances"]["in_flight"] == 1, 10, "busy"
    )
    with ThreadPoolExecutor(2) as queued:
        waiting = [queued.submit(call, {"pad": "x" * BODY}) for _ in range(2)]
        wait_for(
            lambda: server.client.get("/v1/functions/hold").json()["instances"]["queued"] == 2, 10, "queued"
        )
        started = time.monotonic()
        refused = call({"pad": "y" * BODY})
        assert time.monotonic() - started < 2, "refused at once, not after the queue drained"
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "queued request bodies would exceed the gateway's budget of 1048576 bytes" in refused.text
        assert [future.result().json() for future in waiting] == [BODY, BODY]
    busy.join()
    assert call({"pad": "z" * BODY}).json() == BODY  # the budget was given back
