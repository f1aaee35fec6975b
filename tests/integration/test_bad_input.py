"""Bad requests and a dead upstream get a clear JSON error, and the gateway keeps serving."""

from __future__ import annotations

import socket
import threading

import httpx
import openai
import pytest

from .conftest import Gateway, Upstream, post_chat, raw_exchange, read_until_closed, still_serving

LIMIT = 1048576  # max_request_bytes in the test gateway's config


def error_of(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document["error"]) == {"message", "type", "code"}
    return document["error"]  # type: ignore[no-any-return]


def test_declared_content_length_over_the_limit_is_refused_before_the_body_is_read(
    gateway: Gateway,
) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMIT + 1)
        )
        sock.settimeout(10)
        reply = b""
        while not reply.endswith(b"}}") and (piece := sock.recv(65536)):
            reply += piece
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in head.lower()
    assert b"request_too_large" in body and b"max_request_bytes" in body
    still_serving(gateway)


def test_chunked_body_that_grows_past_the_limit_is_cut_off(gateway: Gateway) -> None:
    def body() -> object:
        for _ in range(LIMIT // 65536 + 2):
            yield b"x" * 65536

    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body(), timeout=15)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    still_serving(gateway)


def test_invalid_json_is_400_naming_the_problem(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=b'{"model": "test-model",',
        headers={"content-type": "application/json"},
        timeout=15,
    )
    assert response.status_code == 400
    assert "not valid JSON" in str(error_of(response)["message"])
    still_serving(gateway)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b'{"model": 42}', "'model' must be a string"),
        (b'{"model": "\xff"}', "not valid UTF-8"),
    ],
)
def test_json_that_is_not_a_request_is_400(gateway: Gateway, body: bytes, message: str) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=15,
    )
    assert response.status_code == 400
    assert message in str(error_of(response)["message"])


def test_unknown_model_is_404_in_the_openai_shape_the_sdk_understands(gateway: Gateway) -> None:
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=15)
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.chat.completions.create(model="no-such-model", messages=[])
    assert "no-such-model" in str(raised.value)
    assert raised.value.code == "model_not_found"
    still_serving(gateway)


def test_upstream_that_refuses_connections_gives_502(gateway: Gateway) -> None:
    response = post_chat(gateway.url, "down-model")
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "upstream_connect_refused"
    assert "down" in str(error["message"])
    still_serving(gateway)


def test_malformed_http_is_400_and_the_connection_closes(gateway: Gateway) -> None:
    reply = raw_exchange(
        gateway.port, b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"malformed HTTP request" in reply
    still_serving(gateway)


def test_too_many_headers_is_431(gateway: Gateway) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(150))
    reply = raw_exchange(
        gateway.port, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 431")
    assert b"too many request headers" in reply
    still_serving(gateway)


def test_pipelined_requests_are_answered_in_order(gateway: Gateway) -> None:
    def request(tag: str) -> bytes:
        body = b'{"model": "test-model", "messages": [], "tag": "%s"}' % tag.encode()
        return (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    last = request("c").replace(b"Host: gw\r\n", b"Host: gw\r\nConnection: close\r\n")
    reply = raw_exchange(gateway.port, request("a") + request("b") + last)
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert reply.count(b"plain answer") == 3


def test_a_client_still_uploading_past_the_limit_reads_the_413_not_a_reset(
    gateway: Gateway,
) -> None:
    body = b"x" * (48 * LIMIT)
    errors: list[OSError] = []
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )

        def upload() -> None:
            try:
                sock.sendall(body)
            except OSError as e:
                errors.append(e)

        uploader = threading.Thread(target=upload)
        uploader.start()
        reply = read_until_closed(sock)
        uploader.join(10)
    assert reply.startswith(b"HTTP/1.1 413")
    # The gateway read and dropped the rest of the upload before closing, so the
    # client's send was not cut off by a reset.
    assert errors == []
    still_serving(gateway)


@pytest.mark.parametrize(
    "request_line",
    [b"POST /v1/chat/completions RTSP/1.0", b"SOURCE /v1/chat/completions ICE/1.0"],
)
def test_a_request_in_another_protocol_is_505_and_never_forwarded(
    gateway: Gateway, upstream: Upstream, request_line: bytes
) -> None:
    before = upstream.stats()["requests"]
    body = b'{"model": "test-model", "messages": []}'
    reply = raw_exchange(
        gateway.port,
        request_line + b"\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert reply.startswith(b"HTTP/1.1 505")
    assert b"not HTTP" in reply
    assert upstream.stats()["requests"] == before
    still_serving(gateway)
