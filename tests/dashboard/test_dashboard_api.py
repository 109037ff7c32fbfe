"""The dashboard's HTTP side on a real gateway: the page, its files, and the series endpoint."""

from __future__ import annotations

import httpx

from conftest import TidalServer, wait_for

SOURCE = """
import tidal

@tidal.function(name="dash_api_echo")
def dash_api_echo(payload):
    print("echoing", payload)
    if payload.get("fail"):
        raise ValueError("asked to fail")
    return payload
"""
SERIES = "/v1/functions/dash_api_echo/series"


def deploy(server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    result = server.deploy(write_module(SOURCE, "dash_api_echo.py"))
    assert result.returncode == 0, result.stderr


def test_the_page_and_its_files_are_served_without_data(tidal_server: TidalServer) -> None:
    page = httpx.get(f"{tidal_server.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'id="login-form"' in page.text
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        response = httpx.get(f"{tidal_server.url}/dashboard/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(kind)
    plotly = httpx.get(f"{tidal_server.url}/dashboard/static/plotly.min.js")
    assert plotly.status_code == 200
    assert len(plotly.content) > 1_000_000 and b"plotly" in plotly.content[:2000].lower()
    missing = httpx.get(f"{tidal_server.url}/dashboard/static/secrets.txt")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "no dashboard file 'secrets.txt'"


def test_series_needs_the_admin_key(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module)
    assert httpx.get(f"{tidal_server.url}{SERIES}").status_code == 401
    wrong = httpx.get(f"{tidal_server.url}{SERIES}", headers={"authorization": "Bearer not-a-key"})
    assert wrong.status_code == 401
    invoker = tidal_server.client.post("/v1/keys", json={"scopes": ["invoke:dash_api_echo"]}).json()["key"]
    scoped = httpx.get(f"{tidal_server.url}{SERIES}", headers={"authorization": f"Bearer {invoker}"})
    assert scoped.status_code == 403


def test_series_of_an_unknown_function_is_404(tidal_server: TidalServer) -> None:
    response = tidal_server.client.get("/v1/functions/no_such_function/series")
    assert response.status_code == 404
    assert response.json()["error"] == {"type": "NotFound", "message": "no function named 'no_such_function'"}


def test_a_bad_window_is_422_with_the_reason(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module)
    for query, says in [
        ("since=soon", "'soon' is not a duration"),
        ("step=100ms", "step must be at least 1s"),
        ("since=1h&step=1s", "at most 720"),
        ("since=2d", "at most 3600s"),
    ]:
        response = tidal_server.client.get(f"{SERIES}?{query}")
        assert response.status_code == 422, query
        assert response.json()["error"]["type"] == "ValidationError"
        assert says in response.json()["error"]["message"], response.json()


def test_series_counts_the_calls_made(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    deploy(tidal_server, write_module)
    before = tidal_server.client.get(f"{SERIES}?since=5m&step=5s").json()["totals"]
    statuses = [tidal_server.client.post("/fn/dash_api_echo", json={"n": n}).status_code for n in range(6)]
    statuses += [
        tidal_server.client.post("/fn/dash_api_echo", json={"fail": True}).status_code for _ in range(2)
    ]
    assert statuses == [200] * 6 + [500] * 2
    body = tidal_server.client.get(f"{SERIES}?since=5m&step=5s").json()
    assert body["totals"]["requests"] - before["requests"] == 8
    assert body["totals"]["errors"] - before["errors"] == 2
    assert body["totals"]["cold_starts"] >= 1  # the first call of a new function starts an instance
    assert len(body["buckets"]) in (60, 61) and body["step_s"] == 5.0
    assert sum(body["requests"]) == body["totals"]["requests"]
    assert any(p50 is not None and p50 > 0 for p50 in body["p50_ms"])

    def sampled_ready() -> bool:
        series = tidal_server.client.get(f"{SERIES}?since=1m&step=1s").json()
        return any(ready is not None and ready >= 1 for ready in series["ready"])

    wait_for(sampled_ready, 10, "the sampler to see the instance the calls started")
