"""A slow client must hold back the upstream, and a client that hangs up must stop it."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

from .conftest import Gateway, Upstream, still_serving, wait_until

OFFERED = 200 * 1024 * 1024


def _kernel_buffering() -> int:
    """What the kernel may hold between a paused reader and its writer on loopback: the
    writer's send buffer and the reader's receive buffer, each grown by autotuning up
    to the sysctl maximum (the receive side reaches 32 MB on some machines)."""
    try:
        rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
        wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 16 * 1024 * 1024
    return rmem + wmem


def _send_stream_request(gateway: Gateway, test: dict[str, object]) -> socket.socket:
    body = json.dumps(
        {"model": "test-model", "stream": True, "messages": [], "test": test}
    ).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


def test_client_that_does_not_read_blocks_the_upstream_and_memory_stays_flat(
    gateway: Gateway, upstream: Upstream
) -> None:
    rss_before = gateway.process.rss_bytes()
    bytes_before = int(upstream.stats()["bulk_bytes"])  # type: ignore[arg-type]
    sock = _send_stream_request(gateway, {"bulk": OFFERED})
    try:
        # The upstream writes until the proxy stops reading it, then stays paused.
        wait_until(lambda: bool(upstream.stats()["bulk_paused"]), timeout=20)
        time.sleep(1.0)
        offered = int(upstream.stats()["bulk_bytes"]) - bytes_before  # type: ignore[arg-type]
        growth = gateway.process.rss_bytes() - rss_before
        print(
            f"\nslow client: upstream wrote {offered / 1e6:.1f} MB of {OFFERED / 1e6:.0f} MB "
            f"before it was paused; gateway RSS grew {growth / 1e6:.2f} MB"
        )
        assert upstream.stats()["bulk_paused"] is True
        # Held back: what the upstream wrote is at most what the kernel buffers between it
        # and the paused gateway, plus the client side (64 KiB) and the gateway's own
        # buffer, far from the 200 MB offered.
        limit = _kernel_buffering() + 8 * 1024 * 1024
        assert offered < min(limit, OFFERED // 2), "the upstream was not held back"
        assert growth < 10 * 1024 * 1024

        # Reading resumes the flow: drain some and watch the upstream move again.
        sock.settimeout(10)
        drained = 0
        while drained < 8 * 1024 * 1024:
            piece = sock.recv(1024 * 1024)
            assert piece
            drained += len(piece)
        wait_until(lambda: int(upstream.stats()["bulk_bytes"]) - bytes_before > offered, timeout=10)  # type: ignore[arg-type]
    finally:
        sock.close()
    wait_until(lambda: upstream.stats()["open_streams"] == 0, timeout=10)


def _dechunk(body: bytes) -> bytes:
    """The payload of a complete chunked body, checking every chunk's framing."""
    out, at = bytearray(), 0
    while True:
        eol = body.index(b"\r\n", at)
        size = int(body[at:eol], 16)
        start = eol + 2
        assert body[start + size : start + size + 2] == b"\r\n", f"bad framing at {start + size}"
        if size == 0:
            assert start + 2 == len(body), "bytes after the last chunk"
            return bytes(out)
        out += body[start : start + size]
        at = start + size + 2


def test_a_stream_that_waited_in_the_gateway_arrives_whole_and_in_order(
    gateway: Gateway, upstream: Upstream
) -> None:
    # The gateway writes to the client's socket directly while nothing waits in its
    # buffer, and through the buffer otherwise: a client that reads late must still get
    # every byte once, in order (and the chunked framing, which a reordering breaks).
    total = 48 * 1024 * 1024
    sock = _send_stream_request(gateway, {"bulk": total})
    try:
        # Until the upstream is paused, the gateway holds what the client's socket cannot.
        wait_until(lambda: bool(upstream.stats()["bulk_paused"]), timeout=20)
        sock.settimeout(20)
        received = bytearray()
        while not received.endswith(b"\r\n0\r\n\r\n"):
            piece = sock.recv(1024 * 1024)
            assert piece, "the gateway closed the connection before the end of the response"
            received += piece
    finally:
        sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
    block = b": " + b"x" * (16 * 1024 - 3) + b"\n"
    blocks = -(-total // len(block))
    payload = _dechunk(body)
    assert len(payload) == blocks * len(block) + len(b"data: [DONE]\n\n")
    assert payload == block * blocks + b"data: [DONE]\n\n"


def test_twenty_clients_hanging_up_mid_stream_close_their_upstream_streams(
    gateway: Gateway, upstream: Upstream
) -> None:
    completed_before = upstream.stats()["completed_streams"]
    # Each stream would run for 60 s if nobody stopped it.
    socks = [_send_stream_request(gateway, {"chunks": 600, "interval": 0.1}) for _ in range(20)]
    for sock in socks:
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    wait_until(lambda: upstream.stats()["open_streams"] == 20, timeout=10)
    for sock in socks:
        sock.close()
    took = wait_until(lambda: upstream.stats()["open_streams"] == 0, timeout=5)
    print(
        f"\n20 hung-up clients: all upstream streams closed {took * 1000:.0f} ms after the hang-up"
    )
    assert upstream.stats()["completed_streams"] == completed_before
    still_serving(gateway)


def test_client_hanging_up_before_the_response_head_cancels_the_upstream(
    gateway: Gateway, upstream: Upstream
) -> None:
    aborted_before = int(upstream.stats()["aborted_streams"])  # type: ignore[arg-type]
    sock = _send_stream_request(gateway, {"chunks": 5, "head_delay": 60})
    wait_until(lambda: upstream.stats()["open_streams"] == 1, timeout=10)
    sock.settimeout(0.2)
    with contextlib.suppress(TimeoutError):
        assert sock.recv(100) == b"", "the response head must not have been sent yet"
    sock.close()
    wait_until(lambda: upstream.stats()["open_streams"] == 0, timeout=5)
    assert int(upstream.stats()["aborted_streams"]) == aborted_before + 1  # type: ignore[arg-type]
