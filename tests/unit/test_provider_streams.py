"""Providers' own shapes of a Chat Completions answer, through every client API: content
given as a list of parts (Mistral's reasoning models), ``reasoning`` and
``reasoning_content``, usage in ``x_groq``, tool calls without an index or with one that
changes mid-call (Gemini), empty ids on continuations (Qwen) — on recordings of Mistral,
Groq and Qwen (fetched at test time, pinned) split at every byte, and on streams built
from the shapes the providers document."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from filterproxy.extensions.usage.filter import UsageScanner
from filterproxy.translate import MessagesFromChatStream, messages_response
from filterproxy.translate.common import UnmappableAnswer
from filterproxy.translate.responses_over_chat import (
    ResponsesFromChatStream,
    response_shell,
    responses_answer,
)
from tests.support.chat_messages import (
    check_messages_stream,
    events_of,
    normalized,
    sse,
)
from tests.support.responses import check_responses_stream
from tests.support.responses import normalized as normalized_responses
from tests.thirdparty import (
    VERCEL_AI_PROVIDER_ANSWERS,
    VERCEL_AI_PROVIDER_STREAMS,
    vercel_ai_file,
)

REQUEST: dict[str, Any] = {"model": "m", "input": "hi", "stream": True}


def what_chunks_say(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Reasoning, text, tool calls (in the order they open: name and arguments) and the
    last usage of a provider's chunks, read as each provider documents its fields."""
    reasoning = text = ""
    calls: dict[str, dict[str, str]] = {}
    by_index: dict[int, str] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
            content = delta.get("content")
            if isinstance(content, str):
                text += content
            for part in content if isinstance(content, list) else []:
                if part["type"] == "text":
                    text += part["text"]
                elif part["type"] == "thinking":
                    reasoning += "".join(p["text"] for p in part["thinking"])
            for position, call in enumerate(delta.get("tool_calls") or []):
                index = call.get("index", position)
                key = call.get("id") or by_index[index]
                by_index[index] = key
                entry = calls.setdefault(key, {"name": "", "arguments": ""})
                function = call.get("function") or {}
                entry["name"] = entry["name"] or function.get("name") or ""
                entry["arguments"] += function.get("arguments") or ""
    return {"reasoning": reasoning, "text": text, "calls": list(calls.values()), "usage": usage}


def recording(path: str, sha256: str) -> tuple[bytes, dict[str, Any]]:
    """The recorded stream as the provider sent it, and what it says."""
    lines = [line for line in vercel_ai_file(path, sha256).splitlines() if line.strip()]
    data = b"".join(b"data: " + line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"
    return data, what_chunks_say([json.loads(line) for line in lines])


def cuttings(data: bytes) -> list[list[bytes]]:
    """The stream in pieces of 1, 2, 3, 7 and 64 bytes, and at 40 random points."""
    cuts = [[data[i : i + n] for i in range(0, len(data), n)] for n in (1, 2, 3, 7, 64)]
    rng = random.Random(len(data))
    for _ in range(10):
        points = sorted(rng.sample(range(1, len(data)), min(40, len(data) - 1)))
        cuts.append([data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)])
    return cuts


def run(make: Callable[[], Any], pieces: list[bytes]) -> bytes:
    stream = make()
    return b"".join(stream.feed(piece) for piece in pieces) + stream.end()


def messages_say(raw: bytes) -> dict[str, Any]:
    said = check_messages_stream(events_of(raw))
    assert "error" not in said, said

    def joined(kind: str, key: str) -> str:
        return "".join(d[key] for b in said["blocks"] if b["type"] == kind for d in b["deltas"])

    return {
        "reasoning": joined("thinking", "thinking"),
        "text": joined("text", "text"),
        "calls": [
            {"name": b["name"], "arguments": "".join(d["partial_json"] for d in b["deltas"])}
            for b in said["blocks"]
            if b["type"] == "tool_use"
        ],
        "delta": said["delta"],
    }


def responses_say(raw: bytes) -> dict[str, Any]:
    said = check_responses_stream(raw)
    output = said["response"]["output"]
    return {
        "reasoning": "".join(
            c["text"] for o in output if o["type"] == "reasoning" for c in o["content"]
        ),
        "text": "".join(o["content"][0]["text"] for o in output if o["type"] == "message"),
        "calls": [
            {"name": o["name"], "arguments": o["arguments"]}
            for o in output
            if o["type"] == "function_call"
        ],
        "response": said["response"],
    }


