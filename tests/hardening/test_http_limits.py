"""Headers have a size limit (431) and requests a header and a body timeout (slowloris), in the
real `tidal up` server; normal and keep-alive requests are unaffected.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import time
import zipfile
from collections.abc import Iterator

import pytest

from conftest import TidalServer

ECHO = "import tidal\n\n@tidal.function(name='echo_limits')\ndef echo(payload):\n    return payload\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TidalServer]:
    """One gateway with short timeouts and a 32 KiB header limit for this module."""
    gateway = TidalServer(tmp_path_factory.mktemp("limits") / "state")
    gateway.start("--header-timeout", "1s", "--body-timeout", "1s", "--max-header-bytes", "32768")
    try:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("main.py", ECHO)
        assert gateway.client.post("/v1/functions", content=buffer.getvalue()).status_code == 201
        yield gateway
    finally:
        gateway.stop()


def connect(server: TidalServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=15)


def read_all(raw: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket timeout fails the test
    if it never does)."""
    answer = b""
    try:
        while chunk := raw.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def invoke(server: TidalServer, raw: socket.socket, payload: object) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    raw.sendall(
        f"POST /fn/echo_limits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_key}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = b""
    while not answer.endswith(body):
        chunk = raw.recv(65536)
        assert chunk, answer
        answer += chunk
    return answer


def assert_serves(server: TidalServer) -> None:
    assert server.client.post("/fn/echo_limits", json={"ok": 1}).json() == {"ok": 1}


def test_headers_past_the_limit_get_431(server: TidalServer) -> None:
    for size in (40 * 1024, 8 * 1024 * 1024):
        with connect(server) as raw:
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
            with contextlib.suppress(OSError):  # closed while we still sent: the answer is there
                raw.sendall(head + b"a" * size + b"\r\n\r\n")
            answer = read_all(raw)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), answer[:200]
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == {
            "type": "HeadersTooLarge",
            "message": "the request line and headers exceed 32768 bytes",
        }
    assert_serves(server)


def test_a_large_body_right_after_small_headers_is_fine(server: TidalServer) -> None:
    with connect(server) as raw:
        answer = invoke(server, raw, "x" * (1024 * 1024))  # headers and body in one write
    assert answer.startswith(b"HTTP/1.1 200")


def test_connections_that_never_finish_their_headers_are_closed(server: TidalServer) -> None:
    silent = [connect(server) for _ in range(20)]
    partial = [connect(server) for _ in range(20)]
    for raw in partial:
        raw.sendall(b"POST /fn/echo_limits HTTP/1.1\r\nHost: x\r\n")
    trickling = connect(server)
    trickling.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    try:  # one byte at a time keeps data flowing, but the headers never end
        for _ in range(30):
            trickling.sendall(b"a")
            time.sleep(0.1)
    except OSError:
        pass
    for raw in silent:
        assert read_all(raw) == b""  # closed without a word: it never said anything
    for raw in [*partial, trickling]:
        answer = read_all(raw)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer[:200]
        assert b"the request headers did not arrive within 1 s" in answer
    for raw in [*silent, *partial, trickling]:
        raw.close()
    assert_serves(server)


def test_a_body_that_stops_arriving_ends_the_connection(server: TidalServer) -> None:
    with connect(server) as raw:
        raw.sendall(
            f"POST /fn/echo_limits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_key}\r\n"
            "Content-Length: 1000\r\n\r\n[1, 2, ".encode()
        )
        assert read_all(raw) == b""  # closed: no answer is owed to a request that never arrived
    assert_serves(server)


def test_keep_alive_requests_with_pauses_still_work(server: TidalServer) -> None:
    with connect(server) as raw:
        for number in range(3):
            assert invoke(server, raw, {"n": number}).startswith(b"HTTP/1.1 200")
            time.sleep(0.5)  # under both the 1 s header timeout and uvicorn's 5 s keep-alive
