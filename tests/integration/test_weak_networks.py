"""Event streams for weak networks, end to end: the official ``openai`` and ``anthropic``
SDKs reading coalesced, compressed streams (``Save-Data: on``, ``x-stream-coalesce``);
a real browser (Debian's chromium, headless) that reads a stream with ``fetch``, loses
it, and resumes it by sending the POST again with ``Last-Event-ID``; a link that drops
every second or so; and a reader that stops reading for a while on a plain route.

The upstream is `PlayedUpstream`, in this process: each model name plays a stream of
many small deltas with small pauses between them — a model answering token by token —
so that several fall in one coalescing window, and it keeps the exact bytes it sent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses import ResponseStreamState

from filterproxy.http.sse import SSEDecoder, SSEEvent
from tests.integration.conftest import Gateway, start_gateway, wait_until

#: One pause of the played streams: a model writing a token every 10 ms.
GAP = 0.01
#: The words of the answers: each token numbered (a token lost, doubled or out of order
#: shows), some of them more than one UTF-8 byte a character.
WORDS = ("weak", "naïve", "東京", "link", "☕")
TOKENS = [f" {WORDS[n % len(WORDS)]}{n:02d}" for n in range(60)]
TEXT = "".join(TOKENS)
ARGUMENTS = json.dumps(
    {"city": "Zürich", "days": 3, "units": "metric", "note": "bring an umbrella"},
    ensure_ascii=False,
)
THINKING = [f" step{n:02d}" for n in range(30)]
WEATHER_OPENAI: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
WEATHER_ANTHROPIC: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CHAT: Any = [{"role": "user", "content": "the weather, please"}]
SAVE_DATA = {"Save-Data": "on"}
#: What a reference run sends the upstream directly: the same stream, without the pauses.
AT_ONCE = "x-played-at-once"

#: The delivery filter's counters: streams coalesced, bytes as they came and as sent.
COALESCED = "filterproxy_delivery_coalesced_streams_total"
BYTES = "filterproxy_delivery_bytes_total"

#: A played stream: (seconds to wait before the piece, the piece).
Play = list[tuple[float, bytes]]


# -- the upstream ---------------------------------------------------------------------------


@dataclass
class Played:
    """One request to the `PlayedUpstream`, and the exact bytes of its answer."""

    path: str
    model: str
    headers: dict[str, str]
    sent: bytearray = field(default_factory=bytearray)
    finished: bool = False


class PlayedUpstream:
    """A provider stand-in in the tests' process: each POST is answered, chunked, with
    the event stream `play` set for its body's model (whatever the path: Chat
    Completions, Messages and Responses alike), each piece written after its pause;
    every request is kept, with what was sent for it."""

    def __init__(self) -> None:
        self.plays: dict[str, Play] = {}
        self.requests: list[Played] = []
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                upstream.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def play(self, model: str, pieces: Play) -> None:
        self.plays[model] = pieces

    def requests_for(self, model: str) -> list[Played]:
        """The requests that came for *model* through the gateway (not the reference
        runs that asked for the stream at once)."""
        with self.lock:
            return [r for r in self.requests if r.model == model and AT_ONCE not in r.headers]

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["content-length"])))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = Played(handler.path, str(body.get("model")), headers)
        with self.lock:
            self.requests.append(record)
        pieces = self.plays.get(record.model)
        if pieces is None:
            handler.send_error(404, f"no stream is played for {record.model}")
            return
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        try:
            for pause, piece in pieces:
                if pause and AT_ONCE not in headers:
                    time.sleep(pause)
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                record.sent += piece
            handler.wfile.write(b"0\r\n\r\n")
            record.finished = True
        except OSError:
            handler.close_connection = True  # the gateway went away

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sse(document: dict[str, Any], event: str | None = None) -> bytes:
    named = f"event: {event}\n" if event else ""
    return f"{named}data: {json.dumps(document, ensure_ascii=False)}\n\n".encode()


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return sse(
        {
            "id": "chatcmpl-weak",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "played",
            "choices": [choice],
        }
    )


def chat_play(tokens: list[str], arguments: str | None = None, gap: float = GAP) -> Play:
    """A Chat Completions stream: a role chunk, a content delta per token, then, with
    *arguments*, a call of get_weather whose arguments come three characters a chunk;
    the finish, the usage, ``[DONE]``."""
    play: Play = [(0.0, chat_chunk({"role": "assistant", "content": ""}))]
    play += [(gap, chat_chunk({"content": token})) for token in tokens]
    if arguments is not None:
        head = {"index": 0, "id": "call_weak1", "type": "function"}
        play.append(
            (gap, chat_chunk({"tool_calls": [{**head, "function": {"name": "get_weather"}}]}))
        )
        for at in range(0, len(arguments), 3):
            piece = {"index": 0, "function": {"arguments": arguments[at : at + 3]}}
            play.append((gap, chat_chunk({"tool_calls": [piece]})))
    usage = {"prompt_tokens": 9, "completion_tokens": len(tokens), "total_tokens": 9 + len(tokens)}
    last = {
        "id": "chatcmpl-weak",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "played",
    }
    play += [
        (gap, chat_chunk({}, "tool_calls" if arguments is not None else "stop")),
        (0.0, sse({**last, "choices": [], "usage": usage})),
        (0.0, b"data: [DONE]\n\n"),
    ]
    return play


def messages_play() -> Play:
    """A Messages stream: thinking (and its signature), text, and a tool_use whose input
    comes three characters a delta, each delta its own event."""

    def block_delta(index: int, delta: dict[str, Any]) -> tuple[float, bytes]:
        document = {"type": "content_block_delta", "index": index, "delta": delta}
        return GAP, sse(document, "content_block_delta")

    def block(index: int, start: dict[str, Any], deltas: Play) -> Play:
        opening = {"type": "content_block_start", "index": index, "content_block": start}
        stop = {"type": "content_block_stop", "index": index}
        return [
            (0.0, sse(opening, "content_block_start")),
            *deltas,
            (0.0, sse(stop, "content_block_stop")),
        ]

    message: dict[str, Any] = {
        "id": "msg_weak",
        "type": "message",
        "role": "assistant",
        "model": "played",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    thinking = [block_delta(0, {"type": "thinking_delta", "thinking": t}) for t in THINKING]
    thinking.append(block_delta(0, {"type": "signature_delta", "signature": "c2lnbmVk"}))
    text = [block_delta(1, {"type": "text_delta", "text": token}) for token in TOKENS]
    arguments = [
        block_delta(2, {"type": "input_json_delta", "partial_json": ARGUMENTS[at : at + 3]})
        for at in range(0, len(ARGUMENTS), 3)
    ]
    tool = {"type": "tool_use", "id": "toolu_weak", "name": "get_weather", "input": {}}
    ending = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 90},
    }
    return [
        (0.0, sse({"type": "message_start", "message": message}, "message_start")),
        (0.0, sse({"type": "ping"}, "ping")),
        *block(0, {"type": "thinking", "thinking": "", "signature": ""}, thinking),
        *block(1, {"type": "text", "text": ""}, text),
        *block(2, tool, arguments),
        (0.0, sse(ending, "message_delta")),
        (0.0, sse({"type": "message_stop"}, "message_stop")),
    ]


def responses_play() -> Play:
    """A Responses stream, as OpenAI sends one: a message whose text comes a token an
    event (with the ``obfuscation`` padding), then the completed response."""
    sequence = iter(range(1000))

    def event(kind: str, **fields: Any) -> bytes:
        return sse({"type": kind, "sequence_number": next(sequence), **fields}, kind)

    def response(status: str, output: list[Any]) -> dict[str, Any]:
        return {
            "id": "resp_weak",
            "object": "response",
            "created_at": 1,
            "status": status,
            "model": "played",
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }

    where = {"item_id": "msg_weak", "output_index": 0, "content_index": 0}
    item = {"id": "msg_weak", "type": "message", "role": "assistant", "status": "in_progress"}
    part = {"type": "output_text", "text": "", "annotations": []}
    done = {**item, "status": "completed", "content": [{**part, "text": TEXT}]}
    play: Play = [
        (0.0, event("response.created", response=response("in_progress", []))),
        (0.0, event("response.in_progress", response=response("in_progress", []))),
        (0.0, event("response.output_item.added", output_index=0, item={**item, "content": []})),
        (0.0, event("response.content_part.added", **where, part=part)),
    ]
    play += [
        (GAP, event("response.output_text.delta", **where, delta=t, logprobs=[], obfuscation="x1"))
        for t in TOKENS
    ]
    counts = {"input_tokens": 5, "output_tokens": len(TOKENS), "total_tokens": 5 + len(TOKENS)}
    usage = {"usage": counts}
    play += [
        (0.0, event("response.output_text.done", **where, text=TEXT, logprobs=[])),
        (0.0, event("response.content_part.done", **where, part={**part, "text": TEXT})),
        (0.0, event("response.output_item.done", output_index=0, item=done)),
        (0.0, event("response.completed", response={**response("completed", [done]), **usage})),
    ]
    return play


def data_events(stream: bytes) -> list[SSEEvent]:
    return [e for e in SSEDecoder().feed(stream) if e.data is not None]


def chat_content(data: str | None) -> str:
    """The text a chat chunk's data adds (none for ``[DONE]``)."""
    if not data or data == "[DONE]":
        return ""
    return "".join(c["delta"].get("content") or "" for c in json.loads(data)["choices"])


