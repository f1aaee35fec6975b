"""Management endpoints on the admin listener that extensions own.

An extension serves its own management API (the keys extension's ``/keys`` and
``/teams``) by registering routes on the process's `AdminRoutes` (in its `Resources`:
``resources.get(AdminRoutes, AdminRoutes)``) from its filter class's ``activate`` — when
its chain goes in force. The chain clears the table before its filters activate, so a
reload replaces the routes (a filter the new config drops takes its routes with it).

A handler takes an `AdminRequest` and returns an `AdminReply`, or a Deferred that fires
with one (a Redis round trip); it raises `AdminError` to refuse (the listener answers
``{"error": message}`` with its status). Every registered route needs the admin token
(``Authorization: Bearer <admin.token>``): the admin listener checks it before the
handler runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer

from filterproxy.config import ConfigError

__all__ = ["AdminError", "AdminHandler", "AdminReply", "AdminRequest", "AdminRoute", "AdminRoutes"]


class AdminError(Exception):
    """A management request refused: answered ``{"error": message}`` with *status*
    (400 bad input, 404 unknown, 409 conflict with the gateway's state...)."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    @classmethod
    def from_config(cls, error: ConfigError) -> AdminError:
        """A 400 from a config parse function's error (it names the field)."""
        return cls(400, str(error))


@dataclass(frozen=True)
class AdminRequest:
    """One request to a registered route."""

    #: ``GET``, ``POST``... (HEAD is given to the GET handler as ``GET``).
    method: str
    #: The path, without the query.
    path: str
    #: The pattern's ``{name}`` parts, URL-decoded.
    params: Mapping[str, str] = field(default_factory=dict)
    #: The query's parameters (each name may repeat).
    query: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Request headers, names in lower case (a repeated header: its last value).
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON.

        Raises:
            AdminError: 400, the body is empty or not JSON.
        """
        if not self.body.strip():
            raise AdminError(400, "this request needs a JSON body")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise AdminError(400, f"the body is not valid JSON: {e}") from None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object.

        Raises:
            AdminError: 400, the body is not a JSON object.
        """
        document = self.json()
        if not isinstance(document, dict):
            raise AdminError(400, f"the body must be a JSON object, got {type(document).__name__}")
        return document


@dataclass(frozen=True)
class AdminReply:
    """What a management request is answered with."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(
        cls, document: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
    ) -> AdminReply:
        """A JSON reply (indented: people read these)."""
        text = json.dumps(document, indent=2)
        return cls(status, "application/json", text.encode() + b"\n", headers)

    @classmethod
    def html(cls, text: str, status: int = 200) -> AdminReply:
        """An HTML page."""
        return cls(status, "text/html; charset=utf-8", text.encode())

    @classmethod
    def error(
        cls, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> AdminReply:
        """``{"error": message}`` with *status*."""
        return cls(
            status,
            "application/json",
            json.dumps({"error": message}).encode() + b"\n",
            headers,
        )


#: A management handler: the request → its reply, now or later.
AdminHandler = Callable[[AdminRequest], "AdminReply | defer.Deferred[AdminReply]"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _compile(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise ValueError(f"an admin route's path starts with '/': {pattern!r}")
    parts: list[str] = []
    end = 0
    for match in _PARAM.finditer(pattern):
        parts.append(re.escape(pattern[end : match.start()]))
        parts.append(f"(?P<{match.group(1)}>[^/]+)")
        end = match.end()
    parts.append(re.escape(pattern[end:]))
    return re.compile("".join(parts) + r"\Z")


@dataclass(frozen=True)
class AdminRoute:
    """One registered route: a method on a path pattern (``/keys/{name}``)."""

    method: str
    pattern: str
    handler: AdminHandler
    #: Who registered it (the extension), for logs.
    owner: str
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def match(self, path: str) -> dict[str, str] | None:
        """The pattern's parameters in *path*, or None when it does not match."""
        found = self.regex.match(path)
        if found is None:
            return None
        return {name: unquote(value) for name, value in found.groupdict().items()}


class AdminRoutes:
    """The process's registered management routes (one, in its `Resources`)."""

    def __init__(self, resources: object = None) -> None:
        self._routes: list[AdminRoute] = []

    def add(self, method: str, pattern: str, handler: AdminHandler, *, owner: str) -> None:
        """Serve *method* (``GET``, ``POST``, ``PATCH``, ``PUT``, ``DELETE``) on
        *pattern*, a path whose ``{name}`` parts match one segment each. A second
        registration of the same method and pattern replaces the first."""
        method = method.upper()
        route = AdminRoute(method, pattern, handler, owner, _compile(pattern))
        self._routes = [r for r in self._routes if (r.method, r.pattern) != (method, pattern)] + [
            route
        ]

    def remove(self, owner: str) -> None:
        """Forget *owner*'s routes."""
        self._routes = [r for r in self._routes if r.owner != owner]

    def clear(self) -> None:
        """Forget every route (a chain going in force registers its own again)."""
        self._routes = []

    @property
    def routes(self) -> tuple[AdminRoute, ...]:
        return tuple(self._routes)

    def find(self, method: str, path: str) -> tuple[AdminRoute | None, dict[str, str], list[str]]:
        """The route for *method* on *path* and its parameters; when none takes the
        method but some match the path, the methods they take (for 405 and
        ``Allow``); when none matches the path, an empty list (404)."""
        wanted = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for route in self._routes:
            params = route.match(path)
            if params is None:
                continue
            if route.method == wanted:
                return route, params, []
            allowed.append(route.method)
        if "GET" in allowed:
            allowed.append("HEAD")
        return None, {}, allowed


#: Query parameters as the request gives them.
Query = Mapping[str, tuple[str, ...]]


def first(query: Query, name: str, default: str | None = None) -> str | None:
    """The first value of query parameter *name*."""
    values = query.get(name)
    return values[0] if values else default
