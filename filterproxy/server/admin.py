"""The admin listener: metrics, health, readiness, the effective config, reload.

Served on its own endpoint (``admin.listen``, by default ``tcp:9901:interface=127.0.0.1``
— never public unless configured so) over HTTP/1.1, parsed by the same C parser as the
gateway's clients (llhttp through `httptools`). Not twisted.web: its HTTP protocol alone
is about 1 MB of memory, its resource tree and templating 3 MB more, for five endpoints.

- ``GET /metrics``: Prometheus text format (see `filterproxy.observability.metrics`).
- ``GET /healthz``: 200 while the process runs.
- ``GET /ready``: 200 when a config is loaded and every cluster has an endpoint that is
  not ejected; 503 naming the clusters that have none; 503 ``draining`` from SIGTERM on
  (the listener stays open until the gateway exits).
- ``GET /serving``: 200 while the gateway takes new requests, 503 ``draining`` from
  SIGTERM on — and nothing about the upstreams. What a load balancer's health check or
  Kubernetes' readiness probe asks: every replica shares the upstreams, so a readiness
  that failed with them would take every replica out of rotation at once, and clients
  would get a connection error instead of the gateway's own answer.
- ``GET /config``: the effective config as JSON, secrets redacted (`redacted_config`).
- ``POST /reload``: re-read the config file (as SIGHUP does); 200, or 400 with the error
  when the new config is invalid (the old one stays in force).
- ``GET /memory``: what the process holds: resident memory, open file descriptors, open
  connections and pools, pending timers, live objects by class (`filterproxy.observability.memory`).
- ``POST /memory/cycles``: one full pass of the cycle collector, and what it freed.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hmac
import json
import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from typing import Protocol as Interface
from urllib.parse import parse_qs

import httptools
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from filterproxy.config import Config, ConfigError, RouteConfig
from filterproxy.filters.admin import AdminError, AdminReply, AdminRequest, AdminRoute, AdminRoutes
from filterproxy.http.errors import reason_phrase
from filterproxy.observability.memory import collect_cycles, memory_report
from filterproxy.runtime.teardown import forget_traceback

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry
    from twisted.internet.interfaces import IDelayedCall, IReactorTime


__all__ = ["REDACTED", "admin_factory", "is_secret_header", "readiness", "redacted_config"]

log = Logger(namespace="filterproxy.admin")

REDACTED = "<redacted>"

_SECRET_NAME = re.compile(
    r"auth|api[-_]?key|token|secret|password|passwd|cookie|credential|signature", re.IGNORECASE
)
_SECRET_VALUE = re.compile(r"^\s*(bearer|basic)\s|^sk-|^sk_", re.IGNORECASE)


def is_secret_header(name: str, value: str) -> bool:
    """Whether a configured header rule may carry a secret (by its name or its value)."""
    return bool(_SECRET_NAME.search(name) or _SECRET_VALUE.search(value))


#: The fields that hold the extensions' values (`Config.section`, `RouteConfig.option`):
#: their fields are shown where their keys were written, as if they were the core's.
_EXTENSION_VALUES = {(Config, "sections"), (RouteConfig, "options")}


def _plain(value: Any, key: str = "") -> Any:
    """*value* as JSON-ready data, header rule values that may be secret redacted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        plain: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if callable(item):
                continue
            if (type(value), f.name) in _EXTENSION_VALUES:
                for extension_value in item:
                    plain.update(_plain(extension_value))
            else:
                plain[f.name] = _plain(item, f.name)
        return plain
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
    if document.get("admin_token"):
        document["admin_token"] = REDACTED
    redis = document.get("redis")
    if isinstance(redis, dict) and isinstance(redis.get("url"), str):
        redis["url"] = re.sub(r"//[^/@]*@", f"//{REDACTED}@", redis["url"])
    return document


class _Cluster(Interface):
    def available(self) -> bool: ...


class ServedGateway(Interface):
    """What the admin listener reads of the gateway in force (`filterproxy.server.service`)."""

    @property
    def config(self) -> Config: ...

    @property
    def clusters(self) -> Mapping[str, _Cluster]: ...


def readiness(gateway: ServedGateway) -> tuple[bool, list[str]]:
    """Whether the gateway is ready, and the clusters with every endpoint ejected."""
    down = [name for name, cluster in gateway.clusters.items() if not cluster.available()]
    return not down, down


#: What an admin handler answers: status, content type, body.
Reply = tuple[int, bytes, bytes]
_JSON = b"application/json"


