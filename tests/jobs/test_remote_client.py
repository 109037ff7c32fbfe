"""`tidal.Function`: remote, spawn/get, map and typed errors against a real gateway; its retries
of 429/503 against a fake transport."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

import tidal
from conftest import TidalServer
from tidal.remote import Function, error_of_response

SQUARE = """
import tidal

@tidal.function(name="jsquare", concurrency=8, retries=0)
def square(payload):
    if isinstance(payload, dict) and payload.get("fail"):
        raise ValueError("asked to fail")
    if isinstance(payload, dict) and payload.get("reject"):
        raise tidal.InputError("not a number")
    return payload * payload
"""


def test_remote_spawn_map_and_typed_errors(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(SQUARE)).returncode == 0
    with tidal.Function.lookup("jsquare", url=tidal_server.url, key=tidal_server.admin_key) as square:
        assert square.remote(7) == 49
        job = square.spawn(8, idempotency_key="sq-8")
        assert job.get(timeout=30) == 64 and job.state() == "succeeded"
        assert square.spawn(8, idempotency_key="sq-8").id == job.id  # the same key: the same job
        assert list(square.map(range(20), concurrency=4, progress=True)) == [n * n for n in range(20)]

        with pytest.raises(tidal.FunctionError) as failed:
            square.remote({"fail": True})
        error = failed.value
        assert (error.status, error.error_type) == (500, "ValueError") and error.activation
        logs = tidal_server.client.get("/v1/functions/jsquare/logs", params={"activation": error.activation})
        assert logs.status_code == 200 and "asked to fail" in logs.json()["logs"][0]["logs"]
        with pytest.raises(tidal.InvalidInput) as rejected:
            square.remote({"reject": True})
        assert rejected.value.status == 422 and isinstance(rejected.value, tidal.RemoteError)

        with pytest.raises(tidal.FunctionError) as job_failed:
            square.spawn({"fail": True}).get(timeout=30)
        assert (
            job_failed.value.job_id
            and job_failed.value.activation
            and job_failed.value.kind == "function_error"
        )

        results = list(square.map([2, {"fail": True}, 3], concurrency=2, return_exceptions=True))
        assert results[0] == 4 and isinstance(results[1], tidal.FunctionError) and results[2] == 9
        with pytest.raises(tidal.FunctionError):
            list(square.map([2, {"fail": True}, 3]))

    with pytest.raises(tidal.NotFoundError):
        tidal.Function.lookup("no-such-fn", url=tidal_server.url, key=tidal_server.admin_key).remote(1)
    with pytest.raises(tidal.AuthError) as denied:
        tidal.Function.lookup("jsquare", url=tidal_server.url, key="tidal_bad_key").remote(1)
    assert denied.value.status == 401


def test_lookup_takes_the_url_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDAL_URL", "http://gateway.example:9999")
    monkeypatch.setenv("TIDAL_API_KEY", "tidal_k_secret")
    fn = Function.lookup("embed")
    assert (
        fn.url == "http://gateway.example:9999"
        and fn._http.headers["authorization"] == "Bearer tidal_k_secret"
    )
    assert Function.lookup("embed", url="http://other:1").url == "http://other:1"


def fake(answers: list[httpx.Response], seen: list[httpx.Request]) -> Function:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    fn = Function("echo", "http://tidal.test", "k", retries=3)
    fn._http = httpx.Client(base_url="http://tidal.test", transport=httpx.MockTransport(handle))
    return fn


def test_429_and_503_are_retried_honouring_retry_after() -> None:
    seen: list[httpx.Request] = []
    busy = {"error": {"type": "TooManyRequests", "message": "at capacity"}}
    fn = fake(
        [httpx.Response(429, json=busy, headers={"retry-after": "0"}), httpx.Response(503, json=busy, headers={"retry-after": "0.01"}),
         httpx.Response(200, json={"ok": True})],
        seen,
    )  # fmt: skip
    assert fn.remote({"a": 1}) == {"ok": True} and len(seen) == 3
    seen.clear()
    fn = fake([httpx.Response(429, json=busy, headers={"retry-after": "0"})] * 4, seen)
    with pytest.raises(tidal.Overloaded) as overloaded:
        fn.remote(None)
    assert overloaded.value.status == 429 and len(seen) == 4  # the first try and 3 retries


@pytest.mark.parametrize(
    ("status", "error_type", "cls"),
    [
        (400, "BadRequest", "InvalidInput"), (401, "Unauthorized", "AuthError"), (403, "Forbidden", "AuthError"),
        (404, "NotFound", "NotFoundError"), (413, "PayloadTooLarge", "InvalidInput"), (422, "InputError", "InvalidInput"),
        (429, "TooManyRequests", "Overloaded"), (500, "KeyError", "FunctionError"), (500, "InternalError", "GatewayError"),
        (502, "InstanceLost", "InstanceError"), (503, "Unavailable", "Overloaded"), (504, "Timeout", "FunctionTimeout"),
        (418, "Teapot", "RemoteError"),
    ],
)  # fmt: skip
def test_every_status_has_its_error_class(status: int, error_type: str, cls: str) -> None:
    body: dict[str, Any] = {"error": {"type": error_type, "message": "m", "activation": "a1"}}
    error = error_of_response(httpx.Response(status, json=body))
    assert type(error).__name__ == cls and (error.status, error.activation) == (status, "a1")


def test_import_tidal_stays_light() -> None:
    """`import tidal` runs in every cold start: the client (httpx) loads only when it is used."""
    probe = "import sys, tidal; print('httpx' in sys.modules); tidal.Function; print('httpx' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.split() == ["False", "True"]
