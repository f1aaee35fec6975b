"""A small Redis client on Twisted: one pipelined connection, replies parsed by hiredis.

Every call has its own deadline: a request never waits on Redis longer than the
configured timeout, from the moment it made the call — also when the call waited for a
connection, and right after a (re)connection, whose handshake has a longer one. A call
that passes it fails with `RedisUnavailable`, and the connection is dropped — a late
reply would otherwise be taken for the next call's. While the
connection is down, calls fail at once, and the client reconnects by itself with
backoff (0.1 s doubling to 5 s). Scripts run by ``EVALSHA``, falling back to ``EVAL``
when the server does not have them (after a restart or ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["RedisClient", "RedisError", "RedisUnavailable", "encode_command"]

log = Logger(namespace="filterproxy.redis")
_MAX_BACKOFF = 5.0
#: How long a command sent "soon" may wait for company.
_HOLD = 0.005


class RedisError(Exception):
    """An error reply from Redis."""


class RedisUnavailable(RedisError):
    """Redis could not answer: not connected, or not within the deadline."""


def encode_command(args: tuple[bytes | str | int, ...]) -> bytes:
    """A command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


#: The handshake of a new connection (AUTH, SELECT, PING) may take this many times the
#: timeout: connecting is slower than a call, and no request waits on it (calls made
#: meanwhile keep their own deadline).
_HANDSHAKE_TIMEOUTS = 10


class _Pending:
    __slots__ = ("deadline", "deferred", "handshake")

    def __init__(self, deferred: defer.Deferred[Any], deadline: float, handshake: bool) -> None:
        self.deferred = deferred
        self.deadline = deadline
        self.handshake = handshake


class _RedisProtocol(Protocol):
    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.reader = hiredis.Reader(replyError=RedisError)
        self.pending: deque[_Pending] = deque()
        #: One timer for the earliest deadline of the calls waiting for a reply (not one
        #: per call), and when that is.
        self.timer: Any = None
        self.timer_at = 0.0
        #: Commands that go with the next write (`send` with *soon*), and their timer.
        self.held: list[bytes] = []
        self.flush_call: Any = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.setTcpNoDelay(True) if hasattr(transport, "setTcpNoDelay") else None

    def send(
        self,
        args: tuple[bytes | str | int, ...],
        timeout: float,
        *,
        soon: bool = False,
        handshake: bool = False,
    ) -> defer.Deferred[Any]:
        """Send a command whose reply is due within *timeout* seconds; with *soon*, it may
        wait (a few ms at most) to go in one write with the next command: its reply is
        not awaited by anyone in a hurry."""
        deferred: defer.Deferred[Any] = defer.Deferred()
        reactor = self.client.reactor
        deadline = reactor.seconds() + timeout
        self.pending.append(_Pending(deferred, deadline, handshake))
        if self.timer is None or deadline < self.timer_at:
            self._arm(deadline)
        if soon:
            self.held.append(encode_command(args))
            if self.flush_call is None:
                self.flush_call = reactor.callLater(_HOLD, self._flush)
            return deferred
        assert self.transport is not None
        if self.held:
            self.held.append(encode_command(args))
            self._flush()
        else:
            self.transport.write(encode_command(args))
        return deferred

    def _flush(self) -> None:
        if self.flush_call is not None and self.flush_call.active():
            self.flush_call.cancel()
        self.flush_call = None
        held, self.held = self.held, []
        if held and self.transport is not None:
            self.transport.write(b"".join(held))

    def _arm(self, deadline: float) -> None:
        """Check the calls' deadlines at *deadline*, and not later."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        reactor = self.client.reactor
        self.timer_at = deadline
        self.timer = reactor.callLater(max(0.0, deadline - reactor.seconds()), self._check)

    def _check(self) -> None:
        """A call's deadline may have passed."""
        self.timer = None
        if not self.pending:
            return
        now = self.client.reactor.seconds()
        earliest = None
        for entry in self.pending:
            if entry.deadline <= now:
                break
            if earliest is None or entry.deadline < earliest.deadline:
                earliest = entry
        else:
            assert earliest is not None
            self._arm(earliest.deadline)
            return
        # Replies come in order: this one's is still owed, so no later reply can be
        # trusted on this connection. Drop it (the pending calls fail) and reconnect.
        ms = self.client.timeout * 1000
        if entry.handshake:
            message = (
                f"Redis did not answer the handshake of a new connection within "
                f"{ms * _HANDSHAKE_TIMEOUTS:.0f} ms ({_HANDSHAKE_TIMEOUTS} x redis.timeout)"
            )
        else:
            message = f"Redis did not answer within {ms:.0f} ms (redis.timeout)"
        log.warn("{message}; reconnecting", message=message)
        self._fail_all(RedisUnavailable(message))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as e:
                self._fail_all(RedisUnavailable(f"Redis protocol error: {e}"))
                if self.transport is not None:
                    self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            if reply is False:
                return
            if not self.pending:
                continue
            entry = self.pending.popleft()
            if isinstance(reply, RedisError):
                entry.deferred.errback(Failure(reply))
            else:
                entry.deferred.callback(reply)

    def _fail_all(self, error: Exception) -> None:
        pending, self.pending = self.pending, deque()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.flush_call is not None and self.flush_call.active():
            self.flush_call.cancel()
        self.flush_call = None
        self.held = []
        for entry in pending:
            if not entry.deferred.called:
                entry.deferred.errback(Failure(error))

    def connectionLost(self, reason: Failure = defer.CancelledError) -> None:  # type: ignore[assignment]
        self._fail_all(RedisUnavailable("the connection to Redis was lost"))
        self.client._lost(self)


