"""A fast mock OpenAI upstream for benchmarks (asyncio + llhttp), one process, one core.

``POST /v1/chat/completions`` with ``"stream": true`` answers an event stream whose
shape the request headers choose:

- ``x-bench-chunks`` (default 50) events, ``x-bench-interval-ms`` (default 20) apart
  (0: as fast as the socket takes them, the "firehose");
- ``x-bench-pad`` bytes of padding per event (default 64);
- ``x-bench-bulk`` bytes: instead, offer that many bytes of SSE comments, honouring
  the socket's backpressure (the slow-client scenario);
- ``x-bench-close: 1``: answer with ``connection: close`` and close the connection (an
  upstream that ends keep-alive connections, for the soak).

Every event carries its send time, ``data: {"seq":N,"t":NANOSECONDS,"pad":"xxx"}``, so a
client on the same host measures one-way latency per chunk and can rebuild the exact bytes
it should have received. Without ``stream`` the answer is a small JSON completion.

With ``--format chat`` (or ``x-bench-format: chat``) the events are real chat completion
chunks instead — a role chunk, content chunks of ``x-bench-pad`` characters, the finish
chunk, a usage chunk, ``[DONE]`` — for translating gateways (bench/translate.py); clients
that forward no headers get ``--chunks`` of them, as fast as the socket takes them.

``GET /stats`` reports bytes handed to the kernel in bulk mode and whether the writer is
paused by backpressure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httptools

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "bench",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (
        len(COMPLETION),
        COMPLETION,
    )
)
CLOSING_JSON_RESPONSE = JSON_RESPONSE.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
STATS = {"bulk_bytes": 0, "bulk_paused": False, "streams": 0, "open_streams": 0}


def event(seq: int, pad: bytes) -> bytes:
    """One SSE event with its send time (the client rebuilds it byte for byte)."""
    return b'data: {"seq":%d,"t":%d,"pad":"%s"}\n\n' % (seq, time.time_ns(), pad)


_CHAT = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}'
DEFAULTS = {"format": b"", "chunks": b"50", "interval": b"20"}


_chat_streams: dict[tuple[int, int], list[bytes]] = {}


def chat_events(chunks: int, size: int) -> list[bytes]:
    """A whole chat completion stream of *chunks* content chunks of *size* characters
    (numbered, as no two consecutive tokens of a real answer are alike: LiteLLM ends a
    stream that repeats one chunk a hundred times)."""
    cached = _chat_streams.get((chunks, size))
    if cached is not None:
        return cached
    events = [b"data: " + _CHAT % (b'{"role":"assistant","content":""}', b"null") + b"\n\n"]
    for i in range(chunks):
        text = (b"%d " % i).rjust(size, b"x")
        events.append(b"data: " + _CHAT % (b'{"content":"%s"}' % text, b"null") + b"\n\n")
    events.append(b"data: " + _CHAT % (b"{}", b'"stop"') + b"\n\n")
    usage = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}}'
    events.append(b"data: " + usage % (chunks, chunks + 5) + b"\n\n")
    _chat_streams[(chunks, size)] = events
    return events


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
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
        if getattr(self, "streaming", False):
            self.streaming = False
            STATS["open_streams"] -= 1

    def pause_writing(self) -> None:
        self.can_write.clear()
        STATS["bulk_paused"] = True

    def resume_writing(self) -> None:
        self.can_write.set()
        STATS["bulk_paused"] = False

    def on_message_begin(self) -> None:
        self.headers = {}
        self.body = bytearray()
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.url == b"/stats":
            body = json.dumps(STATS).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            return
        if b'"stream": true' not in self.body and b'"stream":true' not in self.body:
            if self.headers.get(b"x-bench-close") == b"1":
                self.transport.write(CLOSING_JSON_RESPONSE)
                self.transport.close()
                return
            self.transport.write(JSON_RESPONSE)
            return
        headers = self.headers
        if b"x-bench-bulk" in headers:
            self.task = asyncio.ensure_future(self.bulk(int(headers[b"x-bench-bulk"])))
            return
        chunks = int(headers.get(b"x-bench-chunks", DEFAULTS["chunks"]))
        interval = int(headers.get(b"x-bench-interval-ms", DEFAULTS["interval"])) / 1000
        if headers.get(b"x-bench-format", DEFAULTS["format"]) == b"chat":
            # Token-sized content: what a translating gateway handles per chunk.
            size = int(headers.get(b"x-bench-pad", b"4"))
            self.task = asyncio.ensure_future(self.chat(chat_events(chunks, size)))
            return
        pad = b"x" * int(headers.get(b"x-bench-pad", b"64"))
        self.task = asyncio.ensure_future(self.stream(chunks, interval, pad))

    async def chat(self, events: list[bytes]) -> None:
        STATS["streams"] += 1
        write = self.transport.write
        write(SSE_HEAD)
        for data in events:
            if self.closed:
                return
            write(chunk(data))
            if not self.can_write.is_set():
                await self.can_write.wait()
        write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async def stream(self, chunks: int, interval: float, pad: bytes) -> None:
        STATS["streams"] += 1
        STATS["open_streams"] += 1
        self.streaming = True
        write = self.transport.write
        write(SSE_HEAD)
        for seq in range(chunks):
            if self.closed:
                return
            write(chunk(event(seq, pad)))
            if interval:
                await asyncio.sleep(interval)
            elif not self.can_write.is_set():
                await self.can_write.wait()
        write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        if self.streaming:
            self.streaming = False
            STATS["open_streams"] -= 1

    async def bulk(self, total: int) -> None:
        self.transport.write(SSE_HEAD)
        block = chunk(b": " + b"x" * (16 * 1024 - 3) + b"\n")
        while total > 0 and not self.closed:
            await self.can_write.wait()
            if self.closed:
                return
            self.transport.write(block)
            STATS["bulk_bytes"] += len(block)
            total -= len(block)
        if not self.closed:
            self.transport.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark mock upstream")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--format", choices=["seq", "chat"], default="seq")
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--interval-ms", type=int, default=20)
    args = parser.parse_args()
    DEFAULTS.update(
        format=args.format.encode(),
        chunks=str(args.chunks).encode(),
        interval=str(args.interval_ms).encode(),
    )
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
