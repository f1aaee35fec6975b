"""A cached answer in the other shape of its API (filterproxy.extensions.cache.shapes):
JSON answers through streams and back, recorded-like streams through answers and back,
what is refused (incomplete streams, errors, past the bound), usage, and the official
SDKs reading the streams made."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from openai import omit
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response
from pydantic import TypeAdapter

from filterproxy.extensions.cache.shapes import (
    answer_from_stream,
    stream_from_answer,
    without_usage_chunk,
)
from filterproxy.http.apis import CHAT, MESSAGES, RESPONSES
from filterproxy.http.sse import SSEDecoder
from filterproxy.translate.messages_over_chat import MessagesFromChatStream
from filterproxy.translate.responses_over_chat import ResponsesFromChatStream, response_shell
from tests.support.chat_messages import CHAT_STREAM, check_chat_stream, events_of
from tests.support.responses import EVENT as RESPONSE_EVENT
from tests.support.responses import check_responses_stream

BIG = 1 << 24

# -- answers as the providers send them --------------------------------------------------

CHAT_TEXT: dict[str, Any] = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": 'Héllo 👋 世界 — "quoted"\nand a second line',
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}

CHAT_TOOLS: dict[str, Any] = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1699896916,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "arguments": '{\n"location": "Boston, MA"\n}',
                        },
                    },
                    {
                        "id": "call_def456",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    },
                ],
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99},
}

CHAT_REASONING: dict[str, Any] = {
    "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
    "object": "chat.completion",
    "created": 1705651092,
    "model": "deepseek-reasoner",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "9.11 is smaller.",
                "reasoning_content": "Compare the tenths: 1 < 9…",
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 16,
        "completion_tokens": 120,
        "total_tokens": 136,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 100},
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": 16,
    },
    "system_fingerprint": "fp_7e73fd9a08",
}

CHAT_REFUSAL_TWO_CHOICES: dict[str, Any] = {
    "id": "chatcmpl-r",
    "object": "chat.completion",
    "created": 1741570000,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "refusal": "I can't help."},
            "logprobs": None,
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        },
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25},
}

MESSAGES_TEXT: dict[str, Any] = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hi! My name is Claude.\n\n— 你好 👋"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 2048,
        "cache_read_input_tokens": 4096,
        "cache_creation": {"ephemeral_5m_input_tokens": 2048, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 35,
        "service_tier": "standard",
    },
}

MESSAGES_TOOLS: dict[str, Any] = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-opus-4-1-20250805",
    "content": [
        {
            "type": "thinking",
            "thinking": "The user wants the weather in Paris; call the tool.",
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
        },
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"},
        {"type": "text", "text": "Let me check."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "Paris, France", "units": ["c", "f"], "days": 2},
        },
        {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 472,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 89,
    },
}

MESSAGES_STOP_SEQUENCE: dict[str, Any] = {
    **MESSAGES_TEXT,
    "id": "msg_stop",
    "content": [{"type": "text", "text": "one, two, "}],
    "stop_reason": "stop_sequence",
    "stop_sequence": "three",
}

_SHELL: dict[str, Any] = {
    "object": "response",
    "created_at": 1741476542,
    "background": False,
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "model": "gpt-4.1-2025-04-14",
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
    "metadata": {},
}

RESPONSES_TEXT: dict[str, Any] = {
    **_SHELL,
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "status": "completed",
    "completed_at": 1741476545,
    "output": [
        {
            "type": "message",
            "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "In a peaceful grove — 静かな森 🌲\nbeneath a silver moon…",
                    "annotations": [],
                    "logprobs": [],
                }
            ],
        }
    ],
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 123,
    },
}

RESPONSES_TOOLS: dict[str, Any] = {
    **_SHELL,
    "id": "resp_tools",
    "model": "o4-mini-2025-04-16",
    "status": "completed",
    "reasoning": {"effort": "medium", "summary": "auto"},
    "output": [
        {
            "id": "rs_6806bfca0b2481918a5748308061a2600d3ce51bdffd5476",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "**Checking weather** in Paris."}],
        },
        {
            "type": "function_call",
            "id": "fc_12345xyz",
            "call_id": "call_12345xyz",
            "name": "get_weather",
            "arguments": '{"location":"Paris, France"}',
            "status": "completed",
        },
    ],
    "usage": {
        "input_tokens": 2048,
        "input_tokens_details": {"cached_tokens": 1920, "cache_write_tokens": 128},
        "output_tokens": 120,
        "output_tokens_details": {"reasoning_tokens": 64},
        "total_tokens": 2168,
    },
}

RESPONSES_INCOMPLETE: dict[str, Any] = {
    **RESPONSES_TEXT,
    "id": "resp_cut",
    "status": "incomplete",
    "completed_at": None,
    "incomplete_details": {"reason": "max_output_tokens"},
    "max_output_tokens": 16,
    "output": [
        {
            "type": "message",
            "id": "msg_cut",
            "status": "incomplete",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "In a peaceful", "annotations": [], "logprobs": []},
                {"type": "refusal", "refusal": "no more"},
            ],
        }
    ],
}

ANSWERS: list[tuple[str, dict[str, Any]]] = [
    (CHAT, CHAT_TEXT),
    (CHAT, CHAT_TOOLS),
    (CHAT, CHAT_REASONING),
    (CHAT, CHAT_REFUSAL_TWO_CHOICES),
    (MESSAGES, MESSAGES_TEXT),
    (MESSAGES, MESSAGES_TOOLS),
    (MESSAGES, MESSAGES_STOP_SEQUENCE),
    (RESPONSES, RESPONSES_TEXT),
    (RESPONSES, RESPONSES_TOOLS),
    (RESPONSES, RESPONSES_INCOMPLETE),
]
IDS = [f"{api}-{answer['id']}" for api, answer in ANSWERS]


def streamed(api: str, answer: dict[str, Any], include_usage: bool = True) -> bytes:
    stream = stream_from_answer(
        api, orjson.dumps(answer), include_usage=include_usage, max_bytes=BIG
    )
    assert stream is not None
    return stream


def answered(api: str, stream: bytes, max_bytes: int = BIG) -> dict[str, Any] | None:
    answer = answer_from_stream(api, stream, max_bytes=max_bytes)
    return None if answer is None else json.loads(answer)


def raws(stream: bytes) -> list[bytes]:
    return [event.raw for event in SSEDecoder().feed(stream)]


# -- streams as the providers send them --------------------------------------------------


def chat_sse(chunks: list[dict[str, Any]]) -> bytes:
    head = {
        "id": "chatcmpl-rec",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_f5bdcc3276",
    }
    events = [
        b"data: " + json.dumps({**head, **chunk, "obfuscation": "x1"}, ensure_ascii=False).encode()
        for chunk in chunks
    ]
    return b"\n\n".join([*events, b"data: [DONE]", b""])


def delta(content: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


#: OpenAI's way with ``stream_options.include_usage``: "usage": null on every chunk,
#: then a usage-only chunk; the tool call's arguments in pieces.
CHAT_RECORDED = chat_sse(
    [
        delta({"role": "assistant", "content": "", "refusal": None}),
        delta({"content": "Checking "}),
        delta({"content": "the wéather."}),
        delta(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_Ls",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"loc'}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": 'ation":"Paris"}'}}]}),
        delta({}, "tool_calls"),
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 70,
                "completion_tokens": 18,
                "total_tokens": 88,
                "prompt_tokens_details": {"cached_tokens": 64},
            },
        },
    ]
)
CHAT_RECORDED_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-rec",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking the wéather.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_Ls",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 70,
        "completion_tokens": 18,
        "total_tokens": 88,
        "prompt_tokens_details": {"cached_tokens": 64},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_f5bdcc3276",
}

#: As Anthropic sends it: pings, a thinking block with its signature, text in pieces, a
#: tool's input in pieces (the first empty), message_delta's cumulative usage.
MESSAGES_RECORDED = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_01Rec","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":1500,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}

event: ping
data: {"type": "ping"}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Weather: "}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"use the tool."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Let me "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"check \xe2\x80\x94 \xf0\x9f\x8c\xa6"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01T1","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\": \\"San Fra"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"ncisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":25,"cache_creation_input_tokens":1500,"cache_read_input_tokens":0,"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""
MESSAGES_RECORDED_ANSWER: dict[str, Any] = {
    "id": "msg_01Rec",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Weather: use the tool.", "signature": "EqQBCgIYAhIM"},
        {"type": "text", "text": "Let me check — 🌦"},
        {
            "type": "tool_use",
            "id": "toolu_01T1",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 25,
        "cache_creation_input_tokens": 1500,
        "cache_read_input_tokens": 0,
        "output_tokens": 89,
        "service_tier": "standard",
    },
}


def gateway_streams() -> dict[str, tuple[bytes, dict[str, Any] | None]]:
    """Streams the gateway's own translations make of a chat stream (checked elsewhere
    against the SDKs), and, for Responses, the response it says it completed."""
    messages = MessagesFromChatStream("m")
    responses = ResponsesFromChatStream(response_shell({"model": "m", "input": "hi"}, "m"))
    return {
        MESSAGES: (messages.feed(CHAT_STREAM) + messages.end(), None),
        RESPONSES: (responses.feed(CHAT_STREAM) + responses.end(), responses.response),
    }


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(("api", "answer"), ANSWERS, ids=IDS)
def test_an_answer_made_a_stream_reads_back_as_the_same_answer(
    api: str, answer: dict[str, Any]
) -> None:
    stream = streamed(api, answer)
    assert answered(api, stream) == answer
    # And what an unchanged answer's stream becomes is stable.
    assert streamed(api, answered(api, stream) or {}) == stream


def test_a_chat_stream_without_usage_reads_as_the_answer_less_its_usage() -> None:
    stream = streamed(CHAT, CHAT_TEXT, include_usage=False)
    said = check_chat_stream(events_of(stream), include_usage=False)
    assert said["text"] == CHAT_TEXT["choices"][0]["message"]["content"]
    assert answered(CHAT, stream) == {k: v for k, v in CHAT_TEXT.items() if k != "usage"}
    assert "usage" not in answered(CHAT, stream)


@pytest.mark.parametrize(
    ("api", "stream", "expected"),
    [
        (CHAT, CHAT_RECORDED, CHAT_RECORDED_ANSWER),
        (MESSAGES, MESSAGES_RECORDED, MESSAGES_RECORDED_ANSWER),
    ],
    ids=[CHAT, MESSAGES],
)
def test_a_recorded_stream_reads_as_its_answer_and_streams_back_as_it(
    api: str, stream: bytes, expected: dict[str, Any]
) -> None:
    answer = answered(api, stream)
    assert answer == expected
    again = streamed(api, answer)
    assert answered(api, again) == expected


def test_a_chat_stream_gives_the_reasoning_before_the_content_and_refusal() -> None:
    answer = {**CHAT_REASONING, "choices": [copy.deepcopy(CHAT_REASONING["choices"][0])]}
    answer["choices"][0]["message"]["refusal"] = "no"
    deltas = [
        data["choices"][0]["delta"]
        for _, data in events_of(streamed(CHAT, answer))
        if isinstance(data, dict) and data["choices"]
    ]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1:4] == [
        {"reasoning_content": "Compare the tenths: 1 < 9…"},
        {"content": "9.11 is smaller."},
        {"refusal": "no"},
    ]


def test_the_repos_chat_stream_reads_as_its_answer() -> None:
    answer = answered(CHAT, CHAT_STREAM)
    assert answer is not None
    message = answer["choices"][0]["message"]
    assert message["content"] == "Héllo 👋 世界!"
    assert message["reasoning_content"] == "思考中…"
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message["tool_calls"]
    ] == [
        ("call_a", "lookup", {"q": "東京"}),
        ("call_b", "other", {"n": 2}),
    ]
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 10}
    assert answered(CHAT, streamed(CHAT, answer)) == answer


def test_the_gateways_translated_streams_read_as_their_answers_and_back() -> None:
    streams = gateway_streams()
    stream, completed = streams[RESPONSES]
    answer = answered(RESPONSES, stream)
    assert answer is not None and answer == completed  # what the translation completed
    assert answered(RESPONSES, streamed(RESPONSES, answer)) == answer
    stream, _ = streams[MESSAGES]
    answer = answered(MESSAGES, stream)
    assert answer is not None
    assert [b["type"] for b in answer["content"]] == ["thinking", "text", "tool_use", "tool_use"]
    assert answer["content"][2]["input"] == {"q": "東京"}
    assert answer["usage"]["cache_read_input_tokens"] == 10
    assert answered(MESSAGES, streamed(MESSAGES, answer)) == answer


def test_a_responses_stream_whose_last_event_left_the_output_out_takes_its_items() -> None:
    stream = streamed(RESPONSES, RESPONSES_TOOLS)
    last = raws(stream)[-1]
    emptied = last.replace(b'"output":[{', b'"output":[],"x":[{', 1)
    assert emptied != last
    answer = answered(RESPONSES, stream.replace(last, emptied))
    assert answer is not None and answer["output"] == RESPONSES_TOOLS["output"]


# -- what is refused ---------------------------------------------------------------------


@pytest.mark.parametrize(("api", "answer"), ANSWERS, ids=IDS)
def test_a_stream_cut_before_its_end_is_no_answer(api: str, answer: dict[str, Any]) -> None:
    events = raws(streamed(api, answer))
    for count in range(len(events)):
        assert answered(api, b"".join(events[:count])) is None, count
    last = events[-1]
    cut = b"".join(events[:-1]) + last[: len(last) // 2]
    assert answered(api, cut) is None


def test_a_chat_stream_needs_both_its_finish_reason_and_done() -> None:
    events = raws(CHAT_RECORDED)
    finish = next(i for i, raw in enumerate(events) if b'"finish_reason": "tool_calls"' in raw)
    assert answered(CHAT, b"".join(events[:finish] + events[finish + 1 :])) is None
    assert answered(CHAT, b"".join(events[:-1])) is None
    assert answered(CHAT, b"".join(events)) is not None


ERROR_STREAMS = [
    (
        CHAT,
        chat_sse([delta({"role": "assistant", "content": "Hi"})])[: -len(b"data: [DONE]\n\n")]
        + b'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n'
        + b"data: [DONE]\n\n",
    ),
    (
        CHAT,
        streamed(CHAT, CHAT_TEXT).replace(
            b"data: [DONE]",
            b'event: error\ndata: {"message":"overloaded"}\n\ndata: [DONE]',
        ),
    ),
    (
        MESSAGES,
        MESSAGES_RECORDED.replace(
            b"event: message_stop",
            b"event: error\n"
            b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
            b"event: message_stop",
        ),
    ),
    (
        RESPONSES,
        streamed(RESPONSES, RESPONSES_TEXT).replace(
            b"event: response.completed",
            b'event: error\ndata: {"type":"error","code":"server_error","message":"x",'
            b'"param":null,"sequence_number":99}\n\nevent: response.completed',
        ),
    ),
    (
        RESPONSES,
        streamed(RESPONSES, RESPONSES_TEXT).replace(
            b'event: response.completed\ndata: {"type":"response.completed"',
            b'event: response.failed\ndata: {"type":"response.failed"',
        ),
    ),
]


@pytest.mark.parametrize(("api", "stream"), ERROR_STREAMS)
def test_a_stream_with_an_error_is_no_answer(api: str, stream: bytes) -> None:
    assert b"error" in stream or b"failed" in stream
    assert answered(api, stream) is None


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (CHAT, b"data: not json\n\ndata: [DONE]\n\n"),
        (CHAT, orjson.dumps(CHAT_TEXT)),  # an answer, not a stream
        (
            CHAT,
            b'data: {"choices":[{"index":0,"delta":{"audio":{"id":"a"}},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
        ),
        (
            MESSAGES,
            b'event: content_block_start\ndata: {"type":"content_block_start","index":0}\n\n',
        ),
        (MESSAGES, CHAT_RECORDED),
        (RESPONSES, CHAT_RECORDED),
        (MESSAGES, b""),
    ],
)
def test_a_stream_not_understood_is_no_answer(api: str, body: bytes) -> None:
    assert answered(api, body) is None


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (CHAT, b"not json"),
        (CHAT, b"[1, 2]"),
        (CHAT, orjson.dumps(MESSAGES_TEXT)),
        (MESSAGES, orjson.dumps(CHAT_TEXT)),
        (RESPONSES, orjson.dumps(MESSAGES_TEXT)),
        (RESPONSES, orjson.dumps({**RESPONSES_TEXT, "status": "failed"})),
        (
            RESPONSES,
            orjson.dumps(
                {
                    **RESPONSES_TEXT,
                    "output": [{**RESPONSES_TEXT["output"][0], "content": [{"type": "audio"}]}],
                }
            ),
        ),
        (MESSAGES, CHAT_RECORDED),
    ],
)
def test_a_body_that_is_not_such_an_answer_makes_no_stream(api: str, body: bytes) -> None:
    assert stream_from_answer(api, body, max_bytes=BIG) is None


def test_another_api_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        answer_from_stream("embeddings", b"", max_bytes=BIG)
    with pytest.raises(ValueError, match="embeddings"):
        stream_from_answer("embeddings", b"{}", max_bytes=BIG)


@pytest.mark.parametrize(
    ("api", "stream"),
    [(CHAT, CHAT_RECORDED), (MESSAGES, MESSAGES_RECORDED)],
    ids=[CHAT, MESSAGES],
)
def test_an_answer_past_max_bytes_is_none(api: str, stream: bytes) -> None:
    answer = answer_from_stream(api, stream, max_bytes=BIG)
    assert answer is not None
    assert answer_from_stream(api, stream, max_bytes=len(answer)) == answer
    assert answer_from_stream(api, stream, max_bytes=len(answer) - 1) is None


def test_an_event_past_max_bytes_is_none_though_the_answer_would_fit() -> None:
    stream = streamed(RESPONSES, RESPONSES_TEXT)
    answer = answer_from_stream(RESPONSES, stream, max_bytes=BIG)
    assert answer is not None
    largest = max(len(raw) for raw in raws(stream))
    assert largest > len(answer)
    assert answer_from_stream(RESPONSES, stream, max_bytes=largest) == answer
    assert answer_from_stream(RESPONSES, stream, max_bytes=largest - 1) is None


@pytest.mark.parametrize(("api", "answer"), ANSWERS[::3], ids=IDS[::3])
def test_a_stream_past_max_bytes_is_none(api: str, answer: dict[str, Any]) -> None:
    stream = streamed(api, answer)
    body = orjson.dumps(answer)
    assert stream_from_answer(api, body, max_bytes=len(stream)) == stream
    assert stream_from_answer(api, body, max_bytes=len(stream) - 1) is None


# -- usage -------------------------------------------------------------------------------

USAGE_CHUNK = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\r\n\r\n'
)


def test_without_usage_chunk_keeps_every_other_event_byte_for_byte() -> None:
    body = (
        b"\xef\xbb\xbf: keep-alive\r\n\r\n"
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}\r\n\r\n'
        b'id: 7\ndata: {"id":"c",\ndata:  "choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3}}\n\n' + USAGE_CHUNK + b"data: [DONE]\n\n"
        b"data: {unfinished"
    )
    assert without_usage_chunk(body) == body.replace(USAGE_CHUNK, b"")
    assert without_usage_chunk(body.replace(USAGE_CHUNK, b"")) == body.replace(USAGE_CHUNK, b"")
    recorded = without_usage_chunk(CHAT_RECORDED)
    assert len(raws(recorded)) == len(raws(CHAT_RECORDED)) - 1
    assert answered(CHAT, recorded) == {
        k: v for k, v in CHAT_RECORDED_ANSWER.items() if k != "usage"
    }


def test_the_answer_of_a_stream_reports_usage_exactly_when_the_stream_did() -> None:
    # (What the cache stores as an entry's usage: the answer its stream reads as.)
    assert answered(CHAT, CHAT_RECORDED)["usage"] == CHAT_RECORDED_ANSWER["usage"]
    assert "usage" not in answered(CHAT, without_usage_chunk(CHAT_RECORDED))
    for api, answer in ((MESSAGES, MESSAGES_TOOLS), (RESPONSES, RESPONSES_TOOLS)):
        assert answered(api, streamed(api, answer))["usage"] == answer["usage"]


# -- the official SDKs read the streams made -----------------------------------------------


@pytest.mark.parametrize("answer", [CHAT_TEXT, CHAT_TOOLS, CHAT_REASONING, CHAT_RECORDED_ANSWER])
def test_the_openai_sdk_reads_a_chat_stream_as_the_answer(answer: dict[str, Any]) -> None:
    stream = streamed(CHAT, answer)
    check_chat_stream(events_of(stream), include_usage=True)
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for _, data in events_of(stream):
        if data != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate(data))
    final = state.get_final_completion()
    assert final.id == answer["id"] and final.model == answer["model"]
    assert final.usage is not None
    assert final.usage.model_dump(exclude_none=True) == answer["usage"]
    for choice, expected in zip(final.choices, answer["choices"], strict=True):
        message = expected["message"]
        assert choice.finish_reason == expected["finish_reason"]
        assert choice.message.content == message["content"]
        assert choice.message.refusal == message.get("refusal")
        assert getattr(choice.message, "reasoning_content", None) == message.get(
            "reasoning_content"
        )
        calls = [
            {
                "id": c.id,
                "type": c.type,
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in choice.message.tool_calls or []
        ]
        assert calls == message.get("tool_calls", [])


MESSAGE_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


@pytest.mark.parametrize(
    "answer", [MESSAGES_TEXT, MESSAGES_TOOLS, MESSAGES_STOP_SEQUENCE, MESSAGES_RECORDED_ANSWER]
)
def test_the_anthropic_sdk_reads_a_messages_stream_as_the_answer(answer: dict[str, Any]) -> None:
    snapshot: Any = None
    buffers: dict[int, bytes] = {}
    for name, data in events_of(streamed(MESSAGES, answer)):
        assert name == data["type"]
        event = MESSAGE_EVENT.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    dump = snapshot.model_dump(mode="json", exclude_none=True)
    assert dump == Message.model_validate(answer).model_dump(mode="json", exclude_none=True)


@pytest.mark.parametrize("answer", [RESPONSES_TEXT, RESPONSES_TOOLS, RESPONSES_INCOMPLETE])
def test_the_openai_sdk_reads_a_responses_stream_as_the_answer(answer: dict[str, Any]) -> None:
    stream = streamed(RESPONSES, answer)
    if answer is not RESPONSES_INCOMPLETE:  # (the repo's rules read a message's first part)
        said = check_responses_stream(stream)
        assert said["response"] == answer
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final: Any = None
    for _, data in events_of(stream):
        for event in state.handle_event(RESPONSE_EVENT.validate_python(data)):
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert final is not None
    expected = Response.model_validate(answer)
    assert final.status == expected.status and final.output_text == expected.output_text
    assert final.usage == expected.usage
    calls = [(o.name, o.arguments) for o in final.output if o.type == "function_call"]
    assert calls == [
        (o["name"], o["arguments"]) for o in answer["output"] if o["type"] == "function_call"
    ]
