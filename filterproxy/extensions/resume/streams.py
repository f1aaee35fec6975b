"""Resumable streams, their registry and budget, and the read decision.

A `ResumableStream` is one event stream that outlives its client: its events (kept
in a `ResumeBuffer`), the reader its live tail goes to, and its two timers — the grace
period after its last reader left, and how long it is kept after its end. Timers come
from the registry's clock (the gateway's reactor, or a test's
``twisted.internet.task.Clock``). The stream talks to the request that started it
only through the `Origin` calls, and to its readers through `Reader`.

`decide_read` is what a request to read (or stop) a stream gets — the same for a
reader on this worker and for one that another worker passes on over the relay.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from filterproxy.extensions.resume.framing import (
    EventFramer,
    Folds,
    ResumeBuffer,
    merge_deltas,
    parse_event_id,
)

if TYPE_CHECKING:
    from filterproxy.extensions.resume.config import ResumeConfig
    from filterproxy.filters.resources import Resources

__all__ = [
    "BufferBudget",
    "Origin",
    "ReadDecision",
    "ReadOutcome",
    "Reader",
    "ResumableStream",
    "StreamRegistry",
    "affinity_key",
    "decide_read",
]

log = Logger(namespace="filterproxy.resume")
NO_LONGER: Final = b": this stream is no longer resumable: its buffer is full\n"
#: What may end a stream id: letters, digits and dashes (a UUID, a hex digest), so the
#: id stays a token in a URL path, a header and an ``id:`` line.
_AFFINITY_KEY: Final = re.compile(r"[0-9A-Za-z-]{1,64}")


def affinity_key(value: str | None) -> str | None:
    """The affinity header's *value* (``resume_affinity_header``) if it can end a stream
    id, else None (the id is made without it)."""
    if value is None or _AFFINITY_KEY.fullmatch(value) is None:
        return None
    return value


class Reader(Protocol):
    """Who a resumed stream's live tail goes to."""

    def push(self, data: bytes) -> None: ...

    def finish(self, complete: bool) -> None: ...

    def taken_over(self) -> None: ...


class Origin(Protocol):
    """The request that started a stream, as the stream sees it."""

    def abandon(self) -> None:
        """Stop the upstream now (nobody can read the rest, or the stream is stopped)."""

    def expire(self) -> None:
        """Nobody came back within the grace period: stop the upstream."""

    def taken_over(self) -> None:
        """A reader took over: close the origin's client, let the upstream go on."""


class BufferBudget:
    """What the resumable streams of a process hold together, against one cap (the
    config's ``resume_buffers``): a stream that would pass it stops being resumable."""

    __slots__ = ("cap", "held")

    def __init__(self, cap: int = 256 * 1024 * 1024) -> None:
        self.cap = cap
        self.held = 0

    def take(self, size: int) -> bool:
        """Count *size* more bytes held; False (nothing counted) past the cap."""
        if self.held + size > self.cap:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


