"""Every upstream failure is recovered or reported, never silent, never a leak.

A fault-injection upstream (tests/fault_server.py) misbehaves on request. For each
fault: what the client sees, the access-log line, no connection left open on either
side, and the gateway still serving.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import (
    FaultServer,
    Gateway,
    Upstream,
    closed_port,
    read_until_closed,
    start_gateway,
    still_serving,
    wait_until,
)

SECRET = "sk-provider-secret-0123456789"


@pytest.fixture
def gateway(faults: FaultServer, upstream: Upstream, tmp_path: Path) -> Iterator[Gateway]:
    config = f"""
        clusters:
          faulty:
            url: {faults.url}
            timeouts: {{connect: 1s, first_byte: 1s, idle: 1s}}
            retry: {{max_attempts: 2, base_interval: 50ms, max_interval: 100ms, retry_after_max: 2s}}
            outlier_detection: {{consecutive_failures: 1000}}
            request_headers: {{set: {{authorization: "Bearer {SECRET}"}}}}
          refused:
            url: http://127.0.0.1:{closed_port()}
            retry: {{max_attempts: 2, base_interval: 10ms, max_interval: 10ms}}
            request_headers: {{set: {{authorization: "Bearer {SECRET}"}}}}
          healthy:
            url: {upstream.url}
        routes:
          - {{models: [faulty], cluster: faulty}}
          - {{models: [refused], cluster: refused}}
          - {{models: [failover], cluster: faulty, fallbacks: [healthy]}}
          - {{models: [refused-failover], cluster: refused, fallbacks: [healthy]}}
          - {{models: [test-model], cluster: healthy}}
    """
    gw = start_gateway(config, tmp_path)
    try:
        yield gw
    finally:
        gw.process.stop()


def call(
    gateway: Gateway, model: str, fault: str = "", *, stream: bool = False
) -> tuple[httpx.Response, str, bytes]:
    """One request with its own connection (closed after); its id and raw body."""
    request_id = uuid.uuid4().hex
    headers = {"x-request-id": request_id, "authorization": "Bearer sk-client"}
    if fault:
        headers["x-fault"] = fault
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with httpx.Client(timeout=15) as client:
        response = client.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)
    return response, request_id, response.content


def assert_clean(gateway: Gateway, faults: FaultServer, pooled: int = 0) -> None:
    """No client connection left open, no connection to the fault server but *pooled*
    idle keep-alive ones, and the gateway still serving."""
    wait_until(lambda: gateway.open_connections() == 0, timeout=5)
    wait_until(lambda: gateway.open_connections(remote_port=faults.port) == pooled, timeout=5)
    still_serving(gateway)
    assert SECRET not in gateway.process.output()


@pytest.mark.parametrize(
    ("fault", "status", "code", "outcome", "attempts", "pooled"),
    [
        ("silent", 504, "upstream_first_byte_timeout", "timeout", 1, 0),
        ("close", 502, "reset", "upstream_error", 2, 0),
        ("garbage", 502, "protocol-error", "upstream_error", 1, 0),
        # The last attempt's 500 is passed through; its connection stays pooled.
        ("status:500", 500, None, "complete", 2, 1),
    ],
)
def test_failures_before_the_response_are_json_errors(
    gateway: Gateway,
    faults: FaultServer,
    fault: str,
    status: int,
    code: str | None,
    outcome: str,
    attempts: int,
    pooled: int,
) -> None:
    response, request_id, raw = call(gateway, "faulty", fault)
    assert response.status_code == status
    error = json.loads(raw)["error"]
    if code is not None:
        assert error["code"] == code
        assert "faulty" in error["message"]
    assert SECRET not in raw.decode()
    record = gateway.access_record(request_id)
    assert (record["status"], record["outcome"], record["attempts"]) == (status, outcome, attempts)
    assert record["cluster"] == "faulty" and record["model"] == "faulty"
    assert_clean(gateway, faults, pooled)


def test_refused_connections_are_retried_then_502(gateway: Gateway, faults: FaultServer) -> None:
    response, request_id, raw = call(gateway, "refused")
    assert response.status_code == 502
    assert json.loads(raw)["error"]["code"] == "upstream_connect_refused"
    record = gateway.access_record(request_id)
    assert (record["outcome"], record["attempts"]) == ("upstream_error", 2)
    assert "refused" in record["error"]
    assert_clean(gateway, faults)


def test_refused_cluster_fails_over_to_the_fallback(gateway: Gateway, faults: FaultServer) -> None:
    response, request_id, _ = call(gateway, "refused-failover")
    assert response.status_code == 200
    record = gateway.access_record(request_id)
    assert (record["cluster"], record["attempts"], record["outcome"]) == ("healthy", 3, "complete")


def test_500s_fail_over_to_the_fallback_cluster(gateway: Gateway, faults: FaultServer) -> None:
    response, request_id, raw = call(gateway, "failover", "status:503")
    assert response.status_code == 200
    assert b"plain answer" in raw
    record = gateway.access_record(request_id)
    assert (record["cluster"], record["attempts"]) == ("healthy", 3)
    assert_clean(gateway, faults)


def test_429_with_retry_after_is_honoured_then_succeeds(
    gateway: Gateway, faults: FaultServer
) -> None:
    key = uuid.uuid4().hex[:8]
    response, request_id, raw = call(gateway, "faulty", f"fail:{key}:1:429")
    assert response.status_code == 200
    assert b"recovered" in raw
    assert gateway.access_record(request_id)["attempts"] == 2
    assert faults.stats()["requests"][key] == 2  # type: ignore[index]


def test_stall_mid_stream_gives_an_sse_error_frame_the_sdk_raises(
    gateway: Gateway, faults: FaultServer
) -> None:
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=15)
    request_id = uuid.uuid4().hex
    stream = sdk.chat.completions.create(
        model="faulty",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-fault": "stall", "x-request-id": request_id},
    )
    got = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["tok"]
    assert "timeouts.idle" in raised.value.message
    record = gateway.access_record(request_id)
    assert (record["status"], record["outcome"]) == (200, "timeout")
    stream.close()
    assert_clean(gateway, faults)


def test_reset_mid_stream_is_an_error_frame_then_an_incomplete_body(
    gateway: Gateway, faults: FaultServer
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        call(gateway, "faulty", "reset", stream=True)
    # The raw bytes, read without an HTTP client that would hide how the stream ended.
    body = json.dumps({"model": "faulty", "stream": True, "messages": []}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nx-fault: reset\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        raw = read_until_closed(sock)
    assert b"event: error\ndata: " in raw
    assert b"[DONE]" not in raw
    assert not raw.endswith(b"0\r\n\r\n")
    assert_clean(gateway, faults)


def test_status_passthrough_keeps_the_upstream_error_body(
    gateway: Gateway, faults: FaultServer
) -> None:
    response, _, raw = call(gateway, "faulty", "status:400")
    assert response.status_code == 400
    assert json.loads(raw)["error"]["message"] == "injected 400"
