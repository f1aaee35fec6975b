"""The HTTP/2 frames the gateway handles itself on its busiest paths — a response's
HEADERS and DATA written, plain DATA frames and a new request's HEADERS read — and the
rules a request's header list is held to.

The `h2` library stays the protocol engine (it parses every other frame a peer sends, keeps
every stream's state and both sides' flow-control windows, and writes every other frame).
What it does per frame sent — a frame object, its flag set, HPACK's table search and
Huffman coding of values that are new in every response (request ids, lengths), the
validation of headers the gateway built itself — is most of what an HTTP/2 response costs.
The stream (`filterproxy.downstream.h2`) moves h2's state machine and windows exactly as
h2's own ``send_headers``/``send_data`` would, and writes these bytes instead.

Header blocks are encoded without touching the HPACK dynamic table (RFC 7541 6.2.2,
"literal header field without indexing"; never indexed for credentials, 6.2.3): the
client's decoder table stays exactly as h2's encoder believes it is, so blocks from both
can follow each other on one connection. Names and pairs of the static table are indexed.
Strings are sent as they are, not Huffman-coded: a few bytes more per response, no table
walk per byte.

A request's header list, as h2 decodes it, is checked here rather than by h2's chain of
generators (`request_fields`): the same rules (RFC 9113 8.2 and 8.3.1, as h2 applies
them), one pass, and what is wrong said in words a 400 can carry.

Received, the busiest frame is DATA: every chunk an HTTP/2 upstream streams
(`filterproxy.upstream.h2`), and a request's body (`filterproxy.downstream.h2`). h2 spends
about 14 µs on each (a frame object, two state machines, an event, the window bookkeeping of
its acknowledgement). `read_data_frame` reads the plain ones — whole, unpadded, on a stream
that is open for them, within every window, length and content-length — and moves h2's
windows, content-length count and stream state exactly as h2's ``receive_data`` would;
any other frame is handed to h2 alone (`first_frame` says where it ends), and reading goes
on after it. `acknowledge` hands the received bytes back as h2's
``acknowledge_received_data`` does.

A request starts with a HEADERS frame, and h2 spent about 60 µs of a request's 150 (in
process) on one: the frame buffer and a frame object, HPACK's Python decoder, a count of
its open streams that walks every stream it holds, events. `read_request_head` reads the
plain ones (a whole block, a new client stream within the stream limit), its block decoded
by `filterproxy.http.hpackread` against h2's own HPACK table, and opens the stream in h2
as h2 opens it; `forget_closed_stream` drops a closed stream from h2 as its count would
have.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from typing import Any, Final

from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState
from h2.stream import StreamClosedBy, StreamInputs, StreamState
from hpack.table import HeaderTable

from filterproxy.http.hpackread import decode_block

__all__ = [
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "HEADERS",
    "acknowledge",
    "end_sent",
    "first_frame",
    "forget_closed_stream",
    "frame_head",
    "header_block",
    "read_data_frame",
    "read_request_head",
    "request_fields",
    "response_headers_sent",
    "trailer_problem",
]

#: Frame types and flags (RFC 9113 6.1, 6.2).
DATA: Final = 0x0
HEADERS: Final = 0x1
END_STREAM: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY: Final = 0x20
WINDOW_UPDATE: Final = 0x8

_FRAME_HEAD: Final = struct.Struct(">BHBBL")


def _static_indexes() -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Where each (name, value) pair and each name first appears in the static table
    (RFC 7541 Appendix A, 1-based), from hpack's copy of it."""
    pairs: dict[tuple[str, str], int] = {}
    names: dict[str, int] = {}
    for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
        pairs.setdefault((name.decode(), value.decode()), index)
        names.setdefault(name.decode(), index)
    return pairs, names


