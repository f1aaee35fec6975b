"""Resumable streams' decisions without sockets: numbering events at every split of the
upstream's bytes, comments that no SDK chokes on, the buffer and its caps, folding
deltas for a client that catches up."""

from __future__ import annotations

import importlib
import json
import random
from typing import Any

import anthropic
import openai
import pytest

from filterproxy.extensions.resume.framing import (
    EventFramer,
    Folds,
    ResumeBuffer,
    merge_deltas,
    parse_event_id,
)
from filterproxy.extensions.resume.streams import BufferBudget
from filterproxy.http.sse import SSEDecoder
from tests.support.chat_messages import splits


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    document = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(document, ensure_ascii=False).encode() + b"\n\n"


STREAM = (
    chunk("", role="assistant")
    + b": ping - 2026-12-02\n\n"
    + chunk("Héllo")
    + b": OPENROUTER PROCESSING\n\n\n"
    + chunk(" 世界 👋")
    + b"event: ping\ndata: {}\n\n"
    + chunk(None, "stop")
    + b'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    + b"data: [DONE]\n\n"
)


def framed(pieces: list[bytes], prefix: bytes = b"s.") -> tuple[bytes, list[bytes]]:
    framer = EventFramer(prefix)
    out = b"".join(framer.feed(piece) for piece in pieces)
    return out, framer.take()


def test_every_event_gets_the_next_id_and_the_data_bytes_stay() -> None:
    out, events = framed([STREAM])
    decoded = list(SSEDecoder().feed(out))
    data = [e for e in decoded if e.data is not None]
    assert [e.id for e in data] == [f"s.{n}" for n in range(1, 8)]
    upstream = [e.data for e in SSEDecoder().feed(STREAM) if e.data is not None]
    assert [e.data for e in data] == upstream  # byte for byte
    comments = (b": ping - 2026-12-02\n", b": OPENROUTER PROCESSING\n")
    assert out.replace(comments[0], b"").replace(comments[1], b"") == b"".join(events)
    # Comments stay, as lines with no blank line after them.
    assert comments[0] in out and comments[0] + b"\n" not in out
    assert b"\n\n\n" not in out


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_every_split_numbers_the_same(newline: bytes) -> None:
    data = STREAM.replace(b"\n", newline)
    whole, _ = framed([data])
    for pieces in splits(data):
        assert framed(pieces)[0] == whole, [len(p) for p in pieces][:4]


def test_a_comment_line_passes_at_once_and_a_partial_event_waits() -> None:
    framer = EventFramer(b"x.")
    assert framer.feed(b": keep-alive\n") == b": keep-alive\n"
    assert framer.feed(b'data: {"a"') == b""
    assert framer.feed(b":1}\n\n: keep-alive\n") == b'data: {"a":1}\nid: x.1\n\n: keep-alive\n'


