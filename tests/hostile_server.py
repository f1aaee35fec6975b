"""An upstream that misbehaves on purpose, for the hostile-upstream tests; run as its own
process. It prints ``PORT <n>`` when listening.

It speaks Chat Completions (``POST …/chat/completions``) and Messages (``POST
…/messages``): without an ``x-hostile`` header, an ordinary answer in the API of the
path — JSON, or an event stream when the body asks for ``stream`` (with the usage chunk
when it asks for ``stream_options.include_usage``), on a keep-alive connection. With
one, it misbehaves as the header says:

- ``no-line-end``: a 200 event stream that sends 64 MiB of ``data: xxx…`` without a
  line end, then ends its body properly;
- ``huge-event``: a 200 event stream in the path's API whose one content delta is
  16 MiB, then a proper end;
- ``gzip-json``: a 200 JSON answer, ``content-encoding: gzip``, of 260 KB that
  inflates to 256 MiB;
- ``gzip-sse``: the same as an event stream: small events in the path's API, 256 MiB
  of them once inflated;
- ``text-plain``: the path's event stream, sent as ``content-type: text/plain``;
- ``html-200``: an HTML error page with status 200;
- ``paused-read``: stops reading the connection after the request head; never answers;
- ``stall``: a 200 event-stream head and the first event, then silence;
- ``reset-before-head``: reads the request, then resets the connection (RST);
- ``reset-after-head``: a 200 event-stream head, then a reset;
- ``reset-mid-event``: the head and half an event, then a reset;
- ``reset-mid-chunk-length``: the head and the first digit of a chunk's length line,
  then a reset;
- ``gzip-reset``: a gzip event stream in the path's API whose first events are sent
  (flushed), then a reset mid-stream;
- ``big-stream``: an ordinary event stream of 24 MiB in small events (for clients
  that read late).

Big bodies are written as the client reads them (a pull producer): the server holds no
more than a piece at a time.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httptools
from twisted.internet import reactor
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

MiB = 1024 * 1024
PIECE = 64 * 1024
HUGE = 16 * MiB
BOMB = 256 * MiB

CHAT_JSON = json.dumps(
    {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "fine"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()
MESSAGES_JSON = json.dumps(
    {
        "id": "msg_hostile",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "fine"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
).encode()


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    document = {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }
    return b"data: " + json.dumps(document).encode() + b"\n\n"


def chat_text_event(text: str) -> bytes:
    return chat_chunk({"content": text})


def chat_stream(texts: list[str], include_usage: bool) -> list[bytes]:
    """An ordinary chat stream: a role chunk, one chunk per text, the finish."""
    events = [chat_chunk({"role": "assistant", "content": ""})]
    events += [chat_text_event(t) for t in texts]
    events.append(chat_chunk({}, "stop"))
    if include_usage:
        usage = {"prompt_tokens": 3, "completion_tokens": len(texts), "total_tokens": 3}
        document = {"id": "chatcmpl-hostile", "choices": [], "usage": usage}
        events.append(b"data: " + json.dumps(document).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def messages_event(kind: str, document: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(document).encode() + b"\n\n"


def messages_text_event(text: str) -> bytes:
    delta = {"type": "text_delta", "text": text}
    return messages_event(
        "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
    )


def messages_stream(texts: list[str]) -> list[bytes]:
    message = {
        "id": "msg_hostile",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 3, "output_tokens": 0},
    }
    block = {"type": "text", "text": ""}
    return [
        messages_event("message_start", {"type": "message_start", "message": message}),
        messages_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        *(messages_text_event(t) for t in texts),
        messages_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        messages_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(texts)},
            },
        ),
        messages_event("message_stop", {"type": "message_stop"}),
    ]


def gzip_of_repeats(block: bytes, count: int, before: bytes = b"", after: bytes = b"") -> bytes:
    """A gzip member of *before*, *block* repeated *count* times and *after*, made in
    a fraction of a second: after a full flush a deflate stream's next block does not
    refer back, so a repeated block compresses to the same bytes each time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(before) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(after) + compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(before)
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(after, crc)
    size = (len(before) + len(block) * count + len(after)) & 0xFFFFFFFF
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + head + repeated * count + tail + struct.pack("<II", crc, size)


_BOMBS: dict[str, bytes] = {}


