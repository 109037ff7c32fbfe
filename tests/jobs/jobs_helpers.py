"""Helpers of the job tests: waiting on a job, and a callback receiver in a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "dead", "cancelled")


def wait_job(
    client: httpx.Client, job_id: str, timeout: float = 30.0, states: tuple[str, ...] = FINAL
) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/ID`` until the job is in one of ``states``; its record."""
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if record.get("state") in states:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {record}")
        time.sleep(0.05)


class Receiver:
    """An HTTP server that answers each POST with the next status of ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.bodies.append(json.loads(body))
                receiver.headers.append({key.lower(): value for key, value in self.headers.items()})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@contextmanager
def receiver(statuses: list[int]) -> Iterator[Receiver]:
    server = Receiver(statuses)
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
