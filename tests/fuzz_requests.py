"""Hypothesis strategies for the fuzz tests of the request parsers: requests of each
client API (Chat Completions, Messages, Responses, count_tokens) that are nearly right —
the right field names, each with a right value or a wrong one (another type, a huge,
negative or fractional number, odd unicode, nesting) — so that they reach deep into the
translations rather than stopping at the first check; and the raw bytes a JSON encoder
never writes (``NaN``, ``Infinity``, unpaired surrogate escapes, 5,000-digit integers,
nesting past any limit, truncated or non-UTF-8 bodies)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

#: Text a client may send: emoji, combining marks, right-to-left, zero-width, NUL and
#: control characters, escapes, long runs (never a surrogate: a JSON encoder cannot write
#: one unpaired; the raw mutations do).
ODD_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "😀",
            "e\u0301",
            "\u202eevil",
            "\u200b",
            "\\ud800",
            "a" * 300,
            "data:image/png;base64,AAAA",
            "data:text/plain,hi",
            "https://example.com/x.png",
            "{}",
            "null",
            '{"a": 1}',
            "[1, 2]",
            "NaN",
        ]
    ),
)
#: Numbers at and past the edges: 0, negatives, fractions, 64-bit bounds.
ODD_INT = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63), 10**15]),
)
ODD_FLOAT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, -0.0, 0.5, 1.5, 2.0, 1e308, -1e308, 5e-324]),
)
SCALAR = st.one_of(st.none(), st.booleans(), ODD_INT, ODD_FLOAT, ODD_TEXT)
#: Any JSON value, a few levels deep.
ANY = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(ODD_TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)


#: True about one time in seven (`st.one_of` gives its branches equal chances).
_ONE_IN_SEVEN = st.sampled_from([False] * 6 + [True])


def maybe(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly *right* (six times in seven), sometimes any JSON value in its place: one
    wrong value in a request reaches further than many."""
    return _ONE_IN_SEVEN.flatmap(lambda wrong: ANY if wrong else right)


