"""Pure route matching, conflicts, CORS headers and the spec fields (no gateway, no I/O)."""

from __future__ import annotations

import pytest

from tidal.routing.cors import preflight, response_headers
from tidal.routing.model import RouteError, RouteRecord, compile_template, parse_cors, parse_route
from tidal.routing.table import Match, NotAllowed, RouteTable, conflicting
from tidal.spec import FunctionSpec, SpecError, validate_spec


def route(text: str, function: str = "items", cors: dict[str, object] | None = None) -> RouteRecord:
    method, template = parse_route(text)
    return RouteRecord(f"rt-{text}", method, template.path, function, "cli", parse_cors(cors), 0.0)


TABLE = RouteTable(
    [
        route("GET /items/{id}"),
        route("GET /items/new", "new_item"),
        route("POST /items"),
        route("GET /items/{id}/tags/{tag}", "tags"),
        route("GET /users/{user}/files/{path+}", "files"),
        route("/files/{path+}", "any_files"),
        route("DELETE /items/{id}", "delete_item"),
    ]
)


def test_parameters_literals_and_greedy_tails() -> None:
    found = TABLE.match("GET", "/items/42")
    assert isinstance(found, Match) and found.route.function == "items" and found.params == {"id": "42"}
    literal = TABLE.match("GET", "/items/new")
    assert isinstance(literal, Match) and literal.route.function == "new_item" and literal.params == {}
    tags = TABLE.match("GET", "/items/7/tags/red")
    assert isinstance(tags, Match) and tags.params == {"id": "7", "tag": "red"}
    deep = TABLE.match("GET", "/users/ann/files/a/b/c.txt")
    assert isinstance(deep, Match) and deep.params == {"user": "ann", "path": "a/b/c.txt"}
    any_method = TABLE.match("PATCH", "/files/x")
    assert isinstance(any_method, Match) and any_method.route.function == "any_files"
    deleted = TABLE.match("DELETE", "/items/3")
    assert isinstance(deleted, Match) and deleted.route.function == "delete_item"


def test_no_route_and_wrong_method() -> None:
    assert TABLE.match("GET", "/nothing") is None
    assert TABLE.match("GET", "/items/") is None, "a parameter is never empty"
    assert TABLE.match("GET", "/files") is None, "a greedy tail takes one segment or more"
    refused = TABLE.match("PUT", "/items/42")
    assert isinstance(refused, NotAllowed) and refused.allow == ("DELETE", "GET")
    assert isinstance(TABLE.match("GET", "/items"), NotAllowed)


def test_conflicts_are_same_shape_and_overlapping_methods() -> None:
    existing = [route("GET /items/{id}"), route("/files/{path+}")]
    assert conflicting(existing, "GET", "/items/{name}") is existing[0]
    assert conflicting(existing, "ANY", "/items/{x}") is existing[0]
    assert conflicting(existing, "POST", "/items/{id}") is None
    assert conflicting(existing, "GET", "/items/new") is None, "a literal beats a parameter"
    assert conflicting(existing, "GET", "/files/{key+}") is existing[1]
    assert conflicting(existing, "GET", "/files/{key}") is None


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("items", "must start with '/'"),
        ("/items/", "must not end with '/'"),
        ("/v1/things", "the gateway's own"),
        ("/fn/x", "the gateway's own"),
        ("/a/{x+}/b", "must be the last segment"),
        ("/a/{x}/{x}", "appears twice"),
        ("/a/b{x}", "bad segment"),
        ("/a//b", "bad segment"),
    ],
)
def test_bad_templates_say_why(path: str, message: str) -> None:
    with pytest.raises(RouteError, match=message):
        compile_template(path)


def test_cors_headers() -> None:
    policy = parse_cors({"origins": ["https://app.example"], "max_age": 60})
    assert policy is not None
    assert response_headers(policy, "https://app.example") == [
        (b"access-control-allow-origin", b"https://app.example"),
        (b"vary", b"origin"),
    ]
    assert response_headers(policy, "https://evil.example") == [(b"vary", b"origin")]
    status, headers, _ = preflight(policy, "https://app.example", "GET", "Content-Type, X-Token", ("GET",))
    assert status == 204
    assert dict(headers)[b"access-control-allow-methods"] == b"GET"
    assert dict(headers)[b"access-control-allow-headers"] == b"content-type, x-token"
    assert dict(headers)[b"access-control-max-age"] == b"60"
    status, headers, why = preflight(policy, "https://evil.example", "GET", "", ("GET",))
    assert status == 403 and b"access-control-allow-origin" not in dict(headers) and "evil" in why
    assert preflight(policy, "https://app.example", "DELETE", "", ("GET",))[0] == 403
    with pytest.raises(RouteError, match="credentials"):
        parse_cors({"origins": ["*"], "credentials": True})


def test_spec_fields_routes_and_cors() -> None:
    spec = FunctionSpec(
        name="items",
        routes=["GET /items/{id}", "/files/{path+}"],
        cors={"origins": "https://a.example,https://b.example", "max_age": "60"},
    )
    assert spec.routes == ["GET /items/{id}", "ANY /files/{path+}"]
    assert spec.cors["origins"] == ["https://a.example", "https://b.example"] and spec.cors["max_age"] == 60
    assert "routes" in spec.function_settings() and "routes" not in spec.revision_fields()
    with pytest.raises(
        SpecError, match=r"routes\[1\]: GET /items/\{name\} takes the requests of GET /items/\{id\}"
    ):
        validate_spec({"name": "x", "routes": ["GET /items/{id}", "GET /items/{name}"]})
    with pytest.raises(SpecError, match="bad origin"):
        validate_spec({"name": "x", "cors": {"origins": ["ftp://x"]}})


def test_match_cost_with_100_routes_is_printed() -> None:
    """Not a pass/fail timing: prints ns per match for the report (see docs/routes.md)."""
    import timeit

    routes = [route(f"GET /r{i}/items/{{id}}", f"f{i}") for i in range(50)]
    routes += [route(f"GET /s{i}/static", f"g{i}") for i in range(50)]
    table = RouteTable(routes)
    assert table.size == 100
    for path in ("/s25/static", "/r49/items/42", "/none/at/all"):
        number = 20000
        seconds = timeit.timeit(lambda path=path: table.match("GET", path), number=number)
        print(f"match {path}: {seconds / number * 1e9:.0f} ns")
