"""An OpenAI-compatible upstream for the integration tests, run as its own process.

Behaviour is chosen per request by a ``"test"`` object in the JSON body (the gateway
forwards body fields untouched; the OpenAI SDK sends it with ``extra_body``):

- ``{"key": K}``: remember the exact bytes of the response body under K
  (``GET /control/sent/K`` returns them), so a test can compare them with what its
  client received.
- ``{"chunks": N, "interval": S}``: stream N content chunks S seconds apart.
- ``{"hold": K}``: after the first chunk, send nothing more until
  ``POST /control/release/K``.
- ``{"head_delay": S}``: send nothing at all (not even the status line) for S seconds.
- ``{"bulk": B}``: offer B bytes of SSE comments as fast as the socket takes them,
  as a streaming producer, so backpressure from the reader pauses it.

``GET /control/stats`` reports open streams, bytes offered in bulk mode, and whether the
bulk writer is paused by backpressure. The process prints ``PORT <n>`` when listening.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IPushProducer
from twisted.web import http, server
from twisted.web.resource import Resource
from zope.interface import implementer

STATS: dict[str, Any] = {
    "open_streams": 0,
    "completed_streams": 0,
    "aborted_streams": 0,
    "bulk_bytes": 0,
    "bulk_paused": False,
    "requests": 0,
    "last_headers": {},
    "last_protocol": "",
    "last_body": "",
    "open_connections": 0,
    "accepted_connections": 0,
}
SENT: dict[str, bytes] = {}
HOLDS: dict[str, Any] = {}


class CountingChannel(http.HTTPChannel):
    def connectionMade(self) -> None:
        STATS["open_connections"] += 1
        STATS["accepted_connections"] += 1
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        STATS["open_connections"] -= 1
        super().connectionLost(reason)


def chunk_event(index: int, text: str, usage: bool = False) -> bytes:
    doc: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    if usage:  # as OpenAI does with stream_options.include_usage
        doc["usage"] = None
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def final_events(usage_of: int | None = None) -> list[bytes]:
    """The finish chunk and [DONE]; with *usage_of* (completion tokens), OpenAI's extra
    usage-only chunk between them (stream_options.include_usage)."""
    doc: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    events = [b"data: " + json.dumps(doc).encode() + b"\n\n"]
    if usage_of is not None:
        doc["usage"] = None
        events[0] = b"data: " + json.dumps(doc).encode() + b"\n\n"
        usage = {"prompt_tokens": 7, "completion_tokens": usage_of, "total_tokens": 7 + usage_of}
        last = {**doc, "choices": [], "usage": usage}
        events.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    return [*events, b"data: [DONE]\n\n"]


@implementer(IPushProducer)
class BulkProducer:
    """Writes SSE comment lines as long as the transport is not paused."""

    def __init__(self, request: server.Request, total: int) -> None:
        self.request = request
        self.remaining = total
        self.paused = False
        self.stopped = False
        self.block = b": " + b"x" * (16 * 1024 - 3) + b"\n"

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        while not self.paused and not self.stopped and self.remaining > 0:
            self.request.write(self.block)
            STATS["bulk_bytes"] += len(self.block)
            self.remaining -= len(self.block)
        if self.remaining <= 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.write(b"data: [DONE]\n\n")
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True
        STATS["bulk_paused"] = True

    def resumeProducing(self) -> None:
        self.paused = False
        STATS["bulk_paused"] = False
        reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.stopped = True


class ChatCompletions(Resource):
    isLeaf = True

    def render_POST(self, request: server.Request) -> Any:
        STATS["requests"] += 1
        raw = request.content.read()
        STATS["last_body"] = raw.decode("utf-8", "replace")
        STATS["last_protocol"] = request.clientproto.decode()
        STATS["last_headers"] = {
            k.decode().lower(): [v.decode() for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        body = json.loads(raw)
        opts = body.get("test") or {}
        key = opts.get("key")
        if not body.get("stream"):
            payload = json.dumps(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "plain answer"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                }
            ).encode()
            if key:
                SENT[key] = payload
            request.setHeader(b"content-type", b"application/json")
            return payload

        request.setHeader(b"content-type", b"text/event-stream")
        STATS["open_streams"] += 1
        state = {"done": False}

        def finished(ok: bool) -> None:
            if state["done"]:
                return
            state["done"] = True
            STATS["open_streams"] -= 1
            STATS["completed_streams" if ok else "aborted_streams"] += 1

        request.notifyFinish().addCallbacks(lambda _: finished(True), lambda _: finished(False))

        if "bulk" in opts:
            BulkProducer(request, int(opts["bulk"])).start()
            return server.NOT_DONE_YET

        count = int(opts.get("chunks", 5))
        interval = float(opts.get("interval", 0.0))
        usage = (body.get("stream_options") or {}).get("include_usage") is True
        events = [chunk_event(i, f"tok{i} ", usage) for i in range(count)]
        events += final_events(count if usage else None)
        sent = bytearray()

        def send(index: int) -> None:
            if state["done"]:
                return
            request.write(events[index])
            sent.extend(events[index])
            if index + 1 == len(events):
                if key:
                    SENT[key] = bytes(sent)
                request.finish()
                return
            if index == 0 and opts.get("hold"):
                HOLDS[opts["hold"]] = lambda: send(1)
                return
            if interval:
                reactor.callLater(interval, send, index + 1)
            else:
                send(index + 1)

        if opts.get("head_delay"):
            reactor.callLater(float(opts["head_delay"]), send, 0)
        else:
            send(0)
        return server.NOT_DONE_YET


class Control(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        parts = request.path.decode().strip("/").split("/")
        if parts[1] == "stats":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(STATS).encode()
        if parts[1] == "sent":
            return SENT.get(parts[2], b"")
        request.setResponseCode(404)
        return b"unknown control"

    def render_POST(self, request: server.Request) -> bytes:
        parts = request.path.decode().strip("/").split("/")
        if parts[1] == "release":
            hold = HOLDS.pop(parts[2], None)
            if hold is None:
                request.setResponseCode(404)
                return b"no such hold"
            reactor.callLater(0, hold)
            return b"released"
        request.setResponseCode(404)
        return b"unknown control"


def main() -> None:
    root = Resource()
    v1 = Resource()
    chat = Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", ChatCompletions())
    root.putChild(b"control", Control())
    site = server.Site(root)
    if len(sys.argv) > 2:  # CERT KEY: serve HTTPS with that certificate
        # Twisted's own protocol choice: HTTP/2 when ALPN agrees on h2, else HTTP/1.1.
        from twisted.internet.endpoints import serverFromString

        description = f"ssl:0:interface=127.0.0.1:certKey={sys.argv[1]}:privateKey={sys.argv[2]}"
        serverFromString(reactor, description).listen(site).addCallback(
            lambda port: print(f"PORT {port.getHost().port}", flush=True)
        )
    else:
        site.protocol = CountingChannel  # type: ignore[assignment]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