_STATIC_PAIRS, _STATIC_NAMES = _static_indexes()
#: Fields kept out of every compression context, as h2 keeps them (RFC 7541 7.1.3).
_NEVER_INDEXED: Final = frozenset({"authorization", "proxy-authorization"})
#: Fields whose HTTP/2 form h2 rewrites (cookie crumbs) or refuses: left to h2.
_LEFT_TO_H2: Final = frozenset({"cookie", "te"})
#: Characters no HTTP/2 field may carry (RFC 9113 8.2.1).
_FORBIDDEN: Final = ("\r", "\n", "\0")


def frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    """The 9-byte header of a frame of *length* payload bytes (RFC 9113 4.1)."""
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """*value* as an HPACK integer with an N-bit prefix after the bits of *first*
    (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(raw: bytes) -> bytes:
    return _integer(len(raw), 7, 0x00) + raw


def _plain(text: str) -> bool:
    """Whether *text* can go as an HTTP/2 field value as it is."""
    for bad in _FORBIDDEN:
        if bad in text:
            return False
    return not text or (text[0] not in " \t" and text[-1] not in " \t")


def _name_part(name: str) -> bytes | None:
    """How a field named *name* starts in a block when its value is a literal (the name
    indexed or literal; never indexed for credentials), or None when this encoder leaves
    the name to h2 (see `header_block`)."""
    if (
        not name
        or name in _LEFT_TO_H2
        or name != name.lower()
        or not (name.isascii() and name.isprintable())
        or " " in name
        or ":" in name[1:]
        or (name[0] == ":" and name != ":status")  # the only pseudo-header of a response
    ):
        return None  # RFC 9113 8.2.1 / 8.3.2, or h2's to normalise
    first = 0x10 if name in _NEVER_INDEXED else 0x00
    index = _STATIC_NAMES.get(name)
    if index is not None:
        return _integer(index, 4, first)
    return bytes((first,)) + _string(name.encode())


#: Names found with a value in a static pair (RFC 7541 Appendix A), besides empty values.
_PAIRED_NAMES: Final = frozenset(name for name, value in _STATIC_PAIRS if value)
#: Names a connection remembers the encoding of (`header_block`'s *names*), and the
#: longest: at most about 10 KB a connection.
NAMES_KEPT: Final = 64
_NAME_KEPT: Final = 64


def header_block(fields: list[tuple[str, str]], names: dict[str, bytes]) -> bytes | None:
    """The HPACK block of a response's *fields* (``:status`` first, names in lower case),
    or None when a field is one this encoder leaves to h2 (cookies, ``te``, characters
    HTTP/2 forbids, surrounding whitespace h2 would strip, names not in lower case): h2
    then encodes, normalises or refuses the block as it always has.

    *names* is the connection's memory of how each name it has sent starts a field
    (`NAMES_KEPT` of them at most, short ones only): a response's names repeat, and are
    checked and encoded once."""
    parts: list[bytes] = []
    for name, value in fields:
        if not _plain(value):
            return None  # RFC 9113 8.2.1, or h2's to strip
        part = names.get(name)
        if part is None:
            part = _name_part(name)
            if part is None:
                return None
            if len(names) < NAMES_KEPT and len(name) <= _NAME_KEPT:
                names[name] = part
        if not value or name in _PAIRED_NAMES:
            pair = _STATIC_PAIRS.get((name, value))
            if pair is not None:
                parts.append(_integer(pair, 7, 0x80))
                continue
        parts.append(part)
        try:
            parts.append(_string(value.encode("latin-1")))  # as requests are decoded
        except UnicodeEncodeError:
            return None
    return b"".join(parts)


#: A field name: no controls, spaces, upper case, non-ASCII or colons (RFC 9113 8.2.1);
#: a pseudo-header's leading colon is taken off before the match.
_NAME: Final = re.compile(rb"[\x21-\x39\x3b-\x40\x5b-\x7e]+")
_BAD_VALUE: Final = re.compile(rb"[\0\r\n]|^[ \t]|[ \t]$")
#: Fields that belong to one HTTP/1.1 connection (RFC 9113 8.2.2).
_CONNECTION: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path"})


def _field_problem(name: bytes, value: bytes) -> str | None:
    if not name:
        return "a header field with an empty name"
    if not _NAME.fullmatch(name, 1 if name[0] == 0x3A else 0):
        return f"header name {name[:40]!r} is not lower-case token characters (RFC 9113 8.2.1)"
    if value and _BAD_VALUE.search(value):
        return (
            f"the value of {name[:40].decode('latin-1')!r} has CR, LF or NUL, or starts or ends "
            "with whitespace (RFC 9113 8.2.1)"
        )
    if name in _CONNECTION:
        return f"{name.decode('latin-1')!r} is a connection-specific field, not allowed in HTTP/2"
    if name == b"te" and value.lower() != b"trailers":
        return "te may only be 'trailers' in HTTP/2"
    return None


#: Fields a connection remembers as checked (`request_fields`'s *checked*), and the
#: longest (name and value together): at most about 20 KB a connection.
FIELDS_KEPT: Final = 32
_FIELD_KEPT: Final = 128


def request_fields(
    raw: Iterable[tuple[bytes, bytes]], checked: dict[tuple[bytes, bytes], tuple[str, str]]
) -> list[tuple[str, str]] | str:
    """A request's header list as its HEADERS carried it (names and values as bytes),
    checked as h2 checks one and decoded as latin-1, as HTTP/1.1 requests are — or what
    makes it malformed (RFC 9113 8.1.1: the request is refused, the stream reset).

    Pseudo-header fields come first, once each, only those of a request; ``:method``,
    and but for CONNECT ``:scheme`` and a non-empty ``:path``, are required; ``:authority``
    or ``host`` is required and they agree; cookie crumbs are joined into one field, last
    (RFC 9113 8.2.3).

    *checked* is the connection's memory of fields it has checked and decoded
    (`FIELDS_KEPT` of them at most, short ones only): a client sends most of its fields
    again with every request."""
    fields: list[tuple[str, str]] = []
    cookies: list[bytes] = []
    pseudo: set[bytes] = set()
    regular = False
    method = path = authority = host = None
    for field in raw:
        name, value = field
        known = checked.get(field)
        if known is None:
            problem = _field_problem(name, value)
            if problem is not None:
                return problem
        if name[0] == 0x3A:
            if regular:
                return f"pseudo-header {name.decode('latin-1')} after a regular field"
            if name in pseudo:
                return f"pseudo-header {name.decode('latin-1')} twice"
            if name not in _REQUEST_PSEUDO:
                return f"pseudo-header {name[:40].decode('latin-1')} is not one of a request's"
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
        else:
            regular = True
            if name == b"cookie":
                cookies.append(value)
                continue
            if name == b"host":
                if host is not None:
                    return "more than one host field"
                host = value
        if known is None:
            known = (name.decode("latin-1"), value.decode("latin-1"))
            if len(checked) < FIELDS_KEPT and len(name) + len(value) <= _FIELD_KEPT:
                checked[field] = known
        fields.append(known)
    if method is None:
        return "a request needs :method"
    if method != b"CONNECT":
        if b":scheme" not in pseudo or path is None:
            return "a request needs :scheme and :path"
        if not path:
            return "an empty :path"
    elif b":scheme" in pseudo or path is not None:
        return "CONNECT takes neither :scheme nor :path"
    if authority is None and host is None:
        return "a request needs :authority or host"
    if authority is not None and host is not None and authority != host:
        return ":authority and host disagree"
    if cookies:
        cookie = b"; ".join(cookies)
        if _BAD_VALUE.search(cookie):  # an empty last crumb leaves "; " at the end
            return "the cookie fields joined end with whitespace (an empty cookie field)"
        fields.append(("cookie", cookie.decode("latin-1")))
    return fields


def trailer_problem(raw: Iterable[tuple[bytes, bytes]]) -> str | None:
    """What makes a request's trailer block malformed (pseudo-headers, or a field a
    header block could not carry either), or None."""
    for name, value in raw:
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
        if name[0] == 0x3A:
            return f"pseudo-header {name[:40].decode('latin-1')} in trailers"
    return None


# -- a stream's state machine, moved as h2's process_input moves it --------------------------
#
# h2's H2StreamStateMachine.process_input looks a transition up by (state, input) — enum
# hashes in Python — and runs a function that makes an event; for the four moves every
# request makes, the same assignments are made here directly (anything else goes through
# process_input).

_IDLE_STREAM: Final = StreamState.IDLE
_OPEN: Final = StreamState.OPEN
_HALF_CLOSED_LOCAL: Final = StreamState.HALF_CLOSED_LOCAL
_HALF_CLOSED_REMOTE: Final = StreamState.HALF_CLOSED_REMOTE
_STREAM_CLOSED: Final = StreamState.CLOSED
_BY_SEND_END: Final = StreamClosedBy.SEND_END_STREAM
_BY_RECV_END: Final = StreamClosedBy.RECV_END_STREAM
_SEND_HEADERS: Final = StreamInputs.SEND_HEADERS
_SEND_END_STREAM: Final = StreamInputs.SEND_END_STREAM
_RECV_END_STREAM: Final = StreamInputs.RECV_END_STREAM
_STREAM_RECV_HEADERS: Final = StreamInputs.RECV_HEADERS


def _request_opened(machine: Any, ended: bool) -> None:
    """As h2 takes a request's headers on a new stream (RECV_HEADERS from idle: the
    stream is the server's, its headers received), and END_STREAM with them."""
    if machine.state is not _IDLE_STREAM or machine.headers_received or machine.trailers_received:
        machine.process_input(_STREAM_RECV_HEADERS)
        if ended:
            machine.process_input(_RECV_END_STREAM)
        return
    machine.client = False
    machine.headers_received = True
    machine.state = _HALF_CLOSED_REMOTE if ended else _OPEN


