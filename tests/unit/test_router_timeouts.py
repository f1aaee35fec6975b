"""The router's timeouts, retries and mid-stream errors, on a fake clock."""

from __future__ import annotations

import json

from filterproxy.runtime.deadlines import RESOLUTION

from .harness import SSE_HEAD, Harness, chunk, post

CONFIG = """
clusters:
  up:
    url: http://upstream.test:8000
    timeouts: {first_byte: 10s, idle: 5s}
    retry: {max_attempts: 2, base_interval: 1s, max_interval: 1s}
routes:
  - cluster: up
"""


def error_of(raw: bytes) -> dict[str, object]:
    body = raw.partition(b"\r\n\r\n")[2]
    return json.loads(body)["error"]  # type: ignore[no-any-return]


def test_no_response_head_within_first_byte_is_504_and_the_upstream_is_closed() -> None:
    h = Harness(CONFIG)
    h.client.dataReceived(post())
    h.reactor.advance(9.9)
    assert h.received() == b""
    h.reactor.advance(0.2)
    assert h.received().startswith(b"HTTP/1.1 504 ")
    error = error_of(h.received())
    assert error["code"] == "upstream_first_byte_timeout"
    assert "timeouts.first_byte" in str(error["message"]) and "10s" in str(error["message"])
    assert h.upstream_transport.disconnected
    assert len(h.upstreams) == 1  # a timeout is not retried


def test_silence_mid_stream_sends_an_sse_error_frame_and_no_clean_end() -> None:
    h = Harness(CONFIG)
    h.client.dataReceived(post())
    h.upstream.dataReceived(SSE_HEAD + chunk(b'data: {"n": 1}\n\n'))
    for _ in range(4):  # chunks 4 s apart keep the idle timer from firing
        h.reactor.advance(4.0)
        h.upstream.dataReceived(chunk(b'data: {"n": 2}\n\n'))
    assert b"event: error" not in h.received()
    h.reactor.advance(4.9)  # never early
    assert b"event: error" not in h.received()
    # At most two checks late: one to notice the deadline, which counts from the latest
    # moment the last chunk may have come (Deadlines.now lags by up to one check).
    h.reactor.advance(0.1 + 2 * RESOLUTION)
    received = h.received()
    frame = received[received.index(b"event: error") :]
    assert frame.startswith(b"event: error\ndata: ")
    data = json.loads(frame.split(b"data: ", 1)[1].split(b"\n\n", 1)[0])
    assert data["error"]["code"] == "upstream_idle_timeout"
    assert "timeouts.idle" in data["error"]["message"]
    assert not received.endswith(b"0\r\n\r\n")  # never the final chunk of a clean end
    assert h.client_transport.disconnecting
    assert h.upstream_transport.disconnected


def test_an_unfinished_upstream_event_is_ended_before_the_error_frame() -> None:
    h = Harness(CONFIG)
    h.client.dataReceived(post())
    h.upstream.dataReceived(SSE_HEAD + chunk(b'data: {"partial'))
    h.upstream.connectionLost(None)  # type: ignore[arg-type]
    assert b'data: {"partial\r\n' in h.received()
    assert b"\n\nevent: error\ndata: " in h.received()


def test_total_timeout_cuts_a_long_stream() -> None:
    h = Harness(CONFIG.replace("idle: 5s}", "idle: 5s, total: 12s}"))
    h.client.dataReceived(post())
    h.upstream.dataReceived(SSE_HEAD)
    for _ in range(5):
        h.reactor.advance(3.0)
        h.upstream.dataReceived(chunk(b"data: x\n\n"))
    assert b"upstream_total_timeout" in h.received()


def test_429_with_retry_after_is_retried_after_that_delay_on_a_new_connection() -> None:
    h = Harness(CONFIG)
    h.client.dataReceived(post())
    h.upstream.dataReceived(
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 2\r\n\r\n{}"
    )
    assert len(h.upstreams) == 1 and h.received() == b""
    h.reactor.advance(2.9)
    assert len(h.upstreams) == 1
    h.reactor.advance(0.2)
    assert len(h.upstreams) == 2
    h.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert h.received().startswith(b"HTTP/1.1 200 OK")
    assert h.received().endswith(b"ok")


