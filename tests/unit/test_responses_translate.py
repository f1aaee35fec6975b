"""The Responses translation (filterproxy.translate.responses_over_chat) without sockets:
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
from openai.types.responses import Response

from filterproxy.extensions.responses.conversations import expand_references, referenced_responses
from filterproxy.http.sse import SSEDecoder
from filterproxy.translate import Untranslatable
from filterproxy.translate.chat_over_messages import ChatFromMessagesStream
from filterproxy.translate.common import MAX_ANSWER_BYTES
from filterproxy.translate.responses_over_chat import (
    Piped,
    ResponsesFromChatStream,
    chat_request_for_responses,
    response_shell,
    responses_answer,
    responses_request,
)
from filterproxy.translate.responses_tools import response_of_item, tool_set
from tests.support.chat_messages import (
    CHAT_STREAM,
    anthropic_recordings,
    chat_chunk,
    events_of,
    splits,
    sse,
    what_messages_say,
)
from tests.support.responses import (
    check_responses_stream,
    normalized,
)
from tests.thirdparty import VERCEL_AI_CHAT_STREAMS, vercel_ai_file

REQUEST: dict[str, Any] = {"model": "m", "input": "hi", "stream": True, "tools": []}


def responses_stream() -> ResponsesFromChatStream:
    return ResponsesFromChatStream(response_shell(REQUEST, "m"))


def run(make: Callable[[], ResponsesFromChatStream | Piped], pieces: list[bytes]) -> bytes:
    """What a stream translation made by *make* says for *pieces*."""
    stream = make()
    return b"".join(stream.feed(piece) for piece in pieces) + stream.end()


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
        chat_request_for_responses({"model": "m", "input": "x", **document}, hosted_tools="refuse")
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


# -- namespace, custom and hosted tools ------------------------------------------------------

#: What the Codex CLI sends (its tools of this month, shortened): a function, a namespace of
#: functions, a freeform (custom) tool with a grammar, and a hosted tool.
CODEX_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "exec_command",
        "description": "Runs a command.",
        "strict": False,
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    },
    {
        "type": "namespace",
        "name": "multi_agent_v1",
        "description": "Tools for spawning and managing sub-agents.",
        "tools": [
            {
                "type": "function",
                "name": "spawn_agent",
                "description": "Spawn an agent.",
                "parameters": {"type": "object", "properties": {"task": {"type": "string"}}},
            },
            {
                "type": "function",
                "name": "close_agent",
                "description": "Close an agent.",
                "parameters": {"type": "object", "properties": {"target": {"type": "string"}}},
            },
        ],
    },
    {
        "type": "custom",
        "name": "apply_patch",
        "description": "Edit files. This is a FREEFORM tool.",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch hunk+"},
    },
    {"type": "web_search", "external_web_access": False},
]
#: A patch with what a JSON string escapes: quotes, a backslash, characters beyond ASCII
#: (surrogate pairs once escaped), a line separator.
PATCH = '*** Begin Patch\n*** Add File: é.txt\n+say "héllo" 👋\\ \u2028 😀\n*** End Patch\n'
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def upstream_names(request: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in request.get("tools", [])]


def test_namespace_and_custom_tools_become_function_tools_the_upstream_takes() -> None:
    translated = responses_request(
        {"model": "m", "input": "hi", "tools": CODEX_TOOLS, "parallel_tool_calls": True}
    )
    request = translated.chat
    assert upstream_names(request) == [
        "exec_command",
        "multi_agent_v1__spawn_agent",
        "multi_agent_v1__close_agent",
        "apply_patch",
    ]
    assert all(_FUNCTION_NAME.match(n) for n in upstream_names(request))
    spawn = request["tools"][1]["function"]
    assert spawn["description"].startswith("Tools for spawning and managing sub-agents.")
    assert "Spawn an agent." in spawn["description"]
    patch = request["tools"][3]["function"]
    assert patch["parameters"]["required"] == ["input"]
    assert patch["parameters"]["properties"]["input"]["type"] == "string"
    assert "start: begin_patch hunk+" in patch["parameters"]["properties"]["input"]["description"]
    assert translated.tools.dropped == ["web_search"]
    assert request["parallel_tool_calls"] is True
    assert dict(translated.tools.by_upstream) == {
        "multi_agent_v1__spawn_agent": ("spawn_agent", "multi_agent_v1", False),
        "multi_agent_v1__close_agent": ("close_agent", "multi_agent_v1", False),
        "apply_patch": ("apply_patch", None, True),
    }


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("crm", "find"), ("mcp.server/x", "tool"), ("n" * 40, "t" * 40), ("a", "b c")],
)
def test_a_namespaced_tool_has_one_valid_upstream_name_in_every_turn(
    namespace: str, name: str
) -> None:
    tools = [
        {
            "type": "namespace",
            "name": namespace,
            "description": "",
            "tools": [
                {"type": "function", "name": name, "parameters": {"type": "object"}},
            ],
        }
    ]
    first = responses_request({"model": "m", "input": "x", "tools": tools})
    [upstream] = upstream_names(first.chat)
    assert _FUNCTION_NAME.match(upstream)
    # The model calls it; the call comes back named as the client knows it.
    answer = responses_answer(
        {
            "choices": [
                {
                    "message": {
                        "tool_calls": [
                            {"id": "c1", "function": {"name": upstream, "arguments": "{}"}}
                        ]
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        },
        response_shell({"model": "m", "input": "x"}, "m"),
        first.tools.by_upstream,
    )
    [call] = answer["output"]
    assert (call["type"], call["name"], call["namespace"]) == ("function_call", name, namespace)
    Response.model_validate(answer)
    # The next turn sends the call back: it reaches the upstream under the same name.
    second = responses_request(
        {
            "model": "m",
            "tools": tools,
            "input": [
                {"role": "user", "content": "x"},
                {k: v for k, v in call.items() if k not in ("id", "status")},
                {"type": "function_call_output", "call_id": "c1", "output": "done"},
            ],
        }
    )
    assert second.chat["messages"][1]["tool_calls"][0]["function"]["name"] == upstream
    assert upstream_names(second.chat) == [upstream]


@pytest.mark.parametrize("plain_first", [True, False])
def test_a_namespaced_tool_whose_joined_name_is_taken_gets_another(plain_first: bool) -> None:
    function = {"type": "function", "name": "ns__t", "parameters": {"type": "object"}}
    namespace = {
        "type": "namespace",
        "name": "ns",
        "description": "",
        "tools": [{"type": "function", "name": "t", "parameters": {"type": "object"}}],
    }
    tools = [function, namespace] if plain_first else [namespace, function]
    translated = responses_request({"model": "m", "input": "x", "tools": tools})
    names = upstream_names(translated.chat)
    plain, namespaced = names if plain_first else names[::-1]
    assert plain == "ns__t" and namespaced != plain and _FUNCTION_NAME.match(namespaced)
    assert translated.tools.by_upstream[namespaced] == ("t", "ns", False)
    assert "ns__t" not in translated.tools.by_upstream  # a plain call of its own name


def test_earlier_calls_of_namespaced_and_custom_tools_reach_the_upstream_as_calls() -> None:
    request = chat_request_for_responses(
        {
            "model": "m",
            "tools": CODEX_TOOLS,
            "input": [
                {"role": "user", "content": "go"},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "spawn_agent",
                    "namespace": "multi_agent_v1",
                    "arguments": '{"task":"t"}',
                },
                {"type": "function_call_output", "call_id": "c1", "output": "spawned"},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {
                    "type": "custom_tool_call",
                    "call_id": "c2",
                    "name": "apply_patch",
                    "input": PATCH,
                },
                {"type": "custom_tool_call_output", "call_id": "c2", "output": "Done!"},
            ],
        }
    )
    assert request["messages"] == [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {
                        "name": "multi_agent_v1__spawn_agent",
                        "arguments": '{"task":"t"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "spawned"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "apply_patch", "arguments": ANY_JSON_OF_PATCH},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c2", "content": "Done!"},
    ]


class _JsonOf:
    """Equal to a JSON text that decodes to *value*."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and json.loads(other) == self.value

    def __repr__(self) -> str:
        return f"JSON of {self.value!r}"


