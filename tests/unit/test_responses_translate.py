"""The Responses translation (filterproxy.translate.responses_client) without sockets:
requests, whole answers and streams — at every split of the upstream's bytes, on our
own streams with what breaks translators and on recorded provider streams — checked
against the Responses API's rules and the openai SDK's own event types."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from filterproxy.translate import Untranslatable
from filterproxy.translate.chat_client import ChatFromMessagesStream
from filterproxy.translate.responses_client import (
    Piped,
    ResponsesFromChatStream,
    chat_request_for_responses,
    response_shell,
    responses_answer,
)
from tests.thirdparty import VERCEL_AI_CHAT_STREAMS, vercel_ai_file
from tests.unit.test_translate import (
    CHAT_STREAM,
    anthropic_recordings,
    chat_chunk,
    events_of,
    splits,
    sse,
    what_messages_say,
)

EVENT = TypeAdapter(ResponseStreamEvent)
REQUEST: dict[str, Any] = {"model": "m", "input": "hi", "stream": True, "tools": []}
_FRESH = re.compile(rb"\b(resp|msg|fc|rs|call)_[0-9a-f]{24}\b")
_TIMES = re.compile(rb'"(created_at|completed_at)":\d+')


def responses_stream() -> ResponsesFromChatStream:
    return ResponsesFromChatStream(response_shell(REQUEST, "m"))


def run(make: Callable[[], ResponsesFromChatStream | Piped], pieces: list[bytes]) -> bytes:
    """What a stream translation made by *make* says for *pieces*."""
    stream = make()
    return b"".join(stream.feed(piece) for piece in pieces) + stream.end()


def normalized(raw: bytes) -> bytes:
    """The stream with its fresh ids (numbered by first appearance) and times blanked."""
    seen: dict[bytes, bytes] = {}

    def number(match: re.Match[bytes]) -> bytes:
        return seen.setdefault(match.group(0), b"%s_%d" % (match.group(1), len(seen)))

    return _TIMES.sub(rb'"\1":0', _FRESH.sub(number, raw))


def check_responses_stream(raw: bytes, *, json_arguments: bool = True) -> dict[str, Any]:
    """The Responses API's rules for a stream; returns its last event's response and
    what its deltas said. With *json_arguments*, a completed call's arguments must be
    JSON (a recording may hold what a model got wrong)."""
    events = events_of(raw)
    names = [name for name, _ in events]
    documents = [data for _, data in events]
    for name, data in events:
        assert name == data["type"], "every event is named by its type"
        EVENT.validate_python(data)  # the openai SDK's own event models
    assert [d["sequence_number"] for d in documents] == list(range(len(documents)))
    assert names[:2] == ["response.created", "response.in_progress"]
    last = documents[-1]
    assert names[-1] in ("response.completed", "response.incomplete", "response.failed")
    assert (
        sum(n in ("response.completed", "response.incomplete", "response.failed") for n in names)
        == 1
    )
    if names[-1] == "response.failed":
        assert names[-2] == "error"
    response = last["response"]
    assert response["id"] == documents[0]["response"]["id"]
    Response.model_validate(response)
    # Items: added, then their deltas, then done; indices 0, 1, 2… in order.
    added: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    text: dict[int, str] = {}
    for data in documents:
        kind = data["type"]
        index = data.get("output_index")
        if kind == "response.output_item.added":
            assert index == len(added)
            added[index] = data["item"]
        elif kind.endswith(".delta"):
            assert index in added and index not in done
            assert data["item_id"] == added[index]["id"]
            text[index] = text.get(index, "") + data["delta"]
        elif kind == "response.output_item.done":
            assert index in added and index not in done
            done[index] = data["item"]
    if names[-1] != "response.failed":
        assert set(done) == set(added)
        assert response["output"] == [done[i] for i in sorted(done)]
    for index, item in done.items():
        if item["type"] == "message":
            assert item["content"][0]["text"] == text.get(index, "")
        elif item["type"] == "function_call":
            assert item["arguments"] == (text.get(index) or "{}")
            if json_arguments and response["status"] == "completed":
                json.loads(item["arguments"])
    return {"response": response, "names": names, "text": text, "added": added}


# -- the request -----------------------------------------------------------------------------


def test_a_responses_request_becomes_a_chat_request() -> None:
    request = chat_request_for_responses(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"},
                        {
                            "type": "input_file",
                            "file_data": "data:application/pdf;base64,AA",
                            "filename": "a.pdf",
                        },
                    ],
                },
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": "hm"}],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Let me look."}],
                },
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "look",
                    "arguments": '{"a":1}',
                },
                {
                    "type": "function_call",
                    "call_id": "call_2",
                    "name": "look",
                    "arguments": '{"a":2}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "one"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "two"}],
                },
            ],
            "tools": [
                {
                    "type": "function",
                    "name": "look",
                    "description": "Look",
                    "parameters": {"type": "object"},
                    "strict": True,
                }
            ],
            "tool_choice": {"type": "function", "name": "look"},
            "max_output_tokens": 300,
            "temperature": 0.5,
            "parallel_tool_calls": False,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "out",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
            "reasoning": {"effort": "low", "summary": "auto"},
            "user": "u-1",
            "store": True,
            "metadata": {"a": "b"},
            "stream": True,
        },
        max_tokens_field="max_completion_tokens",
    )
    assert request == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Answer in French."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/cat.png", "detail": "low"},
                    },
                    {
                        "type": "file",
                        "file": {
                            "file_data": "data:application/pdf;base64,AA",
                            "filename": "a.pdf",
                        },
                    },
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "reasoning_content": "hm",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"a":1}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"a":2}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "one"},
            {"role": "tool", "tool_call_id": "call_2", "content": "two"},
        ],
        "max_completion_tokens": 300,
        "temperature": 0.5,
        "parallel_tool_calls": False,
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "look",
                    "parameters": {"type": "object"},
                    "description": "Look",
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "low",
    }


def test_a_string_input_is_one_user_message_and_allowed_tools_narrow_the_tools() -> None:
    tools = [{"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("a", "b")]
    request = chat_request_for_responses(
        {
            "model": "m",
            "input": "hello",
            "tools": tools,
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "b"}],
            },
        }
    )
    assert request["messages"] == [{"role": "user", "content": "hello"}]
    assert [t["function"]["name"] for t in request["tools"]] == ["b"]
    assert request["tool_choice"] == "required"
    assert "max_tokens" not in request and "stream" not in request


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0]"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0]"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": [{"type": "file_search_call", "id": "fs_1"}]}, "input[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ],
)
def test_what_only_openai_can_do_is_refused_by_name(document: dict[str, Any], field: str) -> None:
    with pytest.raises(Untranslatable) as raised:
        chat_request_for_responses({"model": "m", "input": "x", **document})
    assert raised.value.field == field


# -- the whole answer ------------------------------------------------------------------------


def test_a_chat_completion_becomes_a_response() -> None:
    shell = response_shell({"model": "m", "input": "x", "instructions": "I", "store": False}, "m-1")
    response = responses_answer(
        {
            "id": "chatcmpl-1",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "reasoning_content": "thinking",
                        "content": "Hello",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"x":1}'},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
        },
        shell,
    )
    parsed = Response.model_validate(response)
    assert parsed.output_text == "Hello"
    assert [o.type for o in parsed.output] == ["reasoning", "message", "function_call"]
    assert response["output"][2]["call_id"] == "call_1"
    assert response["status"] == "completed" and response["model"] == "m-1"
    assert response["instructions"] == "I" and response["store"] is False
    assert response["usage"]["input_tokens"] == 10
    assert response["usage"]["input_tokens_details"]["cached_tokens"] == 4
    assert response["usage"]["output_tokens_details"]["reasoning_tokens"] == 2
    assert response["usage"]["total_tokens"] == 15


def test_an_answer_cut_by_the_token_limit_is_incomplete() -> None:
    response = responses_answer(
        {"choices": [{"message": {"content": "Hel"}, "finish_reason": "length"}]},
        response_shell({"model": "m", "input": "x"}, None),
    )
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


# -- the stream ------------------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_every_split_of_a_chat_stream_gives_the_same_responses_events(newline: str) -> None:
    data = CHAT_STREAM if newline == "\n" else CHAT_STREAM.replace(b"\n", b"\r\n")
    whole = run(responses_stream, [data])
    said = check_responses_stream(whole)
    response = said["response"]
    assert said["names"][-1] == "response.completed"
    assert [o["type"] for o in response["output"]] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert response["output"][0]["content"][0]["text"] == "思考中…"
    assert response["output"][1]["content"][0]["text"] == "Héllo 👋 世界!"
    assert [json.loads(o["arguments"]) for o in response["output"][2:]] == [{"q": "東京"}, {"n": 2}]
    assert [o["call_id"] for o in response["output"][2:]] == ["call_a", "call_b"]
    assert response["usage"]["input_tokens"] == 30
    assert response["usage"]["output_tokens"] == 9
    assert response["usage"]["input_tokens_details"]["cached_tokens"] == 10
    expected = normalized(whole)
    for pieces in splits(data):
        assert normalized(run(responses_stream, pieces)) == expected, [len(p) for p in pieces][:4]


def test_the_text_deltas_come_as_the_chunks_do() -> None:
    stream = responses_stream()
    first = stream.feed(sse([chat_chunk({"role": "assistant", "content": "Hel"})], done=False))
    assert b"response.output_text.delta" in first and b'"delta":"Hel"' in first
    assert b"completed" not in first
    second = stream.feed(sse([chat_chunk({"content": "lo"})], done=False))
    assert second.count(b"event: ") == 1 and b'"delta":"lo"' in second


def test_the_response_ends_once_with_the_usage_or_done() -> None:
    data = sse(
        [
            chat_chunk({"content": "x"}),
            chat_chunk({}, "stop"),
            chat_chunk(None, usage={"prompt_tokens": 1, "completion_tokens": 1}),
        ]
    )
    stream = responses_stream()
    out = stream.feed(data) + stream.end()
    assert out.count(b"event: response.completed") == 1
    assert stream.response is not None and stream.response["status"] == "completed"
    # Without a usage chunk, [DONE] (or the end of the body) closes it; [DONE] says the
    # answer is complete even when a server left the finish reason out.
    for data in (sse([chat_chunk({"content": "x"}, "stop")]), sse([chat_chunk({"content": "x"})])):
        stream = responses_stream()
        out = stream.feed(data)
        assert out.count(b"event: response.completed") == 1, data


@pytest.mark.parametrize(
    "body",
    [
        sse([chat_chunk({"content": "Hel"})], done=False),  # cut before its finish
        sse([]),  # [DONE] before anything
        sse(
            [
                chat_chunk({"content": "Hel"}),
                {"error": {"message": "overloaded", "type": "server_error"}},
            ],
            done=False,
        ),
        b"data: {not json\n\n",
        b"",
    ],
)
def test_a_stream_that_fails_or_stops_short_ends_in_error_and_failed(body: bytes) -> None:
    stream = responses_stream()
    out = stream.feed(body) + stream.end()
    said = check_responses_stream(out)
    assert said["names"][-2:] == ["error", "response.failed"]
    error = events_of(out)[-2][1]
    assert error["message"] and error["error"]["message"] == error["message"]
    assert said["response"]["status"] == "failed" and said["response"]["error"]["message"]
    assert stream.response is None  # nothing to keep


def test_a_truncated_answer_streams_as_incomplete() -> None:
    out = run(responses_stream, [sse([chat_chunk({"content": "Hel"}), chat_chunk({}, "length")])])
    said = check_responses_stream(out)
    assert said["names"][-1] == "response.incomplete"
    assert said["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_tool_calls_without_index_get_their_own_items() -> None:
    data = sse(
        [
            chat_chunk(
                {
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "a", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chat_chunk(
                {
                    "tool_calls": [
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "b", "arguments": '{"x":1}'},
                        }
                    ]
                }
            ),
            chat_chunk({}, "stop"),
        ]
    )
    response = check_responses_stream(run(responses_stream, [data]))["response"]
    assert [(o["call_id"], o["name"], o["arguments"]) for o in response["output"]] == [
        ("c1", "a", "{}"),
        ("c2", "b", '{"x":1}'),
    ]


@pytest.mark.parametrize(
    ("path", "sha256"),
    VERCEL_AI_CHAT_STREAMS,
    ids=[p.rsplit("/", 1)[-1] for p, _ in VERCEL_AI_CHAT_STREAMS],
)
def test_recorded_chat_streams_become_the_same_responses_at_every_split(
    path: str, sha256: str
) -> None:
    lines = [line for line in vercel_ai_file(path, sha256).splitlines() if line.strip()]
    data = b"".join(b"data: " + line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"
    text = ""
    for line in lines:
        for choice in json.loads(line).get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or ""
    whole = run(responses_stream, [data])
    said = check_responses_stream(whole)
    messages = [o for o in said["response"]["output"] if o["type"] == "message"]
    assert "".join(m["content"][0]["text"] for m in messages) == text
    expected = normalized(whole)
    for n in (1, 2, 3, 7, 64):
        assert (
            normalized(run(responses_stream, [data[i : i + n] for i in range(0, len(data), n)]))
            == expected
        )
    rng = random.Random(len(data))
    for _ in range(10):
        points = sorted(rng.sample(range(1, len(data)), 40))
        pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
        assert normalized(run(responses_stream, pieces)) == expected


def test_recorded_anthropic_streams_become_responses_through_chat() -> None:
    for name, data in sorted(anthropic_recordings().items()):

        def make() -> Piped:
            return Piped(ChatFromMessagesStream("claude", True), responses_stream())

        whole = run(make, [data])
        said = check_responses_stream(whole, json_arguments=False)
        text, tools, _stop = what_messages_say(data)
        output = said["response"]["output"]
        assert "".join(o["content"][0]["text"] for o in output if o["type"] == "message") == text, (
            name
        )
        calls = [o["arguments"] for o in output if o["type"] == "function_call"]
        assert calls == [t or "{}" for t in tools.values()], name
        expected = normalized(whole)
        for n in (1, 2, 3, 7):
            pieces = [data[i : i + n] for i in range(0, len(data), n)]
            assert normalized(run(make, pieces)) == expected, (name, n)
