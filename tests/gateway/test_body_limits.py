"""Oversized bodies get the 413 and its JSON message, whatever the client's manners."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import httpx

from conftest import TidalServer

GUARDED = """
import tidal

@tidal.function(name="limited")
def limited(payload):
    return {"size": len(payload)}
"""
LIMIT = 64 * 1024


def test_a_client_that_writes_the_whole_body_first_still_reads_the_413(
    fresh_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    server = fresh_server.start("--max-body", str(LIMIT))
    assert server.deploy(write_module(GUARDED, "limited.py")).returncode == 0
    body = json.dumps("a" * (4 * 1024 * 1024)).encode()  # far more than the socket buffers hold
    request = urllib.request.Request(
        f"{server.url}/fn/limited", data=body, headers={"authorization": f"Bearer {server.admin_key}"}
    )
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("the oversized body was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 413
        assert json.loads(exc.read())["error"] == {
            "type": "PayloadTooLarge",
            "message": f"the request body exceeds the limit of {LIMIT} bytes",
        }
    # A chunked upload (no content-length) whose last part brings it over the limit.
    chunked = httpx.post(f"{server.url}/fn/limited", content=iter([b'"' + b"a" * LIMIT, b'"']),
                         headers={"authorization": f"Bearer {server.admin_key}"}, timeout=30)  # fmt: skip
    assert chunked.status_code == 413 and chunked.json()["error"]["type"] == "PayloadTooLarge"
    # A raw socket writing everything before it reads, as `requests` does.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        head = (f"POST /fn/limited HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_key}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        raw.sendall(head + body)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"PayloadTooLarge" in answer
    # The gateway still serves.
    ok = server.client.post("/fn/limited", json="small")
    assert ok.status_code == 200 and ok.json() == {"size": 5}
