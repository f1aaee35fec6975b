"""Server-sent events: an incremental decoder and an encoder (no I/O).

The decoder is fed the bytes of an event stream as they arrive, split anywhere — inside
a UTF-8 character, inside a field name, between the ``\\r`` and ``\\n`` of a line end —
and returns the events each piece completes, following the WHATWG rules: lines end in
CR, LF or CRLF; a line starting with ``:`` is a comment; ``field: value`` loses one space
after the colon; several ``data`` lines join with ``\\n``; a blank line ends the event; a
byte-order mark at the very start is skipped. Each event also keeps the exact bytes it
came in (`SSEEvent.raw`), so a filter can pass on the events it does not change byte for
byte and rewrite only the others.

The decoder holds an event until its blank line arrives, so one event may not grow past
*max_event_bytes* (8 MiB by default; the config's ``max_event_bytes``): past it `feed`
raises `EventTooLarge` — an upstream that never ends a line would otherwise have it
hold everything it sends. An event arriving in many pieces is kept as the pieces, not
copied again with each one.

Example, a filter that upper-cases every event's data::

    decoder = SSEDecoder()
    out = b"".join(
        encode_event(e.data.upper(), event=e.event, id=e.id) if e.data is not None else e.raw
        for e in decoder.feed(piece)
    )
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "EventTooLarge",
    "SSEDecoder",
    "SSEEvent",
    "encode_comment",
    "encode_event",
]

#: The largest event a decoder holds, unless told otherwise (``max_event_bytes``).
DEFAULT_MAX_EVENT_BYTES: Final = 8 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass
class SSEEvent:
    """One event: what its fields said, and its bytes as received (read it; a filter
    that changes an event encodes a new one, `encode_event`).

    An event made only of comment lines (a keep-alive such as ``: ping``) has ``data``
    None; the SSE rules would not dispatch it, a proxy still has to pass it on.
    """

    #: The ``data`` lines joined with ``\\n``; None when the event had no data field.
    data: str | None
    #: The ``event`` field (the type); None when absent (clients take "message").
    event: str | None = None
    #: The ``id`` field; None when absent.
    id: str | None = None
    #: The ``retry`` field in milliseconds, when it is a number.
    retry: int | None = None
    #: The text of its comment lines, without the colon.
    comments: tuple[str, ...] = ()
    #: The event's bytes, its terminating blank line included.
    raw: bytes = b""


class EventTooLarge(ValueError):
    """An event of the stream passed the decoder's limit before it ended.

    The stream cannot be read on (its next event starts who knows where): a reader
    fails the answer. `events` are the ones the same piece completed before it.
    """

    def __init__(self, limit: int, events: list[SSEEvent]) -> None:
        self.limit = limit
        self.events = events
        super().__init__(
            f"the upstream sent an event larger than {limit} bytes (max_event_bytes); "
            "it was not read to its end"
        )


class SSEDecoder:
    """Decodes an event stream fed piece by piece (see the module's description)."""

    __slots__ = (
        "_at_start",
        "_comments",
        "_data",
        "_event",
        "_id",
        "_more",
        "_more_size",
        "_pending",
        "_raw",
        "_retry",
        "_size",
        "max_event_bytes",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        #: The most bytes one event may have (its lines and line ends).
        self.max_event_bytes = max_event_bytes
        #: Bytes of a line not yet ended.
        self._pending = b""
        #: Later pieces of that line, none of them holding a line end (kept as they
        #: came: joined once, when the line ends).
        self._more: list[bytes] = []
        self._more_size = 0
        #: Bytes of the current event's complete lines, and how many.
        self._raw: list[bytes] = []
        self._size = 0
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._comments: list[str] = []
        self._at_start = True

    @property
    def between_events(self) -> bool:
        """Whether everything fed so far made whole events (nothing is pending)."""
        return not self._pending and not self._raw

    @property
    def pending(self) -> bytes:
        """What has been fed and belongs to no complete event yet."""
        return b"".join([*self._raw, self._pending, *self._more])

    def feed(self, data: bytes) -> list[SSEEvent]:
        """The events completed by *data*, the next piece of the stream.

        Raises:
            EventTooLarge: an event passed `max_event_bytes` (the events completed
                before it are in the exception).
        """
        if not data:
            return []
        pending = self._pending
        if (
            pending
            and pending[-1] != 0x0D  # a CR: the LF that may follow is not in a new line
            and b"\n" not in data
            and b"\r" not in data
        ):
            # The line goes on: keep the piece, and count what the event holds now.
            self._more.append(data)
            self._more_size += len(data)
            if self._size + len(pending) + self._more_size > self.max_event_bytes:
                raise EventTooLarge(self.max_event_bytes, [])
            return []
        if (
            not pending
            and not self._raw
            and data.endswith(b"\n\n")
            and b"\r" not in data
            and not (self._at_start and data.startswith(_BOM[:1]))
            and len(data) <= self.max_event_bytes
        ):
            whole = _whole_events(data)
            if whole is not None:
                self._at_start = False
                return whole
        if self._more:
            pending = b"".join([pending, *self._more])
            self._more = []
            self._more_size = 0
        buffer = pending + data if pending else data
        if self._at_start:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._pending = buffer
                return []
            self._at_start = False
            if buffer.startswith(_BOM):
                self._raw.append(_BOM)
                self._size += len(_BOM)
                buffer = buffer[len(_BOM) :]
        events: list[SSEEvent] = []
        start = 0
        size = len(buffer)
        limit = self.max_event_bytes
        while start < size:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, after = lf, lf + 1
            elif cr + 1 < size:
                end, after = cr, cr + 2 if buffer[cr + 1] == 0x0A else cr + 1
            else:
                break  # a CR at the end of the piece: its LF may come next
            if self._size + after - start > limit:
                raise EventTooLarge(limit, events)
            self._line(buffer[start:end], buffer[start:after], events)
            start = after
        self._pending = buffer[start:]
        if self._size + size - start > limit:
            raise EventTooLarge(limit, events)
        return events

    def close(self) -> bytes:
        """The stream ended: what was left of an event that never ended (the SSE rules
        drop it; a proxy may want to pass it on)."""
        rest = self.pending
        self._pending = b""
        self._more = []
        self._more_size = 0
        self._raw = []
        self._size = 0
        self._data = []
        self._event = self._id = None
        self._retry = None
        self._comments = []
        self._at_start = True
        return rest

    def _line(self, line: bytes, raw: bytes, events: list[SSEEvent]) -> None:
        self._raw.append(raw)
        self._size += len(raw)
        if not line:
            events.append(self._dispatch())
            return
        text = line.decode("utf-8", "replace")
        if text[0] == ":":
            self._comments.append(text[1:].removeprefix(" "))
            return
        name, colon, value = text.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)

    def _dispatch(self) -> SSEEvent:
        event = SSEEvent(
            data="\n".join(self._data) if self._data else None,
            event=self._event,
            id=self._id,
            retry=self._retry,
            comments=tuple(self._comments),
            raw=b"".join(self._raw),
        )
        self._raw = []
        self._size = 0
        self._data = []
        self._event = self._id = None
        self._retry = None
        self._comments = []
        return event


def _whole_events(data: bytes) -> list[SSEEvent] | None:
    """The events of a piece made only of whole events of the usual shape — a ``data``
    line, after an ``event`` line or not, before an ``id`` line or not (a resumable
    stream's numbered events), then a blank line; LF line ends — or None for the
    line-by-line decoder. (Most pieces of a provider's stream are: this is the per-chunk
    path of filters that decode events.)"""
    events = []
    for block in data[:-2].split(b"\n\n"):
        name: str | None = None
        if block.startswith(b"event: "):
            head, newline, rest = block.partition(b"\n")
            if not newline:
                return None
            name = head[7:].decode("utf-8", "replace")
        else:
            rest = block
        if not rest.startswith(b"data: "):
            return None
        ident: str | None = None
        line, newline, tail = rest.partition(b"\n")
        if newline:
            if not tail.startswith(b"id: ") or b"\n" in tail or b"\0" in tail:
                return None
            ident = tail[4:].decode("utf-8", "replace")
        events.append(
            SSEEvent(line[6:].decode("utf-8", "replace"), event=name, id=ident, raw=block + b"\n\n")
        )
    return events


def _field(name: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"an SSE {name} cannot contain a line break: {value[:40]!r}")
    return f"{name}: {value}\n"


def encode_event(
    data: str | None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """One event, ended by its blank line: ``event``, ``id`` and ``retry`` first (when
    given), then one ``data`` line per line of *data* (any line ends in it)."""
    parts = []
    if event is not None:
        parts.append(_field("event", event))
    if id is not None:
        parts.append(_field("id", id))
    if retry is not None:
        parts.append(f"retry: {int(retry)}\n")
    if data is not None:
        parts.extend(f"data: {line}\n" for line in _LINE_END.split(data))
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """A comment event (``: text``), as keep-alives are sent."""
    return b"".join(f": {line}\n".encode() for line in text.split("\n")) + b"\n"
