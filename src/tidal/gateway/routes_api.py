"""``/v1/routes``: HTTP routes by method and path (admin).

``POST /v1/routes`` takes ``{"method": "GET", "path": "/items/{id}", "function": NAME, "cors": {...}}``:
201 with the route; 400 for a bad method, path or CORS policy; 404 when the function does not
exist; 409 naming the route that already takes the same requests. A route declared in a
function's spec goes by removing it there and deploying again (``DELETE`` answers 409 for it).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from tidal.gateway.admin import Admin, ApiError, json_object
from tidal.routing.model import RouteError, RouteRecord, cors_document
from tidal.routing.service import RouteConflict
from tidal.spec import NAME_PATTERN

router = APIRouter(prefix="/v1")


def route_document(route: RouteRecord) -> dict[str, Any]:
    return {
        "id": route.id,
        "method": route.method,
        "path": route.path,
        "function": route.function,
        "origin": route.origin,
        "cors": cors_document(route.cors) or None,
        "created_at": route.created_at,
    }


@router.get("/routes", summary="HTTP routes, by path (admin)")
async def list_routes(
    platform: Admin, function: Annotated[str | None, Query(max_length=63)] = None
) -> dict[str, Any]:
    routes = await asyncio.to_thread(platform.store.routes, function)
    return {"routes": [route_document(route) for route in routes]}


@router.post("/routes", status_code=201, summary="Route METHOD /path to a function (admin)")
async def add_route(request: Request, platform: Admin) -> dict[str, Any]:
    body = await json_object(request)
    unknown = sorted(set(body) - {"method", "path", "function", "cors"})
    if unknown:
        raise ApiError(400, "BadRequest", f"unknown field(s) {unknown}; known: method, path, function, cors")
    function, method, path = body.get("function"), body.get("method", "ANY"), body.get("path")
    if not isinstance(function, str) or not NAME_PATTERN.match(function):
        raise ApiError(400, "BadRequest", "'function' must name a function")
    if not isinstance(method, str) or not isinstance(path, str):
        raise ApiError(400, "BadRoute", "'method' and 'path' must be strings: GET, /items/{id}")
    cors = body.get("cors")
    if cors is not None and not isinstance(cors, dict):
        raise ApiError(
            400, "BadRoute", "'cors' must be an object: {origins: [...], methods, headers, max_age}"
        )
    try:
        route = await platform.routes.add(method, path, function, cors)
    except RouteError as exc:
        raise ApiError(400, "BadRoute", str(exc)) from None
    except RouteConflict as exc:
        raise ApiError(409, "RouteConflict", str(exc)) from None
    except LookupError:
        raise ApiError(404, "NotFound", f"no function named {function!r}") from None
    return route_document(route)


@router.delete("/routes/{route_id}", summary="Remove an HTTP route (admin)")
async def remove_route(route_id: str, platform: Admin) -> dict[str, Any]:
    route = await asyncio.to_thread(platform.store.route, route_id)
    if route is None:
        raise ApiError(404, "NotFound", f"no route {route_id!r}")
    if route.origin == "spec":
        raise ApiError(
            409, "DeclaredInSpec",
            f"route {route_id} is declared in the spec of {route.function!r}: remove it there and deploy again",
        )  # fmt: skip
    await platform.routes.remove(route_id)
    return {"id": route_id, "deleted": True}
