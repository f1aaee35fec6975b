"""route: pick the cluster from the path, headers and the JSON body's ``model``.

The body is parsed once here and kept in `StreamInfo.body_json` for later filters. It is
forwarded byte for byte, except when ``model`` is an alias: then only the model changes
(the document is written back as JSON), so the upstream sees a name it knows.

``GET /v1/models`` is answered here, from the routes' model names and the aliases
(OpenAI's list shape), unless a route's ``path_prefix`` claims the path for an upstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from filterproxy.config import RouteConfig
from filterproxy.filters.api import FilterContext, FilterStatus, RequestHead, StreamFilter
from filterproxy.filters.routing import model_matches, resolve_alias, select_route

__all__ = ["RouteFilter", "RouteTable", "parse_body"]


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[RouteConfig, ...]
    aliases: Mapping[str, str]

    def known_models(self) -> list[str]:
        names = {m for r in self.routes for m in r.models}
        return sorted(names | set(self.aliases))

    def model_list(self, created: int) -> dict[str, Any]:
        """``GET /v1/models``: the models the routes name (not glob patterns) and the
        aliases, in OpenAI's list shape; ``owned_by`` is the cluster that serves each."""
        owners: dict[str, str] = {}
        for route in self.routes:
            for model in route.models:
                if not any(c in model for c in "*?["):
                    owners.setdefault(model, route.cluster)
        for alias, target in self.aliases.items():
            serving = next((r for r in self.routes if model_matches(r.models, target)), None)
            owners.setdefault(alias, serving.cluster if serving is not None else "alias")
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": owner}
                for name, owner in sorted(owners.items())
            ],
        }


#: Answered by the gateway from its routes, unless a route's path_prefix claims them.
MODEL_LIST_PATHS = frozenset({"/v1/models", "/models"})
_STARTED = int(time.time())


class BadBody(ValueError):
    """The request body cannot be routed; the message says why."""


#: Bodies of these media types are not JSON and are routed by path and headers alone.
_NOT_JSON_PREFIXES = ("multipart/", "audio/", "image/", "video/", "application/octet-stream")


def _is_json(content_type: str | None) -> bool:
    """Whether a body of *content_type* is read as JSON. Anything that is not clearly a
    binary or multipart upload is: clients often send JSON with a wrong or missing type
    (``curl -d`` says ``application/x-www-form-urlencoded``)."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return not media.startswith(_NOT_JSON_PREFIXES)


def parse_body(body: bytes, content_type: str | None) -> dict[str, Any] | None:
    """The JSON object in *body*, None when there is nothing to parse.

    Raises:
        BadBody: the body should be JSON and is not a JSON object with a string model.
    """
    if not body or not _is_json(content_type):
        return None
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadBody("request body is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise BadBody(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadBody("request body is nested too deeply") from None
    if not isinstance(document, dict):
        raise BadBody(f"request body must be a JSON object, got a JSON {type(document).__name__}")
    model = document.get("model")
    if model is not None and not isinstance(model, str):
        raise BadBody(f"'model' must be a string, got {json.dumps(model)[:60]}")
    return document


class RouteFilter(StreamFilter):
    """Chooses the route and cluster for each request (see `select_route`)."""

    config: RouteTable

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> RouteTable:
        super().configure(options, context)
        return RouteTable(context.config.routes, context.config.aliases)

    def __init__(self, config: RouteTable) -> None:
        super().__init__(config)
        self.head: RequestHead | None = None

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        self.head = head
        if self._is_model_list(head):
            body = json.dumps(self.config.model_list(_STARTED)).encode()
            self.callbacks.send_local_response(200, body, "application/json")
            return FilterStatus.STOP_ITERATION
        if end_stream:
            return self._route(None)
        return FilterStatus.STOP_ITERATION

    def _is_model_list(self, head: RequestHead) -> bool:
        if head.method not in ("GET", "HEAD") or head.path.split("?", 1)[0] not in MODEL_LIST_PATHS:
            return False
        return not any(
            r.path_prefix is not None and head.path.startswith(r.path_prefix)
            for r in self.config.routes
        )

    def decode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        if not end_stream:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        assert self.head is not None
        buffered = self.callbacks.buffered_request_body()
        body = buffered + data if buffered else data
        try:
            document = parse_body(body, self.head.headers.get("content-type"))
        except BadBody as e:
            self.callbacks.send_local_reply(400, str(e), code="invalid_request_body")
            return FilterStatus.STOP_ITERATION
        return self._route(document)

    def _route(self, document: dict[str, Any] | None) -> FilterStatus:
        head = self.head
        assert head is not None
        info = self.callbacks.stream_info
        requested = document.get("model") if document is not None else None
        model = resolve_alias(requested, self.config.aliases) if requested is not None else None
        route = select_route(
            self.config.routes,
            method=head.method,
            path=head.path,
            headers=head.headers,
            model=model,
        )
        if route is None:
            if requested is not None:
                known = ", ".join(self.config.known_models()) or "none"
                message = (
                    f"model {requested!r} is not served by this gateway; known models: {known}"
                )
                self.callbacks.send_local_reply(404, message, code="model_not_found")
            else:
                self.callbacks.send_local_reply(
                    404, f"no route for {head.method} {head.path}", code="route_not_found"
                )
            return FilterStatus.STOP_ITERATION
        if document is not None:
            info.body_json = document
            if model != requested:
                document["model"] = model
                self.callbacks.replace_request_body(
                    json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
                )
        info.model = model
        info.route = route
        info.cluster = route.cluster
        return FilterStatus.CONTINUE