ANY_JSON_OF_PATCH = _JsonOf({"input": PATCH})


def codex_answer_calls() -> list[dict[str, Any]]:
    return [
        {
            "id": "call_ns",
            "type": "function",
            "function": {"name": "multi_agent_v1__spawn_agent", "arguments": '{"task":"t"}'},
        },
        {
            "id": "call_patch",
            "type": "function",
            "function": {"name": "apply_patch", "arguments": json.dumps({"input": PATCH})},
        },
    ]


def test_calls_of_namespaced_and_custom_tools_come_back_as_responses_items() -> None:
    translated = responses_request({"model": "m", "input": "x", "tools": CODEX_TOOLS})
    shell = response_shell({"model": "m", "input": "x", "tools": CODEX_TOOLS}, "m")
    response = responses_answer(
        {
            "choices": [
                {
                    "message": {"content": "On it.", "tool_calls": codex_answer_calls()},
                    "finish_reason": "tool_calls",
                }
            ]
        },
        shell,
        translated.tools.by_upstream,
    )
    parsed = Response.model_validate(response)
    assert [o.type for o in parsed.output] == ["message", "function_call", "custom_tool_call"]
    call, custom = response["output"][1], response["output"][2]
    assert (call["name"], call["namespace"], call["call_id"]) == (
        "spawn_agent",
        "multi_agent_v1",
        "call_ns",
    )
    assert (custom["name"], custom["input"], custom["call_id"]) == (
        "apply_patch",
        PATCH,
        "call_patch",
    )
    assert "namespace" not in custom and custom["id"].startswith("ctc_")
    # Every item's id leads back to this response (for item references).
    assert {response_of_item(o["id"]) for o in response["output"]} == {response["id"]}