def _end_received(machine: Any) -> None:
    """As h2 takes an END_STREAM from the peer (RECV_END_STREAM)."""
    state = machine.state
    if state is _OPEN:
        machine.state = _HALF_CLOSED_REMOTE
    elif state is _HALF_CLOSED_LOCAL:
        machine.state = _STREAM_CLOSED
        machine.stream_closed_by = _BY_RECV_END
    else:
        machine.process_input(_RECV_END_STREAM)


def response_headers_sent(machine: Any) -> None:
    """As h2 sends a server's response headers on a stream (SEND_HEADERS, the first
    headers of the stream)."""
    state = machine.state
    if (
        (state is _OPEN or state is _HALF_CLOSED_REMOTE)
        and not machine.headers_sent
        and machine.client is False
    ):
        machine.headers_sent = True
    else:
        machine.process_input(_SEND_HEADERS)


def end_sent(machine: Any) -> None:
    """As h2 sends END_STREAM on a stream (SEND_END_STREAM)."""
    state = machine.state
    if state is _OPEN:
        machine.state = _HALF_CLOSED_LOCAL
    elif state is _HALF_CLOSED_REMOTE:
        machine.state = _STREAM_CLOSED
        machine.stream_closed_by = _BY_SEND_END
    else:
        machine.process_input(_SEND_END_STREAM)


