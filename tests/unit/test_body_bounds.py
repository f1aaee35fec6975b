"""The request body parser takes exactly the JSON every party can read, and names where
anything else is: its bounds, on both sides of each."""

from __future__ import annotations

import pytest

from filterproxy.http.body import MAX_DEPTH, BadBody, parse_body, strict_loads


def nested(levels: int, kind: str = "list") -> bytes:
    """A body whose ``x`` holds containers *levels* deep in all (the body itself is one)."""
    inner = levels - 1
    if kind == "list":
        return b'{"x": ' + b"[" * inner + b"]" * inner + b"}"
    return b'{"x": ' + b'{"a": ' * (inner - 1) + b"{}" + b"}" * (inner - 1) + b"}"


@pytest.mark.parametrize("kind", ["list", "object"])
def test_nesting_up_to_the_limit_is_read_and_one_more_level_is_refused(kind: str) -> None:
    assert parse_body(nested(MAX_DEPTH, kind), None) is not None
    with pytest.raises(
        BadBody, match=r"^x(\[0\]|\.a){23}…(\[0\]|\.a){12}: the request body is nested"
    ):
        parse_body(nested(MAX_DEPTH + 1, kind), None)


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 18446744073709551615, "m": -9223372036854775808}',  # 64 bits, either sign
        b'{"t": 1.7976931348623157e308, "u": 5e-324, "v": 1e-999}',  # 64-bit floats
        b'{"s": "\\ud83d\\ude00 \\uD83D\\uDE00"}',  # a surrogate pair, either case
        b'{"s": "\\\\ud800"}',  # a backslash, then text that looks like an escape
        b'{"s": "\\u0000\\u202e"}',
    ],
)
def test_what_every_party_reads_is_read(body: bytes) -> None:
    assert parse_body(body, "application/json") is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"n": 18446744073709551616}', "n: the integer 18446744073709551616 (20 digits)"),
        (b'{"a": [{"m": -9223372036854775809}]}', "a[0].m: the integer -9223372036854775809"),
        (b'{"n": ' + b"7" * 5000 + b"}", "n: the integer 777777777777…777777 (5000 digits)"),
        (b'{"t": 1e309}', "t: the number 1e309 is too large for a 64-bit float"),
        (b'{"t": [NaN]}', "t[0]: NaN is not JSON (RFC 8259 has no NaN or Infinity)"),
        (b'{"t": -Infinity}', "t: -Infinity is not JSON"),
        (b'{"s": "a\\ud800b"}', "s: holds an unpaired UTF-16 surrogate (\\ud800)"),
        (b'{"s": "\\udc00\\ud800"}', "s: holds an unpaired UTF-16 surrogate (\\udc00)"),
        (b'{"k\\uDBFF": 1}', "k\\udbff: the key holds an unpaired UTF-16 surrogate"),
    ],
)
def test_what_not_every_party_reads_is_refused_naming_where(body: bytes, message: str) -> None:
    with pytest.raises(BadBody) as raised:
        parse_body(body, "application/json")
    assert str(raised.value).startswith(message)
    str(raised.value).encode("utf-8")  # the message itself can be sent


def test_a_long_body_is_checked_as_a_short_one() -> None:
    # Past a few KiB the parser writes the document rather than looking for signs.
    filler = b'"' + b"x" * 10000 + b'"'
    with pytest.raises(BadBody, match=r"^s\[1\]: holds an unpaired"):
        parse_body(b'{"s": [' + filler + b', "\\ud800"]}', None)
    with pytest.raises(BadBody, match="nested too deeply"):
        parse_body(nested(MAX_DEPTH + 1)[:-1] + b', "f": ' + filler + b"}", None)
    assert parse_body(b'{"s": [' + filler + b', "\\ud83d\\ude00"]}', None) is not None


def test_strict_loads_takes_any_json_value() -> None:
    assert strict_loads('"text"') == "text"
    assert strict_loads(b"[1, 2.5, null]") == [1, 2.5, None]
    with pytest.raises(BadBody, match="request body: holds an unpaired"):
        strict_loads('"\\ud800"')


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a": NaN, "b": {', "request body is not valid JSON"),
        (b"[NaN, " + b"[" * 100000 + b"]" * 100000 + b"]", "request body is nested too deeply"),
    ],
)
def test_a_refused_number_before_worse_is_still_a_bad_body(body: bytes, message: str) -> None:
    with pytest.raises(BadBody, match=message):
        parse_body(body, None)
