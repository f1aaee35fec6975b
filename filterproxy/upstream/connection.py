"""An HTTP/1.1 client connection to an upstream, parsed with llhttp (`httptools`).

A connection is in one of these states:

- IDLE: in the pool, no request on it. Data or a close from the upstream while idle
  makes it unusable (it is dropped from the pool).
- BUSY: a request was written; the response is being read and handed to the
  `IUpstreamHandler` chunk by chunk, as it arrives.
- CLOSED: the socket is gone.

The connection is also the `IPushProducer` the router registers on the client's
stream: pausing it stops reading the upstream socket, so TCP pushes back on the provider.
That pause belongs to the response: it is lifted when the response ends, and pausing a
connection that is not reading a response does nothing.

A connection goes back to its pool only idle, reading and at a message boundary: once
the whole response has been passed on (the end of the read it ended in included), and
only if the upstream sent nothing after it. Otherwise it is closed.
"""

from __future__ import annotations

import contextlib
import enum
import sys
from typing import TYPE_CHECKING, cast
from typing import Protocol as TypingProtocol

import httptools
from twisted.internet.interfaces import ILoggingContext, IProtocol, IPushProducer
from twisted.python.failure import Failure
from zope.interface import classImplements

from filterproxy.http.headers import Headers
from filterproxy.runtime._transport import PLAIN_TCP, NativeProtocol, write_now
from filterproxy.runtime.teardown import forget_traceback, release_connector

if TYPE_CHECKING:
    from filterproxy.upstream.request import UpstreamRequest

__all__ = [
    "ConnectionOwner",
    "HTTP11ClientConnection",
    "IUpstreamHandler",
    "ResponseHandler",
    "UpstreamExchange",
    "UpstreamFailure",
    "tls_error",
]


def tls_error(reason: Failure | None) -> str | None:
    """A readable description when *reason* is a TLS failure (an OpenSSL error, or a
    certificate that does not name the host), else None."""
    if reason is None or reason.value is None:
        return None
    # Only a process that has made TLS connections has loaded these (filterproxy.runtime.lazytls).
    ssl = sys.modules.get("OpenSSL.SSL")
    if ssl is None:
        return None
    from service_identity.exceptions import VerificationError

    if reason.check(VerificationError):
        names = ", ".join(
            repr(getattr(getattr(e, "mismatched_id", None), "hostname", b"").decode() or str(e))
            for e in getattr(reason.value, "errors", [])
        )
        return f"the certificate does not name this host ({names or reason.getErrorMessage()})"
    if not reason.check(ssl.Error):
        return None
    details = [
        str(part) for arg in reason.value.args for part in (arg if isinstance(arg, list) else [arg])
    ]
    text = "; ".join(details) or reason.getErrorMessage()
    if "certificate verify failed" in text:
        return f"certificate verification failed ({text})"
    return text


class UpstreamFailure(enum.Enum):
    """Why an upstream exchange failed, in the vocabulary retry policies use."""

    #: Closed before any byte of the response arrived.
    RESET_BEFORE_RESPONSE = "reset"
    #: Closed after the response started, before it was complete.
    RESET_MID_RESPONSE = "reset-mid-response"
    #: The upstream sent something that is not HTTP.
    PROTOCOL_ERROR = "protocol-error"
    #: The TLS handshake failed (certificate not trusted, wrong host name, no shared
    #: protocol version). Never retried on the same endpoint, never downgraded.
    TLS_FAILURE = "upstream_tls_failure"


class IUpstreamHandler(TypingProtocol):
    """Receives one response from an `HTTP11ClientConnection`."""

    def on_response_head(self, status: int, headers: Headers) -> None: ...

    def on_response_data(self, data: bytes, end_stream: bool) -> None: ...

    def on_upstream_failure(self, kind: UpstreamFailure, detail: str) -> None: ...

    def on_read_start(self) -> None:
        """A read of the socket is about to be delivered (`on_read_done` follows)."""

    def on_read_done(self) -> None:
        """Everything from one read of the socket has been delivered."""


