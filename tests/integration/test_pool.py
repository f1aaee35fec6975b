"""Pooled upstream connections, with the official SDKs as clients: a connection goes back
to its pool only idle, reading and at a message boundary, so the next request on it gets
its answer — after a client that read the last of a large answer late (the gateway
paused the upstream socket for it), and after an upstream that sent more than its answer.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import anthropic
import h2.config
import h2.connection
import h2.events
import httpx
import openai
import pytest

from filterproxy.extensions.keys.config import hash_key

from .conftest import (
    FaultServer,
    Gateway,
    LocalServer,
    start_gateway,
    wait_until,
)

KEY = "fpk-test-pool-0123456789"
HUGE = 5 * 1024 * 1024  # chat_server.HUGE_DELTA
#: Far below the clusters' timeouts.first_byte (30 s): a request that waited for that
#: limit fails here.
CLIENT_TIMEOUT = 10.0


def _cluster(url: str) -> str:
    # One connection: the second request must take the one the first answer came on.
    return f"""
          chat-only:
            url: {url}
            apis: [chat]
            max_connections: 1
            timeouts: {{first_byte: 30s}}"""


@pytest.fixture(scope="module")
def translating(
    chat_upstream: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = f"""
        clusters:{_cluster(chat_upstream.url)}
        routes:
          - models: ["chat-*"]
            cluster: chat-only
    """
    gw = start_gateway(config, tmp_path_factory.mktemp("pool-translating"))
    try:
        yield gw
    finally:
        gw.process.stop()


@pytest.fixture(scope="module")
def with_keys(
    chat_upstream: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = f"""
        clusters:{_cluster(chat_upstream.url)}
        routes:
          - models: ["chat-*"]
            cluster: chat-only
        keys:
          - name: pool
            hash: sha256:{hash_key(KEY)}
    """
    gw = start_gateway(config, tmp_path_factory.mktemp("pool-keys"))
    try:
        yield gw
    finally:
        gw.process.stop()


def _answered_promptly(gateway: Gateway) -> None:
    """A chat completion on the cluster's one pooled connection is answered."""
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0, timeout=CLIENT_TIMEOUT
    )
    completion = client.chat.completions.create(
        model="chat-next", messages=[{"role": "user", "content": "again"}]
    )
    assert completion.choices[0].message.content == "You said: again (1 messages)"


def test_a_messages_client_reading_late_leaves_the_pooled_connection_usable(
    translating: Gateway,
) -> None:
    claude = anthropic.Anthropic(
        base_url=translating.url, api_key="sk-client", max_retries=0, timeout=CLIENT_TIMEOUT
    )
    for _ in range(2):
        with claude.messages.stream(
            model="chat-huge", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            # Late: the gateway's socket buffers fill and it pauses the upstream.
            time.sleep(0.5)
            text = "".join(stream.text_stream)
        assert len(text) == HUGE and set(text) == {"x"}
        assert stream.get_final_message().stop_reason == "end_turn"
        _answered_promptly(translating)


def test_a_chat_client_with_a_key_reading_late_leaves_the_pooled_connection_usable(
    with_keys: Gateway,
) -> None:
    client = openai.OpenAI(
        base_url=f"{with_keys.url}/v1", api_key=KEY, max_retries=0, timeout=CLIENT_TIMEOUT
    )
    for _ in range(2):
        stream = client.chat.completions.create(
            model="chat-huge", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with stream:
            time.sleep(0.5)
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
            )
        assert len(text) == HUGE
        _answered_promptly(with_keys)


def test_a_connection_whose_upstream_sent_more_than_its_answer_is_closed(
    faults: FaultServer, tmp_path: Path
) -> None:
    gateway = start_gateway(
        f"""
        clusters:
          flaky:
            url: {faults.url}
            max_connections: 1
            timeouts: {{first_byte: 30s}}
        routes:
          - cluster: flaky
        """,
        tmp_path,
    )
    try:
        answer = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers={"x-fault": "extra"},
            timeout=CLIENT_TIMEOUT,
        )
        assert answer.status_code == 200 and answer.json()["id"] == "chatcmpl-fault"
        # After the answer came the beginning of a response nobody asked for: the
        # connection is not at a message boundary (the rest of that response would be
        # read as the next request's answer), so it is closed, not pooled.
        wait_until(lambda: faults.stats()["open"] == 0, timeout=10)
        again = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "m", "messages": []},
            timeout=CLIENT_TIMEOUT,
        )
        assert again.status_code == 200 and again.json()["id"] == "chatcmpl-fault"
    finally:
        gateway.process.stop()


