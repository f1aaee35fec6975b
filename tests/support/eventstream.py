"""AWS event-stream frames (``application/vnd.amazon.eventstream``) as Bedrock sends them,
for the tests' stand-in of Bedrock. botocore only decodes them; this encodes.

A frame is: total length (u32), headers length (u32), CRC32 of those 8 bytes, the
headers, the payload, and the CRC32 of every byte before it; integers are big-endian.
A header is its name's length (u8), the name, a type byte and the value.
"""

from __future__ import annotations

import base64
import json
import random
import string
import struct
import zlib
from collections.abc import Mapping
from typing import Any

__all__ = ["chunk_payload", "encode_frame", "event_frame", "exception_frame", "padded"]

HeaderValue = str | bool | int | bytes

_TRUE, _FALSE, _INT32, _BYTES, _STRING = 0, 1, 4, 6, 7


def _header(name: str, value: HeaderValue) -> bytes:
    encoded_name = name.encode()
    if len(encoded_name) > 255:
        raise ValueError(f"header name too long: {name!r}")
    out = struct.pack(">B", len(encoded_name)) + encoded_name
    if isinstance(value, bool):
        return out + struct.pack(">B", _TRUE if value else _FALSE)
    if isinstance(value, int):
        return out + struct.pack(">Bi", _INT32, value)
    if isinstance(value, bytes):
        return out + struct.pack(">BH", _BYTES, len(value)) + value
    data = value.encode()
    return out + struct.pack(">BH", _STRING, len(data)) + data


def encode_frame(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """One event-stream frame of *headers* (a string is sent as type 7, a bool as type
    0/1, an int as type 4 (int32), bytes as type 6) and *payload*."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    prelude = struct.pack(">II", 16 + len(encoded) + len(payload), len(encoded))
    head = prelude + struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF) + encoded + payload
    return head + struct.pack(">I", zlib.crc32(head) & 0xFFFFFFFF)


def event_frame(event_type: str, payload: bytes) -> bytes:
    """An ``event`` frame of type *event_type* carrying the JSON *payload*."""
    return encode_frame(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        payload,
    )


def exception_frame(exception_type: str, message: str, **extra: Any) -> bytes:
    """An ``exception`` frame of *exception_type* (``throttlingException``…) whose
    payload is ``{"message": message, **extra}``."""
    return encode_frame(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message, **extra}).encode(),
    )


def _padding() -> str:
    return "".join(random.choices(string.ascii_letters, k=random.randint(1, 40)))


def padded(document: Mapping[str, Any]) -> bytes:
    """*document* as JSON with Bedrock's random-length ``"p"`` padding field added."""
    return json.dumps({**document, "p": _padding()}, separators=(",", ":")).encode()


def chunk_payload(event: Mapping[str, Any]) -> bytes:
    """The payload of an InvokeModelWithResponseStream ``chunk`` frame carrying *event*:
    ``{"bytes": <base64 of the event's compact JSON>, "p": <padding>}``."""
    data = json.dumps(event, separators=(",", ":")).encode()
    return padded({"bytes": base64.b64encode(data).decode()})