class ResponseHandler:
    """Base class of the router, the `IUpstreamHandler` of HTTP/1.1 connections: a
    compiled class, so that when the gateway is compiled a connection's calls per read
    and per chunk reach the router directly. Every method must be overridden."""

    def on_response_head(self, status: int, headers: Headers) -> None:
        raise NotImplementedError

    def on_response_data(self, data: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def on_upstream_failure(self, kind: UpstreamFailure, detail: str) -> None:
        raise NotImplementedError

    def on_read_start(self) -> None:
        raise NotImplementedError

    def on_read_done(self) -> None:
        raise NotImplementedError


class ConnectionOwner(TypingProtocol):
    """What a connection reports to the pool it belongs to (`ConnectionPool`)."""

    def release(self, conn: HTTP11ClientConnection) -> None:
        """*conn* finished a response and can take another request."""

    def expire(self, conn: HTTP11ClientConnection) -> None:
        """*conn* stayed idle too long."""

    def discard(self, conn: HTTP11ClientConnection) -> None:
        """*conn* closed."""


class UpstreamExchange(TypingProtocol):
    """What the router holds for one request: an HTTP/1.1 connection (one request at a
    time) or an HTTP/2 stream. It is also the producer the client's stream pauses."""

    #: Requests this connection served before; a failure before any response byte on a
    #: reused connection (or a stream the server refused) is safe to send again.
    requests_served: int

    def send_request(
        self, request: UpstreamRequest, body: bytes, handler: IUpstreamHandler, *, is_head: bool
    ) -> None: ...

    def abort(self) -> None: ...

    def release_unused(self) -> None:
        """Give the exchange back without having sent anything on it."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


class State(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    CLOSED = "closed"


class HTTP11ClientConnection(NativeProtocol):
    """One persistent connection to an upstream endpoint."""

    def __init__(self, pool: ConnectionOwner) -> None:
        super().__init__()
        self.pool = pool
        self.state = State.IDLE
        #: The response's receiver: always the router (typed as its compiled base class:
        #: its methods are called directly, not looked up by name on every read and chunk).
        self.handler: ResponseHandler | None = None
        #: Requests completed on this connection; a failure on a reused connection before
        #: any response byte is the stale keep-alive case, which is safe to retry.
        self.requests_served = 0
        self.parser: httptools.HttpResponseParser | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._response_started = False
        self._message_complete = False
        self._keep_alive = False
        self._until_close = False
        self._head_request = False
        #: The client's side paused the reading of the socket (`pauseProducing`).
        self.paused = False
        #: The upstream began another message after the response: not reusable.
        self._trailing = False

    def connectionMade(self) -> None:
        transport = self.transport
        with contextlib.suppress(AttributeError, OSError):  # UNIX sockets have no Nagle
            transport.setTcpNoDelay(True)
        if type(transport) in PLAIN_TCP and transport.protocol is not self:
            # Twisted's client endpoints connect a forwarding protocol of theirs, which
            # passes each read and the close on to us (and fired their Deferred when it
            # connected us). The socket now delivers to us directly: one Python call
            # less on every read of a response.
            transport.protocol = self

    # -- sending ----------------------------------------------------------------------

    def send_request(
        self, request: UpstreamRequest, body: bytes, handler: IUpstreamHandler, *, is_head: bool
    ) -> None:
        """Write one request; the response goes to *handler*."""
        head = request.head_bytes
        assert self.state is State.IDLE, self.state
        self.state = State.BUSY
        self.handler = cast("ResponseHandler", handler)
        self.parser = httptools.HttpResponseParser(self)
        self._raw_headers = []
        self._response_started = False
        self._message_complete = False
        self._until_close = False
        self._trailing = False
        self._head_request = is_head
        write_now(self.transport, head + body if body else head)

    # -- receiving --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        handler = self.handler
        if self.state is not State.BUSY or self.parser is None or handler is None:
            # Bytes from an idle upstream can only be garbage or a late error: drop it.
            self.abort()
            return
        handler.on_read_start()
        try:
            ended = self._parse(data)
        finally:
            # Also when the response ended in this read: what it sent leaves now.
            handler.on_read_done()
        if ended:
            self._give_back()

    def _parse(self, data: bytes) -> bool:
        """Feed *data* to the parser; whether the response ended with the connection
        reusable."""
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if not self._message_complete:
                self._fail(UpstreamFailure.PROTOCOL_ERROR, f"upstream sent invalid HTTP: {e}")
                return False
            # Bytes after a complete response: the connection is not reusable.
            self._complete(reusable=False)
            return False
        if self._message_complete and self.state is State.BUSY:
            reusable = self._keep_alive and not self._trailing
            self._complete(reusable=reusable)
            return reusable
        return False

    def _give_back(self) -> None:
        """The response ended in this read and all of it has been passed on: only now
        may the connection take another request (if nothing closed it meanwhile)."""
        if self.state is State.IDLE:
            self.pool.release(self)

    def on_message_begin(self) -> None:
        if self._message_complete:
            # Bytes of another response after this one's end, unasked: none of it goes
            # to the client, and this connection's stream of responses can no longer be
            # trusted.
            self._trailing = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.parser is None or self.handler is None or self._trailing:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._raw_headers = []  # an interim response (100 Continue, 103): ignore it
            return
        headers = Headers.from_raw(self._raw_headers)
        self._raw_headers = []
        self._response_started = True
        self._until_close = (
            not self._head_request
            and status not in (204, 304)
            and "content-length" not in headers
            and "transfer-encoding" not in headers
        )
        self.handler.on_response_head(status, headers)
        if self._head_request or status in (204, 304):
            # These responses have no body whatever Content-Length says, and llhttp cannot
            # be told so from here: the message ends now. This parser is not used again.
            self._message_complete = True
            self._keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.handler is not None and not self._trailing:
            self.handler.on_response_data(body, False)

    def on_message_complete(self) -> None:
        if self._response_started and self.parser is not None:
            self._message_complete = True
            # Read now: llhttp resets its flags for the next message once this returns.
            self._keep_alive = self.parser.should_keep_alive()

    def _complete(self, *, reusable: bool) -> None:
        """The response ended. The end goes to the handler before the connection goes
        back to the pool (`dataReceived` gives it back once the read is over): a client
        that pauses the connection while the end is written pauses nothing, and no other
        request gets the connection while this one's end is still being passed on."""
        handler, self.handler = self.handler, None
        self.parser = None
        self.requests_served += 1
        if reusable:
            self.state = State.IDLE
            if self.paused:  # the pause of the response that ended
                self.paused = False
                self.transport.resumeProducing()
        else:
            self.abort()
        if handler is not None:
            handler.on_response_data(b"", True)

    def _fail(self, kind: UpstreamFailure, detail: str) -> None:
        handler, self.handler = self.handler, None
        self.abort()
        if handler is not None:
            handler.on_upstream_failure(kind, detail)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        previous, self.state = self.state, State.CLOSED
        self.pool.discard(self)
        handler, self.handler = self.handler, None
        # The parser holds bound methods of this connection: drop it, so that reference
        # counting frees the connection now rather than Python's (rarely run) cycle
        # collector some time later.
        self.parser = None
        self.sock = None
        release_connector(self.transport)
        self._report_loss(previous, handler, reason)
        forget_traceback(reason)

    def _report_loss(
        self, previous: State, handler: ResponseHandler | None, reason: Failure | None
    ) -> None:
        if previous is not State.BUSY or handler is None:
            return
        tls_problem = tls_error(reason)
        if tls_problem is not None:
            handler.on_upstream_failure(
                UpstreamFailure.TLS_FAILURE,
                f"TLS handshake with the upstream failed: {tls_problem}",
            )
        elif self._until_close and self._response_started:
            handler.on_response_data(b"", True)  # the close delimits this response
        elif self._response_started:
            handler.on_upstream_failure(
                UpstreamFailure.RESET_MID_RESPONSE, "upstream closed the connection mid-response"
            )
        else:
            handler.on_upstream_failure(
                UpstreamFailure.RESET_BEFORE_RESPONSE,
                "upstream closed the connection before sending a response",
            )

    # -- control ----------------------------------------------------------------------

    def release_unused(self) -> None:
        self.pool.release(self)

    def idle_expired(self) -> None:
        """Idle in the pool for ``idle_connection_timeout``."""
        self.pool.expire(self)

    def abort(self) -> None:
        """Close at once, dropping anything unsent (the exchange is abandoned)."""
        self.handler = None
        if self.state is not State.CLOSED and self.transport is not None:
            self.state = State.CLOSED
            self.transport.abortConnection()

    # IPushProducer: registered on the client's stream while the response flows.

    def pauseProducing(self) -> None:
        # Only while a response is read: a pause that comes later (its client's buffer
        # filling with the end of it) would leave an idle connection deaf in the pool.
        if self.state is State.BUSY and not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused and self.state is not State.CLOSED:
            self.paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        # The client is gone: nothing will read the rest of this response.
        if self.state is State.BUSY:
            self.abort()


classImplements(HTTP11ClientConnection, IProtocol, ILoggingContext, IPushProducer)
