"""TLS to the upstream is verified by default; the gateway serves on TLS and UNIX listeners."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import UPSTREAM_SCRIPT, Process, Upstream, post_chat, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="module")
def tls_upstream(certs: Path) -> Iterator[tuple[Upstream, Path]]:
    cert, key = make_certificate(certs, "upstream")
    process = Process([sys.executable, str(UPSTREAM_SCRIPT), str(cert), str(key)])
    try:
        port = int(process.wait_for(r"PORT (\d+)").group(1))
        yield Upstream(process, port), cert
    finally:
        process.stop()


def tls_config(port: int, tls: str) -> str:
    return f"""
        clusters:
          secure:
            url: https://localhost:{port}
            {tls}
        routes: [{{cluster: secure}}]
    """


def test_https_upstream_with_its_ca_is_verified_and_used(
    tls_upstream: tuple[Upstream, Path], tmp_path: Path
) -> None:
    upstream, cert = tls_upstream
    gateway = start_gateway(tls_config(upstream.port, f"tls: {{ca_file: {cert}}}"), tmp_path)
    try:
        body = {"model": "test-model", "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=15) as r:
            assert r.status_code == 200
            assert b"data: [DONE]" in r.read()
    finally:
        gateway.process.stop()


def test_untrusted_upstream_certificate_is_a_502_that_says_so(
    tls_upstream: tuple[Upstream, Path], tmp_path: Path
) -> None:
    upstream, _ = tls_upstream
    gateway = start_gateway(tls_config(upstream.port, ""), tmp_path)
    try:
        response = post_chat(gateway.url, "m", messages=MESSAGES)
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_tls_failure"
        assert "certificate verification failed" in error["message"]
        assert "TLS handshake" in gateway.process.output()
    finally:
        gateway.process.stop()


def test_gateway_serves_https_and_unix_socket_listeners(
    upstream: Upstream, certs: Path, tmp_path: Path
) -> None:
    cert, key = make_certificate(certs, "gateway")
    sock = tmp_path / "gw.sock"
    gateway = start_gateway(
        f"""
        listeners:
          - ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}
          - unix:{sock}
        clusters: {{test: {{url: "{upstream.url}"}}}}
        """,
        tmp_path,
        listen=False,
    )
    try:
        body = {"model": "test-model", "messages": MESSAGES}
        https = httpx.post(
            f"https://localhost:{gateway.port}/v1/chat/completions",
            json=body,
            verify=ssl.create_default_context(cafile=str(cert)),
            timeout=15,
        )
        assert https.status_code == 200
        assert upstream.stats()["last_headers"]["x-forwarded-proto"] == ["https"]  # type: ignore[index]
        gateway.process.wait_for(r"listening on UNIXAddress")
        unix = subprocess.run(
            [
                "curl",
                "-s",
                "--unix-socket",
                str(sock),
                "http://gw/v1/chat/completions",
                "-H",
                "content-type: application/json",
                "-d",
                '{"model": "test-model"}',
            ],
            capture_output=True,
            check=True,
            timeout=15,
        )
        assert b"plain answer" in unix.stdout
    finally:
        gateway.process.stop()
