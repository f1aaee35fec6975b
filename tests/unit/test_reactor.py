"""The gateway's reactor (filterproxy.reactor), each case in a fresh interpreter: a
process has one global reactor, and the test run's is installed already."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str, *, stderr: list[str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if stderr is not None:
        stderr.append(result.stderr)
    return result.stdout.strip()


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
