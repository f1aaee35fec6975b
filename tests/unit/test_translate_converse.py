"""Messages over Bedrock's Converse API, without sockets: the request mapping (checked
against botocore's service model), the whole answer, and ConverseStream's events read
back by the anthropic SDK's own accumulator."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from filterproxy.http.sse import SSEDecoder
from filterproxy.translate.common import SHAPE_ERRORS, UnmappableAnswer, Untranslatable
from filterproxy.translate.converse import (
    MessagesFromConverseStream,
    converse_request,
    messages_response,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()
PDF = base64.b64encode(b"%PDF-1.7 fake document").decode()
REDACTED = base64.b64encode(b"opaque reasoning the provider encrypted").decode()
SIGNATURE = "EqQBCkYIBxgCKkDx+signature/that=must+survive"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def request(**fields: Any) -> dict[str, Any]:
    """A Messages request with one user turn, plus *fields*."""
    return {
        "model": "meta.llama3-70b",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }


# -- the request -----------------------------------------------------------------------


def test_sampling_fields_go_to_inference_config_and_the_rest_is_dropped() -> None:
    converted = converse_request(
        request(
            system="be brief",
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END", "STOP"],
            stream=True,
            metadata={"user_id": "u-1"},
            service_tier="auto",
        )
    )
    assert converted == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {
            "maxTokens": 100,
            "temperature": 0.2,
            "topP": 0.9,
            "stopSequences": ["END", "STOP"],
        },
        "additionalModelRequestFields": {"top_k": 40},
    }


def test_cache_points_follow_what_they_mark_with_their_ttl() -> None:
    converted = converse_request(
        request(
            system=[
                {
                    "type": "text",
                    "text": "rules",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
                {"type": "text", "text": "today's news"},
            ],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "a long document",
                            "cache_control": {"type": "ephemeral"},
                        },
                        {"type": "text", "text": "the question"},
                    ],
                }
            ],
            tools=[
                {"name": "a", "input_schema": WEATHER_SCHEMA},
                {
                    "name": "b",
                    "description": "the second",
                    "input_schema": WEATHER_SCHEMA,
                    "cache_control": {"type": "ephemeral", "ttl": "5m"},
                },
            ],
        )
    )
    assert converted["system"] == [
        {"text": "rules"},
        {"cachePoint": {"type": "default", "ttl": "1h"}},
        {"text": "today's news"},
    ]
    assert converted["messages"][0]["content"] == [
        {"text": "a long document"},
        {"cachePoint": {"type": "default"}},
        {"text": "the question"},
    ]
    assert converted["toolConfig"] == {
        "tools": [
            {"toolSpec": {"name": "a", "inputSchema": {"json": WEATHER_SCHEMA}}},
            {
                "toolSpec": {
                    "name": "b",
                    "description": "the second",
                    "inputSchema": {"json": WEATHER_SCHEMA},
                }
            },
            {"cachePoint": {"type": "default", "ttl": "5m"}},
        ]
    }


def test_a_top_level_cache_control_marks_the_end_of_the_last_turn() -> None:
    converted = converse_request(
        request(
            messages=[
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three"},
            ],
            cache_control={"type": "ephemeral", "ttl": "1h"},
        )
    )
    assert converted["messages"][-1]["content"] == [
        {"text": "three"},
        {"cachePoint": {"type": "default", "ttl": "1h"}},
    ]
    assert converted["messages"][0]["content"] == [{"text": "one"}]


def test_consecutive_turns_of_one_role_are_merged_in_order() -> None:
    converted = converse_request(
        request(
            messages=[
                {"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c"},
                {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
                {"role": "user", "content": "e"},
            ]
        )
    )
    assert converted["messages"] == [
        {"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
        {"role": "assistant", "content": [{"text": "c"}, {"text": "d"}]},
        {"role": "user", "content": [{"text": "e"}]},
    ]


def test_every_kind_of_content_block_has_its_converse_form() -> None:
    converted = converse_request(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {
                            "type": "document",
                            "title": "Q3 report (final).pdf",
                            "context": "the board's copy",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": PDF,
                            },
                        },
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "plain"},
                        },
                        {"type": "text", "text": "what do they say?"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "the user wants", "signature": SIGNATURE},
                        {"type": "redacted_thinking", "data": REDACTED},
                        {"type": "thinking", "thinking": "unsigned", "signature": ""},
                        {"type": "text", "text": ""},  # (Converse refuses empty text)
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "weather",
                            "input": {"city": "Paris"},
                        },
                        {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "no such city"},
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/jpeg",
                                        "data": PNG,
                                    },
                                },
                            ],
                        },
                    ],
                },
            ],
            tools=[{"name": "weather", "input_schema": WEATHER_SCHEMA}],
        )
    )
    user, assistant, results = converted["messages"]
    assert user["content"] == [
        {"image": {"format": "png", "source": {"bytes": PNG}}},
        {
            "document": {
                "format": "pdf",
                "name": "Q3 report (final) pdf",
                "source": {"bytes": PDF},
                "context": "the board's copy",
            }
        },
        {
            "document": {
                "format": "txt",
                "name": "document-0-2",
                "source": {"bytes": base64.b64encode(b"plain").decode()},
            }
        },
        {"text": "what do they say?"},
    ]
    assert assistant["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "the user wants", "signature": SIGNATURE}}},
        {"reasoningContent": {"redactedContent": REDACTED}},
        {"reasoningContent": {"reasoningText": {"text": "unsigned"}}},
        {"toolUse": {"toolUseId": "toolu_1", "name": "weather", "input": {"city": "Paris"}}},
        {"toolUse": {"toolUseId": "toolu_2", "name": "weather", "input": {}}},
    ]
    assert results["content"] == [
        {"toolResult": {"toolUseId": "toolu_1", "content": [{"text": "sunny"}]}},
        {
            "toolResult": {
                "toolUseId": "toolu_2",
                "content": [
                    {"text": "no such city"},
                    {"image": {"format": "jpeg", "source": {"bytes": PNG}}},
                ],
                "status": "error",
            }
        },
    ]


def test_a_cache_mark_inside_a_tool_result_goes_after_the_tool_result() -> None:
    converted = converse_request(
        request(
            messages=[
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [
                                {
                                    "type": "text",
                                    "text": "big output",
                                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                                }
                            ],
                        },
                        {"type": "text", "text": "and now?"},
                    ],
                },
            ],
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
        )
    )
    assert converted["messages"][1]["content"] == [
        {"toolResult": {"toolUseId": "t", "content": [{"text": "big output"}]}},
        {"cachePoint": {"type": "default", "ttl": "1h"}},
        {"text": "and now?"},
    ]


TOOLS = [{"name": "weather", "description": "the weather", "input_schema": WEATHER_SCHEMA}]
CALLED = [
    {"role": "user", "content": "weather in Paris?"},
    {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}}
        ],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, None),
        ({"type": "auto"}, {"auto": {}}),
        ({"type": "any"}, {"any": {}}),
        ({"type": "tool", "name": "weather"}, {"tool": {"name": "weather"}}),
        ({"type": "auto", "disable_parallel_tool_use": False}, {"auto": {}}),
    ],
)
def test_tool_choice(choice: dict[str, Any] | None, expected: dict[str, Any] | None) -> None:
    converted = converse_request(request(tools=TOOLS, tool_choice=choice))
    spec = {
        "name": "weather",
        "description": "the weather",
        "inputSchema": {"json": WEATHER_SCHEMA},
    }
    config: dict[str, Any] = {"tools": [{"toolSpec": spec}]}
    if expected is not None:
        config["toolChoice"] = expected
    assert converted["toolConfig"] == config


def test_tool_choice_none_leaves_the_tools_out_when_no_tool_was_called() -> None:
    converted = converse_request(request(tools=TOOLS, tool_choice={"type": "none"}))
    assert "toolConfig" not in converted


def test_tool_choice_none_keeps_the_tools_without_a_choice_once_a_tool_was_called() -> None:
    # Bedrock refuses toolUse/toolResult blocks without a toolConfig.
    converted = converse_request(
        request(messages=CALLED, tools=TOOLS, tool_choice={"type": "none"})
    )
    assert converted["toolConfig"]["tools"][0]["toolSpec"]["name"] == "weather"
    assert "toolChoice" not in converted["toolConfig"]


def test_thinking_and_output_config_go_to_their_converse_fields() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    converted = converse_request(
        request(
            thinking=thinking,
            output_config={"effort": "high", "format": {"type": "json_schema", "schema": schema}},
        )
    )
    assert converted["additionalModelRequestFields"] == {"thinking": thinking}
    config = converted["outputConfig"]
    assert config["effort"] == "high"
    assert config["textFormat"]["type"] == "json_schema"
    assert json.loads(config["textFormat"]["structure"]["jsonSchema"]["schema"]) == schema
    # The older beta field says the same.
    older = converse_request(request(output_format={"type": "json_schema", "schema": schema}))
    assert older["outputConfig"] == {"textFormat": config["textFormat"]}
    # Disabled thinking is the default: models that have none refuse the field.
    assert "additionalModelRequestFields" not in converse_request(
        request(thinking={"type": "disabled"})
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mcp_servers": [{"type": "url", "url": "https://mcp"}]}, "mcp_servers"),
        ({"container": "c-1"}, "container"),
        ({"context_management": {"edits": [{"type": "clear"}]}}, "context_management"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        (
            {"tools": [{"name": "f", "input_schema": {}, "input_examples": [{"a": 1}]}]},
            "tools[0].input_examples",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
            "tool_choice.disable_parallel_tool_use",
        ),
        ({"tools": TOOLS, "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"system": [{"type": "image"}]}, "system[0]"),
        (
            {
                "system": [
                    {
                        "type": "text",
                        "text": "x",
                        "cache_control": {"type": "ephemeral", "ttl": "2h"},
                    }
                ]
            },
            "system[0].cache_control.ttl",
        ),
        ({"max_tokens": "100"}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": "hi"}, "messages"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0].source.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/bmp",
                                    "data": PNG,
                                },
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].source.media_type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "url", "url": "https://x/a.pdf"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].source.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "citations": {"enabled": True},
                                "source": {"type": "text", "data": "x"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].citations",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "server_tool_use", "id": "s", "name": "web_search"}],
                    }
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "search_result", "source": "s"}],
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0].type",
        ),
        ({"output_config": {"format": {"type": "regex"}}}, "output_config.format.type"),
    ],
)
def test_what_has_no_counterpart_is_refused_by_name(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(Untranslatable) as caught:
        converse_request(request(**fields))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_empty_and_null_fields_are_no_request() -> None:
    converted = converse_request(
        request(mcp_servers=[], container=None, temperature=None, tools=[], tool_choice=None)
    )
    assert converted == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "inferenceConfig": {"maxTokens": 100},
    }


def test_the_client_request_is_not_changed() -> None:
    document = request(messages=CALLED, tools=TOOLS, system=[{"type": "text", "text": "s"}])
    before = copy.deepcopy(document)
    converse_request(document)
    assert document == before


def _blobs_decoded(converse: dict[str, Any]) -> dict[str, Any]:
    """*converse* with its blobs as bytes, as botocore's validator takes them (on the wire
    JSON carries them base64-encoded)."""
    converse = copy.deepcopy(converse)

    def blocks(content: list[dict[str, Any]]) -> None:
        for block in content:
            for kind in ("image", "document"):
                if kind in block:
                    source = block[kind]["source"]
                    source["bytes"] = base64.b64decode(source["bytes"])
            if "redactedContent" in block.get("reasoningContent", {}):
                block["reasoningContent"]["redactedContent"] = base64.b64decode(
                    block["reasoningContent"]["redactedContent"]
                )
            if "toolResult" in block:
                blocks(block["toolResult"]["content"])

    for message in converse["messages"]:
        blocks(message["content"])
    return converse


def test_a_full_request_is_a_valid_converse_request_for_botocore() -> None:
    pytest.importorskip("botocore", reason="botocore validates the Converse shapes")
    import botocore.session  # type: ignore[import-untyped]
    from botocore.validate import ParamValidator  # type: ignore[import-untyped]

    document = request(
        system=[
            {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/webp", "data": PNG},
                    },
                    {
                        "type": "document",
                        "title": "r.pdf",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    },
                    {"type": "document", "source": {"type": "text", "data": "notes"}},
                    {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": SIGNATURE},
                    {"type": "redacted_thinking", "data": REDACTED},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "P"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "down"},
                            {
                                "type": "document",
                                "source": {"type": "text", "data": "log"},
                                "cache_control": {"type": "ephemeral", "ttl": "5m"},
                            },
                        ],
                    }
                ],
            },
        ],
        tools=[{**TOOLS[0], "strict": True, "cache_control": {"type": "ephemeral"}}],
        tool_choice={"type": "tool", "name": "weather"},
        temperature=0.5,
        top_p=0.8,
        top_k=5,
        stop_sequences=["\n\nHuman:"],
        thinking={"type": "enabled", "budget_tokens": 1024},
        output_config={
            "effort": "low",
            "format": {"type": "json_schema", "schema": {"type": "object"}},
        },
    )
    converted = converse_request(document)
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    for operation in ("Converse", "ConverseStream"):
        shape = model.operation_model(operation).input_shape
        params = {"modelId": "meta.llama3-70b-instruct-v1:0", **_blobs_decoded(converted)}
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), report.generate_report()
    # and the validator does catch a wrong name
    wrong = {"modelId": "m", **_blobs_decoded(converted), "inference_config": {}}
    assert ParamValidator().validate(wrong, shape).has_errors()


# -- the whole answer ----------------------------------------------------------------------

ANSWER: dict[str, Any] = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {
                    "reasoningContent": {
                        "reasoningText": {"text": "let me see", "signature": SIGNATURE}
                    }
                },
                {"reasoningContent": {"redactedContent": REDACTED}},
                {"text": "Checking the weather."},
                {
                    "citationsContent": {
                        "content": [{"text": "It was "}, {"text": "sunny."}],
                        "citations": [
                            {
                                "title": "doc",
                                "location": {
                                    "documentChar": {"documentIndex": 0, "start": 0, "end": 5}
                                },
                            }
                        ],
                    }
                },
                {
                    "toolUse": {
                        "toolUseId": "tooluse_abc",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    }
                },
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": {
        "inputTokens": 12,
        "outputTokens": 34,
        "totalTokens": 1346,
        "cacheReadInputTokens": 1000,
        "cacheWriteInputTokens": 300,
    },
    "metrics": {"latencyMs": 812},
}


def test_a_converse_answer_becomes_a_messages_answer() -> None:
    answer = messages_response(ANSWER, "meta.llama3-70b")
    assert answer["id"].startswith("msg_") and len(answer["id"]) > 10
    assert {k: v for k, v in answer.items() if k != "id"} == {
        "type": "message",
        "role": "assistant",
        "model": "meta.llama3-70b",
        "content": [
            {"type": "thinking", "thinking": "let me see", "signature": SIGNATURE},
            {"type": "redacted_thinking", "data": REDACTED},
            {"type": "text", "text": "Checking the weather."},
            {"type": "text", "text": "It was sunny."},
            {
                "type": "tool_use",
                "id": "tooluse_abc",
                "name": "weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 1000,
            "output_tokens": 34,
        },
    }
    # the SDK reads it as a Message
    Message.model_validate(answer)


def test_an_answer_without_cache_counts_has_zero_of_them() -> None:
    plain = {**ANSWER, "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}}
    assert messages_response(plain, "m")["usage"] == {
        "input_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 4,
    }


def test_an_answer_replayed_keeps_its_signatures_byte_for_byte() -> None:
    answer = messages_response(ANSWER, "m")
    replayed = converse_request(
        request(
            messages=[
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": answer["content"]},
            ]
        )
    )
    sent = replayed["messages"][1]["content"]
    assert sent[0] == ANSWER["output"]["message"]["content"][0]
    assert sent[1] == ANSWER["output"]["message"]["content"][1]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("end_turn", "end_turn"),
        ("tool_use", "tool_use"),
        ("max_tokens", "max_tokens"),
        ("stop_sequence", "stop_sequence"),
        ("guardrail_intervened", "refusal"),
        ("content_filtered", "refusal"),
        ("model_context_window_exceeded", "model_context_window_exceeded"),
    ],
)
def test_each_stop_reason(reason: str, expected: str) -> None:
    answer = messages_response({**ANSWER, "stopReason": reason}, "m")
    assert answer["stop_reason"] == expected
    assert answer["stop_sequence"] is None


def test_the_stop_sequence_is_named_when_the_model_names_it() -> None:
    answer = messages_response(
        {
            **ANSWER,
            "stopReason": "stop_sequence",
            "additionalModelResponseFields": {"stop_sequence": "END"},
        },
        "m",
    )
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("stop_sequence", "END")


@pytest.mark.parametrize("reason", ["malformed_model_output", "malformed_tool_use", "new_reason"])
def test_a_malformed_or_unknown_stop_is_no_answer(reason: str) -> None:
    with pytest.raises(UnmappableAnswer, match=reason):
        messages_response({**ANSWER, "stopReason": reason}, "m")


def test_a_block_the_translation_cannot_carry_is_no_answer() -> None:
    odd = copy.deepcopy(ANSWER)
    odd["output"]["message"]["content"].append(
        {"image": {"format": "png", "source": {"bytes": PNG}}}
    )
    with pytest.raises(UnmappableAnswer, match="image"):
        messages_response(odd, "m")


@pytest.mark.parametrize(
    "broken",
    [
        {"output": {}, "stopReason": "end_turn", "usage": {}},
        {"output": {"message": {"content": "text"}}, "stopReason": "end_turn", "usage": {}},
        {"output": {"message": {"content": [{"text": 5}]}}, "stopReason": "end_turn", "usage": {}},
        {"output": {"message": {"content": []}}, "stopReason": "end_turn", "usage": [1]},
        {
            "output": {"message": {"content": [{"toolUse": {"name": "f"}}]}},
            "stopReason": "end_turn",
            "usage": {},
        },
    ],
)
def test_an_answer_of_another_shape_raises_a_shape_error(broken: dict[str, Any]) -> None:
    with pytest.raises(SHAPE_ERRORS):
        messages_response(broken, "m")


# -- the stream ------------------------------------------------------------------------------

#: A ConverseStream as a model with reasoning and tools sends it: a reasoning block
#: signed at its end, text, then a tool call whose input comes in pieces.
STREAM: list[tuple[str, dict[str, Any]]] = [
    ("messageStart", {"role": "assistant"}),
    (
        "contentBlockDelta",
        {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "The user "}}},
    ),
    (
        "contentBlockDelta",
        {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "asks about Paris."}}},
    ),
    (
        "contentBlockDelta",
        {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": SIGNATURE}}},
    ),
    ("contentBlockStop", {"contentBlockIndex": 0}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Let me "}}),
    (
        "contentBlockDelta",
        {"contentBlockIndex": 1, "delta": {"text": 'check \u00e9t\u00e9 "weather".'}},
    ),
    ("contentBlockStop", {"contentBlockIndex": 1}),
    (
        "contentBlockStart",
        {
            "contentBlockIndex": 2,
            "start": {"toolUse": {"toolUseId": "tooluse_x1", "name": "weather"}},
        },
    ),
    ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"ci'}}}),
    ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": 'ty": "Par'}}}),
    ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": 'is"}'}}}),
    ("contentBlockStop", {"contentBlockIndex": 2}),
    ("messageStop", {"stopReason": "tool_use"}),
    (
        "metadata",
        {
            "usage": {
                "inputTokens": 20,
                "outputTokens": 41,
                "totalTokens": 561,
                "cacheReadInputTokens": 400,
                "cacheWriteInputTokens": 100,
            },
            "metrics": {"latencyMs": 1234},
        },
    ),
]

MESSAGE_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def sse_events(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    decoder = SSEDecoder()
    found = [(e.event, json.loads(e.data)) for e in decoder.feed(raw) if e.data is not None]
    assert decoder.close() == b"", "the output ends inside an event"
    return found


def translated(
    events: list[tuple[str, dict[str, Any]]], model: str = "m"
) -> tuple[bytes, MessagesFromConverseStream]:
    stream = MessagesFromConverseStream(model)
    return b"".join(stream.event(name, payload) for name, payload in events) + stream.end(), stream


def sdk_message(raw: bytes) -> Any:
    """The Message the anthropic SDK's accumulator makes of a Messages stream."""
    snapshot: Any = None
    buffers: dict[int, bytes] = {}
    for name, data in sse_events(raw):
        assert name == data["type"]
        event = MESSAGE_EVENT.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    return snapshot