RECORDINGS = pytest.mark.parametrize(
    ("path", "sha256"),
    VERCEL_AI_PROVIDER_STREAMS,
    ids=[p.rsplit("/", 1)[-1] for p, _ in VERCEL_AI_PROVIDER_STREAMS],
)


@RECORDINGS
def test_recorded_provider_streams_reach_a_messages_client_whole_at_every_split(
    path: str, sha256: str
) -> None:
    data, expected = recording(path, sha256)
    assert expected["text"] or expected["calls"], "every recording answers something"

    def make() -> MessagesFromChatStream:
        return MessagesFromChatStream("recorded")

    whole = run(make, [data])
    said = messages_say(whole)
    assert said["reasoning"] == expected["reasoning"]
    assert said["text"] == expected["text"]
    assert said["calls"] == expected["calls"]
    assert said["delta"]["usage"]["output_tokens"] == expected["usage"]["completion_tokens"]
    stop = said["delta"]["delta"]["stop_reason"]
    assert stop == ("tool_use" if expected["calls"] else "end_turn")
    first = normalized(whole)
    for pieces in cuttings(data):
        assert normalized(run(make, pieces)) == first, [len(p) for p in pieces][:5]


@RECORDINGS
def test_recorded_provider_streams_reach_a_responses_client_whole_at_every_split(
    path: str, sha256: str
) -> None:
    data, expected = recording(path, sha256)

    def make() -> ResponsesFromChatStream:
        return ResponsesFromChatStream(response_shell(REQUEST, "m"))

    whole = run(make, [data])
    said = responses_say(whole)
    assert said["reasoning"] == expected["reasoning"]
    assert said["text"] == expected["text"]
    assert said["calls"] == [
        {"name": c["name"], "arguments": c["arguments"] or "{}"} for c in expected["calls"]
    ]
    usage = said["response"]["usage"]
    assert usage["output_tokens"] == expected["usage"]["completion_tokens"]
    assert usage["input_tokens"] == expected["usage"]["prompt_tokens"]
    first = normalized_responses(whole)
    for pieces in cuttings(data):
        assert normalized_responses(run(make, pieces)) == first


@RECORDINGS
def test_recorded_provider_streams_passed_to_a_chat_client_are_counted_at_every_split(
    path: str, sha256: str
) -> None:
    # A chat client gets the provider's bytes as they are; what the gateway reads of
    # them is the usage (for the access log, metrics and limits).
    data, expected = recording(path, sha256)
    for pieces in [[data], *cuttings(data)]:
        scanner = UsageScanner()
        for piece in pieces:
            scanner.feed(piece)
        assert (scanner.prompt_tokens, scanner.completion_tokens) == (
            expected["usage"]["prompt_tokens"],
            expected["usage"]["completion_tokens"],
        )


@pytest.mark.parametrize(
    ("path", "sha256"),
    VERCEL_AI_PROVIDER_ANSWERS,
    ids=[p.rsplit("/", 1)[-1] for p, _ in VERCEL_AI_PROVIDER_ANSWERS],
)
def test_recorded_whole_answers_keep_their_reasoning_text_and_calls(path: str, sha256: str) -> None:
    document = json.loads(vercel_ai_file(path, sha256))
    message = document["choices"][0]["message"]
    expected = what_chunks_say([{"choices": [{"delta": message}]}])
    blocks = messages_response(document, "m")["content"]
    assert (
        "".join(b["thinking"] for b in blocks if b["type"] == "thinking") == expected["reasoning"]
    )
    assert "".join(b["text"] for b in blocks if b["type"] == "text") == expected["text"]
    assert [b["name"] for b in blocks if b["type"] == "tool_use"] == [
        c["name"] for c in expected["calls"]
    ]
    output = responses_answer(document, response_shell(REQUEST, "m"))["output"]
    reasoning = "".join(c["text"] for o in output if o["type"] == "reasoning" for c in o["content"])
    assert reasoning == expected["reasoning"]
    assert (
        "".join(o["content"][0]["text"] for o in output if o["type"] == "message")
        == expected["text"]
    )


# -- shapes the providers document --------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def gemini_call(index: int, call_id: str, arguments: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": arguments},
    }


