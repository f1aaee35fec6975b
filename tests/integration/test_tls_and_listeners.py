"""TLS to the upstream is verified by default; the gateway serves on TLS and UNIX listeners."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx

from .conftest import Upstream, make_certificate, post_chat, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


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
