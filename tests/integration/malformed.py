"""A corpus of malformed and hostile HTTP requests, each with the 4xx it must get."""

from __future__ import annotations

import json

CHAT = b"/v1/chat/completions"
GOOD_BODY = b'{"model": "test-model", "messages": []}'


def request(
    head_lines: list[bytes], body: bytes = b"", *, line: bytes = b"POST " + CHAT + b" HTTP/1.1"
) -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in head_lines) + b"\r\n" + body


def with_body(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return request(
        [b"Host: gw", b"Content-Type: " + content_type, b"Content-Length: %d" % len(body)], body
    )


def corpus() -> list[tuple[str, bytes, int]]:
    """(name, raw request, expected status) triples."""
    cases: list[tuple[str, bytes, int]] = []
    add = cases.append
    n = len(GOOD_BODY)

    # Request smuggling: framing that two parsers could read two ways.
    add(
        (
            "cl+te",
            request(
                [b"Host: gw", b"Content-Length: %d" % n, b"Transfer-Encoding: chunked"], GOOD_BODY
            ),
            400,
        )
    )
    add(
        (
            "te+cl",
            request(
                [b"Host: gw", b"Transfer-Encoding: chunked", b"Content-Length: 4"], b"0\r\n\r\n"
            ),
            400,
        )
    )
    for a, b in [(n, n + 1), (n, 0), (1, n), (n, n)]:
        add(
            (
                f"duplicate content-length {a},{b}",
                request(
                    [b"Host: gw", b"Content-Length: %d" % a, b"Content-Length: %d" % b], GOOD_BODY
                ),
                400,
            )
        )
    add(
        (
            "content-length list",
            request([b"Host: gw", b"Content-Length: %d, %d" % (n, n)], GOOD_BODY),
            400,
        )
    )
    for value in [b"-1", b"+5", b"0x10", b"1e3", b"abc", b"", b"5 5", b"99999999999999999999999"]:
        add(
            (
                f"content-length {value!r}",
                request([b"Host: gw", b"Content-Length: " + value], GOOD_BODY),
                400,
            )
        )
    for coding in [
        b"gzip",
        b"chunked, gzip",
        b"gzip, chunked",
        b"identity",
        b"chunked, chunked",
        b"xchunked",
        b"chunked;q=1",
        b"\x0bchunked",
        b"chunk",
    ]:
        add(
            (
                f"transfer-encoding {coding!r}",
                request([b"Host: gw", b"Transfer-Encoding: " + coding], b"0\r\n\r\n"),
                400,
            )
        )
    add(
        (
            "transfer-encoding twice",
            request(
                [b"Host: gw", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
                b"0\r\n\r\n",
            ),
            400,
        )
    )
    add(
        (
            "transfer-encoding on http/1.0",
            request(
                [b"Host: gw", b"Transfer-Encoding: chunked"],
                b"0\r\n\r\n",
                line=b"POST " + CHAT + b" HTTP/1.0",
            ),
            400,
        )
    )
    for size in [b"zz", b"-1", b"0x5", b"fffffffffffffffffffffff", b"5 5", b" 5", b"5\x00"]:
        add(
            (
                f"chunk size {size!r}",
                request(
                    [b"Host: gw", b"Transfer-Encoding: chunked"], size + b"\r\nhello\r\n0\r\n\r\n"
                ),
                400,
            )
        )
    add(
        (
            "chunk data longer than its size",
            request([b"Host: gw", b"Transfer-Encoding: chunked"], b"2\r\nhello\r\n0\r\n\r\n"),
            400,
        )
    )
    add(
        (
            "chunk without CRLF after data",
            request([b"Host: gw", b"Transfer-Encoding: chunked"], b"5\r\nhelloXX0\r\n\r\n"),
            400,
        )
    )

    # Line folding, bare LF, stray CR and NUL.
    for fold in [b" folded", b"\tfolded", b"  x"]:
        add((f"obs-fold {fold!r}", request([b"Host: gw", b"X-A: a", fold]), 400))
    add(("bare LF line endings", b"GET /v1/models HTTP/1.1\nHost: gw\n\n", 400))
    add(("bare LF in headers", b"GET /v1/models HTTP/1.1\r\nHost: gw\nX-A: b\r\n\r\n", 400))
    add(("bare CR in header value", request([b"Host: gw", b"X-A: a\rb"]), 400))
    add(("NUL in header value", request([b"Host: gw", b"X-A: a\x00b"]), 400))
    add(("NUL in header name", request([b"Host: gw", b"X-\x00A: b"]), 400))
    for name in [b"X A", b"(X)", b"X@A", b"\xc3\xa9", b"", b"X\x7fA", b"X/A", b"X[A]"]:
        add((f"header name {name!r}", request([b"Host: gw", name + b": v"]), 400))
    add(("space before colon", request([b"Host: gw", b"X-A : v"]), 400))
    add(("header without colon", request([b"Host: gw", b"X-A v"]), 400))

    # Host.
    add(("missing Host on HTTP/1.1", request([b"Content-Length: %d" % n], GOOD_BODY), 400))
    add(
        (
            "two Host headers",
            request([b"Host: a", b"Host: b", b"Content-Length: %d" % n], GOOD_BODY),
            400,
        )
    )

    # Request line.
    for index, line in enumerate(
        [
            b"POST /v1/chat/completions HTTP/9.9",
            b"POST /v1/chat/completions",
            b"POST /v1/chat completions HTTP/1.1",
            b"POST /v1/\x01 HTTP/1.1",
            b"PO ST / HTTP/1.1",
            b"P\x00ST / HTTP/1.1",
            b"POST / HTTP/1.1 extra",
            b"POST / http/1.1",
            b"POST / HTTP/1.1x",
            b"/ HTTP/1.1",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on a plain port
            b"PRI * HTTP/2.0",
        ]
    ):
        add((f"request line {index} {line[:40]!r}", request([b"Host: gw"], line=line), 400))
    add(
        (
            "request target too long",
            request([b"Host: gw"], line=b"GET /" + b"a" * 9000 + b" HTTP/1.1"),
            414,
        )
    )
    add(("too many headers", request([b"Host: gw", *(b"X-%d: v" % i for i in range(150))]), 431))
    add(
        (
            "headers too large",
            request([b"Host: gw", *(b"X-%d: " % i + b"v" * 4000 for i in range(20))]),
            431,
        )
    )

    # Bodies the route filter cannot route.
    not_objects = [b"[]", b'"text"', b"42", b"null", b"true", b'[{"model": "test-model"}]']
    for body in not_objects:
        add((f"json {body!r}", with_body(body), 400))
    for model in [42, 1.5, True, None, ["test-model"], {"name": "test-model"}]:
        if model is None:
            continue  # no model at all routes by path; covered below
        add((f"model {model!r}", with_body(json.dumps({"model": model}).encode()), 400))
    for broken in [
        b"{",
        b'{"model": "test-model",',
        b"{'model': 'x'}",
        b'{"model": "test-model"}}',
        b"{model: x}",
        b'{"a": NaN, "model": ',
        b"\xef\xbb\xbf{",
        b'{"model": "te\\qst"}',
    ]:
        add((f"invalid json {broken!r}", with_body(broken), 400))
    for invalid in [
        b'{"model": "\xff"}',
        b'{"model": "\xc3\x28"}',
        b'{"model": "\xed\xa0\x80"}',
        b'{"x": "\xf8\x88\x80\x80\x80"}',
    ]:
        add((f"invalid utf-8 {invalid!r}", with_body(invalid), 400))
    for depth in [10_000, 100_000]:
        add((f"nesting {depth}", with_body(b"[" * depth + b"]" * depth), 400))
        add((f"object nesting {depth}", with_body(b'{"a":' * depth + b"1" + b"}" * depth), 400))
    for model in ["gpt-9", "", "TEST-MODEL", "test", "../test-model", "\u0000"]:
        add((f"unknown model {model!r}", with_body(json.dumps({"model": model}).encode()), 404))
    add(("no model and no path route", with_body(b'{"messages": []}'), 404))
    add(
        (
            "declared body over the limit",
            request([b"Host: gw", b"Content-Length: %d" % (2 * 1024 * 1024)]),
            413,
        )
    )
    return cases
