"""Would gzip make event streams smaller enough to offer? Measured per event, as a
gateway would have to send it: deflate with a sync flush after every event (so each
event reaches the client at once), against the plain bytes.

    .venv-bench/bin/python -m bench.sse_gzip [FILE ...]

Streams: the given files (an event stream each), else made up as the benchmark's
upstream makes them: chat chunks of one token each, with ids added as a resumable
route adds them, in the shapes of OpenAI (Chat Completions), Anthropic (Messages) and
OpenAI's Responses API.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from pathlib import Path

WORDS = [
    "the",
    "gateway",
    "keeps",
    "the",
    "stream",
    "alive",
    "while",
    "the",
    "phone",
    "moves",
    "from",
    "wifi",
    "to",
    "4g",
]


def chat_stream(tokens: int) -> list[bytes]:
    events = []
    for n in range(tokens):
        chunk = {
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion.chunk",
            "created": 1741569952,
            "model": "gpt-4o-2024-08-06",
            "service_tier": "default",
            "system_fingerprint": "fp_f9f4fb6dbf",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": " " + WORDS[n % len(WORDS)]},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            "usage": None,
            "obfuscation": "Xq3",
        }
        events.append(
            b"data: "
            + json.dumps(chunk, separators=(",", ":")).encode()
            + b"\nid: fps_0123456789abcdef01234567.%d\n\n" % (n + 1)
        )
    return events


def messages_stream(tokens: int) -> list[bytes]:
    return [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" %s"}}\nid: fps_0123456789abcdef01234567.%d\n\n'
        % (WORDS[n % len(WORDS)].encode(), n + 1)
        for n in range(tokens)
    ]


def responses_stream(tokens: int) -> list[bytes]:
    return [
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":"msg_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","output_index":0,"content_index":0,"logprobs":[],"sequence_number":%d,"delta":" %s"}\nid: fps_0123456789abcdef01234567.%d\n\n'
        % (n + 4, WORDS[n % len(WORDS)].encode(), n + 1)
        for n in range(tokens)
    ]


def measure(name: str, events: list[bytes]) -> str:
    raw = sum(len(e) for e in events)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing
    started = time.perf_counter()
    sent = 0
    for event in events:
        sent += len(compressor.compress(event)) + len(compressor.flush(zlib.Z_SYNC_FLUSH))
    per_event = (time.perf_counter() - started) / len(events) * 1e6
    return (
        f"| {name} | {len(events)} | {raw / len(events):.0f} | {sent / len(events):.0f} | "
        f"{100 * (1 - sent / raw):.0f}% | {per_event:.1f} |"
    )


def main() -> None:
    print(
        "| stream | events | bytes per event | gzipped, flushed per event | saved | CPU µs per event |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    if len(sys.argv) > 1:
        for path in sys.argv[1:]:
            text = Path(path).read_bytes()
            events = [e + b"\n\n" for e in text.split(b"\n\n") if e.strip()]
            print(measure(Path(path).name, events))
        return
    print(measure("Chat Completions chunks", chat_stream(500)))
    print(measure("Messages text deltas", messages_stream(500)))
    print(measure("Responses text deltas", responses_stream(500)))


if __name__ == "__main__":
    main()
