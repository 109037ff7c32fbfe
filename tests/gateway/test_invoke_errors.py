"""Every bad request gets a precise 4xx/5xx with a JSON error body, never a traceback or a hang."""

from __future__ import annotations

import httpx

from conftest import TidalServer

FAILING = """
import tidal

@tidal.function(name="fails_loudly")
def fails_loudly(payload):
    print("about to fail on", payload)
    raise ValueError(f"cannot handle {payload['x']}")

@tidal.function(name="open_door", public=True)
def open_door(payload):
    return {"open": True}

@tidal.function(name="guarded")
def guarded(payload):
    return {"guarded": payload}
"""


def deploy_failing(server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    result = server.deploy(write_module(FAILING, "failing.py"))
    assert result.returncode == 0, result.stderr


def test_unknown_function_is_404(tidal_server: TidalServer) -> None:
    response = tidal_server.client.post("/fn/no_such_function", json={})
    assert response.status_code == 404
    assert response.json()["error"] == {"type": "NotFound", "message": "no function named 'no_such_function'"}


def test_malformed_json_is_400(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy_failing(tidal_server, write_module)
    response = tidal_server.client.post(
        "/fn/guarded", content=b'{"x": [1, 2', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BadRequest"
    assert "malformed JSON" in response.json()["error"]["message"]


def test_oversized_payload_is_413(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy_failing(tidal_server, write_module)
    body = b'"' + b"a" * (6 * 1024 * 1024 + 10) + b'"'
    response = tidal_server.client.post("/fn/guarded", content=body)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "PayloadTooLarge"
    # Without a content-length (chunked upload) the limit holds too.
    chunked = tidal_server.client.post("/fn/guarded", content=iter([body[:4_000_000], body[4_000_000:]]))
    assert chunked.status_code == 413


def test_keys_are_required_and_scoped(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy_failing(tidal_server, write_module)
    url = f"{tidal_server.url}/fn/guarded"
    missing = httpx.post(url, json={"a": 1})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, json={"a": 1}, headers={"authorization": "Bearer tidal_nope_nope"})
    assert wrong.status_code == 401

    other = tidal_server.cli("keys", "create", "--scope", "invoke:open_door")
    assert other.returncode == 0, other.stderr
    forbidden = httpx.post(url, json={"a": 1}, headers={"authorization": f"Bearer {other.stdout.strip()}"})
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["type"] == "Forbidden"

    scoped = tidal_server.cli("keys", "create", "--scope", "invoke:guarded").stdout.strip()
    allowed = httpx.post(url, json={"a": 1}, headers={"authorization": f"Bearer {scoped}"})
    assert allowed.status_code == 200
    assert allowed.json() == {"guarded": {"a": 1}}
    # An invoke key is no admin key.
    admin = httpx.get(f"{tidal_server.url}/v1/functions", headers={"authorization": f"Bearer {scoped}"})
    assert admin.status_code == 403
    assert httpx.get(f"{tidal_server.url}/v1/functions").status_code == 401


def test_public_function_needs_no_key(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy_failing(tidal_server, write_module)
    response = httpx.post(f"{tidal_server.url}/fn/open_door", json=None)
    assert response.status_code == 200
    assert response.json() == {"open": True}


def test_user_exception_is_500_with_activation_and_traceback_only_in_logs(
    tidal_server: TidalServer,
    write_module,  # type: ignore[no-untyped-def]
) -> None:
    deploy_failing(tidal_server, write_module)
    response = tidal_server.client.post("/fn/fails_loudly", json={"x": "this input"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "cannot handle this input"
    assert error["activation"] == response.headers["x-tidal-activation"]
    assert "Traceback" not in response.text

    logs = tidal_server.cli("logs", "fails_loudly", "--activation", error["activation"])
    assert logs.returncode == 0, logs.stderr
    assert "about to fail on {'x': 'this input'}" in logs.stdout
    assert "Traceback (most recent call last)" in logs.stdout
    assert "ValueError: cannot handle this input" in logs.stdout


def test_wrong_method_and_subpath(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy_failing(tidal_server, write_module)
    get = tidal_server.client.get("/fn/guarded")
    assert get.status_code == 405
    assert get.headers["allow"] == "POST"
    assert tidal_server.client.post("/fn/guarded/extra", json={}).status_code == 404


def test_admin_api_errors_are_json(tidal_server: TidalServer) -> None:
    assert tidal_server.client.get("/v1/functions/nope").json()["error"]["type"] == "NotFound"
    bad_key = tidal_server.client.post("/v1/keys", json={"scopes": ["root"]})
    assert bad_key.status_code == 400
    assert "invalid scope" in bad_key.json()["error"]["message"]
    not_zip = tidal_server.client.post("/v1/functions", content=b"not a zip")
    assert not_zip.status_code == 400
    assert "not a zip" in not_zip.json()["error"]["message"]
    assert tidal_server.client.get("/v1/nothing-here").status_code == 404
    assert tidal_server.client.get("/healthz").status_code == 200
