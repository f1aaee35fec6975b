"""HTTP/2 on both sides: clients (httpx, curl, a raw h2 client for flow control) over TLS
and h2c, and upstreams nobody here wrote — Twisted's own HTTP/2 server over TLS, and
Hypercorn speaking h2c."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import (
    UPSTREAM_SCRIPT,
    Gateway,
    LocalServer,
    Process,
    Upstream,
    certificate_builder,
    make_certificate,
    post_chat,
    save_pem,
    start_gateway,
    start_tls_gateway,
    wait_until,
)

HERE = Path(__file__).resolve().parent
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tls_gateway(
    upstream: Upstream, certs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, ssl.SSLContext, Path]]:
    cert, key = make_certificate(certs, "gateway")
    gateway = start_gateway(
        f"""
        listeners:
          - ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}
        clusters: {{test: {{url: "{upstream.url}"}}}}
        filters:
          - type: body-accumulate
          - type: route
          - type: header-rewrite
            response_headers: {{set: {{x-filtered: "yes"}}}}
        """,
        tmp_path_factory.mktemp("h2gw"),
        listen=False,
    )
    try:
        yield gateway, ssl.create_default_context(cafile=str(cert)), cert
    finally:
        gateway.process.stop()


def https_url(gateway: Gateway) -> str:
    return f"https://localhost:{gateway.port}"


def test_httpx_runs_many_streams_on_one_http2_connection(
    tls_gateway: tuple[Gateway, ssl.SSLContext, Path],
) -> None:
    gateway, context, _ = tls_gateway

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(http2=True, verify=context, timeout=20) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{https_url(gateway)}/v1/chat/completions",
                        json={
                            "model": "test-model",
                            "stream": True,
                            "test": {"chunks": 5, "interval": 0.01, "key": f"h2-{i}"},
                        },
                    )
                    for i in range(20)
                )
            )

    responses = asyncio.run(run())
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert all(r.status_code == 200 for r in responses)
    assert all(r.headers["x-filtered"] == "yes" for r in responses)  # filters ran
    for i, response in enumerate(responses):
        sent = httpx.get(f"{_upstream_url(gateway)}/control/sent/h2-{i}").content
        assert response.content == sent  # byte for byte
    # All 20 came over one client connection.
    assert gateway.open_connections() <= 1


def _upstream_url(gateway: Gateway) -> str:
    return UPSTREAM_URL[0]


UPSTREAM_URL: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _remember_upstream(upstream: Upstream) -> None:
    UPSTREAM_URL[:] = [upstream.url]


def curl(*args: str) -> tuple[str, str]:
    """Run curl; (body, the HTTP version it used)."""
    result = subprocess.run(
        ["curl", "-s", *args, "-w", "\\n%{http_version}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    body, version = result.stdout.rsplit("\n", 1)
    return body, version


def test_curl_speaks_http2_to_the_gateway(
    tls_gateway: tuple[Gateway, ssl.SSLContext, Path],
) -> None:
    gateway, _, cert = tls_gateway
    body, version = curl(
        "-N",
        "--http2",
        "--cacert",
        str(cert),
        f"{https_url(gateway)}/v1/chat/completions",
        "-H",
        "content-type: application/json",
        "-d",
        '{"model": "test-model", "stream": true, "test": {"chunks": 3}}',
    )
    assert version == "2"
    assert body.rstrip().endswith("data: [DONE]")


def test_curl_speaks_h2c_with_prior_knowledge(gateway: Gateway) -> None:
    body, version = curl(
        "--http2-prior-knowledge",
        f"{gateway.url}/v1/chat/completions",
        "-d",
        '{"model": "test-model"}',
    )
    assert version == "2" and "plain answer" in body


class RawH2:
    """An HTTP/2 client on the h2 library with flow control in the test's hands: data
    is acknowledged only when the test says so."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port))
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.received: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()
        self.sock.settimeout(0.2)

    def request(self, body: bytes, *, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", "/v1/chat/completions"),
                ("content-type", "application/json"),
            ],
        )
        self.conn.send_data(sid, body, end_stream=end)
        self.sock.sendall(self.conn.data_to_send())
        self.received[sid] = bytearray()
        return sid

    def pump(self, seconds: float, *, acknowledge: set[int]) -> None:
        """Read for *seconds*; acknowledge data only on the streams in *acknowledge*."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            if not data:
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.received[event.stream_id] += event.data
                    if event.stream_id in acknowledge:
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    else:  # keep the connection window open, not the stream's
                        self.conn.increment_flow_control_window(event.flow_controlled_length)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    self.reset.add(event.stream_id)
            self.sock.sendall(self.conn.data_to_send())

    def pump_until(
        self, done: Callable[[], bool], *, acknowledge: set[int], timeout: float = 10.0
    ) -> None:
        """Read (as `pump`) until *done()* holds, for at most *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the gateway did not answer in time"
            self.pump(0.1, acknowledge=acknowledge)

    def cancel(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        self.sock.close()


def test_a_slow_stream_stalls_its_own_upstream_and_no_other(
    tls_gateway: tuple[Gateway, ssl.SSLContext, Path], upstream: Upstream
) -> None:
    gateway, context, _ = tls_gateway
    client = RawH2(gateway.port, context)
    try:
        slow = client.request(
            b'{"model": "test-model", "stream": true, "test": {"bulk": 100000000}}'
        )
        client.pump(1.0, acknowledge=set())  # the slow stream's window fills and stays full
        wait_until(lambda: upstream.stats()["bulk_paused"] is True, timeout=10)
        held = len(client.received[slow])
        rss = gateway.process.rss_bytes()
        fast = [
            client.request(b'{"model": "test-model", "stream": true, "test": {"chunks": 20}}')
            for _ in range(3)
        ]
        client.pump_until(lambda: set(fast) <= client.ended, acknowledge=set(fast))
        for sid in fast:
            assert bytes(client.received[sid]).endswith(b"data: [DONE]\n\n")
        assert len(client.received[slow]) == held  # still nothing more for the slow one
        assert upstream.stats()["bulk_paused"] is True
        assert gateway.process.rss_bytes() - rss < 20 * 1024 * 1024
        # Reading it again lets it go on.
        client.conn.increment_flow_control_window(held, stream_id=slow)
        client.sock.sendall(client.conn.data_to_send())
        client.pump_until(lambda: len(client.received[slow]) > held, acknowledge={slow})
    finally:
        client.close()
    wait_until(lambda: upstream.stats()["open_streams"] == 0, timeout=10)


def test_rst_stream_cancels_that_upstream_request_only(
    tls_gateway: tuple[Gateway, ssl.SSLContext, Path], upstream: Upstream
) -> None:
    gateway, context, _ = tls_gateway
    client = RawH2(gateway.port, context)
    try:
        holds = [uuid.uuid4().hex, uuid.uuid4().hex]
        before = upstream.stats()["aborted_streams"]
        ids = [
            client.request(
                b'{"model": "test-model", "stream": true, "test": {"chunks": 3, "hold": "%s"}}'
                % h.encode()
            )
            for h in holds
        ]
        client.pump_until(lambda: all(client.received[sid] for sid in ids), acknowledge=set(ids))
        client.cancel(ids[0])
        wait_until(lambda: upstream.stats()["aborted_streams"] == before + 1, timeout=10)
        upstream.release(holds[1])
        client.pump_until(lambda: ids[1] in client.ended, acknowledge=set(ids))
        assert bytes(client.received[ids[1]]).endswith(b"data: [DONE]\n\n")
        assert upstream.stats()["aborted_streams"] == before + 1
    finally:
        client.close()


def upstream_stats(port: int, cert: Path) -> dict[str, Any]:
    return httpx.get(  # type: ignore[no-any-return]
        f"https://localhost:{port}/control/stats",
        verify=ssl.create_default_context(cafile=str(cert)),
    ).json()


@pytest.mark.parametrize(("protocol", "expected"), [("auto", "HTTP/2"), ("http1", "HTTP/1.1")])
def test_upstream_protocol_follows_alpn_and_config(
    tls_upstream: tuple[Upstream, Path], tmp_path: Path, protocol: str, expected: str
) -> None:
    upstream, cert = tls_upstream
    gateway = start_gateway(
        f"""
        clusters:
          secure: {{url: "https://localhost:{upstream.port}", protocol: {protocol}, tls: {{ca_file: {cert}}}}}
        """,
        tmp_path,
    )
    try:
        key = uuid.uuid4().hex
        body = {"model": "m", "messages": MESSAGES, "stream": True, "test": {"key": key}}
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=15)
        assert response.status_code == 200
        stats = upstream_stats(upstream.port, cert)
        assert stats["last_protocol"] == expected
        sent = httpx.get(
            f"https://localhost:{upstream.port}/control/sent/{key}",
            verify=ssl.create_default_context(cafile=str(cert)),
        ).content
        assert response.content == sent
    finally:
        gateway.process.stop()


