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
from filterproxy.http.sse import SSEDecoder
from filterproxy.translate.chat_over_messages import (
    ChatFromMessagesStream,
    add_cache_breakpoints,
    chat_response,
    messages_request,
)
from filterproxy.translate.common import SHAPE_ERRORS, UnmappableAnswer, Untranslatable, loads
from filterproxy.translate.messages_over_chat import (
    MessagesFromChatStream,
    chat_request,
    count_tokens_estimate,
    messages_response,
)
from filterproxy.translate.responses_over_chat import (
    Piped,
    ResponsesFromChatStream,
    response_shell,
    responses_answer,
    responses_request,
)
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


# -- the other way: answers of any shape from the upstream ------------------------------------

ANSWERS = settings(FUZZ, max_examples=150)

_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
_ANY = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


def _fields(names: list[str], values: Any) -> Any:
    """Objects with some of *names* (an API's field names), each any value of *values*
    or of any JSON: near the answer an API gives, wrong where it may be."""
    return st.dictionaries(st.sampled_from(names), st.one_of(_ANY, values), max_size=len(names))


_USAGE = _fields(
    ["prompt_tokens", "completion_tokens", "prompt_tokens_details", "input_tokens",
     "output_tokens", "cache_read_input_tokens", "completion_tokens_details"],
    st.integers(-3, 100),
)  # fmt: skip
_CALL = _fields(
    ["id", "type", "index", "function"],
    _fields(["name", "arguments"], st.text(max_size=5)),
)
_PART = _fields(
    ["type", "text", "thinking"], st.sampled_from(["text", "thinking", "image", "reasoning"])
)
_MESSAGE = _fields(
    ["role", "content", "tool_calls", "reasoning_content", "reasoning", "refusal"],
    st.one_of(st.lists(_CALL, max_size=2), st.lists(_PART, max_size=2)),
)
_CHOICE = _fields(
    ["index", "message", "delta", "finish_reason"],
    st.one_of(_MESSAGE, st.sampled_from(["stop", "length", "tool_calls"])),
)
CHAT_ANSWER = _fields(
    ["id", "model", "choices", "usage", "x_groq", "error"],
    st.one_of(st.lists(_CHOICE, max_size=2), _USAGE),
)
_BLOCK = _fields(
    ["type", "text", "id", "name", "input", "thinking", "signature"],
    st.sampled_from(["text", "tool_use", "thinking", "redacted_thinking", "server_tool_use"]),
)
MESSAGES_ANSWER = _fields(
    ["id", "type", "role", "model", "content", "stop_reason", "usage", "error"],
    st.one_of(st.lists(_BLOCK, max_size=3), _USAGE),
)
_DELTA = _fields(
    ["type", "text", "partial_json", "thinking", "stop_reason"],
    st.sampled_from(["text_delta", "input_json_delta", "thinking_delta", "signature_delta"]),
)
MESSAGES_EVENT = _fields(
    ["type", "index", "message", "content_block", "delta", "usage", "error"],
    st.one_of(
        st.sampled_from(
            ["message_start", "content_block_start", "content_block_delta",
             "content_block_stop", "message_delta", "message_stop", "ping", "error"]
        ),
        _BLOCK,
        _DELTA,
        _USAGE,
        MESSAGES_ANSWER,
    ),
)  # fmt: skip


def _events(documents: list[Any], named: bool) -> bytes:
    out = b""
    for document in documents:
        kind = document.get("type") if isinstance(document, dict) else None
        if named and isinstance(kind, str) and kind.isprintable():
            out += b"event: " + kind.encode() + b"\n"
        out += b"data: " + json.dumps(document).encode() + b"\n\n"
    return out


def _readable(stream: Any, data: bytes) -> bytes:
    """What *stream* makes of *data* and its end; it must never raise, and what it sends
    is whole events of JSON."""
    out = stream.feed(data) + stream.end()
    for event in SSEDecoder().feed(out):
        if event.data is not None and event.data != "[DONE]":
            json.loads(event.data)
    return out


@ANSWERS
@given(CHAT_ANSWER)
def test_a_chat_answer_of_any_shape_is_translated_or_refused(document: Any) -> None:
    shell = response_shell({"model": "m"}, "m")
    for translate in (lambda: messages_response(document, "m"),
                      lambda: responses_answer(document, shell)):  # fmt: skip
        try:
            sendable(translate())
        except (UnmappableAnswer, *SHAPE_ERRORS):
            pass  # the translate filter answers 502 for these


@ANSWERS
@given(MESSAGES_ANSWER)
def test_a_messages_answer_of_any_shape_is_translated_or_refused(document: Any) -> None:
    try:
        sendable(chat_response(document, "m"))
    except (UnmappableAnswer, *SHAPE_ERRORS):
        pass


@ANSWERS
@given(st.lists(CHAT_ANSWER, max_size=5), st.booleans())
def test_a_chat_stream_of_any_shape_never_breaks_the_translation(
    chunks: list[Any], done: bool
) -> None:
    data = _events(chunks, named=False) + (b"data: [DONE]\n\n" if done else b"")
    _readable(MessagesFromChatStream("m"), data)
    _readable(ResponsesFromChatStream(response_shell({"model": "m"}, "m")), data)


@ANSWERS
@given(st.lists(MESSAGES_EVENT, max_size=6))
def test_a_messages_stream_of_any_shape_never_breaks_the_translation(events: list[Any]) -> None:
    data = _events(events, named=True)
    _readable(ChatFromMessagesStream("m", True), data)
    _readable(
        Piped(
            ChatFromMessagesStream("m", True),
            ResponsesFromChatStream(response_shell({"model": "m"}, "m")),
        ),
        data,
    )


def test_a_field_of_another_type_ends_the_stream_with_an_error_event() -> None:
    stream = MessagesFromChatStream("m")
    out = stream.feed(b'data: {"choices": {"first": {"delta": {}}}}\n\n') + stream.end()
    assert stream.closed
    assert b"event: error" in out
    assert stream.failure is not None and "shape" in stream.failure
