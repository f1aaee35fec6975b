"""The weak-link benchmark's mock upstream: chat completions streamed at a model's pace.

    python -m bench.weak_upstream --listen 127.0.0.1 --listen 10.213.77.1 --tokens 300

``POST /v1/chat/completions`` with ``"stream": true`` answers the way OpenAI does with
``stream_options.include_usage``: after a pause (the model reading the prompt), a role
chunk, one ``chat.completion.chunk`` per token (a full chunk each, with the fields and
the ``obfuscation`` padding OpenAI sends), the finish chunk, the usage chunk and
``[DONE]``, at 40 to 60 tokens a second (``max_tokens`` in the request makes it shorter).
The last message's content names the stream: ``<anything unique>#<n>``. Its text, its
pace and its padding follow from ``n`` alone, so every row of the benchmark gets the
same streams (stream 0, 1, …) and a re-sent request the same answer; the whole name
keeps each request apart in the log.

The generation does not wait for the reader, as a provider's does not: what the socket
cannot take waits in this process. A stream whose connection closes stops generating.

``GET /log`` answers, for every stream name seen, how many requests asked for it and the
text that was generated for it: what the client's text is checked against, and how the
benchmark counts the requests a resumed stream cost upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
from dataclasses import dataclass, field

import httptools

#: The pause before the first token (the model reading the prompt), seconds.
FIRST_TOKEN_DELAY = 0.35
#: Pace of the tokens, per second (each stream draws its own from this range).
TOKENS_PER_SECOND = (40.0, 60.0)
WORDS = (
    "the",
    "gateway",
    "keeps",
    "a",
    "stream",
    "alive",
    "while",
    "the",
    "phone",
    "moves",
    "from",
    "wifi",
    "to",
    "a",
    "mobile",
    "network",
    "and",
    "back",
    "again",
    "so",
    "an",
    "answer",
    "that",
    "was",
    "half",
    "written",
    "is",
    "not",
    "lost",
    "when",
    "the",
    "train",
    "enters",
    "a",
    "tunnel",
    "or",
    "the",
    "radio",
    "sleeps",
    "for",
    "a",
    "moment",
    "between",
    "two",
    "cells",
    "of",
    "the",
    "carrier",
    "it",
    "uses",
    "tokens",
    "arrive",
    "one",
    "by",
    "one",
    "each",
    "in",
    "its",
    "own",
    "event",
    "with",
    "the",
    "same",
    "long",
    "header",
    "around",
    "a",
    "few",
    "letters",
    "of",
    "text",
    "which",
    "is",
    "what",
    "makes",
    "them",
    "cheap",
    "to",
    "compress",
    "and",
    "costly",
    "to",
    "send",
    "alone",
)
PUNCTUATION = (",", ".", "", "", "", "", "", "")
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@dataclass(frozen=True)
class Answer:
    """One stream's content: its tokens, its pace and the padding of each chunk."""

    tokens: tuple[str, ...]
    gaps: tuple[float, ...]
    paddings: tuple[str, ...]
    completion_id: str

    @classmethod
    def for_name(cls, seed: str, count: int) -> Answer:
        """The answer of *count* tokens a stream numbered *seed* gets, always the same."""
        rng = random.Random(seed)
        rate = rng.uniform(*TOKENS_PER_SECOND)
        tokens = []
        for i in range(count):
            word = rng.choice(WORDS)
            tokens.append((" " if i else "") + word + rng.choice(PUNCTUATION))
        letters = string.ascii_letters + string.digits
        return cls(
            tokens=tuple(tokens),
            # Each gap within ±30% of the stream's mean pace.
            gaps=tuple(rng.uniform(0.7, 1.3) / rate for _ in range(count)),
            paddings=tuple(
                "".join(rng.choices(letters, k=rng.randint(2, 12))) for _ in range(count + 3)
            ),
            completion_id="chatcmpl-" + "".join(rng.choices(letters, k=29)),
        )

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def event(answer: Answer, index: int, delta: dict[str, str | None], finish: str | None) -> bytes:
    """A full ``chat.completion.chunk`` event as OpenAI streams it."""
    chunk = {
        "id": answer.completion_id,
        "object": "chat.completion.chunk",
        "created": 1764000000,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_f9f4fb6dbf",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
        "obfuscation": answer.paddings[index],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def usage_event(answer: Answer) -> bytes:
    count = len(answer.tokens)
    chunk = {
        "id": answer.completion_id,
        "object": "chat.completion.chunk",
        "created": 1764000000,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_f9f4fb6dbf",
        "choices": [],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": count,
            "total_tokens": count + 19,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "obfuscation": answer.paddings[-1],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class Log:
    """What was asked for and generated, by stream name."""

    requests: dict[str, int] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> bytes:
        return json.dumps(
            {name: {"requests": n, "text": self.texts[name]} for name, n in self.requests.items()}
        ).encode()


class ChatUpstream(asyncio.Protocol):
    """One connection of a client (a proxy, or the benchmark's client directly)."""

    def __init__(self, log: Log, tokens: int) -> None:
        self.log = log
        self.token_count = tokens
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = bytearray()
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.url == b"/log":
            body = self.log.as_json()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            return
        try:
            request = json.loads(self.body)
            name = str(request["messages"][-1]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            self.transport.write(BAD_REQUEST)
            self.transport.close()
            return
        tokens = self.token_count
        if isinstance(request.get("max_tokens"), int):
            tokens = max(1, min(tokens, request["max_tokens"]))
        answer = Answer.for_name(name.rpartition("#")[2], tokens)
        self.log.requests[name] = self.log.requests.get(name, 0) + 1
        self.log.texts[name] = answer.text
        self.task = asyncio.ensure_future(self.stream(answer))

    async def stream(self, answer: Answer) -> None:
        write = self.transport.write
        write(SSE_HEAD)
        await asyncio.sleep(FIRST_TOKEN_DELAY)
        role = {"role": "assistant", "content": "", "refusal": None}
        write(chunked(event(answer, 0, role, None)))
        for index, token in enumerate(answer.tokens):
            if self.closed:
                return
            write(chunked(event(answer, index + 1, {"content": token}, None)))
            await asyncio.sleep(answer.gaps[index])
        if self.closed:
            return
        write(
            chunked(event(answer, len(answer.tokens) + 1, {}, "stop"))
            + chunked(usage_event(answer))
            + chunked(b"data: [DONE]\n\n")
            + b"0\r\n\r\n"
        )


async def serve(hosts: list[str], port: int, tokens: int) -> None:
    loop = asyncio.get_running_loop()
    log = Log()
    servers = []
    for host in hosts:  # the same port on every address: the first one's
        servers.append(
            await loop.create_server(lambda: ChatUpstream(log, tokens), host, port, backlog=1024)
        )
        port = servers[0].sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--listen", action="append", required=True, help="an address to listen on (repeatable)"
    )
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--tokens", type=int, default=300, help="content tokens per stream")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.port, args.tokens))


if __name__ == "__main__":
    main()
