"""Nothing billed is lost: a gateway killed with SIGKILL under about 20 requests a second, restarted
on the same state dir, holds the activation record of every request it had answered 200."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from conftest import TidalServer
from paths import EXAMPLES
from tidal.metering.journal import segments

RATE_S = 0.05  # one request every 50 ms per client: about 20 a second


def stored_ids(database: Path, wanted: set[str]) -> set[str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT id FROM activations") if row[0] in wanted}


def test_every_answered_request_has_its_record_after_a_kill(fresh_server: TidalServer) -> None:
    server = fresh_server.start()
    assert server.deploy(EXAMPLES / "echo.py").returncode == 0
    assert server.client.post("/fn/echo", json={"warm": True}).status_code == 200
    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        headers = {"authorization": f"Bearer {server.admin_key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=5) as client:
            while not stop.is_set():
                try:
                    answer = client.post("/fn/echo", json={"n": len(answered)})
                except httpx.TransportError:
                    return  # the gateway is gone
                if answer.status_code == 200:
                    answered.append(answer.headers["x-tidal-activation"])
                time.sleep(RATE_S)

    client = threading.Thread(target=load)
    client.start()
    deadline = time.monotonic() + 30
    while len(answered) < 40:
        assert time.monotonic() < deadline, f"only {len(answered)} answers in 30 s"
        time.sleep(0.01)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    stop.set()
    client.join(10)
    seen = set(answered)
    database = server.state_dir / "tidal.db"
    in_store_at_kill = stored_ids(database, seen)
    journal = segments(server.state_dir / "journal")

    restarted = TidalServer(server.state_dir).start()
    try:
        after = stored_ids(database, seen)
        missing = seen - after
        assert not missing, (
            f"{len(missing)} of {len(seen)} answered requests lost their record: {sorted(missing)[:5]}"
        )
        record = restarted.client.get(f"/v1/activations/{answered[-1]}").json()
        assert (record["function"], record["status"], record["trigger"]) == ("echo", "ok", "http")
        assert restarted.cli("activations", "echo", "--limit", "1000").returncode == 0
    finally:
        restarted.stop()
    print(
        f"\nkill -9 under ~20 req/s: {len(seen)} answered 200; {len(in_store_at_kill)} in the store at the kill, "
        f"{len(seen) - len(in_store_at_kill)} only in the journal ({len(journal)} segment(s)); "
        f"after the restart {len(after)} of {len(seen)} stored"
    )
