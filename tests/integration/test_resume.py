"""Resumable streams on real sockets: the official ``openai`` SDK's stream cut in the
middle — a clean close, a reset, a connection that just goes silent — and resumed; a
raw reader that follows the WHATWG reconnection rules; a re-sent POST; the grace period
running out; other credentials; heartbeats read by the ``openai`` and ``anthropic``
SDKs on a stream whose events carry ids. The upstream is tests/chat_server.py (its
``chat-slow`` stream takes about 1.3 s)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from filterproxy.http.sse import SSEDecoder
from tests.integration.conftest import (
    Gateway,
    LocalServer,
    Process,
    closed_port,
    start_gateway,
    twistd_command,
    wait_until,
)

TESTS = Path(__file__).resolve().parent.parent
TOKENS = "".join(f" tok{n:02d}" for n in range(1, 41))
CHAT = [{"role": "user", "content": "count"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[LocalServer]:
    process = Process([sys.executable, str(TESTS / "chat_server.py")])
    try:
        yield LocalServer(process, int(process.wait_for(r"PORT (\d+)").group(1)))
    finally:
        process.stop()


@pytest.fixture(scope="module")
def gateway(upstream: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = f"""
        clusters:
          chat: {{url: "{upstream.url}", apis: [chat]}}
        routes:
          - models: ["chat-*"]
            cluster: chat
            heartbeat: 0.2s
            resume: {{grace: 1.5s, keep: 30s}}
          - models: [gzip-slow]
            cluster: chat
            upstream_model: chat-slow
            resume: {{grace: 1.5s, gzip: true}}
          - models: [flood-kept]
            cluster: chat
            upstream_model: chat-flood
            resume: {{grace: 5s, buffer: 16777216}}
    """
    gw = start_gateway(config, tmp_path_factory.mktemp("resume"))
    try:
        yield gw
    finally:
        gw.process.stop()


def client(url: str, key: str = "sk-a", timeout: float = 20.0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=url + "/v1",
        api_key=key,
        max_retries=0,
        http_client=httpx.Client(timeout=httpx.Timeout(timeout)),
    )


def streams(upstream: LocalServer) -> list[dict[str, bool]]:
    return httpx.get(f"{upstream.url}/streams").json()  # type: ignore[no-any-return]


def requests_seen(upstream: LocalServer) -> int:
    return int(httpx.get(f"{upstream.url}/control/count").json())


def resume(
    gateway: Gateway, stream_id: str, seen: int, key: str = "sk-a"
) -> list[ChatCompletionChunk]:
    rest = client(gateway.url, key).get(
        f"/streams/{stream_id}",
        cast_to=ChatCompletionChunk,
        stream=True,
        stream_cls=openai.Stream[ChatCompletionChunk],
        options={"params": {"starting_after": seen}},
    )
    return list(rest)


def check_whole(chunks: list[ChatCompletionChunk]) -> None:
    """One answer, as if it had never been cut."""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TOKENS
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1
    assert sum(1 for c in chunks if c.usage is not None) == 1


def start(
    url: str, key: str = "sk-a", timeout: float = 20.0, model: str = "chat-slow"
) -> tuple[str, Any]:
    raw = client(url, key, timeout).chat.completions.with_raw_response.create(
        model=model,
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    return raw.headers["x-stream-id"], raw.parse()


class Relay:
    """A TCP relay between a client and the gateway that can reset both connections
    or go silent (forward nothing, close nothing), as a network can. With *small*, its
    own sockets buffer little (a slow link: what the client does not read stays in the
    gateway)."""

    def __init__(self, port: int, small: bool = False) -> None:
        self.target = port
        self.small = small
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.silent = False
        self.resetting = False
        #: The gateway closed its side of a relayed connection.
        self.gateway_closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.server.accept()
            except OSError:
                return
            far = socket.socket()
            if self.small:
                far.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                near.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            far.connect(("127.0.0.1", self.target))
            self.pairs.append((near, far))
            threading.Thread(target=self._pump, args=(near, far, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(far, near, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_gateway: bool) -> None:
        size = 16384 if self.small else 65536
        while True:
            try:
                data = source.recv(size)
            except OSError:
                data = b""
            if not data:
                if self.resetting:
                    return
                if from_gateway:
                    self.gateway_closed.set()
                if not self.silent:
                    for s in (source, sink):
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_WR)
                return
            if self.silent:
                continue  # swallowed: nothing goes either way, nothing is closed
            try:
                sink.sendall(data)
            except OSError:
                return

    def reset(self) -> None:
        """Both connections end with an RST, as when a network path breaks."""
        self.resetting = True
        for pair in self.pairs:
            for s in pair:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RD)  # wakes the pump in recv; sends nothing
        time.sleep(0.05)
        for pair in self.pairs:
            for s in pair:
                s.close()  # the last reference, with linger 0: an RST

    def close(self) -> None:
        self.server.close()
        for near, far in self.pairs:
            for s in (near, far):
                with contextlib.suppress(OSError):
                    s.close()


def read(stream: Any, count: int) -> list[ChatCompletionChunk]:
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == count:
            break
    return chunks


# -- cut and resumed -------------------------------------------------------------------------


def test_a_clean_close_mid_answer_is_resumed_whole(gateway: Gateway, upstream: LocalServer) -> None:
    before = requests_seen(upstream)
    stream_id, stream = start(gateway.url)
    first = read(stream, 10)
    stream.close()  # the client hangs up (FIN)
    time.sleep(0.2)
    rest = resume(gateway, stream_id, len(first))
    check_whole(first + rest)
    assert requests_seen(upstream) == before + 1
    wait_until(lambda: streams(upstream)[-1]["finished"], timeout=10)
    assert not streams(upstream)[-1]["cancelled"]


def test_a_reset_mid_answer_is_resumed_whole(gateway: Gateway, upstream: LocalServer) -> None:
    relay = Relay(gateway.port)
    try:
        before = requests_seen(upstream)
        stream_id, stream = start(relay.url)
        first = read(stream, 8)
        relay.reset()
        with pytest.raises((httpx.TransportError, openai.APIConnectionError)) as broke:
            first += read(stream, 100)  # the SDK sees the connection break
        assert not isinstance(broke.value, httpx.TimeoutException)  # at once: a reset
        rest = resume(gateway, stream_id, len(first))
        check_whole(first + rest)
        assert requests_seen(upstream) == before + 1
    finally:
        relay.close()


def test_a_silent_connection_is_taken_over_by_the_resume(
    gateway: Gateway, upstream: LocalServer
) -> None:
    relay = Relay(gateway.port)
    try:
        before = requests_seen(upstream)
        stream_id, stream = start(relay.url, timeout=1.0)
        first = read(stream, 5)
        relay.silent = True  # a NAT change: nothing arrives, nothing is closed
        with pytest.raises((httpx.ReadTimeout, openai.APITimeoutError)):
            first += read(stream, 100)
        assert not relay.gateway_closed.is_set()  # the gateway cannot tell yet
        rest = resume(gateway, stream_id, len(first))
        check_whole(first + rest)
        assert requests_seen(upstream) == before + 1
        # The new reader took over: the gateway closed the stale connection.
        assert relay.gateway_closed.wait(5)
    finally:
        relay.close()


def test_a_re_sent_post_with_last_event_id_never_starts_a_second_generation(
    gateway: Gateway, upstream: LocalServer
) -> None:
    body = {"model": "chat-slow", "messages": CHAT, "stream": True}
    headers = {"authorization": "Bearer sk-a"}
    last = ""
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers
    ) as r:
        text = ""
        for event in SSEDecoder().feed(b"".join(_take(r, 6))):
            last = event.id or last
            text += _content(event.data)
    before = requests_seen(upstream)
    again = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={**headers, "last-event-id": last},
        timeout=20,
    )
    assert again.status_code == 200 and again.headers["x-stream-id"] == last.rsplit(".", 1)[0]
    text += "".join(_content(e.data) for e in SSEDecoder().feed(again.content))
    assert text == TOKENS and requests_seen(upstream) == before
    other = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={**body, "messages": [{"role": "user", "content": "another question"}]},
        headers={**headers, "last-event-id": last},
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "stream_mismatch"


def _take(response: httpx.Response, events: int) -> list[bytes]:
    pieces: list[bytes] = []
    for piece in response.iter_raw():
        pieces.append(piece)
        if b"".join(pieces).count(b"\nid: ") >= events:
            break
    return pieces


def _content(data: str | None) -> str:
    if not data or not data.startswith("{"):
        return ""
    choices = json.loads(data).get("choices") or []
    return str(choices[0]["delta"].get("content") or "") if choices else ""


def test_a_whatwg_reader_reconnects_with_last_event_id_until_204(gateway: Gateway) -> None:
    """What a browser's EventSource does: on every end of the connection, wait, then GET
    again with Last-Event-ID; a 204 (or any non-200) ends it."""
    body = {"model": "chat-slow", "messages": CHAT, "stream": True}
    headers = {"authorization": "Bearer sk-a"}
    text, last = "", ""
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers
    ) as r:
        stream_id = r.headers["x-stream-id"]
        for event in SSEDecoder().feed(b"".join(_take(r, 4))):
            last, text = event.id or last, text + _content(event.data)
    connections = 0
    reconnection_time = 0.05
    while True:
        time.sleep(reconnection_time)
        connections += 1
        with httpx.stream(
            "GET",
            f"{gateway.url}/v1/streams/{stream_id}",
            headers={**headers, "last-event-id": last, "accept": "text/event-stream"},
            timeout=20,
        ) as r:
            if r.status_code == 204:
                break
            assert r.status_code == 200 and r.headers["content-type"].startswith(
                "text/event-stream"
            )
            decoder = SSEDecoder()
            for piece in r.iter_raw():
                for event in decoder.feed(piece):
                    if event.retry is not None:
                        reconnection_time = event.retry / 1000
                    last = event.id or last  # the last-event-ID buffer persists
                    text += _content(event.data)
                if connections == 1 and "tok20" in text:
                    break  # the connection drops again, mid-stream
    assert text == TOKENS and connections >= 3


# -- drops after folded replays: what a client can count stays exact ------------------------


class IdStream(openai.Stream[ChatCompletionChunk]):
    """The openai SDK's stream, noting the id of the last event its SSE decoder parsed
    (the chunks it yields do not carry it): for a resume by Last-Event-ID."""

    last_id = ""

    def _iter_events(self) -> Iterator[Any]:
        for event in super()._iter_events():
            self.last_id = event.id or self.last_id
            yield event


def read_until_broken(stream: Any, chunks: list[ChatCompletionChunk], count: int = 0) -> None:
    """Add *stream*'s chunks to *chunks* — *count* of them, or, with 0, until the
    connection breaks (every chunk the SDK yielded before that is counted)."""
    if not count:
        with pytest.raises((httpx.TransportError, openai.APIConnectionError)) as broke:
            for chunk in stream:
                chunks.append(chunk)
        assert not isinstance(broke.value, httpx.TimeoutException)  # at once: a reset
        return
    for chunk in stream:
        chunks.append(chunk)
        count -= 1
        if not count:
            return


def tokens_in(chunk: ChatCompletionChunk) -> int:
    return (chunk.choices[0].delta.content or "").count(" t") if chunk.choices else 0


@pytest.mark.parametrize("drops", [2, 3])
@pytest.mark.parametrize("by", ["starting_after", "Last-Event-ID"])
def test_successive_resets_each_resumed_give_the_text_exactly_once(
    gateway: Gateway, upstream: LocalServer, drops: int, by: str
) -> None:
    """After each reset the upstream goes on for a moment (as a phone takes to
    reconnect), so every resume gets a run of missed deltas folded into one chunk: the
    SDK then has fewer chunks than the events they stand for, and its count must still
    name the chunk where the next resume starts."""
    before = requests_seen(upstream)
    relays = [Relay(gateway.port)]
    try:
        stream = client(relays[-1].url).post(
            "/chat/completions",
            body={
                "model": "chat-slow",
                "messages": CHAT,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            cast_to=ChatCompletionChunk,
            stream=True,
            stream_cls=IdStream,
        )
        stream_id = stream.response.headers["x-stream-id"]
        chunks: list[ChatCompletionChunk] = []
        read_until_broken(stream, chunks, 5)
        for drop in range(drops):
            relays[-1].reset()
            read_until_broken(stream, chunks)
            last_id = stream.last_id
            time.sleep(0.3)  # the upstream goes on: about ten tokens are missed
            relays.append(Relay(gateway.port))
            where = (
                {"params": {"starting_after": len(chunks)}}
                if by == "starting_after"
                else {"headers": {"Last-Event-ID": last_id}}
            )
            stream = client(relays[-1].url).get(
                f"/streams/{stream_id}",
                cast_to=ChatCompletionChunk,
                stream=True,
                stream_cls=IdStream,
                options=where,  # type: ignore[arg-type]
            )
            stream.last_id = last_id
            if drop < drops - 1:
                read_until_broken(stream, chunks, 3)  # the folded replay, then live ones
        chunks += list(stream)
        check_whole(chunks)
        # What this is about happened: resumes got missed deltas folded (each does when
        # the upstream ran on meanwhile; on a loaded machine a late one may find the
        # stream all but done, so at least one is asked for, not each).
        assert sum(1 for c in chunks if tokens_in(c) > 1) >= 1
        assert requests_seen(upstream) == before + 1
    finally:
        for relay in relays:
            relay.close()


def test_a_slow_first_connection_that_drops_is_resumed_by_count_exactly(
    gateway: Gateway,
) -> None:
    """A client that stops reading for a while gets what was held meanwhile folded, on
    its first connection; it then drops, and resumes with the number of chunks the SDK
    gave it."""
    relay = Relay(gateway.port, small=True)
    try:
        raw = client(relay.url, timeout=30).chat.completions.with_raw_response.create(
            model="flood-kept",
            messages=CHAT,
            stream=True,  # 6 MB, all of it kept
        )
        stream_id, stream = raw.headers["x-stream-id"], raw.parse()
        chunks = read(stream, 3)
        time.sleep(1.0)  # a phone on a weak network: it reads nothing for a while
        for chunk in stream:
            chunks.append(chunk)
            if tokens_in(chunk) > 1:
                break  # what was held came folded: from here the count is behind the ids
        assert tokens_in(chunks[-1]) > 1, "nothing came folded"
        relay.reset()
        with contextlib.suppress(httpx.TransportError, openai.APIConnectionError):
            chunks += list(stream)  # what had reached the client before the reset
        rest = resume(gateway, stream_id, len(chunks))
        text = "".join(c.choices[0].delta.content or "" for c in chunks + rest if c.choices)
        assert text == "".join(f" t{n:05d}" for n in range(1, 30001))
        assert sum(1 for c in chunks + rest if c.choices and c.choices[0].finish_reason) == 1
    finally:
        relay.close()


def test_a_stalled_connection_taken_over_by_count_then_dropped_resumes_exactly(
    gateway: Gateway,
) -> None:
    """A connection that stalls (the gateway holds what it cannot write), then a resume
    by count on a new one, which takes over; that one drops too, and the next count
    still lands exactly — what the stalled connection held went to nobody, and counts
    for nothing."""
    raw = client(gateway.url, timeout=30).chat.completions.with_raw_response.create(
        model="flood-kept", messages=CHAT, stream=True
    )
    stream_id, stalled = raw.headers["x-stream-id"], raw.parse()
    chunks = read(stalled, 3)
    time.sleep(1.0)  # it reads nothing more: the gateway's writes back up, it holds
    again = client(gateway.url, timeout=30).get(
        f"/streams/{stream_id}",
        cast_to=ChatCompletionChunk,
        stream=True,
        stream_cls=openai.Stream[ChatCompletionChunk],
        options={"params": {"starting_after": len(chunks)}},
    )
    chunks += read(again, 4)
    assert tokens_in(chunks[3]) > 1  # the replay, folded
    again.close()
    stalled.close()
    chunks += resume(gateway, stream_id, len(chunks))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f" t{n:05d}" for n in range(1, 30001))


# -- when nobody comes back, and who may ------------------------------------------------------


def test_the_grace_period_ends_the_upstream_and_a_late_resume_gets_410(
    gateway: Gateway, upstream: LocalServer
) -> None:
    # chat-pause goes silent for 2 s after its third token: longer than the grace period.
    stream_id, stream = start(gateway.url, model="chat-pause")
    read(stream, 3)
    stream.close()
    # (How long the upstream goes on, and what the access log says of the stream:
    # tests/unit/test_resume_filter.py, on a clock.)
    wait_until(lambda: streams(upstream)[-1]["cancelled"], timeout=10)
    late = httpx.get(
        f"{gateway.url}/v1/streams/{stream_id}", headers={"authorization": "Bearer sk-a"}
    )
    assert late.status_code == 410 and late.json()["error"]["code"] == "stream_gone"
    metrics = httpx.get(f"{gateway.admin_url}/metrics").text
    assert 'filterproxy_stream_grace_expiries_total{route="routes[0]"}' in metrics
    assert 'filterproxy_stream_resumes_total{outcome="gone",route="none"}' in metrics


def test_other_credentials_cannot_read_or_stop_a_stream(
    gateway: Gateway, upstream: LocalServer
) -> None:
    stream_id, stream = start(gateway.url)
    first = read(stream, 3)
    stranger = {"authorization": "Bearer sk-stranger"}
    assert httpx.get(f"{gateway.url}/v1/streams/{stream_id}", headers=stranger).status_code == 410
    assert (
        httpx.delete(f"{gateway.url}/v1/streams/{stream_id}", headers=stranger).status_code == 404
    )
    rest = list(stream)  # the owner's stream went on untouched
    check_whole(first + rest)
    # The owner stops a stream at once with DELETE.
    stream_id, stream = start(gateway.url)
    read(stream, 2)
    stopped = httpx.delete(
        f"{gateway.url}/v1/streams/{stream_id}", headers={"authorization": "Bearer sk-a"}
    )
    assert stopped.status_code == 200 and stopped.json()["deleted"] is True
    wait_until(lambda: streams(upstream)[-1]["cancelled"], timeout=5)


# -- heartbeats on a stream with ids ----------------------------------------------------------


def test_heartbeats_and_upstream_pings_do_not_break_the_sdks(gateway: Gateway) -> None:
    raw = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "chat-pause", "messages": CHAT, "stream": True},
        headers={"authorization": "Bearer sk-a"},
        timeout=20,
    ).content
    assert b": keep-alive\n" in raw and b": ping - upstream\n" in raw and b"\nid: " in raw
    assert b": keep-alive\n\n" not in raw and b": ping - upstream\n\n" not in raw
    chunks = list(
        client(gateway.url).chat.completions.create(model="chat-pause", messages=CHAT, stream=True)  # type: ignore[arg-type]
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TOKENS[:36]
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="sk-a", max_retries=0)
    with claude.messages.stream(
        model="chat-pause", max_tokens=100, messages=[{"role": "user", "content": "count"}]
    ) as stream:
        assert stream.get_final_text() == TOKENS[:36]


# -- weak networks ----------------------------------------------------------------------------


def test_a_client_that_cannot_keep_up_gets_the_same_text_in_fewer_events(gateway: Gateway) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    connection.connect()
    body = json.dumps({"model": "chat-flood", "messages": CHAT, "stream": True})
    connection.request(
        "POST",
        "/v1/chat/completions",
        body,
        {"content-type": "application/json", "authorization": "Bearer sk-a"},
    )
    response = connection.getresponse()
    time.sleep(1.0)  # a phone on a weak network: it reads nothing for a while
    events = [e for e in SSEDecoder().feed(response.read()) if e.data is not None]
    connection.close()
    text = "".join(_content(e.data) for e in events)
    assert text == "".join(f" t{n:05d}" for n in range(1, 30001))
    numbers = [int((e.id or "").rsplit(".", 1)[1]) for e in events]
    assert numbers == sorted(numbers) and numbers[-1] == 30003  # role, tokens, stop, [DONE]
    # What it could not take in time came folded (how much depends on how much the
    # kernel's buffers took first: up to 4 MB of these 6 here).
    assert len(events) < 30003


def test_gzip_when_the_route_offers_it_and_the_client_asks(gateway: Gateway) -> None:
    plain = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gzip-slow", "messages": CHAT, "stream": True},
        headers={"authorization": "Bearer sk-a", "accept-encoding": "identity"},
        timeout=20,
    )
    assert "content-encoding" not in plain.headers
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gzip-slow", "messages": CHAT, "stream": True},
        headers={"authorization": "Bearer sk-a", "accept-encoding": "gzip"},
        timeout=20,
    ) as zipped:
        assert zipped.headers["content-encoding"] == "gzip"
        wire = b"".join(zipped.iter_raw())
    assert len(wire) < len(plain.content) / 3
    import zlib

    assert zlib.decompress(wire, 31).count(b"\nid: ") == plain.content.count(b"\nid: ")
    # The SDKs ask for compression (httpx: gzip, deflate, and br and zstd when their
    # libraries are installed) and read it as it comes; a resume is compressed too.
    raw = client(gateway.url).chat.completions.with_raw_response.create(
        model="gzip-slow",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    assert raw.headers["content-encoding"] == "zstd"  # the route's first choice
    stream = raw.parse()
    first = read(stream, 7)
    stream.close()
    check_whole(first + resume(gateway, raw.headers["x-stream-id"], len(first)))


# -- with --workers ---------------------------------------------------------------------------


def test_a_resume_that_reaches_the_other_worker_is_served(
    upstream: LocalServer, tmp_path: Path
) -> None:
    port = closed_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        textwrap.dedent(f"""
        listeners: ["tcp:{port}:interface=127.0.0.1"]
        admin: false
        clusters:
          chat: {{url: "{upstream.url}", apis: [chat]}}
        routes:
          - models: ["chat-*"]
            cluster: chat
            resume: {{grace: 5s, keep: 30s}}
    """)
    )
    supervisor = Process(twistd_command(config, "--workers", "2"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: supervisor.output().count("resume relay for the other workers") == 2, timeout=30
        )
        wait_until(lambda: supervisor.output().count("filterproxy listening on") == 2, timeout=30)
        raw = client(url).chat.completions.with_raw_response.create(
            model="chat-slow",
            messages=CHAT,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        origin_worker = raw.headers["x-request-id"][:16]
        stream_id = raw.headers["x-stream-id"]
        stream = raw.parse()
        first = read(stream, 5)
        stream.close()
        rest: list[ChatCompletionChunk] = []
        for _ in range(40):  # new connections until one lands on the other worker
            with httpx.Client(timeout=20) as fresh:
                answer = fresh.get(
                    f"{url}/v1/streams/{stream_id}",
                    params={"starting_after": len(first)},
                    headers={"authorization": "Bearer sk-a"},
                )
            if answer.headers["x-request-id"][:16] == origin_worker:
                continue
            assert answer.status_code == 200, answer.text
            rest = [
                ChatCompletionChunk.model_validate(json.loads(e.data))
                for e in SSEDecoder().feed(answer.content)
                if e.data and e.data.startswith("{")
            ]
            break
        assert rest, "no connection reached the other worker"
        check_whole(first + rest)
        # Counting chunks through the other worker: its replay came folded (the stream
        # went on meanwhile), and the count the SDK gives after it still lands exactly.
        raw = client(url).chat.completions.with_raw_response.create(
            model="chat-slow",
            messages=CHAT,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        origin_worker, stream_id = raw.headers["x-request-id"][:16], raw.headers["x-stream-id"]
        stream = raw.parse()
        chunks = read(stream, 5)
        stream.close()
        time.sleep(0.3)
        for _ in range(40):
            again = client(url).get(
                f"/streams/{stream_id}",
                cast_to=ChatCompletionChunk,
                stream=True,
                stream_cls=openai.Stream[ChatCompletionChunk],
                options={"params": {"starting_after": len(chunks)}},
            )
            if again.response.headers["x-request-id"][:16] != origin_worker:
                break
            again.close()
        else:
            pytest.fail("no connection reached the other worker")
        chunks += read(again, 3)
        assert tokens_in(chunks[5]) > 1  # the replay, folded
        again.close()
        time.sleep(0.3)
        chunks += resume(Gateway(supervisor, port), stream_id, len(chunks))
        check_whole(chunks)
        # A stream id that names a worker without the supervisor's signature is not relayed.
        forged = stream_id.rsplit("_", 1)[0] + "_0000000000000000"
        gone = httpx.get(f"{url}/v1/streams/{forged}", headers={"authorization": "Bearer sk-a"})
        assert gone.status_code == 410
    finally:
        supervisor.stop()
