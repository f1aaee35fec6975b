"""The admin listener: metrics, health, readiness, the effective config, reload.

Served with twisted.web on its own endpoint (``admin.listen``, by default
``tcp:9901:interface=127.0.0.1`` — never public unless configured so):

- ``GET /metrics``: Prometheus text format (see `filterproxy.metrics`).
- ``GET /healthz``: 200 while the process runs.
- ``GET /ready``: 200 when a config is loaded and every cluster has an endpoint that is
  not ejected; 503 naming the clusters that have none.
- ``GET /config``: the effective config as JSON, secrets redacted (`redacted_config`).
- ``POST /reload``: re-read the config file (as SIGHUP does); 200, or 400 with the error
  when the new config is invalid (the old one stays in force).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from filterproxy.config import Config

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from filterproxy.service import Gateway

__all__ = ["REDACTED", "admin_site", "is_secret_header", "readiness", "redacted_config"]

REDACTED = "<redacted>"

_SECRET_NAME = re.compile(
    r"auth|api[-_]?key|token|secret|password|passwd|cookie|credential|signature", re.IGNORECASE
)
_SECRET_VALUE = re.compile(r"^\s*(bearer|basic)\s|^sk-|^sk_", re.IGNORECASE)


def is_secret_header(name: str, value: str) -> bool:
    """Whether a configured header rule may carry a secret (by its name or its value)."""
    return bool(_SECRET_NAME.search(name) or _SECRET_VALUE.search(value))


def _plain(value: Any, key: str = "") -> Any:
    """*value* as JSON-ready data, header rule values that may be secret redacted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name), f.name)
            for f in dataclasses.fields(value)
            if not callable(getattr(value, f.name))
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v, str(k)) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(_plain(v) for v in value)
    if isinstance(value, tuple | list):
        if key in ("set", "append"):  # header rules: (name, value) pairs
            return {
                name: REDACTED if is_secret_header(name, header_value) else header_value
                for name, header_value in value
            }
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def redacted_config(config: Config) -> dict[str, Any]:
    """The effective config as JSON-ready data; header values that may be secret (by
    name: authorization, *key*, *token*, *secret*, cookie…; or by value: ``Bearer …``,
    ``sk-…``) are replaced by ``<redacted>``."""
    document: dict[str, Any] = _plain(config)
    document["filters"] = [{"type": f.type_name, "at": f.path} for f in config.filters]
    for cluster in document.get("clusters", {}).values():
        for endpoint in cluster.get("endpoints", []):
            # A URL may carry credentials (user:password@host).
            endpoint["url"] = re.sub(r"//[^/@]*@", f"//{REDACTED}@", endpoint["url"])
    return document


def readiness(gateway: Gateway) -> tuple[bool, list[str]]:
    """Whether the gateway is ready, and the clusters with every endpoint ejected."""
    down = [name for name, cluster in gateway.clusters.items() if not cluster.available()]
    return not down, down


def _json(request: Request, status: int, document: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, indent=2).encode() + b"\n"


class _Leaf(Resource):
    isLeaf = True

    def __init__(
        self, get: Callable[[Request], bytes] | None, post: Callable[[Request], bytes] | None = None
    ) -> None:
        super().__init__()
        self.get = get
        self.post = post

    def render_GET(self, request: Request) -> bytes:
        if self.get is None:
            return self._not_allowed(request, b"POST")
        return self.get(request)

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)

    def render_POST(self, request: Request) -> bytes:
        if self.post is None:
            return self._not_allowed(request, b"GET")
        return self.post(request)

    def _not_allowed(self, request: Request, allowed: bytes) -> bytes:
        request.setHeader(b"allow", allowed)
        return _json(request, 405, {"error": f"use {allowed.decode()} here"})


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return _Leaf(lambda r: _json(r, 404, {"error": "not found", "endpoints": ENDPOINTS}))

    def render_GET(self, request: Request) -> bytes:
        return _json(request, 200, {"endpoints": ENDPOINTS})


ENDPOINTS = ["/metrics", "/healthz", "/ready", "/config", "POST /reload"]


def admin_site(
    gateway: Callable[[], Gateway],
    registry: CollectorRegistry,
    reload: Callable[[], str | None],
) -> Site:
    """The admin web site. *gateway* returns the gateway in force; *reload* re-reads the
    config and returns None, or the error that kept the old config."""

    def metrics(request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(registry)

    def ready(request: Request) -> bytes:
        ok, down = readiness(gateway())
        if ok:
            return _json(request, 200, {"status": "ready"})
        return _json(
            request,
            503,
            {"status": "not ready", "clusters_without_endpoints": down},
        )

    def do_reload(request: Request) -> bytes:
        error = reload()
        if error is None:
            return _json(request, 200, {"status": "reloaded", "config": gateway().config.source})
        return _json(request, 400, {"status": "rejected", "error": error})

    root = _Root()
    root.putChild(b"metrics", _Leaf(metrics))
    root.putChild(b"healthz", _Leaf(lambda r: _json(r, 200, {"status": "ok"})))
    root.putChild(b"ready", _Leaf(ready))
    root.putChild(b"config", _Leaf(lambda r: _json(r, 200, redacted_config(gateway().config))))
    root.putChild(b"reload", _Leaf(None, do_reload))
    site = _QuietSite(root)
    site.displayTracebacks = False
    return site


class _QuietSite(Site):
    noisy = False

    def log(self, request: Any) -> None:
        """No access log for scrapes and probes."""