#: The connection states in which h2 takes a DATA frame without a transition.
_OPEN_CONNECTION: Final = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)
#: The stream states in which h2 takes a DATA frame without a transition (RFC 9113 5.1).
_RECEIVING: Final = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)
_WINDOW_UPDATE: Final = struct.Struct(">BHBBLL")


def read_data_frame(
    h2: Any, data: bytes, start: int, streams: dict[int, Any]
) -> tuple[Any, bytes, bool] | None:
    """Read the frame at *start* of *data*, received on *h2* (an ``H2Connection``), as
    h2's ``receive_data`` would read it, if it is a plain DATA frame: return the stream it
    is for (``streams[stream_id]``), its payload (the frame is ``9 + len(payload)``
    bytes) and whether it ended the stream; None (nothing read) when h2 must read it.

    Plain means h2 would take it with no more than moving its state: h2 holds no partial
    frame and is not inside a header block; the connection and the stream are open for
    data; the frame is whole, unpadded, within the frame size and both receive windows;
    the stream's headers have arrived; its content-length is not exceeded (nor fallen
    short of, at its end); and the stream is one of *streams*. h2's windows and
    content-length count are moved, and its stream state on END_STREAM, exactly as its
    own reading would move them."""
    if len(data) - start < 9 or data[start + 3] != DATA:
        return None
    length = (data[start] << 16) | (data[start + 1] << 8) | data[start + 2]
    flags = data[start + 4]
    begin = start + 9
    if flags & PADDED or len(data) - begin < length or length > h2.max_inbound_frame_size:
        return None
    buffer = h2.incoming_buffer
    if buffer._data or buffer._headers_buffer or buffer._preamble_len:
        return None
    if h2.state_machine.state not in _OPEN_CONNECTION:
        return None
    stream_id = int.from_bytes(data[start + 5 : begin], "big") & 0x7FFFFFFF
    mine = streams.get(stream_id)
    stream = h2.streams.get(stream_id)
    if mine is None or stream is None:
        return None
    machine = stream.state_machine
    if machine.state not in _RECEIVING or not machine.headers_received:
        return None
    connection_window = h2._inbound_flow_control_window_manager
    stream_window = stream._inbound_window_manager
    if length > connection_window.current_window_size or length > stream_window.current_window_size:
        return None
    ended = bool(flags & END_STREAM)
    received = stream._actual_content_length + length
    expected = stream._expected_content_length
    if expected is not None and (received > expected or (ended and received != expected)):
        return None
    connection_window.current_window_size -= length
    stream_window.current_window_size -= length
    stream._actual_content_length = received
    if ended:
        _end_received(machine)
    return mine, data[begin : begin + length], ended


