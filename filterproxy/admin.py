"""The admin listener: metrics, health, readiness, the effective config, reload.

Served with twisted.web's HTTP protocol (``twisted.web.http``; not its resource tree,
which with the templating it imports is about 3 MB of memory) on its own endpoint
(``admin.listen``, by default ``tcp:9901:interface=127.0.0.1`` — never public unless
configured so):

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
from twisted.logger import Logger
from zope.interface import implementer

from filterproxy.config import Config
from filterproxy.lazytls import hidden

# twisted.web.http imports the h2 package when it is installed (to offer HTTP/2 over TLS
# ALPN), about 1 MB of memory the admin listener, HTTP/1.1 only, never uses: a gateway whose
# clients and upstreams speak HTTP/1.1 should not carry it (see filterproxy.downstream.server).
with hidden("h2"):
    from twisted.web.http import HTTPFactory, Request
    from twisted.web.iweb import INonQueuedRequestFactory

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from filterproxy.service import Gateway

__all__ = ["REDACTED", "admin_factory", "is_secret_header", "readiness", "redacted_config"]

log = Logger()

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


#: What an admin handler answers: status, content type, body.
Reply = tuple[int, bytes, bytes]
_JSON = b"application/json"


def _json(status: int, document: Any) -> Reply:
    return status, _JSON, json.dumps(document, indent=2).encode() + b"\n"


ENDPOINTS = ["/metrics", "/healthz", "/ready", "/config", "POST /reload"]

_NOT_FOUND = _json(404, {"error": "not found", "endpoints": ENDPOINTS})


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """What one admin path answers to GET (and HEAD) and to POST."""

    get: Callable[[], Reply] | None = None
    post: Callable[[], Reply] | None = None

    def handler(self, method: bytes) -> Callable[[], Reply] | None:
        """The handler for *method*, if this path takes it."""
        if method in (b"GET", b"HEAD"):
            return self.get
        return self.post if method == b"POST" else None

    def allowed(self) -> bytes:
        """The methods this path takes, for ``Allow``."""
        methods = [b"GET", b"HEAD"] if self.get is not None else []
        if self.post is not None:
            methods.append(b"POST")
        return b", ".join(methods)


class _AdminRequest(Request):
    """One admin request, answered from the endpoint table by path and method."""

    def __init__(self, channel: Any, endpoints: Mapping[bytes, _Endpoint]) -> None:
        super().__init__(channel)
        self.endpoints = endpoints

    def process(self) -> None:
        endpoint = self.endpoints.get(self.path.split(b"?", 1)[0])
        if endpoint is None:
            reply = _NOT_FOUND
        else:
            handler = endpoint.handler(self.method)
            if handler is None:
                allowed = endpoint.allowed()
                self.setHeader(b"allow", allowed)
                reply = _json(405, {"error": f"use {allowed.decode()} here"})
            else:
                try:
                    reply = handler()
                except Exception:
                    log.failure("admin: {method} {path} failed", method=self.method, path=self.path)
                    reply = _json(500, {"error": "internal error (see the gateway's log)"})
        status, content_type, body = reply
        self.setResponseCode(status)
        self.setHeader(b"content-type", content_type)
        self.setHeader(b"cache-control", b"no-store")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()


@implementer(INonQueuedRequestFactory)
class _Requests:
    """Builds the admin listener's requests (with the endpoint table)."""

    def __init__(self, endpoints: Mapping[bytes, _Endpoint]) -> None:
        self.endpoints = endpoints

    def __call__(self, channel: Any) -> _AdminRequest:
        return _AdminRequest(channel, self.endpoints)


class AdminFactory(HTTPFactory):
    """The admin listener's HTTP/1.1 server (no access log for scrapes and probes)."""

    noisy = False

    def __init__(self, endpoints: Mapping[bytes, _Endpoint]) -> None:
        super().__init__()
        self.requests = _Requests(endpoints)

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if channel is not None:
            channel.requestFactory = self.requests
        return channel

    def log(self, request: Any) -> None:
        """No access log for scrapes and probes."""


def admin_factory(
    gateway: Callable[[], Gateway],
    registry: CollectorRegistry,
    reload: Callable[[], str | None],
) -> AdminFactory:
    """The admin listener's factory. *gateway* returns the gateway in force; *reload*
    re-reads the config and returns None, or the error that kept the old config."""

    def metrics() -> Reply:
        return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(registry)

    def ready() -> Reply:
        ok, down = readiness(gateway())
        if ok:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready", "clusters_without_endpoints": down})

    def do_reload() -> Reply:
        error = reload()
        if error is None:
            return _json(200, {"status": "reloaded", "config": gateway().config.source})
        return _json(400, {"status": "rejected", "error": error})

    return AdminFactory(
        {
            b"/": _Endpoint(get=lambda: _json(200, {"endpoints": ENDPOINTS})),
            b"/metrics": _Endpoint(get=metrics),
            b"/healthz": _Endpoint(get=lambda: _json(200, {"status": "ok"})),
            b"/ready": _Endpoint(get=ready),
            b"/config": _Endpoint(get=lambda: _json(200, redacted_config(gateway().config))),
            b"/reload": _Endpoint(post=do_reload),
        }
    )
