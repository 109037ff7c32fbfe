"""OpenAPI for typed inputs: ``GET /fn/NAME/openapi.json`` (one function) and the typed
functions' entries in the gateway's own document (``/openapi.json``, shown at ``/docs``).

The JSON Schema of a function's input was found at deploy by the sandboxed inspection and stored
on its revision (``Revision.input_schema``); nothing here imports function code. Nested models
are the schema's ``$defs``: they move to ``components/schemas`` under ``NAME__Model`` so that two
functions' models of the same name do not collide.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tidal import __version__
from tidal.router.router import Route

DEFS_REF = "#/$defs/"
COMPONENTS_REF = "#/components/schemas/"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "activation": {"type": "string"},
                "errors": {
                    "type": "array",
                    "description": "with 422 ValidationError: pydantic's error list (type, loc, msg, input)",
                    "items": {"type": "object"},
                },
            },
            "required": ["type", "message"],
        }
    },
}
ERROR_STATUSES = {
    "400": "malformed JSON",
    "401": "no valid API key",
    "403": "the key may not invoke this function",
    "404": "no such function",
    "422": "the body does not fit the input type (ValidationError, with `errors`), or the function refused it",
    "429": "queue full, or the key's rate limit (RateLimited) or quota (QuotaExceeded); see Retry-After",
    "500": "the function raised",
    "502": "the instance was lost or could not start",
    "504": "the function ran past its timeout",
}


def input_schema(route: Route) -> dict[str, Any] | None:
    """The serving (primary) revision's input schema, parsed; None when its input is untyped."""
    text = route.primary.revision.input_schema
    if not text:
        return None
    try:
        schema = json.loads(text)
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


def relocate(schema: dict[str, Any], function: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the body's schema, the component schemas it refers to), ``$defs`` moved to components.

    >>> relocate({"$ref": "#/$defs/Item", "$defs": {"Item": {"type": "object"}}}, "f")
    ({'$ref': '#/components/schemas/f__Item'}, {'f__Item': {'type': 'object'}})
    """
    prefix = f"{COMPONENTS_REF}{function}__"

    def moved(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: (prefix + value[len(DEFS_REF) :])
                if key == "$ref" and isinstance(value, str) and value.startswith(DEFS_REF)
                else moved(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [moved(item) for item in node]
        return node

    definitions = schema.get("$defs") if isinstance(schema.get("$defs"), dict) else {}
    body = moved({key: value for key, value in schema.items() if key != "$defs"})
    components = {f"{function}__{name}": moved(value) for name, value in (definitions or {}).items()}
    return body, components


def path_item(function: str, body_schema: dict[str, Any] | None) -> dict[str, Any]:
    """The OpenAPI path item of ``POST /fn/NAME``."""
    error = {"content": {"application/json": {"schema": {"$ref": f"{COMPONENTS_REF}Error"}}}}
    title = body_schema.get("title") if body_schema else None
    return {
        "post": {
            "summary": f"Invoke {function}" + (f" with a {title}" if title else ""),
            "operationId": f"invoke_{function.replace('-', '_')}",
            "tags": ["functions"],
            "requestBody": {
                "required": body_schema is not None,
                "content": {"application/json": {"schema": body_schema or {}}},
            },
            "responses": {
                "200": {"description": "the function's return value", "content": {"application/json": {}}},
                **{status: {"description": text, **error} for status, text in ERROR_STATUSES.items()},
            },
            "security": [{"bearer": []}],
        }
    }


def function_document(route: Route) -> dict[str, Any]:
    """A whole OpenAPI 3.1 document for one function: ``GET /fn/NAME/openapi.json``."""
    schema = input_schema(route)
    body, components = relocate(schema, route.function) if schema is not None else (None, {})
    revision = route.primary.revision
    return {
        "openapi": "3.1.0",
        "info": {"title": route.function, "version": revision.id, "x-tidal-version": __version__},
        "paths": {f"/fn/{route.function}": path_item(route.function, body)},
        "components": {
            "schemas": {**components, "Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def with_typed_functions(base: dict[str, Any], routes: Iterable[Route]) -> dict[str, Any]:
    """The gateway's document plus ``POST /fn/NAME`` for each function with a typed input (a copy)."""
    paths = dict(base.get("paths", {}))
    components = dict(base.get("components", {}))
    schemas = dict(components.get("schemas", {}))
    for route in sorted(routes, key=lambda route: route.function):
        schema = input_schema(route)
        if schema is None:
            continue
        body, found = relocate(schema, route.function)
        paths[f"/fn/{route.function}"] = path_item(route.function, body)
        schemas.update(found)
    schemas["Error"] = ERROR_SCHEMA
    components["schemas"] = schemas
    components.setdefault("securitySchemes", {"bearer": {"type": "http", "scheme": "bearer"}})
    return {**base, "paths": paths, "components": components}
