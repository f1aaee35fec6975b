"""Every private attribute of Twisted, pyOpenSSL, h2, hpack and botocore the gateway relies
on, in one place.

The data path goes under the libraries' public interfaces where that saves a Python call
per event, and `filterproxy.runtime.teardown` cuts reference cycles the libraries leave. What it
touches is listed here; ``tests/unit/test_private_apis.py`` checks each entry against the
installed versions, and ``tests/twisted_reactor`` runs Twisted's own reactor tests
against `filterproxy.runtime._epoll.GatewayReactor`. A release that renames or removes one of
them fails the tests (pyproject.toml also bounds Twisted's version).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRIVATE_APIS", "PrivateAPI"]


@dataclass(frozen=True)
class PrivateAPI:
    """One private attribute relied on."""

    #: The class that has it (dotted path).
    owner: str
    name: str
    #: ``method``, or ``attribute`` (set on instances).
    kind: str
    #: Who uses it, and for what.
    used_by: str


_REACTOR = "filterproxy.runtime._epoll: GatewayReactor's main loop and read dispatch"
_H2_READ = (
    "filterproxy.http.h2wire.read_data_frame and acknowledge: DATA frames read, and "
    "acknowledged, around h2 with its windows and content-length count moved as h2 moves them"
)
_H2_HEAD = (
    "filterproxy.http.h2wire.read_request_head and forget_closed_stream: a request's HEADERS "
    "read around h2, its stream opened and, once closed, forgotten as h2 does it"
)
_HPACK = (
    "filterproxy.http.hpackread.decode_block: header blocks decoded against hpack's "
    "dynamic table, left as hpack leaves it"
)
_SEND = "filterproxy.runtime._transport.write_now, downstream.http11's send: writes straight to the socket while nothing is queued"

PRIVATE_APIS: tuple[PrivateAPI, ...] = (
    PrivateAPI("twisted.internet.base.ReactorBase", "_started", "attribute", _REACTOR),
    PrivateAPI("twisted.internet.base.ReactorBase", "_justStopped", "attribute", _REACTOR),
    PrivateAPI("twisted.internet.base.ReactorBase", "_newTimedCalls", "attribute", _REACTOR),
    PrivateAPI("twisted.internet.base.ReactorBase", "_pendingTimedCalls", "attribute", _REACTOR),
    PrivateAPI("twisted.internet.base.ReactorBase", "_cancellations", "attribute", _REACTOR),
    PrivateAPI("twisted.internet.epollreactor.EPollReactor", "_poller", "attribute", _REACTOR),
    PrivateAPI("twisted.internet.epollreactor.EPollReactor", "_selectables", "attribute", _REACTOR),
    PrivateAPI("twisted.internet.epollreactor.EPollReactor", "_doReadOrWrite", "method", _REACTOR),
    PrivateAPI(
        "twisted.internet.posixbase.PosixReactorBase", "_disconnectSelectable", "method", _REACTOR
    ),
    PrivateAPI("twisted.internet.abstract.FileDescriptor", "_tempDataLen", "attribute", _SEND),
    PrivateAPI("twisted.internet.abstract.FileDescriptor", "dataBuffer", "attribute", _SEND),
    PrivateAPI("twisted.internet.tcp.Connection", "socket", "attribute", _SEND + "; " + _REACTOR),
    PrivateAPI("twisted.internet.tcp.Connection", "bufferSize", "attribute", _REACTOR),
    PrivateAPI(
        "twisted.internet.tcp.BaseClient",
        "connector",
        "attribute",
        "filterproxy.runtime.teardown.release_connector: the transport <-> connector cycle",
    ),
    PrivateAPI(
        "twisted.internet.base.BaseConnector",
        "transport",
        "attribute",
        "filterproxy.runtime.teardown.release_connector: the transport <-> connector cycle",
    ),
    PrivateAPI(
        "twisted.internet.endpoints._WrappingFactory",
        "_connector",
        "attribute",
        "filterproxy.runtime.teardown.release_connector: the endpoint's factory <-> connector cycle",
    ),
    PrivateAPI(
        "twisted.protocols.tls.TLSMemoryBIOProtocol",
        "_tlsShutdownFinished",
        "method",
        "filterproxy.runtime.teardown.tls_factory: a dropped TLS failure's traceback cycle",
    ),
    PrivateAPI(
        "twisted.protocols.tls.TLSMemoryBIOProtocol",
        "_tlsConnection",
        "attribute",
        "filterproxy.runtime.teardown.tls_factory: the certificate check's helper cycle",
    ),
    PrivateAPI(
        "OpenSSL.SSL.Connection",
        "_verify_helper",
        "attribute",
        "filterproxy.runtime.teardown.tls_factory: pyOpenSSL's verify helper <-> C callback cycle",
    ),
    PrivateAPI(
        "h2.connection.H2Connection",
        "_frame_dispatch_table",
        "attribute",
        "filterproxy.runtime.teardown.release_h2: the connection's table of its own bound methods",
    ),
    *(
        PrivateAPI(owner, name, "attribute", _H2_READ)
        for owner, name in (
            ("h2.connection.H2Connection", "_inbound_flow_control_window_manager"),
            ("h2.frame_buffer.FrameBuffer", "_data"),
            ("h2.frame_buffer.FrameBuffer", "_headers_buffer"),
            ("h2.frame_buffer.FrameBuffer", "_preamble_len"),
            ("h2.stream.H2Stream", "_inbound_window_manager"),
            ("h2.stream.H2Stream", "_actual_content_length"),
            ("h2.stream.H2Stream", "_expected_content_length"),
        )
    ),
    PrivateAPI("h2.connection.H2Connection", "_begin_new_stream", "method", _H2_HEAD),
    PrivateAPI("h2.connection.H2Connection", "_closed_streams", "attribute", _H2_HEAD),
    PrivateAPI(
        "h2.connection.H2Connection",
        "_data_to_send",
        "attribute",
        "filterproxy.downstream.h2: whether h2 has framed anything to write, asked without "
        "data_to_send's new buffer",
    ),
    PrivateAPI("hpack.table.HeaderTable", "_maxsize", "attribute", _HPACK),
    PrivateAPI("hpack.table.HeaderTable", "_current_size", "attribute", _HPACK),
    PrivateAPI(
        "botocore.credentials.RefreshableCredentials",
        "_expiry_time",
        "attribute",
        "filterproxy.extensions.bedrock.auth: when AWS credentials expire, to refresh them "
        "ahead (without it: fetched again hourly)",
    ),
)