# -- the gateway ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[PlayedUpstream]:
    played = PlayedUpstream()
    try:
        yield played
    finally:
        played.close()


@pytest.fixture(scope="module")
def gateway(
    upstream: PlayedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = f"""
        clusters:
          played: {{url: "{upstream.url}", apis: [chat, responses]}}
          played-chat: {{url: "{upstream.url}", apis: [chat]}}
          claude: {{provider: anthropic, url: "{upstream.url}/v1", api_key: sk-ant-upstream}}
        routes:
          - {{name: sdk, models: ["sdk-*"], cluster: played}}
          - {{name: translated, models: ["tr-*"], cluster: played-chat}}
          - {{name: claude, models: ["claude-*"], cluster: claude}}
          - {{name: browser, models: [resume-browser], cluster: played, resume: {{grace: 10s}}}}
          - {{name: flapping, models: [resume-flapping], cluster: played, resume: {{grace: 10s}}}}
          - {{name: plain, models: ["plain-*"], cluster: played}}
          - name: frugal
            models: [resume-frugal]
            cluster: played
            resume: {{grace: 10s}}
            delivery: {{save_data: 500ms, compress: [gzip]}}
    """
    gw = start_gateway(config, tmp_path_factory.mktemp("weak"))
    try:
        yield gw
    finally:
        gw.process.stop()


def counter(gateway: Gateway, name: str, **labels: str) -> float:
    """The value of the counter *name* for *labels* (summed over the other labels; 0
    before it was first counted)."""
    total = 0.0
    for line in gateway.metrics().splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def best_coding(accept_encoding: str) -> str:
    """The coding the gateway should choose for a client that sent *accept_encoding*:
    the first of its default order that the client names."""
    accepted = {name.split(";")[0].strip() for name in accept_encoding.split(",")}
    return next(name for name in ("zstd", "br", "gzip") if name in accepted)


def openai_client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="sk-client", max_retries=0, timeout=20)


