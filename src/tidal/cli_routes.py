"""``tidal route add/ls/rm``: HTTP routes by method and path, and their CORS policies."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from tidal.cli import app, call, out

route_app = typer.Typer(help="HTTP routes: GET /items/{id} -> a function.", no_args_is_help=True)
app.add_typer(route_app, name="route")


def cors_body(
    origins: list[str], methods: list[str], headers: list[str], max_age: int | None, credentials: bool
) -> dict[str, Any] | None:
    """The route's ``cors`` object from the --cors-* flags; None without --cors-origin."""
    if not origins:
        return None
    body: dict[str, Any] = {
        "origins": origins,
        "methods": methods,
        "headers": headers,
        "credentials": credentials,
    }
    if max_age is not None:
        body["max_age"] = max_age
    return body


def describe_cors(cors: dict[str, Any] | None) -> str:
    if not cors:
        return "-"
    text = ", ".join(cors["origins"])
    if cors.get("credentials"):
        text += " (credentials)"
    return text


@route_app.command("add")
def add(
    method: Annotated[str, typer.Argument(help="GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS or ANY")],
    path: Annotated[str, typer.Argument(help="/items/{id}: {name} is one segment, a last {name+} the rest")],
    function: Annotated[str, typer.Argument(help="the function the route invokes")],
    cors_origin: Annotated[list[str], typer.Option("--cors-origin", help="a browser origin allowed to call (https://app.example or *); repeatable")] = [],  # noqa: B006
    cors_method: Annotated[list[str], typer.Option("--cors-method", help="a method allowed cross-origin (default: the route's); repeatable")] = [],  # noqa: B006
    cors_header: Annotated[list[str], typer.Option("--cors-header", help="a request header allowed cross-origin (default: any asked); repeatable")] = [],  # noqa: B006
    cors_max_age: Annotated[int | None, typer.Option("--cors-max-age", help="seconds a browser may cache a preflight (600)")] = None,
    cors_credentials: Annotated[bool, typer.Option("--cors-credentials", help="allow cookies and Authorization cross-origin")] = False,
) -> None:  # fmt: skip
    """Route METHOD PATH to FUNCTION (a route that takes the requests of another is refused)."""
    body: dict[str, Any] = {"method": method, "path": path, "function": function}
    cors = cors_body(cors_origin, cors_method, cors_header, cors_max_age, cors_credentials)
    if cors is not None:
        body["cors"] = cors
    route = call("POST", "/v1/routes", json=body)
    out.print(
        f"{route['id']}  {escape(route['method'])} {escape(route['path'])} -> {route['function']}",
        highlight=False,
    )


@route_app.command("ls")
def list_routes(
    name: Annotated[str | None, typer.Argument(help="only this function's routes")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Routes: method, path, function, where each comes from (spec or cli) and its CORS origins."""
    params = {"function": name} if name is not None else {}
    routes = call("GET", "/v1/routes", params=params)["routes"]
    if as_json:
        sys.stdout.write(json.dumps(routes, indent=2) + "\n")
        return
    table = Table("id", "method", "path", "function", "from", "cors")
    for route in routes:
        table.add_row(route["id"], route["method"], escape(route["path"]), route["function"], route["origin"],
                      escape(describe_cors(route["cors"])))  # fmt: skip
    out.print(table)


@route_app.command("rm")
def remove(route_id: str) -> None:
    """Remove a route added by hand (a declared one goes by removing it from the spec)."""
    call("DELETE", f"/v1/routes/{quote(route_id, safe='')}")
    out.print(f"removed {route_id}")