# -- HTTP/2 upstreams ----------------------------------------------------------------------


class _LateH2Client:
    """An HTTP/2 client (h2c, prior knowledge) that reads late: it opens a stream's
    window only when told, so the gateway can send it the first 64 KiB of an answer and
    must hold the rest until then."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(CLIENT_TIMEOUT)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.received: dict[int, int] = {}
        self.ended: set[int] = set()
        #: Streams whose window this client opens as it reads.
        self.reading: set[int] = set()

    def request(self, body: bytes) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "gw"),
                (":path", "/v1/chat/completions"),
                ("content-type", "application/json"),
            ],
        )
        self.conn.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.received[sid] = 0
        return sid

    def read_until(self, done: Callable[[], bool]) -> None:
        """Read until *done()*; a read that waits CLIENT_TIMEOUT fails."""
        while not done():
            data = self.sock.recv(65536)
            assert data, "the gateway closed the connection"
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    sid, size = event.stream_id, event.flow_controlled_length
                    self.received[sid] += size
                    if sid in self.reading:
                        self.conn.acknowledge_received_data(size, sid)
                    else:  # the connection's window stays open, not the stream's
                        self.conn.increment_flow_control_window(size)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream {event.stream_id} was reset")
            self.sock.sendall(self.conn.data_to_send())

    def windows_full(self, sids: frozenset[int]) -> bool:
        """Whether each of *sids* got all its window (65,535 bytes) allows."""
        return all(self.received[sid] >= 65535 for sid in sids)

    def read_late(self, sid: int) -> None:
        """Open the stream's window for what arrived, and from now on as it arrives."""
        self.reading.add(sid)
        self.conn.increment_flow_control_window(self.received[sid], stream_id=sid)
        self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.sock.close()


def test_streams_ended_while_their_client_was_slow_do_not_stall_the_upstream_connection(
    h2c_upstream: LocalServer, tmp_path: Path
) -> None:
    # Each answer is 256 KiB, the whole stream window the gateway grants its upstream:
    # the upstream sends it all and ends the stream, while the gateway, whose client
    # takes 64 KiB before it reads late, has paused the stream and not acknowledged the
    # rest. The connection's window (64 MiB) is shared by every stream on it: what each
    # such stream held back must go back to it, or a few hundred of them stall the
    # connection and every request on it waits for timeouts.first_byte.
    gateway = start_gateway(
        f"""
        clusters:
          local:
            url: {h2c_upstream.url}
            protocol: http2
            max_connections: 1
            timeouts: {{first_byte: 30s}}
        routes:
          - cluster: local
        """,
        tmp_path,
    )
    client = _LateH2Client(gateway.port)
    try:
        size = 256 * 1024
        body = b'{"model": "m", "stream": true, "test": {"size": %d}}' % size
        for _ in range(300 // 20):  # 256 such streams were enough to stall it
            sids = frozenset(client.request(body) for _ in range(20))
            client.read_until(partial(client.windows_full, sids))
            # Every answer has left the upstream (the gateway holds the rest of each).
            wait_until(lambda: httpx.get(f"{h2c_upstream.url}/stats").json()["open"] == 0, 10)
            for sid in sids:
                client.read_late(sid)
            client.read_until(partial(client.ended.issuperset, sids))
            assert all(client.received[sid] == size for sid in sids)
        _answered_by_h2c(gateway)
        stats = httpx.get(f"{h2c_upstream.url}/stats").json()
        assert len(stats["client_ports"]) == 1  # all of it on one upstream connection
    finally:
        client.close()
        gateway.process.stop()


def _answered_by_h2c(gateway: Gateway) -> None:
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "m", "stream": True, "test": {"chunks": 3}},
        timeout=CLIENT_TIMEOUT,
    )
    assert answer.status_code == 200 and answer.content.endswith(b"data: [DONE]\n\n")
