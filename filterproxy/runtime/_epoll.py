"""`GatewayReactor`, the epoll reactor `filterproxy.runtime.reactor` installs (Linux only: this
module does not import elsewhere). Compiled with the data path; see `filterproxy.runtime.reactor`
for what it changes and why."""

from __future__ import annotations

import sys
from collections.abc import Callable
from select import EPOLLIN
from typing import Any, Final

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python import log

from filterproxy.runtime._transport import NativeProtocol

__all__ = ["GatewayReactor"]


def _reads_like_tcp(kind: type) -> bool:
    """Whether transports of *kind* read as `tcp.Connection.doRead` does."""
    return issubclass(kind, Connection) and getattr(kind, "doRead", None) is Connection.doRead


#: Transport classes seen, and whether they read as `tcp.Connection` does.
_DIRECT_READ: Final[dict[type, bool]] = {}

#: epoll_wait takes its timeout in milliseconds as a C int.
_LONGEST_WAIT = 2147483.0

_log = Logger(namespace="filterproxy.reactor")


class GatewayReactor(EPollReactor):
    """`EPollReactor` without the per-event logging context, reading TCP
    connections directly, a main loop that skips the timed-call bookkeeping on the
    passes where no timed call is due, and calls made once before it next waits
    (`call_before_wait`)."""

    def __init__(self) -> None:
        #: What `call_before_wait` was given since the reactor last waited.
        self._before_wait: list[Callable[[], object]] = []
        super().__init__()

    def call_before_wait(self, call: Callable[[], object]) -> None:
        """Call *call* once, after the sockets that are ready now have been handled and
        before the reactor waits for more (after the timed calls that are due, too).

        A connection that writes many small pieces in one pass — an HTTP/2 connection,
        whose streams each send frames — queues them and sends them here with one
        ``send``: not one per piece, and not on the reactor's next pass after two
        ``epoll_ctl`` calls to watch the socket for writability, as `ITransport.write`
        would. An exception from *call* is logged; the others are still called."""
        self._before_wait.append(call)

    def _call_before_wait(self) -> None:
        while self._before_wait:
            calls, self._before_wait = self._before_wait, []
            for call in calls:
                try:
                    call()
                except BaseException:
                    _log.failure("Unexpected error in a call before waiting")

    def mainLoop(self) -> None:
        """Run until stopped: each pass runs what is due, then waits for sockets.

        Twisted's loop calls `runUntilCurrent` and `timeout` (interpreted, a dozen
        attribute reads and two clock readings) on every pass. Most passes of a busy
        gateway have nothing for them: no call from a thread, no call scheduled since the
        last pass, the earliest timed call still in the future. Then this loop works the
        wait out itself from the earliest call; otherwise it calls Twisted's methods as
        Twisted's loop does. An exception escaping a pass is logged, and the loop goes on.
        """
        while self._started:
            try:
                if (
                    self.threadCallQueue
                    or self._newTimedCalls
                    or self._justStopped
                    or self._cancellations > 50  # it may be time to purge the cancelled
                ):
                    self.runUntilCurrent()
                    timeout = self.timeout()
                else:
                    pending = self._pendingTimedCalls
                    if pending:
                        wait = pending[0].time - self.seconds()
                        if wait <= 0.0:
                            self.runUntilCurrent()
                            timeout = self.timeout()
                        else:
                            timeout = min(wait, _LONGEST_WAIT)
                    else:
                        timeout = None
                self.doIteration(timeout if self.running else 0.0)
            except BaseException:
                _log.failure("Unexpected error in main loop")
        _log.info("Main loop terminated.")

    def doIteration(self, timeout: float | None) -> None:
        """Wait up to *timeout* seconds for ready sockets and handle them."""
        if self._before_wait:
            self._call_before_wait()
            if self.threadCallQueue or self._newTimedCalls:
                timeout = 0.0  # those calls made calls due now: do not wait for them
        if timeout is None:
            timeout = -1  # wait until something is ready
        selectables = self._selectables
        try:
            events = self._poller.poll(timeout, len(selectables))
        except InterruptedError:  # a signal arrived (its handler runs next)
            return
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event == EPOLLIN:
                kind = type(selectable)
                reads_directly = _DIRECT_READ.get(kind)
                if reads_directly is None:
                    reads_directly = _DIRECT_READ[kind] = _reads_like_tcp(kind)
                if reads_directly:
                    self._read_tcp(selectable)
                    continue
            self._doReadOrWrite(selectable, fd, event)

    def doPoll(self, timeout: float | None) -> None:
        self.doIteration(timeout)

    def _read_tcp(self, connection: Any) -> None:
        """What `tcp.Connection.doRead` and `_doReadOrWrite` do for a read event."""
        why: Any = None
        try:
            protocol = connection.protocol
            if isinstance(protocol, NativeProtocol) and protocol.sock is not None:
                # The gateway's own connections keep their socket and read size: fields
                # of a compiled class rather than attributes of Twisted's transport.
                sock, size = protocol.sock, protocol.read_size
            else:
                sock, size = connection.socket, connection.bufferSize
            try:
                data = sock.recv(size)
            except BlockingIOError:
                return
            except OSError:
                why = CONNECTION_LOST
            else:
                if data:
                    if isinstance(protocol, NativeProtocol):
                        protocol.dataReceived(data)  # a direct call when compiled
                    else:
                        protocol.dataReceived(data)
                    return
                why = CONNECTION_DONE
        except BaseException:
            why = sys.exc_info()[1]
            log.err()
        self._disconnectSelectable(connection, why, True)