def test_the_sdk_reads_a_converse_stream_as_the_answer() -> None:
    raw, stream = translated(STREAM, "deepseek.r1-v1:0")
    assert stream.closed and stream.failure is None
    names = [name for name, _ in sse_events(raw)]
    assert names == [
        "message_start",
        *[
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
        ],
        *[
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
        ],
        *[
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
        ],
        "message_delta",
        "message_stop",
    ]
    message = sdk_message(raw)
    assert message.model == "deepseek.r1-v1:0" and message.id.startswith("msg_")
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    dumped = [block.model_dump(exclude_none=True) for block in message.content]
    assert dumped == [
        {"type": "thinking", "thinking": "The user asks about Paris.", "signature": SIGNATURE},
        {"type": "text", "text": 'Let me check \u00e9t\u00e9 "weather".'},
        {"type": "tool_use", "id": "tooluse_x1", "name": "weather", "input": {"city": "Paris"}},
    ]
    assert message.usage.model_dump(exclude_none=True) == {
        "input_tokens": 20,
        "output_tokens": 41,
        "cache_read_input_tokens": 400,
        "cache_creation_input_tokens": 100,
    }


def test_the_stream_says_what_the_whole_answer_says() -> None:
    raw, _ = translated(STREAM)
    streamed = sdk_message(raw).model_dump(mode="json", exclude_none=True)
    whole = Message.model_validate(messages_response(ANSWER_OF_STREAM, "m")).model_dump(
        mode="json", exclude_none=True
    )
    assert {**streamed, "id": "*"} == {**whole, "id": "*"}


