"""HTTP/2 to an upstream, on the `h2` library: a connection carries many requests, each
an `H2ClientStream` that the router uses as it uses an HTTP/1.1 connection.

- Streams are opened up to the server's SETTINGS_MAX_CONCURRENT_STREAMS (and at most
  `MAX_STREAMS`); the pool opens another connection when every one is full.
- GOAWAY: streams the server will still answer finish; those it will not are failed as
  refused (safe to send again) and no new stream goes to that connection.
- PING every ``ping_interval`` while the connection is open; no answer within
  ``ping_timeout`` closes it (its streams fail and may be retried).
- Flow control: received data is acknowledged (WINDOW_UPDATE) as it is passed on, except
  while the client's side has paused the stream: then it is acknowledged when the client
  catches up, so a slow client stalls its own stream at the upstream and no other. The
  connection's window is large enough for every stream's window at once. A stream that
  ends (or is cancelled) while paused gives what it held back to the connection's window:
  otherwise each would shrink the window all streams share, until the connection stalls.
- Request bodies are sent as the upstream's windows allow.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as TypingProtocol

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from filterproxy.http.h2wire import acknowledge, first_frame, read_data_frame
from filterproxy.http.headers import Headers
from filterproxy.runtime._transport import PassWrites
from filterproxy.runtime.teardown import forget_traceback, release_connector, release_h2
from filterproxy.upstream.connection import IUpstreamHandler, UpstreamFailure, tls_error

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from filterproxy.config import ClusterConfig, EndpointConfig
    from filterproxy.upstream.request import UpstreamRequest

__all__ = ["MAX_STREAMS", "H2ClientConnection", "H2ClientStream"]

log = Logger(namespace=__name__)

#: Streams opened on one connection at most, whatever the server allows.
MAX_STREAMS = 256
#: Streams assumed allowed until the server's SETTINGS say (RFC 9113 advises at least 100).
STREAMS_BEFORE_SETTINGS = 100
#: Each stream's receive window: what a paused (slow-client) stream may have in flight.
STREAM_WINDOW = 256 * 1024
#: The connection's receive window: every stream's window at once, so one paused stream
#: never stalls the others.
CONNECTION_WINDOW = STREAM_WINDOW * MAX_STREAMS


class H2Owner(TypingProtocol):
    """What an HTTP/2 connection asks of and reports to its pool (`ConnectionPool`)."""

    @property
    def reactor(self) -> Any: ...

    @property
    def cluster(self) -> ClusterConfig: ...

    @property
    def address(self) -> EndpointConfig: ...

    def h2_capacity(self, connection: H2ClientConnection) -> None:
        """*connection* may take more streams."""

    def h2_discard(self, connection: H2ClientConnection) -> None:
        """*connection* closed."""


@implementer(IPushProducer)
class H2ClientStream:
    """One request on an `H2ClientConnection` (an `UpstreamExchange`)."""

    def __init__(self, connection: H2ClientConnection) -> None:
        self.connection = connection
        self.pool = connection.pool
        self.stream_id = 0
        self.handler: IUpstreamHandler | None = None
        self.requests_served = 0
        self.response_started = False
        self.done = False
        self.paused = False
        #: Received bytes not yet acknowledged (while paused).
        self.unacked = 0
        #: Request body bytes the upstream's windows could not take yet.
        self.body = b""

    def send_request(
        self, request: UpstreamRequest, body: bytes, handler: IUpstreamHandler, *, is_head: bool
    ) -> None:
        connection = self.connection
        h2 = connection.h2
        self.handler = handler
        connection.reserved -= 1
        if connection.closed or connection.goaway:
            self._failed(UpstreamFailure.RESET_BEFORE_RESPONSE, "connection closed", refused=True)
            return
        try:
            self.stream_id = sid = h2.get_next_available_stream_id()
            connection.streams[sid] = self
            h2.send_headers(sid, request.h2_fields(), end_stream=not body)
        except H2Error as e:  # the connection cannot open it (closing, out of ids)
            self._failed(UpstreamFailure.RESET_BEFORE_RESPONSE, f"HTTP/2: {e}", refused=True)
            return
        self.body = body
        if body:
            self.push_body()
        connection.write_pending()

    def push_body(self) -> None:
        """Send as much of the request body as the upstream's windows allow."""
        h2 = self.connection.h2
        sid = self.stream_id
        with contextlib.suppress(H2Error):
            while self.body:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    return
                chunk, self.body = self.body[:window], self.body[window:]
                h2.send_data(sid, chunk, end_stream=not self.body)

    # -- events from the connection ---------------------------------------------------------

    def on_head(self, status: int, headers: Headers) -> None:
        self.response_started = True
        if self.handler is not None:
            self.handler.on_response_head(status, headers)

    def on_data(self, data: bytes, flow_controlled: int) -> None:
        if self.paused:
            self.unacked += flow_controlled
        else:
            self.connection.acknowledge(self.stream_id, flow_controlled)
        if self.handler is not None and data:
            self.handler.on_response_data(data, False)

    def on_end(self) -> None:
        handler, self.handler = self.handler, None
        self._finish()
        self.requests_served = 1
        if handler is not None:
            handler.on_response_data(b"", True)

    def on_reset(self, detail: str, *, refused: bool = False) -> None:
        kind = (
            UpstreamFailure.RESET_MID_RESPONSE
            if self.response_started
            else UpstreamFailure.RESET_BEFORE_RESPONSE
        )
        self._failed(kind, detail, refused=refused)

    def _failed(self, kind: UpstreamFailure, detail: str, *, refused: bool = False) -> None:
        handler, self.handler = self.handler, None
        self._finish()
        if refused:
            # The server did not process it: the router may send it again at once.
            self.requests_served = 1
        if handler is not None:
            handler.on_upstream_failure(kind, detail)

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            if self.unacked:
                # Received while paused and never acknowledged: the stream's window goes
                # with the stream, the connection's must get it back.
                unacked, self.unacked = self.unacked, 0
                self.connection.acknowledge(self.stream_id, unacked)
                self.connection.write_pending()
            self.connection.stream_finished(self)

    # -- UpstreamExchange -------------------------------------------------------------------

    def abort(self) -> None:
        """Cancel this request (RST_STREAM CANCEL); the connection stays for others."""
        self.handler = None
        if self.done:
            return
        if self.stream_id == 0:
            self.connection.reserved -= 1
        else:
            with contextlib.suppress(H2Error):
                self.connection.h2.reset_stream(self.stream_id, ErrorCodes.CANCEL)
            self.connection.write_pending()
        self._finish()

    def release_unused(self) -> None:
        if self.stream_id == 0 and not self.done:
            self.connection.reserved -= 1
            self.done = True
            self.connection.capacity_freed()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.unacked and not self.done:
            unacked, self.unacked = self.unacked, 0
            self.connection.acknowledge(self.stream_id, unacked)
            self.connection.write_pending()

    def stopProducing(self) -> None:
        self.abort()