class ResumableStream:
    """One resumable event stream: its events, its reader, its timers."""

    __slots__ = (
        "body_hash",
        "buffer",
        "config",
        "content_type",
        "done",
        "folds",
        "framer",
        "id",
        "origin",
        "origin_attached",
        "owner",
        "reader",
        "registry",
        "route",
        "timer",
    )

    def __init__(
        self,
        registry: StreamRegistry,
        stream_id: str,
        owner: str,
        body_hash: bytes,
        config: ResumeConfig,
        route: str,
        content_type: str,
    ) -> None:
        self.registry = registry
        self.id = stream_id
        self.owner = owner
        self.body_hash = body_hash
        self.config = config
        self.route = route
        self.content_type = content_type
        self.framer = EventFramer(stream_id.encode() + b".")
        self.buffer = ResumeBuffer(config.buffer, self.framer.prefix)
        #: Where the chunks a client counts fell behind the events' numbers (made at
        #: the first fold: most streams never fold).
        self.folds: Folds | None = None
        #: The request that started it, while it runs.
        self.origin: Origin | None = None
        #: The origin's client is connected (it is the reader then).
        self.origin_attached = True
        #: A resumed reader (another request's, or another worker's relay), if any.
        self.reader: Reader | None = None
        #: The upstream's response has ended (completely, or not).
        self.done = False
        #: The grace or keep timer (an `IDelayedCall`), when one is set.
        self.timer: Any = None

    @property
    def resumable(self) -> bool:
        return not self.buffer.overflowed

    def folded(self, last_id: str | None, covers: int) -> None:
        """The delivery filter sent a chunk standing for *covers* of the chunks it was
        given, the last of them the event *last_id* (`EventFolds`): a client counting
        chunks is that much further behind the events' numbers."""
        number = parse_event_id(last_id)
        if number is None or covers < 2:
            return
        folds = self.folds
        if folds is None:
            folds = self.folds = Folds()
        folds.folded(number, covers)

    def caught_up(self, decision: ReadDecision) -> list[bytes]:
        """What a reader the *decision* replays to is sent first: its events with text
        deltas folded. A reader that counts chunks starts a new run of them here (the
        stream's `Folds` keep it, for its next count)."""
        if not decision.counted:
            return merge_deltas(list(decision.events))
        folds = self.folds
        if folds is None:
            folds = self.folds = Folds()
        folds.resumed_at(decision.after)
        return merge_deltas(list(decision.events), folds)

    def keep(self, events: list[bytes]) -> None:
        """The events the origin just passed on (the framer's)."""
        buffer = self.buffer
        if buffer.overflowed:
            return
        size = sum(len(e) for e in events)
        if buffer.size + size > buffer.cap or not self.registry.budget.take(size):
            self.give_up()
            return
        for event in events:
            buffer.append(event)

    def give_up(self) -> None:
        """Past a cap: free the events; the stream goes on, not resumable any more."""
        self.registry.budget.give(self.buffer.size)
        self.buffer.drop()
        log.info(
            "stream {id} is no longer resumable: its buffer passed a cap (resume.buffer "
            "or resume_buffers)",
            id=self.id,
        )
        if self.reader is not None:
            self.reader.push(NO_LONGER)

    # -- the origin's side -----------------------------------------------------------

    def client_gone(self) -> None:
        """The origin's client left (or was taken over): the grace period starts,
        unless a reader is already there."""
        self.origin_attached = False
        if self.reader is None:
            self._start_grace()

    def _start_grace(self) -> None:
        if self.done or not self.resumable:
            if not self.resumable and not self.done and self.origin is not None:
                self.origin.abandon()  # nobody can ever read the rest
            return
        self._cancel_timer()
        self.timer = self.registry.clock.callLater(self.config.grace, self._grace_expired)

    def _grace_expired(self) -> None:
        self.timer = None
        origin = self.origin
        if origin is not None and not self.done:
            log.info(
                "stream {id}: no client came back within {grace:g}s (resume.grace); "
                "the upstream is stopped",
                id=self.id,
                grace=self.config.grace,
            )
            origin.expire()
        self.registry.evict(self.id)

    def ended(self, complete: bool) -> None:
        """The origin request is over."""
        self.origin = None
        if self.done:
            return
        self.done = True
        reader = self.reader
        if reader is not None:
            reader.finish(complete)
        self._cancel_timer()
        if self.id in self.registry.streams:
            self.timer = self.registry.clock.callLater(
                self.config.keep, self.registry.evict, self.id
            )

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # -- readers ---------------------------------------------------------------------

    def attach(self, reader: Reader) -> None:
        """*reader* takes over: the reader before it, or the origin's own client, is
        closed."""
        old, self.reader = self.reader, reader
        self._cancel_timer()
        if old is not None and old is not reader:
            old.taken_over()
        origin = self.origin
        if self.origin_attached and origin is not None:
            self.origin_attached = False
            origin.taken_over()

    def detach(self, reader: Reader) -> None:
        """*reader*'s client left."""
        if self.reader is not reader:
            return
        self.reader = None
        if not self.done:
            self._start_grace()

    def cancel(self) -> None:
        """Stop it now (``DELETE``)."""
        origin, reader = self.origin, self.reader
        self.reader = None
        if reader is not None:
            reader.taken_over()
        if origin is not None:
            origin.abandon()
        self.registry.evict(self.id)


