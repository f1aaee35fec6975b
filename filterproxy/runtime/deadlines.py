"""Coarse timeouts for the request path: one periodic check instead of a timer per event.

Every request used to arm and cancel about six `callLater` timers (the client
connection's header, body and keep-alive limits, the router's first-byte and idle
limits, the pool's idle-connection limit) — each a `DelayedCall` object, a heap push and a
later heap clean-up, for timeouts that almost never fire. Here an owner sets a deadline
with a dictionary assignment, and one `LoopingCall` per reactor looks for expired ones
`RESOLUTION` times a second: a timeout fires up to 1/4 s late, which is nothing next to
limits counted in seconds. Precise delays (retry back-off, lingering close) still use
`callLater`.

A limit reset by frequent events (the router's idle limit, by every chunk) need not even be
set again each time: the owner notes the event's time on the coarse clock `Deadlines.now`
(an attribute read, where ``set`` reads the clock, builds a tuple and writes the dictionary)
and, when the deadline expires, sets it again for what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["RESOLUTION", "Deadlines", "deadlines_for"]

log = Logger(namespace="filterproxy.deadlines")

#: Seconds between two checks.
RESOLUTION = 0.25


class Deadlines:
    """Deadlines keyed by their owner (one per owner: setting again replaces it)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.entries: dict[object, tuple[float, Callable[[], None]]] = {}
        self.loop: LoopingCall | None = None
        #: The reactor's time at the last check or `set`: a clock that lags by at most
        #: `RESOLUTION` while the reactor runs, for owners that note the time of every
        #: event (a chunk) and cannot afford to read the clock each time.
        self.now: float = reactor.seconds()

    def set(self, owner: object, seconds: float, action: Callable[[], None]) -> None:
        """Call *action* once *seconds* have passed, unless *owner* clears or sets again."""
        now = self.now = self.reactor.seconds()
        self.entries[owner] = (now + seconds, action)
        if self.loop is None:
            self.loop = LoopingCall(self.check)
            self.loop.clock = self.reactor
            self.loop.start(RESOLUTION, now=False)

    def clear(self, owner: object) -> None:
        self.entries.pop(owner, None)

    def check(self) -> None:
        """Run the actions whose deadline has passed."""
        now = self.now = self.reactor.seconds()
        expired = [owner for owner, (deadline, _) in self.entries.items() if deadline <= now]
        for owner in expired:
            entry = self.entries.get(owner)  # an action run before may have changed it
            if entry is None or entry[0] > now:
                continue
            del self.entries[owner]
            try:
                entry[1]()
            except Exception:
                log.failure("a timeout action failed")


_by_reactor: WeakKeyDictionary[Any, Deadlines] = WeakKeyDictionary()


def deadlines_for(reactor: Any) -> Deadlines:
    """The process's `Deadlines` on *reactor* (one per reactor, so tests' clocks get their
    own)."""
    deadlines = _by_reactor.get(reactor)
    if deadlines is None:
        deadlines = _by_reactor[reactor] = Deadlines(reactor)
    return deadlines
