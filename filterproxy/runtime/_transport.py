"""Writing to a Twisted TCP transport without a trip through the reactor.

`ITransport.write` only queues: the bytes leave on the reactor's next pass, after two
``epoll_ctl`` calls to watch and unwatch the socket for writability. On a gateway almost
every write finds the socket's send buffer empty, so `write_now` sends at once when the
transport has nothing queued, and hands only what the kernel did not take to
``transport.write`` (which keeps Twisted's buffering and producer pausing for the rest).
Any other transport (TLS, UNIX sockets, test doubles) gets a plain ``write``.
"""

from __future__ import annotations

import socket
from typing import Any, Final

from twisted.internet import tcp

__all__ = [
    "CLIENT_UNSENT_BYTES",
    "PLAIN_TCP",
    "NativeProtocol",
    "PassWrites",
    "keep_unsent_small",
    "send_now",
    "write_now",
]

#: What a client's connection lets wait unsent below the gateway: in the kernel
#: (``TCP_NOTSENT_LOWAT``) and in the transport's buffer before the response's producer
#: is paused. On a fast link it never fills; on a slow one, what the client has not
#: taken yet waits in the gateway instead, where the delivery filter can fold it.
CLIENT_UNSENT_BYTES: Final = 16 * 1024
#: Linux's TCP_NOTSENT_LOWAT (not in every Python's socket module).
_TCP_NOTSENT_LOWAT: Final = getattr(socket, "TCP_NOTSENT_LOWAT", 25)

#: The transports `write_now` sends on directly.
PLAIN_TCP = (tcp.Server, tcp.Client)


def write_now(transport: Any, data: bytes) -> None:
    """Write *data* to *transport*, sending it immediately when nothing is queued."""
    if (
        type(transport) in PLAIN_TCP
        and not transport._tempDataLen
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
    ):
        data = send_now(transport.socket, data)
        if not data:
            return
    transport.write(data)


def keep_unsent_small(transport: Any, *, buffer: bool = True) -> None:
    """Keep at most `CLIENT_UNSENT_BYTES` unsent in the kernel for this client's TCP
    connection (under TLS too), and — with *buffer* — pause the producer of a response
    once the transport holds that much (Twisted's default: 64 KiB). Nothing for other
    transports (UNIX sockets, test doubles)."""
    tcp_transport = transport
    for _ in range(3):  # TLS wraps the TCP transport
        if type(tcp_transport) in PLAIN_TCP:
            break
        tcp_transport = getattr(tcp_transport, "transport", None)
    else:
        return
    if type(tcp_transport) not in PLAIN_TCP:
        return
    try:
        tcp_transport.socket.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, CLIENT_UNSENT_BYTES)
    except OSError:
        return
    if buffer:
        tcp_transport.bufferSize = CLIENT_UNSENT_BYTES


def send_now(sock: Any, data: bytes) -> bytes:
    """Send what the kernel takes of *data* at once; return what is left for the
    transport to queue (all of it when the buffer is full or the connection is gone:
    Twisted's write path then meets the same error and closes the connection as usual)."""
    try:
        sent = sock.send(data)
    except OSError:
        return data
    return data[sent:] if sent < len(data) else b""


class NativeProtocol:
    """What the gateway's connections need of `twisted.internet.protocol.Protocol`.

    Twisted's `Protocol` is a Python class: a subclass of it keeps its attributes in a
    dict and its methods behind Python calls even when compiled. The HTTP/1.1 connections
    (one object per socket, touched for every read and write) derive from this class
    instead, which mypyc compiles to a C struct with direct calls between its methods;
    they declare `IProtocol` with `zope.interface.classImplements`.
    """

    def __init__(self) -> None:
        self.transport: Any = None
        self.connected = 0
        #: The socket of a plain TCP transport (else None): `GatewayReactor` reads it,
        #: and the HTTP/1.1 server connection writes it, without asking the transport.
        self.sock: Any = None
        #: How much the reactor asks of the socket per read (the transport's own size).
        self.read_size = 65536

    def makeConnection(self, transport: Any) -> None:
        self.connected = 1
        self.transport = transport
        if type(transport) in PLAIN_TCP:
            self.sock = transport.socket
            self.read_size = transport.bufferSize
        self.connectionMade()

    def connectionMade(self) -> None:
        """The transport is connected (override)."""

    def dataReceived(self, data: bytes) -> None:
        """Bytes arrived (override)."""

    def connectionLost(self, reason: Any = None) -> None:
        """The connection is closed (override)."""

    def logPrefix(self) -> str:
        return type(self).__name__


class PassWrites:
    """The writes of one connection during a pass of the reactor, sent together before
    the reactor waits again.

    An HTTP/2 connection writes many small pieces in one pass: each stream's frames, a
    WINDOW_UPDATE for each read. `ITransport.write` queues each piece and sends them on
    the reactor's next pass, after two ``epoll_ctl`` calls to watch the socket for
    writability; sending each at once would make one ``send`` per piece. With a reactor
    that offers ``call_before_wait`` (`filterproxy.runtime._epoll.GatewayReactor`) the
    pieces are kept here and leave in one `write_now` once the ready sockets have been
    handled. With any other reactor every piece goes to the transport as it comes.
    """

    def __init__(self, transport: Any, reactor: Any) -> None:
        self.transport = transport
        self.pieces: list[bytes] = []
        self.before_wait: Any = getattr(reactor, "call_before_wait", None)

    def write(self, data: bytes) -> None:
        """Write *data* after what was written before it."""
        if self.before_wait is None:
            self.transport.write(data)
            return
        pieces = self.pieces
        if not pieces:
            self.before_wait(self.send)
        pieces.append(data)

    def write_pieces(self, data: list[bytes]) -> None:
        """Write every piece of *data*, in order, after what was written before them."""
        if self.before_wait is None:
            self.transport.writeSequence(data)
            return
        pieces = self.pieces
        if not pieces:
            self.before_wait(self.send)
        pieces.extend(data)

    def send(self) -> None:
        """Send what is kept now (before closing the connection, say)."""
        pieces = self.pieces
        if not pieces:
            return
        data = b"".join(pieces) if len(pieces) > 1 else pieces[0]
        pieces.clear()
        write_now(self.transport, data)

    def drop(self) -> None:
        """Forget what is kept: the connection is gone."""
        self.pieces.clear()
