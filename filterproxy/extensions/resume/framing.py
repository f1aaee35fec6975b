"""Resumable event streams: the decisions, with no I/O.

A resumable stream numbers its events: `EventFramer` adds an ``id:`` line to each event
of the upstream's stream as it passes (the last field before the blank line, so that it
is the id a client keeps even when the upstream sent ids of its own; the ``data:`` bytes
are not touched), and turns comment-only blocks (``: ping`` and the like) into comment
lines without a blank line — once an ``id:`` has been seen, a bare blank line makes the
openai-python SDK parse an empty event and fail. `ResumeBuffer` keeps the numbered
events, up to a cap, so that a client can be sent everything after the last event it
saw. `merge_deltas` folds runs of deltas into fewer events for a client that is
catching up: the text it sees is the same, and each event keeps the id of the last one
it stands for, so a later resume stays exact. A client that cannot see ids (an SDK
yields chunks, not events) resumes with the number of chunks it got; `Folds` keeps
where folding made that count fall behind the events' numbers, so that the count still
names the event it stopped at.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Final

from filterproxy.http.folding import fold_events
from filterproxy.http.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder, SSEEvent

__all__ = [
    "EventFramer",
    "Folds",
    "ResumeBuffer",
    "merge_deltas",
    "parse_event_id",
]

_BLANK_LINE: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def _is_comment_block(block: bytes) -> bool:
    return all(line.startswith(b":") for line in block.splitlines() if line)


def _comment_lines(text: bytes, out: list[bytes]) -> bytes:
    """Pass on the comment lines at the start of *text* (an event's start) at once, and
    the blank line that may end them; what follows them."""
    while text and text[0] == 0x3A:  # ":"
        end = text.find(b"\n")
        if end < 0:
            break
        out.append(text[: end + 1])
        text = text[end + 1 :]
        if text.startswith(b"\n"):
            text = text[1:]
        elif text.startswith(b"\r\n"):
            text = text[2:]
    return text


class EventFramer:
    """Numbers the events of an event stream fed in pieces split anywhere (no I/O).

    `feed` returns the bytes to pass on for what the piece completes: numbered events
    (an event that has not ended yet is held until it has) and comment lines (at once,
    without a blank line). Each numbered event is also kept in `events` until the caller
    takes them (`take`). An event's id is ``<prefix><n>``, n counting from 1.

    An event held past *max_event* bytes stops it: `too_large` is set, what it held is
    dropped, and it frames nothing more (the caller fails the stream).
    """

    __slots__ = (
        "events",
        "max_event",
        "more",
        "more_size",
        "pending",
        "prefix",
        "seq",
        "too_large",
    )

    def __init__(self, prefix: bytes = b"", max_event: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.prefix = prefix
        self.max_event = max_event
        #: The number of the last event numbered.
        self.seq = 0
        self.pending = b""
        #: Later pieces of the pending event that hold no line end (joined once, when
        #: one comes), and their size.
        self.more: list[bytes] = []
        self.more_size = 0
        #: An event passed `max_event` before it ended.
        self.too_large = False
        #: The numbered events since the last `take`, each as passed on.
        self.events: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        """The bytes to pass on for what *data* completes."""
        if self.too_large:
            return b""
        out: list[bytes] = []
        if self.pending:
            if b"\n" not in data and b"\r" not in data:
                # The event goes on (no blank line can end in this piece).
                self.more.append(data)
                self.more_size += len(data)
                self._check(len(self.pending) + self.more_size)
                return b""
            if self.more:
                self.pending = b"".join([self.pending, *self.more])
                self.more = []
                self.more_size = 0
            text = self.pending + data
        else:
            text = _comment_lines(data, out) if data[:1] == b":" else data
        if b"\r" in text:
            self._feed_any(text, out)
            return b"".join(out)
        end = text.rfind(b"\n\n")
        if end < 0:
            self.pending = text
            self._check(len(text))
            return b"".join(out)
        rest = text[end + 2 :]
        for block in text[:end].split(b"\n\n"):
            self._frame(block, b"\n", out)
        self.pending = _comment_lines(rest, out) if rest[:1] == b":" else rest
        self._check(len(self.pending))
        return b"".join(out)

    def drop(self) -> None:
        """The upstream's stream broke off: its unfinished event is dropped (what the
        gateway sends next is an event of its own)."""
        self.pending = b""
        self.more = []
        self.more_size = 0

    def _check(self, held: int) -> None:
        if held > self.max_event:
            self.too_large = True
            self.drop()

    def _feed_any(self, text: bytes, out: list[bytes]) -> None:
        # CR or CRLF line ends (rare): split on any blank line, keep each event's own.
        start = 0
        for match in _BLANK_LINE.finditer(text):
            block = text[start : match.start()]
            start = match.end()
            self._frame(block, match.group()[: len(match.group()) // 2], out)
        rest = text[start:]
        self.pending = _comment_lines(rest, out) if rest[:1] == b":" else rest
        self._check(len(self.pending))

    def _frame(self, block: bytes, newline: bytes, out: list[bytes]) -> None:
        block = block.strip(b"\r\n")  # extra blank lines: nothing to dispatch
        if not block:
            return
        if block[0] == 0x3A and _is_comment_block(block):  # ":" comments only
            out.append(block + newline)
            return
        self.seq += 1
        event = b"%s%sid: %s%d%s%s" % (block, newline, self.prefix, self.seq, newline, newline)
        self.events.append(event)
        out.append(event)

    def take(self) -> list[bytes]:
        """The events numbered since the last call."""
        events, self.events = self.events, []
        return events


#: The events of a stream are kept in pages of about this many bytes: one exact-size
#: object each once full, so that a growing stream does not leave the holes of a
#: reallocated array behind it (a stream's memory stays its bytes plus a few KB).
_PAGE: Final = 2048


class ResumeBuffer:
    """The numbered events of one stream (as `EventFramer` made them, with *prefix*),
    up to *cap* bytes.

    Past the cap the buffer gives up (`overflowed`) and frees what it held: the stream
    is no longer resumable. Memory: the events' bytes, in full pages plus one being
    filled (under 2 KiB), and the objects themselves; where an event starts is found
    from its id when a client resumes, not kept per event.
    """

    __slots__ = ("cap", "count", "current", "overflowed", "pages", "prefix", "size")

    def __init__(self, cap: int, prefix: bytes = b"") -> None:
        self.cap = cap
        self.prefix = prefix
        self.pages: list[bytes] = []
        self.current = bytearray()
        #: The number of the last event kept, and the bytes of all of them.
        self.count = 0
        self.size = 0
        self.overflowed = False

    def append(self, event: bytes) -> bool:
        """Keep the next event; False (and nothing kept from now on) past the cap."""
        if self.overflowed:
            return False
        if self.size + len(event) > self.cap:
            self.drop()
            return False
        self.count += 1
        self.size += len(event)
        current = self.current
        current += event
        if len(current) >= _PAGE:
            self.pages.append(bytes(current))
            self.current = bytearray()
        return True

    def drop(self) -> None:
        """Give up: free the events; the stream is no longer resumable."""
        self.overflowed = True
        self.pages = []
        self.current = bytearray()
        self.size = 0

    def since(self, seq: int) -> list[bytes] | None:
        """The events after event *seq*, or None when they are not all here (the buffer
        gave up, or *seq* is not a number it handed out)."""
        if self.overflowed or seq < 0 or seq > self.count:
            return None
        if seq == self.count:
            return []
        data = b"".join(self.pages) + bytes(self.current)
        events: list[bytes] = []
        start = self._end_of(data, seq, 0) if seq else 0
        for n in range(seq + 1, self.count + 1):
            end = self._end_of(data, n, start)
            events.append(data[start:end])
            start = end
        return events

    def _end_of(self, data: bytes, seq: int, start: int) -> int:
        """Where event *seq* (found after *start*) ends: after its id line and the blank
        line that follows it."""
        marker = b"id: %s%d" % (self.prefix, seq)
        at = start
        while True:
            found = data.index(marker, at)
            at = found + len(marker)
            if found and data[found - 1] not in b"\r\n":
                continue  # not at the start of a line
            newline = data[at : at + 2]  # the id line's end, then the blank line
            if newline == b"\r\n":
                return at + 4 if data[at + 2 : at + 4] == b"\r\n" else at + 3
            if newline[:1] in (b"\n", b"\r"):
                return at + 2
            # a longer number (12 in 123): the next one


def parse_event_id(value: str | None) -> int | None:
    """The event number in a ``Last-Event-ID`` (or ``starting_after``) value: digits, or
    ``<stream id>.<digits>``; None when it is neither."""
    if value is None:
        return None
    text = value.strip().rsplit(".", 1)[-1]
    return int(text) if text.isdigit() and len(text) < 16 else None


# -- catching up -------------------------------------------------------------------------


class Folds:
    """Which event the n-th chunk a client was sent ends with, where folding made the
    two differ (no I/O).

    A client that counts chunks (``starting_after=N``: an SDK yields chunks, not ids)
    is behind the events' numbers by what folding saved it. The gateway made every
    chunk it sent, so it keeps, for each folded chunk only, its place in the count and
    what folding had saved up to it: between two folds chunks and events go one for
    one. A resume by count starts a new run of chunks after the N-th: what was sent
    after it never arrived (or was not counted), so it is forgotten.
    """

    __slots__ = ("chunks", "saved")

    def __init__(self) -> None:
        #: The place in the count of each folded chunk, ascending.
        self.chunks: list[int] = []
        #: How many chunks fewer than events had been sent up to that chunk.
        self.saved: list[int] = []

    def event_of(self, count: int) -> int:
        """The number of the event the *count*-th chunk ended with."""
        at = bisect_right(self.chunks, count)
        return count + self.saved[at - 1] if at else count

    def resumed_at(self, count: int) -> None:
        """A client resumes after its *count*-th chunk: the chunks after it are over."""
        at = bisect_right(self.chunks, count)
        del self.chunks[at:]
        del self.saved[at:]

    def folded(self, last: int, covers: int) -> None:
        """A chunk that stands for *covers* events, the last of them event *last*, is
        sent next."""
        saved = (self.saved[-1] if self.saved else 0) + covers - 1
        self.chunks.append(last - saved)
        self.saved.append(saved)


def _decoded(events: list[bytes]) -> list[SSEEvent]:
    """*events* decoded, one for one: an item that is not one whole event (a framer's
    always are) is kept as bytes to pass on as they are (an event of no data)."""
    whole = b"".join(events)
    # No limit of its own: the framer had its (``max_event_bytes``) when it made them.
    decoded = SSEDecoder(max_event_bytes=len(whole) + 1).feed(whole)
    if len(decoded) == len(events) and all(
        event.raw == raw for event, raw in zip(decoded, events, strict=True)
    ):
        return decoded  # the usual case: decoded in one pass
    decoder = SSEDecoder(max_event_bytes=len(whole) + 1)
    decoded = []
    for raw in events:
        found = decoder.feed(raw)
        if len(found) == 1 and found[0].raw == raw:
            decoded.append(found[0])
        else:
            decoder.close()
            decoded.append(SSEEvent(None, raw=raw))
    return decoded


def merge_deltas(events: list[bytes], folds: Folds | None = None) -> list[bytes]:
    """*events* (numbered, as `EventFramer` made them) with each run of deltas of one
    choice, block or item folded into one event — the text joined, the id of the run's
    last event (`filterproxy.http.folding.fold_events`). Anything else is passed as it
    is, in order. *folds*, when given, is told of every event that stands for several
    (the result is what a client is sent next)."""
    decoded = _decoded(events)
    if folds is None:
        return fold_events(decoded)

    def folded(last_id: str | None, covers: int) -> None:
        last = parse_event_id(last_id)
        if last is not None:
            folds.folded(last, covers)

    return fold_events(decoded, folded)
