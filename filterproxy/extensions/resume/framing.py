"""Resumable event streams: the decisions, with no I/O.

A resumable stream numbers its events: `EventFramer` adds an ``id:`` line to each event
of the upstream's stream as it passes (the last field before the blank line, so that it
is the id a client keeps even when the upstream sent ids of its own; the ``data:`` bytes
are not touched), and turns comment-only blocks (``: ping`` and the like) into comment
lines without a blank line — once an ``id:`` has been seen, a bare blank line makes the
openai-python SDK parse an empty event and fail. `ResumeBuffer` keeps the numbered
events, up to a cap, so that a client can be sent everything after the last event it
saw. `merge_deltas` folds runs of text deltas into fewer events for a client that is
catching up: the text it sees is the same, and each event keeps the id of the last one
it stands for, so a later resume stays exact. A client that cannot see ids (an SDK
yields chunks, not events) resumes with the number of chunks it got; `Folds` keeps
where folding made that count fall behind the events' numbers, so that the count still
names the event it stopped at.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Any, Final

import orjson

from filterproxy.http.sse import DEFAULT_MAX_EVENT_BYTES

__all__ = [
    "EventFramer",
    "Folds",
    "ResumeBuffer",
    "merge_deltas",
    "parse_event_id",
]

_BLANK_LINE: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_TEXT_DELTA: Final = b'"type":"text_delta"'


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


def _data_and_id(event: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(event-name line or b"", data, id) of an event with one data line, else None."""
    lines = event.split(b"\n")
    name = b""
    data = ident = None
    for line in lines:
        if line.startswith(b"data: "):
            if data is not None:
                return None
            data = line[6:]
        elif line.startswith(b"id: "):
            ident = line[4:]
        elif line.startswith(b"event:"):
            name = line
        elif line:
            return None
    if data is None or ident is None:
        return None
    return name, data, ident


def _text_of(data: bytes) -> tuple[str, Any, str] | None:
    """(kind, the event's document, its text) of a mergeable text delta: a chat chunk
    whose only news is content, or a Messages ``text_delta``; else None."""
    if b'"content"' not in data and _TEXT_DELTA not in data:
        return None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    if document.get("type") == "content_block_delta":
        delta = document.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "text_delta" and len(delta) == 2:
            text = delta.get("text")
            if isinstance(text, str):
                return f"messages:{document.get('index')}", document, text
        return None
    choices = document.get("choices")
    if document.get("usage") or not isinstance(choices, list) or len(choices) != 1:
        return None
    choice = choices[0]
    if not isinstance(choice, dict) or choice.get("finish_reason") or choice.get("logprobs"):
        return None
    delta = choice.get("delta")
    if not isinstance(delta, dict) or set(delta) - {"content"}:
        return None
    text = delta.get("content")
    if not isinstance(text, str):
        return None
    return f"chat:{choice.get('index')}:{document.get('id')}", document, text


def _with_text(kind: str, document: Any, text: str) -> bytes:
    if kind.startswith("messages:"):
        document["delta"]["text"] = text
    else:
        document["choices"][0]["delta"]["content"] = text
    return orjson.dumps(document)


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


def merge_deltas(events: list[bytes], folds: Folds | None = None) -> list[bytes]:
    """*events* (numbered, as `EventFramer` made them) with each run of text deltas of
    one choice or block folded into one event — the text joined, the id of the run's
    last event. Anything else is passed as it is, in order. *folds*, when given, is told
    of every event that stands for several (the result is what a client is sent next)."""
    out: list[bytes] = []
    run: list[tuple[bytes, str, Any, str, bytes]] = []  # (name, kind, document, text, id)

    def flush() -> None:
        if len(run) == 1:
            name, kind, document, text, ident = run[0]
            out.append(run_events[0])
        elif run:
            name, kind, document, _, ident = run[0]
            text = "".join(r[3] for r in run)
            merged = _with_text(kind, document, text)
            ident = run[-1][4]
            if folds is not None:
                folds.folded(int(ident.rpartition(b".")[2]), len(run))
            head = name + b"\n" if name else b""
            out.append(head + b"data: " + merged + b"\nid: " + ident + b"\n\n")
        run.clear()
        run_events.clear()

    run_events: list[bytes] = []
    for event in events:
        parts = _data_and_id(event) if not event.endswith(b"\r\n\r\n") else None
        found = _text_of(parts[1]) if parts is not None else None
        if parts is None or found is None:
            flush()
            out.append(event)
            continue
        kind, document, text = found
        if run and (run[0][1] != kind or run[0][0] != parts[0]):
            flush()
        run.append((parts[0], kind, document, text, parts[2]))
        run_events.append(event)
    flush()
    return out