def _json(status: int, document: Any, *, pretty: bool = False) -> Reply:
    """A JSON reply. Compact unless *pretty* (for the documents people read: the config,
    the memory report): to indent, the json module encodes in Python, with closures that
    refer to each other — a reference cycle per call, left for the cycle collector,
    which the replies to health probes and scrapes must not make."""
    text = json.dumps(document, indent=2) if pretty else json.dumps(document)
    return status, _JSON, text.encode() + b"\n"


ENDPOINTS = [
    "/metrics",
    "/healthz",
    "/ready",
    "/serving",
    "/config",
    "POST /reload",
    "/memory",
    "POST /memory/cycles",
]

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


#: A request head larger than this is refused (431); the admin's requests are a line and
#: a few headers.
MAX_HEAD_BYTES = 64 * 1024
#: A request body larger than this is refused (413): the management endpoints take a
#: small JSON document, the built-in ones none.
MAX_BODY_BYTES = 1024 * 1024
#: An admin connection with no request in progress for this long is closed (a scraper
#: that keeps its connection between scrapes reconnects).
IDLE_TIMEOUT = 60.0


def _response(status: int, headers: list[tuple[bytes, bytes]], body: bytes, head: bool) -> bytes:
    """The bytes of one response; for HEAD, without the body (its length still stated)."""
    lines = [b"HTTP/1.1 %d %s" % (status, reason_phrase(status))]
    lines.extend(name + b": " + value for name, value in headers)
    lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


def _encoded(reply: AdminReply, *, close: bool, head: bool) -> bytes:
    headers = [
        (b"content-type", reply.content_type.encode()),
        (b"cache-control", b"no-store"),
    ]
    headers.extend((name.encode(), value.encode()) for name, value in reply.headers)
    if close:
        headers.append((b"connection", b"close"))
    return _response(reply.status, headers, reply.body, head)


def _as_reply(reply: Reply, extra: list[tuple[bytes, bytes]] | None = None) -> AdminReply:
    status, content_type, body = reply
    headers = tuple((name.decode(), value.decode()) for name, value in extra or ())
    return AdminReply(status, content_type.decode(), body, headers)


@dataclasses.dataclass
class _Answer:
    """One request's answer, in the order of the requests (HTTP/1.1 pipelining): its
    bytes once known."""

    data: bytes | None
    close: bool
    head: bool