ANSWER_OF_STREAM: dict[str, Any] = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {
                    "reasoningContent": {
                        "reasoningText": {
                            "text": "The user asks about Paris.",
                            "signature": SIGNATURE,
                        }
                    }
                },
                {"text": 'Let me check \u00e9t\u00e9 "weather".'},
                {
                    "toolUse": {
                        "toolUseId": "tooluse_x1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    }
                },
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": STREAM[-1][1]["usage"],
    "metrics": {"latencyMs": 1},
}


def test_the_stream_fixtures_are_converse_shapes() -> None:
    pytest.importorskip("botocore", reason="botocore validates the Converse shapes")
    import botocore.session  # type: ignore[import-untyped]
    from botocore.validate import ParamValidator  # type: ignore[import-untyped]

    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    union = model.shape_for("ConverseStreamOutput")
    for name, payload in [*STREAM, *REDACTED_STREAM]:
        member = union.members[name]
        data = copy.deepcopy(payload)
        reasoning = data.get("delta", {}).get("reasoningContent", {})
        if "redactedContent" in reasoning:
            reasoning["redactedContent"] = base64.b64decode(reasoning["redactedContent"])
        report = ParamValidator().validate(data, member)
        assert not report.has_errors(), (name, report.generate_report())
    answer = model.operation_model("Converse").output_shape
    for document in (ANSWER, ANSWER_OF_STREAM):
        data = copy.deepcopy(document)
        for block in data["output"]["message"]["content"]:
            if "redactedContent" in block.get("reasoningContent", {}):
                block["reasoningContent"]["redactedContent"] = b"x"
        report = ParamValidator().validate(data, answer)
        assert not report.has_errors(), report.generate_report()


