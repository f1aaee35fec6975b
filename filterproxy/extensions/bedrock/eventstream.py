"""AWS's binary event-stream framing (``application/vnd.amazon.eventstream``): bytes in,
in pieces split anywhere; whole messages out, both CRCs checked.

A frame is: its total length, its headers' length and the CRC32 of those 8 bytes (the
prelude, big-endian), the headers (each a name, a type and a value), the payload, and the
CRC32 of everything before it. A frame's length is known from its first 12 bytes, so one
larger than the limit given (the config's ``max_event_bytes``) is refused before it is
read in full; a corrupt frame (a CRC that does not match, impossible lengths, a header of
an unknown type or twice) ends the reading with `FrameError` — a stream cannot be read
on past a frame it cannot delimit.

Why not botocore's decoder (``EventStreamBuffer``), which the tests use to check what
the test servers send: it costs 6.6 µs a 237-byte frame (about 90 interpreted calls),
more than the gateway spends on a whole chunk passed through (6.6 µs); this reader,
compiled with the data path, 2.3 (``make bench-bedrock --stages``, 2026-12-07). The
tests hold both to the same frames, whole, cut at every byte and corrupted at every byte.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

__all__ = ["ERROR", "EVENT", "EXCEPTION", "Frame", "FrameError", "FrameReader"]

#: A message's ``:message-type``: an event, a modelled exception, or an unmodelled error.
EVENT: Final = "event"
EXCEPTION: Final = "exception"
ERROR: Final = "error"
#: The prelude (two lengths and their CRC), and the whole fixed overhead (+ message CRC).
_PRELUDE: Final = 12
_OVERHEAD: Final = 16
#: The most header bytes a frame may have (AWS's SDKs refuse more too).
MAX_HEADER_BYTES: Final = 128 * 1024
_U32: Final = struct.Struct(">I")
_PRELUDE_FIELDS: Final = struct.Struct(">III")
#: Header value types with a fixed size (type → bytes): booleans (none), int8, int16,
#: int32, int64, timestamp, uuid.
_FIXED: Final = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
#: Variable-sized types (a 16-bit length first): bytes and strings.
_BYTES: Final = 6
_STRING: Final = 7
#: The headers the gateway reads (strings); the others are checked and skipped.
_WANTED: Final = frozenset({b":message-type", b":event-type", b":exception-type", b":error-code"})
_CORRUPT_HEADER: Final = "the upstream's event stream is corrupt (a header runs past its block)"


class FrameError(ValueError):
    """The bytes are not a readable event stream (the message says how)."""


class Frame:
    """One message: its type (`EVENT`, `EXCEPTION`, `ERROR`), its name (the event's
    ``:event-type``, the exception's ``:exception-type``, the error's ``:error-code``)
    and its payload."""

    __slots__ = ("message_type", "name", "payload")

    def __init__(self, message_type: str, name: str, payload: bytes) -> None:
        self.message_type = message_type
        self.name = name
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Frame)
            and self.message_type == other.message_type
            and self.name == other.name
            and self.payload == other.payload
        )

    def __hash__(self) -> int:
        return hash((self.message_type, self.name, self.payload))

    def __repr__(self) -> str:
        return f"Frame({self.message_type!r}, {self.name!r}, {self.payload!r})"


def _headers(data: bytearray, start: int, end: int) -> dict[bytes, str]:
    """The string headers the gateway reads of the header block ``data[start:end]``, by
    their names' bytes; every header checked.

    Raises:
        FrameError: a header runs past the block, is of an unknown type, or comes twice.
    """
    found: dict[bytes, str] = {}
    seen: list[bytes] = []
    at = start
    while at < end:
        size = data[at]
        at += 1
        if at + size + 1 > end:
            raise FrameError(_CORRUPT_HEADER)
        name = bytes(data[at : at + size])
        at += size
        kind = data[at]
        at += 1
        if kind in (_STRING, _BYTES):
            if at + 2 > end:
                raise FrameError(_CORRUPT_HEADER)
            length = (data[at] << 8) | data[at + 1]
            at += 2
        elif kind in _FIXED:
            length = _FIXED[kind]
        else:
            raise FrameError(f"the upstream's event stream is corrupt (header type {kind})")
        if at + length > end:
            raise FrameError(_CORRUPT_HEADER)
        if name in seen:
            raise FrameError(f"the upstream's event stream is corrupt (header {name!r} twice)")
        seen.append(name)
        if kind == _STRING and name in _WANTED:
            found[name] = data[at : at + length].decode("utf-8", "replace")
        at += length
    return found


class FrameReader:
    """Reads frames from the pieces of a response body (see the module's description)."""

    __slots__ = ("buffer", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self.buffer = bytearray()
        #: The largest frame read: the payload limit given, with room for headers.
        self.max_frame_bytes = max_frame_bytes + _OVERHEAD + 1024

    @property
    def between_frames(self) -> bool:
        """No frame is partly read."""
        return not self.buffer

    def feed(self, data: bytes) -> list[Frame]:
        """The frames that *data* completes, in order.

        Raises:
            FrameError: a frame is corrupt or larger than the limit.
        """
        buffer = self.buffer
        buffer += data
        frames: list[Frame] = []
        at = 0
        held = len(buffer)
        while held - at >= _PRELUDE:
            total, header_bytes, prelude_crc = _PRELUDE_FIELDS.unpack_from(buffer, at)
            if zlib.crc32(buffer[at : at + 8]) != prelude_crc:
                raise FrameError("the upstream's event stream is corrupt (prelude CRC)")
            if total < _OVERHEAD or header_bytes > total - _OVERHEAD:
                raise FrameError(
                    f"the upstream's event stream is corrupt (a frame of {total} bytes "
                    f"with {header_bytes} of headers)"
                )
            if total > self.max_frame_bytes or header_bytes > MAX_HEADER_BYTES:
                raise FrameError(
                    f"the upstream sent an event-stream frame of {total} bytes, more than "
                    f"max_event_bytes allows"
                )
            if held - at < total:
                break
            end = at + total - 4
            crc = zlib.crc32(memoryview(buffer)[at + 8 : end], prelude_crc)
            if crc != _U32.unpack_from(buffer, end)[0]:
                raise FrameError("the upstream's event stream is corrupt (message CRC)")
            headers_end = at + _PRELUDE + header_bytes
            headers = _headers(buffer, at + _PRELUDE, headers_end)
            kind = headers.get(b":message-type", EVENT)
            if kind == EVENT:
                name = headers.get(b":event-type", "")
            elif kind == EXCEPTION:
                name = headers.get(b":exception-type", "")
            else:
                name = headers.get(b":error-code", "")
            frames.append(Frame(kind, name, bytes(buffer[headers_end:end])))
            at += total
        if at:
            del buffer[:at]
        return frames
