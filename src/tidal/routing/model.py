"""What a route and a CORS policy are, validated once when declared (the hot path never re-parses).

A route is ``METHOD /path/template``: literal segments, ``{name}`` (one segment) and, last only,
``{name+}`` (the rest of the path, one segment or more). ``ANY`` matches every method.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import msgspec

ANY = "ANY"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", ANY})
MAX_PATH_LENGTH = 512
MAX_SEGMENTS = 32
# Paths the gateway serves itself: a route can never take them over.
RESERVED_PREFIXES = ("/fn/", "/v1/", "/docs", "/redoc", "/openapi.json", "/healthz", "/metrics", "/dashboard")
RESERVED_EXACT = frozenset({"/", "/v1", "/fn"})
_PARAMETER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]{0,63})(\+?)\}$")
_LITERAL = re.compile(r"^[A-Za-z0-9._~!$&'()*,;=:@%+-]+$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class RouteError(ValueError):
    """A route or CORS policy that cannot be accepted; the message says which part and why."""


def is_reserved(path: str) -> bool:
    """Whether the gateway answers ``path`` itself (admin API, docs, /fn/, dashboard, metrics)."""
    return path in RESERVED_EXACT or path.startswith(RESERVED_PREFIXES)


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled path template. ``names[i]`` is the parameter at segment i (None: a literal);
    ``shape`` forgets the parameter names, so two templates with one shape match the same paths.
    """

    path: str
    segments: tuple[str, ...]
    names: tuple[str | None, ...]
    greedy: bool
    shape: str

    @property
    def literal(self) -> bool:
        return all(name is None for name in self.names)

    @property
    def specificity(self) -> tuple[int, ...]:
        """Sort key: at the first segment where two templates differ, a literal comes first."""
        return tuple(0 if name is None else 1 for name in self.names)

    def bind(self, segments: list[str]) -> dict[str, str] | None:
        """The parameters if ``segments`` (a request path split on '/') match, else None."""
        params: dict[str, str] = {}
        last = len(self.segments) - 1
        for index, expected in enumerate(self.segments):
            name = self.names[index]
            if name is None:
                if segments[index] != expected:
                    return None
                continue
            value = "/".join(segments[index:]) if self.greedy and index == last else segments[index]
            if not value or (self.greedy and index == last and "" in segments[index:]):
                return None  # a parameter is never empty (`/items/` is not `/items/{id}`)
            params[name] = value
        return params


def compile_template(path: str) -> Template:
    """``/items/{id}`` -> Template; RouteError names what is wrong.

    >>> compile_template("/files/{key+}").shape
    '/files/{+}'
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise RouteError(f"the path must start with '/': {path!r}")
    if len(path) > MAX_PATH_LENGTH:
        raise RouteError(f"the path is longer than {MAX_PATH_LENGTH} characters")
    if path != "/" and path.endswith("/"):
        raise RouteError(f"the path must not end with '/': {path!r}")
    if is_reserved(path):
        raise RouteError(
            f"{path!r} is the gateway's own (/fn/, /v1, /docs, /healthz, /metrics, /dashboard, /)"
        )
    raw_segments = path[1:].split("/")
    if len(raw_segments) > MAX_SEGMENTS:
        raise RouteError(f"the path has more than {MAX_SEGMENTS} segments")
    segments: list[str] = []
    names: list[str | None] = []
    greedy = False
    for index, segment in enumerate(raw_segments):
        parameter = _PARAMETER.match(segment)
        if parameter is not None:
            name, plus = parameter.groups()
            if name in names:
                raise RouteError(f"the parameter {{{name}}} appears twice in {path!r}")
            if plus and index != len(raw_segments) - 1:
                raise RouteError(f"{{{name}+}} takes the rest of the path: it must be the last segment")
            greedy = bool(plus)
            segments.append("")
            names.append(name)
        elif _LITERAL.match(segment) and "{" not in segment and "}" not in segment:
            segments.append(segment)
            names.append(None)
        else:
            raise RouteError(
                f"bad segment {segment!r} in {path!r}: use literal text, {{name}} or a last {{name+}}"
            )
    shape = "/" + "/".join(
        segment if name is None else ("{+}" if greedy and index == len(names) - 1 else "{}")
        for index, (segment, name) in enumerate(zip(segments, names, strict=True))
    )
    return Template(path, tuple(segments), tuple(names), greedy, shape)


def check_method(method: str) -> str:
    upper = method.upper() if isinstance(method, str) else ""
    if upper not in METHODS:
        raise RouteError(f"unknown method {method!r}; one of {', '.join(sorted(METHODS))}")
    return upper


def parse_route(text: str) -> tuple[str, Template]:
    """``"GET /items/{id}"`` -> ("GET", Template); a bare path means ANY."""
    if not isinstance(text, str):
        raise RouteError(f"a route is a string 'METHOD /path', not {type(text).__name__}")
    method, _, path = text.strip().partition(" ")
    if not path:
        method, path = ANY, method
    return check_method(method), compile_template(path.strip())


class CorsPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which browser origins may call; ``methods``/``headers`` empty: the route's methods and any
    header the preflight asks for. ``max_age``: seconds a browser may cache a preflight's answer.
    """

    origins: tuple[str, ...]
    methods: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    max_age: int = 600
    credentials: bool = False


def parse_cors(raw: Any) -> CorsPolicy | None:
    """A CORS policy from its JSON form (``{"origins": [...], ...}``); None for {} or None."""
    if raw is None or raw == {}:
        return None
    try:
        policy = msgspec.convert(raw, CorsPolicy)
    except msgspec.ValidationError as exc:
        raise RouteError(f"cors: {exc}") from None
    if not policy.origins:
        raise RouteError("cors: 'origins' needs at least one origin ('*' or 'https://host[:port]')")
    for origin in policy.origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise RouteError(f"cors: bad origin {origin!r}: '*' or 'https://host[:port]' without a path")
    if policy.credentials and "*" in policy.origins:
        raise RouteError(
            "cors: credentials cannot go with the origin '*' (browsers refuse it); name the origins"
        )
    for method in policy.methods:
        if check_method(method) == ANY:
            raise RouteError("cors: list the methods, 'ANY' is not one")
    for header in policy.headers:
        if not _HEADER_NAME.match(header):
            raise RouteError(f"cors: bad header name {header!r}")
    if not 0 <= policy.max_age <= 86400:
        raise RouteError("cors: max_age is seconds between 0 and 86400")
    return msgspec.structs.replace(
        policy,
        methods=tuple(method.upper() for method in policy.methods),
        headers=tuple(header.lower() for header in policy.headers),
    )


def cors_document(policy: CorsPolicy | None) -> dict[str, Any]:
    """The policy's JSON form (lists, not tuples), as stored; {} for none."""
    if policy is None:
        return {}
    document: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(policy))
    return document


class RouteRecord(msgspec.Struct, frozen=True):
    """One stored route (table ``routes``). ``origin``: 'spec' (tidal.toml / decorator) or 'cli'."""

    id: str
    method: str
    path: str
    function: str
    origin: str
    cors: CorsPolicy | None
    created_at: float

    @property
    def key(self) -> str:
        """API Gateway's ``routeKey``: ``GET /items/{id}``."""
        return f"{self.method} {self.path}"


def spec_route_id(function: str, method: str, path: str) -> str:
    """A declared route keeps its id across redeploys while its declaration stays the same."""
    digest = hashlib.sha256(f"{function}\0{method}\0{path}".encode()).hexdigest()
    return f"rt-{digest[:12]}"
