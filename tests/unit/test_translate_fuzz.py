"""The request translations, fed structured random requests (Hypothesis): each either
returns a request that is valid JSON — what the gateway sends upstream — or refuses with
`Untranslatable` (a 400 naming the field), never another exception (a 500). The requests
are what the gateway's parser passes (`parse_body`): it has already refused ``NaN``,
numbers past 64 bits, unpaired surrogates and nesting past its limit. And the other way,
an upstream event that is not JSON ends a translated stream with its error event."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from filterproxy.http.body import BadBody, parse_body
from filterproxy.translate.chat_client import add_cache_breakpoints, messages_request
from filterproxy.translate.common import Untranslatable, loads
from filterproxy.translate.messages_client import (
    MessagesFromChatStream,
    chat_request,
    count_tokens_estimate,
)
from filterproxy.translate.responses_client import response_shell, responses_request
from tests.fuzz_requests import CHAT, MESSAGES, RESPONSES

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def parsed(document: Any) -> dict[str, Any]:
    """*document* as the gateway's parser hands it on (as a client's encoder wrote it);
    one it refuses (a model that is not a string) is not a translation's to see."""
    try:
        result = parse_body(json.dumps(document).encode(), "application/json")
    except BadBody:
        assume(False)
    assert result is not None
    return result


def sendable(request: Any) -> None:
    """*request* is what the gateway can send: a JSON object, no NaN or Infinity, text
    that is UTF-8 (as `FilterManager.set_request_json` writes it)."""
    assert isinstance(request, dict)
    json.dumps(request, allow_nan=False, ensure_ascii=False).encode("utf-8")


@FUZZ
@given(CHAT)
def test_chat_requests_translate_to_messages_or_are_refused(document: Any) -> None:
    try:
        request = messages_request(parsed(document), default_max_tokens=4096)
    except Untranslatable as e:
        assert e.field
        return
    sendable(request)
    add_cache_breakpoints(request)  # a route's auto_cache
    sendable(request)


@FUZZ
@given(MESSAGES, st.sampled_from(["max_tokens", "max_completion_tokens"]), st.booleans())
def test_messages_requests_translate_to_chat_or_are_refused(
    document: Any, field: str, cache_control: bool
) -> None:
    document = parsed(document)
    assert count_tokens_estimate(document) >= 1  # count_tokens never fails
    passed = copy.deepcopy(document)
    add_cache_breakpoints(passed)  # auto_cache on a Messages request passed through
    sendable(passed)
    try:
        request = chat_request(document, max_tokens_field=field, cache_control=cache_control)
    except Untranslatable as e:
        assert e.field
        return
    sendable(request)


@FUZZ
@given(RESPONSES, st.sampled_from(["drop", "refuse"]), st.booleans())
def test_responses_requests_translate_to_chat_and_messages_or_are_refused(
    document: Any, hosted_tools: str, to_messages: bool
) -> None:
    document = parsed(document)
    sendable(response_shell(document, "chat-fuzz", None))
    try:
        request = responses_request(document, hosted_tools=hosted_tools).chat
        sendable(request)
        if to_messages:  # a Responses client before a Messages upstream: both steps
            request = messages_request(request)
    except Untranslatable as e:
        assert e.field
        return
    sendable(request)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "temperature": NaN}',
        b'{"model": "m", "temperature": 1e999}',
        b'{"model": "m", "max_tokens": ' + b"9" * 5000 + b"}",
        b'{"model": "m", "messages": [{"content": "\\ud800"}]}',
    ],
)
def test_the_parser_keeps_what_the_translations_cannot_write_from_them(body: bytes) -> None:
    with pytest.raises(BadBody):
        parse_body(body, "application/json")


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 3000 + b"]" * 3000,  # past orjson's limit and Python's recursion
        b'{"choices": [{"index": 0, "delta": {"content": "a"}}], "x": NaN}',
        b'{"choices": [{"index": 0, "delta": {"content": "a"}}], "x": 1e999}',
    ],
)
def test_an_upstream_event_that_is_not_json_ends_the_stream_with_an_error_event(
    data: bytes,
) -> None:
    stream = MessagesFromChatStream("m")
    out = stream.feed(b"data: " + data + b"\n\n")
    assert b"event: error" in out and b"not JSON" in out
    assert stream.closed


def test_an_upstream_event_with_half_a_surrogate_pair_is_still_read() -> None:
    # A provider that escapes a character outside the BMP may split the pair.
    assert loads(b'{"content": "\\ud83d"}') == {"content": "\ud83d"}
    stream = MessagesFromChatStream("m")
    out = stream.feed(
        b'data: {"choices": [{"index": 0, "delta": {"content": "\\ud83d"}}]}\n\n'
        b'data: {"choices": [{"index": 0, "delta": {"content": "\\ude00"}}]}\n\n'
    )
    assert b"event: error" not in out and not stream.closed