def codex_stream(pieces_of_patch: int = 9) -> bytes:
    """A chat stream calling a namespaced tool and the custom tool, the custom tool's
    arguments cut into small pieces (escapes and characters cut across chunks)."""
    arguments = json.dumps({"input": PATCH})
    size = -(-len(arguments) // pieces_of_patch)
    chunks = [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_ns",
                        "type": "function",
                        "function": {"name": "multi_agent_v1__spawn_agent", "arguments": ""},
                    }
                ]
            }
        ),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"task":'}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"t"}'}}]}),
        chat_chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_patch",
                        "type": "function",
                        "function": {"name": "apply_patch", "arguments": ""},
                    }
                ]
            }
        ),
        *(
            chat_chunk(
                {"tool_calls": [{"index": 1, "function": {"arguments": arguments[i : i + size]}}]}
            )
            for i in range(0, len(arguments), size)
        ),
        chat_chunk({}, "tool_calls"),
    ]
    return sse(chunks)


def codex_stream_translation() -> ResponsesFromChatStream:
    translated = responses_request({"model": "m", "input": "x", "tools": CODEX_TOOLS})
    shell = response_shell({"model": "m", "input": "x", "tools": CODEX_TOOLS, "stream": True}, "m")
    return ResponsesFromChatStream(shell, translated.tools.by_upstream)


def test_streamed_calls_of_namespaced_and_custom_tools_at_every_split() -> None:
    data = codex_stream()
    whole = run(codex_stream_translation, [data])
    said = check_responses_stream(whole)  # the SDK's own event and item models
    output = said["response"]["output"]
    assert [(o["type"], o["name"], o.get("namespace")) for o in output] == [
        ("function_call", "spawn_agent", "multi_agent_v1"),
        ("custom_tool_call", "apply_patch", None),
    ]
    assert output[1]["input"] == PATCH
    assert json.loads(output[0]["arguments"]) == {"task": "t"}
    assert said["added"][1]["type"] == "custom_tool_call"
    assert said["added"][0]["namespace"] == "multi_agent_v1"
    names = said["names"]
    # The input is streamed as it comes (one delta per piece of the arguments), then done.
    assert names.count("response.custom_tool_call_input.delta") >= 8
    assert names.count("response.custom_tool_call_input.done") == 1
    done = [d for n, d in events_of(whole) if n == "response.function_call_arguments.done"]
    assert [d["name"] for d in done] == ["spawn_agent"]
    assert {response_of_item(o["id"]) for o in output} == {said["response"]["id"]}
    expected = normalized(whole)
    for pieces in splits(data):
        assert normalized(run(codex_stream_translation, pieces)) == expected, [
            len(p) for p in pieces
        ][:4]


