"""A mock upstream for the Bedrock scenario (bench/bedrock.py): one answer, in three
wire formats, as fast as the socket takes it (asyncio + llhttp, one process, one core).

- ``POST …/messages``: Anthropic's Messages stream as SSE (an ``anthropic`` cluster);
- ``POST /model/{id}/invoke-with-response-stream``: the same Messages events, each in
  an AWS event-stream ``chunk`` frame, ``{"bytes": base64(event), "p": padding}``, as
  Bedrock's InvokeModelWithResponseStream sends Claude's answers;
- ``POST /model/{id}/converse-stream``: the same answer as ConverseStream events
  (``messageStart``, a ``contentBlockDelta`` per text delta, ``contentBlockStop``,
  ``messageStop``, ``metadata``), each frame's payload the event's JSON with ``"p"``.

Each answer has ``--chunks`` text deltas of ``--size`` characters (numbered, as
bench/upstream.py's chat stream: the same count and sizes as the translate scenario),
one event (SSE) or frame (event stream) per HTTP chunk. Nothing is authenticated: the
gateway's Bedrock cluster uses an API key, and SigV4 signs requests, not chunks.

    python bench/bedrock_upstream.py --port 0 --chunks 200   # prints "PORT <n>"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import zlib
from typing import Any

import httptools

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"request-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
)
EVENT_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\n"
    b"x-amzn-requestid: 00000000-0000-0000-0000-000000000000\r\n"
    b"x-amzn-bedrock-content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
END = b"0\r\n\r\n"
#: Bedrock pads each payload with a prefix of this, of a length that varies by event.
PAD_SOURCE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_STRING = 7


def http_chunk(data: bytes) -> bytes:
    """*data* as one chunk of a chunked HTTP body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def compact(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: the prelude (total and headers lengths, their
    CRC32), the headers (all strings here), the payload, and the CRC32 of all that."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack(">B", len(raw_name)) + raw_name
        encoded += struct.pack(">BH", _STRING, len(raw_value)) + raw_value
    prelude = struct.pack(">II", 16 + len(encoded) + len(payload), len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event_type: str, payload: bytes) -> bytes:
    return frame(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        payload,
    )


def padding(seq: int) -> str:
    return PAD_SOURCE[: 1 + (seq * 7) % len(PAD_SOURCE)]


def texts(chunks: int, size: int) -> list[str]:
    """The answer's text deltas: numbered, padded to *size* (bench/upstream.py's)."""
    return [f"{i} ".rjust(size, "x") for i in range(chunks)]


def messages_events(chunks: int, size: int, bedrock: bool) -> list[dict[str, Any]]:
    """The answer as Anthropic's Messages events (Bedrock's ``message_stop`` carries its
    invocation metrics)."""
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_bench",
                "type": "message",
                "role": "assistant",
                "model": "claude-bench",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    for text in texts(chunks, size):
        events.append(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            }
        )
    events.append({"type": "content_block_stop", "index": 0})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": chunks},
        }
    )
    stop: dict[str, Any] = {"type": "message_stop"}
    if bedrock:
        stop["amazon-bedrock-invocationMetrics"] = {
            "inputTokenCount": 5,
            "outputTokenCount": chunks,
            "invocationLatency": 1000,
            "firstByteLatency": 100,
        }
    events.append(stop)
    return events


def messages_sse(chunks: int, size: int) -> list[bytes]:
    """The Messages stream's HTTP chunks, one event each."""
    return [
        http_chunk(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), compact(e)))
        for e in messages_events(chunks, size, bedrock=False)
    ]


def invoke_frames(chunks: int, size: int) -> list[bytes]:
    """InvokeModelWithResponseStream's HTTP chunks, one ``chunk`` frame each."""
    out = []
    for seq, event in enumerate(messages_events(chunks, size, bedrock=True)):
        encoded = base64.b64encode(compact(event)).decode()
        out.append(http_chunk(event_frame("chunk", compact({"bytes": encoded, "p": padding(seq)}))))
    return out


def converse_frames(chunks: int, size: int) -> list[bytes]:
    """ConverseStream's HTTP chunks, one event frame each."""
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    for text in texts(chunks, size):
        events.append(("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}}))
    events.append(("contentBlockStop", {"contentBlockIndex": 0}))
    events.append(("messageStop", {"stopReason": "end_turn"}))
    events.append(
        (
            "metadata",
            {
                "usage": {"inputTokens": 5, "outputTokens": chunks, "totalTokens": chunks + 5},
                "metrics": {"latencyMs": 1000},
            },
        )
    )
    return [
        http_chunk(event_frame(name, compact({**payload, "p": padding(seq)})))
        for seq, (name, payload) in enumerate(events)
    ]


class Answers:
    """The three answers, made once."""

    def __init__(self, chunks: int, size: int) -> None:
        self.sse = messages_sse(chunks, size)
        self.invoke = invoke_frames(chunks, size)
        self.converse = converse_frames(chunks, size)


class BedrockUpstream(asyncio.Protocol):
    answers: Answers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.closed = False

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        if path.endswith(b"/invoke-with-response-stream"):
            head, pieces = EVENT_STREAM_HEAD, self.answers.invoke
        elif path.endswith(b"/converse-stream"):
            head, pieces = EVENT_STREAM_HEAD, self.answers.converse
        elif path.endswith(b"/messages"):
            head, pieces = SSE_HEAD, self.answers.sse
        else:
            self.transport.write(NOT_FOUND)
            return
        self.task = asyncio.ensure_future(self.send(head, pieces))

    async def send(self, head: bytes, pieces: list[bytes]) -> None:
        write = self.transport.write
        write(head)
        for piece in pieces:
            if self.closed:
                return
            write(piece)
            if not self.can_write.is_set():
                await self.can_write.wait()
        write(END)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BedrockUpstream, "127.0.0.1", port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9102)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--size", type=int, default=4)
    args = parser.parse_args()
    BedrockUpstream.answers = Answers(args.chunks, args.size)
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