_SERVER_OPEN: Final = ConnectionState.SERVER_OPEN
_IDLE: Final = ConnectionState.IDLE
_CONNECTION_RECV_HEADERS: Final = ConnectionInputs.RECV_HEADERS
_ODD: Final = AllowedStreamIDs.ODD


def read_request_head(
    h2: Any, data: bytes, start: int
) -> tuple[int, list[tuple[bytes, bytes]], bool, int] | None:
    """Read the frame at *start* of *data*, received on *h2* (a server's
    ``H2Connection``), as h2's ``receive_data`` would read it, if it is a plain request
    HEADERS frame: return its stream id, its header list as HPACK decodes it (bytes, not
    validated: `request_fields` does that), whether it ended the stream, and where the
    frame ends; None (nothing read) when h2 must read it.

    Plain means h2 would take it with no more than opening the stream: h2 holds no partial
    frame and is not inside a header block; the connection is a server's, open or yet to
    open (its first request opens it, as in h2); the frame is whole, unpadded, within the
    frame size, carries the whole block (END_HEADERS) and opens a new client stream (odd,
    above every stream id seen) that h2's concurrent-stream limit lets in even counting
    every stream h2 still holds; any priority it carries does not
    make the stream depend on itself; its block decodes (`hpackread.decode_block`) and its
    content-length fields are digits that agree. The stream is opened in h2 as h2 opens
    it — its stream object, its state machine moved by a request's headers (and by
    END_STREAM), its expected content-length — and h2's HPACK table is updated."""
    if len(data) - start < 9 or data[start + 3] != HEADERS:
        return None
    length = (data[start] << 16) | (data[start + 1] << 8) | data[start + 2]
    flags = data[start + 4]
    begin = start + 9
    end = begin + length
    if (
        flags & PADDED
        or not flags & END_HEADERS
        or len(data) < end
        or length > h2.max_inbound_frame_size
    ):
        return None
    buffer = h2.incoming_buffer
    if buffer._data or buffer._headers_buffer or buffer._preamble_len:
        return None
    connection_state = h2.state_machine.state
    if connection_state is not _SERVER_OPEN and connection_state is not _IDLE:
        return None
    stream_id = int.from_bytes(data[start + 5 : begin], "big") & 0x7FFFFFFF
    if (
        h2.config.client_side
        or not stream_id & 1
        or stream_id <= h2.highest_inbound_stream_id
        or len(h2.streams) >= h2.local_settings.max_concurrent_streams
    ):
        return None
    if flags & PRIORITY:
        if length < 5:
            return None
        if int.from_bytes(data[begin : begin + 4], "big") & 0x7FFFFFFF == stream_id:
            return None
        begin += 5
    decoder = h2.decoder
    block = decode_block(decoder, data, begin, end)
    if block is None:
        return None
    content_length = -1
    for name, value in block.fields:
        if name == b"content-length":
            if not value.isdigit():
                return None  # decoded again by h2, which refuses it
            declared = int(value)
            if content_length >= 0 and declared != content_length:
                return None
            content_length = declared
    block.commit(decoder)
    if connection_state is _IDLE:  # a connection's first request opens it
        h2.state_machine.process_input(_CONNECTION_RECV_HEADERS)
    stream = h2._begin_new_stream(stream_id, _ODD)
    ended = bool(flags & END_STREAM)
    _request_opened(stream.state_machine, ended)
    if content_length >= 0:
        stream._expected_content_length = content_length
    return stream_id, block.fields, ended, end