def test_a_slow_client_stalls_only_its_stream_on_a_shared_upstream_connection(
    tls_upstream: tuple[Upstream, Path], tmp_path: Path
) -> None:
    upstream, cert = tls_upstream
    gateway = start_gateway(
        f"""
        clusters:
          secure: {{url: "https://localhost:{upstream.port}", protocol: http2, tls: {{ca_file: {cert}}}}}
        """,
        tmp_path,
    )
    slow = socket.create_connection(("127.0.0.1", gateway.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        body = b'{"model": "m", "stream": true, "test": {"bulk": 200000000}}'
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        wait_until(lambda: upstream_stats(upstream.port, cert)["bulk_paused"] is True, timeout=15)
        for _ in range(5):
            fast = post_chat(gateway.url, "m", stream=True, messages=MESSAGES)
            assert fast.status_code == 200 and fast.content.endswith(b"data: [DONE]\n\n")
        stats = upstream_stats(upstream.port, cert)
        assert stats["bulk_paused"] is True
        assert stats["bulk_bytes"] < 20 * 1024 * 1024  # held back by flow control
        # Every request shared one upstream connection.
        assert gateway.open_connections(remote_port=upstream.port) == 1
    finally:
        slow.close()
        gateway.process.stop()


def test_h2c_upstream_gets_many_requests_on_few_connections(
    h2c_upstream: LocalServer, tmp_path: Path
) -> None:
    gateway = start_gateway(
        f"""
        clusters:
          local: {{url: "{h2c_upstream.url}", protocol: http2}}
        """,
        tmp_path,
    )
    try:

        async def run() -> tuple[list[httpx.Response], dict[str, Any]]:
            limits = httpx.Limits(max_connections=200)
            async with (
                httpx.AsyncClient(timeout=30, limits=limits) as client,
                httpx.AsyncClient(timeout=5) as control,
            ):
                requests = [
                    asyncio.ensure_future(
                        client.post(
                            f"{gateway.url}/v1/chat/completions",
                            json={"model": "m", "stream": True, "test": {"hold": True}},
                        )
                    )
                    for _ in range(150)
                ]
                # All 150 held open at the upstream at once, then let go.
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    stats = (await control.get(f"{h2c_upstream.url}/stats")).json()
                    if stats["open"] == 150:
                        break
                    await asyncio.sleep(0.05)
                await control.get(f"{h2c_upstream.url}/release")
                return await asyncio.gather(*requests), stats

        responses, held = asyncio.run(run())
        assert all(r.status_code == 200 for r in responses)
        assert all(r.content.endswith(b"data: [DONE]\n\n") for r in responses)
        # Hypercorn allows 100 concurrent streams per connection: 150 at once took two
        # connections, and none was refused for going over (none was sent twice).
        assert held["open"] == 150
        assert len(held["client_ports"]) == 2
        stats = httpx.get(f"{h2c_upstream.url}/stats").json()
        assert stats["http2_requests"] == stats["requests"] == 150
    finally:
        gateway.process.stop()


def make_ca_signed(
    directory: Path, ca: tuple[Any, x509.Certificate], name: str, *, client: bool
) -> tuple[Path, Path]:
    """A certificate for *name* (and 127.0.0.1) signed by *ca*."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = certificate_builder(name, ca_cert.subject, key).add_extension(
        x509.SubjectAlternativeName(
            [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        ),
        critical=False,
    )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return save_pem(directory, name, builder.sign(ca_key, hashes.SHA256()), key)


def make_ca(directory: Path) -> tuple[Any, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        certificate_builder("test CA", None, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


class MutualTLSServer:
    """A one-answer HTTPS server (Python's ssl) that requires a client certificate
    signed by the test CA."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["http/1.1"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.peers: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    peer = conn.getpeercert()
                    self.peers.append(str(peer.get("subject") if peer else ""))
                    conn.recv(65536)
                    body = b'{"ok": true}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                    )
            except (ssl.SSLError, OSError):
                continue

    def close(self) -> None:
        self.listener.close()


def test_mutual_tls_to_the_upstream(tmp_path: Path) -> None:
    ca_key, ca_cert, ca_path = make_ca(tmp_path)
    server_cert, server_key = make_ca_signed(tmp_path, (ca_key, ca_cert), "localhost", client=False)
    client_cert, client_key = make_ca_signed(tmp_path, (ca_key, ca_cert), "gateway", client=True)
    server = MutualTLSServer(server_cert, server_key, ca_path)
    base = f'url: "https://localhost:{server.port}", timeouts: {{connect: 3s}}'
    try:
        with_cert = start_gateway(
            f"""
            clusters:
              mtls: {{{base}, tls: {{ca_file: {ca_path}, client_cert: {client_cert}, client_key: {client_key}}}}}
            """,
            tmp_path,
        )
        try:
            answered = post_chat(with_cert.url, "m", messages=MESSAGES)
            assert answered.status_code == 200 and answered.json() == {"ok": True}
            assert "gateway" in server.peers[-1]
        finally:
            with_cert.process.stop()
        without = start_gateway(
            f"""
            clusters:
              mtls: {{{base}, retry: {{max_attempts: 1}}, tls: {{ca_file: {ca_path}}}}}
            """,
            tmp_path,
        )
        try:
            refused = post_chat(without.url, "m", messages=MESSAGES)
            assert refused.status_code == 502
        finally:
            without.process.stop()
    finally:
        server.close()


def test_a_certificate_for_another_name_is_a_502_that_says_so(tmp_path: Path) -> None:
    ca_key, ca_cert, ca_path = make_ca(tmp_path)
    # Trusted (signed by the CA the cluster names), but for another host name.
    cert, key = make_ca_signed(tmp_path, (ca_key, ca_cert), "other.example", client=False)
    process = Process([sys.executable, str(UPSTREAM_SCRIPT), str(cert), str(key)])
    try:
        port = int(process.wait_for(r"PORT (\d+)").group(1))
        gateway = start_gateway(
            f"""
            clusters:
              secure: {{url: "https://localhost:{port}", tls: {{ca_file: {ca_path}}}}}
            """,
            tmp_path,
        )
        try:
            response = post_chat(gateway.url, "m", messages=MESSAGES)
            assert response.status_code == 502
            error = response.json()["error"]
            assert error["code"] == "upstream_tls_failure", error
            assert "TLS handshake with the upstream failed" in error["message"]
            gateway.process.wait_for(r"#warn\].*TLS handshake")
            assert process.output().count("POST") == 0  # nothing was sent in the clear
        finally:
            gateway.process.stop()
    finally:
        process.stop()


def test_shutdown_lets_http2_streams_in_flight_finish(
    upstream: Upstream, certs: Path, tmp_path: Path
) -> None:
    gateway, cert = start_tls_gateway(upstream, certs, tmp_path, "drain")
    hold = uuid.uuid4().hex
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(http2=True, verify=context, timeout=20) as client:
            body = {"model": "m", "stream": True, "test": {"chunks": 3, "hold": hold}}
            with client.stream(
                "POST", f"https://localhost:{gateway.port}/v1/chat/completions", json=body
            ) as stream:
                pieces = stream.iter_bytes()
                first = next(pieces)
                gateway.process.popen.terminate()  # SIGTERM: drain
                gateway.process.wait_for(r"waiting up to .* for 1 requests")
                upstream.release(hold)
                rest = b"".join(pieces)
        assert (first + rest).endswith(b"data: [DONE]\n\n")
        gateway.process.popen.wait(15)
    finally:
        gateway.process.stop()


def served_certificate_name(port: int, cafiles: list[Path]) -> str:
    context = ssl.create_default_context()
    for cafile in cafiles:
        context.load_verify_locations(cafile)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        subject = dict(pair[0] for pair in tls.getpeercert()["subject"])  # type: ignore[index]
        return str(subject["commonName"])


def test_a_reload_renews_the_listeners_certificate(
    upstream: Upstream, certs: Path, tmp_path: Path
) -> None:
    first_cert, first_key = make_certificate(certs, "first")
    second_cert, second_key = make_certificate(certs, "second")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_bytes(first_cert.read_bytes())
    key.write_bytes(first_key.read_bytes())
    gateway = start_gateway(
        f"""
        listeners: ["ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}"]
        clusters: {{test: {{url: "{upstream.url}"}}}}
        """,
        tmp_path,
        listen=False,
    )
    try:
        assert served_certificate_name(gateway.port, [first_cert, second_cert]) == "first"
        # A broken key file: the reload is rejected and the old certificate stays.
        key.write_bytes(b"not a key")
        rejected = httpx.post(f"{gateway.admin_url}/reload")
        assert rejected.status_code == 400 and "live.key" in rejected.text
        assert served_certificate_name(gateway.port, [first_cert, second_cert]) == "first"
        cert.write_bytes(second_cert.read_bytes())
        key.write_bytes(second_key.read_bytes())
        assert httpx.post(f"{gateway.admin_url}/reload").status_code == 200
        assert served_certificate_name(gateway.port, [first_cert, second_cert]) == "second"
        context = ssl.create_default_context(cafile=str(second_cert))
        answered = httpx.post(
            f"https://localhost:{gateway.port}/v1/chat/completions",
            json={"model": "m"},
            verify=context,
        )
        assert answered.status_code == 200
    finally:
        gateway.process.stop()


def test_a_stream_whose_body_never_ends_gets_408_and_the_connection_goes_on(
    upstream: Upstream, certs: Path, tmp_path: Path
) -> None:
    gateway, cert = start_tls_gateway(
        upstream, certs, tmp_path, "slowbody", "limits: {request_body_timeout: 1s}"
    )
    client = RawH2(gateway.port, ssl.create_default_context(cafile=str(cert)))
    try:
        stalled = client.request(b'{"model": "test-mo', end=False)
        client.pump_until(
            lambda: stalled in client.ended or stalled in client.reset, acknowledge={stalled}
        )
        assert b"limits.request_body_timeout" in client.received[stalled]
        fine = client.request(b'{"model": "test-model"}')
        client.pump_until(lambda: fine in client.ended, acknowledge={fine})
        assert b"plain answer" in client.received[fine]
    finally:
        client.close()
        gateway.process.stop()


def test_an_idle_tls_connection_is_closed_after_keepalive_timeout(
    upstream: Upstream, certs: Path, tmp_path: Path
) -> None:
    """Over TLS too, GOAWAY is followed by the close (TLS does not shut down while the
    connection is still registered as its producer)."""
    gateway, cert = start_tls_gateway(
        upstream, certs, tmp_path, "idle", "limits: {keepalive_timeout: 1s}"
    )
    client = RawH2(gateway.port, ssl.create_default_context(cafile=str(cert)))
    try:
        sid = client.request(b'{"model": "test-model"}')
        client.pump_until(lambda: sid in client.ended, acknowledge={sid})
        goaway = False
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the idle connection was not closed"
            try:
                data = client.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            if not data:
                break
            events = client.conn.receive_data(data)
            goaway = goaway or any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
        assert goaway
    finally:
        client.close()
        gateway.process.stop()


def test_a_malformed_request_is_a_stream_error_and_the_connection_goes_on(
    tls_gateway: tuple[Gateway, ssl.SSLContext, Path],
) -> None:
    """An upper-case header name (RFC 9113 8.2.1): a 400 that says so, RST_STREAM
    PROTOCOL_ERROR, and the next stream on the connection is served."""
    gateway, context, _ = tls_gateway
    client = RawH2(gateway.port, context)
    try:
        client.conn.config.validate_outbound_headers = False
        client.conn.config.normalize_outbound_headers = False
        bad = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            bad,
            [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
             (":path", "/v1/models"), ("X-Upper", "1")],
            end_stream=True,
        )  # fmt: skip
        client.sock.sendall(client.conn.data_to_send())
        client.received[bad] = bytearray()
        client.pump_until(lambda: bad in client.reset, acknowledge={bad})
        assert b"malformed HTTP/2 request" in client.received[bad]
        assert b"upper-case" in client.received[bad] or b"lower-case" in client.received[bad]
        assert bad not in client.ended
        fine = client.request(b'{"model": "test-model"}')
        client.pump_until(lambda: fine in client.ended, acknowledge={fine})
        assert b"plain answer" in client.received[fine]
    finally:
        client.close()


def test_too_many_headers_on_a_stream_get_431(
    tls_gateway: tuple[Gateway, ssl.SSLContext, Path],
) -> None:
    gateway, context, _ = tls_gateway
    with httpx.Client(http2=True, verify=context, timeout=10) as client:
        headers = {f"x-h{i}": "v" for i in range(150)}
        refused = client.post(f"{https_url(gateway)}/v1/chat/completions", json={}, headers=headers)
        assert refused.http_version == "HTTP/2" and refused.status_code == 431
        assert "limits.max_header_count" in refused.json()["error"]["message"]
        fine = client.post(
            f"{https_url(gateway)}/v1/chat/completions", json={"model": "test-model"}
        )
        assert fine.status_code == 200


def test_a_listener_sends_the_chain_that_follows_its_certificate(tmp_path: Path) -> None:
    """certKey holding the leaf, then its intermediate (as cert-manager and ACME clients
    write tls.crt): a client that trusts only the root verifies the gateway."""
    root_key, root_cert, root_path = make_ca(tmp_path)
    middle_key = ec.generate_private_key(ec.SECP256R1())
    middle = (
        certificate_builder("test intermediate", root_cert.subject, middle_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    leaf_path, key_path = make_ca_signed(tmp_path, (middle_key, middle), "localhost", client=False)
    bundle = tmp_path / "tls.crt"
    bundle.write_bytes(leaf_path.read_bytes() + middle.public_bytes(serialization.Encoding.PEM))
    gateway = start_gateway(
        f"""
        listeners: ["ssl:0:interface=127.0.0.1:certKey={bundle}:privateKey={key_path}"]
        clusters: {{test: {{url: "http://127.0.0.1:9"}}}}
        """,
        tmp_path,
        listen=False,
    )
    try:
        assert served_certificate_name(gateway.port, [root_path]) == "localhost"
    finally:
        gateway.process.stop()
