"""When the gateway loads the HTTP/2 stack (the h2 package): with its first HTTP/2 client,
or at start-up when a cluster may speak HTTP/2 — never for HTTP/1.1 clients and upstreams,
nor for the admin listener (in a fresh interpreter: this one has imported h2 long ago);
and that the admin listener leaves twisted.web out."""

from __future__ import annotations

from .fresh_interpreter import run_python

GATEWAY = """
    import sys
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from filterproxy.server.admin import admin_factory
    from filterproxy.extensions.builtin import parse_config
    from filterproxy.downstream.server import GatewayServerFactory
    from filterproxy.observability.metrics import Metrics
    from filterproxy.server.service import Gateway

    def gateway(cluster):
        text = "clusters: {local: %s}\\nroutes: [{cluster: local}]" % cluster
        return Gateway(parse_config(text, environ={}), Clock())

    def loaded():
        return "h2" in sys.modules

    def client(gateway, first_bytes):
        connection = GatewayServerFactory(gateway).buildProtocol(None)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(first_bytes)
        return connection, transport
"""


def test_http2_loads_with_the_first_http2_client() -> None:
    code = (
        GATEWAY
        + """
    plain = gateway('{url: "http://127.0.0.1:9101"}')
    admin_factory(lambda: plain, Metrics().registry(), lambda: None, Clock())
    print("at start:", loaded())
    client(plain, b"GET /v1/models HTTP/1.1\\r\\nHost: gw\\r\\n\\r\\n")
    print("HTTP/1.1 client:", loaded())
    connection, transport = client(plain, b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n")
    # The server's SETTINGS frame: 9-byte header, type 4 at offset 3.
    print("HTTP/2 client:", loaded(), type(connection.chosen).__name__, transport.value()[3])
    """
    )
    assert run_python(code).splitlines() == [
        "at start: False",
        "HTTP/1.1 client: False",
        "HTTP/2 client: True H2ServerConnection 4",
    ]


def test_a_cluster_that_may_speak_http2_loads_it_at_start() -> None:
    code = (
        GATEWAY
        + """
    gateway('{url: "http://127.0.0.1:9101", protocol: http1}')
    print("http1:", loaded())
    gateway('{url: "http://127.0.0.1:9101", protocol: http2}')
    print("http2:", loaded())
    """
    )
    assert run_python(code).splitlines() == ["http1: False", "http2: True"]


def test_the_admin_listener_does_not_load_twisted_web() -> None:
    """The admin listener speaks HTTP/1.1 on llhttp: twisted.web (about 1 MB with its HTTP
    protocol) stays out of a gateway that does not run the mock upstream."""
    code = (
        GATEWAY
        + """
    plain = gateway('{url: "http://127.0.0.1:9101"}')
    factory = admin_factory(lambda: plain, Metrics().registry(), lambda: None, Clock())
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"GET /metrics HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")
    print(transport.value().split(b"\\r\\n")[0].decode())
    print("twisted.web:", "twisted.web.http" in sys.modules, "twisted.web" in sys.modules)
    """
    )
    assert run_python(code).splitlines() == ["HTTP/1.1 200 OK", "twisted.web: False False"]
