"""The cache's key and its decisions: plain functions, no sockets."""

from __future__ import annotations

import json

import pytest

from filterproxy.extensions.cache.config import CacheConfig
from filterproxy.extensions.cache.keying import (
    RequestShape,
    cache_key,
    canonical,
    decide,
    partition,
    request_shape,
)

BODY = {"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


def key(body: dict[str, object], part: str = "p", cluster: str = "openai") -> str:
    return cache_key(part, cluster, "POST", "/v1/chat/completions", [], body)


def test_key_order_whitespace_and_integral_floats_do_not_matter() -> None:
    reordered = json.loads(
        '{ "messages" : [ {"content": "hi", "role": "user"} ], "temperature": 0.0,'
        ' "model": "gpt-4o" }'
    )
    assert key(reordered) == key(BODY)
    assert canonical(reordered) == canonical(BODY)


def test_delivery_fields_are_not_part_of_the_key() -> None:
    streaming = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    assert key(streaming) == key(BODY)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o-mini"},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"max_tokens": 10},
        {"temperature": 0.5},
    ],
)
def test_anything_else_that_differs_makes_another_key(change: dict[str, object]) -> None:
    assert key({**BODY, **change}) != key(BODY)


def test_partition_cluster_path_and_keyed_headers_make_other_keys() -> None:
    assert key(BODY, part="a") != key(BODY, part="b")
    assert key(BODY, cluster="azure") != key(BODY)
    other_path = cache_key("p", "openai", "POST", "/v1/messages", [], BODY)
    assert other_path != key(BODY)
    beta = cache_key("p", "openai", "POST", "/v1/chat/completions", [("anthropic-beta", "x")], BODY)
    assert beta != key(BODY)


def test_partition_by_key_team_or_credential() -> None:
    assert partition("key", "alice", "red", None) != partition("key", "bob", "red", None)
    assert partition("team", "alice", "red", None) == partition("team", "bob", "red", None)
    assert partition("team", "alice", None, None) != partition("team", "bob", None, None)
    # Without gateway keys: the credential's digest, never the credential itself.
    mine = partition("key", None, None, "Bearer sk-mine")
    assert "sk-mine" not in mine
    assert mine != partition("key", None, None, "Bearer sk-yours")


CONFIG = CacheConfig()


@pytest.mark.parametrize(
    ("body", "cache_control", "read", "write", "reason"),
    [
        (BODY, None, True, True, None),
        (BODY, "no-cache", False, True, "no-cache"),
        (BODY, "max-age=0", False, True, "no-cache"),
        (BODY, "no-store", False, False, "no-store"),
        (BODY, "No-Cache, no-store", False, False, "no-store"),
        ({**BODY, "temperature": 0.7}, None, False, False, "temperature"),
        ({"model": "m", "messages": []}, None, False, False, "temperature"),
        ({"model": "m", "messages": [], "seed": 7}, None, True, True, None),
        ({**BODY, "n": 2}, None, False, False, "n"),
        (None, None, False, False, "not-json"),
    ],
)
def test_decisions(
    body: dict[str, object] | None,
    cache_control: str | None,
    read: bool,
    write: bool,
    reason: str | None,
) -> None:
    decision = decide(body, CONFIG, cache_control)
    assert (decision.read, decision.write, decision.reason) == (read, write, reason)


def test_sampled_routes_cache_any_temperature() -> None:
    sampled = CacheConfig(sampled=True)
    assert decide({**BODY, "temperature": 1.2}, sampled, None).read
    assert decide({"model": "m", "messages": []}, sampled, None).read


def test_side_effect_tools_in_either_api_shape() -> None:
    config = CacheConfig(side_effect_tools=("send_*", "delete_file"))
    chat_tools = [{"type": "function", "function": {"name": "send_email", "parameters": {}}}]
    messages_tools = [{"name": "delete_file", "input_schema": {}}]
    harmless = [{"type": "function", "function": {"name": "get_weather"}}]
    assert decide({**BODY, "tools": chat_tools}, config, None).reason == "tools"
    assert decide({**BODY, "tools": messages_tools}, config, None).reason == "tools"
    assert decide({**BODY, "tools": harmless}, config, None).read


def test_request_shapes() -> None:
    assert request_shape(BODY, "chat") == RequestShape(False, True)
    assert request_shape({**BODY, "stream": True}, "chat") == RequestShape(True, False)
    with_usage = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    assert request_shape(with_usage, "chat") == RequestShape(True, True)
    assert request_shape({**BODY, "stream": True}, "messages") == RequestShape(True, True)