def serving(sdk: Any, body: bytes) -> Any:
    """An HTTP client for *sdk* that answers every request with the event stream *body*
    — of the HTTP library the SDK is built on (httpx, or httpx2 in newer releases)."""
    http = importlib.import_module(sdk.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return http.Client(transport=http.MockTransport(handler))


def chat_text(body: bytes) -> str:
    client = openai.OpenAI(
        api_key="x", base_url="http://test/v1", http_client=serving(openai, body)
    )
    chunks = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_the_openai_sdk_reads_a_numbered_stream_with_comments() -> None:
    """openai-python parses an empty event on a bare blank line once an id was seen
    (openai-python #2722): the framed stream has none, so it reads to the end."""
    out, _ = framed([STREAM + b": keep-alive\n"])
    assert chat_text(out) == "Héllo 世界 👋"
    # The same stream unframed, with ids added and the blank lines kept, is what breaks it.
    broken = STREAM.replace(b"data: [DONE]", b"id: 9\ndata: [DONE]").replace(
        chunk("", role="assistant"), chunk("", role="assistant")[:-1] + b"id: 1\n\n"
    )
    with pytest.raises(json.JSONDecodeError):
        chat_text(broken)


def test_the_anthropic_sdk_reads_a_numbered_messages_stream_with_comments() -> None:
    events = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
        b": keep-alive\n\n"
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
        b'event: ping\ndata: {"type": "ping"}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    out, _ = framed([events + b": keep-alive\n"])
    client = anthropic.Anthropic(
        api_key="x", base_url="http://test", http_client=serving(anthropic, out)
    )
    with client.messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        assert stream.get_final_text() == "Hi"


def test_the_buffer_hands_out_what_came_after_a_position() -> None:
    _, events = framed([STREAM])
    buffer = ResumeBuffer(10_000, b"s.")
    for event in events:
        assert buffer.append(event)
    assert buffer.count == 7 and buffer.size == sum(map(len, events))
    assert buffer.since(0) == events
    assert buffer.since(5) == events[5:]
    assert buffer.since(7) == []
    assert buffer.since(8) is None and buffer.since(-1) is None


def test_past_its_cap_the_buffer_gives_up() -> None:
    _, events = framed([STREAM])
    buffer = ResumeBuffer(sum(map(len, events[:3])), b"s.")
    assert all(buffer.append(e) for e in events[:3])
    assert not buffer.append(events[3])
    assert buffer.overflowed and buffer.size == 0 and buffer.since(0) is None
    assert not buffer.append(events[4])
    budget = BufferBudget(100)
    assert budget.take(60) and not budget.take(41) and budget.held == 60
    budget.give(60)
    assert budget.held == 0


def test_catching_up_folds_text_deltas_and_keeps_the_last_id() -> None:
    body = (
        chunk("", role="assistant")
        + b"".join(chunk(w) for w in ("a", "b", " c"))
        + chunk(None, "stop")
    )
    body += b"data: [DONE]\n\n"
    _, events = framed([body])
    merged = merge_deltas(events)
    assert len(merged) == 4  # role chunk, one text chunk, finish, [DONE]
    text_event = SSEDecoder().feed(merged[1])[0]
    assert text_event.id == "s.4"
    assert json.loads(text_event.data or "")["choices"][0]["delta"] == {"content": "ab c"}
    assert merged[0] == events[0] and merged[2:] == events[4:]
    # Anthropic text deltas of one block fold too; other events stay as they are.
    anthropic_events = [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"%s"}}\nid: s.%d\n\n'
        % (t, n)
        for n, t in enumerate((b"x", b"y", b"z"), 1)
    ] + [b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\nid: s.4\n\n']
    merged = merge_deltas(anthropic_events)
    assert len(merged) == 2 and merged[1] == anthropic_events[3]
    event = SSEDecoder().feed(merged[0])[0]
    assert (event.event, event.id) == ("content_block_delta", "s.3")
    assert json.loads(event.data or "")["delta"]["text"] == "xyz"


def test_event_ids_are_read_with_or_without_the_stream_id() -> None:
    assert parse_event_id("fps_abc.12") == 12
    assert parse_event_id(" 7 ") == 7
    assert parse_event_id("fps_abc.x") is None and parse_event_id(None) is None


def test_events_across_pages_come_back_whole() -> None:
    events = [b"data: %s\nid: s.%d\n\n" % (b"x" * (n * 37 % 900), n) for n in range(1, 120)]
    events[5] = events[5].replace(b"\n", b"\r\n")  # CRLF events find their end too
    buffer = ResumeBuffer(1_000_000, b"s.")
    for event in events:
        buffer.append(event)
    assert len(buffer.pages) > 10 and buffer.size == sum(map(len, events))
    for seq in (0, 1, 17, 64, 118, 119):
        assert buffer.since(seq) == events[seq:]


def _last_id(chunk: bytes) -> int:
    return int((SSEDecoder().feed(chunk)[0].id or "").rsplit(".", 1)[1])


@pytest.mark.parametrize("seed", range(40))
def test_a_count_of_chunks_stays_exact_through_folded_replays_and_drops(seed: int) -> None:
    """A client that counts the chunks it was given (it cannot see ids) drops at random
    places, each time after a first connection or a replay that came folded, and
    resumes by its count: it gets every event's text exactly once, and its count always
    names the event its last chunk ended with."""
    rng = random.Random(seed)
    words = [f" w{n}" for n in range(1, 200)]
    body = chunk("", role="assistant") + b"".join(chunk(w) for w in words[:120])
    body += b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[]}}]}\n\n'
    body += b"".join(chunk(w) for w in words[120:]) + chunk(None, "stop") + b"data: [DONE]\n\n"
    _, events = framed([body])
    buffer = ResumeBuffer(10_000_000, b"s.")
    for event in events:
        buffer.append(event)
    folds = Folds()
    # The first connection: some events one for one, some held and sent folded.
    sent: list[bytes] = []
    at = 0
    while at < len(events):
        run = events[at : at + rng.randint(1, 30)]
        at += len(run)
        sent += merge_deltas(run, folds) if rng.random() < 0.5 else run
    got: list[bytes] = []
    for _ in range(6):
        got += sent[: rng.randint(0, len(sent))]  # the rest is lost with the connection
        count = len(got)
        seq = folds.event_of(count)
        assert seq == (_last_id(got[-1]) if got else 0)
        missed = buffer.since(seq)
        assert missed is not None
        folds.resumed_at(count)
        sent = merge_deltas(missed, folds)
    got += sent
    text = "".join(_content_of(c) for c in got)
    assert text == "".join(words)
    assert [_last_id(c) for c in got] == sorted({_last_id(c) for c in got})
    assert _last_id(got[-1]) == len(events)


def _content_of(event: bytes) -> str:
    data = SSEDecoder().feed(event)[0].data or ""
    if not data.startswith("{"):
        return ""
    choices = json.loads(data)["choices"]
    return str(choices[0]["delta"].get("content") or "") if choices else ""


def test_a_count_before_any_fold_is_the_event_number() -> None:
    folds = Folds()
    assert [folds.event_of(n) for n in (0, 1, 7)] == [0, 1, 7]
    folds.folded(9, 5)  # chunk 5 stood for events 5 to 9
    assert [folds.event_of(n) for n in (4, 5, 6)] == [4, 9, 10]
    folds.resumed_at(4)  # chunk 5 never arrived
    assert folds.event_of(5) == 5