class AdminConnection(Protocol):
    """One admin client connection: HTTP/1.1 parsed by llhttp (`httptools`), keep-alive
    and pipelining. The built-in endpoints answer at once; a management route may
    answer later (a Redis round trip): answers are written in the order of the
    requests, and a client that leaves before its answer is ready never gets it."""

    def __init__(self, factory: AdminFactory) -> None:
        self.factory = factory
        #: None once closed (the parser refers back to this connection: see
        #: `connectionLost`).
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.head_bytes = 0
        self.body_bytes = 0
        self.in_head = False
        self.expect_continue = False
        #: The request being parsed has been answered.
        self.answered = False
        #: A response asked for the close: nothing more is read or answered.
        self.closing = False
        #: Answers not yet written, first the oldest request's.
        self.answers: deque[_Answer] = deque()
        self.timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.timer = self.factory.reactor.callLater(IDLE_TIMEOUT, self._idle)

    def dataReceived(self, data: bytes) -> None:
        parser = self.parser
        if self.closing or parser is None:
            return
        if self.timer is not None and self.timer.active():
            self.timer.reset(IDLE_TIMEOUT)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade (h2c, WebSocket) is not offered. As HTTP allows, the request is
            # answered in HTTP/1.1 (a body it announced is not read) and the connection ends.
            if not self.answered and not self.closing:
                self._answer(close=True)
            self.closing = True
            self._flush()
            return
        except httptools.HttpParserError as e:
            if self.closing:
                return  # bytes after a request that ended the connection: not read
            self._refuse(400, f"invalid HTTP request: {e}")
            return
        if self.in_head:
            # Counted per read: a head may pass the limit by up to one read (64 KiB).
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES and not self.closing:
                self._refuse(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")

    # -- llhttp callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []
        self.in_head = True
        self.head_bytes = 0
        self.body_bytes = 0
        self.expect_continue = False
        self.answered = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.decode("latin-1").lower()
        self.headers[lowered] = value.decode("latin-1")
        if lowered == "expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        # Not while an earlier request's answer is pending: it must come first (the
        # client sends the body anyway when no 100 comes).
        if (
            self.expect_continue
            and not self.closing
            and not self.answers
            and self.transport is not None
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY_BYTES:
            if not self.closing:
                self._refuse(
                    413, f"the admin endpoints take no request body over {MAX_BODY_BYTES} bytes"
                )
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        if not self.closing and parser is not None:
            self._answer(close=not parser.should_keep_alive() or parser.should_upgrade())

    def _answer(self, *, close: bool) -> None:
        self.answered = True
        assert self.parser is not None  # answers are made while parsing
        method = self.parser.get_method()
        body = b"".join(self.body)
        self.body = []
        result = self.factory.respond(method, self.url, self.headers, body)
        slot = _Answer(None, close, head=method == b"HEAD")
        self.answers.append(slot)
        if close:
            self.closing = True
        if isinstance(result, AdminReply):
            self._fill(result, slot)
        else:
            result.addCallback(self._fill, slot)

    # -- answering ------------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        """Answer what cannot be parsed or is too large (after the answers before it)
        and end the connection."""
        self.closing = True
        self.answers.append(_Answer(None, True, head=False))
        self._fill(AdminReply.error(status, message), self.answers[-1])

    def _fill(self, reply: AdminReply, slot: _Answer) -> None:
        slot.data = _encoded(reply, close=slot.close, head=slot.head)
        self._flush()

    def _flush(self) -> None:
        """Write the answers that are ready, in order; end the connection after one
        that closes it (or when nothing more will come)."""
        answers = self.answers
        while answers and answers[0].data is not None:
            slot = answers.popleft()
            if self.transport is not None and slot.data:
                self.transport.write(slot.data)
            if slot.close:
                answers.clear()
                self._close()
                return
        if self.closing and not answers:
            self._close()

    def _close(self) -> None:
        self.closing = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.loseConnection()

    def _idle(self) -> None:
        self.timer = None
        if self.answers:  # an answer is on its way: the connection is not idle
            self.timer = self.factory.reactor.callLater(IDLE_TIMEOUT, self._idle)
            return
        self._close()

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def connectionLost(self, reason: object = None) -> None:
        self.closing = True
        self._cancel_timer()
        # Answers still to come are dropped: the client is gone.
        self.answers.clear()
        self.transport = None
        # The parser holds bound methods of this connection: without this, a closed
        # connection (a scrape) would wait for the cycle collector to be freed.
        self.parser = None
        forget_traceback(reason)


_CREDENTIALS = re.compile(r"^\s*(bearer|basic)\s+(\S+)\s*$", re.IGNORECASE)
#: Both schemes are offered: programs send the token as a bearer token; a browser (the
#: spend report page) asks its user and sends it as Basic credentials' password.
_CHALLENGE = (
    ("www-authenticate", 'Bearer realm="filterproxy admin"'),
    ("www-authenticate", 'Basic realm="filterproxy admin", charset="UTF-8"'),
)


def _presented(header: str | None) -> str | None:
    """The token in an ``Authorization`` header: a bearer token, or the password of
    Basic credentials (any user name)."""
    match = _CREDENTIALS.match(header or "")
    if match is None:
        return None
    if match.group(1).lower() == "bearer":
        return match.group(2)
    try:
        decoded = base64.b64decode(match.group(2), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    _user, colon, password = decoded.partition(":")
    return password if colon else None


def authorized(header: str | None, token: str | None) -> AdminReply | None:
    """None when *header* (``Authorization``) carries the admin *token* (``Bearer
    TOKEN``, or Basic credentials with it as the password); else the refusal: 403 when
    no token is configured, 401 (``WWW-Authenticate``: Bearer and Basic) without one or
    with a wrong one. Compared in constant time."""
    if not token:
        return AdminReply.error(403, "set admin.token to use the management API")
    presented = _presented(header)
    if presented is None:
        return AdminReply.error(
            401, "the management API needs 'Authorization: Bearer <admin token>'", _CHALLENGE
        )
    if not hmac.compare_digest(presented.encode(), token.encode()):
        return AdminReply.error(401, "the admin token is not this gateway's", _CHALLENGE)
    return None


class AdminFactory(ServerFactory):
    """The admin listener: builds an `AdminConnection` per client and answers requests
    from the endpoint table, then from the management routes the extensions registered
    (`AdminRoutes`) — those behind the admin token (no access log for scrapes and
    probes)."""

    noisy = False

    def __init__(
        self,
        endpoints: Mapping[bytes, _Endpoint],
        reactor: IReactorTime,
        routes: AdminRoutes | None = None,
        token: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.endpoints = endpoints
        self.reactor = reactor
        self.routes = routes if routes is not None else AdminRoutes()
        #: The admin token in force (the config's ``admin.token``; a reload may change it).
        self.token = token

    def buildProtocol(self, addr: Any) -> AdminConnection:
        return AdminConnection(self)

    def answer(self, method: bytes, path: bytes) -> tuple[Reply, list[tuple[bytes, bytes]]]:
        """The reply of the endpoint table to *method* on *path*, and any extra
        response headers."""
        endpoint = self.endpoints.get(path)
        if endpoint is None:
            return _NOT_FOUND, []
        handler = endpoint.handler(method)
        if handler is None:
            allowed = endpoint.allowed()
            return _json(405, {"error": f"use {allowed.decode()} here"}), [(b"allow", allowed)]
        try:
            return handler(), []
        except Exception:
            log.failure("admin: {method} {path} failed", method=method, path=path)
            return _json(500, {"error": "internal error (see the gateway's log)"}), []

    def respond(
        self, method: bytes, url: bytes, headers: Mapping[str, str], body: bytes
    ) -> AdminReply | defer.Deferred[AdminReply]:
        """The answer to one request: now, or a Deferred that fires with it (and never
        fails)."""
        raw_path, _, raw_query = url.partition(b"?")
        if raw_path in self.endpoints:
            return _as_reply(*self.answer(method, raw_path))
        path = raw_path.decode("latin-1")
        verb = method.decode("latin-1")
        route, params, allowed = self.routes.find(verb, path)
        if route is None and not allowed:
            return _as_reply(*self.answer(method, raw_path))
        refused = authorized(headers.get("authorization"), self.token())
        if refused is not None:
            return refused
        if route is None:
            return AdminReply.error(
                405, f"use {', '.join(allowed)} here", (("allow", ", ".join(allowed)),)
            )
        request = AdminRequest(
            "GET" if verb == "HEAD" else verb,
            path,
            params,
            {k: tuple(v) for k, v in parse_qs(raw_query.decode("latin-1")).items()},
            headers,
            body,
        )
        try:
            result = route.handler(request)
        except Exception:
            return self._failed(Failure(), verb, route)
        if isinstance(result, AdminReply):
            return result
        return result.addErrback(self._failed, verb, route)

    def _failed(self, failure: Failure, method: str, route: AdminRoute) -> AdminReply:
        error = failure.check(AdminError, ConfigError)
        if error is AdminError:
            refusal = failure.value
            assert isinstance(refusal, AdminError)
            return AdminReply.error(refusal.status, refusal.message, refusal.headers)
        if error is ConfigError:
            return AdminReply.error(400, str(failure.value))
        # The request's body and headers are not logged: they may hold a key or the token.
        log.failure(
            "admin: {method} {pattern} failed", failure, method=method, pattern=route.pattern
        )
        return AdminReply.error(500, "internal error (see the gateway's log)")


def admin_factory(
    gateway: Callable[[], ServedGateway],
    registry: CollectorRegistry,
    reload: Callable[[], str | None],
    reactor: IReactorTime,
    held: Callable[[], dict[str, Any]] = dict,
    *,
    stopping: Callable[[], bool] = lambda: False,
    routes: AdminRoutes | None = None,
) -> AdminFactory:
    """The admin listener's factory. *gateway* returns the gateway in force; *reload*
    re-reads the config and returns None, or the error that kept the old config;
    *reactor* times idle connections out; *held* describes the structures the gateway
    keeps (open connections, pools, timers) for ``/memory``; *stopping* says whether
    the gateway is shutting down (``/ready`` then answers 503 ``draining``); *routes*
    are the management routes the extensions register (behind the config's
    ``admin.token``)."""

    def metrics() -> Reply:
        return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(registry)

    def ready() -> Reply:
        if stopping():
            return _json(503, {"status": "draining"})
        ok, down = readiness(gateway())
        if ok:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready", "clusters_without_endpoints": down})

    def serving() -> Reply:
        if stopping():
            return _json(503, {"status": "draining"})
        return _json(200, {"status": "serving"})

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
            b"/serving": _Endpoint(get=serving),
            b"/config": _Endpoint(
                get=lambda: _json(200, redacted_config(gateway().config), pretty=True)
            ),
            b"/reload": _Endpoint(post=do_reload),
            b"/memory": _Endpoint(get=lambda: _json(200, memory_report(held()), pretty=True)),
            b"/memory/cycles": _Endpoint(post=lambda: _json(200, collect_cycles(), pretty=True)),
        },
        reactor,
        routes,
        lambda: gateway().config.admin_token,
    )