@pytest.mark.parametrize("arguments", ["*** Begin Patch\nraw text", '{"patch": "x", "n": 1}'])
def test_a_custom_call_that_is_not_an_input_object_comes_whole_at_its_end(arguments: str) -> None:
    data = sse(
        [
            chat_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c",
                            "type": "function",
                            "function": {"name": "apply_patch", "arguments": arguments[:5]},
                        }
                    ]
                }
            ),
            chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[5:]}}]}),
            chat_chunk({}, "tool_calls"),
        ]
    )
    said = check_responses_stream(run(codex_stream_translation, [data]))
    assert said["response"]["output"][0]["input"] == arguments
    assert said["names"].count("response.custom_tool_call_input.delta") == 1


def test_hosted_tools_are_dropped_with_their_items_and_choice() -> None:
    document: dict[str, Any] = {
        "model": "m",
        "tools": [
            {"type": "web_search"},
            {"type": "function", "name": "f", "parameters": {"type": "object"}},
            {"type": "file_search", "vector_store_ids": ["v"]},
            {"type": "web_search"},
        ],
        "tool_choice": {"type": "file_search"},
        "input": [
            {"role": "user", "content": "find it"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {}},
            {"type": "mcp_list_tools", "id": "ml_1", "server_label": "s", "tools": []},
            {"role": "assistant", "content": "Found."},
        ],
    }
    translated = responses_request(document)
    assert translated.tools.dropped == ["web_search", "file_search", "mcp"]
    assert upstream_names(translated.chat) == ["f"]
    assert "tool_choice" not in translated.chat  # the model chooses among what is left
    assert translated.chat["messages"] == [
        {"role": "user", "content": "find it"},
        {"role": "assistant", "content": "Found."},
    ]
    # allowed_tools naming a hosted tool keeps the others.
    narrowed = responses_request(
        {
            **document,
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],
            },
        }
    ).chat
    assert upstream_names(narrowed) == ["f"] and narrowed["tool_choice"] == "required"
    # Nothing left to choose from: no tools, no choice, no parallel calls.
    alone = responses_request(
        {
            "model": "m",
            "input": "x",
            "tools": [{"type": "web_search"}],
            "tool_choice": "required",
            "parallel_tool_calls": True,
        }
    ).chat
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(alone)
    # refuse: today's 400, naming each field.
    for field, changed in [
        ("tools[0]", {}),
        ("tool_choice", {"tools": [], "input": "x"}),
        ("input[1].type", {"tools": []}),
    ]:
        with pytest.raises(Untranslatable) as raised:
            responses_request({**document, **changed}, hosted_tools="refuse")
        assert raised.value.field == field


def test_an_unknown_item_is_refused_even_when_hosted_tools_are_dropped() -> None:
    with pytest.raises(Untranslatable) as raised:
        responses_request(
            {"model": "m", "input": [{"type": "compaction", "encrypted_content": "x"}]}
        )
    assert raised.value.field == "input[0].type"


