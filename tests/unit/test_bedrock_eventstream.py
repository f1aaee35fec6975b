"""The gateway's event-stream reader held to botocore's decoder (what AWS's SDKs read):
the same messages from the same frames — whole, cut at every byte, every header type —
and every frame corrupted at any byte refused by both; a frame past the limit refused
from its first 12 bytes."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest

from filterproxy.extensions.bedrock.eventstream import Frame, FrameError, FrameReader
from tests.bedrock_server import converse_stream, invoke_stream
from tests.support.eventstream import encode_frame, event_frame, exception_frame

eventstream = pytest.importorskip("botocore.eventstream")

BODY = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 8}


def botocore_reads(data: bytes) -> list[Frame]:
    buffer = eventstream.EventStreamBuffer()
    buffer.add_data(data)
    frames = []
    for message in buffer:
        headers: dict[str, Any] = message.headers
        kind = headers.get(":message-type", "event")
        key = {"event": ":event-type", "exception": ":exception-type"}.get(kind, ":error-code")
        frames.append(Frame(kind, str(headers.get(key, "")), message.payload))
    return frames


def streams() -> list[list[bytes]]:
    odd = encode_frame(
        {
            ":message-type": "event",
            ":event-type": "chunk",
            "flag": True,
            "off": False,
            "n": 7,
            "blob": b"\x00\x01",
        },
        b'{"bytes":"e30="}',
    )
    return [
        invoke_stream(BODY, "anthropic.claude-3-haiku-20240307-v1:0"),
        converse_stream({"messages": [{"role": "user", "content": [{"text": "a b"}]}]}, "meta.x"),
        [event_frame("chunk", b""), exception_frame("throttlingException", "slow down"), odd],
    ]


@pytest.mark.parametrize("frames", streams())
def test_the_same_messages_as_botocore_whole_and_cut_at_every_byte(frames: list[bytes]) -> None:
    whole = b"".join(frames)
    expected = botocore_reads(whole)
    assert len(expected) == len(frames)
    assert FrameReader(1 << 20).feed(whole) == expected
    for cut in range(len(whole) + 1):
        reader = FrameReader(1 << 20)
        got = reader.feed(whole[:cut]) + reader.feed(whole[cut:])
        assert got == expected, cut
        assert reader.between_frames


def test_a_frame_corrupted_at_any_byte_is_refused_like_botocore_refuses_it() -> None:
    frame = event_frame("chunk", b'{"bytes":"eyJ0eXBlIjoicGluZyJ9"}')
    for at in range(len(frame)):
        broken = bytearray(frame)
        broken[at] ^= 0x40
        with pytest.raises(FrameError):
            # (A corrupt length may also make the frame look longer: end the stream.)
            reader = FrameReader(1 << 20)
            if not reader.feed(bytes(broken)) and not reader.between_frames:
                raise FrameError("cut off")
        with pytest.raises((eventstream.ParserError, AssertionError)):
            assert botocore_reads(bytes(broken)), "botocore waits for more"


def _frame_with_headers(block: bytes, payload: bytes = b"{}") -> bytes:
    total = 16 + len(block) + len(payload)
    prelude = struct.pack(">II", total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + block + payload
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    "block",
    [
        b"\x01a\x0a",  # an unknown header type
        b"\x01a\x07\x00\x09abc",  # a string longer than its block
        b"\x01a\x00\x01a\x01",  # a header twice
        b"\x05ab",  # a name longer than its block
    ],
)
def test_bad_headers_are_refused(block: bytes) -> None:
    with pytest.raises(FrameError):
        FrameReader(1 << 20).feed(_frame_with_headers(block))


def test_impossible_lengths_are_refused() -> None:
    prelude = struct.pack(">II", 8, 0)
    with pytest.raises(FrameError, match="corrupt"):
        FrameReader(1 << 20).feed(prelude + struct.pack(">I", zlib.crc32(prelude)) + b"\0" * 8)


def test_a_frame_past_the_limit_is_refused_from_its_prelude() -> None:
    big = event_frame("chunk", b"x" * 100_000)
    reader = FrameReader(4096)
    with pytest.raises(FrameError, match="max_event_bytes"):
        reader.feed(big[:12])
