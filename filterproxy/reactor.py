"""The gateway's reactor: Twisted's epoll reactor, dispatching ready sockets directly.

For every ready socket, `EPollReactor.doPoll` calls ``log.callWithLogger(selectable, ...)``,
which pushes a legacy-logging context (the ``[HTTPChannel,3,127.0.0.1]`` prefix of old-style
log lines) around the read or write. That is four Python frames and a dict copy, about
1 µs per event — per streamed chunk, a tenth of what the gateway spends on it. The gateway
logs through `twisted.logger` with its own namespaces and never reads that prefix, so
`GatewayReactor` calls the reactor's read/write dispatch (`_doReadOrWrite`, which keeps
Twisted's error handling: an exception logs and disconnects that socket) without it.

``twistd filterproxy`` installs it unless a reactor was chosen (``twistd --reactor NAME``)
or installed already; on platforms without epoll Twisted's default is left in place.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["install_if_unset"]

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux: no epoll
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class GatewayReactor(EPollReactor):
        """`EPollReactor` without the per-event logging context."""

        def doPoll(self, timeout: float | None) -> None:
            if timeout is None:
                timeout = -1  # wait until something is ready
            selectables = self._selectables
            try:
                events = self._poller.poll(timeout, len(selectables))
            except InterruptedError:  # a signal arrived (its handler runs next)
                return
            dispatch = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    dispatch(selectable, fd, event)

        doIteration = doPoll


def install_if_unset() -> Any:
    """Install `GatewayReactor` as the global reactor unless one is installed already;
    return the global reactor's class."""
    if EPollReactor is not None and "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        installReactor(GatewayReactor())
    from twisted.internet import reactor

    return type(reactor)
