"""Folding runs of stream deltas: for each API and each kind of delta, the folded stream
assembles to the same text, thinking and tool arguments as the stream it came from —
by an assembler written here from the providers' documented formats, and by the
official SDKs' own accumulators — with fewer events, the last id of each run, and
everything that does not fold passed byte for byte, in order."""

from __future__ import annotations

import importlib
import itertools
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import anthropic
import hypothesis.strategies as st
import openai
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import HealthCheck, given, settings
from openai import omit
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses import (
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseStreamState,
    ResponseTextDeltaEvent,
)
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from filterproxy.extensions.resume.framing import EventFramer, Folds, merge_deltas
from filterproxy.http.folding import fold_events
from filterproxy.http.sse import SSEDecoder, SSEEvent

# -- events and folding -----------------------------------------------------------------


def sse(data: Any, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event as a provider sends it: its name, its data (compact JSON, as OpenAI
    and Anthropic send it), its id."""
    text = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    head = f"event: {event}\n" if event is not None else ""
    tail = f"id: {id}\n" if id is not None else ""
    return f"{head}data: {text}\n{tail}\n".encode()


def decode(raw: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = decoder.feed(raw)
    assert decoder.between_events
    return events


def fold(raw: bytes, **options: Any) -> list[bytes]:
    return fold_events(decode(raw), **options)


def documents(raw: bytes) -> list[Any]:
    """The data of each event that has JSON data, parsed."""
    return [json.loads(e.data) for e in decode(raw) if e.data is not None and e.data[:1] == "{"]


def folds_seen(raw: bytes, **options: Any) -> tuple[list[bytes], list[tuple[str | None, int]]]:
    seen: list[tuple[str | None, int]] = []
    out = fold(raw, on_fold=lambda last, covers: seen.append((last, covers)), **options)
    return out, seen


def windows(events: list[SSEEvent], cuts: Sequence[int]) -> list[list[SSEEvent]]:
    """*events* split before each index in *cuts*."""
    edges = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    return [events[a:b] for a, b in itertools.pairwise(edges)]


# -- Chat Completions -----------------------------------------------------------------------

CHAT_ID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"


def chat(
    delta: dict[str, Any] | None,
    finish: str | None = None,
    *,
    index: int = 0,
    chunk_id: str = CHAT_ID,
    **extra: Any,
) -> dict[str, Any]:
    """A chunk as OpenAI streams it (``stream_options.include_usage`` on: a null usage on
    every chunk; obfuscation where given)."""
    chunk: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_eb9dce56a8",
        "choices": []
        if delta is None
        else [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    chunk.update(extra)
    return chunk


CHAT_USAGE = chat(None, usage={"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29})

CHAT_TEXT = (
    sse(chat({"role": "assistant", "content": "", "refusal": None}, obfuscation="mD3j"))
    + b"".join(
        sse(chat({"content": piece}, obfuscation=pad))
        for piece, pad in (
            ("Bonjour", "x9"),
            (",", "qQ2kP"),
            (" le", "a"),
            (" monde", ""),
            (" 👋", "Zt"),
            ("!", "0"),
        )
    )
    + sse(chat({}, "stop", obfuscation="k"))
    + sse(CHAT_USAGE)
    + b"data: [DONE]\n\n"
)


def tool_start(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }


def tool_args(index: int, piece: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


CHAT_TOOLS = (
    sse(
        chat(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [tool_start(0, "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather")],
                "refusal": None,
            }
        )
    )
    + b"".join(
        sse(chat(tool_args(0, p))) for p in ('{"', "location", '":"', "Paris", ",", " France", '"}')
    )
    + sse(chat({"tool_calls": [tool_start(1, "call_ABPQZ8m3AVJpZMCFrJx1Rt8N", "get_time")]}))
    + b"".join(sse(chat(tool_args(1, p))) for p in ('{"', "tz", '":"', "Europe/", 'Paris"}'))
    + sse(chat({}, "tool_calls"))
    + sse(CHAT_USAGE)
    + b"data: [DONE]\n\n"
)

#: DeepSeek's reasoner: the thinking in ``reasoning_content`` (content null beside it),
#: then the answer in ``content`` (reasoning_content null beside it).
DEEPSEEK = (
    sse(
        chat(
            {"role": "assistant", "content": None, "reasoning_content": ""},
            model="deepseek-reasoner",
        )
    )
    + b"".join(
        sse(chat({"content": None, "reasoning_content": p}, model="deepseek-reasoner"))
        for p in ("Okay", ", the", " user", " says", " hi.")
    )
    + b"".join(
        sse(chat({"content": p, "reasoning_content": None}, model="deepseek-reasoner"))
        for p in ("Hi", " there", "!")
    )
    + sse(chat({"content": "", "reasoning_content": None}, "stop", model="deepseek-reasoner"))
    + b"data: [DONE]\n\n"
)

#: vLLM and OpenRouter name the thinking ``reasoning``.
VLLM = (
    sse(chat({"role": "assistant", "content": ""}, model="Qwen/Qwen3-8B"))
    + b"".join(sse(chat({"reasoning": p}, model="Qwen/Qwen3-8B")) for p in ("Let", " me", " think"))
    + b"".join(sse(chat({"content": p}, model="Qwen/Qwen3-8B")) for p in ("4", "2"))
    + sse(chat({}, "stop", model="Qwen/Qwen3-8B"))
    + b"data: [DONE]\n\n"
)


def assemble_chat(raw: bytes) -> dict[int, dict[str, Any]]:
    """What a client assembles from a chat stream: per choice, each text field joined,
    each tool call's id, name and arguments; and the finish reasons."""
    choices: dict[int, dict[str, Any]] = {}
    for document in documents(raw):
        for choice in document["choices"]:
            into = choices.setdefault(choice["index"], {"tools": {}})
            for field, value in choice["delta"].items():
                if field == "tool_calls":
                    for call in value or []:
                        tool = into["tools"].setdefault(call["index"], {"arguments": ""})
                        for key in ("id", "type"):
                            if call.get(key):
                                tool[key] = call[key]
                        function = call.get("function") or {}
                        if function.get("name"):
                            tool["name"] = function["name"]
                        tool["arguments"] += function.get("arguments") or ""
                elif isinstance(value, str) and field != "role":
                    into[field] = into.get(field, "") + value
            if choice.get("finish_reason"):
                into["finish"] = choice["finish_reason"]
    return choices


def sdk_chat(raw: bytes) -> dict[str, Any]:
    """The final completion openai-python's own accumulator makes of a chat stream."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for event in decode(raw):
        if event.data is not None and event.data != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(json.loads(event.data)))
    return state.get_final_completion().to_dict()


def test_a_run_of_chat_content_folds_into_one_chunk_and_says_the_same() -> None:
    out, seen = folds_seen(CHAT_TEXT)
    events = decode(CHAT_TEXT)
    assert len(out) == 5  # role chunk, the six words as one, finish, usage, [DONE]
    assert out[0] == events[0].raw and out[2:] == [e.raw for e in events[7:]]
    folded = json.loads(decode(out[1])[0].data or "")
    first = json.loads(events[1].data or "")
    assert folded["choices"][0]["delta"] == {"content": "Bonjour, le monde 👋!"}
    # Everything but the text is the first chunk's; the padding goes.
    del first["obfuscation"], folded["choices"][0]["delta"], first["choices"][0]["delta"]
    assert folded == first
    assert seen == [(None, 6)]
    assert assemble_chat(b"".join(out)) == assemble_chat(CHAT_TEXT)
    assert sdk_chat(b"".join(out)) == sdk_chat(CHAT_TEXT)


def test_chat_tool_call_arguments_fold_per_tool_call() -> None:
    out, seen = folds_seen(CHAT_TOOLS)
    events = decode(CHAT_TOOLS)
    # The starts of both calls stay as they were; each call's arguments are one chunk.
    assert out[0] == events[0].raw and out[2] == events[8].raw
    calls = [
        json.loads(decode(e)[0].data or "")["choices"][0]["delta"]["tool_calls"]
        for e in (out[1], out[3])
    ]
    assert calls == [
        [{"index": 0, "function": {"arguments": '{"location":"Paris, France"}'}}],
        [{"index": 1, "function": {"arguments": '{"tz":"Europe/Paris"}'}}],
    ]
    assert seen == [(None, 7), (None, 5)]
    assert assemble_chat(b"".join(out)) == assemble_chat(CHAT_TOOLS)
    final = sdk_chat(b"".join(out))
    assert final == sdk_chat(CHAT_TOOLS)
    assert [c["function"]["arguments"] for c in final["choices"][0]["message"]["tool_calls"]] == [
        '{"location":"Paris, France"}',
        '{"tz":"Europe/Paris"}',
    ]


@pytest.mark.parametrize(
    ("stream", "runs"),
    [
        (DEEPSEEK, [("reasoning_content", 5), ("content", 3)]),
        (VLLM, [("reasoning", 3), ("content", 2)]),
    ],
    ids=["reasoning_content", "reasoning"],
)
def test_chat_reasoning_folds_apart_from_the_answer(
    stream: bytes, runs: list[tuple[str, int]]
) -> None:
    out, seen = folds_seen(stream)
    assert [covers for _, covers in seen] == [covers for _, covers in runs]
    deltas = [json.loads(decode(e)[0].data or "")["choices"][0]["delta"] for e in out[1:3]]
    assert [next(k for k, v in d.items() if v is not None) for d in deltas] == [f for f, _ in runs]
    assert assemble_chat(b"".join(out)) == assemble_chat(stream)
    final = sdk_chat(b"".join(out))
    assert final == sdk_chat(stream)
    field = runs[0][0]
    assert final["choices"][0]["message"][field] == assemble_chat(stream)[0][field]


def test_chat_runs_break_where_the_choice_the_field_the_tool_or_the_chunk_id_changes() -> None:
    stream = (
        sse(chat({"content": "a"}))
        + sse(chat({"content": "b"}, index=1))  # n=2: the other choice
        + sse(chat({"content": "c"}, index=1))
        + sse(chat({"reasoning_content": "d"}, index=1))
        + sse(chat(tool_args(0, "e"), index=1))
        + sse(chat(tool_args(1, "f"), index=1))
        + sse(chat(tool_args(1, "g"), index=1))
        + sse(chat({"content": "h"}, index=1, chunk_id="chatcmpl-other"))
        + sse(chat({"content": "i"}, index=1, chunk_id="chatcmpl-other"))
    )
    out, seen = folds_seen(stream)
    events = decode(stream)
    assert [len(decode(e)) for e in out] == [1] * 6
    assert out[0] == events[0].raw and out[2:4] == [events[3].raw, events[4].raw]
    assert seen == [(None, 2), (None, 2), (None, 2)]
    assert assemble_chat(b"".join(out)) == assemble_chat(stream)


@pytest.mark.parametrize(
    "chunk",
    [
        chat({"role": "assistant", "content": "Hi"}),
        chat({"content": "Hi"}, "stop"),
        chat(
            {"content": "Hi"}, usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        ),
        chat(
            {"content": "Hi"},
            choices=[
                {
                    "index": 0,
                    "delta": {"content": "Hi"},
                    "logprobs": {
                        "content": [
                            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
                        ],
                        "refusal": None,
                    },
                    "finish_reason": None,
                }
            ],
        ),
        chat(
            None,
            choices=[
                {"index": 0, "delta": {"content": "Hi"}},
                {"index": 1, "delta": {"content": "Yo"}},
            ],
        ),
        chat({"content": "Hi", "reasoning_content": "Hm"}),
        chat({"content": "Hi", "refusal": "No"}),
        chat({"refusal": "I can't"}),
        chat({"tool_calls": [tool_start(0, "call_1", "f")]}),
        chat({"tool_calls": [{"index": 0, "type": "function", "function": {"arguments": "{}"}}]}),
        chat(
            {
                "tool_calls": [
                    {"index": 0, "function": {"arguments": "{"}},
                    {"index": 1, "function": {"arguments": "{"}},
                ]
            }
        ),
        chat({"content": ["not", "a", "string"]}),
        chat({"content": "Hi"}, object="chat.completion"),
    ],
    ids=[
        "role",
        "finish_reason",
        "usage",
        "logprobs",
        "two_choices",
        "two_fields",
        "refusal_beside",
        "refusal",
        "tool_start",
        "tool_type",
        "two_tools",
        "not_text",
        "not_a_chunk",
    ],
)
def test_a_chat_chunk_with_other_news_passes_byte_for_byte(chunk: dict[str, Any]) -> None:
    text = sse(chat({"content": "x"}))
    stream = text + text + sse(chunk) + sse(chunk) + text + text
    out, seen = folds_seen(stream)
    events = decode(stream)
    assert out[1:3] == [events[2].raw, events[3].raw]
    assert len(out) == 4 and seen == [(None, 2), (None, 2)]
    assert assemble_chat(b"".join(out)) == assemble_chat(stream)


def test_tool_call_arguments_beside_a_null_content_fold() -> None:
    """Some providers send ``"content": null`` (and other nulls) beside each tool delta."""
    pieces = ('{"q', '":', ' "x"}')
    stream = b"".join(
        sse(
            chat(
                {
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": None,
                            "type": None,
                            "function": {"arguments": p, "name": None},
                        }
                    ],
                }
            )
        )
        for p in pieces
    )
    out = fold(stream)
    assert len(out) == 1
    call = json.loads(decode(out[0])[0].data or "")["choices"][0]["delta"]["tool_calls"][0]
    assert call["function"]["arguments"] == "".join(pieces)


# -- Anthropic Messages -----------------------------------------------------------------------


def message_event(document: dict[str, Any], id: str | None = None) -> bytes:
    return sse(document, event=document["type"], id=id)


def block_delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


MESSAGE_START: dict[str, Any] = {
    "type": "message_start",
    "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5-20250929",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 472, "output_tokens": 2},
    },
}

THINKING = ["I need to", " find the weather", " in Paris,", " so I'll call", " the tool."]
ANSWER = ["Let me", " check the", " weather for", " you ☀️."]
TOOL_INPUT = ["", '{"loc', 'ation":', ' "Paris', ', France"', "}"]

MESSAGES = b"".join(
    message_event(d, id=f"e{n}")
    for n, d in enumerate(
        [
            MESSAGE_START,
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
            *[block_delta(0, {"type": "thinking_delta", "thinking": t}) for t in THINKING],
            block_delta(
                0,
                {
                    "type": "signature_delta",
                    "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
                },
            ),
            {"type": "content_block_stop", "index": 0},
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
            block_delta(1, {"type": "text_delta", "text": ANSWER[0]}),
            {"type": "ping"},
            *[block_delta(1, {"type": "text_delta", "text": t}) for t in ANSWER[1:]],
            {"type": "content_block_stop", "index": 1},
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "name": "get_weather",
                    "input": {},
                },
            },
            *[block_delta(2, {"type": "input_json_delta", "partial_json": p}) for p in TOOL_INPUT],
            {"type": "content_block_stop", "index": 2},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 89},
            },
            {"type": "message_stop"},
        ],
        1,
    )
)


def assemble_messages(raw: bytes) -> dict[int, dict[str, Any]]:
    """What a client assembles from a Messages stream: each block's text, thinking,
    signature, tool input JSON and citations."""
    blocks: dict[int, dict[str, Any]] = {}
    for document in documents(raw):
        if document["type"] == "content_block_start":
            blocks[document["index"]] = {"start": document["content_block"]}
        elif document["type"] == "content_block_delta":
            block = blocks[document["index"]]
            delta = dict(document["delta"])
            kind = delta.pop("type")
            for field, value in delta.items():
                if kind == "citations_delta":
                    block.setdefault("citations", []).append(value)
                elif kind == "signature_delta":
                    block["signature"] = value
                else:
                    block[field] = block.get(field, "") + value
    return blocks


def sdk_messages(raw: bytes) -> dict[str, Any]:
    """The final message anthropic-sdk-python's own accumulator makes of a stream."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for document in documents(raw):
        if document["type"] != "ping":
            snapshot = accumulate_event(
                event=document, current_snapshot=snapshot, json_bufs=buffers
            )
    assert snapshot is not None
    return snapshot.to_dict()


def test_messages_text_thinking_and_tool_input_fold_per_block() -> None:
    out, seen = folds_seen(MESSAGES)
    events = decode(MESSAGES)
    assert seen == [("e7", 5), ("e15", 3), ("e23", 6)]
    by_id = {e.id: e for e in events}
    passed = [e for e in out if decode(e)[0].id not in ("e7", "e15", "e23")]
    assert passed == [by_id[decode(e)[0].id].raw for e in passed]  # byte for byte
    assert [decode(e)[0].id for e in out] == [
        f"e{n}" for n in (1, 2, 7, 8, 9, 10, 11, 12, 15, 16, 17, 23, 24, 25, 26)
    ]
    thinking = decode(out[2])[0]
    assert thinking.event == "content_block_delta"
    assert json.loads(thinking.data or "") == block_delta(
        0, {"type": "thinking_delta", "thinking": "".join(THINKING)}
    )
    assert assemble_messages(b"".join(out)) == assemble_messages(MESSAGES)
    final = sdk_messages(b"".join(out))
    assert final == sdk_messages(MESSAGES)
    assert [b.get("thinking") or b.get("text") or b.get("input") for b in final["content"]] == [
        "".join(THINKING),
        "".join(ANSWER),
        {"location": "Paris, France"},
    ]


def test_the_anthropic_sdk_reads_a_folded_messages_stream_to_the_same_message() -> None:
    client = anthropic.Anthropic(
        api_key="x",
        base_url="http://test",
        http_client=serving(anthropic, b"".join(fold(MESSAGES))),
    )
    with client.messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        folded = stream.get_final_message().to_dict()
    assert folded == sdk_messages(MESSAGES)


def test_citations_and_signatures_stay_as_they_came() -> None:
    citation = {
        "type": "char_location",
        "cited_text": "The grass is green.",
        "document_index": 0,
        "document_title": "Facts",
        "start_char_index": 0,
        "end_char_index": 19,
    }
    stream = b"".join(
        message_event(d)
        for d in [
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
            block_delta(0, {"type": "text_delta", "text": "The grass"}),
            block_delta(0, {"type": "text_delta", "text": " is green"}),
            block_delta(0, {"type": "citations_delta", "citation": citation}),
            block_delta(0, {"type": "citations_delta", "citation": citation}),
            block_delta(0, {"type": "text_delta", "text": "."}),
            block_delta(1, {"type": "signature_delta", "signature": "Eq"}),
            block_delta(1, {"type": "signature_delta", "signature": "Eq"}),
        ]
    )
    out, seen = folds_seen(stream)
    events = decode(stream)
    assert out[:2] == [events[0].raw, events[1].raw] and out[3:] == [e.raw for e in events[4:]]
    assert seen == [(None, 2)]
    assert assemble_messages(b"".join(out)) == assemble_messages(stream)


def test_messages_runs_break_where_the_block_or_the_delta_type_changes() -> None:
    stream = b"".join(
        message_event(block_delta(i, {"type": kind, field: text}))
        for i, kind, field, text in [
            (1, "text_delta", "text", "a"),
            (1, "text_delta", "text", "b"),
            (2, "text_delta", "text", "c"),
            (2, "thinking_delta", "thinking", "d"),
            (2, "thinking_delta", "thinking", "e"),
            (2, "input_json_delta", "partial_json", "f"),
            (2, "input_json_delta", "partial_json", "g"),
        ]
    )
    out, seen = folds_seen(stream)
    assert [json.loads(decode(e)[0].data or "")["delta"] for e in out] == [
        {"type": "text_delta", "text": "ab"},
        {"type": "text_delta", "text": "c"},
        {"type": "thinking_delta", "thinking": "de"},
        {"type": "input_json_delta", "partial_json": "fg"},
    ]
    assert out[1] == decode(stream)[2].raw and [c for _, c in seen] == [2, 2, 2]


# -- OpenAI Responses -------------------------------------------------------------------------

RESPONSE_ID = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"


def response_object(status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1741476542,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "gpt-5-2025-08-07",
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None
        if status != "completed"
        else {
            "input_tokens": 36,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 87,
            "output_tokens_details": {"reasoning_tokens": 64},
            "total_tokens": 123,
        },
        "user": None,
        "metadata": {},
    }


def responses_stream(items: list[dict[str, Any]], pad: Callable[[int], str] | None = None) -> bytes:
    """A Responses stream as OpenAI sends it, for output *items*: each a ``reasoning``
    item with ``summary`` and/or ``content`` (lists of parts, each a list of deltas), a
    ``message`` with ``text`` or ``refusal`` deltas, a ``function_call`` with
    ``arguments`` deltas or a ``custom_tool_call`` with ``input`` deltas. Deltas carry
    the ``obfuscation`` padding *pad* makes of their number, where given."""
    events: list[dict[str, Any]] = []

    def add(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    def delta(kind: str, text: str, **fields: Any) -> None:
        if pad is not None:
            fields["obfuscation"] = pad(len(events))
        add(kind, **fields, delta=text)

    add("response.created", response=response_object("in_progress", []))
    add("response.in_progress", response=response_object("in_progress", []))
    done: list[dict[str, Any]] = []
    for at, spec in enumerate(items):
        kind, item_id = spec["type"], spec["id"]
        where = {"item_id": item_id, "output_index": at}
        if kind == "reasoning":
            add(
                "response.output_item.added",
                output_index=at,
                item={"id": item_id, "type": "reasoning", "summary": []},
            )
            summary = []
            for index, parts in enumerate(spec.get("summary", [])):
                part: dict[str, Any] = {"type": "summary_text", "text": ""}
                add(
                    "response.reasoning_summary_part.added", **where, summary_index=index, part=part
                )
                for text in parts:
                    delta(
                        "response.reasoning_summary_text.delta", text, **where, summary_index=index
                    )
                full = "".join(parts)
                add("response.reasoning_summary_text.done", **where, summary_index=index, text=full)
                add(
                    "response.reasoning_summary_part.done",
                    **where,
                    summary_index=index,
                    part={**part, "text": full},
                )
                summary.append({"type": "summary_text", "text": full})
            content = []
            for index, parts in enumerate(spec.get("content", [])):
                for text in parts:
                    delta("response.reasoning_text.delta", text, **where, content_index=index)
                full = "".join(parts)
                add("response.reasoning_text.done", **where, content_index=index, text=full)
                content.append({"type": "reasoning_text", "text": full})
            item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": summary}
            if content:
                item["content"] = content
        elif kind == "message":
            add(
                "response.output_item.added",
                output_index=at,
                item={
                    "id": item_id,
                    "type": "message",
                    "status": "in_progress",
                    "content": [],
                    "role": "assistant",
                },
            )
            field = "text" if "text" in spec else "refusal"
            part = (
                {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                if field == "text"
                else {"type": "refusal", "refusal": ""}
            )
            where = {**where, "content_index": 0}
            add("response.content_part.added", **where, part=part)
            full = "".join(spec[field])
            if field == "text":
                for text in spec["text"]:
                    delta("response.output_text.delta", text, **where, logprobs=[])
                add("response.output_text.done", **where, text=full, logprobs=[])
            else:
                for text in spec["refusal"]:
                    delta("response.refusal.delta", text, **where)
                add("response.refusal.done", **where, refusal=full)
            part = {**part, field: full}
            add("response.content_part.done", **where, part=part)
            item = {
                "id": item_id,
                "type": "message",
                "status": "completed",
                "content": [part],
                "role": "assistant",
            }
        elif kind == "function_call":
            started = {
                "id": item_id,
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": spec["call_id"],
                "name": spec["name"],
            }
            add("response.output_item.added", output_index=at, item=started)
            for text in spec["arguments"]:
                delta("response.function_call_arguments.delta", text, **where)
            full = "".join(spec["arguments"])
            add("response.function_call_arguments.done", **where, arguments=full)
            item = {**started, "status": "completed", "arguments": full}
        else:
            started = {
                "id": item_id,
                "type": "custom_tool_call",
                "status": "in_progress",
                "input": "",
                "call_id": spec["call_id"],
                "name": spec["name"],
            }
            add("response.output_item.added", output_index=at, item=started)
            for text in spec["input"]:
                delta("response.custom_tool_call_input.delta", text, **where)
            full = "".join(spec["input"])
            add("response.custom_tool_call_input.done", **where, input=full)
            item = {**started, "status": "completed", "input": full}
        add("response.output_item.done", output_index=at, item=item)
        done.append(item)
    add("response.completed", response=response_object("completed", done))
    return b"".join(sse(e, event=e["type"]) for e in events)


RESPONSES_DELTAS = {
    "response.output_text.delta": ("item_id", "output_index", "content_index"),
    "response.refusal.delta": ("item_id", "output_index", "content_index"),
    "response.function_call_arguments.delta": ("item_id", "output_index"),
    "response.reasoning_summary_text.delta": ("item_id", "output_index", "summary_index"),
    "response.reasoning_text.delta": ("item_id", "output_index", "content_index"),
    "response.custom_tool_call_input.delta": ("item_id", "output_index"),
}


def assemble_responses(raw: bytes) -> dict[tuple[Any, ...], str]:
    """What a client assembles from a Responses stream: the text of each delta kind, by
    what it adds to."""
    texts: dict[tuple[Any, ...], str] = {}
    for document in documents(raw):
        keys = RESPONSES_DELTAS.get(document["type"])
        if keys is not None:
            at = (document["type"], *(document[k] for k in keys))
            texts[at] = texts.get(at, "") + document["delta"]
    return texts


RESPONSE_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def sdk_responses(raw: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """What openai-python's own accumulator makes of a Responses stream: the last
    snapshot of each item's text and arguments, and the final response."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    snapshots: dict[str, str] = {}
    for document in documents(raw):
        for event in state.handle_event(RESPONSE_EVENT.validate_python(document)):
            if isinstance(event, ResponseTextDeltaEvent | ResponseFunctionCallArgumentsDeltaEvent):
                snapshots[event.item_id] = event.snapshot
    return snapshots, documents(raw)[-1]["response"]


RESPONSES = responses_stream(
    [
        {
            "type": "reasoning",
            "id": "rs_67ccd3",
            "summary": [["**Che", "cking", " the", " weather**"], ["Then", " answer"]],
        },
        {
            "type": "message",
            "id": "msg_67ccd3",
            "text": ["It", "'s", " 18", "°C", " in", " Paris", "."],
        },
        {
            "type": "function_call",
            "id": "fc_67ccd3",
            "call_id": "call_12345xyz",
            "name": "get_weather",
            "arguments": ['{"', "location", '":"', 'Paris"}'],
        },
    ],
    pad=lambda n: "aBc0"[: n % 5],
)


def test_responses_deltas_fold_with_the_last_sequence_number_and_no_padding() -> None:
    out, seen = folds_seen(RESPONSES)
    events = decode(RESPONSES)
    assert [c for _, c in seen] == [4, 2, 7, 4]
    folded = [json.loads(decode(e)[0].data or "") for e in out]
    text = next(d for d in folded if d["type"] == "response.output_text.delta")
    originals = [
        json.loads(e.data or "") for e in events if e.event == "response.output_text.delta"
    ]
    assert text == {
        "type": "response.output_text.delta",
        "sequence_number": originals[-1]["sequence_number"],
        "item_id": "msg_67ccd3",
        "output_index": 1,
        "content_index": 0,
        "logprobs": [],
        "delta": "It's 18°C in Paris.",
    }
    assert all("obfuscation" not in d for d in folded if d["type"].endswith(".delta"))
    assert decode(out[folded.index(text)])[0].event == "response.output_text.delta"
    # What does not fold comes byte for byte, and sequence numbers still go up.
    raws = {e.raw for e in events}
    assert all(
        e in raws for e, d in zip(out, folded, strict=True) if not d["type"].endswith(".delta")
    )
    numbers = [d["sequence_number"] for d in folded]
    assert numbers == sorted(numbers) and numbers[-1] == len(events) - 1
    assert assemble_responses(b"".join(out)) == assemble_responses(RESPONSES)
    assert sdk_responses(b"".join(out)) == sdk_responses(RESPONSES)
    snapshots, _ = sdk_responses(b"".join(out))
    assert snapshots == {"msg_67ccd3": "It's 18°C in Paris.", "fc_67ccd3": '{"location":"Paris"}'}


def test_the_openai_sdk_streams_a_folded_responses_stream_to_the_same_text() -> None:
    def read(body: bytes) -> tuple[list[str], dict[str, Any]]:
        client = openai.OpenAI(
            api_key="x", base_url="http://test/v1", http_client=serving(openai, body)
        )
        with client.responses.stream(model="gpt-5", input="Weather in Paris?") as stream:
            texts = [e.snapshot for e in stream if e.type == "response.output_text.delta"]
            return texts[-1:], stream.get_final_response().to_dict()

    assert read(b"".join(fold(RESPONSES))) == read(RESPONSES)


def test_reasoning_text_refusal_and_custom_tool_input_fold_too() -> None:
    stream = responses_stream(
        [
            {"type": "reasoning", "id": "rs_1", "content": [["We", " need", " 2+2"], ["=4"]]},
            {"type": "message", "id": "msg_1", "refusal": ["I'm", " sorry", ", I", " can't."]},
            {
                "type": "custom_tool_call",
                "id": "ctc_1",
                "call_id": "call_1",
                "name": "code_exec",
                "input": ["print(", "'hi'", ")"],
            },
        ]
    )
    out, seen = folds_seen(stream)
    assert [c for _, c in seen] == [3, 4, 3]  # a run of one ("=4") is not a fold
    kinds = [json.loads(decode(e)[0].data or "")["type"] for e in out]
    assert kinds.count("response.reasoning_text.delta") == 2
    assert assemble_responses(b"".join(out)) == assemble_responses(stream)
    assert (
        assemble_responses(stream)[("response.refusal.delta", "msg_1", 1, 0)]
        == "I'm sorry, I can't."
    )
    assert sdk_responses(b"".join(out)) == sdk_responses(stream)


def test_responses_text_with_logprobs_passes_byte_for_byte() -> None:
    def text(delta: str, n: int) -> bytes:
        document: dict[str, Any] = {
            "type": "response.output_text.delta",
            "sequence_number": n,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": delta,
            "logprobs": [{"token": delta, "logprob": -0.5, "top_logprobs": []}],
        }
        return sse(document, event=document["type"])

    stream = text("a", 4) + text("b", 5)
    assert fold(stream) == [e.raw for e in decode(stream)]


def test_responses_runs_break_where_the_item_or_its_part_changes() -> None:
    def text(n: int, **where: Any) -> bytes:
        document: dict[str, Any] = {
            "type": "response.output_text.delta",
            "sequence_number": n,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": str(n),
            "logprobs": [],
        }
        document.update(where)
        return sse(document, event=document["type"])

    stream = (
        text(1)
        + text(2)
        + text(3, content_index=1)
        + text(4, content_index=1)
        + text(5, item_id="msg_2", output_index=1)
        + text(6, item_id="msg_2", output_index=1)
    )
    out, seen = folds_seen(stream)
    assert [json.loads(decode(e)[0].data or "")["delta"] for e in out] == ["12", "34", "56"]
    assert [covers for _, covers in seen] == [2, 2, 2]
    assert [json.loads(decode(e)[0].data or "")["sequence_number"] for e in out] == [2, 4, 6]


# -- what every API shares -------------------------------------------------------------------


def content(text: str) -> bytes:
    return sse(chat({"content": text}))


def test_ids_are_the_last_of_each_run() -> None:
    stream = b"".join(sse(chat({"content": w}), id=f"fps_1.{n}") for n, w in enumerate("abcde", 1))
    stream += sse(chat({}, "stop"), id="fps_1.6") + sse(chat({"content": "f"}), id="fps_1.7")
    out, seen = folds_seen(stream)
    assert [decode(e)[0].id for e in out] == ["fps_1.5", "fps_1.6", "fps_1.7"]
    assert seen == [("fps_1.5", 5)]
    assert out[1:] == [e.raw for e in decode(stream)[5:]]


def test_an_event_without_an_id_does_not_join_a_run_that_has_one() -> None:
    """After events 1 (id) and 2 (no id) a client's Last-Event-ID is 1's: a fold of both
    could only say 1 or nothing; the run stops instead."""
    stream = content("a") + sse(chat({"content": "b"}), id="7") + content("c") + content("d")
    out, seen = folds_seen(stream)
    assert [decode(e)[0].id for e in out] == ["7", None]
    assert seen == [("7", 2), (None, 2)]
    assert assemble_chat(b"".join(out)) == assemble_chat(stream)


def test_a_run_of_one_passes_byte_for_byte() -> None:
    spaced = b'data:{ "id" : "c", "choices" : [ {"index":0, "delta" : {"content" : "\\u00e9"}} ] }\r\n\r\n'
    for stream in (content("x"), spaced, content("x") + sse(chat({"content": "y"}, index=1))):
        assert fold(stream) == [e.raw for e in decode(stream)]


def test_crlf_events_fold_like_any_other() -> None:
    stream = content("Hel") + content("lo") + sse(chat({"content": "!"}), id="3")
    stream = stream.replace(b"\n", b"\r\n")
    out, seen = folds_seen(stream)
    assert len(out) == 1 and seen == [("3", 3)]
    assert assemble_chat(out[0]) == assemble_chat(stream)


def test_malformed_data_passes_untouched_and_breaks_runs() -> None:
    oddities = [
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"a"}}\n\n',  # cut short
        b"data: [1, 2]\n\n",
        b'data: {"choices": "none"}\n\n',
        b'data: {"choices": [{"index": 0, "delta": "text"}]}\n\n',
        b'data: {"choices": [7]}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":"0","delta":{"type":"text_delta","text":"a"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","extra":1}}\n\n',
        b'event: content_block_delta\ndata: {"type":"message_delta","index":0,"delta":{"type":"text_delta","text":"a"}}\n\n',
        b'event: response.output_text.delta\ndata: {"type":"response.refusal.delta","item_id":"m","output_index":0,"content_index":0,"delta":"a"}\n\n',
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":"a"}\n\n',
        b"data: \xff\xfe{}\n\n",
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"n":1e999999}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}\n\n',
    ]
    for odd in oddities:
        stream = content("a") + content("b") + odd + odd + content("c") + content("d")
        out = fold(stream)
        assert out[1:3] == [odd, odd] and len(out) == 4, odd


def test_events_with_more_than_one_data_line_a_retry_a_comment_or_an_unknown_field_stay() -> None:
    two_lines = b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"x"}}]}\n\n'
    retry = content("x")[:-1] + b"retry: 3000\n\n"
    bad_retry = content("x")[:-1] + b"retry: soon\n\n"
    comment = b": note\n" + content("x")
    unknown = content("x")[:-1] + b"x-trace: 1\n\n"
    for odd in (two_lines, retry, bad_retry, comment, unknown):
        stream = content("a") + odd + odd + content("b")
        assert fold(stream) == [e.raw for e in decode(stream)], odd
    # Repeated fields a client reads (an upstream's id, then a gateway's) are fine.
    twice = b"id: up-1\n" + content("x")[:-1] + b"id: s.1\n\n"
    assert len(fold(twice + twice)) == 1


def test_the_event_name_is_the_same_across_a_run() -> None:
    named = sse(chat({"content": "b"}), event="message")
    stream = content("a") + named + named + content("c")
    out = fold(stream)
    assert len(out) == 3 and decode(out[1])[0].event == "message"
    assert assemble_chat(b"".join(out)) == assemble_chat(stream)
    # Messages deltas without their name are another run than those with it.
    text = block_delta(0, {"type": "text_delta", "text": "t"})
    stream = sse(text) + sse(text) + message_event(text) + message_event(text)
    assert [decode(e)[0].event for e in fold(stream)] == [None, "content_block_delta"]


def test_comments_are_dropped_only_when_asked_and_data_is_sent() -> None:
    stream = content("a") + b": keep-alive\n\n" + content("b") + b": ping\n\n\n" + content("c")
    # Kept, they break runs and pass as they came.
    assert fold(stream) == [e.raw for e in decode(stream)]
    out, seen = folds_seen(stream, drop_comments=True)
    assert len(out) == 1 and seen == [(None, 3)]
    assert assemble_chat(out[0]) == assemble_chat(stream)
    # A window of keep-alives only is sent as it is: it is what keeps the link open.
    quiet = b": keep-alive\n\n: keep-alive\n\n"
    assert fold(quiet, drop_comments=True) == [b": keep-alive\n\n"] * 2
    # A block with an id or a retry changes what a client keeps: it stays.
    lasting = b": x\nid: 9\n\n" + b"retry: 10\n\n"
    assert fold(content("a") + lasting, drop_comments=True) == [
        content("a"),
        *[e.raw for e in decode(lasting)],
    ]


def test_folding_nothing_gives_nothing() -> None:
    assert fold_events([]) == [] and fold_events([], drop_comments=True) == []


# -- any stream, in any windows ---------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=6)


@st.composite
def chat_streams(draw: st.DrawFn) -> bytes:
    """A chat stream: a role chunk, then text, reasoning, tool-call argument and refusal
    deltas for one or two choices, keep-alives, maybe ids; a finish per choice."""
    ids = draw(st.booleans())
    choices = draw(st.integers(1, 2))
    chunks = [sse(chat({"role": "assistant", "content": ""}, index=i)) for i in range(choices)]
    started: set[tuple[int, int]] = set()
    for op in draw(
        st.lists(
            st.tuples(st.integers(0, 6), st.integers(0, choices - 1), st.integers(0, 1), _TEXT),
            max_size=40,
        )
    ):
        kind, choice, tool, text = op
        if kind == 0:
            chunks.append(b": keep-alive\n\n")
            continue
        if kind <= 2:
            delta: dict[str, Any] = {"content": text}
        elif kind == 3:
            delta = {"reasoning_content": text, "content": None}
        elif kind == 4:
            delta = {"refusal": text}
        else:
            # Calls start in order (the SDK's accumulator counts on it): 0, then 1.
            tool = min(tool, sum(c == choice for c, _ in started))
            if (choice, tool) not in started:
                started.add((choice, tool))
                chunks.append(
                    sse(
                        chat(
                            {"tool_calls": [tool_start(tool, f"call_{choice}{tool}", "f")]},
                            index=choice,
                        )
                    )
                )
            delta = tool_args(tool, text)
        chunks.append(sse(chat(delta, index=choice)))
    chunks += [sse(chat({}, "stop", index=i)) for i in range(choices)]
    if ids:
        chunks = [
            c.replace(b"data: ", b"id: %d\ndata: " % n, 1) if c[:1] != b":" else c
            for n, c in enumerate(chunks, 1)
        ]
    return b"".join(chunks) + b"data: [DONE]\n\n"


@st.composite
def messages_streams(draw: st.DrawFn) -> bytes:
    """A Messages stream: blocks of thinking (and its signature), text and tool input
    (a JSON document cut anywhere), pings and keep-alives between their deltas."""
    events = [message_event(MESSAGE_START)]
    kinds = draw(st.lists(st.sampled_from(["thinking", "text", "tool_use"]), max_size=4))
    for index, kind in enumerate(kinds):
        start: dict[str, Any] = {"type": kind, kind: ""}
        if kind == "thinking":
            start["signature"] = ""
        if kind == "tool_use":
            start = {"type": "tool_use", "id": f"toolu_{index}", "name": "f", "input": {}}
            document = json.dumps(
                draw(
                    st.dictionaries(
                        st.text("abc", max_size=3), st.text("xyz é", max_size=5), max_size=3
                    )
                )
            )
            cuts = sorted(draw(st.lists(st.integers(0, len(document)), max_size=8)))
            pieces = [
                document[a:b] for a, b in zip([0, *cuts], [*cuts, len(document)], strict=True)
            ]
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        else:
            field = "text" if kind == "text" else "thinking"
            deltas = [
                {"type": f"{field}_delta", field: t} for t in draw(st.lists(_TEXT, max_size=8))
            ]
            if kind == "thinking":
                deltas.append({"type": "signature_delta", "signature": "EqQB"})
        events.append(
            message_event({"type": "content_block_start", "index": index, "content_block": start})
        )
        for delta in deltas:
            events.append(
                draw(
                    st.sampled_from(
                        [b"", b"", b": keep-alive\n\n", message_event({"type": "ping"})]
                    )
                )
            )
            events.append(message_event(block_delta(index, delta)))
        events.append(message_event({"type": "content_block_stop", "index": index}))
    events.append(
        message_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 9},
            }
        )
    )
    events.append(message_event({"type": "message_stop"}))
    return b"".join(events)


@st.composite
def responses_streams(draw: st.DrawFn) -> bytes:
    items: list[dict[str, Any]] = []
    for at, kind in enumerate(
        draw(
            st.lists(
                st.sampled_from(["summary", "reasoning", "text", "refusal", "call", "custom"]),
                max_size=4,
            )
        )
    ):
        parts = draw(st.lists(_TEXT, max_size=6))
        if kind == "summary":
            items.append(
                {
                    "type": "reasoning",
                    "id": f"rs_{at}",
                    "summary": [parts, draw(st.lists(_TEXT, max_size=3))],
                }
            )
        elif kind == "reasoning":
            items.append({"type": "reasoning", "id": f"rs_{at}", "content": [parts]})
        elif kind in ("text", "refusal"):
            items.append({"type": "message", "id": f"msg_{at}", kind: parts})
        elif kind == "call":
            items.append(
                {
                    "type": "function_call",
                    "id": f"fc_{at}",
                    "call_id": f"call_{at}",
                    "name": "f",
                    "arguments": parts,
                }
            )
        else:
            items.append(
                {
                    "type": "custom_tool_call",
                    "id": f"ctc_{at}",
                    "call_id": f"call_{at}",
                    "name": "f",
                    "input": parts,
                }
            )
    return responses_stream(items, pad=lambda n: "xyz"[: n % 4] if draw(st.booleans()) else "")


def folded_in_windows(raw: bytes, cuts: list[int], drop_comments: bool) -> tuple[bytes, list[int]]:
    """*raw*'s events cut into windows, each folded; the bytes sent and the count of
    events each fold stood for."""
    covers: list[int] = []
    out = b"".join(
        b"".join(fold_events(window, lambda _, n: covers.append(n), drop_comments))
        for window in windows(decode(raw), cuts)
    )
    return out, covers


def check_counts(raw: bytes, out: bytes, covers: list[int], drop_comments: bool) -> None:
    """Every event is sent, or stood for by a fold (or dropped, as a comment); the ids
    sent are the input's, in order, ending with its last."""
    before, after = decode(raw), decode(out)
    if not drop_comments:
        assert len(after) + sum(covers) - len(covers) == len(before)
    ids = [e.id for e in before if e.id is not None]
    sent = [e.id for e in after if e.id is not None]
    assert sent == [i for i in ids if i in set(sent)] and sent[-1:] == ids[-1:]


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_CUTS = st.lists(st.integers(0, 10_000), max_size=6)


@_SETTINGS
@given(chat_streams(), _CUTS, st.booleans())
def test_any_chat_stream_folded_in_any_windows_says_the_same(
    raw: bytes, cuts: list[int], drop: bool
) -> None:
    out, covers = folded_in_windows(raw, cuts, drop)
    assert assemble_chat(out) == assemble_chat(raw)
    assert sdk_chat(out) == sdk_chat(raw)
    check_counts(raw, out, covers, drop)


@_SETTINGS
@given(messages_streams(), _CUTS, st.booleans())
def test_any_messages_stream_folded_in_any_windows_says_the_same(
    raw: bytes, cuts: list[int], drop: bool
) -> None:
    out, covers = folded_in_windows(raw, cuts, drop)
    assert assemble_messages(out) == assemble_messages(raw)
    assert sdk_messages(out) == sdk_messages(raw)
    check_counts(raw, out, covers, drop)


@_SETTINGS
@given(responses_streams(), _CUTS)
def test_any_responses_stream_folded_in_any_windows_says_the_same(
    raw: bytes, cuts: list[int]
) -> None:
    out, covers = folded_in_windows(raw, cuts, False)
    assert assemble_responses(out) == assemble_responses(raw)
    assert sdk_responses(out) == sdk_responses(raw)
    check_counts(raw, out, covers, False)
    numbers = [json.loads(e.data or "")["sequence_number"] for e in decode(out)]
    assert numbers == sorted(set(numbers))


def test_a_whole_stream_in_random_windows_folds_to_fewer_events() -> None:
    """Folding does fold: a long chat answer in windows of a few events comes in fewer."""
    rng = random.Random(7)
    raw = sse(chat({"role": "assistant", "content": ""})) + b"".join(
        content(f" w{n}") for n in range(200)
    )
    cuts = sorted(rng.randrange(200) for _ in range(30))
    out, covers = folded_in_windows(raw, cuts, False)
    assert len(decode(out)) < 60 and sum(covers) > 150
    assert assemble_chat(out) == assemble_chat(raw)


# -- an SDK's HTTP client answering with a stream -----------------------------------------------


def serving(sdk: Any, body: bytes) -> Any:
    """An HTTP client for *sdk* that answers every request with the event stream *body*
    — of the HTTP library the SDK is built on."""
    http = importlib.import_module(sdk.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return http.Client(transport=http.MockTransport(handler))


# -- the resume extension's catch-up ----------------------------------------------------------


def test_a_reader_catching_up_gets_deltas_folded_by_the_same_rules() -> None:
    """The resume extension folds the numbered events a reader missed with `fold_events`:
    thinking and tool input fold now too, the count of chunks it keeps follows every
    fold, and an item that is not one whole event passes as it is."""
    framer = EventFramer(b"fps_1.")
    framed = framer.feed(MESSAGES)  # its events have ids of their own: the gateway's win
    events = framer.take()
    odd = b"data: half an event"
    folds = Folds()
    out = merge_deltas([*events, odd], folds)
    assert out[-1] == odd and len(out) == len(events) - 11 + 1
    assert assemble_messages(b"".join(out[:-1])) == assemble_messages(framed)
    assert sdk_messages(b"".join(out[:-1])) == sdk_messages(framed)
    ids = [decode(e)[0].id for e in out[:-1]]
    assert ids[2:4] == ["fps_1.7", "fps_1.8"]  # five thinking deltas, then the signature
    # A client counting chunks: its 3rd chunk ended with event 7, its 11th with 17.
    assert [folds.event_of(n) for n in (2, 3, 4, 11)] == [2, 7, 8, 17]