def bomb(kind: str) -> bytes:
    """The gzip bombs (made once): a JSON answer, and a chat or Messages event stream."""
    if kind not in _BOMBS:
        if kind == "json":
            body = gzip_of_repeats(b"0" * MiB, BOMB // MiB, b'{"id": "x", "pad": "', b'"}')
        else:
            event = chat_text_event("aaaa") if kind == "chat" else messages_text_event("aaaa")
            block = event * (MiB // len(event))
            body = gzip_of_repeats(block, BOMB // len(block))
        _BOMBS[kind] = body
    return _BOMBS[kind]


def chunked(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


def head(status: int, content_type: str, *extra: str, length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-type: {content_type}", *extra]
    lines.append(
        f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def pieces_of(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]


@implementer(IPullProducer)
class Writer:
    """Writes *pieces* (chunked, unless *raw*) as the peer reads them, then *then*."""

    def __init__(
        self, transport: Any, pieces: Iterator[bytes], then: Callable[[], None], raw: bool
    ) -> None:
        self.transport = transport
        self.pieces = pieces
        self.then = then
        self.raw = raw
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        piece = next(self.pieces, None)
        if piece is None:
            self.stopped = True
            self.transport.unregisterProducer()
            self.then()
            return
        self.transport.write(piece if self.raw else chunked(piece))

    def stopProducing(self) -> None:
        self.stopped = True


class HostileProtocol(Protocol):
    def connectionMade(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.headers: dict[str, str] = {}
        self.url = b""
        self.body: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def on_message_begin(self) -> None:
        self.headers = {}
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        if self.headers.get("x-hostile") == "paused-read":
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport: Any = self.transport
        path = self.url.decode().split("?", 1)[0]
        api = "messages" if path.endswith("/messages") else "chat"
        try:
            request = json.loads(b"".join(self.body) or b"{}")
        except ValueError:
            request = {}
        streaming = request.get("stream") is True
        options = request.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        case = self.headers.get("x-hostile", "")
        event_head = head(200, "text/event-stream")

        def stream_of(texts: list[str]) -> list[bytes]:
            if api == "messages":
                return messages_stream(texts)
            return chat_stream(texts, include_usage)

        def end() -> None:
            transport.write(b"0\r\n\r\n")

        def write(pieces: Iterator[bytes], then: Callable[[], None] = end) -> None:
            transport.registerProducer(Writer(transport, pieces, then, raw=False), False)

        if case == "":
            if not streaming:
                body = MESSAGES_JSON if api == "messages" else CHAT_JSON
                transport.write(head(200, "application/json", length=len(body)) + body)
                return
            transport.write(event_head + chunked(b"".join(stream_of(["fi", "ne"]))) + b"0\r\n\r\n")
        elif case == "no-line-end":
            transport.write(event_head + chunked(b"data: "))
            write(b"x" * PIECE for _ in range(64 * MiB // PIECE))
        elif case == "huge-event":
            events = stream_of(["start", "X" * HUGE])
            transport.write(event_head)
            write(piece for event in events for piece in pieces_of(event))
        elif case in ("gzip-json", "gzip-sse"):
            kind = "json" if case == "gzip-json" else api
            body = bomb(kind)
            content_type = "application/json" if kind == "json" else "text/event-stream"
            transport.write(head(200, content_type, "content-encoding: gzip"))
            write(pieces_of(body))
        elif case == "text-plain":
            body = b"".join(stream_of(["fi", "ne"]))
            transport.write(head(200, "text/plain; charset=utf-8", length=len(body)) + body)
        elif case == "html-200":
            body = (
                b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head>"
                b"<body><h1>Service Unavailable</h1><p>try later</p></body></html>"
            )
            transport.write(head(200, "text/html", length=len(body)) + body)
        elif case == "stall":
            transport.write(event_head + chunked(stream_of(["fi"])[0]))
        elif case == "reset-before-head":
            transport.abortConnection()
        elif case == "reset-after-head":
            transport.write(event_head)
            reactor.callLater(0.05, transport.abortConnection)
        elif case == "reset-mid-event":
            first = b"".join(stream_of(["fi"])[:2])
            transport.write(event_head + chunked(first[: len(first) - 20]))
            reactor.callLater(0.05, transport.abortConnection)
        elif case == "reset-mid-chunk-length":
            transport.write(event_head + chunked(stream_of(["fi"])[0]) + b"1")
            reactor.callLater(0.05, transport.abortConnection)
        elif case == "gzip-reset":
            compressor = zlib.compressobj(wbits=31)
            first = compressor.compress(b"".join(stream_of(["fi"])[:2]))
            first += compressor.flush(zlib.Z_SYNC_FLUSH)
            transport.write(
                head(200, "text/event-stream", "content-encoding: gzip") + chunked(first)
            )
            reactor.callLater(0.05, transport.abortConnection)
        elif case == "big-stream":
            texts = ["x" * 200] * (24 * MiB // 300)
            transport.write(event_head)
            write(_batched(stream_of(texts)))


def _batched(events: list[bytes]) -> Iterator[bytes]:
    """*events* in pieces of about 64 KiB (whole events)."""
    batch: list[bytes] = []
    size = 0
    for event in events:
        batch.append(event)
        size += len(event)
        if size >= PIECE:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def main() -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(HostileProtocol), interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
