"""The spec fields ``routes`` and ``cors`` (tidal.spec.FunctionSpec), checked at deploy time.

``cors`` also takes the CLI's ``--cors origins=https://a.example,https://b.example --cors max_age=600``
(KEY=VALUE pairs: lists comma-separated, numbers and booleans as text).
"""

from __future__ import annotations

import json
from typing import Any

from tidal.routing.model import RouteError, RouteRecord, cors_document, parse_cors, parse_route, spec_route_id
from tidal.routing.table import conflicting

LIST_KEYS = ("origins", "methods", "headers")


def check_spec_routes(value: list[str]) -> list[str]:
    """Each route parsed, written back as ``METHOD /path``; two that take the same requests are refused."""
    seen: list[RouteRecord] = []
    for index, text in enumerate(value):
        try:
            method, template = parse_route(text)
            other = conflicting(seen, method, template.path)
        except RouteError as exc:
            raise ValueError(f"routes[{index}]: {exc}") from None
        if other is not None:
            raise ValueError(f"routes[{index}]: {method} {template.path} takes the requests of {other.key}")
        seen.append(RouteRecord("", method, template.path, "", "spec", None, 0.0))
    return [route.key for route in seen]


def check_spec_cors(value: Any) -> dict[str, Any]:
    """The policy as stored (its JSON form), or {} for none."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"takes a table (JSON object): {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("takes a table: {origins = [...], methods, headers, max_age, credentials}")
    try:
        policy = parse_cors(_from_text(value))
    except RouteError as exc:
        raise ValueError(str(exc).removeprefix("cors: ")) from None
    return cors_document(policy)


def _from_text(raw: dict[str, Any]) -> dict[str, Any]:
    """KEY=VALUE flags give text: 'a,b' lists, '600' numbers, 'true' booleans."""
    converted = dict(raw)
    for key in LIST_KEYS:
        if isinstance(converted.get(key), str):
            converted[key] = [part.strip() for part in converted[key].split(",") if part.strip()]
    if isinstance(converted.get("max_age"), str) and converted["max_age"].isdigit():
        converted["max_age"] = int(converted["max_age"])
    if isinstance(converted.get("credentials"), str):
        converted["credentials"] = converted["credentials"].lower() in ("true", "1", "yes")
    return converted


def declared_routes(function: str, settings: dict[str, Any], now: float) -> list[RouteRecord]:
    """The function's ``routes`` as records to store (origin 'spec'), each with the function's ``cors``."""
    cors = parse_cors(settings.get("cors") or None)
    records = []
    for text in settings.get("routes") or ():
        method, template = parse_route(text)
        route_id = spec_route_id(function, method, template.path)
        records.append(RouteRecord(route_id, method, template.path, function, "spec", cors, now))
    return records
