"""Load generator for streamed chat completions (asyncio + llhttp, one core).

Each simulated user holds one keep-alive connection and requests streams back to back
until the deadline. Every event is checked byte for byte against what the benchmark
upstream says it sent (it embeds the send time, so the exact bytes can be rebuilt), and
its one-way latency is taken from that send time.

A proxy that is told where to forward by the request itself (Portkey's gateway) gets the
headers it needs from *headers*: they are added to every request, nothing else changes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httptools

EVENT = re.compile(rb'data: \{"seq":(\d+),"t":(\d+),"pad":"(x*)"\}')


@dataclass
class StreamStats:
    streams: int = 0
    chunks: int = 0
    errors: int = 0
    mismatches: int = 0
    ttfb_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)


@dataclass(frozen=True)
class StreamShape:
    chunks: int = 50
    interval_ms: int = 20
    pad: int = 64

    def request(self, host: str, headers: Mapping[str, str] | None = None) -> bytes:
        """The request for a stream of this shape, with *headers* added."""
        body = (
            b'{"model": "bench", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
        )
        return (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-client\r\nx-bench-chunks: %d\r\nx-bench-interval-ms: %d\r\n"
            b"x-bench-pad: %d\r\n%sContent-Length: %d\r\n\r\n%s"
            % (
                host.encode(),
                self.chunks,
                self.interval_ms,
                self.pad,
                header_lines(headers),
                len(body),
                body,
            )
        )


def header_lines(headers: Mapping[str, str] | None) -> bytes:
    """*headers* as HTTP/1.1 header lines, each ending in CRLF."""
    return b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in (headers or {}).items())


class StreamUser(asyncio.Protocol):
    """One connection requesting streams until the deadline."""

    def __init__(
        self,
        shape: StreamShape,
        stats: StreamStats,
        deadline: float,
        host: str,
        measure_from: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.shape = shape
        self.stats = stats
        self.deadline = deadline
        self.measure_from = measure_from
        self.request = shape.request(host, headers)
        self.done = asyncio.get_running_loop().create_future()
        self.pad = b"x" * shape.pad

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self._start()

    def _start(self) -> None:
        if time.monotonic() >= self.deadline:
            self.transport.close()
            return
        self.parser = httptools.HttpResponseParser(self)
        self.buffer = b""
        self.expected_seq = 0
        self.sent_at = time.monotonic()
        self.first = True
        self.finished = False
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.stats.error(f"bad HTTP: {e}")
            self.transport.close()
            return
        if self.finished:
            self._start()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status != 200:
            self.stats.error(f"status {status}")

    def on_body(self, body: bytes) -> None:
        now_ns = time.time_ns()
        measured = time.monotonic() >= self.measure_from
        if self.first:
            self.first = False
            if measured:
                self.stats.ttfb_ms.append((time.monotonic() - self.sent_at) * 1000)
        self.buffer += body
        while True:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                return
            raw, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if raw == b"data: [DONE]":
                if self.expected_seq != self.shape.chunks:
                    self.stats.error(
                        f"stream ended after {self.expected_seq} of {self.shape.chunks} events"
                    )
                continue
            match = EVENT.fullmatch(raw)
            if (
                match is None
                or int(match.group(1)) != self.expected_seq
                or match.group(3) != self.pad
            ):
                self.stats.mismatches += 1
                continue
            self.expected_seq += 1
            if measured:
                self.stats.chunks += 1
                self.stats.latency_ms.append((now_ns - int(match.group(2))) / 1e6)

    def on_message_complete(self) -> None:
        if time.monotonic() >= self.measure_from:
            self.stats.streams += 1
        self.finished = True

    def connection_lost(self, exc: Exception | None) -> None:
        if time.monotonic() < self.deadline - 0.5:
            self.stats.error(f"connection lost early: {exc}")
        if not self.done.done():
            self.done.set_result(None)


async def run_streams(
    port: int,
    users: int,
    shape: StreamShape,
    duration: float,
    warmup: float = 1.0,
    headers: Mapping[str, str] | None = None,
) -> StreamStats:
    """*users* concurrent users streaming for *duration* seconds (after *warmup*), each
    request with *headers* added."""
    loop = asyncio.get_running_loop()
    stats = StreamStats()
    start = time.monotonic()
    deadline = start + warmup + duration
    measure_from = start + warmup
    protocols = []
    for i in range(users):
        _, protocol = await loop.create_connection(
            lambda: StreamUser(shape, stats, deadline, "bench", measure_from, headers),
            "127.0.0.1",
            port,
        )
        protocols.append(protocol)
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # do not make every stream start in the same tick
    await asyncio.wait([p.done for p in protocols], timeout=warmup + duration + 30)
    return stats


class HoldingUser(asyncio.Protocol):
    """Opens one long stream and keeps it open without finishing it."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.started = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.started.done() and b"data: " in data:
            self.started.set_result(None)


async def hold_streams(
    port: int,
    count: int,
    seconds: float,
    sample: object,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Open *count* slow streams at once (each request with *headers* added) and call
    *sample()* while all are open."""
    loop = asyncio.get_running_loop()
    shape = StreamShape(chunks=int(seconds) + 30, interval_ms=1000, pad=16)
    users = []
    for i in range(count):
        _, user = await loop.create_connection(
            lambda: HoldingUser(shape.request("bench", headers)), "127.0.0.1", port
        )
        users.append(user)
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*(u.started for u in users)), timeout=60)
    await asyncio.sleep(2)
    sample()  # type: ignore[operator]
    for user in users:
        user.transport.abort()
