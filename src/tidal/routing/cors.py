"""CORS headers from a policy (pure). The gateway answers preflights itself: a browser's OPTIONS
never wakes an instance, and a disallowed origin never gets an Access-Control-Allow-Origin.
"""

from __future__ import annotations

from tidal.routing.model import CorsPolicy

Headers = list[tuple[bytes, bytes]]
DEFAULT_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_origin(policy: CorsPolicy, origin: str) -> str | None:
    """What Access-Control-Allow-Origin says for ``origin``, or None when it is not allowed."""
    if origin in policy.origins:
        return origin
    if "*" in policy.origins:
        return "*"
    return None


def response_headers(policy: CorsPolicy, origin: str) -> Headers:
    """Headers for an actual (non-preflight) response to a request from ``origin``."""
    allowed = allowed_origin(policy, origin)
    if allowed is None:
        return [(b"vary", b"origin")]  # a cache must not hand this answer to an allowed origin
    headers = [(b"access-control-allow-origin", allowed.encode())]
    if allowed != "*":
        headers.append((b"vary", b"origin"))
    if policy.credentials:
        headers.append((b"access-control-allow-credentials", b"true"))
    return headers


def preflight(
    policy: CorsPolicy, origin: str, method: str, requested_headers: str, route_methods: tuple[str, ...]
) -> tuple[int, Headers, str]:
    """The answer to ``OPTIONS`` with ``Access-Control-Request-Method: method``: (status, headers,
    why refused). 204 with the allowed methods and headers, or 403 naming what is not allowed.
    """
    allowed = allowed_origin(policy, origin)
    if allowed is None:
        return 403, [(b"vary", b"origin")], f"the origin {origin!r} is not allowed"
    methods = policy.methods or tuple(m for m in route_methods if m != "ANY") or DEFAULT_METHODS
    if "ANY" in route_methods and not policy.methods:
        methods = DEFAULT_METHODS
    if method.upper() not in methods:
        return (
            403,
            [(b"vary", b"origin")],
            f"the method {method!r} is not allowed (allowed: {', '.join(methods)})",
        )
    asked = [name.strip().lower() for name in requested_headers.split(",") if name.strip()]
    if policy.headers:
        refused = [name for name in asked if name not in policy.headers]
        if refused:
            return 403, [(b"vary", b"origin")], f"the header(s) {', '.join(refused)} are not allowed"
    headers = response_headers(policy, origin)
    headers.append((b"access-control-allow-methods", ", ".join(methods).encode()))
    allow_headers = ", ".join(policy.headers) if policy.headers else ", ".join(asked)
    if allow_headers:
        headers.append((b"access-control-allow-headers", allow_headers.encode()))
    headers.append((b"access-control-max-age", str(policy.max_age).encode()))
    return 204, headers, ""
