"""Identical requests in flight, merged: a `Flight` is one answer being generated, with
the requests waiting on it (`Follower`). No I/O: the cache filter drives it.

The first request with a key leads: it goes upstream, and what the upstream answers
goes to its client and, as it comes, to every follower; a follower that joins late is
sent what came so far first. A follower gets the answer through its own filters (its own
API's shape). The leader's client may leave: the answer goes on while followers wait.
If the leader goes before any answer came (its client left, or its attempt moved to a
fallback cluster), a follower takes its place and goes upstream itself. A failure
reaches every follower as an error — never a clean end.

What a flight keeps for late joiners is bounded by the route's ``max_bytes``: past it,
nobody new joins (they go upstream themselves), and those already there go on live.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Flight", "Flights", "Follower"]


class Follower(Protocol):
    """A request waiting on another's answer."""

    def started(self, status: int, content_type: str, shared: tuple[tuple[str, str], ...]) -> None:
        """The answer's head came (*shared*: the upstream's headers every client of
        it should see, such as an error's ``retry-after``)."""

    def push(self, data: bytes) -> None:
        """A piece of the answer."""

    def ended(self) -> None:
        """The answer is complete."""

    def failed(self, status: int, message: str) -> None:
        """The answer failed: this request fails too (an error, its API's shape)."""

    def lead(self) -> None:
        """The leader went before any answer: go upstream yourself, leading."""


class Flight:
    """One answer in flight, and who waits on it."""

    __slots__ = (
        "content_type",
        "done",
        "flights",
        "id",
        "kept",
        "kept_bytes",
        "leader",
        "lonely",
        "max_bytes",
        "open",
        "shared",
        "status",
        "waiting",
    )

    def __init__(self, flights: Flights, flight_id: str, max_bytes: int) -> None:
        self.flights = flights
        self.id = flight_id
        self.max_bytes = max_bytes
        #: The leader is there (it may have lost its client: the answer goes on).
        self.leader = True
        self.waiting: list[Follower] = []
        #: The answer's head, once it came.
        self.status: int | None = None
        self.content_type = ""
        self.shared: tuple[tuple[str, str], ...] = ()
        #: What came so far, for late joiners, while under max_bytes.
        self.kept: list[bytes] = []
        self.kept_bytes = 0
        #: New followers may join (under the bound, not over).
        self.open = True
        self.done = False
        #: Called when the last follower leaves a leader whose own client has gone
        #: (nobody reads the answer any more: it is stopped).
        self.lonely: Callable[[], None] | None = None

    @property
    def followers(self) -> int:
        return len(self.waiting)

    def join(self, follower: Follower) -> bool:
        """*follower* waits on this answer; False when it cannot (over the bound, or
        over): it goes upstream itself."""
        if not self.open or self.done:
            return False
        self.waiting.append(follower)
        if self.status is not None:
            follower.started(self.status, self.content_type, self.shared)
            if self.kept:
                follower.push(b"".join(self.kept))
        return True

    def leave(self, follower: Follower) -> None:
        """*follower*'s client left."""
        if follower in self.waiting:
            self.waiting.remove(follower)
            if not self.waiting and self.lonely is not None and not self.done:
                self.lonely()

    def head(
        self, status: int, content_type: str, shared: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """The answer's head came."""
        self.status = status
        self.content_type = content_type
        self.shared = shared
        for follower in list(self.waiting):
            follower.started(status, content_type, shared)

    def data(self, piece: bytes) -> None:
        """A piece of the answer came."""
        if not piece:
            return
        if self.open:
            if self.kept_bytes + len(piece) > self.max_bytes:
                self._close()
            else:
                self.kept.append(piece)
                self.kept_bytes += len(piece)
        for follower in list(self.waiting):
            follower.push(piece)

    def end(self) -> None:
        """The answer is complete."""
        waiting = self._finish()
        for follower in waiting:
            follower.ended()

    def fail(self, status: int, message: str) -> None:
        """The answer failed."""
        waiting = self._finish()
        for follower in waiting:
            follower.failed(status, message)

    def leader_gone(self) -> None:
        """The leader went before the answer ended. Before any answer came, the first
        follower leads in its place (and the others wait on it); after, the answer is
        lost: the followers fail."""
        self.leader = False
        if self.done:
            return
        if self.status is not None:
            self.fail(502, "the identical request this one was merged with stopped")
            return
        if not self.waiting:
            self._finish()
            return
        successor = self.waiting.pop(0)
        self.leader = True
        successor.lead()

    def _close(self) -> None:
        """Past the bound: nobody new joins, and what was kept is let go."""
        self.open = False
        self.kept = []
        self.kept_bytes = 0
        self.flights.remove(self)

    def _finish(self) -> list[Follower]:
        self.done = True
        self.open = False
        waiting, self.waiting = self.waiting, []
        self.kept = []
        self.flights.remove(self)
        return waiting


class Flights:
    """The process's answers in flight, by their id (the cache key and the shape)."""

    def __init__(self) -> None:
        self.flights: dict[str, Flight] = {}

    @staticmethod
    def from_resources(resources: object) -> Flights:
        return Flights()

    def find(self, flight_id: str) -> Flight | None:
        return self.flights.get(flight_id)

    def start(self, flight_id: str, max_bytes: int) -> Flight:
        """A new answer in flight, led by the caller."""
        flight = self.flights[flight_id] = Flight(self, flight_id, max_bytes)
        return flight

    def remove(self, flight: Flight) -> None:
        if self.flights.get(flight.id) is flight:
            del self.flights[flight.id]
