"""The benchmark's mock OpenAI upstream over HTTP/2: cleartext with prior knowledge (h2c),
asyncio and the `h2` library, one process, one core.

    python -m bench.h2_upstream --port 0        # prints "PORT n" once it listens

It answers what bench/upstream.py answers, with the same bytes in the response bodies:
``POST /v1/chat/completions`` with ``"stream": true`` gets an event stream of
``x-bench-chunks`` events (default 50), ``x-bench-interval-ms`` apart (default 20; 0: as
fast as the flow-control windows allow), each with ``x-bench-pad`` bytes of padding
(default 64) and its send time, then ``data: [DONE]``; with ``x-bench-format: chat``, the
chat completion chunks of bench/upstream.py's `chat_events`. Without ``stream`` the answer
is bench/upstream.py's small JSON completion. The load generators check these events byte
for byte, as they do the HTTP/1.1 mock's. Not served here: ``x-bench-bulk``,
``x-bench-close`` and ``GET /stats`` (the scenarios that use them run on the HTTP/1.1 mock).

A connection's output is written once per turn of the event loop, whatever number of its
streams sent something in that turn: one write for the events of every stream whose timer
fired together, as an HTTP/2 server that multiplexes does, rather than a write per event.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from bench.upstream import COMPLETION, chat_events, event

#: Streams a proxy may open on one connection: more than the benchmark's 200 at once, so
#: each proxy carries them all on one connection.
MAX_CONCURRENT_STREAMS = 1000
#: Each request stream's receive window (request bodies are small; it is acknowledged as
#: it is read anyway).
REQUEST_WINDOW = 1024 * 1024

JSON_HEAD = [
    (b":status", b"200"),
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(COMPLETION)),
]
SSE_HEAD = [(b":status", b"200"), (b"content-type", b"text/event-stream")]
DONE = b"data: [DONE]\n\n"
NOT_FOUND = [(b":status", b"404"), (b"content-length", b"0")]


@dataclass(frozen=True)
class StreamDefaults:
    """The stream's shape when the request's ``x-bench-*`` headers do not say (as
    bench/upstream.py's defaults)."""

    chunks: int = 50
    interval_ms: int = 20


class Request:
    """One request stream being read: its headers, then its body."""

    __slots__ = ("body", "headers")

    def __init__(self, headers: dict[bytes, bytes]) -> None:
        self.headers = headers
        self.body = bytearray()


class H2Upstream(asyncio.Protocol):
    """One h2c connection from a proxy; each of its streams is answered when its request
    has ended.

    A streamed answer is a task per stream; it stops at the next event once the stream
    is reset or the connection lost (`open_streams` no longer holds it).
    """

    def __init__(self, defaults: StreamDefaults) -> None:
        self.defaults = defaults
        self.h2 = H2Connection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                # The mock's own CPU is what matters here; the proxies send valid headers.
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                SettingCodes.INITIAL_WINDOW_SIZE: REQUEST_WINDOW,
            },
        )
        self.transport: asyncio.Transport | None = None
        #: Requests still being read, by stream id.
        self.requests: dict[int, Request] = {}
        #: Streams being answered (an answer's task stops once its stream leaves).
        self.open_streams: set[int] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        #: Set when the peer opens a flow-control window (a sender waiting on one re-checks).
        self.window_opened = asyncio.Event()
        self.flush_scheduled = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.open_streams.clear()
        self.window_opened.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, RequestReceived):
                self.requests[ev.stream_id] = Request(dict(ev.headers))
            elif isinstance(ev, DataReceived):
                request = self.requests.get(ev.stream_id)
                if request is not None:
                    request.body += ev.data
                self.h2.acknowledge_received_data(
                    ev.flow_controlled_length,
                    ev.stream_id,
                )
            elif isinstance(ev, StreamEnded):
                request = self.requests.pop(ev.stream_id, None)
                if request is not None:
                    self.answer(ev.stream_id, request)
            elif isinstance(ev, StreamReset):
                self.requests.pop(ev.stream_id, None)
                self.open_streams.discard(ev.stream_id)
            elif isinstance(ev, WindowUpdated | RemoteSettingsChanged):
                self.window_opened.set()
            elif isinstance(ev, ConnectionTerminated):
                self.open_streams.clear()
                self.window_opened.set()
        self.flush_soon()

    def answer(self, stream_id: int, request: Request) -> None:
        """Answer the ended request on *stream_id* as bench/upstream.py would; not if the
        proxy has reset it since (in the same read: h2 has closed it already)."""
        try:
            self.respond(stream_id, request)
        except ProtocolError:  # the stream or the whole connection closed
            self.open_streams.discard(stream_id)

    def respond(self, stream_id: int, request: Request) -> None:
        headers = request.headers
        if headers.get(b":path") != b"/v1/chat/completions":
            self.h2.send_headers(stream_id, NOT_FOUND, end_stream=True)
            return
        body = bytes(request.body)
        if b'"stream": true' not in body and b'"stream":true' not in body:
            self.h2.send_headers(stream_id, JSON_HEAD)
            self.h2.send_data(stream_id, COMPLETION, end_stream=True)
            return
        chunks = int(headers.get(b"x-bench-chunks", b"%d" % self.defaults.chunks))
        self.h2.send_headers(stream_id, SSE_HEAD)
        self.open_streams.add(stream_id)
        if headers.get(b"x-bench-format") == b"chat":
            size = int(headers.get(b"x-bench-pad", b"4"))
            self.start(self.chat(stream_id, chat_events(chunks, size)))
            return
        interval_ms = headers.get(b"x-bench-interval-ms", b"%d" % self.defaults.interval_ms)
        pad = b"x" * int(headers.get(b"x-bench-pad", b"64"))
        self.start(self.stream(stream_id, chunks, int(interval_ms) / 1000, pad))

    def start(self, answer: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(answer)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stream(self, stream_id: int, chunks: int, interval: float, pad: bytes) -> None:
        """*chunks* timed events, *interval* seconds apart, then ``[DONE]``."""
        for seq in range(chunks):
            if not await self.send(stream_id, event(seq, pad)):
                return
            if interval:
                await asyncio.sleep(interval)
        await self.send(stream_id, DONE, end_stream=True)

    async def chat(self, stream_id: int, events: list[bytes]) -> None:
        """A chat completion stream, as fast as the windows allow, then ``[DONE]``."""
        for data in events:
            if not await self.send(stream_id, data):
                return
        await self.send(stream_id, DONE, end_stream=True)

    async def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """*data* on *stream_id* once the windows take it; whether the stream is still
        open (if not, nothing was sent)."""
        h2 = self.h2
        while stream_id in self.open_streams and h2.local_flow_control_window(stream_id) < len(
            data
        ):
            self.window_opened.clear()
            await self.window_opened.wait()
        if stream_id not in self.open_streams:
            return False
        try:
            h2.send_data(stream_id, data, end_stream=end_stream)
        except ProtocolError:  # the stream or the whole connection closed
            self.open_streams.discard(stream_id)
            return False
        if end_stream:
            self.open_streams.discard(stream_id)
        self.flush_soon()
        return True

    def flush_soon(self) -> None:
        """Write what the connection has to send at the end of this turn of the loop."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)


async def serve(port: int, defaults: StreamDefaults) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: H2Upstream(defaults), "127.0.0.1", port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark mock upstream, HTTP/2 (h2c)")
    parser.add_argument("--port", type=int, default=9102)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--interval-ms", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(serve(args.port, StreamDefaults(args.chunks, args.interval_ms)))


if __name__ == "__main__":
    main()