def claude_client(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="sk-client", max_retries=0, timeout=20)


# -- the official SDKs ----------------------------------------------------------------------


def assembled_chat(stream: Any) -> tuple[Any, int]:
    """What the openai SDK assembles from a chat stream, and how many chunks it read."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    chunks = 0
    for chunk in stream:
        chunks += 1
        state.handle_chunk(chunk)
    return state.get_final_completion(), chunks


@pytest.mark.parametrize(
    ("asked", "window"),
    [(SAVE_DATA, "250ms"), ({"x-stream-coalesce": "200ms"}, "200ms")],
    ids=["save-data", "x-stream-coalesce"],
)
def test_openai_chat_stream_coalesced_and_compressed_assembles_what_the_upstream_sent(
    gateway: Gateway, upstream: PlayedUpstream, asked: dict[str, str], window: str
) -> None:
    model = f"sdk-chat-{window}"
    upstream.play(model, chat_play(TOKENS, ARGUMENTS))
    request: Any = {"model": model, "messages": CHAT, "tools": [WEATHER_OPENAI], "stream": True}
    reason = "save_data" if "Save-Data" in asked else "asked"
    streams = counter(gateway, COALESCED, route="sdk", reason=reason)
    bytes_before = {s: counter(gateway, BYTES, route="sdk", stage=s) for s in ("events", "sent")}
    # The reference: the same SDK reading the upstream's own stream.
    reference, upstream_chunks = assembled_chat(
        openai_client(upstream.url).chat.completions.create(**request, extra_headers={AT_ONCE: "1"})
    )
    raw = openai_client(gateway.url).chat.completions.with_raw_response.create(
        **request, extra_headers=asked
    )
    # The first of the gateway's codings (zstd, br, gzip) that the SDK accepts.
    assert raw.headers["content-encoding"] == best_coding(
        raw.http_request.headers["accept-encoding"]
    )
    assert raw.headers["x-stream-coalesce"] == window
    final, chunks = assembled_chat(raw.parse())
    assert final.model_dump() == reference.model_dump()
    message = final.choices[0].message
    assert message.content == TEXT
    assert message.tool_calls[0].function.arguments == ARGUMENTS
    # One request upstream, and it sent every event separately; the client got fewer.
    (played,) = upstream.requests_for(model)
    assert played.headers.get("accept-encoding") == "identity"
    assert upstream_chunks == len(data_events(bytes(played.sent))) - 1  # less [DONE]
    assert chunks < upstream_chunks / 3, (chunks, upstream_chunks)
    # The gateway counted the stream once, when it ended: every byte the upstream sent,
    # and a small part of that sent on (folded, then compressed).
    wait_until(lambda: counter(gateway, COALESCED, route="sdk", reason=reason) > streams, 10)
    events = counter(gateway, BYTES, route="sdk", stage="events") - bytes_before["events"]
    sent = counter(gateway, BYTES, route="sdk", stage="sent") - bytes_before["sent"]
    assert events == len(played.sent)
    assert 0 < sent < events / 5, (sent, events)


def test_anthropic_messages_stream_coalesced_and_compressed_assembles_the_same_message(
    gateway: Gateway, upstream: PlayedUpstream
) -> None:
    model = "claude-weak"
    upstream.play(model, messages_play())
    request: Any = {
        "model": model,
        "max_tokens": 2048,
        "messages": CHAT,
        "tools": [WEATHER_ANTHROPIC],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    with claude_client(upstream.url).messages.stream(
        **request, extra_headers={AT_ONCE: "1"}
    ) as direct:
        reference = direct.get_final_message()
    with claude_client(gateway.url).messages.stream(**request, extra_headers=SAVE_DATA) as stream:
        accepted = stream.response.request.headers["accept-encoding"]
        assert stream.response.headers["content-encoding"] == best_coding(accepted)
        assert stream.response.headers["x-stream-coalesce"] == "250ms"
        deltas = sum(1 for event in stream if event.type == "content_block_delta")
        final = stream.get_final_message()
    assert final.model_dump() == reference.model_dump()
    thinking, text, tool = final.content
    assert thinking.type == "thinking" and thinking.thinking == "".join(THINKING)
    assert thinking.signature == "c2lnbmVk"
    assert text.type == "text" and text.text == TEXT
    assert tool.type == "tool_use" and tool.input == json.loads(ARGUMENTS)
    (played,) = upstream.requests_for(model)
    sent = [e for e in data_events(bytes(played.sent)) if e.event == "content_block_delta"]
    assert deltas < len(sent) / 3, (deltas, len(sent))


@pytest.mark.parametrize(
    "model", ["sdk-responses", "tr-responses"], ids=["native", "translated-from-chat"]
)
def test_openai_responses_stream_coalesced_and_compressed_assembles_the_text(
    gateway: Gateway, upstream: PlayedUpstream, model: str
) -> None:
    """From an upstream that speaks Responses, and from one that speaks only Chat
    Completions (the gateway translates; the folding is of its own events)."""
    native = model.startswith("sdk-")
    upstream.play(model, responses_play() if native else chat_play(TOKENS))
    raw = openai_client(gateway.url).responses.with_raw_response.create(
        model=model, input="say it", stream=True, extra_headers=SAVE_DATA
    )
    assert raw.headers["content-encoding"] == best_coding(
        raw.http_request.headers["accept-encoding"]
    )
    assert raw.headers["x-stream-coalesce"] == "250ms"
    state: ResponseStreamState[Any] = ResponseStreamState(
        input_tools=openai.omit, text_format=openai.omit
    )
    snapshot, deltas, completed = "", 0, None
    for raw_event in raw.parse():
        for event in state.handle_event(raw_event):
            if event.type == "response.output_text.delta":
                deltas += 1
                snapshot = event.snapshot  # the text the SDK assembled so far
            elif event.type == "response.completed":
                completed = event.response
    assert snapshot == TEXT
    assert completed is not None and completed.output_text == TEXT
    (played,) = upstream.requests_for(model)
    sent = data_events(bytes(played.sent))
    if native:
        upstream_deltas = sum(1 for e in sent if e.event == "response.output_text.delta")
    else:
        upstream_deltas = sum(1 for e in sent if chat_content(e.data))
    assert upstream_deltas == len(TOKENS)
    assert deltas < upstream_deltas / 3, (deltas, upstream_deltas)


@pytest.mark.parametrize(
    "accept_encoding", ["identity", "gzip, deflate, br, zstd"], ids=["identity", "all-codings"]
)
def test_without_save_data_or_a_window_the_client_gets_the_upstreams_bytes(
    gateway: Gateway, upstream: PlayedUpstream, accept_encoding: str
) -> None:
    """Not even compressed when the client accepts every coding (as the SDKs do): only a
    client that asks to save data gets a changed stream."""
    model = f"plain-exact-{accept_encoding.split(',')[0]}"
    upstream.play(model, chat_play(TOKENS, ARGUMENTS))
    headers = {"accept-encoding": accept_encoding}
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={"model": model, "messages": CHAT, "stream": True},
        headers=headers,
        timeout=20,
    ) as response:
        wire = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert "x-stream-coalesce" not in response.headers
    (played,) = upstream.requests_for(model)
    assert played.finished and wire == bytes(played.sent)


# -- a browser ------------------------------------------------------------------------------

#: The page the browser runs: it streams a chat completion with fetch (sending
#: Save-Data), reads it through a TextDecoderStream, parsing the events; after
#: ABORT_AFTER events it aborts the fetch (the link is lost), waits, and sends the same
#: POST again with the last id it saw; it writes what it assembled into the page, then
#: posts the page's findings to /done.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>a chat on a weak link</title>
<pre id="text"></pre>
<p>events: <span id="first">0</span> then <span id="second">0</span></p>
<script>
const SETUP = %(setup)s;

async function readEvents(response, onEvent) {
  // Reads SSE blocks until the stream ends or onEvent returns true.
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = {id: null, data: []};
      for (const line of block.split("\\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let field = colon < 0 ? "" : line.slice(colon + 1);
        if (field.startsWith(" ")) field = field.slice(1);
        if (name === "id") event.id = field;
        if (name === "data") event.data.push(field);
      }
      if (event.data.length && onEvent({id: event.id, data: event.data.join("\\n")})) {
        await reader.cancel().catch(() => {});
        return;
      }
    }
  }
}

async function main(result) {
  const headers = {
    "content-type": "application/json",
    "authorization": "Bearer sk-browser",
    "save-data": "on",
  };
  const body = JSON.stringify(SETUP.body);
  const text = document.getElementById("text");
  let lastId = null;
  function take(event, counter) {
    if (event.id !== null) lastId = event.id;
    const shown = document.getElementById(counter);
    shown.textContent = String(Number(shown.textContent) + 1);
    if (event.data === "[DONE]") { result.done = true; return; }
    for (const choice of JSON.parse(event.data).choices || []) {
      text.textContent += choice.delta.content || "";
    }
  }
  const controller = new AbortController();
  const first = await fetch(SETUP.gateway + "/v1/chat/completions",
                            {method: "POST", headers, body, signal: controller.signal});
  result.first = {status: first.status, encoding: first.headers.get("content-encoding"),
                  window: first.headers.get("x-stream-coalesce"),
                  stream: first.headers.get("x-stream-id")};
  let seen = 0;
  await readEvents(first, (event) => {
    take(event, "first");
    if (++seen < SETUP.abortAfter) return false;
    controller.abort();  // the link is lost
    return true;
  });
  result.lastIdBeforeResume = lastId;
  await new Promise((resolve) => setTimeout(resolve, 300));  // a phone reconnecting
  const again = await fetch(SETUP.gateway + "/v1/chat/completions",
                            {method: "POST", headers: {...headers, "last-event-id": lastId}, body});
  result.second = {status: again.status, encoding: again.headers.get("content-encoding"),
                   window: again.headers.get("x-stream-coalesce")};
  await readEvents(again, (event) => { take(event, "second"); return false; });
}

const result = {done: false};
main(result)
  .catch((error) => { result.error = String(error); })
  .finally(() => {
    result.text = document.getElementById("text").textContent;
    result.firstEvents = Number(document.getElementById("first").textContent);
    result.secondEvents = Number(document.getElementById("second").textContent);
    return fetch("/done", {method: "POST", body: JSON.stringify(result)});
  });
</script>
"""