class _Factory(Factory):
    noisy = False

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> _RedisProtocol:
        return _RedisProtocol(self.client)


class RedisClient:
    """One connection to the Redis at *url* (``redis://[:password@]host[:port][/db]`` or
    ``unix:///path``), made on `start` and remade whenever it is lost."""

    def __init__(self, reactor: Any, url: str, timeout: float) -> None:
        # Imported here: the endpoints module brings pyOpenSSL, which a gateway without
        # TLS does not load (filterproxy.runtime.lazytls).
        from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint

        self.reactor = reactor
        self.url = url
        self.timeout = timeout
        parts = urlsplit(url)
        self.password = unquote(parts.password) if parts.password else None
        if parts.scheme == "unix":
            self.endpoint: Any = UNIXClientEndpoint(reactor, parts.path, timeout=5)
            self.db = 0
        else:
            self.endpoint = TCP4ClientEndpoint(
                reactor, parts.hostname or "127.0.0.1", parts.port or 6379, timeout=5
            )
            self.db = int(parts.path.strip("/") or 0)
        self.protocol: _RedisProtocol | None = None
        self.connecting = False
        self.stopped = False
        self.backoff = 0.1
        self.retry_call: Any = None
        self.shas: dict[str, bytes] = {}
        #: Calls made while a connection is being made: sent when it is ready, failed
        #: when it fails or their deadline passes.
        self.waiting: list[
            tuple[tuple[bytes | str | int, ...], bool, defer.Deferred[Any], Any]
        ] = []

    @property
    def connected(self) -> bool:
        return self.protocol is not None

    def start(self) -> None:
        """Connect (and keep reconnecting while it cannot)."""
        self.stopped = False
        if self.protocol is None and not self.connecting:
            self._connect()

    def stop(self) -> None:
        """Disconnect for good."""
        self.stopped = True
        if self.retry_call is not None and self.retry_call.active():
            self.retry_call.cancel()
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()

    def _connect(self) -> None:
        self.connecting = True
        d = self.endpoint.connect(_Factory(self))
        d.addCallback(self._handshake)
        d.addErrback(self._failed)

    def _handshake(self, protocol: _RedisProtocol) -> defer.Deferred[Any]:
        calls = []
        timeout = self.timeout * _HANDSHAKE_TIMEOUTS
        if self.password is not None:
            calls.append(protocol.send(("AUTH", self.password), timeout, handshake=True))
        if self.db:
            calls.append(protocol.send(("SELECT", self.db), timeout, handshake=True))
        calls.append(protocol.send(("PING",), timeout, handshake=True))

        def ready(_: Any) -> None:
            self.connecting = False
            self.backoff = 0.1
            if self.stopped:
                assert protocol.transport is not None
                protocol.transport.loseConnection()
                return
            self.protocol = protocol
            log.info("connected to Redis at {url}", url=self._safe_url())
            waiting, self.waiting = self.waiting, []
            now = self.reactor.seconds()
            for args, soon, deferred, timer in waiting:
                if not timer.active():
                    continue
                timer.cancel()
                # What is left of the call's own deadline, not a new one.
                left = timer.getTime() - now
                if left > 0:
                    protocol.send(args, left, soon=soon).chainDeferred(deferred)
                else:  # due now: not worth the new connection's life
                    self._expire_waiting(deferred)

        return defer.gatherResults(calls, consumeErrors=True).addCallback(ready)

    def _failed(self, failure: Failure) -> None:
        self.connecting = False
        waiting, self.waiting = self.waiting, []
        for _, _, deferred, timer in waiting:
            if timer.active():
                timer.cancel()
                deferred.errback(RedisUnavailable("cannot connect to Redis"))
        error = failure.value
        if isinstance(error, defer.FirstError):
            error = error.subFailure.value
        log.warn(
            "cannot connect to Redis at {url}: {error}; retrying in {backoff:.1f}s",
            url=self._safe_url(),
            error=error,
            backoff=self.backoff,
        )
        self._retry()

    def _retry(self) -> None:
        if self.stopped:
            return
        self.retry_call = self.reactor.callLater(self.backoff, self._connect)
        self.backoff = min(self.backoff * 2, _MAX_BACKOFF)

    def _lost(self, protocol: _RedisProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
            if not self.stopped and self.reactor.running:
                log.warn(
                    "lost the connection to Redis at {url}; reconnecting", url=self._safe_url()
                )
                self._retry()

    def _safe_url(self) -> str:
        parts = urlsplit(self.url)
        return self.url.replace(f":{parts.password}@", ":***@") if parts.password else self.url

    def call(self, *args: bytes | str | int, soon: bool = False) -> defer.Deferred[Any]:
        """Run one command; its reply, or `RedisUnavailable` within the deadline. With
        *soon*, the command may wait up to 5 ms to share a write with the next one (for
        commands whose reply nobody waits for)."""
        if self.protocol is None:
            if (
                not self.connecting
                and not self.stopped
                and (self.retry_call is None or not self.retry_call.active())
            ):
                self._connect()
            if not self.connecting:
                return defer.fail(RedisUnavailable("not connected to Redis"))
            # A connection is being made (at start, or a reconnection): wait for it,
            # within the call's deadline.
            deferred: defer.Deferred[Any] = defer.Deferred()
            timer = self.reactor.callLater(self.timeout, self._expire_waiting, deferred)
            self.waiting.append((args, soon, deferred, timer))
            return deferred
        return self.protocol.send(args, self.timeout, soon=soon)

    def _expire_waiting(self, deferred: defer.Deferred[Any]) -> None:
        self.waiting = [w for w in self.waiting if w[2] is not deferred]
        deferred.errback(
            RedisUnavailable(f"no connection to Redis within {self.timeout * 1000:.0f} ms")
        )

    def run_script(
        self,
        script: str,
        keys: tuple[str, ...],
        args: tuple[bytes | str | int, ...],
        *,
        soon: bool = False,
    ) -> defer.Deferred[Any]:
        """``EVALSHA`` *script* (``EVAL`` when Redis does not know it yet)."""
        sha = self.shas.get(script)
        if sha is None:
            sha = self.shas[script] = hashlib.sha1(script.encode()).hexdigest().encode()
        d = self.call("EVALSHA", sha, len(keys), *keys, *args, soon=soon)

        def unknown(failure: Failure) -> Any:
            unknown_script = str(failure.value).startswith("NOSCRIPT")
            if unknown_script and not failure.check(RedisUnavailable):
                return self.call("EVAL", script, len(keys), *keys, *args)
            return failure

        return d.addErrback(unknown)