def obj(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    """An object with *required* fields and some of the *optional* ones, each field's
    value right or wrong (`maybe`); sometimes an odd extra key."""
    return st.fixed_dictionaries(
        {k: maybe(v) for k, v in required.items()},
        optional={**{k: maybe(v) for k, v in optional.items()}, "x-extra": ANY},
    )


def one_of_kinds(*kinds: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of the *kinds* of an item, or (about one time in seven) any value."""
    return _ONE_IN_SEVEN.flatmap(lambda wrong: ANY if wrong else st.one_of(*kinds))


def listed(item: st.SearchStrategy[Any], size: int = 4) -> st.SearchStrategy[Any]:
    return st.lists(item, max_size=size)


NAME = st.one_of(st.sampled_from(["get_weather", "search", "x", "a.b", "ns__tool"]), ODD_TEXT)
MODEL = st.sampled_from(["chat-fuzz", "claude-fuzz"])
SCHEMA = st.one_of(
    st.just({"type": "object", "properties": {"city": {"type": "string"}}}),
    st.just({}),
    ANY,
)
CACHE = st.one_of(st.just({"type": "ephemeral"}), ANY)
ARGUMENTS = st.one_of(
    st.just('{"city": "Paris"}'),
    st.sampled_from(
        ["", "{", "[]", "42", '{"a": NaN}', '{"a": 1e999}', '{"a": "\\ud800"}', "1" * 5000]
    ),
    ANY.map(json.dumps),
    ANY,
)

# -- Chat Completions ----------------------------------------------------------------------

CHAT_PART = one_of_kinds(
    obj({"type": st.just("text"), "text": ODD_TEXT}, {"cache_control": CACHE}),
    obj(
        {"type": st.just("image_url")},
        {"image_url": st.one_of(obj({"url": ODD_TEXT}, {"detail": ODD_TEXT}), ODD_TEXT)},
    ),
    obj(
        {"type": st.just("file")}, {"file": obj({}, {"file_data": ODD_TEXT, "filename": ODD_TEXT})}
    ),
    obj({"type": st.sampled_from(["input_audio", "refusal", "thinking"])}, {"text": ODD_TEXT}),
)
CHAT_CONTENT = st.one_of(ODD_TEXT, listed(CHAT_PART), st.none())
TOOL_CALL = obj(
    {"function": obj({"name": NAME}, {"arguments": ARGUMENTS})},
    {"id": ODD_TEXT, "type": st.just("function")},
)
CHAT_MESSAGE = one_of_kinds(
    obj(
        {
            "role": st.sampled_from(
                ["system", "developer", "user", "assistant", "tool", "function", "bot"]
            )
        },
        {
            "content": CHAT_CONTENT,
            "tool_calls": listed(TOOL_CALL, 3),
            "tool_call_id": ODD_TEXT,
            "name": NAME,
            "reasoning_content": ODD_TEXT,
            "cache_control": CACHE,
        },
    )
)
CHAT_TOOL = one_of_kinds(
    obj(
        {"type": st.just("function"), "function": obj({"name": NAME}, {"parameters": SCHEMA})},
        {"cache_control": CACHE},
    )
)
CHAT = obj(
    {"model": MODEL, "messages": listed(CHAT_MESSAGE, 5)},
    {
        "max_tokens": ODD_INT,
        "max_completion_tokens": ODD_INT,
        "temperature": ODD_FLOAT,
        "top_p": ODD_FLOAT,
        "n": ODD_INT,
        "stop": st.one_of(ODD_TEXT, listed(ODD_TEXT)),
        "stream": st.booleans(),
        "stream_options": obj({}, {"include_usage": st.booleans()}),
        "tools": listed(CHAT_TOOL, 3),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required"]),
            obj({"type": st.just("function")}, {"function": obj({}, {"name": NAME})}),
        ),
        "parallel_tool_calls": st.booleans(),
        "user": ODD_TEXT,
        "reasoning_effort": st.sampled_from(["minimal", "low", "medium", "high", "xhigh"]),
        "response_format": obj(
            {"type": st.sampled_from(["json_schema", "json_object", "text"])},
            {"json_schema": obj({}, {"schema": SCHEMA, "name": NAME})},
        ),
        "logprobs": st.booleans(),
        "modalities": listed(st.sampled_from(["text", "audio"])),
        "seed": ODD_INT,
    },
)

# -- Messages --------------------------------------------------------------------------------

SOURCE = obj(
    {"type": st.sampled_from(["base64", "url", "text", "file"])},
    {"media_type": ODD_TEXT, "data": ODD_TEXT, "url": ODD_TEXT},
)
BLOCK = one_of_kinds(
    obj({"type": st.just("text"), "text": ODD_TEXT}, {"cache_control": CACHE}),
    obj({"type": st.sampled_from(["image", "document"]), "source": SOURCE}, {"title": ODD_TEXT}),
    obj({"type": st.just("tool_use"), "id": ODD_TEXT, "name": NAME}, {"input": ANY}),
    obj(
        {"type": st.just("tool_result"), "tool_use_id": ODD_TEXT},
        {
            "content": st.one_of(ODD_TEXT, listed(st.deferred(lambda: BLOCK), 2)),
            "is_error": st.booleans(),
            "cache_control": CACHE,
        },
    ),
    obj(
        {"type": st.sampled_from(["thinking", "redacted_thinking", "server_tool_use"])},
        {"thinking": ODD_TEXT, "signature": ODD_TEXT},
    ),
)
TURN = one_of_kinds(
    obj(
        {"role": st.sampled_from(["user", "assistant", "system"])},
        {"content": st.one_of(ODD_TEXT, listed(BLOCK))},
    )
)
MESSAGES = obj(
    {"model": MODEL, "max_tokens": ODD_INT, "messages": listed(TURN, 5)},
    {
        "system": st.one_of(ODD_TEXT, listed(BLOCK, 2)),
        "temperature": ODD_FLOAT,
        "top_p": ODD_FLOAT,
        "top_k": ODD_INT,
        "stop_sequences": listed(ODD_TEXT),
        "stream": st.booleans(),
        "tools": listed(
            one_of_kinds(
                obj(
                    {"name": NAME, "input_schema": SCHEMA},
                    {"description": ODD_TEXT, "type": ODD_TEXT, "cache_control": CACHE},
                )
            ),
            3,
        ),
        "tool_choice": obj(
            {"type": st.sampled_from(["auto", "any", "tool", "none"])},
            {"name": NAME, "disable_parallel_tool_use": st.booleans()},
        ),
        "metadata": obj({}, {"user_id": ODD_TEXT}),
        "thinking": obj(
            {"type": st.sampled_from(["enabled", "adaptive", "disabled"])},
            {"budget_tokens": ODD_INT},
        ),
        "output_config": obj(
            {},
            {
                "effort": ODD_TEXT,
                "format": obj({"type": st.just("json_schema")}, {"schema": SCHEMA}),
            },
        ),
        "mcp_servers": ANY,
    },
)

# -- Responses -------------------------------------------------------------------------------

#: Item ids in the shapes the gateway gives its stored items (an output item's, an input
#: item's with its index), with odd indexes and digits.
ITEM_ID = st.one_of(
    ODD_TEXT,
    st.sampled_from(
        [
            "msg_" + "0" * 24 + "1" * 16,
            "fc_" + "a" * 24 + "b" * 16,
            "item_" + "0" * 24 + "_0",
            "item_" + "0" * 24 + "_" + "9" * 5000,
            "item_" + "0" * 24 + "_\u0663",
            "item_" + "0" * 24 + "_-1",
        ]
    ),
)
RESPONSE_PART = one_of_kinds(
    obj({"type": st.sampled_from(["input_text", "output_text", "refusal"]), "text": ODD_TEXT}, {}),
    obj({"type": st.just("input_image")}, {"image_url": ODD_TEXT, "detail": ODD_TEXT}),
    obj({"type": st.just("input_file")}, {"file_data": ODD_TEXT, "filename": ODD_TEXT}),
)
ITEM = one_of_kinds(
    obj(
        {"type": st.just("message"), "role": st.sampled_from(["user", "assistant", "system"])},
        {"content": st.one_of(ODD_TEXT, listed(RESPONSE_PART))},
    ),
    obj(
        {"type": st.just("function_call"), "call_id": ODD_TEXT, "name": NAME},
        {"arguments": ARGUMENTS, "namespace": ODD_TEXT},
    ),
    obj(
        {"type": st.sampled_from(["function_call_output", "custom_tool_call_output"])},
        {"call_id": ODD_TEXT, "output": st.one_of(ODD_TEXT, listed(RESPONSE_PART))},
    ),
    obj({"type": st.just("custom_tool_call"), "name": NAME}, {"input": ODD_TEXT}),
    obj(
        {"type": st.just("reasoning")},
        {"summary": listed(obj({"text": ODD_TEXT}, {})), "content": ANY},
    ),
    obj({"type": st.sampled_from(["item_reference", "web_search_call"])}, {"id": ITEM_ID}),
    obj({"role": st.just("user")}, {"content": ODD_TEXT}),
)
RESPONSE_TOOL = one_of_kinds(
    obj(
        {"type": st.sampled_from(["function", "custom"]), "name": NAME},
        {"parameters": SCHEMA, "strict": st.booleans(), "description": ODD_TEXT, "format": ANY},
    ),
    obj(
        {"type": st.just("namespace"), "name": NAME},
        {"tools": listed(obj({"type": st.just("function"), "name": NAME}, {}), 2)},
    ),
    obj({"type": st.sampled_from(["web_search", "file_search", "mcp"])}, {}),
)
RESPONSES = obj(
    {"model": MODEL, "input": st.one_of(ODD_TEXT, listed(ITEM, 5))},
    {
        "instructions": st.one_of(ODD_TEXT, listed(ITEM, 2)),
        "max_output_tokens": ODD_INT,
        "temperature": ODD_FLOAT,
        "top_p": ODD_FLOAT,
        "tools": listed(RESPONSE_TOOL, 3),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required"]),
            obj({"type": st.sampled_from(["function", "custom", "allowed_tools"])}, {"name": NAME}),
        ),
        "parallel_tool_calls": st.booleans(),
        "text": obj(
            {},
            {
                "format": obj(
                    {"type": st.sampled_from(["json_schema", "json_object", "text"])},
                    {"name": NAME, "schema": SCHEMA, "strict": st.booleans()},
                )
            },
        ),
        "reasoning": obj({}, {"effort": ODD_TEXT, "summary": ODD_TEXT}),
        "metadata": st.dictionaries(ODD_TEXT, ODD_TEXT, max_size=3),
        "store": st.booleans(),
        "stream": st.booleans(),
        "user": ODD_TEXT,
        "safety_identifier": ODD_TEXT,
        "truncation": ODD_TEXT,
        "include": listed(ODD_TEXT),
        "previous_response_id": ODD_TEXT,
        "top_logprobs": ODD_INT,
    },
)

# -- raw bodies ----------------------------------------------------------------------------


def _deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


#: Replacements of a JSON value's text that no JSON encoder writes.
RAW_VALUES = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1e999",
    b"1" * 5000,
    b"-" + b"9" * 30,
    b"18446744073709551616",
    b'"\\ud800"',
    b'"\\udfff tail"',
    b'"\\ud83d\\ude00"',
    b'"\\u0000"',
    _deep(129),
    _deep(300),
    b"[" * 5000 + b"]" * 5000,
]
#: Whole bodies that are not a request at all.
RAW_BODIES = [
    b"",
    b" ",
    b"null",
    b"[]",
    b"42",
    b'"text"',
    b"{",
    b'{"model": "chat-fuzz",',
    b"\xff\xfe{}",
    b'{"model": "chat-fuzz", "messages": [], "x": "\xc3"}',
    b"\x00",
    b'{"model": "chat-fuzz"}{"model": "chat-fuzz"}',
]


@st.composite
def raw_body(draw: st.DrawFn, document: st.SearchStrategy[Any]) -> bytes:
    """The bytes of a near-valid *document*, as an encoder writes them or with one value
    replaced by something no encoder writes (sometimes cut off after it), or a body
    that is not a request at all."""
    how = draw(st.sampled_from(["json", "json", "mutated", "mutated", "whole"]))
    if how == "whole":
        return draw(st.sampled_from(RAW_BODIES))
    value = draw(document)
    if how == "json":
        return json.dumps(value, ensure_ascii=draw(st.booleans())).encode()
    # Put a marker where a value goes, then the raw text in its place.
    marker = "\u2063MARK\u2063"
    _place(draw, value, marker)
    text = json.dumps(value, ensure_ascii=False).encode()
    raw = text.replace(
        json.dumps(marker, ensure_ascii=False).encode(), draw(st.sampled_from(RAW_VALUES))
    )
    if draw(st.booleans()) and len(raw) > 1:  # and what follows it cut off
        raw = raw[: draw(st.integers(1, len(raw) - 1))]
    return raw


def _place(draw: st.DrawFn, value: Any, marker: str) -> None:
    """Set one value inside the container *value* (chosen by *draw*) to *marker*."""
    node = value
    while True:
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node, key=str)))
            child = node[key]
            if isinstance(child, dict | list) and child and draw(st.booleans()):
                node = child
                continue
            node[key] = marker
            return
        if isinstance(node, list) and node:
            i = draw(st.integers(0, len(node) - 1))
            child = node[i]
            if isinstance(child, dict | list) and child and draw(st.booleans()):
                node = child
                continue
            node[i] = marker
            return
        return
