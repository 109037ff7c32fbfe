"""Matching a request to a route: pure, built once per change of routes, read on every request.

Order (literal segments beat parameters, as in API Gateway): the dict of literal paths first,
then the templates with as many segments as the path (those whose first segment is the path's
first, then those with a parameter there), most specific first, then the greedy (``{name+}``)
templates, longest fixed part first. Buckets keep the scan to a few templates with 100 routes. A path that matches but not for its method
gives the methods it has (405 + Allow), as Starlette's three-way ``matches`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tidal.routing.model import ANY, RouteRecord, Template, compile_template

ROUTE_SCOPE_KEY = "tidal.route"  # the ASGI scope entry that carries a Match to the invoke adapter


@dataclass(slots=True)
class Pattern:
    """Every route of one template: method -> route."""

    template: Template
    methods: dict[str, RouteRecord] = field(default_factory=dict)

    def pick(self, method: str) -> RouteRecord | None:
        return self.methods.get(method) or self.methods.get(ANY)


@dataclass(frozen=True, slots=True)
class Match:
    route: RouteRecord
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class NotAllowed:
    """The path has routes, none for this method; ``patterns`` are the ones the path matched."""

    allow: tuple[str, ...]
    patterns: tuple[Pattern, ...]


def conflicting(existing: Iterable[RouteRecord], method: str, path: str) -> RouteRecord | None:
    """The route that already takes the requests ``method path`` would: same shape, and the
    same method or ANY on either side. ``/items/{id}`` and ``/items/{name}`` conflict;
    ``/items/new`` and ``/items/{id}`` do not (the literal wins).
    """
    shape = compile_template(path).shape
    for route in existing:
        if (route.method == method or ANY in (route.method, method)) and (
            compile_template(route.path).shape == shape
        ):
            return route
    return None


class RouteTable:
    """An immutable index of routes; ``match`` costs one dict lookup for a literal path."""

    def __init__(self, routes: Iterable[RouteRecord]) -> None:
        patterns: dict[str, Pattern] = {}
        for route in routes:
            template = compile_template(route.path)
            pattern = patterns.setdefault(template.shape, Pattern(template))
            pattern.methods[route.method] = route
        self.literal: dict[str, Pattern] = {}
        # Templates with parameters, bucketed so that a request scans only the few that could match:
        # by (segment count, first segment) when the first segment is literal, else by segment count.
        self.by_first: dict[tuple[int, str], list[Pattern]] = {}
        self.by_count: dict[int, list[Pattern]] = {}
        self.greedy_by_first: dict[str, list[Pattern]] = {}
        self.greedy: list[Pattern] = []
        for pattern in patterns.values():
            template = pattern.template
            first_literal = template.names[0] is None
            if template.literal:
                self.literal[template.path] = pattern
            elif template.greedy and first_literal:
                self.greedy_by_first.setdefault(template.segments[0], []).append(pattern)
            elif template.greedy:
                self.greedy.append(pattern)
            elif first_literal:
                self.by_first.setdefault((len(template.segments), template.segments[0]), []).append(pattern)
            else:
                self.by_count.setdefault(len(template.segments), []).append(pattern)
        for bucket in (*self.by_first.values(), *self.by_count.values()):
            bucket.sort(key=lambda pattern: pattern.template.specificity)
        for bucket in (*self.greedy_by_first.values(), self.greedy):
            bucket.sort(key=lambda pattern: (-len(pattern.template.segments), pattern.template.specificity))
        self.size = sum(len(pattern.methods) for pattern in patterns.values())

    def __bool__(self) -> bool:
        return self.size > 0

    def match(self, method: str, path: str) -> Match | NotAllowed | None:
        """The route for ``method path`` and its parameters; NotAllowed; or None (no route has the path)."""
        refused: list[Pattern] = []
        pattern = self.literal.get(path)
        if pattern is not None:
            route = pattern.pick(method)
            if route is not None:
                return Match(route, {})
            refused.append(pattern)
        segments = path[1:].split("/")
        count, first = len(segments), segments[0]
        # A literal first segment beats a parameter there, so its bucket goes first.
        for bucket in (self.by_first.get((count, first)), self.by_count.get(count)):
            for pattern in bucket or ():
                params = pattern.template.bind(segments)
                if params is not None:
                    route = pattern.pick(method)
                    if route is not None:
                        return Match(route, params)
                    refused.append(pattern)
        for bucket in (self.greedy_by_first.get(first), self.greedy):
            for pattern in bucket or ():
                if count >= len(pattern.template.segments):
                    params = pattern.template.bind(segments)
                    if params is not None:
                        route = pattern.pick(method)
                        if route is not None:
                            return Match(route, params)
                        refused.append(pattern)
        if not refused:
            return None
        allow = sorted({method for pattern in refused for method in pattern.methods})
        return NotAllowed(tuple(allow), tuple(refused))


EMPTY = RouteTable(())
