"""route: pick the cluster from the path, headers and the JSON body's ``model``.

The body is parsed here (a body that should be JSON and is not gets a 400) and handed to
the chain as the request's document (`IFilterCallbacks.set_request_json`), which later
filters read without parsing again. It is forwarded byte for byte, except when ``model``
is an alias: then only the model changes (the document is written back as JSON), so the
upstream sees a name it knows.

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
from filterproxy.extensions.route.matching import model_matches, resolve_alias, select_route
from filterproxy.filters.api import FilterContext, FilterStatus, RequestHead, StreamFilter
from filterproxy.http.body import BadBody, parse_body

__all__ = ["RouteFilter", "RouteTable", "parse_body"]


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[RouteConfig, ...]
    aliases: Mapping[str, str]

    def known_models(self) -> list[str]:
        names = {m for r in self.routes for m in r.models}
        return sorted(names | set(self.aliases))

    def model_list(self, created: int, *, anthropic: bool = False) -> dict[str, Any]:
        """``GET /v1/models``: the models the routes name (not glob patterns) and the
        aliases, in OpenAI's list shape (``owned_by`` is the cluster that serves each),
        or in Anthropic's when *anthropic*."""
        owners: dict[str, str] = {}
        for route in self.routes:
            for model in route.models:
                if not any(c in model for c in "*?["):
                    owners.setdefault(model, route.cluster)
        for alias, target in self.aliases.items():
            serving = next((r for r in self.routes if model_matches(r.models, target)), None)
            owners.setdefault(alias, serving.cluster if serving is not None else "alias")
        if anthropic:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
            names = sorted(owners)
            return {
                "data": [
                    {"type": "model", "id": n, "display_name": n, "created_at": stamp}
                    for n in names
                ],
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            }
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


class RouteFilter(StreamFilter):
    """Chooses the route and cluster for each request (see `select_route`)."""

    config: RouteTable
    chooses_cluster = True
    provides = ("route",)

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
            anthropic = head.headers.get("anthropic-version") is not None
            body = json.dumps(self.config.model_list(_STARTED, anthropic=anthropic)).encode()
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
        # Parsed by the chain when the body came whole (after body-accumulate), else here.
        document = self.callbacks.request_json()
        if document is None:
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
        if model is not None and (route.upstream_model or route.strip_model_prefix):
            model = route.upstream_model_for(model)
        if document is not None:
            changed = model != requested
            if changed:
                document["model"] = model
            self.callbacks.set_request_json(document, changed=changed)
        info.model = model
        info.route = route
        info.cluster = route.cluster
        return FilterStatus.CONTINUE
