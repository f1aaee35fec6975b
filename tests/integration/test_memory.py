"""Connection churn leaves nothing behind: after clients and upstreams of every kind come
and go, what the gateway holds — its live objects by class and the structures that
should account for them — is what it held before, and nothing waits for Python's cycle
collector.

The gateway runs Python's cycle collector rarely (see `filterproxy.server.service`), so an
object caught in a reference cycle when its connection closes stays in memory for hours
of traffic: about 1.5 KB per client connection, a plain-TCP one (the parser, the socket
object, the last request's headers), several times that with TLS. Counting the objects
(``GET /memory``) shows such a hold whatever its cause; ``POST /memory/cycles`` shows
which of them only the collector could have freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import (
    FaultServer,
    Gateway,
    LocalServer,
    Upstream,
    closed_port,
    make_certificate,
    start_gateway,
    wait_until,
)

#: How many times each kind of churn runs.
ROUNDS = 12
#: The classes whose objects must all be gone once the connections are: each connection
#: and request is made of these (plus plain containers they own).
WATCHED = re.compile(
    r"^(filterproxy\.|twisted\.internet\.(tcp|endpoints|_sslverify)\.|"
    r"twisted\.protocols\.tls\.|OpenSSL\.|h2\.|httptools\.|socket\.)"
)
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Churn:
    """The gateway under test and what its clients need."""

    gateway: Gateway
    tcp_port: int
    tls_port: int
    tls: ssl.SSLContext
    cert: Path

    def memory(self) -> dict[str, Any]:
        response = httpx.get(f"{self.gateway.admin_url}/memory", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def settled(self) -> dict[str, Any]:
        """``/memory`` once no client connection, request or upstream connection is open
        (pooled connections close after the clusters' 1 s idle_connection_timeout)."""
        report: dict[str, Any] = {}

        def quiet() -> bool:
            nonlocal report
            report = self.memory()
            held = report["held"]
            return (
                held["client_connections"] == 0
                and held["requests_in_flight"] == 0
                and all(pool["open"] == 0 for pool in held["upstream_pools"].values())
            )

        wait_until(quiet, timeout=30)
        return report


@pytest.fixture(scope="module")
def churn(
    upstream: Upstream,
    faults: FaultServer,
    h2c_upstream: LocalServer,
    tls_upstream: tuple[Upstream, Path],
    certs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Churn]:
    tls_up, tls_up_cert = tls_upstream
    cert, key = make_certificate(certs, "churn-gateway")
    gateway = start_gateway(
        f"""
        listeners:
          - tcp:0:interface=127.0.0.1
          - ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}
        access_log: false
        clusters:
          plain: {{url: "{upstream.url}", idle_connection_timeout: 1s}}
          faulty:
            url: "{faults.url}"
            idle_connection_timeout: 1s
            retry: {{max_attempts: 1}}
          h2c:
            url: "{h2c_upstream.url}"
            protocol: http2
            idle_connection_timeout: 1s
          tls:
            url: "https://localhost:{tls_up.port}"
            idle_connection_timeout: 1s
            tls: {{ca_file: "{tls_up_cert}"}}
          down:
            url: "http://127.0.0.1:{closed_port()}"
            retry: {{max_attempts: 2, base_interval: 1ms}}
        routes:
          - {{models: [faulty], cluster: faulty}}
          - {{models: [h2c], cluster: h2c}}
          - {{models: [tls], cluster: tls}}
          - {{models: [down], cluster: down}}
          - {{cluster: plain}}
        """,
        tmp_path_factory.mktemp("churn"),
        listen=False,
    )
    ports = {
        kind: int(port)
        for port, kind in re.findall(
            r"filterproxy listening on .*?port=(\d+)\S* \((tcp|ssl):", gateway.process.output()
        )
    }
    if "ssl" not in ports:
        ports["ssl"] = int(
            gateway.process.wait_for(r"filterproxy listening on .*?port=(\d+)\S* \(ssl:").group(1)
        )
    try:
        yield Churn(
            gateway, ports["tcp"], ports["ssl"], ssl.create_default_context(cafile=str(cert)), cert
        )
    finally:
        gateway.process.stop()


# -- the kinds of churn --------------------------------------------------------------------


def _request(model: str, *, stream: bool = False, test: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"model": model, **CHAT, "stream": stream}
    if test:
        body["test"] = test
    return json.dumps(body).encode()


def _raw(port: int, body: bytes, *, extra: bytes = b"", send: int | None = None) -> socket.socket:
    """A connection with a POST written (the first *send* bytes of it, if given)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    )
    sock.sendall(request if send is None else request[:send])
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        piece = sock.recv(65536)
        assert piece, f"closed before {marker!r}: {received!r}"
        received += piece
    return received


def keep_alive_then_idle_close(c: Churn) -> None:
    """A client streams twice on one keep-alive connection, then closes it while idle."""
    with httpx.Client(base_url=f"http://127.0.0.1:{c.tcp_port}", timeout=10) as client:
        for _ in range(2):
            with client.stream(
                "POST", "/v1/chat/completions", content=_request("m", stream=True)
            ) as response:
                assert response.status_code == 200
                assert b"[DONE]" in response.read()


def hang_up_mid_request(c: Churn) -> None:
    """The head and part of the body arrive; then the client is gone."""
    with _raw(c.tcp_port, _request("m"), send=150) as sock:
        time.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def hang_up_mid_stream(c: Churn) -> None:
    """A stream is under way (upstream still generating) when the client closes."""
    with _raw(
        c.tcp_port, _request("m", stream=True, test={"chunks": 100, "interval": 0.05})
    ) as sock:
        _read_until(sock, b"data: ")


def _curl_completion(c: Churn, *options: str) -> None:
    """One non-streaming completion with curl (*options* added); curl then closes."""
    url = f"http://127.0.0.1:{c.tcp_port}/v1/chat/completions"
    body = _request("m").decode()
    command = ["curl", "-s", "--max-time", "10", *options, "-d", body, url]
    done = subprocess.run(command, capture_output=True, check=True)
    assert b"chat.completion" in done.stdout


def connection_close(c: Churn) -> None:
    """curl, one request, ``Connection: close``: the gateway closes."""
    _curl_completion(c, "-H", "connection: close")


def upstream_closes(c: Churn) -> None:
    """Upstream connections end every way an upstream ends them: after a response
    (``connection: close``), before answering, and mid-stream (a reset)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{c.tcp_port}", timeout=10) as client:

        def post(fault: str, *, stream: bool = False) -> httpx.Response:
            return client.post(
                "/v1/chat/completions",
                content=_request("faulty", stream=stream),
                headers={"x-fault": fault},
            )

        assert post("close-after").status_code == 200
        assert post("close").status_code == 502
        received = b""
        request = client.build_request(
            "POST",
            "/v1/chat/completions",
            content=_request("faulty", stream=True),
            headers={"x-fault": "reset"},
        )
        reset = client.send(request, stream=True)
        with contextlib.suppress(httpx.RemoteProtocolError):  # no final chunk: right
            for piece in reset.iter_raw():
                received += piece
        reset.close()
        assert b"event: error" in received


def http2_clients(c: Churn) -> None:
    """HTTP/2 over TLS (httpx: a stream read whole, one cancelled mid-way), and h2c with
    prior knowledge (curl)."""

    async def run() -> None:
        async with httpx.AsyncClient(
            base_url=f"https://localhost:{c.tls_port}", http2=True, verify=c.tls, timeout=10
        ) as client:
            whole = await client.post("/v1/chat/completions", content=_request("m", stream=True))
            assert whole.http_version == "HTTP/2" and b"[DONE]" in whole.content
            body = _request("m", stream=True, test={"chunks": 100, "interval": 0.05})
            async with client.stream("POST", "/v1/chat/completions", content=body) as partial:
                async for _ in partial.aiter_raw():
                    break  # leaving the block resets the stream

    asyncio.run(run())
    _curl_completion(c, "--http2-prior-knowledge")


def tls_clients(c: Churn) -> None:
    """HTTP/1.1 over TLS: a whole stream, then one the client abandons mid-way."""
    with httpx.Client(
        base_url=f"https://localhost:{c.tls_port}", verify=c.tls, timeout=10
    ) as client:
        whole = client.post("/v1/chat/completions", content=_request("m", stream=True))
        assert whole.http_version == "HTTP/1.1" and b"[DONE]" in whole.content
    context = ssl.create_default_context(cafile=str(c.cert))
    raw = socket.create_connection(("127.0.0.1", c.tls_port), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        body = _request("m", stream=True, test={"chunks": 100, "interval": 0.05})
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        _read_until(sock, b"data: ")


def http2_and_tls_upstreams(c: Churn) -> None:
    """Requests to an h2c upstream (one cancelled mid-stream) and to an https one."""
    with httpx.Client(base_url=f"http://127.0.0.1:{c.tcp_port}", timeout=10) as client:
        h2 = client.post("/v1/chat/completions", content=_request("h2c", stream=True))
        assert b"[DONE]" in h2.content
        tls = client.post("/v1/chat/completions", content=_request("tls", stream=True))
        assert b"[DONE]" in tls.content
    with _raw(c.tcp_port, _request("h2c", stream=True, test={"chunks": 400})) as sock:
        _read_until(sock, b"data: ")


def failing_upstreams(c: Churn) -> None:
    """Requests that fail upstream: connections refused (retried), an answer that is
    not HTTP, a 500."""
    with httpx.Client(base_url=f"http://127.0.0.1:{c.tcp_port}", timeout=10) as client:
        assert client.post("/v1/chat/completions", content=_request("down")).status_code == 502
        for fault, status in (("garbage", 502), ("status:500", 500)):
            failed = client.post(
                "/v1/chat/completions", content=_request("faulty"), headers={"x-fault": fault}
            )
            assert failed.status_code == status


def reloads(c: Churn) -> None:
    """A config reload with a stream in flight: the old config's pools close when it ends."""
    with _raw(
        c.tcp_port, _request("m", stream=True, test={"chunks": 10, "interval": 0.02})
    ) as sock:
        _read_until(sock, b"data: ")
        reloaded = httpx.post(f"{c.gateway.admin_url}/reload", timeout=10)
        assert reloaded.status_code == 200, reloaded.text
        _read_until(sock, b"[DONE]")


#: Connections that come and go, each way they can: everything they were made of must be
#: freed by reference counting as they close.
CONNECTION_CHURN: list[Callable[[Churn], None]] = [
    keep_alive_then_idle_close,
    hang_up_mid_request,
    hang_up_mid_stream,
    connection_close,
    upstream_closes,
    http2_clients,
    tls_clients,
    http2_and_tls_upstreams,
]
#: Rarer events whose libraries leave reference cycles of their own (Twisted's connector
#: and client transport when a connection attempt fails; pyOpenSSL's and Twisted's TLS
#: option objects when a reload renews certificates): nothing may stay referenced, and
#: what they leave is small and freed by the collector's young-generation pass.
RARE_EVENTS: list[Callable[[Churn], None]] = [failing_upstreams, reloads]


def _watched(report: dict[str, Any]) -> dict[str, int]:
    return {name: n for name, n in report["objects"].items() if WATCHED.match(name)}


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {name: (before.get(name, 0), n) for name, n in after.items() if n > before.get(name, 0)}


def _cycles(churn: Churn) -> dict[str, int]:
    """One collector pass on the gateway: the watched objects it freed."""
    response = httpx.post(f"{churn.gateway.admin_url}/memory/cycles", timeout=10)
    assert response.status_code == 200, response.text
    return {n: k for n, k in response.json()["objects"].items() if WATCHED.match(n)}


@pytest.fixture(scope="module")
def baseline(churn: Churn) -> dict[str, Any]:
    """What the gateway holds once every kind of churn has run once: lazily loaded code
    (HTTP/2, TLS), TLS contexts and the per-class caches are in place."""
    for kind in RARE_EVENTS + CONNECTION_CHURN:  # a reload's TLS contexts are made lazily
        kind(churn)
    churn.settled()
    _cycles(churn)
    return churn.settled()


def _check_structures(
    before: dict[str, Any], after: dict[str, Any], baseline: dict[str, Any]
) -> None:
    held_before, held_after = before["held"], after["held"]
    for structure in ("timeouts", "timed_calls", "sockets_watched"):
        assert held_after[structure] <= held_before[structure], (structure, held_after)
    assert after["process"]["open_fds"] <= baseline["process"]["open_fds"]


@pytest.mark.parametrize("kind", CONNECTION_CHURN, ids=[k.__name__ for k in CONNECTION_CHURN])
def test_connection_churn_leaves_nothing_held(
    churn: Churn, baseline: dict[str, Any], kind: Callable[[Churn], None]
) -> None:
    before = churn.settled()
    for _ in range(ROUNDS):
        kind(churn)
    after = churn.settled()
    grown = _grown(_watched(before), _watched(after))
    in_cycles = _cycles(churn)  # which of them only the collector could free (it frees them)
    assert grown == {}, f"held after {ROUNDS} rounds: {grown}; in reference cycles: {in_cycles}"
    assert in_cycles == {}
    _check_structures(before, after, baseline)


@pytest.mark.parametrize("kind", RARE_EVENTS, ids=[k.__name__ for k in RARE_EVENTS])
def test_rare_events_leave_nothing_referenced(
    churn: Churn, baseline: dict[str, Any], kind: Callable[[Churn], None]
) -> None:
    before = churn.settled()
    for _ in range(ROUNDS):
        kind(churn)
    churn.settled()
    in_cycles = _cycles(churn)
    after = churn.settled()
    grown = _grown(_watched(before), _watched(after))
    assert grown == {}, f"held after {ROUNDS} rounds and a collector pass: {grown}"
    assert sum(in_cycles.values()) < 10 * ROUNDS, in_cycles  # a few objects per event
    _check_structures(before, after, baseline)