class H2ClientConnection(Protocol):
    """One HTTP/2 connection to an upstream endpoint, shared by many requests."""

    def __init__(self, pool: H2Owner) -> None:
        self.pool = pool
        self.h2 = H2Connection(config=H2Configuration(client_side=True, header_encoding="utf-8"))
        self.streams: dict[int, H2ClientStream] = {}
        #: Streams handed out but not yet opened (their request is not sent yet).
        self.reserved = 0
        self.closed = False
        self.goaway = False
        #: The server's SETTINGS have arrived (its MAX_CONCURRENT_STREAMS is known).
        self.settings_known = False
        self.ping_timer: IDelayedCall | None = None
        self.ping_deadline: IDelayedCall | None = None
        self.idle_timer: IDelayedCall | None = None
        #: What is written to the transport, sent once per pass of the reactor.
        self.writes: PassWrites | None = None

    def connectionMade(self) -> None:
        self.writes = PassWrites(self.transport, self.pool.reactor)
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        h2 = self.h2
        h2.initiate_connection()
        h2.update_settings(
            {
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_CONCURRENT_STREAMS: 0,  # we accept no pushed streams
            }
        )
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.write_pending()
        self._arm_ping()

    # -- capacity ---------------------------------------------------------------------------

    @property
    def max_streams(self) -> int:
        limit = STREAMS_BEFORE_SETTINGS if not self.settings_known else MAX_STREAMS
        return min(self.h2.remote_settings.max_concurrent_streams, limit)

    def has_capacity(self) -> bool:
        return (
            not self.closed
            and not self.goaway
            and len(self.streams) + self.reserved < self.max_streams
        )

    def new_stream(self) -> H2ClientStream:
        """Reserve a stream for one request (opened by its `send_request`)."""
        self.reserved += 1
        self._cancel(self.idle_timer)
        self.idle_timer = None
        return H2ClientStream(self)

    def stream_finished(self, stream: H2ClientStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        self.capacity_freed()

    def capacity_freed(self) -> None:
        if self.closed:
            return
        if self.goaway and not self.streams and not self.reserved:
            self._close()
            return
        if not self.streams and not self.reserved:
            self.idle_timer = self.pool.reactor.callLater(
                self.pool.cluster.idle_connection_timeout, self._idle_expired
            )
        self.pool.h2_capacity(self)

    def _idle_expired(self) -> None:
        self.idle_timer = None
        if not self.streams and not self.reserved and not self.closed:
            self.goaway = True
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
            self.write_pending()
            self._close()

    # -- I/O --------------------------------------------------------------------------------

    def write_pending(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.writes.write(data)  # type: ignore[union-attr]

    def _close(self) -> None:
        """Close once what is written has gone."""
        if self.writes is not None:
            self.writes.send()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Hand *size* received bytes of a stream back to the upstream's windows (a
        WINDOW_UPDATE once half a window has been handed back)."""
        if size and not self.closed:
            frames = acknowledge(self.h2, stream_id, size)
            if frames:
                self.writes.write(self.h2.data_to_send() + frames)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        touched: list[H2ClientStream] = []
        start, end = 0, len(data)
        while start < end:
            if self.settings_known:
                # Plain DATA frames are read around h2 (`h2wire.read_data_frame`); any
                # other frame goes through h2, one frame at a time.
                read = read_data_frame(self.h2, data, start, self.streams)
                if read is not None:
                    stream, chunk, ended = read
                    start += 9 + len(chunk)
                    stream.on_data(chunk, len(chunk))
                    touched.append(stream)
                    if ended:
                        stream.on_end()
                    continue
            stop = first_frame(self.h2, data, start)
            if not self._receive_through_h2(data[start:stop], touched):
                return
            start = stop
        self._read_done(touched)

    def _receive_through_h2(self, data: bytes, touched: list[H2ClientStream]) -> bool:
        """Hand *data* to h2 and act on the events it makes of it; False when it broke
        the connection."""
        try:
            events = self.h2.receive_data(data)
        except H2Error as e:
            self.write_pending()
            self._fail_all(UpstreamFailure.PROTOCOL_ERROR, f"upstream broke HTTP/2: {e}")
            return False
        for event in events:
            if isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    self.acknowledge(event.stream_id, event.flow_controlled_length or 0)
                    continue
                stream.on_data(event.data or b"", event.flow_controlled_length or 0)
                touched.append(stream)
            elif isinstance(event, ResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.on_head(*_status_and_headers(event.headers))
                    touched.append(stream)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.on_end()
            elif isinstance(event, StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    code = _code_name(event.error_code)
                    stream.on_reset(
                        f"upstream reset the stream ({code})",
                        refused=event.error_code == ErrorCodes.REFUSED_STREAM,
                    )
            elif isinstance(event, ConnectionTerminated):
                self._goaway(event.last_stream_id or 0, event.error_code)
            elif isinstance(event, WindowUpdated):
                self._window_opened(event.stream_id)
            elif isinstance(event, RemoteSettingsChanged):
                self.settings_known = True
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._window_opened(0)
                self.pool.h2_capacity(self)
            elif isinstance(event, PingAckReceived):
                self._cancel(self.ping_deadline)
                self.ping_deadline = None
        return True

    def _read_done(self, touched: list[H2ClientStream]) -> None:
        """A read is handled: write what it made h2 send, and tell the streams it gave
        something that it has all been given."""
        self.write_pending()
        for stream in touched:
            if stream.handler is not None:
                stream.handler.on_read_done()

    def _window_opened(self, stream_id: int) -> None:
        streams = self.streams.values() if stream_id == 0 else [self.streams.get(stream_id)]
        for stream in list(streams):
            if stream is not None and stream.body:
                stream.push_body()

    def _goaway(self, last_stream_id: int, error_code: Any) -> None:
        """The server will take no new streams; those above *last_stream_id* were not
        processed."""
        self.goaway = True
        # h2 closes its state machine on a GOAWAY, which would make every frame of the
        # streams still running a protocol error (python-hyper/h2#1181). RFC 9113 6.8
        # lets those streams complete: reopen it; `goaway` keeps new streams away.
        if self.streams:
            self.h2.state_machine.state = ConnectionState.CLIENT_OPEN
        code = _code_name(error_code)
        for sid, stream in list(self.streams.items()):
            if sid > last_stream_id:
                stream.on_reset(f"upstream sent GOAWAY ({code})", refused=True)
        if not self.streams and not self.reserved:
            self._close()
        self.pool.h2_capacity(self)

    # -- keep-alive -------------------------------------------------------------------------

    def _arm_ping(self) -> None:
        interval = self.pool.cluster.ping_interval
        if interval > 0 and not self.closed:
            self.ping_timer = self.pool.reactor.callLater(interval, self._ping)

    def _ping(self) -> None:
        self.ping_timer = None
        if self.closed:
            return
        if self.ping_deadline is None:
            with contextlib.suppress(H2Error):
                self.h2.ping(os.urandom(8))
            self.write_pending()
            self.ping_deadline = self.pool.reactor.callLater(
                self.pool.cluster.ping_timeout, self._ping_unanswered
            )
        self._arm_ping()

    def _ping_unanswered(self) -> None:
        self.ping_deadline = None
        log.warn(
            "upstream {url} did not answer a PING within {t:g}s; closing the connection",
            url=self.pool.address.url,
            t=self.pool.cluster.ping_timeout,
        )
        self._fail_all(UpstreamFailure.RESET_MID_RESPONSE, "upstream stopped answering PINGs")

    # -- endings ----------------------------------------------------------------------------

    def _fail_all(self, kind: UpstreamFailure, detail: str) -> None:
        self.goaway = True
        for stream in list(self.streams.values()):
            stream._failed(
                UpstreamFailure.RESET_BEFORE_RESPONSE
                if not stream.response_started and kind is not UpstreamFailure.PROTOCOL_ERROR
                else kind,
                detail,
            )
        if self.transport is not None and not self.closed:
            if self.writes is not None:
                self.writes.drop()
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def abort(self) -> None:
        """Close the whole connection at once."""
        if self.transport is not None and not self.closed:
            if self.writes is not None:
                self.writes.drop()
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        if self.writes is not None:
            self.writes.drop()
        for timer in (self.ping_timer, self.ping_deadline, self.idle_timer):
            self._cancel(timer)
        self.pool.h2_discard(self)
        problem = tls_error(reason)
        for stream in list(self.streams.values()):
            if problem is not None:
                stream._failed(
                    UpstreamFailure.TLS_FAILURE,
                    f"TLS handshake with the upstream failed: {problem}",
                )
            elif stream.response_started:
                stream._failed(
                    UpstreamFailure.RESET_MID_RESPONSE,
                    "upstream closed the connection mid-response",
                )
            else:
                stream._failed(
                    UpstreamFailure.RESET_BEFORE_RESPONSE,
                    "upstream closed the connection before sending a response",
                )
        self.streams.clear()
        release_h2(self.h2)
        release_connector(self.transport)
        forget_traceback(reason)

    @staticmethod
    def _cancel(timer: IDelayedCall | None) -> None:
        if timer is not None and timer.active():
            timer.cancel()


def _status_and_headers(fields: Any) -> tuple[int, Headers]:
    headers = Headers()
    status = 0
    for name, value in cast("list[tuple[str, str]]", fields or ()):
        if name == ":status":
            status = int(value)
        elif not name.startswith(":"):
            headers.add(name, value)
    return status, headers


def _code_name(code: Any) -> str:
    return getattr(code, "name", str(code))