def test_the_last_attempts_error_response_is_passed_through_as_it_is() -> None:
    h = Harness(CONFIG)
    h.client.dataReceived(post())
    h.upstream.dataReceived(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
    h.reactor.advance(1.0)
    h.upstream.dataReceived(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nbusy2")
    assert len(h.upstreams) == 2
    assert h.received().startswith(b"HTTP/1.1 503 ")
    assert h.received().endswith(b"busy2")


def test_heartbeat_comments_fill_silence_at_event_boundaries() -> None:
    h = Harness(CONFIG.replace("  - cluster: up", "  - {cluster: up, heartbeat: 2s}"))
    h.client.dataReceived(post())
    h.upstream.dataReceived(SSE_HEAD + chunk(b"data: a\n\n"))
    h.reactor.advance(2.1)
    assert h.received().endswith(chunk(b": keep-alive\n"))
    h.upstream.dataReceived(chunk(b"data: b\n\n"))
    h.reactor.advance(1.5)
    assert h.received().endswith(chunk(b"data: b\n\n"))  # data resets the heartbeat


def test_no_heartbeat_inside_an_event_the_upstream_has_not_finished() -> None:
    h = Harness(CONFIG.replace("  - cluster: up", "  - {cluster: up, heartbeat: 2s}"))
    h.client.dataReceived(post())
    h.upstream.dataReceived(SSE_HEAD + chunk(b"data: a"))
    h.reactor.advance(4.5)
    assert b"keep-alive" not in h.received()
    h.upstream.dataReceived(chunk(b"\n\n"))
    h.reactor.advance(2.1)
    assert h.received().endswith(chunk(b": keep-alive\n"))


def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    h = Harness(CONFIG.replace("max_attempts: 2", "max_attempts: 1"))
    h.client.dataReceived(post())
    stale = h.upstream
    stale.requests_served = 1  # it served a request before and sat idle in the pool
    stale.connectionLost(None)  # type: ignore[arg-type]
    assert len(h.upstreams) == 2  # sent again at once, although max_attempts is 1
    h.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert h.received().startswith(b"HTTP/1.1 200 OK")


def test_repeated_failures_eject_an_endpoint_and_traffic_moves_on() -> None:
    config = """
clusters:
  up:
    endpoints: ['http://a.test:1', 'http://b.test:1']
    retry: {max_attempts: 1}
    outlier_detection: {consecutive_failures: 2, base_ejection_time: 30s}
routes: [{cluster: up}]
"""
    h = Harness(config)
    endpoints = h.gateway.clusters["up"].endpoints
    for _ in range(4):  # round robin: a, b, a, b; a always fails
        h.client_transport.clear()
        h.client.dataReceived(post(b"{}"))
        if h.upstream.pool is endpoints[0].pool:
            h.upstream.dataReceived(b"HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n")
        else:
            h.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert not endpoints[0].health.available(h.reactor.seconds())
    pools = []
    for _ in range(3):
        h.client.dataReceived(post(b"{}"))
        pools.append(h.upstream.pool)
        h.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert pools == [endpoints[1].pool] * 3
    h.reactor.advance(31)  # after the ejection time, a is back in the rotation
    after = []
    for _ in range(2):
        h.client.dataReceived(post(b"{}"))
        after.append(h.upstream.pool)
        h.upstream.dataReceived(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert endpoints[0].pool in after


def test_a_head_response_ends_at_its_headers_despite_its_content_length() -> None:
    h = Harness(CONFIG)
    h.client.dataReceived(b"HEAD /v1/files HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert h.upstream_transport.value().startswith(b"HEAD /v1/files HTTP/1.1\r\n")
    h.upstream.dataReceived(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1234\r\n\r\n"
    )
    received = h.received()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 1234\r\n" in received
    assert received.endswith(b"\r\n\r\n")  # the head only, and the exchange is over
    assert h.client.active is None
    assert h.upstream.state.value == "idle"  # the connection went back to the pool


def test_a_client_that_leaves_during_the_retry_backoff_gets_no_further_attempt() -> None:
    h = Harness(CONFIG)
    h.client.dataReceived(post())
    h.upstream.dataReceived(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
    assert len(h.upstreams) == 1  # the retry waits for its backoff
    h.client.connectionLost(None)  # type: ignore[arg-type]
    h.reactor.advance(5)
    assert len(h.upstreams) == 1
