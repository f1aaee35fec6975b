"""Prompt caching through the translation: the client's ``cache_control`` breakpoints
reach a Messages upstream from a chat client (and an OpenRouter upstream from a Messages
client), ``auto_cache`` adds them within Anthropic's limit of four; and the other rules
these requests meet on the way: tool results with images, a cluster URL's base path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from filterproxy.config import ConfigError
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.translate.config import TranslateRoute
from filterproxy.translate import Untranslatable, chat_request, messages_request
from filterproxy.translate.chat_over_messages import (
    MAX_CACHE_BREAKPOINTS,
    add_cache_breakpoints,
    cache_breakpoints,
)

EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


def test_a_chat_clients_breakpoints_reach_a_messages_upstream() -> None:
    request = messages_request(
        {
            "model": "claude",
            "messages": [
                {
                    "role": "system",
                    "content": [
                        {"type": "text", "text": "You are terse."},
                        {"type": "text", "text": "Long rules…", "cache_control": HOUR},
                    ],
                },
                {"role": "developer", "content": "Be kind."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Read this", "cache_control": EPHEMERAL}],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "c1",
                    "content": [{"type": "text", "text": "result", "cache_control": EPHEMERAL}],
                },
                {"role": "user", "content": "and now?", "cache_control": EPHEMERAL},
            ],
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {}}},
                {
                    "type": "function",
                    "function": {"name": "g", "parameters": {}},
                    "cache_control": EPHEMERAL,
                },
            ],
        }
    )
    assert request["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Long rules…", "cache_control": HOUR},
        {"type": "text", "text": "Be kind."},
    ]
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "Read this", "cache_control": EPHEMERAL}
    ]
    assert request["messages"][2]["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "c1",
            "content": [{"type": "text", "text": "result", "cache_control": EPHEMERAL}],
        },
        {"type": "text", "text": "and now?", "cache_control": EPHEMERAL},
    ]
    assert "cache_control" not in request["tools"][0]
    assert request["tools"][1]["cache_control"] == EPHEMERAL
    assert cache_breakpoints(request) == 5


def test_without_breakpoints_the_system_prompt_stays_a_string() -> None:
    request = messages_request(
        {
            "model": "c",
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        }
    )
    assert request["system"] == "s"
    assert cache_breakpoints(request) == 0


def agent_request() -> dict[str, Any]:
    return {
        "model": "claude",
        "system": "You are an agent." * 50,
        "tools": [
            {"name": "a", "input_schema": {"type": "object"}},
            {"name": "b", "input_schema": {"type": "object"}},
        ],
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}],
            },
        ],
    }


def test_auto_cache_marks_the_tools_the_system_prompt_and_the_last_user_turn() -> None:
    request = agent_request()
    assert add_cache_breakpoints(request) == 3
    assert request["tools"][-1]["cache_control"] == EPHEMERAL
    assert "cache_control" not in request["tools"][0]
    assert request["system"] == [
        {"type": "text", "text": "You are an agent." * 50, "cache_control": EPHEMERAL}
    ]
    assert request["messages"][-1]["content"][-1]["cache_control"] == EPHEMERAL
    assert request["messages"][0]["content"] == "first"
    assert add_cache_breakpoints(request) == 0, "a second pass adds nothing"


def test_auto_cache_counts_the_clients_own_and_never_passes_four() -> None:
    request = agent_request()
    request["messages"][1]["content"][0]["cache_control"] = EPHEMERAL
    request["messages"][0]["content"] = [
        {"type": "text", "text": "a", "cache_control": EPHEMERAL},
        {"type": "text", "text": "b", "cache_control": EPHEMERAL},
    ]
    assert cache_breakpoints(request) == 3
    assert add_cache_breakpoints(request) == 1  # the tools only: four in all
    assert request["tools"][-1]["cache_control"] == EPHEMERAL
    assert isinstance(request["system"], str)
    assert cache_breakpoints(request) == MAX_CACHE_BREAKPOINTS
    full = copy.deepcopy(request)
    assert add_cache_breakpoints(request) == 0 and request == full


def test_auto_cache_leaves_a_place_that_has_its_breakpoint() -> None:
    request = agent_request()
    request["system"] = [{"type": "text", "text": "s", "cache_control": HOUR}]
    assert add_cache_breakpoints(request) == 2
    assert request["system"] == [{"type": "text", "text": "s", "cache_control": HOUR}]


def messages_document() -> dict[str, Any]:
    return {
        "model": "m",
        "system": [
            {"type": "text", "text": "rules"},
            {"type": "text", "text": "more", "cache_control": EPHEMERAL},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "text", "text": "there", "cache_control": EPHEMERAL},
                ],
            },
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
                        "content": "42",
                        "cache_control": EPHEMERAL,
                    }
                ],
            },
        ],
    }


def test_a_messages_clients_breakpoints_reach_an_upstream_that_takes_them() -> None:
    kept = chat_request(messages_document(), cache_control=True)["messages"]
    assert kept[0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": "rules"},
            {"type": "text", "text": "more", "cache_control": EPHEMERAL},
        ],
    }
    assert kept[1]["content"] == [
        {"type": "text", "text": "hi"},
        {"type": "text", "text": "there", "cache_control": EPHEMERAL},
    ]
    assert kept[3]["content"] == [{"type": "text", "text": "42", "cache_control": EPHEMERAL}]
    plain = chat_request(messages_document())["messages"]
    assert plain[0] == {"role": "system", "content": "rules\nmore"}
    assert plain[1]["content"] == "hi\nthere"
    assert plain[3]["content"] == "42"
    assert "cache_control" not in repr(plain)


def test_images_in_a_tool_result_follow_it_in_a_user_message() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    messages = chat_request(
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [{"type": "text", "text": "the screen:"}, image],
                        }
                    ],
                },
            ],
        }
    )["messages"]
    assert messages[1] == {"role": "tool", "tool_call_id": "t", "content": "the screen:"}
    assert messages[2] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
    }


def test_a_tool_result_block_without_a_counterpart_is_refused_by_name() -> None:
    document = {
        "model": "m",
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
        ],
    }
    with pytest.raises(Untranslatable, match=r"messages\[0\]\.content\[0\]\.content\[0\]\.type"):
        chat_request(document)


def test_auto_cache_is_a_route_key_with_a_default() -> None:
    base = "clusters: {c: {url: 'http://h'}}\nroutes:\n"
    config = parse_config(base + "  - {cluster: c, auto_cache: true}\n  - {cluster: c}\n")
    options = [r.option(TranslateRoute) for r in config.routes]
    assert [o.auto_cache for o in options if o is not None] == [True, False]
    with pytest.raises(ConfigError, match=r"routes\[0\]\.auto_cache"):
        parse_config(base + "  - {cluster: c, auto_cache: sometimes}\n")


# -- the base path of a cluster's URL ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path", "target"),
    [
        (
            "http://h/compatible-mode/v1",
            "/v1/chat/completions",
            "/compatible-mode/v1/chat/completions",
        ),
        ("http://h/api/paas/v4/", "/v1/chat/completions", "/api/paas/v4/chat/completions"),
        ("http://h/v1beta", "/v1/models", "/v1beta/models"),
        ("http://h/v1", "/v1/messages", "/v1/messages"),
        ("http://h/anthropic", "/v1/messages", "/anthropic/v1/messages"),
        ("http://h/base", "/v1/x", "/base/v1/x"),
        ("http://h", "/v1/chat/completions", "/v1/chat/completions"),
        ("http://h/compatible-mode/v1", "/health", "/compatible-mode/v1/health"),
    ],
)
def test_a_base_path_that_names_the_api_version_takes_the_clients_path_once(
    url: str, path: str, target: str
) -> None:
    config = parse_config(f"clusters: {{c: {{url: '{url}'}}}}\n")
    assert config.clusters["c"].endpoints[0].target(path, "m") == target


def test_start_up_says_where_a_versioned_base_path_now_sends_requests() -> None:
    config = parse_config(
        "clusters:\n"
        "  qwen: {url: 'http://h/compatible-mode/v1'}\n"
        "  plain: {url: 'http://h/base'}\n"
        "  preset: {provider: openrouter, api_key: k}\n"
        "routes: [{cluster: qwen}]\n"
    )
    (warning,) = config.warnings
    assert warning.startswith("clusters.qwen: url 'http://h/compatible-mode/v1'")
    assert "/compatible-mode/v1/chat/completions" in warning
    assert "/compatible-mode/v1/v1/chat/completions" in warning