class PageServer:
    """Serves the page, and takes what the page posts to /done."""

    def __init__(self, page: str) -> None:
        self.result: dict[str, Any] = {}
        self.posted = threading.Event()
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page.encode() if self.path == "/" else b""
                self.send_response(200 if body else 404)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                served.result = json.loads(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(204)
                self.end_headers()
                served.posted.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WireTap:
    """A TCP relay to the gateway that keeps the bytes of each connection both ways:
    what the browser asked for, and the response as it crossed the wire (a page's
    fetch is not shown every header it was sent, and never the compressed bytes)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        #: Per connection: (what the browser sent, what the gateway sent).
        self.connections: list[tuple[bytearray, bytearray]] = []
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(("127.0.0.1", self.target))
            sent, received = bytearray(), bytearray()
            self.connections.append((sent, received))
            self.sockets += [near, far]
            threading.Thread(target=self._pump, args=(near, far, sent), daemon=True).start()
            threading.Thread(target=self._pump, args=(far, near, received), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, kept: bytearray) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            kept += data
            try:
                sink.sendall(data)
            except OSError:
                return

    def exchanges(self) -> list[tuple[dict[str, str], dict[str, str]]]:
        """The (request head, response head) of each connection (see `head`)."""
        return [(head(bytes(sent)), head(bytes(received))) for sent, received in self.connections]

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def head(message: bytes) -> dict[str, str]:
    """The head of an HTTP/1.1 message: its header fields by lower-case name, and its
    first line (the request or status line) as ``:line``."""
    lines = message.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = {":line": lines[0]}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields


def chromium_for(url: str, profile: Path) -> subprocess.Popen[bytes]:
    """Headless chromium on *url*, running until stopped. Web security is off (the
    page's origin is not the gateway's, and the gateway sends no CORS headers)."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-web-security",
        f"--user-data-dir={profile}",
    ]
    return subprocess.Popen(
        [binary, *flags, url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its child processes are in its group, stopped with it
    )


def stop_browser(browser: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(browser.pid, signal.SIGTERM)
    try:
        browser.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)
        browser.wait()


def test_a_browser_reads_a_compressed_stream_loses_it_and_resumes_it_exactly(
    gateway: Gateway, upstream: PlayedUpstream, tmp_path: Path
) -> None:
    model = "resume-browser"
    tokens = [f" {WORDS[n % len(WORDS)]}{n:02d}" for n in range(80)]
    upstream.play(model, chat_play(tokens, gap=0.03))  # about 2.4 s
    coalesced = counter(gateway, COALESCED, route="browser")
    tap = WireTap(gateway.port)
    setup = {
        "gateway": tap.url,
        "body": {"model": model, "messages": CHAT, "stream": True},
        "abortAfter": 3,
    }
    page = PageServer(PAGE % {"setup": json.dumps(setup)})
    browser = chromium_for(page.url, tmp_path / "profile")
    try:
        assert page.posted.wait(60), "the page never reported"
    finally:
        stop_browser(browser)
        page.close()
        tap.close()
    result = page.result
    assert "error" not in result, result
    # Every token once, in order, across the lost connection and the resumed one.
    assert result["text"] == "".join(tokens)
    assert result["done"] and result["first"]["status"] == result["second"]["status"] == 200
    stream_id, _, number = result["lastIdBeforeResume"].rpartition(".")
    assert result["firstEvents"] == 3 and stream_id == result["first"]["stream"]
    assert 3 <= int(number) < 84  # (a folded event has the id of the last it stands for)
    # Both connections coalesced: fewer events than the upstream's 84 in all.
    assert result["first"]["window"] == result["second"]["window"] == "250ms"
    assert result["firstEvents"] + result["secondEvents"] < 84 / 2
    (played,) = upstream.requests_for(model)  # one generation, resumed, not started again
    assert len(data_events(bytes(played.sent))) == 84
    # On the wire: the gateway answered each POST with the first of its codings that
    # the browser accepts. (Chromium offers br and zstd only to secure contexts; a
    # loopback address is one, so over plain http to 127.0.0.1 it sends all four.)
    posts = [(ask, got) for ask, got in tap.exchanges() if ask[":line"].startswith("POST ")]
    assert len(posts) == 2 and posts[1][0]["last-event-id"] == result["lastIdBeforeResume"]
    for (ask, got), seen in zip(posts, (result["first"], result["second"]), strict=True):
        assert ask["save-data"] == "on"
        assert got["content-encoding"] == best_coding(ask["accept-encoding"]), (ask, got)
        assert seen["encoding"] == got["content-encoding"]  # (web security is off)
    wait_until(
        lambda: counter(gateway, COALESCED, route="browser") > coalesced,
        timeout=10,
    )
    sent = counter(gateway, BYTES, route="browser", stage="sent")
    events = counter(gateway, BYTES, route="browser", stage="events")
    assert 0 < sent < events / 3, (sent, events)


# -- a flapping link ------------------------------------------------------------------------


def test_a_link_that_drops_every_second_resumes_each_time_with_every_token_once(
    gateway: Gateway, upstream: PlayedUpstream
) -> None:
    """The client hangs up a second or so into each connection and comes back with the
    last id it saw: by sending the POST again, or by a GET of the stream."""
    model = "resume-flapping"
    tokens = [f" f{n:03d}" for n in range(1, 141)]
    upstream.play(model, chat_play(tokens, gap=0.03))  # about 4.2 s
    body = {"model": model, "messages": CHAT, "stream": True}
    headers = {"authorization": "Bearer sk-flapping", **SAVE_DATA}
    text, last, stream_id, done = "", "", "", False
    connections: list[httpx.Headers] = []
    while not done:
        assert len(connections) < 20, "the stream never ended"
        n = len(connections)
        asking = {**headers, "last-event-id": last} if n else headers
        if n % 2 == 0 and n:
            method, url = "GET", f"{gateway.url}/v1/streams/{stream_id}"
        else:
            method, url = "POST", f"{gateway.url}/v1/chat/completions"
        with (
            httpx.Client(timeout=20) as http,
            http.stream(
                method, url, json=body if method == "POST" else None, headers=asking
            ) as response,
        ):
            assert response.status_code == 200, (n, response.read())
            connections.append(response.headers)
            stream_id = response.headers["x-stream-id"]
            decoder, opened = SSEDecoder(), time.monotonic()
            for piece in response.iter_bytes():
                for event in decoder.feed(piece):
                    last = event.id or last
                    if event.data == "[DONE]":
                        done = True
                    text += chat_content(event.data)
                if not done and time.monotonic() - opened > (1.0, 1.5)[n % 2]:
                    break  # the link drops
    assert text == "".join(tokens)
    assert len(connections) >= 3  # (dropped at least twice)
    assert {h.get("content-encoding") for h in connections} == {"zstd"}
    assert {h.get("x-stream-coalesce") for h in connections} == {"250ms"}
    assert len(upstream.requests_for(model)) == 1


def test_a_resume_is_delivered_as_its_streams_route_says(
    gateway: Gateway, upstream: PlayedUpstream
) -> None:
    """A route that saves data its own way (a longer window, gzip only) has its streams'
    resumes delivered that way too, and counted under its name."""
    model = "resume-frugal"
    upstream.play(model, chat_play(TOKENS, gap=0.03))
    url = f"{gateway.url}/v1/chat/completions"
    body = {"model": model, "messages": CHAT, "stream": True}
    headers = {"authorization": "Bearer sk-frugal", **SAVE_DATA}
    before = counter(gateway, COALESCED, route="frugal")
    text, last, seen = "", "", 0
    with (
        httpx.Client(timeout=20) as http,
        http.stream("POST", url, json=body, headers=headers) as first,
    ):
        assert first.headers["x-stream-coalesce"] == "500ms"
        assert first.headers["content-encoding"] == "gzip"
        decoder = SSEDecoder()
        for piece in first.iter_bytes():
            for event in decoder.feed(piece):
                last, text, seen = event.id or last, text + chat_content(event.data), seen + 1
            if seen >= 3:
                break  # the link drops
    again = httpx.post(url, json=body, headers={**headers, "last-event-id": last}, timeout=20)
    assert again.status_code == 200
    assert text + "".join(chat_content(e.data) for e in data_events(again.content)) == TEXT
    assert len(upstream.requests_for(model)) == 1
    assert again.headers.get("x-stream-coalesce") == "500ms"
    assert again.headers.get("content-encoding") == "gzip"
    wait_until(
        lambda: counter(gateway, COALESCED, route="frugal") == before + 2,
        timeout=10,
    )


# -- a slow reader --------------------------------------------------------------------------


def test_a_reader_that_stops_for_a_while_gets_the_rest_folded_on_a_plain_route(
    gateway: Gateway, upstream: PlayedUpstream
) -> None:
    model = "plain-flood"
    count = 30000
    chunks = [chat_chunk({"content": f" t{n:05d}"}) for n in range(1, count + 1)]
    play: Play = [(0.0, chat_chunk({"role": "assistant", "content": ""}))]
    play += [(0.0, b"".join(chunks[at : at + 500])) for at in range(0, count, 500)]
    play.append((0.0, chat_chunk({}, "stop") + b"data: [DONE]\n\n"))
    upstream.play(model, play)  # 30003 events, 5 MB, as fast as they can go
    slow = counter(gateway, "filterproxy_delivery_slow_readers_total", route="plain")
    folded = counter(gateway, "filterproxy_delivery_folded_events_total", route="plain")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: it fills
    sock.connect(("127.0.0.1", gateway.port))
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    connection.sock = sock
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({"model": model, "messages": CHAT, "stream": True}),
            {"content-type": "application/json", "accept-encoding": "identity"},
        )
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-encoding") is None  # (nobody asked to save data)
        assert response.getheader("x-stream-coalesce") is None
        first = response.read(4096)
        time.sleep(1.5)  # it reads nothing for a while
        stream = first + response.read()
    finally:
        connection.close()
    events = data_events(stream)
    text = "".join(chat_content(e.data) for e in events)
    assert text == "".join(f" t{n:05d}" for n in range(1, count + 1))
    assert events[-1].data == "[DONE]"
    assert len(events) < count + 3  # what it did not take in time came folded
    (played,) = upstream.requests_for(model)
    assert played.finished
    wait_until(
        lambda: (
            counter(gateway, "filterproxy_delivery_slow_readers_total", route="plain") == slow + 1
        ),
        timeout=10,
    )
    # Each event folded away is counted: the upstream's, less the client's.
    folded = counter(gateway, "filterproxy_delivery_folded_events_total", route="plain") - folded
    assert folded == count + 3 - len(events)
