"""The two HTTP/2 frames the gateway writes itself on its busiest paths: a response's
HEADERS and its DATA.

The `h2` library stays the protocol engine (it parses everything a client sends, keeps
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
"""

from __future__ import annotations

import struct
from typing import Final

from hpack.table import HeaderTable

__all__ = [
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "HEADERS",
    "frame_head",
    "header_block",
]

#: Frame types and flags (RFC 9113 6.1, 6.2).
DATA: Final = 0x0
HEADERS: Final = 0x1
END_STREAM: Final = 0x1
END_HEADERS: Final = 0x4

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


def _string(text: str) -> bytes:
    raw = text.encode()
    return _integer(len(raw), 7, 0x00) + raw


def _plain(text: str) -> bool:
    """Whether *text* can go as an HTTP/2 field value as it is."""
    for bad in _FORBIDDEN:
        if bad in text:
            return False
    return not text or (text[0] not in " \t" and text[-1] not in " \t")


def header_block(fields: list[tuple[str, str]]) -> bytes | None:
    """The HPACK block of a response's *fields* (``:status`` first, names in lower case),
    or None when a field is one this encoder leaves to h2 (cookies, ``te``, characters
    HTTP/2 forbids, surrounding whitespace h2 would strip, names not in lower case): h2
    then encodes, normalises or refuses the block as it always has."""
    parts: list[bytes] = []
    for name, value in fields:
        if (
            not name
            or name in _LEFT_TO_H2
            or name != name.lower()
            or not (name.isascii() and name.isprintable())
            or " " in name
            or ":" in name[1:]
            or (name[0] == ":" and name != ":status")  # the only pseudo-header of a response
            or not _plain(value)
        ):
            return None  # RFC 9113 8.2.1 / 8.3.2, or h2's to normalise
        pair = _STATIC_PAIRS.get((name, value))
        if pair is not None:
            parts.append(_integer(pair, 7, 0x80))
            continue
        first = 0x10 if name in _NEVER_INDEXED else 0x00
        index = _STATIC_NAMES.get(name)
        if index is not None:
            parts.append(_integer(index, 4, first))
        else:
            parts.append(bytes((first,)) + _string(name))
        parts.append(_string(value))
    return b"".join(parts)
