"""The gateway's reactor: Twisted's epoll reactor, dispatching ready sockets directly.

For every ready socket, `EPollReactor.doPoll` calls ``log.callWithLogger(selectable, ...)``,
which pushes a legacy-logging context (the ``[HTTPChannel,3,127.0.0.1]`` prefix of old-style
log lines) around the read or write. That is four Python frames and a dict copy, about
1 µs per event — per streamed chunk, a tenth of what the gateway spends on it. The gateway
logs through `twisted.logger` with its own namespaces and never reads that prefix, so
`GatewayReactor` dispatches without it.

The commonest event, a TCP connection with bytes to read, then still passes four
interpreted Python frames (the reactor's `_doReadOrWrite`, the transport's ``fileno``,
``doRead`` and ``_dataReceived``) before the protocol sees the bytes. For transports whose
reading is Twisted's own `tcp.Connection.doRead`, `GatewayReactor` does that step itself
in compiled code: ``recv`` up to the transport's ``bufferSize``, hand the bytes to its
protocol, and treat an empty read as the peer's close and a socket error as a lost
connection — with Twisted's error handling (an exception logs and disconnects that
socket, half-closes included). When the protocol is one of the gateway's own HTTP/1.1
connections (`filterproxy.runtime._transport.NativeProtocol`), the socket and read size come from
the connection's fields and the bytes reach it by a direct call. Every other event (writes, hang-ups, listening ports,
other transports) goes through Twisted's `_doReadOrWrite` unchanged.

Its main loop is compiled too. Twisted's calls `runUntilCurrent` and `timeout` on every
pass (interpreted, inside a logging context manager: about 1 µs a pass); most passes of a
busy gateway have nothing for them to do, so `GatewayReactor.mainLoop` calls them only when
something is due — a call from a thread, calls scheduled since the last pass, a stop, the
earliest timed call's time reached — and otherwise waits until the earliest timed call.

It also runs calls made with `GatewayReactor.call_before_wait` once per pass, after the
ready sockets and due timed calls have been handled and before it waits again: an HTTP/2
connection keeps what its streams write during a pass (`filterproxy.runtime._transport.PassWrites`)
and sends it there in one ``send``, instead of one per frame or a trip through the
reactor's writability watch.

``twistd filterproxy`` installs it unless a reactor was chosen (``twistd --reactor NAME``)
or installed already; on platforms without epoll Twisted's default is left in place.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["install_if_unset"]


def install_if_unset() -> Any:
    """Install `GatewayReactor` as the global reactor unless one is installed already;
    return the global reactor's class."""
    if "twisted.internet.reactor" not in sys.modules:
        try:
            from filterproxy.runtime._epoll import GatewayReactor
        except ImportError:  # not Linux: no epoll; Twisted's default reactor stays
            pass
        else:
            from twisted.internet.main import installReactor

            installReactor(GatewayReactor())
    from twisted.internet import reactor

    return type(reactor)