def test_item_references_to_stored_items_are_expanded_for_their_owner() -> None:
    shell = response_shell({"model": "m", "input": "hi"}, "m")
    response = responses_answer(
        {
            "choices": [
                {
                    "message": {
                        "content": "Let me check.",
                        "tool_calls": [
                            {"id": "c1", "function": {"name": "f", "arguments": '{"a":1}'}}
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        },
        shell,
    )
    message, call = response["output"]
    record = {"owner": "o", "input": [{"role": "user", "content": "hi"}], "response": response}
    items = [
        {"role": "user", "content": "hi"},
        {"type": "item_reference", "id": message["id"]},
        {"type": "item_reference", "id": call["id"]},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "item_reference", "id": f"item_{response['id'][5:]}_0"},
    ]
    assert referenced_responses(items) == [response["id"]]
    expanded = expand_references(items, {response["id"]: record}, "o")
    assert expanded[1] == {k: v for k, v in message.items() if k not in ("id", "status")}
    assert expanded[2] == {k: v for k, v in call.items() if k not in ("id", "status")}
    assert expanded[4] == {"role": "user", "content": "hi"}
    request = chat_request_for_responses({"model": "m", "input": expanded})
    assert [m["role"] for m in request["messages"]] == ["user", "assistant", "tool", "user"]
    assert request["messages"][1]["content"] == "Let me check."
    assert request["messages"][1]["tool_calls"][0]["function"]["name"] == "f"
    # Another owner's items, and items the gateway never stored, stay references: the
    # translation refuses them by id.
    assert expand_references(items, {response["id"]: record}, "someone else") == items
    unknown = {"type": "item_reference", "id": "msg_" + "0" * 40}
    assert expand_references([unknown], {response["id"]: record}, "o") == [unknown]
    with pytest.raises(Untranslatable) as raised:
        chat_request_for_responses({"model": "m", "input": [unknown]})
    assert raised.value.field == "input[0]" and "msg_" + "0" * 40 in str(raised.value)


def test_dropped_hosted_tools_are_reported_by_known_names_only() -> None:
    tools = [
        {"type": "web_search"},
        {"type": "web_search"},
        {"type": "computer_use_preview_2025_03_11"},
        {"type": "x\r\ny"},
        {"type": "never_heard_of_it"},
    ]
    assert tool_set(tools, "drop").dropped == ["web_search", "computer_use_preview", "other"]


def test_two_tools_that_would_reach_the_upstream_by_one_name_are_refused() -> None:
    tools = [
        {"type": "function", "name": "crm__lookup", "parameters": {}},
        {"type": "function", "name": "f", "parameters": {}},
        {"type": "function", "name": "f", "parameters": {}},
    ]
    with pytest.raises(Untranslatable, match="'f'"):
        tool_set(tools, "drop")


def test_calls_are_known_by_their_ids_however_many_there_are() -> None:
    """Gemini repeats a call's id with another index: among many calls, the one the id
    names is found and not opened twice."""
    stream = ResponsesFromChatStream(response_shell({"model": "m"}, "m"))
    chunks = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": i % 3, "id": f"call_{i}", "function": {"name": "f", "arguments": "{}"}}
        ]}}]}
        for i in range(2000)
    ]  # fmt: skip
    again = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 7, "id": "call_5", "function": {"arguments": " "}}
    ]}}]}  # fmt: skip
    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in [*chunks, again])
    out = stream.feed(
        data
        + b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n'
    )
    assert stream.response is not None, out[-500:]
    calls = stream.response["output"]
    assert len(calls) == 2000
    assert calls[5]["call_id"] == "call_5" and calls[5]["arguments"] == "{} "


def test_an_answer_past_what_the_gateway_keeps_fails_the_stream() -> None:
    """A Responses stream keeps its output for the ``done`` events and the whole response
    of its last event: an upstream that never stops writing is cut at MAX_ANSWER_BYTES
    with the error event and ``response.failed``, not held without end."""
    stream = ResponsesFromChatStream(response_shell({"model": "m"}, "m"))
    delta = b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % (b"x" * 65536)
    out = [stream.feed(delta * 64) for _ in range(9)]  # 36 MiB of text
    events = SSEDecoder().feed(b"".join(out))
    passed = [e for e in events if e.event == "response.output_text.delta"]
    assert len(passed) == MAX_ANSWER_BYTES // 65536
    assert [e.event for e in events[-2:]] == ["error", "response.failed"]
    assert stream.closed and stream.failure is not None and "the most" in stream.failure
