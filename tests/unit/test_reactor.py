"""The gateway's reactor (filterproxy.runtime.reactor), each case in a fresh interpreter: a
process has one global reactor, and the test run's is installed already."""

from __future__ import annotations

from .fresh_interpreter import run_python


def test_installed_when_no_reactor_was_chosen() -> None:
    out = run_python(
        """
        from filterproxy.runtime.reactor import install_if_unset
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
        from filterproxy.runtime.reactor import install_if_unset
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
        from filterproxy.runtime.reactor import install_if_unset
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
        from filterproxy.runtime.reactor import install_if_unset
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


def test_an_upstream_socket_delivers_to_the_pooled_connection_itself() -> None:
    """Twisted's client endpoint connects a forwarding protocol of its own; the upstream
    connection takes its place, and still gets the socket's reads and its close."""
    out = run_python(
        """
        from filterproxy.runtime.reactor import install_if_unset
        install_if_unset()
        from twisted.internet import reactor, protocol
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from filterproxy.extensions.builtin import parse_config
        from filterproxy.server.service import Gateway

        class Chatty(protocol.Protocol):  # sends what no request asked for
            def connectionMade(self):
                self.transport.write(b"unasked-for bytes")

        class Closing(protocol.Protocol):
            def connectionMade(self):
                self.transport.loseConnection()

        def connect(port, then):
            url = f"http://127.0.0.1:{port.getHost().port}"
            config = parse_config(
                f'clusters: {{up: {{url: "{url}"}}}}\\nroutes: [{{cluster: up}}]', environ={}
            )
            pool = Gateway(config, reactor).clusters["up"].endpoints[0].pool
            def connected(conn):
                print("direct:", conn.transport.protocol is conn)
                def settled():
                    print("state:", conn.state.value, "open:", pool.open_count)
                    port.stopListening()
                    then()
                reactor.callLater(0.5, settled)
            pool.acquire(5).addCallback(connected)

        def upstream(kind, then):
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
            endpoint.listen(protocol.Factory.forProtocol(kind)).addCallback(connect, then)

        upstream(Chatty, lambda: upstream(Closing, reactor.stop))
        reactor.callLater(20, reactor.stop)
        reactor.run()
        """
    )
    # Bytes while idle make a connection unusable; a close is noticed: both closed, and
    # neither counted as open any more.
    assert out.splitlines() == [
        "direct: True",
        "state: closed open: 0",
        "direct: True",
        "state: closed open: 0",
    ]


def test_the_main_loop_runs_timed_calls_thread_calls_and_survives_an_error() -> None:
    """The loop's own path for passes with nothing due must still run every timed call in
    order and on time, calls from threads, reschedules and cancellations, and log an
    exception that escapes a pass without stopping."""
    out = run_python(
        """
        import sys, threading, time
        from filterproxy.runtime.reactor import install_if_unset
        install_if_unset()
        from twisted.internet import reactor
        from twisted.logger import globalLogBeginner, textFileLogObserver
        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stdout)], redirectStandardIO=False
        )

        events = []
        start = time.monotonic()

        def note(name):
            events.append(name)
            # Never early: a timed call runs at or after its time.
            late = time.monotonic() - start - delays[name]
            assert late >= -0.002, (name, late)

        delays = {"a": 0.05, "b": 0.10, "moved": 0.20, "c": 0.25}
        reactor.callLater(0.10, note, "b")
        reactor.callLater(0.05, note, "a")
        moved = reactor.callLater(0.01, note, "moved")
        moved.delay(0.19)
        cancelled = [reactor.callLater(0.4, note, "never") for _ in range(60)]
        reactor.callLater(0.15, lambda: [call.cancel() for call in cancelled])

        def from_thread():
            time.sleep(0.02)
            reactor.callFromThread(events.append, "thread")

        threading.Thread(target=from_thread).start()

        # An exception escaping a pass: the next time the loop runs the timed calls (for
        # "moved"), that raises once; the calls due run on the pass after.
        def failing_once():
            del reactor.runUntilCurrent
            raise ValueError("a failing pass")

        reactor.callLater(0.12, setattr, reactor, "runUntilCurrent", failing_once)
        def last():
            note("c")
            # Nothing else is scheduled: only the call from a thread can stop the loop.
            threading.Thread(target=reactor.callFromThread, args=(reactor.stop,)).start()

        reactor.callLater(0.25, last)
        reactor.run()
        print("EVENTS", " ".join(events))
        print("PENDING", len(reactor.getDelayedCalls()))
        """
    )
    lines = out.splitlines()
    assert "EVENTS thread a b moved c" in lines
    assert "PENDING 0" in lines
    assert any("Unexpected error in main loop" in line for line in lines)
    assert any("ValueError: a failing pass" in line for line in lines)


def test_writes_kept_for_a_pass_leave_together_before_the_reactor_waits() -> None:
    """`PassWrites` keeps what a connection writes while the reactor handles ready sockets
    (and timed calls) and sends it, in order, before the reactor waits again; a call made
    before waiting that schedules a call runs it without waiting for a socket; a call
    that raises is logged and the others still run."""
    logged: list[str] = []
    out = run_python(
        """
        import socket, sys
        from filterproxy.runtime.reactor import install_if_unset
        install_if_unset()
        from twisted.internet import reactor, protocol
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.logger import globalLogBeginner, textFileLogObserver
        from filterproxy.runtime._transport import PassWrites
        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stderr)], redirectStandardIO=False
        )

        class Server(protocol.Protocol):
            def connectionMade(self):
                self.writes = PassWrites(self.transport, reactor)
            def dataReceived(self, data):
                for piece in (b"one ", b"two ", b"three "):
                    self.writes.write(piece)
                self.writes.write_pieces([b"four ", b"five"])
                # Nothing has reached the transport yet: it is all kept for the pass.
                queued = len(self.transport.dataBuffer) + self.transport._tempDataLen
                print("during the pass:", len(self.writes.pieces), "kept,", queued, "queued")
                reactor.callLater(0, self.later)
            def later(self):  # a timed call writes too: sent before the reactor waits
                self.writes.write(b" six")
                def failing():
                    raise RuntimeError("a call before waiting failed")
                reactor.call_before_wait(failing)
                reactor.call_before_wait(lambda: reactor.callLater(0, read))

        def read():
            client.settimeout(5)
            got = b""
            while len(got) < len(b"one two three four five six"):
                got += client.recv(100)
            print("client got:", got.decode())
            reactor.stop()

        def connected(port):
            global client
            client = socket.create_connection(("127.0.0.1", port.getHost().port))
            client.sendall(b"go")

        factory = protocol.Factory.forProtocol(Server)
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory).addCallback(
            connected
        )
        reactor.callLater(20, lambda: (print("the reactor waited"), reactor.stop()))
        reactor.run()
        """,
        stderr=logged,
    )
    assert out.splitlines() == [
        "during the pass: 5 kept, 0 queued",
        "client got: one two three four five six",
    ]
    assert "RuntimeError: a call before waiting failed" in logged[0]
