"""A mock OpenAI upstream that answers every request after a fixed delay (asyncio +
llhttp, one process): the slow model behind Bifrost's published benchmark, whose mock
took about 1.5 s per request.

    python -m bench.delayed_upstream --delay-ms 1500 --port 0    # prints "PORT n"

Every request, whatever its path and body, is answered with bench/upstream.py's JSON
completion *delay* after its last byte came in; the connection stays open for the next.
Thousands of requests wait at once, each a timer on the loop, not a task.
"""

from __future__ import annotations

import argparse
import asyncio
import resource

import httptools

from bench.upstream import JSON_RESPONSE


class DelayedAnswers(asyncio.Protocol):
    """One client connection; each complete request is answered after the delay."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        asyncio.get_running_loop().call_later(self.delay, self.answer)

    def answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(JSON_RESPONSE)


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: DelayedAnswers(delay), "127.0.0.1", port, backlog=4096
    )
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="mock upstream answering after a delay")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=1500.0)
    args = parser.parse_args()
    # Every request in flight holds a connection: thousands at once.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(serve(args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
