"""The admin API checks the key before it reads a body and caps bodies and text lengths; without
a key, an existing and a missing function answer alike.
"""

from __future__ import annotations

import io
import socket
import zipfile

import httpx

from conftest import TidalServer

ADMIN_KEY_REQUIRED = "a valid admin API key is required (Authorization: Bearer KEY)"
MiB = 1024 * 1024


def raw_post(server: TidalServer, path: str, declared: int, sent: int, key: str | None = None) -> bytes:
    """Declare a ``declared``-byte body, send ``sent`` bytes of it, then read whatever answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw:
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        raw.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {declared}\r\n\r\n".encode())
        try:
            for _ in range(sent // MiB):
                raw.sendall(b"x" * MiB)
        except OSError:  # the gateway answered and closed early: what we want to read
            pass
        answer = b""
        try:
            while chunk := raw.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def test_a_huge_body_without_a_key_is_refused_before_it_is_read(tidal_server: TidalServer) -> None:
    for path in ("/v1/keys", "/v1/functions", "/v1/functions/x/traffic"):
        answer = raw_post(tidal_server, path, declared=300 * MiB, sent=4 * MiB)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
        assert ADMIN_KEY_REQUIRED.encode() in answer
    # A small one is read first, so that a client writing it all before reading sees the 401.
    small = httpx.post(f"{tidal_server.url}/v1/keys", json={"scopes": ["admin"]}, timeout=30)
    assert small.status_code == 401 and small.json()["error"]["message"] == ADMIN_KEY_REQUIRED
    wrong = httpx.post(f"{tidal_server.url}/v1/keys", json={"scopes": ["admin"]},
                       headers={"authorization": "Bearer nope"}, timeout=30)  # fmt: skip
    assert wrong.status_code == 401
    assert tidal_server.client.get("/v1/keys").status_code == 200  # still serves


def test_admin_bodies_have_a_limit(tidal_server: TidalServer) -> None:
    big = b'{"scopes": ["admin"], "description": "' + b"d" * (2 * MiB) + b'"}'
    answer = tidal_server.client.post("/v1/keys", content=big)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == {
        "type": "PayloadTooLarge",
        "message": f"the request body exceeds the admin API's limit of {MiB} bytes",
    }
    # Chunked, without a content-length: stopped at the limit all the same.
    chunked = tidal_server.client.post("/v1/keys", content=iter([big[: MiB // 2]] * 4))
    assert chunked.status_code == 413
    # A deploy has its own, larger limit: a 2 MiB bundle is fine.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(
            "main.py", "import tidal\n\n@tidal.function(name='roomy')\ndef roomy(x):\n    return x\n"
        )
        archive.writestr("data.bin", bytes(2 * MiB))
    deployed = tidal_server.client.post("/v1/functions", content=buffer.getvalue())
    assert deployed.status_code == 201, deployed.text
    assert tidal_server.client.post("/fn/roomy", json=1).json() == 1


def test_descriptions_and_names_have_length_limits(tidal_server: TidalServer) -> None:
    long_description = tidal_server.client.post(
        "/v1/keys", json={"scopes": ["admin"], "description": "d" * 501}
    )
    assert long_description.status_code == 422
    assert "description" in long_description.json()["error"]["message"]
    long_scope = tidal_server.client.post("/v1/keys", json={"scopes": ["invoke:" + "x" * 100]})
    assert long_scope.status_code == 422
    many_scopes = tidal_server.client.post("/v1/keys", json={"scopes": ["invoke:*"] * 101})
    assert many_scopes.status_code == 422
    long_name = tidal_server.client.post("/v1/functions", params={"name": "n" * 64}, content=b"PK")
    assert long_name.status_code == 422 and "name" in long_name.json()["error"]["message"]
    fine = tidal_server.client.post("/v1/keys", json={"scopes": ["invoke:*"], "description": "d" * 500})
    assert fine.status_code == 201
    # The CLI shows the refusal as a message, not a traceback.
    result = tidal_server.cli("keys", "create", "--scope", "invoke:*", "--description", "d" * 600)
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_without_a_key_existing_and_missing_functions_answer_alike(tidal_server: TidalServer) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "main.py", "import tidal\n\n@tidal.function(name='secret')\ndef secret(x):\n    return x\n"
        )
    assert tidal_server.client.post("/v1/functions", content=buffer.getvalue()).status_code == 201
    for headers in ({}, {"authorization": "Bearer not-a-key"}):
        for method in ("POST", "GET"):
            existing = httpx.request(method, f"{tidal_server.url}/fn/secret", headers=headers, json={})
            missing = httpx.request(method, f"{tidal_server.url}/fn/no_such_fn", headers=headers, json={})
            assert existing.status_code == missing.status_code == 401, (existing.text, missing.text)
            assert existing.json() == missing.json()
            assert existing.headers.get("www-authenticate") == missing.headers.get("www-authenticate")
    # With a key, the difference is the key holder's to know.
    assert tidal_server.client.post("/fn/no_such_fn", json={}).status_code == 404
    assert tidal_server.client.post("/fn/secret", json={"x": 1}).json() == {"x": 1}
