"""HTTP routes and CORS through a real gateway: `tidal route`, /v1/routes, tidal.toml, instances."""

from __future__ import annotations

import io
import json
import zipfile

import httpx

from conftest import TidalServer

ITEMS = """
import tidal

@tidal.function(name="items", public=True)
def items(payload, context):
    return {"path": context.path_params, "query": context.query_params, "body": payload}

@tidal.function(name="guarded_items")
def guarded_items(payload, context):
    return context.path_params

@tidal.function(name="cors_items", public=True, routes=["GET /cors/items/{id}"],
                cors={"origins": ["https://app.example"], "max_age": 120})
def cors_items(payload, context):
    return {"id": context.path_params.get("id")}
"""
HTTP_HANDLER = """
def handler(event, context):
    return {"statusCode": 200, "body": __import__("json").dumps({
        "pathParameters": event.get("pathParameters"), "routeKey": event["routeKey"],
        "rawPath": event["rawPath"], "query": event["queryStringParameters"]})}
"""


def zipped(entries: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def deploy_lambda_http(server: TidalServer, routes: list[str]) -> None:
    toml = f'name = "shop"\nstyle = "lambda-http"\nhandler = "handler"\n[spec]\npublic = true\nroutes = {json.dumps(routes)}\n'
    bundle = zipped({"lambda_function.py": HTTP_HANDLER, "tidal.toml": toml})
    answer = server.client.post("/v1/functions", content=bundle)
    assert answer.status_code == 201, answer.text


def test_a_route_hands_path_parameters_and_query_to_a_native_function(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(ITEMS, "items.py")).returncode == 0
    added = tidal_server.cli("route", "add", "GET", "/items/{id}", "items")
    assert added.returncode == 0, added.stderr
    assert "GET /items/{id} -> items" in added.stdout
    answer = httpx.get(f"{tidal_server.url}/items/42?x=1&tag=a&tag=b", timeout=60)  # public: no key
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"path": {"id": "42"}, "query": {"x": "1", "tag": "a,b"}, "body": None}
    assert answer.headers["x-tidal-activation"]
    # A route with a method that has none: 405 naming the methods; no route: the usual 404.
    wrong = httpx.delete(f"{tidal_server.url}/items/42", timeout=30)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert wrong.json()["error"]["type"] == "MethodNotAllowed"
    missing = httpx.get(f"{tidal_server.url}/nowhere/42", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"
    # The gateway's own paths stay its own.
    assert httpx.get(f"{tidal_server.url}/healthz", timeout=30).status_code == 200


def test_conflicts_are_refused_and_routes_are_listed_and_removed(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(ITEMS, "items.py")).returncode == 0
    first = tidal_server.client.post(
        "/v1/routes", json={"method": "GET", "path": "/things/{id}", "function": "items"}
    )
    assert first.status_code == 201, first.text
    clash = tidal_server.client.post(
        "/v1/routes", json={"method": "ANY", "path": "/things/{name}", "function": "guarded_items"}
    )
    assert clash.status_code == 409
    assert clash.json()["error"]["type"] == "RouteConflict"
    assert (
        first.json()["id"] in clash.json()["error"]["message"]
        and "GET /things/{id}" in clash.json()["error"]["message"]
    )
    refused = tidal_server.cli("route", "add", "GET", "/things/{other}", "items")
    assert refused.returncode == 1 and "takes the same requests as route" in refused.stderr
    bad = tidal_server.client.post("/v1/routes", json={"method": "FETCH", "path": "/x", "function": "items"})
    assert bad.status_code == 400 and "unknown method 'FETCH'" in bad.json()["error"]["message"]
    reserved = tidal_server.client.post(
        "/v1/routes", json={"method": "GET", "path": "/v1/x", "function": "items"}
    )
    assert reserved.status_code == 400 and "the gateway's own" in reserved.json()["error"]["message"]
    nobody = tidal_server.client.post("/v1/routes", json={"method": "GET", "path": "/y", "function": "ghost"})
    assert nobody.status_code == 404
    listed = tidal_server.cli("route", "ls", "items")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "/things/{id}" in line)
    assert first.json()["id"] in row and "GET" in row and "items" in row and "cli" in row
    removed = tidal_server.cli("route", "rm", first.json()["id"])
    assert removed.returncode == 0 and f"removed {first.json()['id']}" in removed.stdout
    assert httpx.get(f"{tidal_server.url}/things/1", timeout=30).status_code == 404


