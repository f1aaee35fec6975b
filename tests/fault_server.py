"""An upstream that misbehaves on request, for the resilience tests; run as its own process.

Each request's ``x-fault`` header says what to do:

- absent: a normal 200 JSON completion (keep-alive);
- ``silent``: read the request, never answer;
- ``close``: close the connection without answering;
- ``close-after``: a normal 200 JSON completion with ``connection: close``, then close;
- ``stall``: send a 200 event-stream head and one event, then nothing;
- ``reset``: send a 200 event-stream head and one event, then reset the connection;
- ``garbage``: answer bytes that are not HTTP;
- ``extra``: a normal 200 JSON completion followed, in the same write, by the first line
  of a second response that nobody asked for;
- ``status:CODE[:RETRY_AFTER]``: answer CODE with a JSON error (and Retry-After);
- ``fail:KEY:N:CODE``: the first N requests carrying KEY get CODE, later ones a 200.

``GET /stats`` answers ``{"open": connections open now, "requests": {KEY: count}}``
(the stats connection itself excluded). Prints ``PORT <n>`` when listening.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httptools
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

OPEN = 0
REQUESTS: Counter[str] = Counter()
OK_BODY = json.dumps(
    {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "recovered"}}],
    }
).encode()
EVENT = b'data: {"choices": [{"index": 0, "delta": {"content": "tok"}}]}\n\n'


def response(status: int, body: bytes, *headers: bytes) -> bytes:
    head = b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        len(body),
    )
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


class FaultProtocol(Protocol):
    def connectionMade(self) -> None:
        global OPEN
        OPEN += 1
        self.parser = httptools.HttpRequestParser(self)
        self.headers: dict[str, str] = {}
        self.url = b""
        self.counted = True

    def connectionLost(self, reason: Any = None) -> None:
        global OPEN
        if self.counted:
            OPEN -= 1

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_begin(self) -> None:
        self.headers = {}
        self.url = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_message_complete(self) -> None:
        transport: Any = self.transport
        if self.url == b"/stats":
            global OPEN
            self.counted = False
            OPEN -= 1
            body = json.dumps({"open": OPEN, "requests": REQUESTS}).encode()
            transport.write(response(200, body, b"connection: close"))
            transport.loseConnection()
            return
        fault = self.headers.get("x-fault", "")
        kind, _, rest = fault.partition(":")
        REQUESTS[fault] += 1
        if kind == "silent":
            return
        if kind == "close":
            transport.loseConnection()
        elif kind == "close-after":
            transport.write(response(200, OK_BODY, b"connection: close"))
            transport.loseConnection()
        elif kind in ("stall", "reset"):
            transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
            )
            if kind == "reset":
                reactor.callLater(0.05, transport.abortConnection)
        elif kind == "extra":
            transport.write(response(200, OK_BODY) + b"HTTP/1.1 200 OK\r\n")
        elif kind == "garbage":
            transport.write(b"THIS IS NOT HTTP\r\n\r\n")
            transport.loseConnection()
        elif kind == "status":
            code, _, retry_after = rest.partition(":")
            extra = [b"retry-after: " + retry_after.encode()] if retry_after else []
            error = json.dumps(
                {"error": {"message": f"injected {code}", "type": "x", "code": None}}
            )
            transport.write(response(int(code), error.encode(), *extra))
        elif kind == "fail":
            key, count, code = rest.split(":")
            REQUESTS[key] += 1
            if REQUESTS[key] <= int(count):
                transport.write(response(int(code), b'{"error": {"message": "injected"}}'))
            else:
                transport.write(response(200, OK_BODY))
        else:
            transport.write(response(200, OK_BODY))


def main() -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(FaultProtocol), interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