REDACTED_STREAM: list[tuple[str, dict[str, Any]]] = [
    ("messageStart", {"role": "assistant"}),
    (
        "contentBlockDelta",
        {"contentBlockIndex": 0, "delta": {"reasoningContent": {"redactedContent": REDACTED}}},
    ),
    ("contentBlockStop", {"contentBlockIndex": 0}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Done"}}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"citation": {"title": "doc"}}}),
    # (no contentBlockStop: the stop of the message closes the block)
    (
        "messageStop",
        {"stopReason": "stop_sequence", "additionalModelResponseFields": {"stop_sequence": "###"}},
    ),
    (
        "metadata",
        {
            "usage": {"inputTokens": 5, "outputTokens": 6, "totalTokens": 11},
            "metrics": {"latencyMs": 9},
        },
    ),
]


def test_redacted_reasoning_an_unstopped_block_and_a_stop_sequence() -> None:
    raw, stream = translated(REDACTED_STREAM)
    assert stream.failure is None
    message = sdk_message(raw)
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "redacted_thinking", "data": REDACTED},
        {"type": "text", "text": "Done"},
    ]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "###")
    assert message.usage.model_dump(exclude_none=True) == {
        "input_tokens": 5,
        "output_tokens": 6,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    stops = [d["index"] for n, d in sse_events(raw) if n == "content_block_stop"]
    assert stops == [0, 1]


def test_each_event_is_written_as_anthropic_writes_it() -> None:
    stream = MessagesFromConverseStream("m")
    stream.event("messageStart", {"role": "assistant"})
    out = stream.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a\nb"}})
    assert out == (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"a\\nb"}}\n\n'
    )
    assert stream.event("messageStop", {"stopReason": "end_turn"}) == (
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    )
    assert stream.event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2}}) == (
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":{"input_tokens":1,"cache_creation_input_tokens":0,'
        b'"cache_read_input_tokens":0,"output_tokens":2}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert stream.closed and stream.end() == b""
    assert (
        stream.event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "x"}}) == b""
    )


