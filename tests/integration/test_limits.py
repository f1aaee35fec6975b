"""Listener limits: slow clients are cut off, a full gateway says 503 with Retry-After."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import (
    Gateway,
    Upstream,
    curl_post,
    gateway_config,
    read_until_closed,
    start_gateway,
    still_serving,
    wait_until,
)


@pytest.fixture
def limited(upstream: Upstream, tmp_path: Path) -> Iterator[Gateway]:
    limits = (
        "limits: {request_header_timeout: 1s, request_body_timeout: 1s, "
        "keepalive_timeout: 1s, max_concurrent_streams: 2}"
    )
    gw = start_gateway(gateway_config(upstream.url, extra=limits), tmp_path)
    try:
        yield gw
    finally:
        gw.process.stop()


def test_slowloris_headers_get_408_and_the_connection_closes(limited: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
        started = time.monotonic()
        with pytest.raises(OSError):  # the gateway closes while we are still dripping
            for i in range(100):
                sock.sendall(b"X-Drip-%d: 1\r\n" % i)
                time.sleep(0.1)
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408")
    assert b"limits.request_header_timeout" in reply
    assert time.monotonic() - started < 9
    still_serving(limited)


def test_a_body_that_never_finishes_gets_408(limited: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.sendall(
            b'POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n{"model"'
        )
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408")
    assert b"limits.request_body_timeout" in reply


def test_idle_keep_alive_connections_are_closed(limited: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as sock:
        sock.settimeout(10)
        body = b'{"model": "test-model", "messages": []}'
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        assert b"200 OK" in sock.recv(65536)
        started = time.monotonic()
        assert read_until_closed(sock).find(b"HTTP/") == -1  # closed without another response
        assert time.monotonic() - started < 9


def test_over_the_concurrent_stream_limit_is_503_with_retry_after(
    limited: Gateway, upstream: Upstream
) -> None:
    holds = [uuid.uuid4().hex for _ in range(2)]
    streams = []
    for hold in holds:
        body = {
            "model": "test-model",
            "stream": True,
            "messages": [],
            "test": {"chunks": 2, "hold": hold},
        }
        client = httpx.Client(timeout=15)
        response = client.send(
            client.build_request("POST", f"{limited.url}/v1/chat/completions", json=body),
            stream=True,
        )
        assert response.status_code == 200
        streams.append((client, response))
    refused = httpx.post(
        f"{limited.url}/v1/chat/completions", json={"model": "test-model"}, timeout=15
    )
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "max_concurrent_streams" in refused.json()["error"]["message"]
    for hold in holds:
        upstream.release(hold)
    for client, response in streams:
        assert response.read().endswith(b"data: [DONE]\n\n")
        client.close()
    wait_until(lambda: limited.open_connections() == 0, timeout=5)
    still_serving(limited)


def test_curl_asking_for_an_h2c_upgrade_gets_http_1_1(limited: Gateway) -> None:
    body = json.dumps({"model": "test-model", "messages": []})
    result = curl_post(f"{limited.url}/v1/chat/completions", body, "-i", "--http2")
    assert result.stdout.startswith(b"HTTP/1.1 200")
    assert b"plain answer" in result.stdout
