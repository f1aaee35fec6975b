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


def _loaded_tls_library(pid: int) -> bool:
    """Whether the process has mapped cryptography's native module (pyOpenSSL's base)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "cryptography/hazmat/bindings/_rust" in maps


def test_pyopenssl_loads_on_first_use_when_the_config_has_no_tls(
    tls_upstream: tuple[Upstream, Path], upstream: Upstream, tmp_path: Path
) -> None:
    """Started on a cleartext-only config the gateway does not load pyOpenSSL (about
    12 MB); a reload that adds an https cluster loads it, and TLS works as from the
    start: verified against the cluster's CA, the request answered."""
    secure, cert = tls_upstream
    cleartext = f"""
        clusters: {{plain: {{url: "{upstream.url}"}}}}
        routes: [{{cluster: plain}}]
    """
    gateway = start_gateway(cleartext, tmp_path)
    try:
        gateway.process.wait_for(r"pyOpenSSL not loaded: no TLS in the config")
        assert post_chat(gateway.url, "test-model", messages=MESSAGES).status_code == 200
        assert not _loaded_tls_library(gateway.process.pid)

        (tmp_path / "gateway.yaml").write_text(tls_config(secure.port, f"tls: {{ca_file: {cert}}}"))
        assert httpx.post(f"{gateway.admin_url}/reload", timeout=15).status_code == 200
        body = {"model": "test-model", "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=15) as r:
            assert r.status_code == 200
            assert b"data: [DONE]" in r.read()
        assert _loaded_tls_library(gateway.process.pid)
    finally:
        gateway.process.stop()


def test_a_config_with_tls_or_preload_tls_loads_pyopenssl_at_start(
    tls_upstream: tuple[Upstream, Path], upstream: Upstream, tmp_path: Path
) -> None:
    secure, cert = tls_upstream
    preload = f"""
        preload_tls: true
        clusters: {{plain: {{url: "{upstream.url}"}}}}
        routes: [{{cluster: plain}}]
    """
    for config in (tls_config(secure.port, f"tls: {{ca_file: {cert}}}"), preload):
        gateway = start_gateway(config, tmp_path)
        try:
            assert _loaded_tls_library(gateway.process.pid)
            assert "pyOpenSSL not loaded" not in gateway.process.output()
        finally:
            gateway.process.stop()