def error_of(raw: bytes) -> dict[str, Any]:
    events = sse_events(raw)
    assert events[-1][0] == "error" and [n for n, _ in events].count("error") == 1
    assert "message_stop" not in [n for n, _ in events]
    document = events[-1][1]
    assert document["type"] == "error"
    error: dict[str, Any] = document["error"]
    return error


@pytest.mark.parametrize("cut", [0, 1, 5, len(STREAM) - 2, len(STREAM) - 1])
def test_a_stream_that_ends_before_its_metadata_fails(cut: int) -> None:
    raw, stream = translated(STREAM[:cut])
    assert stream.closed
    assert stream.failure == "the upstream's stream ended before its end (no metadata event)"
    assert error_of(raw) == {"type": "api_error", "message": stream.failure}


def test_fail_writes_an_error_event_and_closes() -> None:
    stream = MessagesFromConverseStream("m")
    first = stream.event("messageStart", {"role": "assistant"})
    assert first.startswith(b"event: message_start\n")
    out = stream.fail("the upstream's frame failed its CRC", "overloaded_error")
    assert out == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"the upstream\'s frame failed its CRC"}}\n\n'
    )
    assert stream.closed and stream.failure == "the upstream's frame failed its CRC"
    assert stream.fail("again") == b"" and stream.end() == b""
    assert stream.event("messageStop", {"stopReason": "end_turn"}) == b""


