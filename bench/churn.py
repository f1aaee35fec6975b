"""Connection churn against one proxy, for the soak (asyncio + llhttp, one process).

Each simulated client repeatedly picks one of these, by weight, on a new connection:

- ``streams``: one to three streams on a keep-alive connection, then it closes while idle;
- ``long_session``: streams back to back on one connection for 10 to 40 s, then it
  closes while idle — connections that live long enough for Python's collector to count
  them among its older objects, as a client that stays a while does;
- ``hang_up_mid_stream``: a stream abandoned after its first events (half by FIN, half
  by RST);
- ``hang_up_mid_request``: the head and half the body, then the connection closes;
- ``connection_close``: one non-streaming request with ``Connection: close``;
- ``upstream_closes``: two non-streaming requests whose upstream connection the upstream
  closes after answering (``x-bench-close``), so the proxy opens new ones.

With ``--h2load``, h2load also opens three HTTP/2 (h2c) connections every 15 s, runs 60
short streams on them and closes them. Every response is checked (status, a complete
event stream ending in ``[DONE]``); anything else, or a client that waits more than
30 s, is an error. Prints one JSON object of counts when the time is up.

    python -m bench.churn --port 8801 --seconds 60 --clients 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import httptools

STREAM_BODY = b'{"model":"bench","stream":true,"messages":[{"role":"user","content":"hi"}]}'
PLAIN_BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
#: Actions and their weights.
ACTIONS = {
    "streams": 30,
    "long_session": 10,
    "hang_up_mid_stream": 10,
    "hang_up_mid_request": 10,
    "connection_close": 20,
    "upstream_closes": 20,
}
TIMEOUT = 30.0


def request(body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer sk-client\r\n"
        b"%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body)
    )


STREAM = request(STREAM_BODY, b"x-bench-chunks: 40", b"x-bench-interval-ms: 25", b"x-bench-pad: 64")
LONG_STREAM = request(STREAM_BODY, b"x-bench-chunks: 400", b"x-bench-interval-ms: 25")
PLAIN = request(PLAIN_BODY)
PLAIN_CLOSE = request(PLAIN_BODY, b"Connection: close")
UPSTREAM_CLOSES = request(PLAIN_BODY, b"x-bench-close: 1")


@dataclass
class Counts:
    actions: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(what)


class Response:
    """One response, parsed by llhttp as it arrives."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body = bytearray()
        self.complete = False
        self.keep_alive = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, events: int = 0
) -> Response:
    """Send *data*; read the response to its end (or, with *events*, that many events)."""
    writer.write(data)
    response = Response()
    while not response.complete:
        piece = await reader.read(65536)
        if not piece:
            raise ConnectionError(f"closed mid-response (status {response.status})")
        response.parser.feed_data(piece)
        if events and response.body.count(b"\n\n") >= events:
            break
    return response


def _expect(response: Response, counts: Counts, what: str, *, stream: bool) -> None:
    counts.requests += 1
    if response.status != 200:
        counts.error(f"{what}: status {response.status}")
    elif stream and not response.body.endswith(b"data: [DONE]\n\n"):
        counts.error(f"{what}: the event stream did not end with [DONE]")
    elif not stream and b'"chat.completion"' not in response.body:
        counts.error(f"{what}: not a completion: {bytes(response.body[:80])!r}")


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def act(name: str, port: int, counts: Counts) -> None:
    reader, writer = await _connect(port)
    try:
        if name == "streams":
            for _ in range(random.randint(1, 3)):
                _expect(await exchange(reader, writer, STREAM), counts, name, stream=True)
        elif name == "long_session":
            until = time.monotonic() + random.uniform(10, 40)
            while time.monotonic() < until:
                _expect(await exchange(reader, writer, STREAM), counts, name, stream=True)
        elif name == "hang_up_mid_stream":
            response = await exchange(reader, writer, LONG_STREAM, events=3)
            counts.requests += 1
            if response.status != 200:
                counts.error(f"{name}: status {response.status}")
            if random.random() < 0.5:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        elif name == "hang_up_mid_request":
            writer.write(STREAM[: len(STREAM) - len(STREAM_BODY) // 2])
            await writer.drain()
            await asyncio.sleep(0.02)
        elif name == "connection_close":
            response = await exchange(reader, writer, PLAIN_CLOSE)
            _expect(response, counts, name, stream=False)
            if response.keep_alive:
                counts.error(f"{name}: the proxy kept the connection open")
            elif await reader.read(1) != b"":
                counts.error(f"{name}: bytes after a Connection: close response")
        elif name == "upstream_closes":
            for _ in range(2):
                _expect(await exchange(reader, writer, UPSTREAM_CLOSES), counts, name, stream=False)
    finally:
        writer.close()


async def client(port: int, deadline: float, counts: Counts) -> None:
    names, weights = list(ACTIONS), list(ACTIONS.values())
    while time.monotonic() < deadline:
        name = random.choices(names, weights)[0]
        counts.actions[name] += 1
        try:
            await asyncio.wait_for(act(name, port, counts), TIMEOUT + 40)
        except TimeoutError:
            counts.error(f"{name}: no answer within {TIMEOUT:g}s")
        except (OSError, httptools.HttpParserError) as e:
            counts.error(f"{name}: {type(e).__name__}: {e}")


H2LOAD_DONE = re.compile(
    r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)


async def http2_churn(port: int, deadline: float, counts: Counts) -> None:
    """h2load every 15 s: three h2c connections, 60 short streams, then they close."""
    with tempfile.NamedTemporaryFile(suffix=".json") as body:
        body.write(STREAM_BODY)
        body.flush()
        while time.monotonic() + 15 < deadline:
            await _h2load(port, body.name, counts)
            await asyncio.sleep(15)


async def _h2load(port: int, body: str, counts: Counts) -> None:
    process = await asyncio.create_subprocess_exec(
        "h2load", "-n60", "-c3", "-m10", "-d", body,
        "-H", "content-type: application/json",
        "-H", "x-bench-chunks: 10", "-H", "x-bench-interval-ms: 20",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    counts.actions["http2"] += 1
    done = H2LOAD_DONE.search(out.decode())
    if done is None:
        counts.error(f"http2: h2load said {out.decode()[-200:]!r}")
        return
    counts.requests += int(done.group(2))
    failed = 60 - int(done.group(2))
    if failed:
        counts.error(f"http2: {failed} of 60 streams failed")


async def run(port: int, seconds: float, clients: int, h2load: bool) -> Counts:
    counts = Counts()
    deadline = time.monotonic() + seconds
    tasks = [client(port, deadline, counts) for _ in range(clients)]
    if h2load:
        tasks.append(http2_churn(port, deadline, counts))
    await asyncio.gather(*tasks)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--h2load", action="store_true", help="add HTTP/2 (h2c) churn")
    args = parser.parse_args()
    counts = asyncio.run(run(args.port, args.seconds, args.clients, args.h2load))
    print(
        json.dumps(
            {
                "actions": dict(counts.actions),
                "requests": counts.requests,
                "errors": counts.errors,
                "error_samples": counts.error_samples,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