class StreamRegistry:
    """The process's resumable streams, by id, and the budget their buffers share.

    One per process (`from_resources`), whatever the reloads. A worker of several
    (``--workers``) puts the port of its relay listener
    (`filterproxy.extensions.resume.relay`) in its streams' ids, signed with the
    supervisor's secret, so that a resume that reaches another worker is passed to
    this one.

    An id is ``fps_<nonce>``, or ``fps_<relay port>_<nonce>_<signature>`` with workers,
    then — with ``resume_affinity_header`` — ``-<key>``: the key a load balancer hashed
    the first request on, so that it can hash every resume onto the same replica. The
    part before the first dash has none, so the key is whatever follows it.
    """

    def __init__(
        self, clock: IReactorTime | None = None, resources: Resources | None = None
    ) -> None:
        #: Where the streams' grace and keep timers come from: *clock*, else the
        #: clock of *resources*, looked up at the first timer (a chain is built
        #: before ``twistd`` installs the reactor).
        self._clock = clock
        self.resources = resources
        self.streams: dict[str, ResumableStream] = {}
        #: What the streams' buffers hold together, against ``resume_buffers``.
        self.budget = BufferBudget()
        #: This worker's relay port, and the secret its ids are signed with (workers).
        self.relay_port = 0
        self.secret = b""

    @staticmethod
    def from_resources(resources: Resources) -> StreamRegistry:
        """The registry for a process (`Resources.get`): timers on its clock."""
        return StreamRegistry(resources=resources)

    @property
    def clock(self) -> IReactorTime:
        clock = self._clock
        if clock is None:
            if self.resources is None:
                raise RuntimeError("a StreamRegistry needs a clock or the process's resources")
            clock = self._clock = self.resources.clock
        return clock

    def serve_relay(self, port: int, secret: bytes) -> None:
        self.relay_port = port
        self.secret = secret

    def _mac(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()[:16]

    def new_id(self, affinity: str | None = None) -> str:
        """A new stream's id; ending with ``-<affinity>`` when given (a key from
        `affinity_key`: routing information for the balancer in front, not a secret)."""
        nonce = secrets.token_hex(12)
        if not self.relay_port:
            made = "fps_" + nonce
        else:
            place = f"{self.relay_port:x}_{nonce}"
            made = f"fps_{place}_{self._mac(place)}"
        return made if affinity is None else f"{made}-{affinity}"

    def elsewhere(self, stream_id: str) -> int | None:
        """The relay port of the worker whose stream *stream_id* is, when it is another
        worker's (and the id is signed by this gateway's supervisor); else None."""
        if not self.relay_port:
            return None
        parts = stream_id.partition("-")[0].split("_")  # without a balancer's key
        if len(parts) != 4 or parts[0] != "fps":
            return None
        place = f"{parts[1]}_{parts[2]}"
        if not hmac.compare_digest(parts[3], self._mac(place)):
            return None
        try:
            port = int(parts[1], 16)
        except ValueError:
            return None
        return port if port != self.relay_port and 0 < port < 65536 else None

    def sign(self, *parts: str) -> str:
        """A signature of *parts* (a relayed request's), with the supervisor's secret."""
        return self._mac("|".join(parts))

    def add(self, stream: ResumableStream) -> None:
        self.streams[stream.id] = stream

    def get(self, stream_id: str) -> ResumableStream | None:
        return self.streams.get(stream_id)

    def evict(self, stream_id: str) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        stream._cancel_timer()
        if not stream.buffer.overflowed:
            self.budget.give(stream.buffer.size)
            stream.buffer.drop()

    def close(self) -> None:
        """The process stops: no stream's timer fires any more."""
        for stream_id in list(self.streams):
            self.evict(stream_id)


class ReadOutcome(enum.Enum):
    """What a request to read or stop a stream gets (`decide_read`). The values are
    what the relay carries between workers."""

    #: Nobody's stream by that id (DELETE): 404.
    NOT_FOUND = "not_found"
    #: A DELETE of the requester's stream: it is stopped.
    CANCEL = "cancel"
    #: Not held (never was, evicted, another's, or the position is gone): 410.
    GONE = "gone"
    #: A re-sent request whose body is not the one that started the stream: 409.
    MISMATCH = "mismatch"
    #: The stream ended and the reader saw all of it: 204.
    ENDED = "ended"
    #: Send the events the reader missed, then the live tail (attach).
    REPLAY = "replay"


@dataclass(frozen=True)
class ReadDecision:
    """The outcome of a read, with the events a `ReadOutcome.REPLAY` (or an
    ``ENDED``) sends first, as kept (`ResumableStream.caught_up` folds them)."""

    outcome: ReadOutcome
    #: The position the reader gave: an event's number, or a count of chunks.
    after: int = 0
    counted: bool = False
    events: tuple[bytes, ...] = ()


def decide_read(
    stream: ResumableStream | None,
    *,
    method: str,
    owner: str,
    after: int,
    counted: bool,
    body_hash: bytes | None = None,
) -> ReadDecision:
    """What a ``GET`` (or re-sent ``POST``, with its *body_hash*) or ``DELETE`` of
    *stream* gets, for a requester whose streams are *owner*'s. *after* is the last
    event the reader saw, or with *counted* the number of chunks it was given (an
    SDK yields chunks, not ids: taken to the event the *after*-th chunk ended with,
    `Folds`). No I/O and no change: the caller acts on it."""
    if stream is not None and stream.owner != owner:
        stream = None  # nobody reads another's stream: it does not exist for them
    if method == "DELETE":
        outcome = ReadOutcome.CANCEL if stream is not None else ReadOutcome.NOT_FOUND
        return ReadDecision(outcome, after, counted)
    if stream is None:
        return ReadDecision(ReadOutcome.GONE, after, counted)
    if body_hash is not None and stream.body_hash != body_hash:
        return ReadDecision(ReadOutcome.MISMATCH, after, counted)
    folds = stream.folds
    start = folds.event_of(after) if counted and folds is not None else after
    events = stream.buffer.since(start)
    if events is None:
        return ReadDecision(ReadOutcome.GONE, after, counted)
    if stream.done and not events:
        return ReadDecision(ReadOutcome.ENDED, after, counted)
    return ReadDecision(ReadOutcome.REPLAY, after, counted, tuple(events))