def forget_closed_stream(h2: Any, stream_id: int) -> None:
    """Drop stream *stream_id* from *h2*'s streams once it is closed, recording how it
    closed, as h2 does lazily whenever it counts its open streams (a frame for it later
    is answered as for any closed stream). Streams opened by `read_request_head` are not
    counted by h2, so they are forgotten here."""
    stream = h2.streams.get(stream_id)
    if stream is not None and stream.state_machine.state is _STREAM_CLOSED:
        del h2.streams[stream_id]
        h2._closed_streams[stream_id] = stream.state_machine.stream_closed_by


def first_frame(h2: Any, data: bytes, start: int) -> int:
    """Where to end what of *data*, from *start*, is handed to h2 (received on *h2*) for
    it to read one frame alone: after that frame when it is whole and h2 holds no
    partial frame, else at the end of *data* (h2 keeps what is not a whole frame yet)."""
    buffer = h2.incoming_buffer
    if len(data) - start < 9 or buffer._data or buffer._preamble_len:
        return len(data)
    end = start + 9 + ((data[start] << 16) | (data[start + 1] << 8) | data[start + 2])
    return end if end <= len(data) else len(data)


def acknowledge(h2: Any, stream_id: int, size: int) -> bytes:
    """Hand *size* received bytes of stream *stream_id* back to the peer's windows, as
    h2's ``acknowledge_received_data`` would; return the WINDOW_UPDATE frames that makes
    (most acknowledgements make none: h2 waits for half a window)."""
    frames = b""
    increment = h2._inbound_flow_control_window_manager.process_bytes(size)
    if increment:
        frames = _WINDOW_UPDATE.pack(0, 4, WINDOW_UPDATE, 0, 0, increment)
    stream = h2.streams.get(stream_id)
    if stream is not None and stream.open:
        increment = stream._inbound_window_manager.process_bytes(size)
        if increment:
            frames += _WINDOW_UPDATE.pack(0, 4, WINDOW_UPDATE, 0, stream_id, increment)
    return frames
