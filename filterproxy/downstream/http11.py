"""The HTTP/1.x front end: a Twisted `Protocol` that parses requests with llhttp
(through `httptools`) and drives one `FilterManager` per request.

A connection is in one of the states of `ConnectionState` (its ``state``):

- IDLE: waiting for the next request head.
- ACTIVE: a request is being handled (its body may still be arriving, its response may
  be streaming). Requests pipelined behind it are parsed and queued, and reading from
  the socket is paused until it is done, so a pipelining client cannot make us buffer
  without bound.
- CLOSING: the connection will close once the current response is written (the client
  asked for it, the request body was refused before it was read, or the input was bad).
- CLOSED: the socket is gone.

IDLE → ACTIVE when a request head is complete; ACTIVE → IDLE when its response is
written and nothing is queued; any state → CLOSING, and CLOSING → CLOSED.

Each request is an `Exchange` (filterproxy.downstream.exchange), which frames the response.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import httptools
from twisted.internet.interfaces import (
    ILoggingContext,
    IProtocol,
    ISSLTransport,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import classImplements

from filterproxy.downstream.exchange import ConnectionState, Exchange, ExchangeConnection
from filterproxy.filters.api import RequestHead
from filterproxy.http.errors import error_body, reason_phrase
from filterproxy.http.headers import Headers
from filterproxy.runtime._transport import keep_unsent_small, send_now
from filterproxy.runtime.deadlines import Deadlines, deadlines_for
from filterproxy.runtime.teardown import forget_traceback

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from filterproxy.config import Limits
    from filterproxy.downstream.interfaces import Listener, ServingGateway

__all__ = ["HTTP11ServerConnection"]

log = Logger(namespace=__name__)

_CLOSING: Final = ConnectionState.CLOSING
_CLOSED: Final = ConnectionState.CLOSED
_IDLE: Final = ConnectionState.IDLE
_ACTIVE: Final = ConnectionState.ACTIVE

_FRAMING_FIELDS = frozenset({"transfer-encoding", "host", "content-length", "connection"})


def _origin_form(target: str) -> str:
    """The path and query of a request target; absolute-form (``http://host/path``) is
    reduced to its path. Anything else (``*``, authority-form, an empty target) is refused."""
    if target.startswith("/"):
        return target
    lowered = target[:8].lower()
    if lowered.startswith(("http://", "https://")):
        slash = target.find("/", target.index("//") + 2)
        return target[slash:] if slash != -1 else "/"
    raise _RequestRefused(400, f"request target {target[:60]!r} is not a path")


class _RequestRefused(Exception):
    """A parser callback found the request unacceptable (limits, framing)."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class HTTP11ServerConnection(ExchangeConnection):
    """One client connection speaking HTTP/1.0 or HTTP/1.1.

    Limits come from the config's ``limits`` block. Three timers bound what a client may
    hold: ``request_header_timeout`` from a request's first byte to the end of its
    headers, ``request_body_timeout`` for its body, ``keepalive_timeout`` between
    requests. A slowloris client is answered 408 and disconnected.
    """

    #: After an abnormal end, how long buffered bytes (an SSE error frame) may take to
    #: reach the client before the connection is cut regardless.
    abort_grace: float = 5.0
    #: After answering a request whose body was not read, how long to keep discarding
    #: what the client still sends before closing (see `_close_lingering`).
    linger_time: float = 2.0

    def __init__(self, gateway: ServingGateway, factory: Listener) -> None:
        super().__init__()
        self.gateway = gateway
        self.factory = factory
        self.limits: Limits = gateway.config.limits
        #: None once the connection is closed: the parser holds bound methods of this
        #: connection, a reference cycle that would otherwise outlive the socket until
        #: a pass of Python's cycle collector (see `connectionLost`).
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        #: The exchange whose response is being produced; None when idle.
        self.active: Exchange | None = None
        #: Exchanges parsed behind the active one (pipelining).
        self.queued: deque[Exchange] = deque()
        #: The exchange the parser is currently filling with body data.
        self.parsing: Exchange | None = None
        self.reading_paused = False
        #: After a declined upgrade: the exchange whose Content-Length body is read
        #: without llhttp, and how much of it is still to come.
        self.upgrade_body: Exchange | None = None
        self.upgrade_body_remaining = 0
        #: Nothing more is parsed on this connection (it closes after the response).
        self.ignore_input = False
        #: Precise timers (lingering close, abort grace); limits use `deadlines`.
        self.timer: IDelayedCall | None = None
        self.deadlines: Deadlines = deadlines_for(gateway.reactor)
        self._url_parts: list[bytes] = []
        self._url_bytes = 0
        #: The piece being parsed, and where the request target ended in it: what
        #: follows must be the protocol, `` HTTP/`` (llhttp also takes RTSP and ICE).
        self._chunk = b""
        self._scan = 0
        self._url_chunk: bytes | None = None
        self._url_end = 0
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self.scheme = "http"
        self.client_ip = ""
        #: `send` gave bytes to the transport, which may not have sent them all yet.
        self.handed_off = False

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.scheme = "https" if ISSLTransport.providedBy(transport) else "http"
        self.client_ip = getattr(transport.getPeer(), "host", "") or ""
        with contextlib.suppress(AttributeError, OSError):  # UNIX sockets have no Nagle
            transport.setTcpNoDelay(True)
        keep_unsent_small(transport)
        self._arm(self.limits.request_header_timeout, self._header_timeout)
        self.factory.connections.add(self)
        if self.factory.draining:
            self.drain()

    def send(self, data: bytes) -> None:
        """Write response bytes, at once when the transport has nothing queued.

        What `filterproxy.runtime._transport.write_now` does, with what it reads of the transport
        on every write kept here instead: on plain TCP, while the connection is not
        closing, bytes go to the socket directly unless bytes given to the transport
        earlier are still queued there; what the kernel does not take goes to the
        transport (which buffers it and pauses the producer). Every write of the
        connection comes through here, so bytes leave in the order they were sent.
        """
        sock = self.sock
        if sock is not None and self.state is not _CLOSING:
            if self.handed_off:
                transport = self.transport
                if transport._tempDataLen or transport.dataBuffer:
                    transport.write(data)
                    return
                self.handed_off = False  # the transport has sent all it was given
            data = send_now(sock, data)
            if not data:
                return
        self.handed_off = True
        self.transport.write(data)

    def drain(self) -> None:
        """Finish the request in progress, if any, then close."""
        if self.active is None and self.parsing is None:
            self._close_after_response()
            self._disarm()
            self.transport.loseConnection()
        else:
            for exchange in (self.active, *self.queued):
                if exchange is not None:
                    exchange.keep_alive = False

    def dataReceived(self, data: bytes) -> None:
        parser = self.parser
        if (
            parser is None
            or self.state is _CLOSING
            or (self.ignore_input and self.upgrade_body is None)
        ):
            return
        if self.upgrade_body is not None:
            self._upgrade_body_received(data)
            return
        self._chunk = data
        self._scan = 0
        try:
            parser.feed_data(data)
            self._chunk = b""
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _RequestRefused):
                self._refuse(cause.status, cause.message, cause.headers)
            else:
                log.failure("request handling failed", Failure(cause) if cause else None)
                self._refuse(500, "the gateway failed to handle this request")
        except httptools.HttpParserUpgrade as e:
            self._upgrade_requested(data[e.args[0] :] if e.args else b"")
        except httptools.HttpParserError as e:
            self._refuse(400, f"malformed HTTP request: {e}")

    # -- protocol upgrades (declined) ----------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        """The client asked to switch protocols (``Upgrade: h2c``, ``websocket``). The
        gateway declines, as HTTP allows, by answering in HTTP/1.1; llhttp stops parsing
        at that point, so a Content-Length body is read here and the connection closes
        after the response."""
        exchange = (
            self.active if self.active is not None else (self.queued[-1] if self.queued else None)
        )
        if exchange is not None:
            exchange.keep_alive = False
        if self.upgrade_body is not None and self.upgrade_body_remaining > 0:
            self._upgrade_body_received(rest)
        else:
            self.upgrade_body = None
            self.ignore_input = True

    def _upgrade_body_received(self, data: bytes) -> None:
        exchange = self.upgrade_body
        assert exchange is not None
        piece = data[: self.upgrade_body_remaining]
        self.upgrade_body_remaining -= len(piece)
        done = self.upgrade_body_remaining == 0
        if done:
            self.upgrade_body = None
            self.ignore_input = True
            self._disarm()
        if piece or done:
            exchange.body(piece, done)

    # -- timers ---------------------------------------------------------------------------

    def _arm(self, seconds: float, action: Callable[[], None]) -> None:
        """The connection's limit for what it waits for now (headers, a body, the next
        request): a coarse deadline, see `filterproxy.runtime.deadlines`."""
        self._disarm()
        self.deadlines.set(self, seconds, action)

    def _disarm(self) -> None:
        self.deadlines.clear(self)
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def _keepalive_timeout(self) -> None:
        self.timer = None
        self._close_after_response()
        self.transport.loseConnection()

    def _header_timeout(self) -> None:
        self.timer = None
        self._refuse(
            408,
            f"request headers not received within {self.limits.request_header_timeout:g}s "
            "(limits.request_header_timeout)",
        )

    def _body_timeout(self) -> None:
        self.timer = None
        self._refuse(
            408,
            f"request body not received within {self.limits.request_body_timeout:g}s "
            "(limits.request_body_timeout)",
        )

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url_parts = []
        self._url_bytes = 0
        self._raw_headers = []
        self._header_bytes = 0
        if self.active is None:
            self._arm(self.limits.request_header_timeout, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_request_line_bytes:
            raise _RequestRefused(
                414,
                f"request target is longer than {self.limits.max_request_line_bytes} bytes "
                "(limits.max_request_line_bytes)",
            )
        self._url_parts.append(url)
        at = self._chunk.find(url, self._scan)
        if at >= 0:
            self._scan = self._url_end = at + len(url)
            self._url_chunk = self._chunk

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        self._header_bytes += len(name) + len(value) + 4
        self._raw_headers.append((name, value))
        if len(self._raw_headers) > limits.max_header_count:
            raise _RequestRefused(
                431,
                f"too many request headers (the limit is {limits.max_header_count}, "
                "limits.max_header_count)",
            )
        if self._header_bytes > limits.max_header_bytes:
            raise _RequestRefused(
                431,
                f"request headers are too large (the limit is {limits.max_header_bytes} bytes, "
                "limits.max_header_bytes)",
            )

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None  # called by it
        headers = Headers.from_raw(self._raw_headers)
        # One pass for the fields that decide framing, instead of a search for each.
        transfer_codings: list[str] = []
        hosts = 0
        length: str | None = None
        upgrade = False
        for name, value in headers:
            if name in _FRAMING_FIELDS:
                if name == "transfer-encoding":
                    transfer_codings.append(value)
                elif name == "host":
                    hosts += 1
                elif name == "content-length":
                    length = value
                elif name == "connection":
                    upgrade = upgrade or any(
                        token.strip().lower() == "upgrade" for token in value.split(",")
                    )
        upgrade = upgrade and "upgrade" in headers
        if transfer_codings and (
            len(transfer_codings) > 1 or transfer_codings[0].strip().lower() != "chunked"
        ):
            raise _RequestRefused(400, "Transfer-Encoding must be exactly 'chunked'")
        chunk = self._url_chunk
        if chunk is not None:
            self._url_chunk = None
            protocol = chunk[self._url_end : self._url_end + 6]
            if protocol[:1] in (b"\r", b"\n"):
                raise _RequestRefused(
                    400, "malformed HTTP request: the request line names no protocol (HTTP/1.1)"
                )
            if len(protocol) == 6 and protocol != b" HTTP/":
                raise _RequestRefused(
                    505,
                    f"the request's protocol is {protocol[1:].decode('latin-1')!r}…, not "
                    "HTTP; this gateway speaks HTTP/1.0, HTTP/1.1 and HTTP/2",
                )
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise _RequestRefused(400, f"HTTP/{version} is not supported; use HTTP/1.1")
        http10 = version == "1.0"
        if transfer_codings and http10:
            raise _RequestRefused(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request")
        if hosts > 1 or (not hosts and not http10):
            raise _RequestRefused(400, "an HTTP/1.1 request needs exactly one Host header")
        if self.factory.active_streams >= self.limits.max_concurrent_streams:
            raise _RequestRefused(
                503,
                "the gateway is at its limit of concurrent requests "
                "(limits.max_concurrent_streams); retry shortly",
                (("retry-after", "1"),),
            )
        has_body = bool(transfer_codings) or (length is not None and length != "0")
        if upgrade and has_body:
            if transfer_codings or length is None:
                raise _RequestRefused(
                    400, "a request asking for a protocol upgrade needs a Content-Length body"
                )
            self.upgrade_body_remaining = int(length)
        head = RequestHead(
            method=parser.get_method().decode("ascii"),
            path=_origin_form(b"".join(self._url_parts).decode("latin-1")),
            headers=headers,
            scheme=self.scheme,
            client_ip=self.client_ip,
        )
        exchange = Exchange(self, head, has_body, parser.should_keep_alive(), http10)
        self.parsing = exchange if has_body else None
        if upgrade and has_body:
            self.upgrade_body = exchange
        if has_body:
            self._arm(self.limits.request_body_timeout, self._body_timeout)
        else:
            self._disarm()
        if self.active is None:
            self._activate(exchange)
        else:
            self.queued.append(exchange)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.body(body, False)

    def on_message_complete(self) -> None:
        if self.parsing is not None and self.parsing is not self.upgrade_body:
            exchange, self.parsing = self.parsing, None
            self._disarm()
            exchange.body(b"", True)

    # -- exchanges --------------------------------------------------------------------------

    def _activate(self, exchange: Exchange) -> None:
        self.active = exchange
        if self.state is _IDLE:
            self.state = _ACTIVE
        self.factory.active_streams += 1
        exchange.counted = True
        exchange.start(self.factory.gateway.new_request(exchange))  # the config in force

    def exchange_done(self, exchange: Exchange) -> None:
        """The response of *exchange* is written; go on with the connection."""
        self.uncount(exchange)
        if exchange is not self.active:
            return
        self.active = None
        if not exchange.keep_alive:
            if exchange.request_complete:
                self._close_after_response()
                self._disarm()
                self.transport.loseConnection()
            else:
                self._close_lingering()
            return
        if self.queued:
            self._activate(self.queued.popleft())
        if not self.queued:
            self._resume_reading()
        if self.active is None and self.parsing is None:
            if self.state is _ACTIVE:
                self.state = _IDLE
            self._arm(self.limits.keepalive_timeout, self._keepalive_timeout)

    def uncount(self, exchange: Exchange) -> None:
        """*exchange* no longer counts against limits.max_concurrent_streams."""
        if exchange.counted:
            exchange.counted = False
            self.factory.active_streams -= 1

    def _refuse(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer a request the filter chain cannot answer (bad framing, limits, time),
        then close the connection."""
        self._close_after_response()
        self._disarm()
        active = self.active
        if active is not None:
            active.keep_alive = False
            if active.manager is not None and not active.response_started:
                active.manager.send_local_reply(status, message, extra_headers=headers)
            # Otherwise a response is in progress: the connection closes after it.
            return
        body = error_body(status, message)
        extra = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in headers)
        self.send(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"%sconnection: close\r\n\r\n%s"
            % (status, reason_phrase(status), len(body), extra, body)
        )
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Close after answering a request whose body was not read: send FIN, then read
        and discard what the client still sends for up to `linger_time`. Closing a socket
        with unread input makes the kernel send a reset, which can destroy the answer
        (a 413, a 400) before the client reads it."""
        self._close_after_response()
        self._disarm()
        transport = self.transport
        if ISSLTransport.providedBy(transport) or not ITCPTransport.providedBy(transport):
            transport.loseConnection()
            return
        transport.loseWriteConnection()
        self.timer = self.gateway.reactor.callLater(self.linger_time, self._hard_abort)

    def abort(self) -> None:
        """End the connection without completing the response: what was written is
        flushed (an SSE error frame must arrive), the final framing is not."""
        self._close_after_response()
        self._disarm()
        if self.state is not _CLOSED:
            self.transport.loseConnection()
            self.timer = self.gateway.reactor.callLater(self.abort_grace, self._hard_abort)

    def _hard_abort(self) -> None:
        self.timer = None
        if self.state is not _CLOSED:
            self.transport.abortConnection()

    def _pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.state is not _CLOSED:
            self.reading_paused = False
            self.transport.resumeProducing()

    def _close_after_response(self) -> None:
        """Enter CLOSING (from any state but CLOSED)."""
        if self.state is not _CLOSED:
            self.state = _CLOSING

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.state = _CLOSED
        self._disarm()
        self.factory.connections.discard(self)
        exchanges = [e for e in (self.active, *self.queued) if e is not None]
        self.active = None
        self.queued.clear()
        # Nothing of this connection may refer back to it once the socket is gone, so
        # that reference counting frees it now: the gateway runs Python's cycle
        # collector rarely (filterproxy.server.service), and a connection kept for it holds a
        # socket object, the parser's state and its last request's headers.
        self.parser = None
        self.parsing = self.upgrade_body = None
        self.sock = None
        forget_traceback(reason)
        for exchange in exchanges:
            self.uncount(exchange)
            if exchange.manager is not None and not exchange.response_complete:
                exchange.response_complete = True
                exchange.manager.client_gone()


classImplements(HTTP11ServerConnection, IProtocol, ILoggingContext)
