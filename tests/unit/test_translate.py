"""The translations between Messages and Chat Completions, without sockets: request and
answer mapping, and the stream state machines fed every split of recorded streams — ours
and the anthropic SDK's own recordings of Anthropic's API (fetched at test time)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from filterproxy.translate import (
    ChatFromMessagesStream,
    MessagesFromChatStream,
    Untranslatable,
    chat_request,
    chat_response,
    count_tokens_estimate,
    messages_request,
    messages_response,
)
from tests.support.chat_messages import (
    CHAT_STREAM,
    Stream,
    anthropic_recordings,
    chat_chunk,
    check_chat_stream,
    check_messages_stream,
    events_of,
    normalized,
    splits,
    sse,
    what_messages_say,
)
from tests.thirdparty import (
    VERCEL_AI_CHAT_STREAMS,
    vercel_ai_file,
)


def run(make: Callable[[], Stream], pieces: list[bytes]) -> bytes:
    stream = make()
    return b"".join(stream.feed(piece) for piece in pieces) + stream.end()


# -- streams: Chat Completions in, Messages out --------------------------------------------


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_every_split_of_a_chat_stream_gives_the_same_messages_events(newline: str) -> None:
    data = CHAT_STREAM.replace(b"\n", newline.encode())

    def make() -> Stream:
        return MessagesFromChatStream("m")

    whole = run(make, [data])
    said = check_messages_stream(events_of(whole))
    kinds = [b["type"] for b in said["blocks"]]
    assert kinds == ["thinking", "text", "tool_use", "tool_use"]
    assert "".join(d["text"] for d in said["blocks"][1]["deltas"]) == "Héllo 👋 世界!"
    assert json.loads("".join(d["partial_json"] for d in said["blocks"][2]["deltas"])) == {
        "q": "東京"
    }
    assert json.loads("".join(d["partial_json"] for d in said["blocks"][3]["deltas"])) == {"n": 2}
    assert said["delta"]["delta"]["stop_reason"] == "tool_use"
    assert said["delta"]["usage"] == {
        "input_tokens": 20,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 10,
        "output_tokens": 9,
    }
    expected = normalized(whole)
    for pieces in splits(data):
        assert normalized(run(make, pieces)) == expected, [len(p) for p in pieces]


def test_the_message_ends_once_when_done_comes_in_another_read() -> None:
    stream = MessagesFromChatStream("m")
    out = stream.feed(sse([chat_chunk({"content": "a"}), chat_chunk({}, "stop")], done=False))
    out += stream.feed(b"data: [DONE]\n\n") + stream.end()
    names = [n for n, _ in events_of(out)]
    assert names.count("message_stop") == 1 and names[-1] == "message_stop"


def test_content_and_finish_reason_in_one_chunk_keep_the_content() -> None:
    out = run(
        lambda: MessagesFromChatStream("m"),
        [sse([chat_chunk({"role": "assistant", "content": "all at once"}, "stop")])],
    )
    said = check_messages_stream(events_of(out))
    assert said["blocks"][0]["deltas"] == [{"type": "text_delta", "text": "all at once"}]


def test_tool_calls_without_index_and_a_stop_finish_end_in_tool_use() -> None:
    # Gemini's compatibility layer: no index, finish_reason "stop" after tool calls.
    chunks = [
        chat_chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "g1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"x":1}'},
                    }
                ],
            }
        ),
        chat_chunk(
            {
                "tool_calls": [
                    {"id": "g2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
                ]
            }
        ),
        chat_chunk({}, "stop"),
    ]
    said = check_messages_stream(events_of(run(lambda: MessagesFromChatStream("m"), [sse(chunks)])))
    assert [(b["id"], b["name"]) for b in said["blocks"]] == [("g1", "f"), ("g2", "g")]
    assert said["delta"]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    "body",
    [
        sse([chat_chunk({"content": "cut"})], done=False),  # no finish, no [DONE]
        sse([chat_chunk({"content": "a"})], done=False)
        + b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n',
        sse([chat_chunk({"content": "a"})], done=False)[:-5],  # cut inside an event
        b"",
    ],
    ids=["truncated", "error-chunk", "cut-mid-event", "empty"],
)
def test_a_stream_that_fails_or_stops_short_ends_in_an_error_event(body: bytes) -> None:
    said = check_messages_stream(events_of(run(lambda: MessagesFromChatStream("m"), [body])))
    assert said["error"]["type"] in ("api_error", "invalid_request_error")


def test_the_gateways_own_error_frame_becomes_an_anthropic_error_event() -> None:
    stream = MessagesFromChatStream("m")
    out = stream.feed(sse([chat_chunk({"content": "a"})], done=False))
    out += stream.feed(
        b'event: error\ndata: {"error": {"message": "upstream idle", "type": "upstream_error", "code": "upstream_idle_timeout"}}\n\n'
    )
    events = events_of(out)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "upstream idle"}},
    )


def test_comments_become_pings() -> None:
    out = MessagesFromChatStream("m").feed(b": keep-alive\n\n")
    assert events_of(out) == [("ping", {"type": "ping"})]


@pytest.mark.parametrize(
    ("path", "sha256"),
    VERCEL_AI_CHAT_STREAMS,
    ids=[p.rsplit("/", 1)[-1] for p, _ in VERCEL_AI_CHAT_STREAMS],
)
def test_recorded_chat_streams_translate_the_same_at_every_split(path: str, sha256: str) -> None:
    lines = [line for line in vercel_ai_file(path, sha256).splitlines() if line.strip()]
    data = b"".join(b"data: " + line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"
    chunks = [json.loads(line) for line in lines]
    text = reasoning = ""
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                arguments[call.get("index", 0)] = arguments.get(call.get("index", 0), "") + (
                    (call.get("function") or {}).get("arguments") or ""
                )

    def make() -> Stream:
        return MessagesFromChatStream("recorded")

    whole = run(make, [data])
    said = check_messages_stream(events_of(whole))
    blocks = said["blocks"]

    def joined(kind: str, key: str) -> str:
        return "".join(d[key] for b in blocks if b["type"] == kind for d in b["deltas"])

    assert joined("text", "text") == text
    assert joined("thinking", "thinking") == reasoning
    tools = [b for b in blocks if b["type"] == "tool_use"]
    assert ["".join(d["partial_json"] for d in b["deltas"]) for b in tools] == [
        arguments[k] for k in sorted(arguments)
    ]
    usage = next((c["usage"] for c in reversed(chunks) if c.get("usage")), None)
    if usage:
        assert said["delta"]["usage"]["output_tokens"] == usage["completion_tokens"]
    expected = normalized(whole)
    for n in (1, 2, 3, 7, 64):
        pieces = [data[i : i + n] for i in range(0, len(data), n)]
        assert normalized(run(make, pieces)) == expected, n
    rng = random.Random(len(data))
    for _ in range(10):
        points = sorted(rng.sample(range(1, len(data)), 40))
        pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
        assert normalized(run(make, pieces)) == expected


# -- streams: Messages in, Chat Completions out --------------------------------------------


def test_recorded_anthropic_streams_translate_the_same_at_every_split() -> None:
    recordings = anthropic_recordings()
    assert len(recordings) >= 10
    for name, data in sorted(recordings.items()):

        def make() -> Stream:
            return ChatFromMessagesStream("claude", include_usage=True)

        whole = run(make, [data])
        said = check_chat_stream(events_of(whole), include_usage=True)
        text, tools, _stop = what_messages_say(data)
        assert "error" not in said, (name, said)  # every recording is a complete answer
        assert said["text"] == text, name
        assert {k: v["arguments"] for k, v in said["calls"].items()} == tools, name
        expected = normalized(whole)
        sizes = [[data[i : i + n] for i in range(0, len(data), n)] for n in (1, 2, 3, 7)]
        cuts = splits(data) if len(data) < 3000 else sizes
        for pieces in [*sizes, *cuts]:
            assert normalized(run(make, pieces)) == expected, (name, [len(p) for p in pieces][:5])


def test_chat_streams_survive_a_round_trip_through_messages() -> None:
    messages = run(lambda: MessagesFromChatStream("m"), [CHAT_STREAM])
    said = check_chat_stream(
        events_of(run(lambda: ChatFromMessagesStream("m", True), [messages])), True
    )
    assert said["text"] == "Héllo 👋 世界!"
    assert {k: json.loads(v["arguments"]) for k, v in said["calls"].items()} == {
        0: {"q": "東京"},
        1: {"n": 2},
    }
    assert said["finish"] == "tool_calls"
    assert said["usage"][0]["usage"]["prompt_tokens"] == 30
    assert said["usage"][0]["usage"]["prompt_tokens_details"] == {"cached_tokens": 10}


def test_no_usage_chunk_unless_asked_and_no_done_after_an_error() -> None:
    messages = run(lambda: MessagesFromChatStream("m"), [CHAT_STREAM])
    check_chat_stream(events_of(run(lambda: ChatFromMessagesStream("m", False), [messages])), False)
    cut = messages[: messages.index(b"event: message_delta")]
    said = check_chat_stream(
        events_of(run(lambda: ChatFromMessagesStream("m", False), [cut])), False
    )
    assert said["error"]["type"] == "server_error"


# -- requests ------------------------------------------------------------------------------


def test_a_messages_request_becomes_a_chat_request() -> None:
    request = chat_request(
        {
            "model": "m",
            "max_tokens": 300,
            "system": [
                {"type": "text", "text": "Rule one."},
                {"type": "text", "text": "Rule two."},
            ],
            "stop_sequences": ["END"],
            "temperature": 0.2,
            "top_k": 5,
            "stream": True,
            "metadata": {"user_id": "u-1"},
            "tool_choice": {"type": "tool", "name": "lookup", "disable_parallel_tool_use": True},
            "tools": [
                {"name": "lookup", "description": "Look up", "input_schema": {"type": "object"}}
            ],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "lookup",
                            "input": {"q": "x"},
                        },
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "lookup",
                            "input": {"q": "y"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "one"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "two"}],
                            "is_error": True,
                        },
                        {"type": "text", "text": "And now?"},
                    ],
                },
            ],
        },
        max_tokens_field="max_completion_tokens",
    )
    assert request["messages"] == [
        {"role": "system", "content": "Rule one.\nRule two."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "hmm",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "y"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "one"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: two"},
        {"role": "user", "content": "And now?"},
    ]
    assert request["max_completion_tokens"] == 300 and "top_k" not in request
    assert request["stop"] == ["END"] and request["temperature"] == 0.2
    assert request["stream_options"] == {"include_usage": True}
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object"},
                "description": "Look up",
            },
        }
    ]
    assert request["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert request["parallel_tool_calls"] is False and request["user"] == "u-1"


def test_a_chat_request_becomes_a_messages_request() -> None:
    request = messages_request(
        {
            "model": "claude",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "developer", "content": "Use tools."},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"city":"Oslo"}'},
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "w", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "rain"},
                {
                    "role": "tool",
                    "tool_call_id": "c2",
                    "content": [{"type": "text", "text": "snow"}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "So?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                },
            ],
            "stop": ["  ", "STOP"],
            "temperature": 1.7,
            "top_p": 0.5,
            "seed": 3,
            "tool_choice": "required",
            "tools": [
                {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
            ],
            "parallel_tool_calls": False,
        }
    )
    assert request["system"] == "Be brief.\nUse tools."
    assert (
        request["max_tokens"] == 4096 and request["temperature"] == 1.0 and "top_p" not in request
    )
    assert request["stop_sequences"] == ["STOP"] and "seed" not in request
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "c1", "name": "w", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "c2", "name": "w", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "rain"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "snow"},
                {"type": "text", "text": "So?"},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("translate", "document", "field"),
    [
        (messages_request, {"messages": [], "n": 3}, "n"),
        (messages_request, {"messages": [], "logprobs": True}, "logprobs"),
        (
            messages_request,
            {"messages": [], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        (
            messages_request,
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            messages_request,
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"arguments": "[1]"}}]}
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (chat_request, {"messages": [], "mcp_servers": [{"url": "x"}]}, "mcp_servers"),
        (
            chat_request,
            {"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools[0]",
        ),
    ],
)
def test_fields_that_would_change_the_answer_are_refused_by_name(
    translate: Callable[[dict[str, Any]], dict[str, Any]], document: dict[str, Any], field: str
) -> None:
    with pytest.raises(Untranslatable) as raised:
        translate(document)
    assert raised.value.field == field


def test_reasoning_maps_both_ways() -> None:
    assert (
        chat_request({"messages": [], "thinking": {"type": "enabled", "budget_tokens": 1024}})[
            "reasoning_effort"
        ]
        == "low"
    )
    assert (
        chat_request({"messages": [], "thinking": {"type": "adaptive"}})["reasoning_effort"]
        == "medium"
    )
    request = messages_request(
        {"messages": [], "reasoning_effort": "high", "max_tokens": 1000, "temperature": 0.3}
    )
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert request["max_tokens"] > 4096 and "temperature" not in request


def test_count_tokens_is_an_estimate_of_a_quarter_of_the_characters() -> None:
    assert count_tokens_estimate({"messages": [{"role": "user", "content": "x" * 4000}]}) in range(
        1000, 1020
    )


# -- whole answers -------------------------------------------------------------------------


def test_a_chat_completion_becomes_a_message() -> None:
    message = messages_response(
        {
            "id": "chatcmpl-9",
            "model": "gpt",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": "",
                        "reasoning_content": "why",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"a": 1}'},
                            }
                        ],
                    },
                }
            ],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 60},
            },
        },
        "gpt",
    )
    assert message["content"] == [
        {"type": "thinking", "thinking": "why", "signature": ""},
        {"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}},
    ]
    assert message["stop_reason"] == "tool_use" and message["id"].startswith("msg_")
    assert message["usage"] == {
        "input_tokens": 40,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 60,
        "output_tokens": 5,
    }


def test_a_message_becomes_a_chat_completion() -> None:
    completion = chat_response(
        {
            "id": "msg_7",
            "model": "claude",
            "stop_reason": "max_tokens",
            "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 5,
                "cache_creation_input_tokens": 2,
                "output_tokens": 3,
            },
        },
        "claude",
    )
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello"}
    assert choice["finish_reason"] == "length" and completion["id"] == "chatcmpl-7"
    assert completion["usage"]["prompt_tokens"] == 17 and completion["usage"]["total_tokens"] == 20
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}
