"""Header hygiene and header rules."""

from __future__ import annotations

import pytest

from filterproxy.config import HeaderRules
from filterproxy.http.headers import (
    Headers,
    UnsafeHeaderError,
    encode_header_block,
    forward_request_headers,
    forward_response_headers,
    validate_header_value,
)


def test_request_headers_lose_hop_by_hop_and_client_framing() -> None:
    client = Headers(
        [
            ("host", "gateway.local"),
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "999"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("content-type", "application/json"),
            ("x-forwarded-for", "10.0.0.1"),
        ]
    )
    out = forward_request_headers(
        client, host="api.example.com", client_ip="192.0.2.1", scheme="https", body_length=42
    )
    assert list(out) == [
        ("host", "api.example.com"),
        ("content-type", "application/json"),
        ("x-forwarded-for", "10.0.0.1, 192.0.2.1"),
        ("x-forwarded-proto", "https"),
        ("content-length", "42"),
    ]


def test_request_without_body_gets_no_content_length() -> None:
    out = forward_request_headers(
        Headers(), host="h", client_ip="", scheme="http", body_length=None
    )
    assert "content-length" not in out
    assert out.get_all("host") == ["h"]


def test_event_streams_get_anti_buffering_headers() -> None:
    out = forward_response_headers(
        Headers([("content-type", "text/event-stream; charset=utf-8"), ("connection", "close")])
    )
    assert out.get("x-accel-buffering") == "no"
    assert out.get("cache-control") == "no-cache"
    assert "connection" not in out


def test_json_responses_are_left_alone() -> None:
    out = forward_response_headers(
        Headers([("content-type", "application/json"), ("content-length", "10")])
    )
    assert list(out) == [("content-type", "application/json"), ("content-length", "10")]


def test_rules_remove_then_set_then_append() -> None:
    headers = Headers([("authorization", "Bearer client"), ("x-drop", "1"), ("x-multi", "a")])
    HeaderRules(
        set=(("authorization", "Bearer provider"),),
        append=(("x-multi", "b"),),
        remove=("x-drop",),
    ).apply_to(headers)
    assert headers.get_all("authorization") == ["Bearer provider"]
    assert headers.get_all("x-multi") == ["a", "b"]
    assert "x-drop" not in headers


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\x00b"])
def test_header_values_with_cr_lf_or_nul_are_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        validate_header_value(value)


def test_header_block_is_crlf_framed() -> None:
    block = encode_header_block(Headers([("host", "h"), ("x-a", "1")]))
    assert block == b"host: h\r\nx-a: 1\r\n\r\n"


@pytest.mark.parametrize(
    "fields",
    [[("x-a", "1\r\nx-injected: 2")], [("x-a", "1\n")], [("x-a\r", "1")], [("x-a", "a\x00")]],
)
def test_header_block_refuses_fields_that_would_break_framing(
    fields: list[tuple[str, str]],
) -> None:
    with pytest.raises(UnsafeHeaderError):
        encode_header_block(Headers(fields))
