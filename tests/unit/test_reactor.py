"""The gateway's reactor (filterproxy.reactor), each case in a fresh interpreter: a
process has one global reactor, and the test run's is installed already."""

from __future__ import annotations

from .fresh_interpreter import run_python


def test_installed_when_no_reactor_was_chosen() -> None:
    out = run_python(
        """
        from filterproxy.reactor import install_if_unset
        print(install_if_unset().__name__)
        from twisted.internet import reactor
        print(type(reactor).__name__)
        """
    )
    assert out.splitlines() == ["GatewayReactor", "GatewayReactor"]


def test_a_reactor_chosen_before_is_kept() -> None:
    out = run_python(
        """
        from twisted.internet import selectreactor
        selectreactor.install()
        from filterproxy.reactor import install_if_unset
        print(install_if_unset().__name__)
        """
    )
    assert out == "SelectReactor"


def test_reads_writes_and_a_failing_protocol_over_real_sockets() -> None:
    """Bytes flow both ways through the direct dispatch; a protocol that raises in
    dataReceived gets its connection closed and the error logged, as Twisted does."""
    logged: list[str] = []
    out = run_python(
        """
        import sys
        from filterproxy.reactor import install_if_unset
        install_if_unset()
        from twisted.internet import reactor, protocol
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
        from twisted.logger import globalLogBeginner, textFileLogObserver
        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stderr)], redirectStandardIO=False
        )

        class Echo(protocol.Protocol):
            def dataReceived(self, data):
                if data == b"boom":
                    raise RuntimeError("protocol failure")
                self.transport.write(data.upper())

        class Client(protocol.Protocol):
            def __init__(self, payload, results):
                self.payload, self.results, self.got = payload, results, b""
            def connectionMade(self):
                self.transport.write(self.payload)
            def dataReceived(self, data):
                self.got += data
                if len(self.got) >= len(self.payload):
                    self.transport.loseConnection()
            def connectionLost(self, reason):
                self.results.append((self.payload, self.got))
                if len(self.results) == 2:
                    reactor.stop()

        results = []
        server = protocol.Factory.forProtocol(Echo)
        def connect(port):
            address = port.getHost()
            for payload in (b"hello", b"boom"):
                factory = protocol.Factory()
                factory.buildProtocol = lambda addr, p=payload: Client(p, results)
                TCP4ClientEndpoint(reactor, "127.0.0.1", address.port).connect(factory)
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server).addCallback(connect)
        reactor.callLater(20, reactor.stop)
        reactor.run()
        for payload, got in sorted(results):
            print(payload.decode(), repr(got))
        """,
        stderr=logged,
    )
    assert out.splitlines() == ["boom b''", "hello b'HELLO'"]
    assert "RuntimeError: protocol failure" in logged[0]


def test_peer_close_half_close_and_reset_reach_the_protocol() -> None:
    """A read of zero bytes is the peer's close (ConnectionDone), or only its half when
    the protocol is half-closeable (readConnectionLost, and it can still answer); a
    reset is ConnectionLost. Each as Twisted's own read would report it."""
    out = run_python(
        """
        import socket, struct
        from filterproxy.reactor import install_if_unset
        print(install_if_unset().__name__)
        from twisted.internet import reactor, protocol, interfaces
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from zope.interface import implementer

        seen = []

        @implementer(interfaces.IHalfCloseableProtocol)
        class Server(protocol.Protocol):
            def dataReceived(self, data):
                seen.append(("data", data))
            def readConnectionLost(self):
                seen.append(("read closed",))
                self.transport.write(b"bye")
                self.transport.loseConnection()
            def writeConnectionLost(self):
                pass
            def connectionLost(self, reason):
                seen.append(("lost", reason.type.__name__))
                if reason.type.__name__ == "ConnectionLost":
                    reactor.stop()

        def clients(port):
            address = ("127.0.0.1", port.getHost().port)
            half = socket.create_connection(address)
            half.sendall(b"half")
            half.shutdown(socket.SHUT_WR)
            def finish_half():
                seen.append(("client got", half.recv(10)))
                half.close()
                reset = socket.create_connection(address)
                reset.sendall(b"reset")
                reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                reactor.callLater(0.2, reset.close)
            reactor.callLater(0.5, finish_half)

        factory = protocol.Factory.forProtocol(Server)
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(clients)
        reactor.callLater(20, reactor.stop)
        reactor.run()
        for event in seen:
            print(*event)
        """
    )
    assert out.splitlines() == [
        "GatewayReactor",
        "data b'half'",
        "read closed",
        "lost ConnectionDone",
        "client got b'bye'",
        "data b'reset'",
        "lost ConnectionLost",
    ]