def test_a_routed_private_function_needs_a_key(tidal_server: TidalServer, write_module) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(ITEMS, "items.py")).returncode == 0
    assert tidal_server.cli("route", "add", "GET", "/private/{id}", "guarded_items").returncode == 0
    assert httpx.get(f"{tidal_server.url}/private/9", timeout=30).status_code == 401
    answer = tidal_server.client.get("/private/9")
    assert answer.status_code == 200 and answer.json() == {"id": "9"}
    # A route's own CORS policy; its preflight needs no key (browsers send none with it).
    added = tidal_server.cli("route", "add", "PUT", "/private/{id}/doc", "guarded_items",
                             "--cors-origin", "https://docs.example", "--cors-credentials")  # fmt: skip
    assert added.returncode == 0, added.stderr
    asked = {"origin": "https://docs.example", "access-control-request-method": "PUT"}
    preflight = httpx.options(f"{tidal_server.url}/private/9/doc", headers=asked, timeout=30)
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == "https://docs.example"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert preflight.headers["access-control-allow-methods"] == "PUT"
    listed = tidal_server.cli("route", "ls", "guarded_items")
    assert "https://docs.example (credentials)" in listed.stdout


def test_lambda_http_routes_from_tidal_toml_come_and_go(tidal_server: TidalServer) -> None:
    deploy_lambda_http(tidal_server, ["GET /shop/{id}"])
    answer = httpx.get(f"{tidal_server.url}/shop/7?q=hat", timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"pathParameters": {"id": "7"}, "routeKey": "GET /shop/{id}", "rawPath": "/shop/7",
                             "query": {"q": "hat"}}  # fmt: skip
    routes = tidal_server.client.get("/v1/routes", params={"function": "shop"}).json()["routes"]
    assert [(r["method"], r["path"], r["origin"]) for r in routes] == [("GET", "/shop/{id}", "spec")]
    declared = tidal_server.client.delete(f"/v1/routes/{routes[0]['id']}")
    assert declared.status_code == 409 and declared.json()["error"]["type"] == "DeclaredInSpec"
    deploy_lambda_http(tidal_server, ["GET /store/{sku+}"])
    assert httpx.get(f"{tidal_server.url}/shop/7", timeout=30).status_code == 404
    moved = httpx.get(f"{tidal_server.url}/store/hats/red", timeout=60)
    assert moved.status_code == 200 and moved.json()["pathParameters"] == {"sku": "hats/red"}


def test_cors_preflight_wakes_no_instance_and_only_allowed_origins_get_acao(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    assert tidal_server.deploy(write_module(ITEMS, "items.py")).returncode == 0
    allowed = {"origin": "https://app.example", "access-control-request-method": "GET",
               "access-control-request-headers": "X-Token"}  # fmt: skip
    preflight = httpx.options(f"{tidal_server.url}/cors/items/5", headers=allowed, timeout=30)
    assert preflight.status_code == 204, preflight.text
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-methods"] == "GET"
    assert preflight.headers["access-control-allow-headers"] == "x-token"
    assert preflight.headers["access-control-max-age"] == "120"
    stranger = httpx.options(f"{tidal_server.url}/cors/items/5", timeout=30,
                             headers={**allowed, "origin": "https://evil.example"})  # fmt: skip
    assert stranger.status_code == 403 and "access-control-allow-origin" not in stranger.headers
    on_fn = httpx.options(f"{tidal_server.url}/fn/cors_items", timeout=30,
                          headers={**allowed, "access-control-request-method": "POST"})  # fmt: skip
    assert on_fn.status_code == 204 and on_fn.headers["access-control-allow-methods"] == "POST"
    instances = tidal_server.client.get("/v1/functions/cors_items").json()["instances"]
    assert instances["starts"] == 0 and instances["ready"] == 0, instances  # scaled to zero stays there
    answer = httpx.get(
        f"{tidal_server.url}/cors/items/5", headers={"origin": "https://app.example"}, timeout=60
    )
    assert answer.status_code == 200 and answer.json() == {"id": "5"}
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert answer.headers["vary"] == "origin"
    other = httpx.get(
        f"{tidal_server.url}/cors/items/5", headers={"origin": "https://evil.example"}, timeout=60
    )
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    fn = httpx.post(
        f"{tidal_server.url}/fn/cors_items", json={}, headers={"origin": "https://app.example"}, timeout=60
    )
    assert fn.headers["access-control-allow-origin"] == "https://app.example"
