"""A corpus of malformed requests over raw sockets: each gets its 4xx, none reaches the
upstream, and the gateway keeps serving."""

from __future__ import annotations

import contextlib
import socket

from .conftest import Gateway, Upstream, still_serving
from .malformed import corpus

CASES = corpus()


def exchange(gateway: Gateway, raw: bytes) -> bytes:
    """Send *raw* on a fresh connection; the response head and body the gateway sends."""
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.settimeout(10)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)  # may be refused before everything was sent
        reply = b""
        while True:
            head, sep, body = reply.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    return reply
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                return reply
            if not piece:
                return reply
            reply += piece


def test_the_corpus_is_large_and_varied() -> None:
    assert len(CASES) >= 100
    assert len({name for name, _, _ in CASES}) == len(CASES)


def test_every_malformed_request_gets_its_4xx_and_never_reaches_the_upstream(
    gateway: Gateway, upstream: Upstream
) -> None:
    before = upstream.stats()["requests"]
    wrong = []
    for name, raw, expected in CASES:
        reply = exchange(gateway, raw)
        status = reply.split(b" ", 2)[1] if reply.startswith(b"HTTP/1.") else reply[:40]
        if status != str(expected).encode() or b'"error"' not in reply:
            wrong.append(f"{name}: expected {expected}, got {reply[:120]!r}")
    assert not wrong, "\n".join(wrong)
    assert upstream.stats()["requests"] == before
    still_serving(gateway)
