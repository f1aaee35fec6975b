"""Route selection as plain functions: no I/O, no Twisted, easy to test.

A route matches when every match key it has matches: ``models`` (exact names or glob
patterns such as ``gpt-4o*``), ``path_prefix``, ``methods`` and ``headers`` (exact
values). Aliases are resolved before matching. Routes are tried in order; the first
that matches wins, so a route with no match keys at the end is the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

from filterproxy.config import RouteConfig
from filterproxy.http.headers import Headers

__all__ = ["model_matches", "resolve_alias", "select_route"]


def resolve_alias(model: str, aliases: Mapping[str, str]) -> str:
    """The model an alias stands for, or *model* itself."""
    return aliases.get(model, model)


def model_matches(patterns: Sequence[str], model: str | None) -> bool:
    """Whether *model* matches one of *patterns*; no patterns match everything."""
    if not patterns:
        return True
    if model is None:
        return False
    return any(p == model or fnmatchcase(model, p) for p in patterns)


def select_route(
    routes: Sequence[RouteConfig], *, method: str, path: str, headers: Headers, model: str | None
) -> RouteConfig | None:
    """The first route that matches the request, or None."""
    bare_path = path.split("?", 1)[0]
    for route in routes:
        if route.methods and method not in route.methods:
            continue
        if route.path_prefix is not None and not bare_path.startswith(route.path_prefix):
            continue
        if any(headers.get(name) != value for name, value in route.match_headers):
            continue
        if not model_matches(route.models, model):
            continue
        return route
    return None
