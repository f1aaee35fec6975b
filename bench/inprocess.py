"""The Python-level cost of the data path, without sockets or a reactor loop.

    .venv/bin/python -m bench.inprocess            # µs per request and per chunk
    .venv/bin/python -m bench.inprocess --profile  # and a cProfile of each

The gateway's own protocol objects (client side and upstream side) run on
StringTransports with a clock that does nothing, on conf/bench.yaml (or the config named by
FILTERPROXY_BENCH_CONFIG, to compare chains). The upstream's answer carries a usage object,
as providers' do. What this leaves out — system calls, the reactor's dispatch — is what
`make bench` adds on top; the difference between the two says where time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from pathlib import Path
from typing import Any

from twisted.internet.testing import StringTransport

from filterproxy.downstream.server import GatewayServerFactory
from filterproxy.extensions.builtin import load_config
from filterproxy.server.service import Gateway
from filterproxy.upstream.connection import HTTP11ClientConnection, State

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY = b'{"model":"bench","stream":true,"messages":[]}'
RESPONSE_BODY = b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
EVENT = b'data: {"seq":1,"t":1795512018755000000,"pad":"' + b"x" * 64 + b'"}\n\n'


def request(body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            len(body),
            body,
        )
    )


class _Call:
    """A delayed call that never fires (timers are not what is measured here)."""

    def __init__(self) -> None:
        self._active = True

    def cancel(self) -> None:
        self._active = False

    def active(self) -> bool:
        return self._active

    def reset(self, seconds: float) -> None:
        pass


class _Clock:
    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> _Call:
        return _Call()

    def seconds(self) -> float:
        return time.monotonic()


class Rig:
    """One client connection and one pooled upstream connection, wired together."""

    def __init__(self) -> None:
        os.environ.setdefault("FILTERPROXY_UPSTREAM", "http://127.0.0.1:9101")
        config = os.environ.get("FILTERPROXY_BENCH_CONFIG", str(ROOT / "conf" / "bench.yaml"))
        self.gateway = Gateway(load_config(config), _Clock())
        pool = self.gateway.clusters["upstream"].endpoints[0].pool
        self.upstream = HTTP11ClientConnection(pool)
        self.upstream_transport = StringTransport()
        self.upstream.makeConnection(self.upstream_transport)
        pool.open_count = 1
        pool.idle.append(self.upstream)  # the pool hands it out and takes it back each time
        self.client_transport = StringTransport()
        # The listener's own factory: its protocol selector hands the transport to the
        # HTTP/1.1 connection on the first bytes, which then get every later read.
        selector = GatewayServerFactory(self.gateway).buildProtocol(None)
        selector.makeConnection(self.client_transport)
        self.client: Any = selector
        self.request = request(BODY)
        self.response = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (
                len(RESPONSE_BODY),
                RESPONSE_BODY,
            )
        )

    def one_request(self) -> None:
        self.client.dataReceived(self.request)
        self.client = self.client_transport.protocol  # the HTTP/1.1 connection from now on
        self.upstream.dataReceived(self.response)
        self.client_transport.clear()
        self.upstream_transport.clear()

    def start_stream(self) -> None:
        self.client.dataReceived(request(STREAM_BODY))
        self.client = self.client_transport.protocol
        assert self.upstream.state is State.BUSY
        self.upstream.dataReceived(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        self.chunk = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)

    def one_chunk(self) -> None:
        self.upstream.dataReceived(self.chunk)
        self.client_transport.clear()


class H2Rig(Rig):
    """The same, with the client speaking HTTP/2 (prior knowledge): its frames for every
    request are made beforehand (hpack and hyperframe, as a client that opened every
    window wide at the start sends them), so the loop measures only the gateway reading
    them and answering."""

    def __init__(self, count: int) -> None:
        from hpack import Encoder
        from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame, WindowUpdateFrame

        super().__init__()
        settings = SettingsFrame(0)
        settings.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1}
        window = WindowUpdateFrame(0)
        window.window_increment = 2**31 - 1 - 65535
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings.serialize() + window.serialize()
        self.client.dataReceived(preface)
        self.client = self.client_transport.protocol  # the HTTP/2 connection
        self.client_transport.clear()
        encoder = Encoder()

        def frames(stream_id: int, body: bytes) -> bytes:
            headers = HeadersFrame(stream_id)
            headers.data = encoder.encode(
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":authority", "bench"),
                    (":path", "/v1/chat/completions"),
                    ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                ]
            )
            headers.flags.add("END_HEADERS")
            data = DataFrame(stream_id)
            data.data = body
            data.flags.add("END_STREAM")
            return headers.serialize() + data.serialize()

        self.requests = iter([frames(1 + 2 * n, BODY) for n in range(count)])
        self.stream_request = frames(1 + 2 * count, STREAM_BODY)

    def one_request(self) -> None:
        self.client.dataReceived(next(self.requests))
        self.upstream.dataReceived(self.response)
        self.client_transport.clear()
        self.upstream_transport.clear()

    def start_stream(self) -> None:
        self.client.dataReceived(self.stream_request)
        assert self.upstream.state is State.BUSY
        self.upstream.dataReceived(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        self.chunk = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)


def measure(label: str, fn: Any, count: int, profile: bool) -> None:
    for _ in range(count // 10):
        fn()
    started = time.perf_counter()
    for _ in range(count):
        fn()
    print(f"{label}: {(time.perf_counter() - started) / count * 1e6:.2f} µs")
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [fn() for _ in range(count // 4)])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--http2", action="store_true", help="the client speaks HTTP/2")
    args = parser.parse_args()
    requests = 20000
    rig = H2Rig(requests + requests // 10 + requests // 4 + 1) if args.http2 else Rig()
    measure("per non-streaming request", rig.one_request, requests, args.profile)
    rig.start_stream()
    measure("per streamed chunk", rig.one_chunk, 200000, args.profile)


if __name__ == "__main__":
    main()
