"""What a closed connection must let go of, so that reference counting frees it at once.

The gateway runs Python's cycle collector rarely (`filterproxy.server.service`: its passes over
thousands of live streams stall every one of them), so an object that only the collector
can free — one in a reference cycle — stays in memory long after its connection closed:
a gateway whose clients come and go grows by every connection they leave behind. The
gateway's own classes cut their cycles when they are done (a connection drops its
parser, a finished request its manager's links). Some cycles belong to the libraries
under them, and are cut here, each by the connection that owns them, in its
``connectionLost``:

- `forget_traceback`: a connection lost through an exception (a TLS error, an exception
  in a protocol) gets a `Failure` carrying the traceback; its frames hold the failure
  itself, and the transport and protocol, so the whole connection (its OpenSSL state
  included, tens of KB) would wait for the collector.
- `release_connector`: Twisted's TCP client transport and its connector refer to each
  other, and the connector to the endpoint's wrapping factory and back: one cycle per
  upstream connection.
- `release_h2`: h2's `H2Connection` keeps a table of its own bound methods: one cycle per
  HTTP/2 connection, on either side.
- `tls_factory`: Twisted's TLS layer, with two cycles cut. A TLS connection that ends
  without a close alert (most clients simply close the socket) raises an OpenSSL error
  whose `Failure` Twisted replaces with a plain connection-lost one, and drops: its
  traceback's frames hold it and the TLS layer. And each client connection's certificate
  check is a pyOpenSSL helper and a C callback referring to each other, and through the
  check's closure to the TLS layer.

These reach into the libraries' attributes (each guarded: when a release renames one, the
cut does nothing). ``tests/integration/test_memory.py`` churns connections of every kind
and fails if anything is left for the collector, so such a change shows there.
``POST /memory/cycles`` on the admin listener shows the same on a running gateway.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

__all__ = ["forget_traceback", "release_connector", "release_h2", "tls_factory"]


def forget_traceback(reason: Any) -> None:
    """Drop the traceback of *reason* (a `Failure`, or None): its frames refer back to
    the failure and to the connection's objects. What the failure says is kept."""
    if reason is None:
        return
    value = getattr(reason, "value", None)
    if getattr(reason, "tb", None) is not None or getattr(value, "__traceback__", None):
        reason.cleanFailure()


def release_connector(transport: Any) -> None:
    """Cut the cycles of a closed Twisted TCP client *transport* (or of the TLS layer
    over one) with its connector and the endpoint's wrapping factory.

    Called from the connection's ``connectionLost``, which Twisted's client transport
    calls before it tells the connector; the connector reads neither link then, and
    the wrapping factory's link to the connector serves only to cancel a connection
    attempt that has not succeeded.
    """
    while transport is not None and not isinstance(transport, tcp.Client):
        transport = getattr(transport, "transport", None)  # under TLS: the TCP transport
    if transport is None:
        return
    connector = getattr(transport, "connector", None)
    if connector is None:
        return
    if getattr(connector, "transport", None) is transport:
        connector.transport = None
    factory: Any = getattr(connector, "factory", None)
    if getattr(factory, "_connector", None) is connector:
        factory._connector = None


def release_h2(connection: Any) -> None:
    """Cut the cycle of a closed h2 `H2Connection` (its frame dispatch table holds its
    own bound methods). The connection must not be fed data afterwards."""
    table = getattr(connection, "_frame_dispatch_table", None)
    if isinstance(table, dict):
        table.clear()


_tls_factory_class: Any = None


def tls_factory(options: Any, is_client: bool, wrapped_factory: Any) -> Any:
    """A `twisted.protocols.tls.TLSMemoryBIOFactory` for *wrapped_factory* whose
    connections free their TLS state when they close (see this module's description).
    Twisted's TLS module (and pyOpenSSL with it) is imported on the first call."""
    global _tls_factory_class
    if _tls_factory_class is None:
        _tls_factory_class = _define_tls_factory()
    return _tls_factory_class(options, is_client, wrapped_factory)


def _define_tls_factory() -> Any:
    from twisted.internet.protocol import connectionDone
    from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
    from twisted.python.failure import Failure

    class TLSConnection(BufferingTLSTransport):
        """Twisted's TLS connection, letting go of what refers back to it."""

        def _tlsShutdownFinished(self, reason: Any) -> None:
            # The failure of an OpenSSL error (an unexpected EOF: no close alert) may be
            # replaced, and dropped, by Twisted: its traceback holds it and this object.
            forget_traceback(reason)
            super()._tlsShutdownFinished(reason)

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            handle = getattr(self, "_tlsConnection", None)  # None after this call
            super().connectionLost(reason)
            helper = getattr(handle, "_verify_helper", None)
            if helper is not None and getattr(helper, "callback", None) is not None:
                # pyOpenSSL's helper and its C callback refer to each other, and the
                # certificate check it calls (Twisted's) holds this connection.
                helper.callback = None

    class TLSFactory(TLSMemoryBIOFactory):
        protocol = TLSConnection

    return TLSFactory
