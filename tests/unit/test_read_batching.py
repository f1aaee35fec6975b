"""Chunks that arrive from the upstream in one read leave for the client in one write;
nothing is held beyond the read that brought it."""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from .harness import SSE_HEAD, Harness, chunk, post

CONFIG = """
clusters:
  up:
    url: http://upstream.test:8000
routes:
  - cluster: up
    heartbeat: 2s
"""


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def harness() -> tuple[Harness, CountingTransport]:
    transport = CountingTransport()
    return Harness(CONFIG, transport), transport


def event(n: int) -> bytes:
    return b'data: {"n": %d}\n\n' % n


def test_one_read_of_several_chunks_is_one_write_of_one_chunk() -> None:
    h, client = harness()
    h.client.dataReceived(post())
    h.upstream.dataReceived(SSE_HEAD + chunk(event(1)) + chunk(event(2)) + chunk(event(3)))
    assert len(client.writes) == 1
    head, _, body = client.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == chunk(event(1) + event(2) + event(3))

    h.upstream.dataReceived(chunk(event(4)) + chunk(event(5)))
    assert client.writes[1:] == [chunk(event(4) + event(5))]

    # A chunk split across reads: what each read brought leaves at the end of that read.
    piece = chunk(event(6))
    h.upstream.dataReceived(piece[:9])  # "10\r\ndata:": five body bytes
    assert client.writes[2:] == [chunk(b"data:")]
    h.upstream.dataReceived(piece[9:] + b"0\r\n\r\n")
    assert client.writes[3:] == [chunk(event(6)[5:]) + b"0\r\n\r\n"]


def test_writes_between_reads_are_not_held() -> None:
    h, client = harness()
    h.client.dataReceived(post())
    h.upstream.dataReceived(SSE_HEAD + chunk(event(1)))
    writes = len(client.writes)
    h.reactor.advance(2.1)  # the route's heartbeat, from a timer: written at once
    assert len(client.writes) == writes + 1
    assert client.writes[-1] == chunk(b": keep-alive\n")


def test_an_upstream_failure_in_the_middle_of_a_read_flushes_what_came_before() -> None:
    h, client = harness()
    h.client.dataReceived(post())
    h.upstream.dataReceived(SSE_HEAD + chunk(event(1)) + b"zz\r\nnot a chunk")
    received = client.value()
    assert b"\r\n" + event(1) + b"event: error" in received  # in the one chunk of that read
    assert not received.endswith(b"0\r\n\r\n")
