"""Under overload with a short timeout, requests that spent their time in the queue get a 504
without running, and those timeouts never cost an instance (no recycling, no new starts).
"""

from __future__ import annotations

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor

import httpx

from conftest import TidalServer

SLOW = """
import time
import tidal

@tidal.function(name="slow_short", timeout=1, concurrency=1, max_instances=1, max_queue=200)
def slow_short(payload):
    time.sleep(0.3)  # in a thread: a call cut short by its deadline leaves the thread running
    return payload
"""


def test_queued_requests_past_their_deadline_get_504_and_keep_the_instance(tidal_server: TidalServer) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", SLOW)
    assert tidal_server.client.post("/v1/functions", content=buffer.getvalue()).status_code == 201
    assert tidal_server.client.post("/fn/slow_short", json=0).status_code == 200  # started, warm

    def call(number: int) -> httpx.Response:
        return httpx.post(f"{tidal_server.url}/fn/slow_short", json=number, timeout=30,
                          headers={"authorization": f"Bearer {tidal_server.admin_key}"})  # fmt: skip

    for _ in range(2):  # two waves of 40 clients, each wave far beyond what 1 s can serve
        with ThreadPoolExecutor(40) as clients:
            answers = list(clients.map(call, range(40)))
        statuses = [answer.status_code for answer in answers]
        assert set(statuses) <= {200, 504}, statuses
        assert statuses.count(200) >= 1 and statuses.count(504) >= 1, statuses
        for answer in answers:
            if answer.status_code == 504:
                assert answer.json()["error"]["type"] == "Timeout"
    instances = tidal_server.client.get("/v1/functions/slow_short").json()["instances"]
    assert instances["starts"] == 1 and instances["recycled"] == 0 and instances["lost"] == 0, instances
    assert tidal_server.client.post("/fn/slow_short", json="after").json() == "after"
    # Timeouts that were the queue's are recorded as such: not run at all, or cut short by it.
    activations = tidal_server.client.get("/v1/functions/slow_short/activations", params={"limit": 100})
    messages = {
        item["error_message"] for item in activations.json()["activations"] if item["status"] == "timeout"
    }
    assert messages, "no timeout was recorded"
    assert all("queue" in message or "no instance had room" in message for message in messages), messages