#: Gemini's OpenAI-compatible endpoint with streamed function-call arguments, as its
#: documentation shows it: every chunk repeats the call's id and name, and the index
#: of a call changes between its chunks (1 then 0 for the first call, 0 then 1 for the
#: second); the first chunk carries the thought signature in ``extra_content``.
GEMINI_STREAM = sse(
    [
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        **gemini_call(1, "fc-a", ""),
                        "extra_content": {"google": {"thought_signature": "c2ln"}},
                    }
                ],
            }
        ),
        chunk({"role": "assistant", "tool_calls": [gemini_call(0, "fc-a", '{"location":"Boston')]}),
        chunk({"role": "assistant", "tool_calls": [gemini_call(0, "fc-a", '"}')]}),
        chunk({"role": "assistant", "tool_calls": [gemini_call(0, "fc-b", "")]}),
        chunk({"role": "assistant", "tool_calls": [gemini_call(1, "fc-b", '{"location":"Delhi')]}),
        chunk({"role": "assistant", "tool_calls": [gemini_call(1, "fc-b", '"}')]}, "tool_calls"),
    ]
)


def test_a_call_is_known_by_its_id_when_its_index_changes() -> None:
    said = messages_say(run(lambda: MessagesFromChatStream("m"), [GEMINI_STREAM]))
    assert [(c["name"], json.loads(c["arguments"])) for c in said["calls"]] == [
        ("get_current_weather", {"location": "Boston"}),
        ("get_current_weather", {"location": "Delhi"}),
    ]
    said = responses_say(
        run(lambda: ResponsesFromChatStream(response_shell(REQUEST, "m")), [GEMINI_STREAM])
    )
    assert [json.loads(c["arguments"]) for c in said["calls"]] == [
        {"location": "Boston"},
        {"location": "Delhi"},
    ]


#: Content parts in the shapes providers send: Mistral's thinking part (a list of text
#: parts), a thinking part whose text is a string, text parts, and an empty text part.
PARTS_STREAM = sse(
    [
        chunk({"role": "assistant", "content": [{"type": "thinking", "thinking": "plan: "}]}),
        chunk(
            {
                "content": [
                    {"type": "thinking", "thinking": [{"type": "text", "text": "add 👍"}]},
                    {"type": "text", "text": ""},
                    {"type": "text", "text": "2 + 2 "},
                ]
            }
        ),
        chunk({"content": [{"type": "text", "text": "= 4"}]}, "stop"),
    ]
)


def test_content_parts_become_thinking_and_text_in_each_client_api() -> None:
    said = messages_say(run(lambda: MessagesFromChatStream("m"), [PARTS_STREAM]))
    assert (said["reasoning"], said["text"]) == ("plan: add 👍", "2 + 2 = 4")
    said = responses_say(
        run(lambda: ResponsesFromChatStream(response_shell(REQUEST, "m")), [PARTS_STREAM])
    )
    assert (said["reasoning"], said["text"]) == ("plan: add 👍", "2 + 2 = 4")


#: A part no client API has a form for (Mistral's citations), after some text.
UNKNOWN_PART_STREAM = sse(
    [
        chunk({"role": "assistant", "content": [{"type": "text", "text": "See "}]}),
        chunk({"content": [{"type": "reference", "reference_ids": [1]}]}),
        chunk({"content": "more"}, "stop"),
    ]
)


def test_a_part_that_cannot_be_translated_ends_the_stream_in_an_error() -> None:
    events = events_of(run(lambda: MessagesFromChatStream("m"), [UNKNOWN_PART_STREAM]))
    said = check_messages_stream(events)
    assert "'reference'" in said["error"]["message"]
    assert said["error"]["type"] == "api_error"
    said = check_responses_stream(
        run(lambda: ResponsesFromChatStream(response_shell(REQUEST, "m")), [UNKNOWN_PART_STREAM])
    )
    assert said["names"][-2:] == ["error", "response.failed"]
    assert "'reference'" in said["response"]["error"]["message"]


def test_a_whole_answer_with_a_part_that_cannot_be_translated_is_refused() -> None:
    document = {
        "choices": [
            {
                "message": {"role": "assistant", "content": [{"type": "image_url"}]},
                "finish_reason": "stop",
            }
        ]
    }
    with pytest.raises(UnmappableAnswer, match="'image_url'"):
        messages_response(document, "m")
    with pytest.raises(UnmappableAnswer, match="'image_url'"):
        responses_answer(document, response_shell(REQUEST, "m"))
