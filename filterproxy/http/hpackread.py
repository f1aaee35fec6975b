"""HPACK header blocks decoded against the `hpack` library's decoder state, compiled.

A request's header block is mostly indexed fields: after its first request a client sends
most of its headers as one byte each, pointing into the dynamic table its earlier blocks
filled. `hpack`'s ``Decoder.decode`` spends about 13 µs on such a block (a Python call, a
log call and a tuple per field); `decode_block` reads it in well under one, and keeps the
connection's HPACK state where `hpack` keeps it: the same `HeaderTable` (its dynamic
entries, its size), filled and evicted by RFC 7541's rules (2.3.2, 4.4), Huffman-coded
strings decoded by `hpack`'s own ``decode_huffman``.

It decodes a block only when it can say exactly what `hpack` would: a block it does not
take — a dynamic table size update (those go to `hpack`, which checks them against the
acknowledged setting), an index or string it cannot read, a header list over the
decoder's ``max_header_list_size`` — returns None with the table untouched, and the block
is `hpack`'s (and h2's) to decode and to fail. Additions to the table are made on a copy
and committed only when the caller has checked the whole block and takes it.
"""

from __future__ import annotations

from typing import Any, Final

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["DecodedBlock", "decode_block"]

#: RFC 7541 Appendix A, as `hpack` has it (index 1 is ``_STATIC[0]``).
_STATIC: Final[tuple[tuple[bytes, bytes], ...]] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_LENGTH: Final = len(_STATIC)
#: An entry's size beyond its name and value (RFC 7541 4.1).
_ENTRY_OVERHEAD: Final = 32
#: Continuation octets an integer may take here; `hpack` takes a few more, and decides
#: the blocks that use them.
_MAX_CONTINUATIONS: Final = 4


class _Reader:
    """A position in a header block, and what was read last."""

    def __init__(self, data: bytes, position: int, end: int) -> None:
        self.data = data
        self.position = position
        self.end = end

    def integer(self, prefix_bits: int) -> int:
        """The integer at the position with a *prefix_bits* prefix (RFC 7541 5.1), or -1."""
        data = self.data
        position = self.position
        mask = (1 << prefix_bits) - 1
        value = data[position] & mask
        position += 1
        if value == mask:
            shift = 0
            while True:
                if position >= self.end or shift > 7 * (_MAX_CONTINUATIONS - 1):
                    return -1
                octet = data[position]
                position += 1
                value += (octet & 0x7F) << shift
                if octet < 0x80:
                    break
                shift += 7
        self.position = position
        return value

    def string(self) -> bytes | None:
        """The string literal at the position (RFC 7541 5.2), or None."""
        if self.position >= self.end:
            return None
        huffman = self.data[self.position] & 0x80
        length = self.integer(7)
        if length < 0 or self.position + length > self.end:
            return None
        start = self.position
        self.position = start + length
        raw = self.data[start : start + length]
        if not huffman:
            return raw
        try:
            return decode_huffman(raw)
        except HPACKDecodingError:
            return None


def _entry(index: int, dynamic: Any) -> tuple[bytes, bytes] | None:
    """The table's entry at *index* (1-based: static, then dynamic newest first)."""
    if index < 1:
        return None
    if index <= _STATIC_LENGTH:
        return _STATIC[index - 1]
    index -= _STATIC_LENGTH + 1
    if index < len(dynamic):
        entry: tuple[bytes, bytes] = dynamic[index]
        return entry
    return None


class DecodedBlock:
    """A header block's header list, and the dynamic table it leaves once committed (`commit`)."""

    def __init__(
        self,
        fields: list[tuple[bytes, bytes]],
        entries: list[tuple[bytes, bytes]] | None,
        size: int,
    ) -> None:
        #: (name, value) pairs, in the block's order.
        self.fields = fields
        self._entries = entries
        self._size = size

    def commit(self, decoder: Any) -> None:
        """Leave *decoder*'s dynamic table as the block left it (it was read against
        *decoder*, and nothing else has been decoded by it since)."""
        if self._entries is not None:
            table = decoder.header_table
            table.dynamic_entries.clear()
            table.dynamic_entries.extend(self._entries)
            table._current_size = self._size


def decode_block(decoder: Any, data: bytes, start: int, end: int) -> DecodedBlock | None:
    """What ``data[start:end]``, one whole header block, decodes to against *decoder* (an
    `hpack.Decoder`) — the table left as `hpack` would leave it once committed — or None
    for `hpack` to decode the block itself. The decoder is not changed here."""
    table = decoder.header_table
    entries = table.dynamic_entries
    if table.maxsize > decoder.max_allowed_table_size:
        return None  # hpack fails every block until the peer shrinks the table
    maxsize: int = table._maxsize
    size: int = table._current_size
    added: list[tuple[bytes, bytes]] | None = None
    limit: int = decoder.max_header_list_size
    reader = _Reader(data, start, end)
    fields: list[tuple[bytes, bytes]] = []
    inflated = 0
    while reader.position < end:
        first = data[reader.position]
        if first & 0x80:  # indexed field (6.1)
            entry = _entry(reader.integer(7), entries if added is None else added)
            if entry is None:
                return None
            name, value = entry
        else:
            if first & 0x40:  # literal with incremental indexing (6.2.1)
                index = reader.integer(6)
            elif first & 0x20:  # dynamic table size update (6.3): hpack's
                return None
            else:  # literal without indexing, or never indexed (6.2.2, 6.2.3)
                index = reader.integer(4)
            if index < 0:
                return None
            if index:
                named = _entry(index, entries if added is None else added)
                if named is None:
                    return None
                name = named[0]
            else:
                literal = reader.string()
                if literal is None:
                    return None
                name = literal
            read = reader.string()
            if read is None:
                return None
            value = read
            if first & 0x40:
                if added is None:
                    added = list(entries)
                entry_size = _ENTRY_OVERHEAD + len(name) + len(value)
                if entry_size > maxsize:
                    added.clear()
                    size = 0
                else:
                    added.insert(0, (name, value))
                    size += entry_size
                    while size > maxsize:
                        evicted_name, evicted_value = added.pop()
                        size -= _ENTRY_OVERHEAD + len(evicted_name) + len(evicted_value)
        fields.append((name, value))
        inflated += _ENTRY_OVERHEAD + len(name) + len(value)
        if inflated > limit:
            return None
    return DecodedBlock(fields, added, size)