@pytest.mark.parametrize(
    ("events", "said"),
    [
        (
            [
                (
                    "contentBlockDelta",
                    {"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{}"}}},
                )
            ],
            "a tool call's input for block 0, which is no tool call",
        ),
        ([("surpriseEvent", {})], "'surpriseEvent'"),
        (
            [("contentBlockDelta", {"contentBlockIndex": "0", "delta": {"text": "x"}})],
            "contentBlockIndex '0'",
        ),
        ([("contentBlockDelta", {"contentBlockIndex": 0})], "KeyError: 'delta'"),
        ([("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"image": {}}})], "['image']"),
        (
            [
                (
                    "contentBlockStart",
                    {"contentBlockIndex": 0, "start": {"image": {"format": "png"}}},
                )
            ],
            "['image']",
        ),
        ([("metadata", {"usage": {"inputTokens": 1}})], "metadata before messageStop"),
        ([("messageStop", {"stopReason": "malformed_tool_use"})], "malformed_tool_use"),
        (
            [
                ("messageStop", {"stopReason": "end_turn"}),
                ("messageStop", {"stopReason": "end_turn"}),
            ],
            "a second messageStop",
        ),
        ([("messageStop", {"stopReason": "end_turn"}), ("metadata", {"usage": 7})], "usage is int"),
        (
            [
                ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "b"}}),
                ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a"}}),
            ],
            "content for block 0 after it ended",
        ),
        ([("messageStart", {"role": "assistant"})], "a second messageStart"),
    ],
)
def test_a_malformed_event_fails_the_stream_naming_what_was_wrong(
    events: list[tuple[str, dict[str, Any]]], said: str
) -> None:
    stream = MessagesFromConverseStream("m")
    raw = stream.event("messageStart", {"role": "assistant"})
    for name, payload in events:
        raw += stream.event(name, payload)
    assert stream.closed and stream.failure is not None and said in stream.failure
    assert error_of(raw)["message"] == stream.failure
    assert stream.end() == b""


def test_an_exception_from_the_upstream_ends_the_stream_with_its_kind() -> None:
    stream = MessagesFromConverseStream("m")
    raw = stream.event("messageStart", {"role": "assistant"})
    raw += stream.event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "par"}})
    raw += stream.event("throttlingException", {"message": "Too many tokens, please wait."})
    assert error_of(raw) == {
        "type": "rate_limit_error",
        "message": "throttlingException: Too many tokens, please wait.",
    }
    assert stream.failure == "throttlingException: Too many tokens, please wait."
